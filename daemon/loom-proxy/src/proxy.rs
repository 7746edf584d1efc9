//! The proxy: weaver identity, per-request routing, limits, upstream calls with retries and
//! fallbacks, and the serving loop.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
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
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::allow::{self, Meter};
use crate::body::{MeteredBody, ProxyBody};
use crate::call::{Call, CallState};
use crate::charge;
use crate::config::{ApiFamily, ProviderConfig, ProviderKind, ProxyConfig};
use crate::errors::{ErrorKind, error_response};
use crate::limits::{Ledger, Refusal, Reservation, WeaverLimits, WeaverTotals, WeaverUsage};
use crate::route::{Endpoint, pick_provider, upstream_path};
use crate::usage::{Usage, UsageRecord, UsageSink, UsageStatus};
use crate::vertex::VertexAuth;

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
        self.insert_weaver(weaver_id, WeaverToken(new_token()), limits, WeaverTotals::default())
    }

    /// Registers a weaver again after loomd restarted, with the token its environment already
    /// holds and the totals loomd persisted, so its budget keeps counting from where it was.
    pub fn restore_weaver(
        &self,
        weaver_id: &str,
        token: WeaverToken,
        limits: WeaverLimits,
        totals: WeaverTotals,
    ) -> Result<WeaverToken, ProxyError> {
        self.insert_weaver(weaver_id, token, limits, totals)
    }

    fn insert_weaver(
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take every weaver's accounting down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request body slower than this is refused (it holds one of the weaver's slots).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A weaver's concurrency slot between [`Ledger::enter`] and the [`Call`] taking it over;
/// given back if the request ends before reaching a provider. A slot of loomd's own routes
/// (`local`) is held until their answer is ready.
struct Slot {
    weaver: Option<Arc<Weaver>>,
    local: bool,
}

impl Slot {
    fn disarm(&mut self) {
        self.weaver = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(w) = self.weaver.take() {
            let mut ledger = lock(&w.ledger);
            if self.local { ledger.leave_local() } else { ledger.leave() }
        }
    }
}

/// Client headers never sent upstream: credentials (replaced by the real key), hop-by-hop
/// headers, and what the proxy sets itself.
const STRIPPED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "proxy-authorization",
    "cookie",
    "host",
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    // Usage is read from the response as it passes, so it must arrive uncompressed.
    "accept-encoding",
    "x-loom-thread",
    // Some servers take these as the real method: the allow-list matched the request's own.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

const STRIPPED_RESPONSE_HEADERS: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "trailer", "upgrade", "set-cookie"];

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// One upstream target: a provider and the model to ask it for.
struct Target<'a> {
    provider: &'a ProviderConfig,
    model: Option<String>,
}

/// What a request needs to be sent (again) upstream.
struct Outgoing<'a> {
    method: Method,
    endpoint: &'a Endpoint,
    path: &'a str,
    query: Option<&'a str>,
    headers: HeaderMap,
    body: Bytes,
    /// The parsed body, when it must be rewritten (model renamed, usage asked for).
    json: Option<serde_json::Value>,
    original_model: Option<String>,
    inject_usage: bool,
    family: ApiFamily,
}

const UNKNOWN_TOKEN: &str = "loom proxy: unknown or revoked weaver token; a weaver can use only its own (ANTHROPIC_API_KEY, OPENAI_API_KEY or LOOM_PROXY_TOKEN in its environment)";

impl Inner {
    fn weaver(&self, id: &str) -> Option<Arc<Weaver>> {
        let reg = self.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.by_id.get(id).map(|(_, w)| w.clone())
    }

