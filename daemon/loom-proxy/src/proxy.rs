//! The proxy: weavers and their tokens, the serving loop, and the request pipeline, one typed
//! stage a module: [`stages`] (authenticate → route → admit), [`plan`], [`send`].

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_rustls::ConfigBuilderExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::body::ProxyBody;
use crate::config::ProxyConfig;
use crate::limits::{Ledger, WeaverLimits, WeaverTotals, WeaverUsage};
use crate::usage::UsageSink;
use crate::vertex::VertexAuth;
use stages::{Arrived, Destination, Rejection};

/// Where the proxy gets provider keys; loomd implements it over its SOPS decryptor.
pub trait KeySource: Send + Sync + 'static {
    /// The secret at `secret_path` (a dotted key path), or `None` if it is not available.
    fn key(&self, secret_path: &str) -> Option<Zeroizing<String>>;
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// loomd's own routes, mounted under `/loom/` on every weaver's listener; called only for
/// authenticated requests, with the weaver they come from.
pub trait LocalRoutes: Send + Sync + 'static {
    fn handle(&self, weaver_id: String, request: Request<Bytes>) -> BoxFuture<'static, Response<Bytes>>;

    /// The largest request body these routes take; a bigger one is refused with 413 as soon
    /// as it crosses this, before the rest arrives.
    fn max_body_bytes(&self) -> usize {
        1024 * 1024
    }
}

/// A weaver's credential for the proxy: what its SDKs send as their "API key".
#[derive(Clone, PartialEq, Eq)]
pub struct WeaverToken(Zeroizing<String>);

impl WeaverToken {
    /// A token loomd persisted, to hand back to [`Proxy::restore_weaver`]. Tokens the proxy
    /// makes are `loom-wv-` and 64 hex digits; anything else is refused.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("loom-wv-")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(Zeroizing::new(s.to_string())))
    }

    /// The token, to put into the weaver's `ANTHROPIC_API_KEY` / `OPENAI_API_KEY`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WeaverToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeaverToken(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("weaver `{0}` is already registered with the proxy; unregister it first")]
    AlreadyRegistered(String),
    #[error("weaver `{0}` is not registered with the proxy")]
    UnknownWeaver(String),
    #[error("weaver id {0:?} is not valid: use 1 to 128 printable characters without spaces or `/`")]
    InvalidWeaverId(String),
    #[error("that token already belongs to a registered weaver")]
    TokenInUse,
    #[error("could not set up TLS for upstream providers")]
    Tls(#[source] rustls::Error),
    #[error("[providers.{provider}] ca_file {path:?}: {message}")]
    CaFile { provider: String, path: std::path::PathBuf, message: String },
}

pub(crate) struct Weaver {
    pub(crate) id: String,
    pub(crate) ledger: Mutex<Ledger>,
    alive: watch::Sender<bool>,
}

impl fmt::Debug for Weaver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weaver").field("id", &self.id).finish()
    }
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<String, (Zeroizing<String>, Arc<Weaver>)>,
    by_token: HashMap<String, Arc<Weaver>>,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub(crate) struct Inner {
    pub(crate) config: ProxyConfig,
    keys: Arc<dyn KeySource>,
    pub(crate) sink: Arc<dyn UsageSink>,
    local: Option<Arc<dyn LocalRoutes>>,
    client: HttpClient,
    /// Clients of providers with their own `ca_file`.
    own_ca: HashMap<String, HttpClient>,
    registry: RwLock<Registry>,
    vertex: VertexAuth,
}

/// The LLM proxy. Cheap to clone; all clones share weavers and state.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy").field("providers", &self.inner.config.providers.keys()).finish_non_exhaustive()
    }
}

/// Builds a [`Proxy`].
pub struct ProxyBuilder {
    config: ProxyConfig,
    keys: Arc<dyn KeySource>,
    sink: Arc<dyn UsageSink>,
    local: Option<Arc<dyn LocalRoutes>>,
}

impl fmt::Debug for ProxyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ProxyBuilder {
    /// Where finished requests' [`UsageRecord`]s go (default: discarded).
    pub fn usage_sink(mut self, sink: Arc<dyn UsageSink>) -> Self {
        self.sink = sink;
        self
    }

