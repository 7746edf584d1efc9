//! The systemd-nspawn command line for a weaver: pure, so every isolation flag is checked
//! by a test without root.

use std::path::Path;

use loom_core::weaver::{NetworkMode, WeaverSpec};

use super::Launch;
use crate::sandbox;

/// Whether nspawn registers the container with systemd-machined (only under systemd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Register {
    No,
    Yes,
}

pub fn nspawn_argv(launch: &Launch, register: Register, nix_store: bool) -> Vec<String> {
    let spec = &launch.spec;
    let mut a: Vec<String> = vec![
        "systemd-nspawn".into(),
        "--quiet".into(),
        "--keep-unit".into(),
        format!("--register={}", if register == Register::Yes { "yes" } else { "no" }),
        format!("--directory={}", launch.root().display()),
        format!("--machine={}", spec.name),
        format!("--hostname={}", spec.name),
        "--private-users=pick".into(),
        "--private-users-ownership=chown".into(),
        "--as-pid2".into(),
        "--console=pipe".into(),
        "--no-new-privileges=yes".into(),
        // Capabilities and system calls: see `crate::sandbox`, which also confines the payload
        // where nspawn's filter cannot (the flags of clone and unshare).
        format!("--drop-capability={}", sandbox::dropped_cap_names(sandbox::Profile::of(spec)).join(",")),
        format!("--system-call-filter={}", sandbox::nspawn_syscall_allow()),
        format!("--system-call-filter={}", sandbox::nspawn_syscall_filter(spec.nested)),
        "--chdir=/workspace".into(),
        "--setenv=LOOM_WORKSPACE=/workspace".into(),
        format!("--setenv=LOOM_WEAVER={}", launch.id),
    ];
    let usr = match &spec.image {
        loom_core::weaver::Image::Host => Path::new("/usr").to_path_buf(),
        loom_core::weaver::Image::Dir(dir) => dir.join("usr"),
    };
    a.push(format!("--bind-ro={}:/usr", usr.display()));
    if nix_store {
        a.push("--bind-ro=/nix/store".into());
    }
    for (host, inside) in &launch.binds_ro {
        a.push(format!("--bind-ro={}:{}", host.display(), inside));
    }
    // With loomd's own namespace (`launch.netns`) the backend starts nspawn inside it and nspawn
    // keeps it: `--network-namespace-path` cannot be combined with `--private-users` before
    // systemd 258 (systemd#36363, nspawn joins it from inside the new user namespace).
    if spec.network != NetworkMode::Host && launch.netns.is_none() {
        a.push("--private-network".into());
    }
    if launch.netns.is_some() {
        // loomd binds the resolv.conf a weaver gets (its resolver, or none at all).
        a.push("--resolv-conf=off".into());
    }
    // The weaver's own variables (proxy tokens among them) go through ENV_FILE, never the
    // command line: any local user can read a process's argv.
    a.push("--".into());
    a.extend(start_wrapper(spec));
    a.extend(spec.command.iter().cloned());
    a
}

/// The shell line that loads the weaver's environment file (see [`ENV_FILE`]); every script
/// that runs a command inside a weaver starts with it. A macro, so `concat!` can use it.
macro_rules! source_env {
    () => {
        "if [ -f /.loom/env ]; then set -a; . /.loom/env; set +a; fi; "
    };
}
pub(crate) use source_env;

/// What runs first inside the weaver: the sandbox entry, then [`START_SCRIPT`] (with
/// [`SSHD_START`] for `--ssh` weavers and the tailnet join for `--tailscale` ones), then the
/// command.
pub fn start_wrapper(spec: &WeaverSpec) -> Vec<String> {
    let profile = sandbox::Profile::of(spec);
    let mut argv = vec![sandbox::SANDBOX_PATH.to_string(), sandbox::SANDBOX_ARG.to_string()];
    argv.extend(profile.entry_flags().into_iter().map(String::from));
    argv.push("--".into());
    let [sh, c, script, name] = START_SCRIPT;
    let mut prelude = String::from(source_env!());
    if profile.ssh {
        prelude += SSHD_START!();
    }
    if spec.tailscale {
        // Sourced, so that its `exit` fails the start before the marker.
        prelude += &format!(". /{}; ", loom_core::tailscale::UP_SCRIPT);
    }
    let script = script.replacen(source_env!(), &prelude, 1);
    argv.extend([sh.to_string(), c.to_string(), script, name.to_string()]);
    argv
}

