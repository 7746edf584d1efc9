//! The stages before anything goes upstream, each read alone: a request is run through
//! authenticate → route → admit → plan in memory (no listener, no provider), and where it
//! stopped, and with what, is compared with what the case expects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use zeroize::Zeroizing;

use super::stages::{Arrived, Destination, Rejection};
use super::{KeySource, Proxy, WeaverToken};
use crate::config::ProxyConfig;
use crate::limits::WeaverLimits;

struct NoKeys;

impl KeySource for NoKeys {
    fn key(&self, _: &str) -> Option<Zeroizing<String>> {
        None
    }
}

/// A proxy with an Anthropic provider (a fallback to `backup` for `claude-fallible`) and an
/// OpenAI one, neither ever contacted; weavers w1 (with `limits`) and w2.
fn proxy(limits: WeaverLimits) -> (Proxy, WeaverToken, WeaverToken) {
    let providers: toml::Table = r#"
        [anthropic]
        base_url = "http://127.0.0.1:9"
        secret = "a"
        [backup]
        kind = "anthropic"
        base_url = "http://127.0.0.1:9"
        secret = "a"
        [openai]
        base_url = "http://127.0.0.1:9"
        secret = "o"
    "#
    .parse()
    .unwrap();
    let providers: BTreeMap<String, toml::Table> =
        providers.into_iter().map(|(k, v)| (k, v.as_table().unwrap().clone())).collect();
    let proxy_table: toml::Table = r#"
        max_request_bytes = 4096
        [fallbacks]
        "anthropic/claude-fallible" = ["backup/claude-steady"]
    "#
    .parse()
    .unwrap();
    let config = ProxyConfig::from_toml(&providers, &proxy_table).unwrap();
    let proxy = Proxy::builder(config, Arc::new(NoKeys)).build().unwrap();
    let t1 = proxy.register_weaver("w1", limits).unwrap();
    let t2 = proxy.register_weaver("w2", WeaverLimits::unlimited()).unwrap();
    (proxy, t1, t2)
}

fn rejected(stage: &str, r: Rejection) -> String {
    let after = r.retry_after.map(|a| format!(" (retry after {}s)", a.as_secs())).unwrap_or_default();
    format!("{stage}: {} {}{after}", r.status.as_u16(), r.message)
}

/// Runs `method path` with `headers` and `body` from weaver w1's bound listener (`$w2` in a
/// header stands for w2's token, `$w1` for w1's) and renders where it stopped: a stage's
/// rejection, `local`, or the plan (provider/model of each target, the tokens reserved).
/// Checks that a request that stopped gave back the weaver's slot.
#[track_caller]
fn check(limits: WeaverLimits, method: &str, path: &str, headers: &[(&str, &str)], body: &str, expected: &str) {
    let (proxy, t1, t2) = proxy(limits);
    let inner = &proxy.inner;
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, v.replace("$w1", t1.expose()).replace("$w2", t2.expose()));
    }
    let (head, ()) = b.body(()).unwrap().into_parts();
    let bound = inner.weaver("w1").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let got = rt.block_on(async {
        let arrived = Arrived::new(head, &inner.config, Instant::now(), SystemTime::now());
        let a = match inner.authenticate(arrived, Some(&bound)) {
            Ok(a) => a,
            Err(r) => return rejected("authenticate", r),
        };
        let r = match inner.route(a) {
            Ok(r) => r,
            Err(r) => return rejected("route", r),
        };
        let a = match inner.admit(r, Full::new(Bytes::from(body.to_string()))).await {
            Ok(a) => a,
            Err(r) => return rejected("admit", r),
        };
        if a.destination == Destination::Local {
            return "local".to_string();
        }
        let plan = match inner.plan(a) {
            Ok(p) => p,
            Err(r) => return rejected("plan", r),
        };
        let targets: Vec<String> =
            plan.targets.iter().map(|t| format!("{}/{}", t.provider.name, t.model.as_deref().unwrap_or("-"))).collect();
        let reserved = proxy.usage("w1").unwrap().reserved_tokens;
        format!("plan: {} reserving {reserved} tokens", targets.join(" then "))
    });
    assert_eq!(got, expected, "{method} {path}");
    if !got.starts_with("plan") {
        let u = proxy.usage("w1").unwrap();
        assert_eq!((u.in_flight, u.reserved_tokens), (0, 0), "a request that stopped holds nothing");
    }
}

const KEY: (&str, &str) = ("x-api-key", "$w1");
const ANTHROPIC: (&str, &str) = ("anthropic-version", "2023-06-01");

fn unlimited() -> WeaverLimits {
    WeaverLimits::unlimited()
}

#[test]
fn authenticate() {
    let msg = "401 loom proxy: unknown or revoked weaver token; a weaver can use only its own (ANTHROPIC_API_KEY, OPENAI_API_KEY or LOOM_PROXY_TOKEN in its environment)";
    check(
        unlimited(),
        "POST",
        "/v1/messages",
        &[],
        "",
        "authenticate: 401 loom proxy: no token; send the weaver's token as x-api-key or Authorization: Bearer (it is in ANTHROPIC_API_KEY / OPENAI_API_KEY inside the weaver)",
    );
    check(unlimited(), "POST", "/v1/messages", &[("x-api-key", "loom-wv-guess")], "", &format!("authenticate: {msg}"));
    // Another weaver's token on this weaver's listener is no credential, and says so no louder.
    check(unlimited(), "POST", "/v1/messages", &[("x-api-key", "$w2")], "", &format!("authenticate: {msg}"));
    check(unlimited(), "POST", "/v1/messages", &[("authorization", "Bearer $w2")], "", &format!("authenticate: {msg}"));
    check(unlimited(), "GET", "/loom/v1/status", &[("authorization", "Bearer $w1")], "", "local");
}

