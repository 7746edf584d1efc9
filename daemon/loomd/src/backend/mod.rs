//! The weaver backends behind one trait: `nspawn` (loomd runs systemd-nspawn itself) and
//! `systemd` (a transient unit over D-Bus). A Kubernetes backend fits the same trait: a run is
//! started, observed, waited for, stopped and cleaned up, and identified by a serializable
//! [`RunHandle`] that survives a loomd restart in the store.

pub mod nspawn;
pub mod nspawn_args;
pub mod recording;
pub mod systemd;
mod wait;

use std::path::PathBuf;
use std::time::Duration;

use loom_core::config::BackendKind;
use loom_core::weaver::{RunId, WeaverId, WeaverSpec};
use serde::{Deserialize, Serialize};

/// Everything a backend needs to start one run of a weaver. Its environment is not here: the
/// daemon writes it into the root's env file (see `nspawn_args::ENV_FILE`).
#[derive(Debug, Clone)]
pub struct Launch {
    pub id: WeaverId,
    /// The run this launch starts; its handle carries it.
    pub run: RunId,
    pub spec: WeaverSpec,
    /// The weaver's directory in the state dir: `root/`, `run/`, `log`.
    pub dir: PathBuf,
    /// Extra read-only binds (`host path`, `path inside`), e.g. the agent binary.
    pub binds_ro: Vec<(PathBuf, String)>,
    /// The network namespace loomd made for the run (`crate::net`); `None`: the host's for a
    /// `host` weaver, else one nspawn makes (only where loomd runs without its network part).
    pub netns: Option<PathBuf>,
}

impl Launch {
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }
}

/// How to find a run again after loomd restarts; kept in the store as JSON. Every handle
/// names its run: two runs of one weaver never have equal handles, so a report about a run
/// that ended is never taken for one about the run that replaced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RunHandle {
    /// The shim process that supervises systemd-nspawn, identified by pid and start time so
    /// that a recycled pid is never mistaken for it.
    Shim {
        /// Handles stored before run ids existed read as [`RunId::UNKNOWN`].
        #[serde(default)]
        run: RunId,
        pid: i32,
        start_ticks: u64,
    },
    /// A transient systemd unit; its name is the same for every run of a weaver, systemd's
    /// `InvocationID` is not.
    Unit {
        #[serde(default)]
        run: RunId,
        name: String,
        /// systemd's id of this activation of the unit (32 hex digits), when it was read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invocation: Option<String>,
    },
}

impl RunHandle {
    pub fn run(&self) -> RunId {
        match self {
            RunHandle::Shim { run, .. } | RunHandle::Unit { run, .. } => *run,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub handle: RunHandle,
    /// The container's first process, as a host pid.
    pub leader_pid: i32,
    /// The weaver's v2 cgroup id, for the audit programs.
    pub cgroup_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Running {
        leader_pid: Option<i32>,
    },
    Exited {
        code: i32,
    },
    /// The run is gone and nothing says how it ended.
    Lost {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the weaver could not start: {0}")]
    StartFailed(String),
    #[error("the weaver did not start within {0:?}; its log may say why (`loom weaver logs`)")]
    StartTimeout(Duration),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    #[error(transparent)]
    Files(#[from] crate::weaverfs::WeaverFsError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("systemd: {0}")]
    Systemd(String),
    #[error("the {0} backend cannot do this")]
    Unsupported(&'static str),
}

/// A command to run inside a running weaver. `exec` enters the weaver's namespaces itself
/// (through a pidfd) and confines the process like the weaver's own before it runs `argv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPlan {
    /// What runs once inside: the weaver's shell, which sources the weaver's environment and
    /// then execs the command.
    pub argv: Vec<String>,
    /// `cgroup.procs` files the process joins before it execs, so that it is audited and
    /// limited like the rest of the weaver.
    pub join_cgroups: Vec<PathBuf>,
    /// A component of the weaver's cgroup path: the first process must still be below it.
    pub cgroup_marker: String,
}

/// The shell line `argv` of an [`ExecPlan`] runs: the weaver's environment, then the command.
const EXEC_SCRIPT: &str = concat!(nspawn_args::source_env!(), "exec \"$@\"");

/// `argv` for an [`ExecPlan`] running `command`.
pub fn exec_argv(command: &[String]) -> Vec<String> {
    let mut argv = vec!["/bin/sh".to_string(), "-c".into(), EXEC_SCRIPT.into(), "loom-exec".into()];
    argv.extend(command.iter().cloned());
    argv
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;

    /// Makes what must exist before the first process runs (the weaver's cgroup) and returns
    /// the cgroup id, so that audit watches it from the first exec on; `None` where the
    /// backend cannot know it yet (systemd makes a unit's cgroup at start).
    async fn prepare(&self, _launch: &Launch) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }

    /// Starts a run and returns once its first process runs (or with why it could not).
    async fn start(&self, launch: &Launch) -> Result<Started, BackendError>;

    /// What the run is doing now.
    async fn observe(&self, id: &WeaverId, handle: &RunHandle) -> Observed;

    /// Resolves when the run ends (also for a run adopted after a restart).
    async fn wait(&self, id: &WeaverId, handle: &RunHandle) -> Observed;

    /// Stops the run: a polite signal, then force after `grace`.
    async fn stop(&self, id: &WeaverId, handle: &RunHandle, grace: Duration) -> Result<(), BackendError>;

    /// Frees what the backend holds for a weaver that will not run again (cgroups, units).
    async fn cleanup(&self, id: &WeaverId) -> Result<(), BackendError>;

    /// How to run `command` inside the running weaver.
    fn exec_plan(&self, id: &WeaverId, command: &[String]) -> ExecPlan;

    /// The v2 cgroup id of a running weaver, for audit.
    fn cgroup_id(&self, id: &WeaverId) -> Option<u64>;

    /// Where the weaver's output is: `None` for the log file in its directory (`log`), or a
    /// command whose stdout is the log (e.g. `journalctl` for a unit); `follow` keeps it open.
    fn log_command(&self, _id: &WeaverId, _follow: bool) -> Option<Vec<String>> {
        None
    }
}