    /// Who is calling, from the token and the listener.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        bound: Option<&Weaver>,
    ) -> Result<Arc<Weaver>, (StatusCode, ErrorKind, String)> {
        let token = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
            })
            .map(str::trim);
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err((
                StatusCode::UNAUTHORIZED,
                ErrorKind::Authentication,
                "loom proxy: no token; send the weaver's token as x-api-key or Authorization: Bearer (it is in ANTHROPIC_API_KEY / OPENAI_API_KEY inside the weaver)".into(),
            ));
        };
        let found = {
            let reg = self.registry.read().unwrap_or_else(|e| e.into_inner());
            reg.by_token.get(token).cloned()
        };
        match (found, bound) {
            (None, _) => Err((StatusCode::UNAUTHORIZED, ErrorKind::Authentication, UNKNOWN_TOKEN.into())),
            (Some(w), Some(b)) if w.id != b.id => {
                // Another weaver's token reached this one: it leaked. It is no credential here,
                // and the answer is the unknown token's, so it tells nothing about the token.
                tracing::warn!(listener = %b.id, token_of = %w.id, "proxy refused another weaver's token");
                Err((StatusCode::UNAUTHORIZED, ErrorKind::Authentication, UNKNOWN_TOKEN.into()))
            }
            (Some(w), _) => Ok(w),
        }
    }

    async fn handle(self: &Arc<Self>, req: Request<Incoming>, bound: Option<&Weaver>) -> Response<ProxyBody> {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let anthropic_headers = req.headers().contains_key("anthropic-version");
        let endpoint = Endpoint::classify(req.uri().path(), anthropic_headers);
        let passthrough_provider = match &endpoint {
            Endpoint::Passthrough { provider, .. } => self.config.providers.get(provider),
            _ => None,
        };
        let shape = endpoint.family().or(passthrough_provider.map(|p| p.api)).unwrap_or(if anthropic_headers {
            ApiFamily::Anthropic
        } else {
            ApiFamily::OpenAi
        });

        let weaver = match self.authenticate(req.headers(), bound) {
            Ok(w) => w,
            Err((status, kind, msg)) => {
                tracing::info!(path = %req.uri().path(), status = status.as_u16(), "proxy refused a request: {msg}");
                return error_response(shape, status, kind, &msg);
            }
        };

        match &endpoint {
            Endpoint::NotFound => {
                return error_response(
                    shape,
                    StatusCode::NOT_FOUND,
                    ErrorKind::NotFound,
                    &format!(
                        "loom proxy: no route {} {}; it serves /v1/messages, /v1/messages/count_tokens, /v1/chat/completions, /v1/responses, /v1/models and /proxy/PROVIDER/...",
                        req.method(),
                        req.uri().path()
                    ),
                );
            }
            Endpoint::Passthrough { provider, .. } if passthrough_provider.is_none() => {
                let known: Vec<&str> = self.config.providers.keys().map(String::as_str).collect();
                return error_response(
                    shape,
                    StatusCode::NOT_FOUND,
                    ErrorKind::NotFound,
                    &format!("loom proxy: no provider `{provider}` is configured (configured: {})", known.join(", ")),
                );
            }
            _ => {}
        }

        // The allow-list, before anything else is done for the request.
        let checked = match (&endpoint, passthrough_provider) {
            (Endpoint::Local, _) => None,
            (Endpoint::Passthrough { provider, rest }, Some(p)) => Some(allow::check_passthrough(
                provider,
                p.kind,
                p.api,
                &p.base_url,
                req.method(),
                rest,
                req.uri().query(),
            )),
            (Endpoint::Passthrough { .. }, None) => return internal_error(shape),
            (e, _) => Some(allow::check_direct(
                e.family().unwrap_or(ApiFamily::OpenAi),
                req.method(),
                req.uri().path(),
                req.uri().query(),
            )),
        };
        let meter = match checked {
            None => Meter::Flat,
            Some(Ok(m)) => m,
            Some(Err(forbidden)) => {
                let msg = forbidden.to_string();
                tracing::info!(weaver = %weaver.id, method = %req.method(), "proxy refused a request: {msg}");
                lock(&weaver.ledger).totals.refused += 1;
                return error_response(shape, StatusCode::FORBIDDEN, ErrorKind::Permission, &msg);
            }
        };

        let thread = match req.headers().get("x-loom-thread") {
            None => None,
            Some(v) => match v.to_str() {
                Ok(s)
                    if !s.is_empty()
                        && s.len() <= 128
                        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
                {
                    Some(s.to_string())
                }
                _ => {
                    return error_response(
                        shape,
                        StatusCode::BAD_REQUEST,
                        ErrorKind::InvalidRequest,
                        "loom proxy: x-loom-thread must be 1 to 128 characters of [A-Za-z0-9-_.:]",
                    );
                }
            },
        };

        // loomd's own routes take the same limits as model calls, counted apart.
        let local = endpoint == Endpoint::Local;
        let entered =
            if local { lock(&weaver.ledger).enter_local(started) } else { lock(&weaver.ledger).enter(started) };
        if let Err(refusal) = entered {
            return refused(shape, &weaver.id, &refusal);
        }
        let mut slot = Slot { weaver: Some(weaver.clone()), local };

        let (parts, body) = req.into_parts();
        let max_body = match &self.local {
            Some(routes) if local => routes.max_body_bytes().min(self.config.max_request_bytes),
            _ => self.config.max_request_bytes,
        };
        let body = match self.read_body(body, shape, max_body).await {
            Ok(b) => b,
            Err(r) => return r,
        };

        if local {
            let resp = self.local(weaver, parts, body).await;
            drop(slot);
            return resp;
        }

        // Look into the JSON body: model, streaming, output bound.
        let is_post_json = !body.is_empty() && body.first() == Some(&b'{');
        let peek = if is_post_json {
            match serde_json::from_slice::<Peek>(&body) {
                Ok(p) => Some(p),
                Err(e) if endpoint.routes_by_model() => {
                    return error_response(
                        shape,
                        StatusCode::BAD_REQUEST,
                        ErrorKind::InvalidRequest,
                        &format!("loom proxy: request body is not valid JSON: {e}"),
                    );
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let model: Option<&str> = peek.as_ref().and_then(|p| p.model.as_deref());
        if model.is_some_and(|m| m.len() > 256) {
            return error_response(
                shape,
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidRequest,
                "loom proxy: model names are at most 256 characters",
            );
        }

        let (provider, upstream_model): (&ProviderConfig, Option<&str>) = match &endpoint {
            Endpoint::Passthrough { .. } => match passthrough_provider {
                Some(p) => (p, model),
                None => return internal_error(shape),
            },
            e => {
                let family = e.family().unwrap_or(ApiFamily::OpenAi);
                let by_model = if e.routes_by_model() { model } else { None };
                match pick_provider(&self.config, family, by_model) {
                    Ok((name, m)) => match self.config.providers.get(name) {
                        Some(p) => (p, if e.routes_by_model() { m } else { None }),
                        None => return internal_error(shape),
                    },
                    Err(msg) => {
                        return error_response(
                            shape,
                            StatusCode::NOT_FOUND,
                            ErrorKind::NotFound,
                            &format!("loom proxy: {msg}"),
                        );
                    }
                }
            }
        };
        let family = endpoint.family().unwrap_or(provider.api);

        let streaming = peek.as_ref().and_then(|p| p.stream).unwrap_or(false);
        let chat_like = match &endpoint {
            Endpoint::OpenAiChat => true,
            Endpoint::Passthrough { rest, .. } => rest.ends_with("/chat/completions"),
            _ => false,
        };
        let inject_usage = chat_like
            && streaming
            && peek.as_ref().and_then(|p| p.stream_options.as_ref()).and_then(|s| s.include_usage) != Some(true);

        // Budget reservation: the worst case of this call. A generating call without a `model`
        // in its body (Vertex-style URLs name it in the path) is priced at the default price;
        // any other call reserves the floor it is charged when no usage comes back.
        let want = match meter {
            Meter::Generate => {
                let p = peek.as_ref();
                let out = p
                    .and_then(|p| p.max_tokens.or(p.max_completion_tokens).or(p.max_output_tokens))
                    .unwrap_or(self.config.default_output_tokens);
                let price = self.config.prices.price_for(upstream_model.unwrap_or(""));
                let est =
                    Usage { input_tokens: charge::estimated_input(body.len()), output_tokens: out, ..Usage::default() };
                Reservation { tokens: est.total(), usd: price.cost(&est) }
            }
            Meter::Flat => {
                let (usage, usd) = charge::floor(&self.config.prices, body.len());
                Reservation { tokens: usage.total(), usd }
            }
        };
        let reserved = lock(&weaver.ledger).reserve(want);
        let reservation = match reserved {
            Ok(r) => r,
            Err(refusal) => return refused(shape, &weaver.id, &refusal),
        };

        // From here on the Call owns the slot and settles it.
        slot.disarm();
        let original_model = model.map(str::to_string);
        let upstream_model = upstream_model.map(str::to_string);
        let mut call = Call {
            state: Some(CallState {
                inner: self.clone(),
                weaver: weaver.clone(),
                reservation,
                meter,
                request_bytes: body.len(),
                upstream_status: None,
                reached: false,
                attempt_out: false,
                record: UsageRecord {
                    weaver: weaver.id.clone(),
                    thread,
                    provider: provider.name.clone(),
                    model: upstream_model.clone().unwrap_or_default(),
                    endpoint: parts.uri.path().to_string(),
                    usage: Usage::default(),
                    usage_reported: false,
                    cost_usd: 0.0,
                    status: UsageStatus::Ok,
                    http_status: 0,
                    attempts: 0,
                    started_at,
                    time_to_first_byte: Duration::ZERO,
                    latency: Duration::ZERO,
                },
                started,
            }),
        };

        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
        let connection_listed: Vec<String> = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_ascii_lowercase())
            .collect();
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if STRIPPED_REQUEST_HEADERS.contains(&n) || connection_listed.iter().any(|c| c == n) {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if family == ApiFamily::Anthropic
            && !headers.contains_key("anthropic-version")
            && let Ok(v) = HeaderValue::from_str(&self.config.anthropic_version)
        {
            headers.insert("anthropic-version", v);
        }

        let needs_json =
            inject_usage || upstream_model != original_model || self.has_fallbacks(provider, upstream_model.as_deref());
        let json =
            if needs_json && is_post_json { serde_json::from_slice::<serde_json::Value>(&body).ok() } else { None };
        drop(peek);
        let out = Outgoing {
            method: parts.method.clone(),
            endpoint: &endpoint,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers,
            body,
            json,
            original_model,
            inject_usage,
            family,
        };

        let mut targets = vec![Target { provider, model: upstream_model.clone() }];
        targets.extend(self.fallback_targets(provider, upstream_model.as_deref()));

        let (resp, used, key) = match self.send(&mut call, &out, &targets).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        call.with(|s| {
            s.record.provider = used.provider.name.clone();
            s.record.model = used.model.clone().unwrap_or_default();
            s.record.time_to_first_byte = s.started.elapsed();
            s.record.http_status = resp.status().as_u16();
            s.upstream_status = Some(resp.status().as_u16());
        });
        self.respond(resp, call, shape, used.provider, key).await
    }

    /// Reads a request body of at most `max` bytes: one that declares more is refused at once,
    /// and one that grows past it is refused as soon as it does, not read to its end.
    async fn read_body(&self, body: Incoming, shape: ApiFamily, max: usize) -> Result<Bytes, Response<ProxyBody>> {
        let too_large = || {
            error_response(
                shape,
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorKind::TooLarge,
                &format!("loom proxy: request body is over {max} bytes, the limit of this endpoint; send less"),
            )
        };
        if http_body::Body::size_hint(&body).lower() > max as u64 {
            return Err(too_large());
        }
        let read = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, max).collect()).await;
        match read {
            Ok(Ok(b)) => Ok(b.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
            Ok(Err(e)) => Err(error_response(
                shape,
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidRequest,
                &format!("loom proxy: could not read the request body: {e}"),
            )),
            Err(_) => Err(error_response(
                shape,
                StatusCode::REQUEST_TIMEOUT,
                ErrorKind::InvalidRequest,
                &format!("loom proxy: the request body did not arrive within {BODY_READ_TIMEOUT:?}"),
            )),
        }
    }

    fn has_fallbacks(&self, provider: &ProviderConfig, model: Option<&str>) -> bool {
        !self.config.fallbacks.is_empty()
            && (self.config.fallbacks.contains_key(&provider.name)
                || model.is_some_and(|m| self.config.fallbacks.contains_key(&format!("{}/{m}", provider.name))))
    }

    fn fallback_targets<'a>(&'a self, provider: &ProviderConfig, model: Option<&str>) -> Vec<Target<'a>> {
        if self.config.fallbacks.is_empty() {
            return Vec::new();
        }
        let list = model
            .and_then(|m| self.config.fallbacks.get(&format!("{}/{m}", provider.name)))
            .or_else(|| self.config.fallbacks.get(&provider.name));
        list.into_iter()
            .flatten()
            .filter_map(|(p, m)| {
                self.config.providers.get(p).map(|provider| Target { provider, model: Some(m.clone()) })
            })
            .collect()
    }

    async fn local(&self, weaver: Arc<Weaver>, parts: http::request::Parts, body: Bytes) -> Response<ProxyBody> {
        let Some(local) = &self.local else {
            return error_response(
                ApiFamily::OpenAi,
                StatusCode::NOT_FOUND,
                ErrorKind::NotFound,
                "loom proxy: no local routes are mounted",
            );
        };
        let mut parts = parts;
        for h in ["authorization", "x-api-key"] {
            parts.headers.remove(h);
        }
        let resp = local.handle(weaver.id.clone(), Request::from_parts(parts, body)).await;
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, ProxyBody::full(body))
    }

    /// Sends the request to each target in turn, retrying each; returns the first response
    /// worth passing on, the target that gave it and the key used (to redact error bodies).
    async fn send<'t>(
        self: &Arc<Self>,
        call: &mut Call,
        out: &Outgoing<'_>,
        targets: &'t [Target<'t>],
    ) -> Result<(Response<Incoming>, &'t Target<'t>, Option<Zeroizing<String>>), Response<ProxyBody>> {
        let retry = &self.config.retry;
        let mut last_failure = String::new();
        let mut last_timeout = false;
        for (ti, target) in targets.iter().enumerate() {
            let is_last_target = ti + 1 == targets.len();
            let key = match self.key_for(target.provider).await {
                Ok(k) => k,
                Err(msg) => {
                    tracing::error!(provider = %target.provider.name, "{msg}");
                    last_failure = msg;
                    continue;
                }
            };
            let body = out.body_for(target.model.as_deref());
            let uri = match build_uri(target.provider, out) {
                Ok(u) => u,
                Err(msg) => {
                    last_failure = msg;
                    continue;
                }
            };
            for attempt in 0..retry.max_attempts {
                let is_last_attempt = attempt + 1 == retry.max_attempts;
                call.with(|s| {
                    s.record.attempts += 1;
                    s.attempt_out = true;
                });
                let req = build_request(out, &uri, target.provider, key.as_ref().map(|k| k.as_str()), body.clone());
                let req = match req {
                    Ok(r) => r,
                    Err(msg) => {
                        last_failure = msg;
                        break;
                    }
                };
                let result = tokio::time::timeout(
                    self.config.first_byte_timeout,
                    self.own_ca.get(&target.provider.name).unwrap_or(&self.client).request(req),
                )
                .await;
                let connect_failed = matches!(&result, Ok(Err(e)) if e.is_connect());
                call.with(|s| {
                    s.attempt_out = false;
                    s.reached |= !connect_failed;
                });
                let delay = match result {
                    Ok(Ok(resp)) => {
                        let status = resp.status();
                        let retryable = status == StatusCode::TOO_MANY_REQUESTS
                            || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED);
                        if !retryable {
                            return Ok((resp, target, key));
                        }
                        let after = retry_after(resp.headers());
                        if after.is_some_and(|a| a > retry.max_retry_after) || (is_last_attempt && is_last_target) {
                            return Ok((resp, target, key));
                        }
                        tracing::info!(provider = %target.provider.name, status = status.as_u16(), attempt, "upstream asked to retry");
                        last_failure = format!("upstream answered {status}");
                        if is_last_attempt {
                            break;
                        }
                        after.unwrap_or_else(|| backoff(retry, attempt))
                    }
                    Ok(Err(e)) => {
                        last_timeout = false;
                        last_failure = format!("could not reach {}: {}", target.provider.name, error_chain(&e));
                        tracing::info!(provider = %target.provider.name, attempt, "{last_failure}");
                        if is_last_attempt {
                            break;
                        }
                        backoff(retry, attempt)
                    }
                    Err(_) => {
                        last_timeout = true;
                        last_failure = format!(
                            "{} sent no response headers within {:?} ([proxy] first_byte_timeout_ms)",
                            target.provider.name, self.config.first_byte_timeout
                        );
                        tracing::info!(provider = %target.provider.name, attempt, "{last_failure}");
                        if is_last_attempt {
                            break;
                        }
                        backoff(retry, attempt)
                    }
                };
                tokio::time::sleep(delay).await;
            }
        }
        let msg = format!("loom proxy: upstream failed: {last_failure}");
        let (status, kind) = if last_timeout {
            (StatusCode::GATEWAY_TIMEOUT, ErrorKind::Timeout)
        } else {
            (StatusCode::BAD_GATEWAY, ErrorKind::Api)
        };
        call.with(|s| s.record.http_status = status.as_u16());
        call.finish(UsageStatus::Failed(last_failure), None);
        Err(error_response(out.family, status, kind, &msg))
    }

    async fn key_for(self: &Arc<Self>, provider: &ProviderConfig) -> Result<Option<Zeroizing<String>>, String> {
        let Some(path) = &provider.secret else {
            return Ok(None);
        };
        let Some(secret) = self.keys.key(path) else {
            return Err(format!(
                "provider {}'s secret `{path}` is not available; check it with `loom secrets check`",
                provider.name
            ));
        };
        if provider.kind == ProviderKind::Vertex {
            return self
                .vertex
                .token(&provider.name, provider.token_url.as_deref(), &secret)
                .await
                .map(Some)
                .map_err(|e| format!("provider {}: {e}", provider.name));
        }
        Ok(Some(secret))
    }

    async fn respond(
        &self,
        resp: Response<Incoming>,
        mut call: Call,
        shape: ApiFamily,
        provider: &ProviderConfig,
        key: Option<Zeroizing<String>>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        let status = parts.status;
        for h in STRIPPED_RESPONSE_HEADERS {
            parts.headers.remove(*h);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // The provider refused loom's own key. Its message may quote part of the key, and
            // the weaver's agent can do nothing about it, so it gets loom's own words.
            drop(body);
            call.finish(UsageStatus::UpstreamError(status.as_u16()), None);
            return error_response(
                shape,
                StatusCode::BAD_GATEWAY,
                ErrorKind::Api,
                &format!(
                    "loom proxy: provider {} refused loom's key with HTTP {}; an operator must fix secret `{}` in the SOPS file",
                    provider.name,
                    status.as_u16(),
                    provider.secret.as_deref().unwrap_or("")
                ),
            );
        }
        if !status.is_success() {
            // Error bodies are small: read them whole and take out any trace of the key.
            let bytes =
                match tokio::time::timeout(Duration::from_secs(30), Limited::new(body, 1024 * 1024).collect()).await {
                    Ok(Ok(b)) => b.to_bytes(),
                    _ => Bytes::new(),
                };
            let bytes = redact(bytes, key.as_deref().map(|k| k.as_str()));
            parts.headers.remove(header::CONTENT_LENGTH);
            call.finish(UsageStatus::UpstreamError(status.as_u16()), None);
            return Response::from_parts(parts, ProxyBody::full(bytes));
        }
        drop(key);
        let content_type =
            parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = MeteredBody::new(body, &content_type, call, shape, self.config.stream_idle_timeout);
        if content_type.starts_with("text/event-stream") {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        Response::from_parts(parts, ProxyBody::Metered(Box::new(body)))
    }
}

