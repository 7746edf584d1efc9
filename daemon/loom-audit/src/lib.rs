//! loom-audit: eBPF audit of everything a weaver does.
//!
//! - `ebpf/` (repo root) holds the C programs; the compiled object is embedded
//!   here ([`audit::OBJECT`]) so building this crate needs no clang.
//! - [`Audit`] loads and attaches them, keeps the watched-cgroup map
//!   ([`Audit::watch`]/[`Audit::unwatch`]) and drains the ring buffer into a
//!   bounded queue of [`AuditEvent`]s; [`Audit::stats`] counts every loss.
//! - [`sink`] writes events to journald (native protocol, [`journal`]) or NDJSON;
//!   [`index`] keeps them in SQLite for `loom audit`.
//!
//! Invariants: only [`audit`] touches the BPF syscall; [`event`], [`journal`]'s
//! encoding, [`config`] and [`index::parse_since`] are pure; this crate never
//! calls systemd (journald is only a socket).

pub mod audit;
pub mod config;
pub mod event;
pub mod index;
pub mod journal;
pub mod layout;
pub mod sink;

pub use audit::{Audit, AuditError, AuditStats, KindStats, cgroup_id, pump};
pub use config::{AuditConfig, ConfigError, SinkChoice};
pub use event::{AuditEvent, EventDetail, EventKind, NetDetail};
pub use index::{AuditIndex, AuditQuery, IndexError, parse_since};
pub use sink::{AuditSink, JournaldSink, NdjsonSink, SinkError, open_sink};
