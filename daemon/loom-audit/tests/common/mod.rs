//! Helpers for the real-kernel tests and the benchmark: privilege checks,
//! throwaway v2 cgroups, and running the probe inside one.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use loom_audit::{Audit, AuditEvent, AuditStats};

/// Whether this process can load BPF programs and create cgroups. Without
/// them: skip loudly, or fail under LOOM_REQUIRE_PRIVILEGED=1.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let v2 = cgroup2_root().is_some();
    if root && btf && v2 {
        return true;
    }
    let why = format!("{test}: needs root ({root}), kernel BTF ({btf}) and a cgroup v2 mount ({v2})");
    if std::env::var("LOOM_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{why}, and LOOM_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// Where the v2 hierarchy is mounted (`/sys/fs/cgroup` or, on hybrid
/// systems, `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    loom_core::mounts::parse_mounts(&mounts).into_iter().find(|m| m.fstype == "cgroup2").map(|m| m.target)
}

/// A v2 cgroup that is removed (after its processes are gone) on drop.
pub struct TestCgroup {
    pub path: PathBuf,
    pub id: u64,
    procs: CString,
}

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let root = cgroup2_root().expect("cgroup2 mount");
        let path = root.join(format!("loom-audit-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let id = loom_audit::cgroup_id(&path).unwrap();
        let procs = CString::new(path.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap();
        TestCgroup { path, id, procs }
    }

    /// A child sub-cgroup (to check that "and below" is watched).
    pub fn child(&self, name: &str) -> TestCgroup {
        let path = self.path.join(name);
        std::fs::create_dir(&path).unwrap();
        let id = loom_audit::cgroup_id(&path).unwrap();
        let procs = CString::new(path.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap();
        TestCgroup { path, id, procs }
    }

    /// Make `cmd` join this cgroup between fork and exec, so everything it
    /// does from its first instruction is inside.
    pub fn place(&self, cmd: &mut Command) {
        let procs = self.procs.clone();
        // SAFETY: the closure only calls open/write/close, which are
        // async-signal-safe, on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if r != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove {}", self.path.display());
    }
}

pub const PROBE: &str = env!("CARGO_BIN_EXE_loom-audit-probe");

/// Run the probe with `actions`, in `cgroup` if given; panics if it fails.
pub fn run_probe(cgroup: Option<&TestCgroup>, actions: &[String]) -> u32 {
    let mut cmd = Command::new(PROBE);
    cmd.args(actions);
    if let Some(cg) = cgroup {
        cg.place(&mut cmd);
    }
    let mut child: Child = cmd.spawn().expect("spawn probe");
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "probe {actions:?} failed: {status}");
    pid
}

/// Wait until every event the kernel issued is received or counted lost.
pub async fn settle(audit: &Audit) -> AuditStats {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = audit.stats();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = audit.stats();
        if s.in_flight() == 0 && s == last {
            return s;
        }
        assert!(Instant::now() < deadline, "audit did not settle: {s:?}");
        last = s;
    }
}

/// Everything queued so far.
pub fn collect(rx: &mut tokio::sync::mpsc::Receiver<AuditEvent>) -> Vec<AuditEvent> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        out.push(ev);
    }
    out
}