/// The router named a provider the configuration lacks: cannot happen, as both come from the
/// same map, but it must not take the daemon down if it does.
fn internal_error(shape: ApiFamily) -> Response<ProxyBody> {
    error_response(shape, StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Api, "loom proxy: internal routing error")
}

fn refused(shape: ApiFamily, weaver: &str, refusal: &Refusal) -> Response<ProxyBody> {
    let msg = refusal.message(weaver);
    tracing::info!(weaver, "proxy refused a request: {msg}");
    let (status, kind) = match refusal {
        Refusal::TokenBudget { .. } | Refusal::UsdBudget { .. } => match shape {
            ApiFamily::Anthropic => (StatusCode::PAYMENT_REQUIRED, ErrorKind::Billing),
            ApiFamily::OpenAi => (StatusCode::TOO_MANY_REQUESTS, ErrorKind::Billing),
        },
        _ => (StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimit),
    };
    let mut r = error_response(shape, status, kind, &msg);
    if let Refusal::RequestsPerMinute { retry_after, .. } = refusal {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
    }
    r
}

fn redact(bytes: Bytes, key: Option<&str>) -> Bytes {
    let Some(key) = key.map(str::trim).filter(|k| k.len() >= 8) else {
        return bytes;
    };
    let k = key.as_bytes();
    if !bytes.windows(k.len()).any(|w| w == k) {
        return bytes;
    }
    let s = String::from_utf8_lossy(&bytes).replace(key, "[REDACTED]");
    Bytes::from(s)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// `retry-after-ms` (OpenAI), else `retry-after` in seconds.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = h
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && (0.0..86_400_000.0).contains(v))
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && (0.0..86_400.0).contains(&secs)).then(|| Duration::from_secs_f64(secs));
    }
    // An HTTP date: wait until then (not at all if it is past).
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// Exponential backoff with full jitter between half and all of the step.
fn backoff(retry: &crate::config::RetryConfig, attempt: u32) -> Duration {
    let step = retry.base_delay.saturating_mul(1u32 << attempt.min(16)).min(retry.max_delay);
    let jitter: f64 = rand::rng().random_range(0.5..=1.0);
    step.mul_f64(jitter)
}

