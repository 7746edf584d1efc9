//! The seam: every call loom makes to systemd's manager goes through [`SystemdManager`].

use std::time::Duration;

use async_trait::async_trait;

use crate::journal::JournalEntry;
use crate::unit::{LoomUnit, SpecError, StartedUnit, TransientServiceSpec, UnitStatus};

/// What a job of systemd's ended with, when it did not end with `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Start,
    Stop,
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobKind::Start => "start",
            JobKind::Stop => "stop",
        })
    }
}

/// Everything that can go wrong talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(
        "cannot connect to systemd on the system bus at {address}: check that systemd is PID 1 and the bus socket exists, or use the nspawn backend"
    )]
    Connect {
        address: String,
        #[source]
        source: zbus::Error,
    },
    #[error("unit {0} is not loaded: no such weaver unit (it never started, or it was stopped and collected)")]
    NoSuchUnit(String),
    #[error("unit {0} already exists: stop it (or reset it if it failed) before starting it again")]
    UnitExists(String),
    #[error("systemd refused {method} for {unit}")]
    Call {
        method: &'static str,
        unit: String,
        #[source]
        source: zbus::Error,
    },
    #[error("systemd's reply to {method} for {unit} has an unexpected shape")]
    Reply {
        method: &'static str,
        unit: String,
        #[source]
        source: zbus::Error,
    },
    #[error("the {kind} job of {unit} ended with result {result:?}: see `journalctl -u {unit}`")]
    JobFailed {
        unit: String,
        kind: JobKind,
        /// systemd's job result: failed, timeout, canceled, dependency, skipped, ...
        result: String,
    },
    #[error("the {kind} job of {unit} did not finish within {after:?}: it may still finish; check the unit's status")]
    JobTimeout { unit: String, kind: JobKind, after: Duration },
    #[error("the connection to systemd closed while waiting for the {kind} job of {unit}")]
    Disconnected { unit: String, kind: JobKind },
    #[error("{0:?} is not an invocation id: systemd's are 32 lowercase hex digits (the unit's InvocationID)")]
    InvocationId(String),
    #[error("cannot read the journal of {unit}: {reason}")]
    Journal { unit: String, reason: String },
}

/// loom's view of systemd's manager. The real implementation is [`crate::DbusSystemd`];
/// [`crate::RecordingSystemd`] records calls and keeps units in memory for tests without root.
#[async_trait]
pub trait SystemdManager: Send + Sync {
    /// Starts `loom-weaver-<id>.service` as a transient service in `loom.slice` and waits for
    /// its start job to finish. Errors with [`SystemdError::JobFailed`] when systemd reports a
    /// result other than `done`, and [`SystemdError::UnitExists`] when the unit is loaded.
    async fn start_transient_service(&self, spec: &TransientServiceSpec) -> Result<StartedUnit, SystemdError>;

    /// The unit's status, or `None` when it is not loaded.
    async fn unit_status(&self, unit: &str) -> Result<Option<UnitStatus>, SystemdError>;

    /// Stops the unit, waits for the stop job and returns the unit's status after it: `None`
    /// when systemd unloaded it (its process ended cleanly), else the status, typically
    /// `failed` — `systemd-nspawn` exits 1 when its payload is killed — which stays loaded until
    /// [`SystemdManager::reset_failed`]. [`SystemdError::NoSuchUnit`] when it is not loaded.
    async fn stop_unit(&self, unit: &str) -> Result<Option<UnitStatus>, SystemdError>;

    /// Clears a failed unit so it is unloaded and its name can be used again.
    /// [`SystemdError::NoSuchUnit`] when it is not loaded.
    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError>;

    /// Every loaded `loom-weaver-*.service`, in any state, for re-adoption after a restart.
    async fn list_loom_units(&self) -> Result<Vec<LoomUnit>, SystemdError>;

    /// The leader (PID 1, in the caller's pid namespace as systemd-machined sees it) of the
    /// container registered with systemd-machined as `machine` (`systemd-nspawn -M NAME
    /// --register=yes`), or `None` if no such machine is registered. `nsenter -t LEADER`
    /// enters the weaver; `/proc/LEADER/cgroup` gives its cgroup.
    async fn machine_leader(&self, machine: &str) -> Result<Option<u32>, SystemdError>;

    /// The last `max` journal entries of one run of `unit`, the activation whose
    /// `InvocationID` is `invocation`, oldest first: systemd's own entries about it (how it
    /// ended, also after the unit was unloaded) and what its processes wrote (why a start
    /// failed). [`SystemdError::InvocationId`] when `invocation` is not one.
    async fn run_journal(&self, unit: &str, invocation: &str, max: usize) -> Result<Vec<JournalEntry>, SystemdError>;
}
