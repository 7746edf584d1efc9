//! What a weaver's processes may do in the kernel: the capabilities they keep and the system
//! calls they are refused. One definition serves every place it is enforced:
//! - systemd-nspawn's own flags (`--drop-capability`, `--system-call-filter`), the first layer;
//! - `loomd __sandbox`, bound into every weaver and run as the start wrapper's first step, which
//!   adds what nspawn's filter cannot say (a `clone` or `unshare` asking for a user namespace);
//! - `loom weaver exec`, whose process gets the same set host-side, before it runs anything.
//!
//! Nested weavers (`--nested`, admins only) may make user namespaces and mount inside them,
//! for tools such as rootless podman or bubblewrap; everything else stays refused.

use std::io;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// Where `loomd __sandbox` (loomd's own binary, read-only) is inside every weaver.
pub const SANDBOX_PATH: &str = "/.loom/bin/loom-sandbox";
/// The argument that makes loomd's binary act as the in-weaver sandbox entry.
pub const SANDBOX_ARG: &str = "__sandbox";

/// The capabilities a weaver's root keeps (inside its user namespace), each with why an agent
/// needs it. Every other capability is dropped from the bounding set.
pub const KEPT_CAPS: &[(&str, u32, &str)] = &[
    ("CAP_CHOWN", 0, "build tools and package managers chown what they unpack"),
    ("CAP_DAC_OVERRIDE", 1, "root inside works on files of the weaver's other users"),
    ("CAP_FOWNER", 3, "chmod/utime on files root does not own (git checkout, tar)"),
    ("CAP_FSETID", 4, "keeps setgid directories' bits when root writes into them"),
    ("CAP_KILL", 5, "root inside signals the weaver's other users' processes"),
    ("CAP_SETGID", 6, "su, sshd and test suites switch to other users inside"),
    ("CAP_SETUID", 7, "su, sshd and test suites switch to other users inside"),
];
// Not CAP_NET_BIND_SERVICE: a weaver's network namespace is the host's (loomd makes it), where
// that capability of the weaver's user namespace counts for nothing, and nspawn drops it for
// that reason; loomd opens the low ports of the weaver's own namespace instead
// (`net.ipv4.ip_unprivileged_port_start = 0` there), so dev servers and sshd still bind them.

/// What a nested weaver keeps besides: mapping its own root into a user namespace it makes
/// needs CAP_SETFCAP over its own (since Linux 5.12).
const NESTED_CAPS: &[(&str, u32, &str)] =
    &[("CAP_SETFCAP", 31, "a nested container maps the weaver's root into its own user namespace")];

/// What an `--ssh` weaver keeps besides: sshd's privilege-separated child chroots into an empty
/// directory before it reads a byte from the network. A chroot inside the weaver's own mount
/// namespace reaches nothing the weaver cannot already see.
const SSH_CAPS: &[(&str, u32, &str)] =
    &[("CAP_SYS_CHROOT", 18, "sshd's pre-authentication child chroots into an empty directory")];

/// Which of a weaver's optional features widen its sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Profile {
    pub nested: bool,
    pub ssh: bool,
}

impl Profile {
    pub fn of(spec: &loom_core::weaver::WeaverSpec) -> Profile {
        Profile { nested: spec.nested, ssh: spec.ssh.is_some() }
    }

    /// The flags `loomd __sandbox` takes for this profile.
    pub fn entry_flags(self) -> Vec<&'static str> {
        [(self.nested, "--nested"), (self.ssh, "--ssh")].into_iter().filter(|(on, _)| *on).map(|(_, f)| f).collect()
    }
}

/// Every capability this kernel generation knows (`CAP_LAST_CAP` is 40 since Linux 5.9).
const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn kept(cap: u32, profile: Profile) -> bool {
    KEPT_CAPS
        .iter()
        .chain(if profile.nested { NESTED_CAPS } else { &[] })
        .chain(if profile.ssh { SSH_CAPS } else { &[] })
        .any(|(_, n, _)| *n == cap)
}