/// Starts the weaver's sshd (`--ssh`) in the background, inside the sandbox like everything
/// else, with the files loomd wrote under `/.loom/ssh`; its privilege-separation user and
/// directory are made if the weaver's root has none. A missing sshd, a config it refuses or
/// an sshd that never listens fails the start before the marker, so `create` reports it; and
/// once `create` returns, port 22 answers.
macro_rules! SSHD_START {
    () => {
        concat!(
            "sshd=$(command -v sshd) || sshd=/usr/sbin/sshd; ",
            "[ -x \"$sshd\" ] || { echo \"loom: --ssh: there is no sshd in the weaver: install openssh-server on the host (or add openssh to the weaver image)\" >&2; exit 127; }; ",
            "mkdir -p /run/sshd /var/empty && chmod 0755 /run/sshd /var/empty; ",
            "grep -q '^sshd:' /etc/passwd 2>/dev/null || echo 'sshd:x:74:65534:sshd privilege separation:/run/sshd:/usr/sbin/nologin' >> /etc/passwd; ",
            "\"$sshd\" -t -f /.loom/ssh/sshd_config || { echo \"loom: --ssh: sshd refused its configuration (above)\" >&2; exit 1; }; ",
            "\"$sshd\" -D -e -f /.loom/ssh/sshd_config </dev/null & ",
            "i=0; until grep -q ' 00000000:0016 00000000:0000 0A ' /proc/net/tcp 2>/dev/null; do i=$((i+1)); ",
            "[ $i -gt 200 ] && { echo \"loom: --ssh: sshd did not listen on port 22 within 10s (its messages are above)\" >&2; exit 1; }; sleep 0.05; done; ",
        )
    };
}
use SSHD_START;

/// Inside the container, relative to its root: written right before the command is exec'd,
/// so loomd can tell "the command ran (and maybe ended at once)" from "nspawn failed".
pub const START_MARKER: &str = ".loom/started";

/// Relative to the weaver's root: the weaver's environment (its own `--env` and what loom
/// sets: proxy URLs and token), `0600`, sourced by the start wrapper.
pub const ENV_FILE: &str = ".loom/env";

/// Loads the weaver's environment, checks the command exists and drops the start marker, then
/// execs the command. A missing command fails here, before the marker, so `create` reports it
/// instead of a quick exit.
const START_SCRIPT: [&str; 4] = [
    "/bin/sh",
    "-c",
    concat!(
        source_env!(),
        "command -v \"$1\" >/dev/null 2>&1 || { echo \"loom: cannot run $1: command not found in the weaver\" >&2; exit 127; }; : > /.loom/started; exec \"$@\""
    ),
    "loom-start",
];