    /// The handler of `/loom/...` (default: 404).
    pub fn local_routes(mut self, routes: Arc<dyn LocalRoutes>) -> Self {
        self.local = Some(routes);
        self
    }

    pub fn build(self) -> Result<Proxy, ProxyError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(ProxyError::Tls)?
            .with_webpki_roots()
            .with_no_client_auth();
        let client = make_client(tls);
        let mut own_ca = HashMap::new();
        for p in self.config.providers.values() {
            let Some(path) = &p.ca_file else { continue };
            let err = |message: String| ProxyError::CaFile { provider: p.name.clone(), path: path.clone(), message };
            let pem = std::fs::read(path).map_err(|e| err(format!("cannot be read ({e})")))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| err(format!("is not PEM ({e})")))?;
                roots.add(cert).map_err(|e| err(format!("holds a certificate rustls refuses ({e})")))?;
            }
            if roots.is_empty() {
                return Err(err("holds no certificate".into()));
            }
            let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(ProxyError::Tls)?
                .with_root_certificates(roots)
                .with_no_client_auth();
            own_ca.insert(p.name.clone(), make_client(tls));
        }
        Ok(Proxy {
            inner: Arc::new(Inner {
                config: self.config,
                keys: self.keys,
                sink: self.sink,
                local: self.local,
                vertex: VertexAuth::new(client.clone()),
                client,
                own_ca,
                registry: RwLock::new(Registry::default()),
            }),
        })
    }
}

fn make_client(tls: rustls::ClientConfig) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(512)
        .build(https)
}

fn valid_weaver_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| !c.is_control() && !c.is_whitespace() && c != '/')
}

fn new_token() -> Zeroizing<String> {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    let mut s = Zeroizing::new(String::with_capacity(8 + 64));
    s.push_str("loom-wv-");
    for b in bytes {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl Proxy {
    pub fn builder(config: ProxyConfig, keys: Arc<dyn KeySource>) -> ProxyBuilder {
        ProxyBuilder { config, keys, sink: Arc::new(crate::usage::NullSink), local: None }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.inner.config
    }

    /// The limits a weaver gets unless loomd says otherwise (`[proxy.limits]`).
    pub fn default_limits(&self) -> WeaverLimits {
        self.inner.config.default_limits.clone()
    }

    /// Gives a weaver a fresh random token. The token works until [`Proxy::unregister_weaver`].
    pub fn register_weaver(&self, weaver_id: &str, limits: WeaverLimits) -> Result<WeaverToken, ProxyError> {
        self.restore_weaver(weaver_id, WeaverToken(new_token()), limits, WeaverTotals::default())
    }

    /// Registers a weaver again after loomd restarted, with the token its environment already
    /// holds and the totals loomd persisted, so its budget keeps counting from where it was.
    /// (A new weaver is the same with a new token and no totals.)
    pub fn restore_weaver(
        &self,
        weaver_id: &str,
        token: WeaverToken,
        limits: WeaverLimits,
        totals: WeaverTotals,
    ) -> Result<WeaverToken, ProxyError> {
        if !valid_weaver_id(weaver_id) {
            return Err(ProxyError::InvalidWeaverId(weaver_id.to_string()));
        }
        let mut reg = self.inner.registry.write().unwrap_or_else(|e| e.into_inner());
        if reg.by_id.contains_key(weaver_id) {
            return Err(ProxyError::AlreadyRegistered(weaver_id.to_string()));
        }
        if reg.by_token.contains_key(token.expose()) {
            return Err(ProxyError::TokenInUse);
        }
        let mut ledger = Ledger::new(limits);
        ledger.totals = totals;
        let weaver =
            Arc::new(Weaver { id: weaver_id.to_string(), ledger: Mutex::new(ledger), alive: watch::channel(true).0 });
        reg.by_token.insert(token.expose().to_string(), weaver.clone());
        reg.by_id.insert(weaver_id.to_string(), (token.0.clone(), weaver));
        Ok(token)
    }

    /// Kills the weaver's token and stops its bound listeners. Returns its final usage.
    pub fn unregister_weaver(&self, weaver_id: &str) -> Option<WeaverUsage> {
        let mut reg = self.inner.registry.write().unwrap_or_else(|e| e.into_inner());
        let (token, weaver) = reg.by_id.remove(weaver_id)?;
        reg.by_token.remove(token.as_str());
        drop(reg);
        let _ = weaver.alive.send(false);
        let usage = lock(&weaver.ledger).snapshot();
        Some(usage)
    }

    /// Changes a weaver's limits (e.g. raises an exhausted budget); usage so far is kept.
    pub fn set_limits(&self, weaver_id: &str, limits: WeaverLimits) -> Result<(), ProxyError> {
        let w = self.inner.weaver(weaver_id).ok_or_else(|| ProxyError::UnknownWeaver(weaver_id.to_string()))?;
        lock(&w.ledger).limits = limits;
        Ok(())
    }

    /// In-memory totals of one registered weaver.
    pub fn usage(&self, weaver_id: &str) -> Option<WeaverUsage> {
        self.inner.weaver(weaver_id).map(|w| lock(&w.ledger).snapshot())
    }

    /// In-memory totals of every registered weaver.
    pub fn usage_all(&self) -> BTreeMap<String, WeaverUsage> {
        let reg = self.inner.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.by_id.iter().map(|(id, (_, w))| (id.clone(), lock(&w.ledger).snapshot())).collect()
    }

    /// Serves proxy connections from `listener` until it fails or, for a bound listener, until
    /// the weaver is unregistered. `bound_weaver`: the weaver whose network namespace the
    /// listener lives in; every request on it must carry that weaver's token. `None`: a shared
    /// listener where the token alone says who is calling.
    pub async fn serve(&self, listener: TcpListener, bound_weaver: Option<String>) -> Result<(), ProxyError> {
        let bound = match bound_weaver {
            Some(id) => Some(self.inner.weaver(&id).ok_or(ProxyError::UnknownWeaver(id))?),
            None => None,
        };
        let mut alive = bound.as_ref().map(|w| w.alive.subscribe());
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = weaver_gone(&mut alive) => return Ok(()),
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let inner = self.inner.clone();
            let bound = bound.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let inner = inner.clone();
                    let bound = bound.clone();
                    async move { Ok::<_, Infallible>(inner.handle(req, bound.as_deref()).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(60))
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "proxy connection ended with an error");
                }
            });
        }
    }
}