impl Outgoing<'_> {
    fn body_for(&self, model: Option<&str>) -> Bytes {
        let Some(json) = &self.json else {
            return self.body.clone();
        };
        if !self.inject_usage && model == self.original_model.as_deref() {
            return self.body.clone();
        }
        let mut v = json.clone();
        if let Some(obj) = v.as_object_mut() {
            if let Some(m) = model {
                obj.insert("model".into(), serde_json::Value::String(m.to_string()));
            }
            if self.inject_usage {
                let so = obj.entry("stream_options").or_insert_with(|| serde_json::json!({}));
                if let Some(so) = so.as_object_mut() {
                    so.insert("include_usage".into(), serde_json::Value::Bool(true));
                }
            }
        }
        serde_json::to_vec(&v).map(Bytes::from).unwrap_or_else(|_| self.body.clone())
    }
}

fn build_uri(provider: &ProviderConfig, out: &Outgoing<'_>) -> Result<Uri, String> {
    let path = upstream_path(&provider.base_url, out.endpoint, out.path, out.query);
    Uri::builder()
        .scheme(provider.base_url.scheme.clone())
        .authority(provider.base_url.authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| format!("could not build the upstream URL for {}: {e}", provider.name))
}

fn build_request(
    out: &Outgoing<'_>,
    uri: &Uri,
    provider: &ProviderConfig,
    key: Option<&str>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = out.method.clone();
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = out.headers.clone();
    if let Some(key) = key {
        // Secrets stored from a file often end in a newline.
        let key = key.trim();
        let bad = || format!("provider {}'s key is not a valid header value", provider.name);
        let anthropic_style = out.family == ApiFamily::Anthropic && provider.kind != ProviderKind::Vertex;
        if anthropic_style {
            let mut v = HeaderValue::from_str(key).map_err(|_| bad())?;
            v.set_sensitive(true);
            req.headers_mut().insert(HeaderName::from_static("x-api-key"), v);
        } else {
            let bearer = Zeroizing::new(format!("Bearer {key}"));
            let mut v = HeaderValue::from_str(&bearer).map_err(|_| bad())?;
            v.set_sensitive(true);
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after(&headers(&[("retry-after", "2")])), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(&headers(&[("retry-after", "0.5")])), Some(Duration::from_millis(500)));
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2"), ("retry-after-ms", "150")])),
            Some(Duration::from_millis(150))
        );
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = retry_after(&headers(&[("retry-after", &soon)])).unwrap();
        assert!(d > Duration::from_secs(28) && d <= Duration::from_secs(30), "{d:?}");
        assert_eq!(retry_after(&headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")])), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-3")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "1e300")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after-ms", "1e300")])), None);
        assert_eq!(retry_after(&headers(&[])), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = crate::config::RetryConfig {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            max_retry_after: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d0 = backoff(&r, 0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d1 = backoff(&r, 1);
            assert!(d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(200));
            assert!(backoff(&r, 30) <= Duration::from_millis(300));
        }
    }

    #[test]
    fn redaction() {
        let key = "sk-secret-123456";
        assert_eq!(redact(Bytes::from("a sk-secret-123456 b"), Some(key)), Bytes::from("a [REDACTED] b"));
        assert_eq!(redact(Bytes::from("nothing"), Some(key)), Bytes::from("nothing"));
    }

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