/// The env file's text: one `export K='V'` per variable, single-quoted for the shell.
pub fn env_file(vars: &[(&str, &str)]) -> String {
    vars.iter().map(|(k, v)| format!("export {k}='{}'\n", v.replace('\'', "'\\''"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use loom_core::api::CreateWeaver;
    use loom_core::config::WeaverDefaults;
    use loom_core::weaver::{WeaverId, resolve_spec};

    fn launch(f: impl FnOnce(&mut CreateWeaver)) -> Launch {
        let mut req = CreateWeaver { command: vec!["/bin/echo".into(), "hi there".into()], ..Default::default() };
        f(&mut req);
        Launch {
            id: WeaverId::from_random([1, 2, 3, 4, 5, 6]),
            run: loom_core::weaver::RunId::from_random(1),
            spec: resolve_spec(req, &WeaverDefaults::default(), "w1".into()).unwrap(),
            dir: "/var/lib/loom/weavers/010203040506".into(),
            binds_ro: vec![],
            netns: None,
        }
    }

    #[test]
    fn isolation_flags_are_always_there() {
        let a = nspawn_argv(&launch(|_| {}), Register::No, false);
        for flag in [
            "--private-users=pick",
            "--private-network",
            "--hostname=w1",
            "--machine=w1",
            "--bind-ro=/usr:/usr",
            "--register=no",
            "--no-new-privileges=yes",
            "--directory=/var/lib/loom/weavers/010203040506/root",
        ] {
            assert!(a.iter().any(|x| x == flag), "{flag} missing from {a:?}");
        }
        let sep = a.iter().position(|x| x == "--").unwrap();
        let wrapper = start_wrapper(&launch(|_| {}).spec);
        assert_eq!(a[sep + 1..sep + 1 + wrapper.len()], wrapper);
        assert_eq!(a[sep + 1..sep + 4], [sandbox::SANDBOX_PATH, sandbox::SANDBOX_ARG, "--"]);
        assert_eq!(a[sep + 1 + wrapper.len()..], ["/bin/echo", "hi there"]);
        let caps = a.iter().find_map(|x| x.strip_prefix("--drop-capability=")).unwrap();
        assert!(caps.split(',').any(|c| c == "CAP_SYS_ADMIN"), "{caps}");
        let filters: Vec<&str> = a.iter().filter_map(|x| x.strip_prefix("--system-call-filter=")).collect();
        assert_eq!(filters[0], "ptrace", "{filters:?}");
        assert!(filters[1].starts_with('~') && filters[1].contains("bpf"), "{filters:?}");
    }

    #[test]
    fn an_ssh_weaver_keeps_chroot_and_starts_sshd_before_the_marker() {
        let a = nspawn_argv(
            &launch(|r| r.ssh = Some(loom_core::ssh::SshRequest { authorized_keys: vec![KEY.into()] })),
            Register::No,
            false,
        );
        let sep = a.iter().position(|x| x == "--").unwrap();
        assert_eq!(a[sep + 3], "--ssh");
        let drop = a.iter().find(|x| x.starts_with("--drop-capability=")).unwrap();
        assert!(!drop.contains("CAP_SYS_CHROOT") && drop.contains("CAP_SYS_ADMIN"), "{drop}");
        let script = &a[sep + 7];
        let (sshd, marker) =
            (script.find("-D -e -f /.loom/ssh/sshd_config").unwrap(), script.find(START_MARKER).unwrap());
        assert!(sshd < marker, "{script}");
        let plain = nspawn_argv(&launch(|_| {}), Register::No, false);
        assert!(!plain.iter().any(|x| x.contains("sshd")));
        assert!(plain.iter().find(|x| x.starts_with("--drop-capability=")).unwrap().contains("CAP_SYS_CHROOT"));
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN+/Rym8JYVv1rp2Qc08Nml49wCcW/Buy9Xgsb8BNq9X op@laptop";

    #[test]
    fn a_nested_weaver_says_so_to_the_sandbox() {
        let a = nspawn_argv(&launch(|r| r.nested = Some(true)), Register::No, false);
        let sep = a.iter().position(|x| x == "--").unwrap();
        assert_eq!(a[sep + 3], "--nested");
        let filter = a.iter().filter_map(|x| x.strip_prefix("--system-call-filter=")).nth(1).unwrap();
        assert!(!filter.split(' ').any(|c| c == "mount"), "{filter}");
    }

    #[test]
    fn a_namespace_loomd_made_is_inherited_not_recreated() {
        let mut l = launch(|_| {});
        l.netns = Some("/run/netns/loom-010203040506".into());
        let a = nspawn_argv(&l, Register::No, false);
        assert!(!a.iter().any(|x| x == "--private-network" || x.starts_with("--network-")), "{a:?}");
    }

    #[test]
    fn host_network_shares_the_namespace() {
        let a = nspawn_argv(&launch(|r| r.network = Some("host".into())), Register::Yes, true);
        assert!(!a.iter().any(|x| x == "--private-network"));
        assert!(a.iter().any(|x| x == "--register=yes"));
        assert!(a.iter().any(|x| x == "--bind-ro=/nix/store"));
    }

    #[test]
    fn env_never_reaches_the_command_line() {
        let a = nspawn_argv(
            &launch(|r| {
                r.env.insert("FOO".into(), "a b".into());
            }),
            Register::No,
            false,
        );
        let joined = a.join(" ");
        assert!(!joined.contains("FOO") && !joined.contains("a b"), "{joined}");
    }

    #[test]
    fn the_env_file_quotes_for_the_shell() {
        let text = env_file(&[("A", "plain"), ("B", "it's $HOME `x`")]);
        assert_eq!(text, "export A='plain'\nexport B='it'\\''s $HOME `x`'\n");
        let out =
            std::process::Command::new("/bin/sh").arg("-c").arg(format!("{text} printf %s \"$B\"")).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME `x`");
    }

    #[test]
    fn an_image_dir_provides_usr() {
        let a = nspawn_argv(&launch(|r| r.image = Some("/srv/images/base".into())), Register::No, false);
        assert!(a.iter().any(|x| x == "--bind-ro=/srv/images/base/usr:/usr"));
    }
}
