//! The LLM proxy as loomd runs it: one listener per weaver inside that weaver's network
//! namespace (so a connection there *is* that weaver), tokens in the weaver's environment
//! instead of keys, usage persisted to the store for `loom usage`.

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use loom_core::weaver::{NetworkMode, RunId, WeaverId};
use loom_proxy::{KeySource, Proxy, UsageRecord, UsageSink, WeaverToken, WeaverTotals};
use rusqlite::{Connection, params};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::daemon::WeaverHooks;
use crate::secrets::Secrets;
use crate::store::WeaverRecord;

/// The port the proxy listens on inside every weaver's own network namespace.
pub const WEAVER_PROXY_PORT: u16 = 4141;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("the [providers]/[proxy] config is invalid")]
    Config(#[source] loom_proxy::ConfigError),
    #[error("the LLM proxy could not start")]
    Proxy(#[source] loom_proxy::ProxyError),
    #[error("the usage store could not be opened")]
    Store(#[source] rusqlite::Error),
    #[error("the usage store could not be migrated")]
    Schema(#[source] loom_sqlite::MigrateError),
    #[error("binding the proxy's host listener")]
    Bind(#[source] std::io::Error),
}

impl KeySource for Secrets {
    fn key(&self, secret_path: &str) -> Option<Zeroizing<String>> {
        self.get(secret_path)
    }
}

const USAGE_MIGRATIONS: &[&str] = &["CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        weaver TEXT NOT NULL,
        thread TEXT,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        status TEXT NOT NULL,
        http_status INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        started_at REAL NOT NULL,
        ttfb_ms REAL NOT NULL,
        latency_ms REAL NOT NULL
    );
    CREATE INDEX usage_weaver ON usage(weaver);"];

/// Usage records, persisted as they finish (on the request's task: one short insert).
#[derive(Debug)]
pub struct UsageStore {
    conn: Mutex<Connection>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageSummary {
    pub weaver: String,
    pub requests: u64,
    pub failed: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
}

impl UsageStore {
    pub fn open(db: &Path) -> Result<UsageStore, LlmError> {
        let mut conn = Connection::open(db).map_err(LlmError::Store)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
            .map_err(LlmError::Store)?;
        loom_sqlite::migrate(&mut conn, "usage", USAGE_MIGRATIONS).map_err(LlmError::Schema)?;
        Ok(UsageStore { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, r: &UsageRecord) -> Result<(), rusqlite::Error> {
        let started = r.started_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        self.conn().execute(
            "INSERT INTO usage (weaver, thread, provider, model, endpoint, input_tokens, output_tokens,
                cache_read_tokens, cache_write_tokens, cost_usd, status, http_status, attempts, started_at,
                ttfb_ms, latency_ms) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)",
            params![
                r.weaver,
                r.thread,
                r.provider,
                r.model,
                r.endpoint,
                r.usage.input_tokens as i64,
                r.usage.output_tokens as i64,
                r.usage.cache_read_tokens as i64,
                r.usage.cache_write_tokens as i64,
                r.cost_usd,
                r.status.as_str(),
                r.http_status,
                r.attempts,
                started,
                r.time_to_first_byte.as_secs_f64() * 1000.0,
                r.latency.as_secs_f64() * 1000.0
            ],
        )?;
        Ok(())
    }

    /// Totals per weaver, for `loom usage`.
    pub fn summaries(&self, weaver: Option<&str>) -> Result<Vec<UsageSummary>, rusqlite::Error> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT weaver, COUNT(*), SUM(status != 'ok'), SUM(input_tokens), SUM(output_tokens),
                SUM(cache_read_tokens), SUM(cache_write_tokens), SUM(cost_usd)
             FROM usage WHERE ?1 IS NULL OR weaver = ?1 GROUP BY weaver ORDER BY weaver",
        )?;
        let rows = stmt.query_map([weaver], |r| {
            Ok(UsageSummary {
                weaver: r.get(0)?,
                requests: r.get::<_, i64>(1)? as u64,
                failed: r.get::<_, i64>(2)? as u64,
                input_tokens: r.get::<_, i64>(3)? as u64,
                output_tokens: r.get::<_, i64>(4)? as u64,
                cache_read_tokens: r.get::<_, i64>(5)? as u64,
                cache_write_tokens: r.get::<_, i64>(6)? as u64,
                cost_usd: r.get(7)?,
            })
        })?;
        rows.collect()
    }

    fn totals(&self, weaver: &str) -> WeaverTotals {
        let s = self.summaries(Some(weaver)).ok().and_then(|v| v.into_iter().next()).unwrap_or_default();
        WeaverTotals {
            requests: s.requests,
            failed: s.failed,
            refused: 0,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cache_read_tokens: s.cache_read_tokens,
            cache_write_tokens: s.cache_write_tokens,
            tokens: s.input_tokens + s.output_tokens + s.cache_read_tokens + s.cache_write_tokens,
            cost_usd: s.cost_usd,
        }
    }
}

impl UsageSink for UsageStore {
    fn record(&self, record: UsageRecord) {
        if let Err(e) = self.insert(&record) {
            tracing::error!(weaver = %record.weaver, error = %e, "a usage record could not be stored");
        }
    }
}

/// The proxy and what loomd keeps around it.
#[derive(Debug)]
pub struct Llm {
    proxy: Arc<Proxy>,
    usage: Arc<UsageStore>,
    /// The host-side listener's port, for weavers on the host network.
    host_port: u16,
    /// What each weaver's live run holds here; its `after_stop` takes it out.
    runs: Mutex<HashMap<WeaverId, LiveRun>>,
    /// Limits an admin set for a weaver; they outlive its runs (not loomd restarts).
    limits: Mutex<HashMap<WeaverId, loom_proxy::WeaverLimits>>,
}

/// One run's registration: its token is the proxy's entry for the weaver, and its listener
/// (inside the weaver's network namespace) keeps that namespace alive while it is open.
#[derive(Debug)]
struct LiveRun {
    run: RunId,
    network: Option<NetworkMode>,
    listener: Option<tokio::task::AbortHandle>,
}

/// A change to a weaver's limits; `Some(0)` means unlimited, `None` leaves it as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsChange {
    pub max_tokens: Option<u64>,
    pub max_usd: Option<f64>,
    pub requests_per_minute: Option<u32>,
    pub max_concurrent: Option<u32>,
}

impl LimitsChange {
    /// `limits` with this change made, or why the change is refused.
    pub fn apply(self, mut limits: loom_proxy::WeaverLimits) -> Result<loom_proxy::WeaverLimits, String> {
        if self.max_usd.is_some_and(|v| !v.is_finite() || v < 0.0) {
            return Err("--max-usd must be a number of dollars, 0 or more (0 = unlimited)".into());
        }
        if let Some(v) = self.max_tokens {
            limits.max_tokens = (v > 0).then_some(v);
        }
        if let Some(v) = self.max_usd {
            limits.max_usd = (v > 0.0).then_some(v);
        }
        if let Some(v) = self.requests_per_minute {
            limits.requests_per_minute = (v > 0).then_some(v);
        }
        if let Some(v) = self.max_concurrent {
            limits.max_concurrent = (v > 0).then_some(v);
        }
        Ok(limits)
    }
}

impl Llm {
    pub fn start(
        config: &loom_core::config::Config,
        secrets: Arc<Secrets>,
        db: &Path,
        local: Arc<dyn loom_proxy::LocalRoutes>,
    ) -> Result<Arc<Llm>, LlmError> {
        let pc = loom_proxy::ProxyConfig::from_toml(&config.providers, &config.proxy).map_err(LlmError::Config)?;
        let usage = Arc::new(UsageStore::open(db)?);
        let proxy = Arc::new(
            Proxy::builder(pc, secrets)
                .usage_sink(usage.clone())
                .local_routes(local)
                .build()
                .map_err(LlmError::Proxy)?,
        );
        let host = StdListener::bind(("127.0.0.1", 0)).map_err(LlmError::Bind)?;
        host.set_nonblocking(true).map_err(LlmError::Bind)?;
        let host_port = host.local_addr().map_err(LlmError::Bind)?.port();
        let p = proxy.clone();
        tokio::spawn(async move {
            match tokio::net::TcpListener::from_std(host) {
                Ok(l) => {
                    if let Err(e) = p.serve(l, None).await {
                        tracing::error!(error = %e, "the proxy's host listener stopped");
                    }
                }
                Err(e) => tracing::error!(error = %e, "the proxy's host listener could not start"),
            }
        });
        Ok(Arc::new(Llm {
            proxy,
            usage,
            host_port,
            runs: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
        }))
    }

    fn limits_of(&self, id: &WeaverId) -> loom_proxy::WeaverLimits {
        self.limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_else(|| self.proxy.default_limits())
    }

    /// The weaver's limits, after applying `change` if there is one.
    pub fn limits(&self, id: &WeaverId, change: Option<LimitsChange>) -> Result<loom_proxy::WeaverLimits, String> {
        let mut limits = self.limits_of(id);
        if let Some(c) = change {
            limits = c.apply(limits)?;
            self.limits.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), limits.clone());
            // A weaver that is not running picks them up at its next start.
            let _ = self.proxy.set_limits(id.as_str(), limits.clone());
        }
        Ok(limits)
    }

    pub fn usage(&self, weaver: Option<&str>) -> Result<Vec<UsageSummary>, rusqlite::Error> {
        self.usage.summaries(weaver)
    }

    fn env_for(&self, network: NetworkMode, token: &WeaverToken) -> Vec<(String, String)> {
        let port = if network == NetworkMode::Host { self.host_port } else { WEAVER_PROXY_PORT };
        let base = format!("http://127.0.0.1:{port}");
        vec![
            ("ANTHROPIC_BASE_URL".into(), base.clone()),
            ("ANTHROPIC_API_KEY".into(), token.expose().to_string()),
            ("OPENAI_BASE_URL".into(), format!("{base}/v1")),
            ("OPENAI_API_KEY".into(), token.expose().to_string()),
            ("LOOM_PROXY_TOKEN".into(), token.expose().to_string()),
            ("LOOM_API_URL".into(), base),
        ]
    }

    /// What the proxy holds for weavers: (runs loomd tracks, tokens the proxy knows,
    /// listeners open), for `loom status` and the tests that check nothing leaks.
    pub fn held(&self) -> (usize, usize, usize) {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let listeners = runs.values().filter(|r| r.listener.as_ref().is_some_and(|l| !l.is_finished())).count();
        (runs.len(), self.proxy.usage_all().len(), listeners)
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<WeaverId, LiveRun>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the weaver's own listener inside its network namespace and serves it.
    fn serve_in_netns(&self, id: &WeaverId, netns: &Path) -> std::io::Result<tokio::task::AbortHandle> {
        let listener = crate::net::in_netns(netns, || {
            let l = StdListener::bind(("127.0.0.1", WEAVER_PROXY_PORT))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let proxy = self.proxy.clone();
        let id = id.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = proxy.serve(listener, Some(id.clone())).await {
                tracing::warn!(weaver = %id, error = %e, "the weaver's proxy listener stopped");
            }
        });
        Ok(task.abort_handle())
    }
}

impl Llm {
    /// Ends the weaver's registration (its token stops working) and closes its listener, for
    /// the run `only` if given (a stale run's end leaves a newer run alone), else for any.
    fn release(&self, id: &WeaverId, only: Option<RunId>) {
        let live = {
            let mut runs = self.runs();
            match runs.get(id) {
                Some(l) if only.is_none_or(|r| r == l.run) => runs.remove(id),
                Some(_) => return,
                None => None,
            }
        };
        self.proxy.unregister_weaver(id.as_str());
        if let Some(listener) = live.and_then(|l| l.listener) {
            listener.abort();
        }
    }
}

/// A new token in the proxy's format, so that the weaver's usage so far carries over.
fn fresh_token() -> WeaverToken {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    WeaverToken::parse(&format!("loom-wv-{hex}")).unwrap_or_else(|| unreachable!("the format is the proxy's own"))
}

fn token_from_environ(pid: i32) -> Option<WeaverToken> {
    let raw = Zeroizing::new(std::fs::read(format!("/proc/{pid}/environ")).ok()?);
    raw.split(|b| *b == 0)
        .find_map(|kv| WeaverToken::parse(std::str::from_utf8(kv.strip_prefix(b"LOOM_PROXY_TOKEN=")?).ok()?))
}

#[async_trait::async_trait]
impl WeaverHooks for Llm {
    async fn before_start(
        &self,
        id: &WeaverId,
        run: RunId,
        rec: &WeaverRecord,
    ) -> Result<Vec<(String, String)>, String> {
        let network = rec.info.spec.network;
        // A new run gets a new token; whatever an earlier run left is closed first.
        self.release(id, None);
        self.runs().insert(id.clone(), LiveRun { run, network: Some(network), listener: None });
        if network == NetworkMode::None {
            // `none` means no way out at all: no token, no listener, no proxy variables.
            return Ok(vec![]);
        }
        let totals = self.usage.totals(id.as_str());
        let token = self
            .proxy
            .restore_weaver(id.as_str(), fresh_token(), self.limits_of(id), totals)
            .map_err(|e| format!("registering with the LLM proxy: {e}"))?;
        // loomd made the weaver's namespace already (`crate::net`): the listener is there
        // before the first process, so the weaver's first call is never refused.
        let netns = crate::net::netns_path(id);
        if network != NetworkMode::Host && netns.exists() {
            let listener = self
                .serve_in_netns(id, &netns)
                .map_err(|e| format!("opening the proxy listener in the weaver's network: {e}"))?;
            if let Some(live) = self.runs().get_mut(id) {
                live.listener = Some(listener);
            }
        }
        Ok(self.env_for(network, &token))
    }

    async fn after_start(&self, id: &WeaverId, run: RunId, leader_pid: i32, _cgroup_id: Option<u64>) {
        let network = match self.runs().get(id) {
            Some(live) if live.run == run => live.network,
            _ => None,
        };
        if matches!(self.runs().get(id), Some(live) if live.run == run && live.listener.is_some()) {
            return;
        }
        if network.is_none() {
            // Adopted after a loomd restart: the weaver keeps the token it was started with.
            self.release(id, None);
            self.runs().insert(id.clone(), LiveRun { run, network: None, listener: None });
            if leader_pid <= 0 {
                return;
            }
            let Some(token) = token_from_environ(leader_pid) else { return };
            let totals = self.usage.totals(id.as_str());
            if let Err(e) = self.proxy.restore_weaver(id.as_str(), token, self.limits_of(id), totals) {
                tracing::warn!(weaver = %id, error = %e, "re-registering an adopted weaver with the proxy failed");
                return;
            }
        }
        if leader_pid <= 0 {
            return;
        }
        let private = match network {
            Some(NetworkMode::None) => return,
            Some(n) => n != NetworkMode::Host,
            // Adopted: a weaver in its own namespace has a different one from loomd's.
            None => {
                std::fs::read_link(format!("/proc/{leader_pid}/ns/net")).ok()
                    != std::fs::read_link("/proc/self/ns/net").ok()
            }
        };
        if !private {
            return;
        }
        let netns = match crate::net::netns_path(id) {
            ns if ns.exists() => ns,
            _ => format!("/proc/{leader_pid}/ns/net").into(),
        };
        match self.serve_in_netns(id, &netns) {
            Ok(listener) => match self.runs().get_mut(id) {
                Some(live) if live.run == run => live.listener = Some(listener),
                // Ended while the listener opened: it must not outlive the run.
                _ => listener.abort(),
            },
            Err(e) => tracing::warn!(weaver = %id, error = %e, "the weaver's proxy listener could not be opened"),
        }
    }

    async fn after_stop(&self, id: &WeaverId, run: RunId, _rec: &WeaverRecord) {
        self.release(id, Some(run));
    }

    async fn on_remove(&self, id: &WeaverId, _last_run: Option<RunId>) {
        self.release(id, None);
        self.limits.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    fn status(&self) -> Option<(String, serde_json::Value)> {
        let all = self.proxy.usage_all();
        let requests: u64 = all.values().map(|u| u.totals.requests).sum();
        Some((
            "proxy".into(),
            serde_json::json!({ "weavers": all.len(), "requests": requests, "host_port": self.host_port }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::LimitsChange;

    fn json_number() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            any::<u64>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
            any::<String>().prop_map(serde_json::Value::from),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// `POST /v1/weavers/ID/limits` bodies: parsed or refused, and what is applied is a
        /// limit the proxy can enforce (a finite, positive budget, or none).
        #[test]
        fn limits_bodies_apply_or_are_refused(
            body in prop::collection::btree_map(
                prop::sample::select(vec!["max_tokens", "max_usd", "requests_per_minute", "max_concurrent", "other"]),
                json_number(),
                0..5,
            ),
            raw in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = serde_json::from_slice::<LimitsChange>(&raw);
            let text = serde_json::to_vec(&body).unwrap();
            let Ok(change) = serde_json::from_slice::<LimitsChange>(&text) else { return Ok(()) };
            if let Ok(l) = change.apply(loom_proxy::WeaverLimits::unlimited()) {
                prop_assert!(l.max_usd.is_none_or(|v| v.is_finite() && v > 0.0));
                prop_assert!(l.max_tokens != Some(0) && l.requests_per_minute != Some(0) && l.max_concurrent != Some(0));
            }
        }
    }
}
