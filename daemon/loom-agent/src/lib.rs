//! The loom agent: runs a Ralph loop inside a weaver (or on a laptop).
//!
//! Map (pure modules first; they do no I/O and are unit-tested without it):
//! - [`machine`]: the agent of one iteration as a state machine, and context-window fitting.
//! - [`policy`]: the loop's stop rules (until, marker, max iterations, budget, breakers, clock).
//! - [`llm`]: Anthropic Messages and OpenAI Chat Completions bodies, stream accumulation over
//!   `loom_core::sse` (the SSE parser the proxy uses too), error classification (429, budget).
//! - [`tools`]: the six tools, confined to the workspace root.
//! - [`http`] / [`client`]: plain-HTTP hyper client, one streaming model call.
//! - [`spool`]: thread events to a local append-only spool, then POSTed to loomd.
//! - [`runner`]: the loop driver's I/O shell (iterations, git commits, checks, status file).
//!
//! Invariants: no tool touches a path outside the workspace root; no credential appears in
//! a `Debug` print or a log; every event is in the spool before it is sent.

pub mod client;
pub mod http;
pub mod llm;
pub mod machine;
pub mod policy;
pub mod runner;
pub mod spool;
pub mod tools;

pub use runner::{AgentSettings, Body, LoopConfig, LoopError, LoopOutcome, run_loop};
