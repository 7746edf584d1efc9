//! The shim: a small process (loomd's own binary, `loomd __shim RUN_DIR`) that runs
//! systemd-nspawn for one weaver run, outlives loomd, and writes how the run ended. Because
//! the shim and not loomd is nspawn's parent, loomd can be killed and restarted while weavers
//! keep running, and still learn their exit codes.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// What loomd tells the shim, in `RUN_DIR/launch.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimPlan {
    pub argv: Vec<String>,
    /// `cgroup.procs` files nspawn joins before it execs.
    pub join_cgroups: Vec<PathBuf>,
    /// Where the run's output goes, capped; without it, to the shim's own stdout and stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<ShimLog>,
    /// The network namespace nspawn starts in (loomd made it; see `crate::net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
}

/// The weaver's log and its cap (see [`crate::logcap`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimLog {
    pub path: PathBuf,
    pub cap: u64,
}

/// How a run ended, in `RUN_DIR/exit.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimExit {
    pub code: i32,
}

pub const PLAN_FILE: &str = "launch.json";
pub const EXIT_FILE: &str = "exit.json";
pub const CHILD_PID_FILE: &str = "nspawn.pid";

/// Joins the given cgroups; runs in the child between fork and exec, so it only writes.
pub fn join_cgroups(files: &[PathBuf]) -> io::Result<()> {
    for f in files {
        fs::write(f, b"0")?;
    }
    Ok(())
}

pub fn read_exit(run_dir: &Path) -> Option<ShimExit> {
    let text = fs::read_to_string(run_dir.join(EXIT_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The shim's whole life. Returns the exit code the shim itself ends with.
pub fn run(run_dir: &Path) -> i32 {
    let plan: ShimPlan = match fs::read_to_string(run_dir.join(PLAN_FILE))
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("loom shim: cannot read {}: {e}", run_dir.join(PLAN_FILE).display());
            write_exit(run_dir, 125);
            return 125;
        }
    };
    // The shim must not die with the terminal or loomd's process group.
    // SAFETY: ignoring signals touches no memory of ours.
    unsafe {
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGHUP, nix::sys::signal::SigHandler::SigIgn);
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn);
    }
    let Some((prog, args)) = plan.argv.split_first() else {
        write_exit(run_dir, 125);
        return 125;
    };
    let cgroups = plan.join_cgroups.clone();
    let netns = match plan.netns.as_ref().map(fs::File::open).transpose() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("loom shim: cannot open the weaver's network namespace: {e}");
            write_exit(run_dir, 125);
            return 125;
        }
    };
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(std::process::Stdio::null());
    let pump = plan.log.as_ref().and_then(|l| match capped_output(&mut cmd, l) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("loom shim: cannot cap the log {}: {e}; the output goes to it uncapped", l.path.display());
            None
        }
    });
    // SAFETY: the closure only writes to cgroup files, which is async-signal-safe enough for
    // a freshly forked single-threaded child (no allocation-dependent locks are held: the
    // shim is single-threaded).
    unsafe {
        cmd.pre_exec(move || {
            join_cgroups(&cgroups)?;
            if let Some(ns) = &netns {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loom shim: cannot start {prog}: {e}");
            write_exit(run_dir, 127);
            return 127;
        }
    };
    // Our copies of the pipe's write end go, so that the pump sees the end of the output.
    drop(cmd);
    let _ = fs::write(run_dir.join(CHILD_PID_FILE), child.id().to_string());
    forward_sigterm_to(child.id() as i32);
    if let Some((log, output)) = pump {
        pump_output(log, output, &mut child);
    }
    let code = match child.wait() {
        Ok(status) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(_) => 125,
    };
    write_exit(run_dir, code);
    0
}

/// Points the command's stdout and stderr at a pipe whose other end goes to the capped log.
fn capped_output(cmd: &mut Command, l: &ShimLog) -> io::Result<(crate::logcap::CappedLog, OwnedFd)> {
    let log = crate::logcap::CappedLog::open(&l.path, l.cap)?;
    let (output, input) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(&output, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
    cmd.stdout(input.try_clone()?).stderr(input);
    Ok((log, output))
}

/// Copies the run's output into the log until every writer is gone, or until the command
/// has ended and what it left in the pipe is read: a process that outlives it holding the
/// pipe must not keep the shim from recording the exit. A log that cannot be written (a full
/// disk) loses output; the weaver is never blocked on it.
fn pump_output(mut log: crate::logcap::CappedLog, output: OwnedFd, child: &mut std::process::Child) {
    use nix::errno::Errno;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut buf = vec![0u8; 64 * 1024];
    let mut ended = false;
    loop {
        let mut fds = [PollFd::new(output.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(250u16));
        loop {
            match nix::unistd::read(&output, &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let _ = log.write(&buf[..n]);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break,
                Err(_) => return,
            }
        }
        if ended {
            return;
        }
        // Reaped here, the status stays with `child` for the wait that follows.
        ended = matches!(child.try_wait(), Ok(Some(_)));
    }
}

static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_sigterm(_: nix::libc::c_int) {
    let pid = CHILD.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe {
            nix::libc::kill(pid, nix::libc::SIGTERM);
        }
    }
}

fn forward_sigterm_to(pid: i32) {
    CHILD.store(pid, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: the handler only calls kill(2), which is async-signal-safe.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::SigHandler::Handler(on_sigterm),
        );
    }
}

fn write_exit(run_dir: &Path, code: i32) {
    let tmp = run_dir.join(".exit.json.tmp");
    let body = serde_json::to_vec(&ShimExit { code }).unwrap_or_default();
    // Written then renamed so that loomd never reads half an exit record.
    if fs::write(&tmp, body).is_ok() {
        let _ = fs::rename(&tmp, run_dir.join(EXIT_FILE));
    }
}
