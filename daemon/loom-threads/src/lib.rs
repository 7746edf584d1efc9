//! Threads: every step of every loom agent loop, kept in SQLite and searchable with FTS5.
//!
//! Two halves share this crate so the agent and loomd agree on one definition:
//! - [`wire`]: the event JSON the agent spools and POSTs, the batch/ack types, the agent's
//!   status file and stop reasons. No I/O.
//! - [`store`]: schema and migrations on a `rusqlite::Connection` loomd owns, idempotent
//!   appends, `list`/`show`/`search`. [`render`] turns a thread into Markdown.
//!
//! Invariants: an event is identified by `(thread_id, seq)` and stored at most once; a thread
//! belongs to the weaver that first wrote it, and no other weaver can append to it; no query
//! text reaches FTS5 unquoted.

pub mod render;
pub mod store;
pub mod text;
pub mod wire;

pub use render::{format_time, render_context, render_markdown};
pub use store::{
    SCHEMA_VERSION, SearchHit, SearchQuery, StoredEvent, ThreadDetail, ThreadSummary, ThreadsError, append_events,
    configure_connection, delete_thread, get_thread, list_threads, migrate, parse_batch, search, validate_batch,
};
pub use wire::{AgentStatus, AppendResponse, EVENTS_PATH, EventBatch, EventKind, StopReason, ThreadEvent};
