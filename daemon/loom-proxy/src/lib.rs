//! loom's LLM proxy, embedded in loomd.
//!
//! Every model call of a weaver leaves through here: the weaver authenticates with its own
//! token (on a listener bound to it), the proxy routes by endpoint and `provider/model`
//! prefix, swaps the token for the provider's real key (from a [`KeySource`]), streams the
//! response back unbuffered while reading its usage, and enforces per-weaver budgets and rate
//! limits. Same protocol in and out: Anthropic requests reach Anthropic-style endpoints,
//! OpenAI requests OpenAI-style ones; nothing is translated.
//!
//! # Map
//! - [`config`]: `[providers.NAME]` and `[proxy]` parsing (pure).
//! - [`prices`]: the price table, defaults and lookup (pure).
//! - [`route`]: endpoint classification, provider choice, upstream paths (pure).
//! - [`allow`]: the endpoints forwarded per provider surface, matched exactly (pure).
//! - [`charge`]: what a call costs, also when its response reports no usage (pure).
//! - [`usage`]: usage extraction from JSON and SSE as bytes pass (pure), records, the sink.
//! - [`limits`]: the per-weaver ledger: budgets, requests per minute, concurrency (pure).
//! - `retry`: which upstream failures are retried, how long to wait, when to fall back (pure).
//! - `proxy`: weavers and tokens, the serving loop, and the request pipeline in typed stages:
//!   `stages` (authenticate → route → admit, each refusal a `Rejection`), `plan` (provider,
//!   model, budget reservation, what goes upstream), `send` (attempts as `retry` says, the
//!   response passed on).
//! - `call`: one request's accounting, settled exactly once.
//! - `body`: the response body that forwards upstream frames as they come and settles the
//!   request's accounting when it ends, breaks or is dropped.
//! - `vertex`: service-account JWT (RS256) → OAuth access token, cached.
//! - `errors`: the proxy's own errors in each API's error shape.
//!
//! # Invariants
//! - A provider key never appears in a response (upstream 401/403 bodies are replaced, other
//!   error bodies have the key redacted), a log line or a `Debug` print.
//! - Only the inference endpoints in [`allow`]'s tables reach a provider; every other path is
//!   refused before the upstream is contacted.
//! - Every forwarded call is charged something: no response without usage is free.
//! - A request is attributed to exactly one weaver: its token must be registered and, on a
//!   bound listener, belong to that listener's weaver.
//! - Each admitted request is settled exactly once (completion, failure, client disconnect):
//!   its concurrency slot and budget reservation are always given back.
//! - Nothing is retried once the first response byte went to the client.
//! - The pure modules do no I/O.
//!
//! # Wiring it into loomd
//! ```text
//! let config = ProxyConfig::from_toml(&providers_tables, &proxy_table)?;
//! let proxy = Proxy::builder(config, Arc::new(my_sops_keys))   // impl KeySource
//!     .usage_sink(Arc::new(usage_tx))                           // mpsc::UnboundedSender<UsageRecord>
//!     .local_routes(Arc::new(my_routes))                        // impl LocalRoutes, for /loom/...
//!     .build()?;
//! let token = proxy.register_weaver("w-123", proxy.default_limits())?;
//! // inside the weaver: ANTHROPIC_BASE_URL=http://ADDR  OPENAI_BASE_URL=http://ADDR/v1
//! //                    ANTHROPIC_API_KEY=OPENAI_API_KEY=token.expose()
//! let p = proxy.clone();
//! tokio::spawn(async move { p.serve(listener_in_weaver_netns, Some("w-123".into())).await });
//! // on removal: proxy.unregister_weaver("w-123") (the bound serve() returns)
//! ```

pub mod allow;
mod body;
mod call;
pub mod charge;
pub mod config;
mod errors;
pub mod limits;
pub mod prices;
mod proxy;
mod retry;
pub mod route;
pub mod usage;
mod vertex;

pub use body::ProxyBody;
pub use config::{ApiFamily, ConfigError, Price, PriceTable, ProviderConfig, ProviderKind, ProxyConfig, RetryConfig};
pub use errors::{ErrorKind, error_json};
pub use limits::{Refusal, WeaverLimits, WeaverTotals, WeaverUsage};
pub use proxy::{BoxFuture, KeySource, LocalRoutes, Proxy, ProxyBuilder, ProxyError, WeaverToken};
pub use usage::{NullSink, Usage, UsageRecord, UsageSink, UsageStatus};
