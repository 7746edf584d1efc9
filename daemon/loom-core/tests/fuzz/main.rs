//! Property tests: every parser loomd runs on a client's bytes (request bodies, exec frames,
//! units) or on its config file, and the SSE parser the agent and the proxy run on a
//! provider's, the egress rule parser (`egress`) and `loom apply` bodies (`declare`), either answers `Ok` or a clear `Err`, never panics, and what it accepts stays
//! within the bounds the rest of loom relies on; streams parse the same in any chunks.

use std::collections::BTreeMap;

use loom_core::api::{CreateWeaver, ExecRequest, exec_frame};
use loom_core::config::{Config, MAX_START_TIMEOUT, WeaverDefaults};
use loom_core::sse::{MAX_SSE_BYTES, SseEvent, SseParser};
use loom_core::units::{ByteSize, Cpus, Span};
use loom_core::weaver::{
    AgentSpec, Image, MAX_MEMORY, MAX_TASKS, MAX_TTL, MIN_MEMORY, MIN_TASKS, WeaverSpec, resolve_spec,
    validate_env_key, validate_name,
};
use proptest::prelude::*;
use proptest::sample::select;

mod config;
mod declare;
mod egress;
mod exec_frames;
mod requests;
mod sse;
mod support;
mod units;

use requests::check_spec;
use support::{cases, split_at_points};
use units::{size_text, span_text};
