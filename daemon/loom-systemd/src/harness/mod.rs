//! Boots the host's own systemd in a `systemd-nspawn` container, for tests that need real
//! systemd, D-Bus, machined and journald on a machine where systemd is not PID 1.
//!
//! The container runs on the host's `/usr` over a throwaway root (`--volatile=yes`): nothing
//! it writes survives, and host paths other than `/usr` are visible only if bound in with
//! [`BootBuilder::bind`] / [`BootBuilder::bind_ro`].
//!
//! From the host, reach what is inside through [`BootedSystemd::command`] (`nsenter` into all
//! of the container's namespaces), through its root at `/proc/PID/root` (for root only), or
//! through a host directory bound in. The container's system bus is
//! [`BootedSystemd::system_bus_address`]: root on the host is root inside (no user namespace),
//! so the bus accepts a connection from the host.
//!
//! Uses only std and loom-core's pure parsers, so any test can use it.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use host::{
    find_container_init, find_in_path, is_read_only_cgroup_mount, is_root, own_v1_cgroups, read_lossy, remove_cgroups,
    tail, wait_with_deadline,
};

mod host;

/// What went wrong booting or using the container.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("cannot boot systemd in a container here: {0}")]
    Unavailable(String),
    #[error("invalid machine name {0:?}: use 1 to 64 characters of A-Z, a-z, 0-9 and '-'")]
    Name(String),
    #[error("cannot run {what}")]
    Spawn {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("systemd-nspawn for {name} exited ({status}) before the container was up; console:\n{console}")]
    Exited { name: String, status: ExitStatus, console: String },
    #[error("the container {name} was not up within {after:?} ({what}); console:\n{console}")]
    Timeout { name: String, after: Duration, what: String, console: String },
    #[error("`{command}` in container {name} failed ({status}): {stderr}")]
    Command { name: String, command: String, status: ExitStatus, stderr: String },
}

/// Why this machine cannot boot systemd in a container, or `None` if it can: root, the
/// `systemd-nspawn`, `nsenter` and `systemctl` programs, systemd itself and a D-Bus daemon
/// on the host's `/usr`.
pub fn unavailable_reason() -> Option<String> {
    if !is_root() {
        return Some("not running as root (systemd-nspawn needs it)".into());
    }
    for prog in ["systemd-nspawn", "nsenter", "systemctl"] {
        if find_in_path(prog).is_none() {
            return Some(format!("{prog} is not installed (apt-get install systemd-container systemd util-linux)"));
        }
    }
    if !Path::new("/usr/lib/systemd/systemd").exists() && !Path::new("/lib/systemd/systemd").exists() {
        return Some("systemd is not installed (apt-get install systemd)".into());
    }
    if find_in_path("dbus-daemon").is_none() && find_in_path("dbus-broker").is_none() {
        return Some("no D-Bus daemon is installed (apt-get install dbus)".into());
    }
    None
}

/// A machine name unique to this process and call, from `prefix` (which should be short).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Options for [`BootedSystemd`].
#[derive(Debug, Clone)]
pub struct BootBuilder {
    name: String,
    binds: Vec<(PathBuf, PathBuf, bool)>,
    extra_args: Vec<String>,
    timeout: Duration,
    writable_controllers: bool,
}

/// The cgroup v1 controllers made writable inside the container, so that its systemd applies
/// `MemoryMax=`, `TasksMax=` and `CPUQuota=` for real on a hybrid-cgroup host.
pub const WRITABLE_V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];

impl BootBuilder {
    /// On a host with cgroup v1 controllers (hybrid), `systemd-nspawn` mounts them read-only
    /// in the container, so the container's systemd cannot apply `MemoryMax=`, `TasksMax=` or
    /// CPU quotas. When on (the default), [`BootBuilder::boot`] remounts
    /// [`WRITABLE_V1_CONTROLLERS`] writable inside the container (they are already rooted at
    /// the container's own cgroup) and re-executes its systemd so that it takes them up.
    pub fn writable_cgroup_controllers(mut self, on: bool) -> Self {
        self.writable_controllers = on;
        self
    }

