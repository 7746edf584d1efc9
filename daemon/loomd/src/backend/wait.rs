//! The waits both host backends share: the start wait (from "the container is coming up" to
//! "the weaver's command runs") and waiting for a process's exit through a pidfd. The
//! backends differ only in how they find the container's first process and learn that a run
//! ended, which they answer through [`StartProbe`].

use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use super::BackendError;
use super::nspawn_args::START_MARKER;
use crate::procfs;
use crate::weaverfs::WeaverRoot;

/// How long after the start marker a start waits for the exec itself before it accepts a
/// command that rewrites its own argv (the marker is written right before exec).
const EXEC_GRACE: Duration = Duration::from_millis(100);
/// The longest pause between two looks; starts take tens of milliseconds, so the first
/// pauses are far shorter.
const MAX_PAUSE: Duration = Duration::from_millis(10);

/// What a backend answers the start wait.
pub(super) trait StartProbe {
    /// The container's first process (the payload's pid 2) as a host pid, once there is one.
    async fn leader(&mut self) -> Option<i32>;
    /// Whether the run has ended. Asked on every turn; a probe whose question is costly
    /// answers from its last look until enough time has passed.
    async fn ended(&mut self) -> Result<bool, BackendError>;
}

/// How a start wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartWait {
    /// The command was reached (or the run ended after it was): `leader` is its first process.
    Reached { leader: Option<i32> },
    /// The run ended and the start wrapper never wrote its marker.
    EndedBeforeCommand,
    /// Neither by the deadline; the caller stops what it started.
    TimedOut,
}

