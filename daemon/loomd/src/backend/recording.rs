//! A backend that runs nothing and records what it was asked, for testing the daemon's
//! logic (states, restarts, access, re-adoption) without root.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use loom_core::config::BackendKind;
use loom_core::weaver::WeaverId;
use tokio::sync::watch;

use super::{Backend, BackendError, ExecPlan, Launch, Observed, RunHandle, Started};

#[derive(Debug, Default)]
pub struct RecordingBackend {
    calls: Mutex<Vec<String>>,
    /// Per run (by handle pid): the exit code once it ended.
    runs: Mutex<HashMap<i32, watch::Sender<Option<i32>>>>,
    next_pid: Mutex<i32>,
    fail_starts: Mutex<Option<String>>,
    /// A real process every run reports as its leader (its network namespace stands in for
    /// the weaver's); 0: the run's own made-up pid.
    leader: Mutex<i32>,
    /// The pid (and cgroup id) `prepare` chose for the next start.
    prepared: Mutex<Option<i32>>,
}

impl RecordingBackend {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Ends the run whose leader is `pid` with `code`, as if its command exited.
    pub fn finish(&self, pid: i32, code: i32) {
        if let Some(tx) = self.runs.lock().unwrap_or_else(|e| e.into_inner()).get(&pid) {
            tx.send_replace(Some(code));
        }
    }

    /// Makes every later start fail with `reason` (None: succeed again).
    pub fn fail_starts(&self, reason: Option<&str>) {
        *self.fail_starts.lock().unwrap_or_else(|e| e.into_inner()) = reason.map(str::to_string);
    }

    /// Makes every later run report `pid` as its first process.
    pub fn lead_with(&self, pid: i32) {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = pid;
    }

    fn next_pid(&self) -> i32 {
        let mut n = self.next_pid.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        1000 + *n
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(call);
    }

    fn run(&self, handle: &RunHandle) -> Option<watch::Receiver<Option<i32>>> {
        let RunHandle::Shim { pid, .. } = handle else {
            return None;
        };
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).get(pid).map(|tx| tx.subscribe())
    }
}

#[async_trait::async_trait]
impl Backend for RecordingBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Nspawn
    }

    /// Names the next run's cgroup before it starts, as the nspawn backend does.
    async fn prepare(&self, _launch: &Launch) -> Result<Option<u64>, BackendError> {
        let pid = self.next_pid();
        *self.prepared.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
        Ok(Some(pid as u64))
    }

    async fn start(&self, launch: &Launch) -> Result<Started, BackendError> {
        self.record(format!("start {} {}", launch.spec.name, launch.spec.command.join(" ")));
        if let Some(reason) = self.fail_starts.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(BackendError::StartFailed(reason));
        }
        let prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner()).take();
        let pid = prepared.unwrap_or_else(|| self.next_pid());
        let (tx, _) = watch::channel(None);
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        // Runs that ended and that nobody waits for are forgotten: the fake does not grow.
        runs.retain(|_, tx| tx.borrow().is_none() || tx.receiver_count() > 0);
        runs.insert(pid, tx);
        drop(runs);
        let leader = *self.leader.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Started {
            handle: RunHandle::Shim { run: launch.run, pid, start_ticks: 1 },
            leader_pid: if leader > 0 { leader } else { pid },
            cgroup_id: Some(pid as u64),
        })
    }

    async fn observe(&self, _id: &WeaverId, handle: &RunHandle) -> Observed {
        match self.run(handle) {
            Some(rx) => match *rx.borrow() {
                Some(code) => Observed::Exited { code },
                None => Observed::Running {
                    leader_pid: if let RunHandle::Shim { pid, .. } = handle { Some(*pid) } else { None },
                },
            },
            None => Observed::Lost { reason: "unknown run".into() },
        }
    }

    async fn wait(&self, id: &WeaverId, handle: &RunHandle) -> Observed {
        if let Some(mut rx) = self.run(handle) {
            let _ = rx.wait_for(|c| c.is_some()).await;
        }
        self.observe(id, handle).await
    }

    async fn stop(&self, id: &WeaverId, handle: &RunHandle, _grace: Duration) -> Result<(), BackendError> {
        self.record(format!("stop {id}"));
        if let RunHandle::Shim { pid, .. } = handle {
            self.finish(*pid, 143);
        }
        Ok(())
    }

    async fn cleanup(&self, id: &WeaverId) -> Result<(), BackendError> {
        self.record(format!("cleanup {id}"));

        Ok(())
    }

    fn exec_plan(&self, id: &WeaverId, command: &[String]) -> ExecPlan {
        ExecPlan { argv: super::exec_argv(command), join_cgroups: vec![], cgroup_marker: id.to_string() }
    }

    fn cgroup_id(&self, _id: &WeaverId) -> Option<u64> {
        None
    }
}
