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
//! - [`event`] is what an event is, [`decode`] makes one of a ring-buffer record, [`names`]
//!   renders kernel values (flags, hostile bytes) as text.
//!
//! Invariants: only [`audit`] touches the BPF syscall; [`event`], [`decode`], [`names`], [`journal`]'s
//! encoding, [`config`] and [`index::parse_since`] are pure; this crate never
//! calls systemd (journald is only a socket).
//!
//! Wiring in loomd (inside the tokio runtime):
//!
//! ```no_run
//! # async fn wire(
//! #     audit_table: &toml::Table,
//! #     state_dir: &std::path::Path,
//! #     conn: std::sync::Arc<std::sync::Mutex<rusqlite::Connection>>,
//! #     weaver_cgroup: &std::path::Path,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use loom_audit::{Audit, AuditConfig, AuditIndex, cgroup_id, open_sink, pump};
//! let config = AuditConfig::from_toml(audit_table)?;
//! let mut audit = Audit::start(&config)?; // warnings: audit.stats().warnings
//! let events = audit.take_events().expect("first call");
//! let mut sink = open_sink(&config, state_dir)?;
//! tokio::spawn(async move {
//!     pump(events, sink.as_mut(), |batch| {
//!         let conn = conn.lock().unwrap();
//!         // `conn` was migrated once at open (`loom_audit::index::migrate`).
//!         if let Err(e) = AuditIndex::new(&conn).insert(batch) {
//!             tracing::error!(error = %e, "audit index insert failed");
//!         }
//!     })
//!     .await;
//! });
//! // when a weaver starts, before its first process runs in the cgroup:
//! audit.watch(cgroup_id(weaver_cgroup)?, "weaver-id")?;
//! // when it is gone:
//! audit.unwatch(cgroup_id(weaver_cgroup)?)?;
//! # Ok(()) }
//! ```

pub mod audit;
pub mod config;
pub mod decode;
pub mod event;
pub mod index;
pub mod journal;
pub mod layout;
pub mod names;
pub mod sink;

pub use audit::{Audit, AuditError, AuditStats, KindStats, cgroup_id, pump};
pub use config::{AuditConfig, ConfigError, SinkChoice};
pub use event::{AuditEvent, EventDetail, EventKind, NetDetail};
pub use index::{AuditIndex, AuditQuery, IndexError, parse_since};
pub use sink::{AuditSink, JournaldSink, NdjsonSink, SinkError, open_sink};