/// The capability names nspawn is told to drop: all it would keep but ours.
pub fn dropped_cap_names(profile: Profile) -> Vec<&'static str> {
    (0..ALL_CAPS.len() as u32).filter(|c| !kept(*c, profile)).map(|c| ALL_CAPS[c as usize]).collect()
}

/// Why a system call is refused; nested weavers get back the [`Deny::UnlessNested`] ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deny {
    Always,
    UnlessNested,
}

/// Refused outright (`EPERM`), by name as nspawn takes them and by number for seccomp.
/// `ptrace` is not here: nspawn refuses it without CAP_SYS_PTRACE, and loom gives it back (see
/// [`nspawn_syscall_allow`]) so that gdb and strace work on the weaver's own processes.
const DENIED: &[(&str, i64, Deny)] = &[
    // Kernel-wide state a container must never touch.
    ("bpf", libc::SYS_bpf, Deny::Always),
    ("perf_event_open", libc::SYS_perf_event_open, Deny::Always),
    ("keyctl", libc::SYS_keyctl, Deny::Always),
    ("add_key", libc::SYS_add_key, Deny::Always),
    ("request_key", libc::SYS_request_key, Deny::Always),
    ("kexec_load", libc::SYS_kexec_load, Deny::Always),
    ("kexec_file_load", libc::SYS_kexec_file_load, Deny::Always),
    ("init_module", libc::SYS_init_module, Deny::Always),
    ("finit_module", libc::SYS_finit_module, Deny::Always),
    ("delete_module", libc::SYS_delete_module, Deny::Always),
    ("open_by_handle_at", libc::SYS_open_by_handle_at, Deny::Always),
    ("name_to_handle_at", libc::SYS_name_to_handle_at, Deny::Always),
    ("userfaultfd", libc::SYS_userfaultfd, Deny::Always),
    ("acct", libc::SYS_acct, Deny::Always),
    ("swapon", libc::SYS_swapon, Deny::Always),
    ("swapoff", libc::SYS_swapoff, Deny::Always),
    ("reboot", libc::SYS_reboot, Deny::Always),
    ("syslog", libc::SYS_syslog, Deny::Always),
    ("quotactl", libc::SYS_quotactl, Deny::Always),
    // io_uring bypasses seccomp for the operations it carries, and is where kernel exploits live.
    ("io_uring_setup", libc::SYS_io_uring_setup, Deny::Always),
    ("io_uring_enter", libc::SYS_io_uring_enter, Deny::Always),
    ("io_uring_register", libc::SYS_io_uring_register, Deny::Always),
    // New namespaces and mounts: nested containers only.
    ("setns", libc::SYS_setns, Deny::UnlessNested),
    ("mount", libc::SYS_mount, Deny::UnlessNested),
    ("umount2", libc::SYS_umount2, Deny::UnlessNested),
    ("pivot_root", libc::SYS_pivot_root, Deny::UnlessNested),
    ("fsopen", libc::SYS_fsopen, Deny::UnlessNested),
    ("fsconfig", libc::SYS_fsconfig, Deny::UnlessNested),
    ("fsmount", libc::SYS_fsmount, Deny::UnlessNested),
    ("fspick", libc::SYS_fspick, Deny::UnlessNested),
    ("move_mount", libc::SYS_move_mount, Deny::UnlessNested),
    ("open_tree", libc::SYS_open_tree, Deny::UnlessNested),
    ("mount_setattr", libc::SYS_mount_setattr, Deny::UnlessNested),
];

fn denied(nested: bool) -> impl Iterator<Item = &'static (&'static str, i64, Deny)> {
    DENIED.iter().filter(move |(_, _, d)| *d == Deny::Always || !nested)
}

/// What nspawn's default filter refuses without a capability the weaver has lost, and the
/// weaver keeps: ptrace, which only reaches the weaver's own processes (its pid namespace).
pub fn nspawn_syscall_allow() -> &'static str {
    "ptrace"
}

