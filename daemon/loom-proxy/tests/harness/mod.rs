//! The proxy test harness: a proxy with four providers on two fakes (`fake_provider`), weavers
//! w1 (with a listener bound to it) and w2, a shared listener, and a client.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use loom_proxy::{KeySource, LocalRoutes, Proxy, ProxyConfig, UsageRecord, WeaverLimits, WeaverToken};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::fake_provider::{FakeProvider, Usage4};

pub const ANTHROPIC_KEY: &str = "sk-ant-api03-REALKEY-anthropic-0123456789abcdef";
pub const OPENAI_KEY: &str = "sk-proj-REALKEY-openai-0123456789abcdef";

pub struct Keys(pub HashMap<&'static str, &'static str>);

impl KeySource for Keys {
    fn key(&self, secret_path: &str) -> Option<Zeroizing<String>> {
        self.0.get(secret_path).map(|k| Zeroizing::new(k.to_string()))
    }
}

pub struct Local(pub Mutex<Vec<(String, String)>>);

impl LocalRoutes for Local {
    fn handle(&self, weaver_id: String, request: Request<Bytes>) -> loom_proxy::BoxFuture<'static, Response<Bytes>> {
        self.0.lock().unwrap().push((weaver_id.clone(), String::from_utf8_lossy(request.body()).into_owned()));
        Box::pin(async move { Response::new(Bytes::from(format!("{{\"weaver\":\"{weaver_id}\"}}"))) })
    }
}

pub struct H {
    pub proxy: Proxy,
    pub up: FakeProvider,
    pub up2: FakeProvider,
    /// A listener bound to weaver w1.
    pub bound: SocketAddr,
    /// A listener bound to no weaver.
    pub shared: SocketAddr,
    pub t1: WeaverToken,
    pub t2: WeaverToken,
    pub records: mpsc::UnboundedReceiver<UsageRecord>,
    pub local: Arc<Local>,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

pub async fn harness(proxy_toml: &str, limits: WeaverLimits) -> H {
    let up = FakeProvider::start().await;
    let up2 = FakeProvider::start().await;
    let providers = providers(&format!(
        r#"
        [anthropic]
        base_url = "{u}"
        secret = "anthropic_api_key"
        [openai]
        base_url = "{u}"
        secret = "providers.openai.key"
        [zai]
        base_url = "{u}/api/paas/v4"
        secret = "zai_key"
        [backup]
        kind = "anthropic"
        base_url = "{u2}"
        secret = "anthropic_api_key"
        "#,
        u = up.base_url(),
        u2 = up2.base_url()
    ));
    let config = ProxyConfig::from_toml(&providers, &proxy_toml.parse().unwrap()).unwrap();
    let keys = Keys(HashMap::from([
        ("anthropic_api_key", ANTHROPIC_KEY),
        ("providers.openai.key", OPENAI_KEY),
        ("zai_key", "zai-REALKEY-0123456789\n"),
    ]));
    let (tx, records) = mpsc::unbounded_channel();
    let local = Arc::new(Local(Mutex::new(Vec::new())));
    let proxy =
        Proxy::builder(config, Arc::new(keys)).usage_sink(Arc::new(tx)).local_routes(local.clone()).build().unwrap();
    let t1 = proxy.register_weaver("w1", limits.clone()).unwrap();
    let t2 = proxy.register_weaver("w2", limits).unwrap();
    let bound = serve(&proxy, Some("w1")).await;
    let shared = serve(&proxy, None).await;
    H { proxy, up, up2, bound, shared, t1, t2, records, local, client: client() }
}

/// `[providers.NAME]` tables from TOML text.
pub fn providers(toml: &str) -> BTreeMap<String, toml::Table> {
    let t: toml::Table = toml.parse().unwrap();
    t.into_iter().map(|(k, v)| (k, v.as_table().unwrap().clone())).collect()
}

/// Serves `proxy` on a new listener on 127.0.0.1, bound to `weaver` if given.
pub async fn serve(proxy: &Proxy, weaver: Option<&str>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (p, weaver) = (proxy.clone(), weaver.map(str::to_string));
    tokio::spawn(async move { p.serve(l, weaver).await });
    addr
}

/// A plain-HTTP client for the proxy's listeners.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `POST path` to the proxy at `addr` with `token` as the bearer.
pub async fn post_bearer(addr: SocketAddr, token: &WeaverToken, path: &str, body: String) -> Response<Incoming> {
    let req = Request::post(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {}", token.expose()))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("proxy answered in time")
        .expect("proxy reachable")
}

pub fn fast_retry() -> &'static str {
    "[retry]\nbase_delay_ms = 5\nmax_delay_ms = 20\n"
}

impl H {
    pub async fn open(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response<Incoming> {
        let mut b = Request::builder().method(method).uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
            .await
            .expect("proxy answered in time")
            .expect("proxy reachable")
    }

    pub async fn call(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let r = self.open(addr, method, path, headers, body).await;
        let (parts, body) = r.into_parts();
        let text = read_all(body).await;
        (parts.status, parts.headers, text)
    }

    /// An Anthropic `POST /v1/messages` for `model` with `token`.
    pub async fn message(
        &self,
        addr: SocketAddr,
        token: &WeaverToken,
        model: &str,
        stream: bool,
    ) -> (StatusCode, HeaderMap, String) {
        self.call(addr, "POST", "/v1/messages", &anth_headers(token), &anth_body(model, stream)).await
    }

    /// An OpenAI `POST /v1/chat/completions` for `model` with `token`.
    pub async fn chat(
        &self,
        addr: SocketAddr,
        token: &WeaverToken,
        model: &str,
        stream: bool,
    ) -> (StatusCode, HeaderMap, String) {
        let bearer = format!("Bearer {}", token.expose());
        self.call(addr, "POST", "/v1/chat/completions", &[("authorization", &bearer)], &oai_body(model, stream)).await
    }

    pub async fn record(&mut self) -> UsageRecord {
        tokio::time::timeout(Duration::from_secs(10), self.records.recv())
            .await
            .expect("a usage record in time")
            .expect("sink open")
    }

    pub fn no_record(&mut self) {
        assert!(self.records.try_recv().is_err(), "no usage record expected");
    }
}

/// Reads a body to its end; a broken connection ends it too (what a client would have).
pub async fn read_all(mut body: Incoming) -> String {
    let mut out = Vec::new();
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    out.extend_from_slice(d);
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn anth_body(model: &str, stream: bool) -> String {
    serde_json::json!({"model": model, "max_tokens": 1024, "stream": stream,
        "messages": [{"role": "user", "content": "Say hello"}]})
    .to_string()
}

pub fn oai_body(model: &str, stream: bool) -> String {
    serde_json::json!({"model": model, "stream": stream, "max_completion_tokens": 512,
        "messages": [{"role": "user", "content": "Say hello"}]})
    .to_string()
}

pub fn usage4(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Usage4 {
    Usage4 { input, output, cache_read, cache_write }
}

pub fn assert_no_keys(s: &str) {
    for k in [ANTHROPIC_KEY, OPENAI_KEY, "REALKEY"] {
        assert!(!s.contains(k), "a provider key leaked into: {s}");
    }
}

pub fn anth_headers(token: &WeaverToken) -> Vec<(&str, &str)> {
    vec![("x-api-key", token.expose()), ("anthropic-version", "2023-06-01"), ("content-type", "application/json")]
}