    /// Binds host `src` at `dst` inside, writable.
    pub fn bind(mut self, src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> Self {
        self.binds.push((src.into(), dst.into(), false));
        self
    }

    /// Binds host `src` at `dst` inside, read-only.
    pub fn bind_ro(mut self, src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> Self {
        self.binds.push((src.into(), dst.into(), true));
        self
    }

    /// More `systemd-nspawn` options, placed before `--boot`.
    pub fn nspawn_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// How long to wait for the boot (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The `systemd-nspawn` command line.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> =
            ["-D", "/", "--volatile=yes", "--register=no", "--keep-unit", "--console=read-only", "-M"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.push(self.name.clone());
        for (src, dst, ro) in &self.binds {
            let flag = if *ro { "--bind-ro" } else { "--bind" };
            args.push(format!("{flag}={}:{}", src.display(), dst.display()));
        }
        args.extend(self.extra_args.iter().cloned());
        args.extend(
            ["--boot", "--", "systemd.firstboot=off", "systemd.unit=multi-user.target"].iter().map(|s| s.to_string()),
        );
        args
    }

    /// Boots the container and waits until its systemd reports `running` or `degraded`.
    pub fn boot(self) -> Result<BootedSystemd, HarnessError> {
        if let Some(reason) = unavailable_reason() {
            return Err(HarnessError::Unavailable(reason));
        }
        validate_machine_name(&self.name)?;
        let console_path = std::env::temp_dir().join(format!("loom-harness-{}.console", self.name));
        let console = fs::File::create(&console_path).map_err(|source| HarnessError::Spawn {
            what: format!("a console log at {}", console_path.display()),
            source,
        })?;
        let console_err =
            console.try_clone().map_err(|source| HarnessError::Spawn { what: "a console log".into(), source })?;
        // Each container gets its own cgroup in every v1 controller hierarchy it may write to,
        // entered before systemd-nspawn starts, so that its cgroup namespace is rooted there and
        // containers booted side by side (and the host) never share a `loom.slice`.
        let cgroups = if self.writable_controllers { own_v1_cgroups(&self.name)? } else { Vec::new() };
        let enter = cgroups.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n");
        let spawned = Command::new("/bin/sh")
            .arg("-c")
            .arg(
                "IFS='\n'; for p in $LOOM_HARNESS_CGROUPS; do echo $$ > \"$p/cgroup.procs\" || exit 125; done; exec systemd-nspawn \"$@\"",
            )
            .arg("sh")
            .args(self.args())
            .env("LOOM_HARNESS_CGROUPS", enter)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(source) => {
                remove_cgroups(&cgroups);
                return Err(HarnessError::Spawn { what: "systemd-nspawn".into(), source });
            }
        };
        let mut booted =
            BootedSystemd { name: self.name.clone(), nspawn: child, cgroups, leader: 0, console_path, stopped: false };
        let deadline = Instant::now() + self.timeout;
        booted.leader = booted.wait_for_leader(deadline, self.timeout)?;
        booted.wait_until_running(deadline, self.timeout)?;
        if self.writable_controllers && booted.make_controllers_writable()? {
            booted.exec_ok(&["systemctl", "daemon-reexec"])?;
            booted.wait_until_running(deadline, self.timeout)?;
        }
        Ok(booted)
    }
}

/// A booted container. Dropping it powers the container off (SIGTERM to `systemd-nspawn`,
/// which asks the container's systemd to halt; SIGKILL after 20 s).
#[derive(Debug)]
pub struct BootedSystemd {
    name: String,
    nspawn: Child,
    leader: u32,
    console_path: PathBuf,
    stopped: bool,
    /// The v1 cgroups made for this container, removed when it is gone.
    cgroups: Vec<PathBuf>,
}

impl BootedSystemd {
    pub fn builder(name: impl Into<String>) -> BootBuilder {
        BootBuilder {
            name: name.into(),
            binds: Vec::new(),
            extra_args: Vec::new(),
            timeout: Duration::from_secs(60),
            writable_controllers: true,
        }
    }