/// nspawn's `--system-call-filter=` value: the whole-call denials (it cannot look at flags).
pub fn nspawn_syscall_filter(nested: bool) -> String {
    let names: Vec<&str> = denied(nested).map(|(n, _, _)| *n).collect();
    format!("~{}", names.join(" "))
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("this CPU architecture ({0}) has no seccomp filter in loom")]
    Arch(&'static str),
    #[error("building the seccomp filter failed: {0}")]
    Build(String),
}

fn target_arch() -> Result<TargetArch, SandboxError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        other => Err(SandboxError::Arch(other)),
    }
}

fn build(e: impl std::fmt::Debug) -> SandboxError {
    SandboxError::Build(format!("{e:?}"))
}

/// The seccomp programs, ready to install: built before a fork, because building allocates and
/// installing must not.
#[derive(Debug)]
pub struct Filters {
    programs: Vec<BpfProgram>,
    profile: Profile,
}

impl Filters {
    pub fn new(profile: Profile) -> Result<Filters, SandboxError> {
        let nested = profile.nested;
        let arch = target_arch()?;
        let mut refuse: std::collections::BTreeMap<i64, Vec<SeccompRule>> =
            denied(nested).map(|(_, nr, _)| (*nr, vec![])).collect();
        if !nested {
            // A new user namespace hands its creator every capability over what it then makes;
            // clone's and unshare's flags are their first argument on every architecture.
            let newuser = libc::CLONE_NEWUSER as u64;
            let asks_newuser = || {
                SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(newuser), newuser)
                    .and_then(|c| SeccompRule::new(vec![c]))
                    .map_err(build)
            };
            refuse.insert(libc::SYS_clone, vec![asks_newuser()?]);
            refuse.insert(libc::SYS_unshare, vec![asks_newuser()?]);
        }
        let eperm = SeccompFilter::new(refuse, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
            .map_err(build)?;
        let mut programs = vec![BpfProgram::try_from(eperm).map_err(build)?];
        if !nested {
            // clone3 passes its flags in memory a filter cannot read: it answers "not here", and
            // the C library falls back to clone, whose flags the filter above sees.
            let clone3 = [(libc::SYS_clone3, vec![])].into_iter().collect();
            let enosys =
                SeccompFilter::new(clone3, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch)
                    .map_err(build)?;
            programs.push(BpfProgram::try_from(enosys).map_err(build)?);
        }
        Ok(Filters { programs, profile })
    }

