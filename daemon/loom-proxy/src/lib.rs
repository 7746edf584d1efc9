//! loom's LLM proxy, embedded in loomd.
//!
//! Every model call of a weaver leaves through here: the weaver authenticates with its own
//! token (on a listener bound to it), the proxy routes by endpoint and `provider/model`
//! prefix, swaps the token for the provider's real key (from a [`KeySource`]), streams the
//! response back unbuffered while reading its usage, and enforces per-weaver budgets and rate
//! limits. Same protocol in and out: Anthropic requests reach Anthropic-style endpoints,
//! OpenAI requests OpenAI-style ones; nothing is translated.
//!
//! Invariants: a provider key never appears in a response, a log line or a `Debug` print; a
//! request is attributed to exactly one weaver; a request's budget reservation is settled
//! exactly once (on completion, failure or client disconnect).

mod body;
pub mod config;
mod errors;
pub mod limits;
mod proxy;
pub mod route;
pub mod usage;
mod vertex;

pub use body::ProxyBody;
pub use config::{ApiFamily, ConfigError, Price, PriceTable, ProviderConfig, ProviderKind, ProxyConfig, RetryConfig};
pub use errors::{ErrorKind, error_json};
pub use limits::{Refusal, WeaverLimits, WeaverTotals, WeaverUsage};
pub use proxy::{BoxFuture, KeySource, LocalRoutes, Proxy, ProxyBuilder, ProxyError, WeaverToken};
pub use usage::{NullSink, Usage, UsageRecord, UsageSink, UsageStatus};