/// Waits until the start wrapper has written its marker in `root` and exec'd `command`, the
/// run has ended, or `deadline` passes.
pub(super) async fn wait_for_command<P: StartProbe>(
    root: &WeaverRoot,
    command: &[String],
    deadline: Instant,
    probe: &mut P,
) -> Result<StartWait, BackendError> {
    let wanted_cmdline: Vec<u8> = command.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let mut pause = Duration::from_millis(1);
    let mut marked_at: Option<Instant> = None;
    loop {
        if marked_at.is_none() && root.is_file(START_MARKER) {
            marked_at = Some(Instant::now());
        }
        if let Some(marked) = marked_at {
            // Accept a command that rewrites its own argv or has already ended.
            let leader = probe.leader().await;
            let execd = leader
                .is_some_and(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted_cmdline));
            if execd || marked.elapsed() > EXEC_GRACE || probe.ended().await? {
                return Ok(StartWait::Reached { leader });
            }
        } else if probe.ended().await? && !root.is_file(START_MARKER) {
            // The marker is looked at again after the end: it may have been written between.
            return Ok(StartWait::EndedBeforeCommand);
        }
        if Instant::now() >= deadline {
            return Ok(StartWait::TimedOut);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// What waiting on a pidfd found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PidWait {
    /// The process is gone (or was already).
    Exited,
    /// No pidfd for it (old kernel, or not in our pid namespace): the caller polls instead.
    Unavailable,
}

/// Waits for `pid` to exit, through a pidfd. The caller has made sure `pid` is the process it
/// means (a pidfd of a recycled pid waits for a stranger).
pub(super) async fn pidfd_exit(pid: i32) -> PidWait {
    match procfs::pidfd_open(pid) {
        Ok(fd) => {
            // SAFETY: the pidfd is owned by the AsyncFd for as long as it is registered and is
            // closed only when the AsyncFd drops.
            match unsafe { AsyncFd::register(fd) } {
                Ok(fd) => {
                    let _ = fd.readable().await;
                    PidWait::Exited
                }
                Err(_) => PidWait::Unavailable,
            }
        }
        Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => PidWait::Exited,
        Err(_) => PidWait::Unavailable,
    }
}

/// Waits until the process `pid` that started at `start_ticks` is gone: through a pidfd, else
/// by polling its start time (so a recycled pid never keeps the wait going).
pub(super) async fn process_gone(pid: i32, start_ticks: u64) {
    if !procfs::is_same_process(pid, start_ticks) {
        return;
    }
    if pidfd_exit(pid).await == PidWait::Unavailable {
        while procfs::is_same_process(pid, start_ticks) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    /// A probe over a root the test writes the marker into.
    struct Probe {
        leader: Option<i32>,
        ended_after: Option<Instant>,
        asked: usize,
    }

    impl StartProbe for Probe {
        async fn leader(&mut self) -> Option<i32> {
            self.leader
        }
        async fn ended(&mut self) -> Result<bool, BackendError> {
            self.asked += 1;
            Ok(self.ended_after.is_some_and(|t| Instant::now() >= t))
        }
    }

    fn root() -> (tempfile::TempDir, WeaverRoot) {
        let tmp = tempfile::tempdir().unwrap();
        let root = WeaverRoot::open(tmp.path()).unwrap();
        (tmp, root)
    }

    #[test]
    fn a_run_that_ends_without_the_marker_failed_to_start() {
        block(async {
            let (_tmp, root) = root();
            let mut p = Probe { leader: None, ended_after: Some(Instant::now()), asked: 0 };
            let deadline = Instant::now() + Duration::from_secs(5);
            let got = wait_for_command(&root, &["/bin/true".into()], deadline, &mut p).await.unwrap();
            assert_eq!(got, StartWait::EndedBeforeCommand);
        });
    }

    #[test]
    fn the_marker_and_the_exec_are_a_start() {
        block(async {
            let (tmp, root) = root();
            std::fs::create_dir_all(tmp.path().join(".loom")).unwrap();
            std::fs::write(tmp.path().join(START_MARKER.trim_start_matches('/')), "").unwrap();
            // This test's own process runs `command`: its cmdline is what is waited for.
            let me = std::process::id() as i32;
            let cmdline = std::fs::read(format!("/proc/{me}/cmdline")).unwrap();
            let command: Vec<String> = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let mut p = Probe { leader: Some(me), ended_after: None, asked: 0 };
            let t = Instant::now();
            let got = wait_for_command(&root, &command, t + Duration::from_secs(5), &mut p).await.unwrap();
            assert_eq!(got, StartWait::Reached { leader: Some(me) });
            assert!(t.elapsed() < EXEC_GRACE, "an exec'd command is accepted at once: {:?}", t.elapsed());

            // Another command line: accepted after the grace, not before.
            let mut p = Probe { leader: Some(me), ended_after: None, asked: 0 };
            let t = Instant::now();
            let got = wait_for_command(&root, &["/nonexistent".into()], t + Duration::from_secs(5), &mut p).await;
            assert_eq!(got.unwrap(), StartWait::Reached { leader: Some(me) });
            assert!(t.elapsed() >= EXEC_GRACE, "{:?}", t.elapsed());
        });
    }

    #[test]
    fn nothing_happening_times_out() {
        block(async {
            let (_tmp, root) = root();
            let mut p = Probe { leader: None, ended_after: None, asked: 0 };
            let t = Instant::now();
            let got = wait_for_command(&root, &["/bin/true".into()], t + Duration::from_millis(200), &mut p).await;
            assert_eq!(got.unwrap(), StartWait::TimedOut);
            assert!(t.elapsed() >= Duration::from_millis(200));
            assert!(p.asked > 5, "the end is asked on every turn: {}", p.asked);
        });
    }

    #[test]
    fn waiting_for_a_child_that_exits() {
        block(async {
            let mut child = std::process::Command::new("/bin/sleep").arg("0.2").spawn().unwrap();
            let pid = child.id() as i32;
            let ticks = procfs::start_ticks(pid).unwrap();
            let t = Instant::now();
            // A pidfd becomes readable at exit, before the zombie is reaped.
            tokio::time::timeout(Duration::from_secs(5), async {
                assert_eq!(pidfd_exit(pid).await, PidWait::Exited);
            })
            .await
            .unwrap();
            assert!(t.elapsed() >= Duration::from_millis(150), "{:?}", t.elapsed());
            child.wait().unwrap();
            // Gone and reaped: no pidfd, and the wait returns at once.
            tokio::time::timeout(Duration::from_secs(1), process_gone(pid, ticks)).await.unwrap();
        });
    }
}