    /// Confines the calling thread for good: drops every capability but the kept ones from the
    /// bounding set, sets no-new-privileges and installs the filters. Only syscalls, no
    /// allocation, so it may run between fork and exec.
    pub fn confine(&self) -> io::Result<()> {
        for cap in 0..64u32 {
            // SAFETY: prctl with integer arguments only.
            let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
            // -1 (EINVAL): past the kernel's last capability.
            if present < 0 {
                break;
            }
            // Dropping needs CAP_SETPCAP, which nspawn has already taken along with the rest.
            if present == 0 || kept(cap, self.profile) {
                continue;
            }
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for p in &self.programs {
            seccompiler::apply_filter(p).map_err(|e| match e {
                seccompiler::Error::Prctl(io) | seccompiler::Error::Seccomp(io) => io,
                other => io::Error::other(other.to_string()),
            })?;
        }
        Ok(())
    }
}

/// `loomd __sandbox [--nested] [--ssh] -- CMD ARGS...`, run inside a weaver as its first
/// process: confines itself, then becomes CMD. Returns only on failure, with the exit code to use.
pub fn run_entry(args: &[std::ffi::OsString]) -> i32 {
    use std::os::unix::process::CommandExt;
    const USAGE: &str = "loom-sandbox: usage: loom-sandbox [--nested] [--ssh] -- CMD ARGS...";
    let mut profile = Profile::default();
    let mut rest = args;
    while let Some((flag, tail)) = rest.split_first() {
        match flag.to_str() {
            Some("--nested") => profile.nested = true,
            Some("--ssh") => profile.ssh = true,
            _ => break,
        }
        rest = tail;
    }
    let Some((sep, cmd)) = rest.split_first() else {
        eprintln!("{USAGE}");
        return 2;
    };
    if sep != "--" || cmd.is_empty() {
        eprintln!("{USAGE}");
        return 2;
    }
    let confined =
        Filters::new(profile).map_err(|e| e.to_string()).and_then(|f| f.confine().map_err(|e| e.to_string()));
    if let Err(e) = confined {
        eprintln!("loom-sandbox: could not confine the weaver: {e}");
        return 126;
    }
    let e = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
    eprintln!("loom-sandbox: cannot run {}: {e}", cmd[0].to_string_lossy());
    127
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kept_capability_has_its_name_and_number() {
        for (name, nr, why) in KEPT_CAPS.iter().chain(NESTED_CAPS).chain(SSH_CAPS) {
            assert_eq!(ALL_CAPS[*nr as usize], *name);
            assert!(!why.is_empty());
        }
    }

    #[test]
    fn the_dangerous_capabilities_are_dropped() {
        let nested = Profile { nested: true, ssh: false };
        assert!(!dropped_cap_names(nested).contains(&"CAP_SETFCAP"));
        assert!(!dropped_cap_names(Profile { nested: false, ssh: true }).contains(&"CAP_SYS_CHROOT"));
        let dropped = dropped_cap_names(Profile::default());
        assert!(dropped.contains(&"CAP_SYS_CHROOT"));
        for cap in ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_BPF"]
        {
            assert!(dropped.contains(&cap), "{cap} must be dropped");
        }
        assert!(!dropped.contains(&"CAP_CHOWN"));
        assert_eq!(dropped.len() + KEPT_CAPS.len(), ALL_CAPS.len());
    }

    #[test]
    fn the_nspawn_filter_names_what_nested_weavers_get_back() {
        let plain = nspawn_syscall_filter(false);
        let nested = nspawn_syscall_filter(true);
        assert!(plain.starts_with('~'));
        for call in ["bpf", "perf_event_open", "keyctl", "kexec_load", "init_module", "mount", "setns"] {
            assert!(plain.split([' ', '~']).any(|c| c == call), "{call} missing from {plain}");
        }
        assert!(nested.contains("bpf") && !nested.split(' ').any(|c| c == "mount" || c == "setns"), "{nested}");
    }

    #[test]
    fn the_filters_build_for_both_kinds_of_weaver() {
        assert_eq!(Filters::new(Profile::default()).unwrap().programs.len(), 2);
        assert_eq!(Filters::new(Profile { nested: true, ssh: false }).unwrap().programs.len(), 1);
    }

    /// The real filter, installed in a child process: what it refuses fails with the errno the
    /// C library expects, and what it allows still works.
    #[test]
    fn a_confined_process_cannot_make_a_user_namespace_or_load_bpf() {
        let filters = Filters::new(Profile::default()).unwrap();
        // SAFETY: the child only makes syscalls and exits; it never returns into the test harness.
        match unsafe { libc::fork() } {
            0 => {
                let code = (|| {
                    if filters.confine().is_err() {
                        return 10;
                    }
                    // SAFETY: plain syscalls with integer arguments.
                    unsafe {
                        if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                            return 11;
                        }
                        if *libc::__errno_location() != libc::EPERM {
                            return 12;
                        }
                        if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || *libc::__errno_location() != libc::ENOSYS {
                            return 13;
                        }
                        if libc::syscall(libc::SYS_bpf, 0, 0, 0) != -1 || *libc::__errno_location() != libc::EPERM {
                            return 14;
                        }
                        if libc::getpid() <= 0 {
                            return 15;
                        }
                    }
                    0
                })();
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status), "the child died: {status}");
                assert_eq!(libc::WEXITSTATUS(status), 0, "step {} failed", libc::WEXITSTATUS(status));
            }
            _ => panic!("fork failed"),
        }
    }
}
