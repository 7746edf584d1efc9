//! Helpers for the real-kernel tests and the benchmark: the privilege check, throwaway v2
//! cgroups, and the probe running inside one.
#![allow(dead_code)]

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// Whether this process can load BPF programs and make cgroups. Without: skip loudly, or
/// fail under LOOM_REQUIRE_PRIVILEGED=1.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let v2 = loom_egress::cgroup2_mount().is_some();
    if root && v2 {
        return true;
    }
    let why = format!("{test}: needs root ({root}) and a cgroup v2 mount ({v2})");
    if std::env::var("LOOM_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{why}, and LOOM_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// A v2 cgroup under the unified mount, removed (after its processes are gone) on drop.
pub struct TestCgroup {
    pub path: PathBuf,
    pub id: u64,
    procs: CString,
}

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let root = loom_egress::cgroup2_mount().expect("cgroup2 mount");
        let path = root.join(format!("loom-egress-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let id = loom_egress::cgroup_id(&path).unwrap();
        let procs = CString::new(path.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap();
        TestCgroup { path, id, procs }
    }

    /// A cgroup below this one (as nspawn's payload is below the weaver's unit).
    pub fn child(&self, name: &str) -> TestCgroup {
        let path = self.path.join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let id = loom_egress::cgroup_id(&path).unwrap();
        let procs = CString::new(path.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap();
        TestCgroup { path, id, procs }
    }

    /// Make `cmd` join this cgroup between fork and exec (and, if `own_netns`, enter a new
    /// network namespace with only a loopback that is down, so nothing can leave).
    pub fn place(&self, cmd: &mut Command, own_netns: bool) {
        let procs = self.procs.clone();
        // SAFETY: the closure only calls open/write/close/unshare, which are
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
                if own_netns && libc::unshare(libc::CLONE_NEWNET) != 0 {
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

pub const PROBE: &str = env!("CARGO_BIN_EXE_loom-egress-probe");

/// The probe, running (in a cgroup or not) until dropped.
pub struct Probe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// What one probe command answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(u64),
    Err { errno: i32, micros: u64 },
}

impl Probe {
    pub fn start(cgroup: Option<&TestCgroup>, own_netns: bool) -> Probe {
        let mut cmd = Command::new(PROBE);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        if let Some(cg) = cgroup {
            cg.place(&mut cmd, own_netns);
        }
        let mut child = cmd.spawn().expect("spawn probe");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Probe { child, stdin, stdout }
    }

    /// The probe inside the network namespace at `netns` (and no test cgroup).
    pub fn start_in_netns(netns: &std::path::Path) -> Probe {
        let ns = std::fs::File::open(netns).expect("open the namespace");
        let mut cmd = Command::new(PROBE);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        // SAFETY: setns on a descriptor opened before the fork is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                use std::os::fd::AsRawFd;
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn probe");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Probe { child, stdin, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ask(&mut self, cmd: &str) -> Outcome {
        writeln!(self.stdin, "{cmd}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["ok", n] => Outcome::Ok(n.parse().unwrap()),
            ["err", e, us] => Outcome::Err { errno: e.parse().unwrap(), micros: us.parse().unwrap() },
            _ => panic!("probe answered {line:?} to {cmd:?}"),
        }
    }

    /// `errno` of a refused command, `None` if it worked.
    pub fn errno(&mut self, cmd: &str) -> Option<i32> {
        match self.ask(cmd) {
            Outcome::Ok(_) => None,
            Outcome::Err { errno, .. } => Some(errno),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raise a listener's backlog from std's 128: on a busy two-core machine the accept thread
/// falls behind a connect loop, and every overflowed SYN costs the client a second's retry.
pub fn deepen_backlog(l: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen on a live listening socket only changes its backlog.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 4096) }, 0, "listen: {}", std::io::Error::last_os_error());
}
