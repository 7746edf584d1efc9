//! Types that cross the wire between the loom agent (inside a weaver) and loomd.
//!
//! The agent writes [`ThreadEvent`]s to its spool and POSTs them as an [`EventBatch`] to
//! `${LOOM_API_URL}/loom/v1/threads/events`; loomd answers with an [`AppendResponse`] and feeds
//! the batch to [`crate::append_events`]. The agent's progress file is an [`AgentStatus`].

use serde::{Deserialize, Serialize};

/// The path (below `LOOM_API_URL`) where loomd accepts event batches.
pub const EVENTS_PATH: &str = "/loom/v1/threads/events";

/// Most events one batch may carry; the agent splits larger backlogs.
pub const MAX_BATCH_EVENTS: usize = 500;
/// Longest searchable text of one event; longer text is cut (the payload keeps the rest).
pub const MAX_EVENT_TEXT: usize = 16 * 1024;
/// Largest serialized payload of one event.
pub const MAX_EVENT_PAYLOAD: usize = 256 * 1024;
/// Largest request body of one batch loomd should read.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Longest thread or weaver id.
pub const MAX_ID_LEN: usize = 128;

/// What happened. Stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A loop started: the text is the prompt's first line, the payload the loop's settings.
    ThreadStart,
    IterationStart,
    ModelRequest,
    ModelReply,
    ToolCall,
    ToolResult,
    IterationEnd,
    CheckResult,
    Commit,
    /// The provider asked to wait (429 with retry-after); the loop paused without burning an iteration.
    Pause,
    /// The loop stopped; the payload carries `reason` (a [`StopReason`]).
    Stop,
    Error,
    /// Output of a bring-your-own-agent command, or anything else worth keeping.
    Output,
    /// A kind this version does not know (sent by a newer agent); kept, not rejected.
    #[serde(other)]
    Other,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ThreadStart => "thread_start",
            EventKind::IterationStart => "iteration_start",
            EventKind::ModelRequest => "model_request",
            EventKind::ModelReply => "model_reply",
            EventKind::ToolCall => "tool_call",
            EventKind::ToolResult => "tool_result",
            EventKind::IterationEnd => "iteration_end",
            EventKind::CheckResult => "check_result",
            EventKind::Commit => "commit",
            EventKind::Pause => "pause",
            EventKind::Stop => "stop",
            EventKind::Error => "error",
            EventKind::Output => "output",
            EventKind::Other => "other",
        }
    }

    pub fn parse(s: &str) -> EventKind {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or(EventKind::Other)
    }
}

/// One step of a thread. `(thread_id, seq)` identifies it: sending it twice stores it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadEvent {
    pub thread_id: String,
    pub weaver_id: String,
    /// Dense, starting at 1 for each thread.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub kind: EventKind,
    /// The loop iteration this event belongs to (0 before the first one).
    #[serde(default)]
    pub iteration: u32,
    /// Human-readable text: what search indexes and `thread show` prints.
    #[serde(default)]
    pub text: String,
    /// Structured detail (tool input, usage, exit code, ...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub payload: serde_json::Value,
}

/// The body of `POST /loom/v1/threads/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub events: Vec<ThreadEvent>,
}

/// loomd's answer to an [`EventBatch`]: once the agent has it, every event of the batch is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AppendResponse {
    /// Events stored now.
    pub inserted: usize,
    /// Events that were already stored (a resend); not an error.
    pub duplicates: usize,
}

/// Why a loop stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopReason {
    /// The `--until` command exited 0.
    UntilPassed,
    /// The agent printed the completion marker (and `--until`, if set, passed).
    CompletionMarker,
    MaxIterations {
        iterations: u32,
    },
    /// The proxy answered that the weaver's budget is spent.
    BudgetExhausted {
        message: String,
    },
    /// N iterations in a row changed nothing in the git tree.
    NoProgress {
        iterations: u32,
    },
    /// The same error M times in a row.
    RepeatedError {
        count: u32,
        error: String,
    },
    WallClock {
        limit_secs: u64,
    },
    /// SIGTERM/SIGINT or a shutdown request.
    Shutdown,
    /// Something the loop cannot go on after (a broken prompt file, a git failure...).
    Fatal {
        error: String,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::UntilPassed => write!(f, "--until command passed"),
            StopReason::CompletionMarker => write!(f, "agent printed the completion marker"),
            StopReason::MaxIterations { iterations } => {
                write!(f, "reached --max-iterations ({iterations})")
            }
            StopReason::BudgetExhausted { message } => write!(f, "budget exhausted: {message}"),
            StopReason::NoProgress { iterations } => {
                write!(f, "circuit breaker: {iterations} iterations without a change in the tree")
            }
            StopReason::RepeatedError { count, error } => {
                write!(f, "circuit breaker: same error {count} times: {error}")
            }
            StopReason::WallClock { limit_secs } => {
                write!(f, "wall-clock limit of {limit_secs}s passed")
            }
            StopReason::Shutdown => write!(f, "shut down"),
            StopReason::Fatal { error } => write!(f, "fatal: {error}"),
        }
    }
}

/// The agent's progress, rewritten atomically (`status.json` in its state directory) after
/// every change, for `loom weaver ps`/`inspect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AgentStatus {
    pub thread_id: String,
    /// `starting`, `running`, `paused`, `stopped`.
    pub state: String,
    /// The iteration running now, or the last one run.
    pub iteration: u32,
    pub max_iterations: Option<u32>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Only known when the provider (or proxy) reports it; loomd's own metering is authoritative.
    pub cost_usd: Option<f64>,
    pub commits: u32,
    pub stop_reason: Option<StopReason>,
    /// When a 429 paused the loop: until when (ms since the epoch).
    pub paused_until_ms: Option<i64>,
    pub last_error: Option<String>,
    pub started_ms: i64,
    pub updated_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kind_round_trips_and_tolerates_unknown_kinds() {
        for k in [EventKind::ToolCall, EventKind::CheckResult, EventKind::Stop] {
            assert_eq!(EventKind::parse(k.as_str()), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert_eq!(EventKind::parse("from_the_future"), EventKind::Other);
        let e: ThreadEvent =
            serde_json::from_str(r#"{"thread_id":"t","weaver_id":"w","seq":1,"ts_ms":5,"kind":"new_kind"}"#).unwrap();
        assert_eq!(e.kind, EventKind::Other);
        assert_eq!(e.text, "");
    }

    #[test]
    fn stop_reason_is_tagged_json() {
        let r = StopReason::MaxIterations { iterations: 3 };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "max_iterations");
        assert_eq!(v["iterations"], 3);
        assert_eq!(serde_json::from_value::<StopReason>(v).unwrap(), r);
        assert_eq!(r.to_string(), "reached --max-iterations (3)");
    }
}