    /// Boots with no extra binds.
    pub fn boot(name: impl Into<String>) -> Result<Self, HarnessError> {
        Self::builder(name).boot()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host pid of the container's systemd (its PID 1).
    pub fn leader_pid(&self) -> u32 {
        self.leader
    }

    /// The pid of `systemd-nspawn`.
    pub fn nspawn_pid(&self) -> u32 {
        self.nspawn.id()
    }

    /// The container's root directory as the host sees it (root only).
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.leader))
    }

    /// A path inside the container, as the host sees it (root only), e.g.
    /// `host_path("/run/loomd/loomd.sock")`.
    pub fn host_path(&self, inside: impl AsRef<Path>) -> PathBuf {
        let inside = inside.as_ref();
        self.root().join(inside.strip_prefix("/").unwrap_or(inside))
    }

    /// The D-Bus address of the container's system bus, usable from the host as root.
    pub fn system_bus_address(&self) -> String {
        format!("unix:path={}", self.host_path("/run/dbus/system_bus_socket").display())
    }

    /// A command that runs `argv` inside the container, in all its namespaces, as root.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.leader.to_string()).arg("-a").arg("--").args(argv).stdin(Stdio::null());
        cmd
    }

    /// Runs `argv` inside the container and returns its output, whatever its exit status.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Result<Output, HarnessError> {
        self.command(argv)
            .output()
            .map_err(|source| HarnessError::Spawn { what: format!("nsenter into {}", self.name), source })
    }

    /// Runs `argv` inside the container and returns its stdout, or an error with its stderr
    /// if it failed.
    pub fn exec_ok<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Result<String, HarnessError> {
        let out = self.exec(argv)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(HarnessError::Command {
                name: self.name.clone(),
                command: argv.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    /// What the container printed on its console so far.
    pub fn console(&self) -> String {
        read_lossy(&self.console_path)
    }

    /// Powers the container off and waits for `systemd-nspawn` to exit.
    pub fn shutdown(mut self) -> Option<ExitStatus> {
        self.stop()
    }

    fn stop(&mut self) -> Option<ExitStatus> {
        let status = self.stop_nspawn();
        remove_cgroups(&self.cgroups);
        self.cgroups.clear();
        status
    }

    fn stop_nspawn(&mut self) -> Option<ExitStatus> {
        if self.stopped {
            return None;
        }
        self.stopped = true;
        if let Ok(Some(status)) = self.nspawn.try_wait() {
            return Some(status);
        }
        // systemd-nspawn turns SIGTERM into a clean poweroff of the container.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.nspawn.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                let _ = fs::remove_file(&self.console_path);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.nspawn.kill();
        let status = self.nspawn.wait().ok();
        let _ = fs::remove_file(&self.console_path);
        status
    }

    /// Remounts the read-only v1 controller hierarchies writable in the container's mount
    /// namespace; true if it changed any.
    fn make_controllers_writable(&self) -> Result<bool, HarnessError> {
        let mountinfo = read_lossy(&self.host_path("/proc/1/mountinfo"));
        let mut changed = false;
        for c in WRITABLE_V1_CONTROLLERS {
            let target = format!("/sys/fs/cgroup/{c}");
            if !is_read_only_cgroup_mount(&mountinfo, &target) {
                continue;
            }
            let out = Command::new("nsenter")
                .arg("-t")
                .arg(self.leader.to_string())
                .args(["-m", "--", "mount", "-o", "remount,bind,rw", &target])
                .stdin(Stdio::null())
                .output()
                .map_err(|source| HarnessError::Spawn { what: "nsenter mount".into(), source })?;
            if !out.status.success() {
                return Err(HarnessError::Command {
                    name: self.name.clone(),
                    command: format!("mount -o remount,bind,rw {target}"),
                    status: out.status,
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            changed = true;
        }
        Ok(changed)
    }

    fn exited(&mut self) -> Option<HarnessError> {
        match self.nspawn.try_wait() {
            Ok(Some(status)) => {
                self.stopped = true;
                Some(HarnessError::Exited { name: self.name.clone(), status, console: tail(&self.console(), 40) })
            }
            _ => None,
        }
    }

    fn timeout(&self, after: Duration, what: &str) -> HarnessError {
        HarnessError::Timeout {
            name: self.name.clone(),
            after,
            what: what.to_string(),
            console: tail(&self.console(), 40),
        }
    }

    /// Finds the container's PID 1: a descendant of `systemd-nspawn` whose pid in its own pid
    /// namespace is 1 and whose pid namespace is not ours.
    fn wait_for_leader(&mut self, deadline: Instant, after: Duration) -> Result<u32, HarnessError> {
        let nspawn = self.nspawn.id();
        let our_ns = fs::read_link("/proc/self/ns/pid").ok();
        loop {
            if let Some(e) = self.exited() {
                return Err(e);
            }
            if let Some(pid) = find_container_init(nspawn, our_ns.as_deref()) {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(after, "no container init process appeared"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_until_running(&mut self, deadline: Instant, after: Duration) -> Result<(), HarnessError> {
        let mut last = String::new();
        loop {
            if let Some(e) = self.exited() {
                return Err(e);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.timeout(after, &format!("systemctl is-system-running said {:?}", last.trim())));
            }
            // `--wait` blocks until the boot has finished, but fails at once while systemd's
            // private socket is not there yet, so retry.
            let mut child = self
                .command(&["systemctl", "is-system-running", "--wait"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|source| HarnessError::Spawn { what: "nsenter".into(), source })?;
            let status = wait_with_deadline(&mut child, Instant::now() + remaining);
            let mut out = String::new();
            if let Some(mut s) = child.stdout.take() {
                let _ = s.read_to_string(&mut out);
            }
            if status.is_some() {
                let state = out.trim();
                if (state == "running" || state == "degraded") && self.host_path("/run/dbus/system_bus_socket").exists()
                {
                    return Ok(());
                }
                if !state.is_empty() {
                    last = state.to_string();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BootedSystemd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The command line of a `systemd-nspawn` that a unit inside a booted container runs (a weaver
/// nested in the harness, as loomd's systemd backend starts one): user-namespaced, registered
/// with the container's machined, on the host's `/usr`, with `flags` added, then `command`.
pub fn nested_nspawn_argv(machine: &str, root: &str, flags: &[&str], command: &[&str]) -> Vec<String> {
    let base = [
        "/usr/bin/systemd-nspawn",
        "--quiet",
        "--keep-unit",
        "--register=yes",
        "--private-users=pick",
        "--private-users-ownership=chown",
        "--bind-ro=/usr",
    ];
    let tail = ["-M", machine, "-D", root, "--"];
    base.iter().chain(flags).chain(&tail).chain(command).map(|s| s.to_string()).collect()
}

fn validate_machine_name(name: &str) -> Result<(), HarnessError> {
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok { Ok(()) } else { Err(HarnessError::Name(name.to_string())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspawn_command_line() {
        let b = BootedSystemd::builder("t1").bind_ro("/opt/x", "/opt/loom").bind("/tmp/s", "/run/loomd");
        let args = b.args();
        assert_eq!(
            &args[..7],
            ["-D", "/", "--volatile=yes", "--register=no", "--keep-unit", "--console=read-only", "-M"]
        );
        assert_eq!(args[7], "t1");
        assert!(args.contains(&"--bind-ro=/opt/x:/opt/loom".to_string()));
        assert!(args.contains(&"--bind=/tmp/s:/run/loomd".to_string()));
        let boot = args.iter().position(|a| a == "--boot").unwrap();
        assert!(args.iter().position(|a| a.starts_with("--bind")).unwrap() < boot);
        assert_eq!(args[boot + 1], "--");
        assert!(args[boot + 2..].contains(&"systemd.firstboot=off".to_string()));
    }

    #[test]
    fn machine_names() {
        assert!(validate_machine_name("loom-t-1").is_ok());
        for bad in ["", "a b", "a/b", "a_b", &"x".repeat(65)] {
            assert!(validate_machine_name(bad).is_err(), "{bad:?}");
        }
        let (a, b) = (unique_name("t"), unique_name("t"));
        assert_ne!(a, b);
        assert!(validate_machine_name(&a).is_ok());
    }
}