#[test]
fn route() {
    check(
        unlimited(),
        "GET",
        "/v2/other",
        &[KEY],
        "",
        "route: 404 loom proxy: no route GET /v2/other; it serves /v1/messages, /v1/messages/count_tokens, /v1/chat/completions, /v1/responses, /v1/models and /proxy/PROVIDER/...",
    );
    check(
        unlimited(),
        "POST",
        "/proxy/nope/v1/messages",
        &[KEY],
        "",
        "route: 404 loom proxy: no provider `nope` is configured (configured: anthropic, backup, openai)",
    );
    check(
        unlimited(),
        "POST",
        "/v1/messages",
        &[KEY, ("x-loom-thread", "a b")],
        "",
        "route: 400 loom proxy: x-loom-thread must be 1 to 128 characters of [A-Za-z0-9-_.:]",
    );
    let (proxy, t1, _) = proxy(unlimited());
    let head =
        Request::post("/proxy/openai/v1/files").header("x-api-key", t1.expose()).body(()).unwrap().into_parts().0;
    let inner = &proxy.inner;
    let a = inner.authenticate(Arrived::new(head, &inner.config, Instant::now(), SystemTime::now()), None).unwrap();
    let r = inner.route(a).unwrap_err();
    assert_eq!(r.status.as_u16(), 403);
    assert!(r.message.contains("loom forwards only inference endpoints"), "{}", r.message);
    assert_eq!(proxy.usage("w1").unwrap().totals.refused, 1, "a refused endpoint counts against the weaver");
}

#[test]
fn admit() {
    let one_a_minute = WeaverLimits { requests_per_minute: Some(1), ..unlimited() };
    let (proxy, t1, _) = proxy(one_a_minute);
    let inner = &proxy.inner;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let run = || {
        let head = Request::get("/v1/models").header("x-api-key", t1.expose()).body(()).unwrap().into_parts().0;
        let a = inner.authenticate(Arrived::new(head, &inner.config, Instant::now(), SystemTime::now()), None).unwrap();
        let r = inner.route(a).unwrap();
        rt.block_on(inner.admit(r, Full::new(Bytes::new()))).map(|a| a.destination)
    };
    assert!(matches!(run(), Ok(Destination::Upstream { .. })));
    let r = run().unwrap_err();
    assert_eq!((r.status.as_u16(), r.retry_after.map(|a| a.as_secs() > 50)), (429, Some(true)), "{}", r.message);
    let big = "x".repeat(5000);
    check(
        unlimited(),
        "POST",
        "/v1/messages",
        &[KEY],
        &big,
        "admit: 413 loom proxy: request body is over 4096 bytes, the limit of this endpoint; send less",
    );
}

#[test]
fn plan() {
    let body = |model: &str| format!(r#"{{"model":"{model}","max_tokens":100,"messages":[]}}"#);
    check(
        unlimited(),
        "POST",
        "/v1/messages",
        &[KEY, ANTHROPIC],
        &body("claude-x"),
        "plan: anthropic/claude-x reserving 113 tokens",
    );
    check(
        unlimited(),
        "POST",
        "/v1/messages",
        &[KEY, ANTHROPIC],
        &body("backup/claude-x"),
        "plan: backup/claude-x reserving 115 tokens",
    );
    check(
        unlimited(),
        "POST",
        "/v1/messages",
        &[KEY],
        &body("claude-fallible"),
        "plan: anthropic/claude-fallible then backup/claude-steady reserving 115 tokens",
    );
    check(
        unlimited(),
        "POST",
        "/v1/chat/completions",
        &[KEY],
        &body("openai/gpt-x"),
        "plan: openai/gpt-x reserving 114 tokens",
    );
    check(
        unlimited(),
        "POST",
        "/v1/messages",
        &[KEY],
        "{not json",
        "plan: 400 loom proxy: request body is not valid JSON: key must be a string at line 1 column 2",
    );
    check(
        unlimited(),
        "POST",
        "/v1/messages",
        &[KEY],
        &body(&"m".repeat(257)),
        "plan: 400 loom proxy: model names are at most 256 characters",
    );
    let tight = WeaverLimits { max_tokens: Some(50), ..unlimited() };
    check(
        tight.clone(),
        "POST",
        "/v1/messages",
        &[KEY],
        &body("claude-x"),
        "plan: 402 loom: weaver w1 token budget exhausted: 0 of 50 tokens used, 0 reserved by requests in flight, this request may need up to 113. Raise it with `loom weaver limits w1 --max-tokens N` or [proxy.limits] max_tokens in loomd's config (0 = unlimited).",
    );
    // The same refusal in OpenAI's shape is a 429, as OpenAI answers an exhausted quota.
    check(
        tight,
        "POST",
        "/v1/chat/completions",
        &[KEY],
        &body("openai/x"),
        "plan: 429 loom: weaver w1 token budget exhausted: 0 of 50 tokens used, 0 reserved by requests in flight, this request may need up to 113. Raise it with `loom weaver limits w1 --max-tokens N` or [proxy.limits] max_tokens in loomd's config (0 = unlimited).",
    );
}
