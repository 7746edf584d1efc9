//! The proxy end to end over real TCP on 127.0.0.1, against `fake_provider`: a fake of the
//! Anthropic and OpenAI APIs (the real ones are outside this machine) speaking their wire
//! formats and misbehaving on demand.

#[path = "proxy/admission.rs"]
mod admission;
#[path = "proxy/failures.rs"]
mod failures;
mod fake_provider;
mod harness;
#[path = "proxy/streams.rs"]
mod streams;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_provider::{FakeProvider, Part, Reply};
use harness::*;
use http::StatusCode;
use http_body_util::BodyExt;
use loom_proxy::charge::FLOOR_TOKENS;
use loom_proxy::{Proxy, ProxyConfig, UsageStatus, WeaverLimits, WeaverToken};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