async fn weaver_gone(alive: &mut Option<watch::Receiver<bool>>) {
    match alive {
        Some(rx) => {
            while *rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
        None => std::future::pending().await,
    }
}

mod plan;
mod send;
#[cfg(test)]
mod stage_tests;
mod stages;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take every weaver's accounting down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn weaver(&self, id: &str) -> Option<Arc<Weaver>> {
        let reg = self.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.by_id.get(id).map(|(_, w)| w.clone())
    }

    /// One request through the stages; a stage that answers in the provider's place ends it
    /// with its [`Rejection`], in the error shape of the API the client speaks.
    async fn handle(self: &Arc<Self>, req: Request<Incoming>, bound: Option<&Weaver>) -> Response<ProxyBody> {
        let (head, body) = req.into_parts();
        let arrived = Arrived::new(head, &self.config, Instant::now(), SystemTime::now());
        let shape = arrived.shape;
        let stages = async {
            let authenticated = self.authenticate(arrived, bound)?;
            let routed = self.route(authenticated)?;
            let admitted = self.admit(routed, body).await?;
            if admitted.destination == Destination::Local {
                return Ok(self.local(admitted).await);
            }
            let plan = self.plan(admitted)?;
            Ok(self.send(plan).await)
        };
        stages.await.unwrap_or_else(|r: Rejection| r.into_response(shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_parse_back() {
        let a = new_token();
        let b = new_token();
        assert_ne!(*a, *b);
        assert!(WeaverToken::parse(&a).is_some());
        assert!(WeaverToken::parse("loom-wv-xyz").is_none());
        assert!(valid_weaver_id("w-1.a_b"));
        assert!(!valid_weaver_id("a/b") && !valid_weaver_id("") && !valid_weaver_id("a b"));
    }
}
