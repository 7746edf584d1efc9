//! loom's seam to systemd.
//!
//! - [`unit`]: pure logic: unit names, the properties of a weaver's transient service, exit
//!   statuses and phases. No I/O.
//! - [`SystemdManager`]: the trait every call to systemd's manager goes through, with
//!   [`DbusSystemd`] (zbus, the real one) and [`RecordingSystemd`] (in memory, for tests).
//! - [`journal`]: one run's journal entries (by `InvocationID`) and what systemd's say about
//!   how the run ended; read through [`SystemdManager::run_journal`].
//! - [`harness`]: boots the host's systemd in a `systemd-nspawn` container so tests can use
//!   real systemd, D-Bus and journald where systemd is not PID 1. Uses only std.
//!
//! This crate never builds an nspawn command line: loomd hands it one.

pub mod dbus;
pub mod harness;
pub mod journal;
pub mod manager;
pub mod recording;
pub mod unit;

pub use dbus::DbusSystemd;
pub use journal::{JournalEntry, RunEnd};
pub use manager::{JobKind, SystemdError, SystemdManager};
pub use recording::{Call, RecordingSystemd};
pub use unit::{
    ExitStatus, LoomUnit, Phase, PropValue, ServiceType, SpecError, StartedUnit, TransientServiceSpec, UnitStatus,
};
