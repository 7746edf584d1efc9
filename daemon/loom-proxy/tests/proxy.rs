//! The proxy end to end over real TCP on 127.0.0.1, against `fake_provider`: a fake of the
//! Anthropic and OpenAI APIs (the real ones are outside this machine) speaking their wire
//! formats and misbehaving on demand.

mod fake_provider;
mod harness;

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

#[tokio::test]
async fn anthropic_stream_goes_through_with_the_real_key() {
    let mut h = harness("", WeaverLimits::unlimited()).await;
    let reply = Reply::anthropic_stream("claude-sonnet-4-20250514", &["Hel", "lo"], usage4(25, 15, 7, 3));
    let expected: String = reply
        .parts
        .iter()
        .map(|p| match p {
            Part::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        })
        .collect();
    h.up.script([reply]);
    let mut headers = anth_headers(&h.t1);
    headers.push(("x-loom-thread", "thread-42"));
    headers.push(("accept-encoding", "gzip"));
    let (status, resp_headers, body) =
        h.call(h.bound, "POST", "/v1/messages", &headers, &anth_body("claude-sonnet-4-20250514", true)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, expected, "the stream passes through byte for byte");
    assert!(resp_headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_no_keys(&body);
    assert_no_keys(&format!("{resp_headers:?}"));

    let seen = h.up.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.path, "/v1/messages");
    assert_eq!(s.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(s.headers["anthropic-version"], "2023-06-01");
    assert!(s.headers.get("authorization").is_none());
    assert!(s.headers.get("x-loom-thread").is_none());
    assert!(s.headers.get("accept-encoding").is_none());
    let all_headers = format!("{:?}", s.headers);
    assert!(!all_headers.contains(h.t1.expose()), "the weaver token must not reach the provider");
    assert_eq!(s.json()["model"], "claude-sonnet-4-20250514");

    let r = h.record().await;
    assert_eq!(r.weaver, "w1");
    assert_eq!(r.thread.as_deref(), Some("thread-42"));
    assert_eq!(r.provider, "anthropic");
    assert_eq!(r.model, "claude-sonnet-4-20250514");
    assert_eq!(r.status, UsageStatus::Ok);
    assert_eq!(r.http_status, 200);
    assert_eq!(
        (r.usage.input_tokens, r.usage.output_tokens, r.usage.cache_read_tokens, r.usage.cache_write_tokens),
        (25, 15, 7, 3)
    );
    assert!(r.usage_reported);
    let want_cost = (25.0 * 3.0 + 15.0 * 15.0 + 7.0 * 0.3 + 3.0 * 3.75) / 1e6;
    assert!((r.cost_usd - want_cost).abs() < 1e-12, "{}", r.cost_usd);
    let u = h.proxy.usage("w1").unwrap();
    assert_eq!(u.totals.tokens, 50);
    assert_eq!(u.totals.requests, 1);
    assert_eq!(u.in_flight, 0);
    assert_eq!(u.reserved_tokens, 0);
    assert_eq!(h.proxy.usage("w2").unwrap().totals.requests, 0);
}

#[tokio::test]
async fn openai_stream_goes_through_and_usage_is_asked_for() {
    let mut h = harness("", WeaverLimits::unlimited()).await;
    h.up.script([Reply::openai_stream("gpt-4o", &["Hel", "lo"], 30, 12)]);
    let bearer = format!("Bearer {}", h.t1.expose());
    let (status, _, body) = h
        .call(
            h.bound,
            "POST",
            "/v1/chat/completions",
            &[("authorization", &bearer), ("content-type", "application/json")],
            &oai_body("gpt-4o", true),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("chat.completion.chunk"));
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert!(body.contains("\"prompt_tokens\":30"));
    assert_no_keys(&body);
    let s = &h.up.seen()[0];
    assert_eq!(s.path, "/v1/chat/completions");
    assert_eq!(s.headers["authorization"], format!("Bearer {OPENAI_KEY}").as_str());
    assert!(s.headers.get("x-api-key").is_none());
    assert_eq!(s.json()["stream_options"]["include_usage"], true);
    let r = h.record().await;
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (30, 12));
    assert_eq!(r.provider, "openai");
    assert_eq!(r.status, UsageStatus::Ok);
    assert!((r.cost_usd - (30.0 * 2.5 + 12.0 * 10.0) / 1e6).abs() < 1e-12);
}

#[tokio::test]
async fn model_prefix_routes_to_provider_and_is_stripped() {
    let mut h = harness("", WeaverLimits::unlimited()).await;
    h.up.script([Reply::openai_json("glm-4.6", "hi", 10, 5)]);
    let (status, _, body) = h.chat(h.bound, &h.t1, "zai/glm-4.6", false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let s = &h.up.seen()[0];
    assert_eq!(s.path, "/api/paas/v4/chat/completions");
    assert_eq!(s.json()["model"], "glm-4.6");
    assert_eq!(s.headers["authorization"], "Bearer zai-REALKEY-0123456789");
    let r = h.record().await;
    assert_eq!((r.provider.as_str(), r.model.as_str()), ("zai", "glm-4.6"));
    assert_eq!(r.usage.total(), 15);
}

#[tokio::test]
async fn first_byte_is_forwarded_before_the_upstream_finishes() {
    let mut h = harness("", WeaverLimits::unlimited()).await;
    let gate = Arc::new(Notify::new());
    // The second event waits until the client has received the first one.
    h.up.script([Reply::anthropic_stream("claude-sonnet-4", &["a", "b"], usage4(5, 2, 0, 0))
        .insert(1, Part::WaitFor(gate.clone()))]);
    let resp = h.open(h.bound, "POST", "/v1/messages", &anth_headers(&h.t1), &anth_body("claude-sonnet-4", true)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first event arrived while the upstream was still holding the rest")
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(first.data_ref().unwrap()).into_owned();
    assert!(first.starts_with("event: message_start\n"), "{first}");
    gate.notify_one();
    let rest = read_all(body).await;
    assert!(rest.contains("event: message_stop"));
    let r = h.record().await;
    assert_eq!(r.status, UsageStatus::Ok);
    assert_eq!(r.usage.output_tokens, 2);
}

#[tokio::test]
async fn retry_429_honours_retry_after() {
    let mut h = harness(fast_retry(), WeaverLimits::unlimited()).await;
    h.up.script([
        Reply::anthropic_error(429, "rate_limit_error", "slow down").header("retry-after", "1"),
        Reply::anthropic_json("claude-sonnet-4", "hi", 10, 3),
    ]);
    let t0 = Instant::now();
    let (status, _, body) = h.message(h.bound, &h.t1, "claude-sonnet-4", false).await;
    let took = t0.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(took >= Duration::from_millis(950), "retry-after: 1 was not honoured ({took:?})");
    assert_eq!(h.up.seen().len(), 2);
    let r = h.record().await;
    assert_eq!(r.attempts, 2);
    assert_eq!(r.usage.total(), 13);
}

#[tokio::test]
async fn retry_503_then_success_and_exhaustion_passes_the_error_on() {
    let mut h = harness(fast_retry(), WeaverLimits::unlimited()).await;
    h.up.script([Reply::openai_error(503, "unavailable"), Reply::openai_json("gpt-4o", "hi", 4, 2)]);
    let (status, _, _) = h.chat(h.bound, &h.t1, "gpt-4o", false).await;
    assert_eq!(status, StatusCode::OK);
    let r = h.record().await;
    assert_eq!((r.attempts, r.status.clone()), (2, UsageStatus::Ok));

    // Three 503s: the retries are spent and the client sees the provider's own answer.
    h.up.script((0..3).map(|_| Reply::openai_error(503, "still unavailable")));
    let (status, _, body) = h.chat(h.bound, &h.t1, "gpt-4o", false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("still unavailable"));
    assert_eq!(h.up.seen().len(), 5);
    let r = h.record().await;
    assert_eq!(r.status, UsageStatus::UpstreamError(503));
    assert_eq!(r.attempts, 3);
    // An error answer reports no usage: charged the floor, not nothing.
    assert_eq!((r.usage.total(), r.usage_reported), (FLOOR_TOKENS, false));
    assert!(r.cost_usd > 0.0);
    assert_eq!(h.proxy.usage("w1").unwrap().totals.failed, 1);
}

#[tokio::test]
async fn connection_errors_are_retried_then_answered_in_provider_shape() {
    // A provider whose port has nothing listening.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let mut h =
        harness(&format!("{}\n[fallbacks]\n\"openai\" = [\"zai/glm-4.6\"]\n", fast_retry()), WeaverLimits::unlimited())
            .await;
    // Point openai at the dead port by routing through a config with it.
    let providers = providers(&format!(
        "[openai]\nbase_url = \"http://{dead_addr}\"\nsecret = \"k\"\n[anthropic]\nbase_url = \"http://{dead_addr}\"\nsecret = \"k\"\n"
    ));
    let config = ProxyConfig::from_toml(&providers, &fast_retry().parse().unwrap()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let p = Proxy::builder(config, Arc::new(Keys(HashMap::from([("k", "sk-REALKEY-dead")]))))
        .usage_sink(Arc::new(tx))
        .build()
        .unwrap();
    let tok = p.register_weaver("w9", WeaverLimits::unlimited()).unwrap();
    let addr = serve(&p, Some("w9")).await;
    let (status, _, body) = h.message(addr, &tok, "claude-sonnet-4", true).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("could not reach anthropic"));
    assert_no_keys(&body);
    let r = rx.recv().await.unwrap();
    assert_eq!(r.attempts, 3);
    assert!(matches!(r.status, UsageStatus::Failed(_)));
    assert_eq!(p.usage("w9").unwrap().in_flight, 0);
    assert_eq!(p.usage("w9").unwrap().reserved_usd, 0.0);

    // The harness's own fallback: openai answers 503 three times, zai takes over.
    h.up.script((0..3).map(|_| Reply::openai_error(503, "down")));
    h.up.script([Reply::openai_json("glm-4.6", "hi", 3, 1)]);
    let (status, _, _) = h.chat(h.bound, &h.t1, "gpt-4o", false).await;
    assert_eq!(status, StatusCode::OK);
    let seen = h.up.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[3].path, "/api/paas/v4/chat/completions");
    assert_eq!(seen[3].json()["model"], "glm-4.6");
    let r = h.record().await;
    assert_eq!((r.provider.as_str(), r.model.as_str(), r.attempts), ("zai", "glm-4.6", 4));
}

#[tokio::test]
async fn fallback_to_another_anthropic_provider() {
    let mut h = harness(
        &format!("{}\n[fallbacks]\n\"anthropic/claude-opus-4\" = [\"backup/claude-sonnet-4\"]\n", fast_retry()),
        WeaverLimits::unlimited(),
    )
    .await;
    h.up.script((0..3).map(|_| Reply::anthropic_error(529, "overloaded_error", "Overloaded")));
    h.up2.script([Reply::anthropic_stream("claude-sonnet-4", &["x"], usage4(9, 4, 0, 0))]);
    let (status, _, body) = h.message(h.bound, &h.t1, "claude-opus-4", true).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("message_stop"));
    let s = &h.up2.seen()[0];
    assert_eq!(s.json()["model"], "claude-sonnet-4");
    assert_eq!(s.headers["x-api-key"], ANTHROPIC_KEY);
    let r = h.record().await;
    assert_eq!((r.provider.as_str(), r.model.as_str()), ("backup", "claude-sonnet-4"));
    assert_eq!(r.usage.total(), 13);
}

#[tokio::test]
async fn stream_cut_midway_ends_with_an_error_event_and_is_recorded_failed() {
    let mut h = harness(fast_retry(), WeaverLimits::unlimited()).await;
    // message_start, content_block_start, ping, one delta, then the connection breaks.
    h.up.script([Reply::anthropic_stream("claude-sonnet-4", &["a", "b", "c"], usage4(40, 9, 0, 0)).cut_after(4)]);
    let (status, _, body) = h.message(h.bound, &h.t1, "claude-sonnet-4", true).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("event: message_start"));
    assert!(!body.contains("message_stop"));
    let tail = body.rsplit("event: ").next().unwrap();
    assert!(tail.starts_with("error\ndata: {"), "ends with an error event: {body}");
    assert!(tail.contains("\"type\":\"api_error\""));
    assert_eq!(h.up.seen().len(), 1, "no retry after the first byte went out");
    let r = h.record().await;
    assert!(matches!(r.status, UsageStatus::Failed(ref m) if m.contains("broke")), "{:?}", r.status);
    assert_eq!(r.usage.input_tokens, 40, "usage seen before the cut is charged");
    assert_eq!(h.proxy.usage("w1").unwrap().totals.failed, 1);

    // OpenAI: a data: error chunk, and no [DONE].
    h.up.script([Reply::openai_stream("gpt-4o", &["a", "b"], 3, 3).cut_after(2)]);
    let (_, _, body) = h.chat(h.bound, &h.t1, "gpt-4o", true).await;
    assert!(!body.contains("[DONE]"));
    let last = body.trim_end().rsplit("\n\n").next().unwrap();
    let v: serde_json::Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "stream_interrupted");
    let r = h.record().await;
    assert!(matches!(r.status, UsageStatus::Failed(_)));

    // A stream that ends cleanly but early (no message_stop) counts as cut too.
    let mut reply = Reply::anthropic_stream("claude-sonnet-4", &["a"], usage4(1, 1, 0, 0));
    reply.parts.truncate(3);
    h.up.script([reply]);
    let (_, _, body) = h.message(h.bound, &h.t1, "claude-sonnet-4", true).await;
    assert!(body.contains("event: error"), "{body}");
    let r = h.record().await;
    assert!(matches!(r.status, UsageStatus::Failed(ref m) if m.contains("before its final event")));
}

#[tokio::test]
async fn slow_first_byte_is_waited_for_then_timed_out() {
    let mut h = harness(
        &format!("first_byte_timeout_ms = 2000\n{}max_attempts = 2\n", fast_retry()),
        WeaverLimits::unlimited(),
    )
    .await;
    h.up.script([Reply::anthropic_stream("claude-sonnet-4", &["a"], usage4(1, 1, 0, 0))
        .delay_headers(Duration::from_millis(400))]);
    let (status, _, body) = h.message(h.bound, &h.t1, "claude-sonnet-4", true).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("message_stop"));
    let r = h.record().await;
    assert!(r.time_to_first_byte >= Duration::from_millis(400));
    assert_eq!(r.attempts, 1);

    // Slower than the timeout: retried, then a 504 in Anthropic's shape.
    h.up.script(
        (0..2).map(|_| Reply::anthropic_json("claude-sonnet-4", "late", 1, 1).delay_headers(Duration::from_secs(3))),
    );
    let (status, _, body) = h.message(h.bound, &h.t1, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "timeout_error");
    assert_eq!(h.up.seen().len(), 3);
    let r = h.record().await;
    assert_eq!(r.attempts, 2);
}

#[tokio::test]
async fn garbage_body_passes_through_is_recorded_failed_and_charged_the_reservation() {
    let mut h = harness("", WeaverLimits::unlimited()).await;
    h.up.script([Reply::garbage()]);
    let (status, _, body) = h.message(h.bound, &h.t1, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("upstream proxy error"));
    let r = h.record().await;
    assert!(matches!(r.status, UsageStatus::Failed(ref m) if m.contains("not JSON")), "{:?}", r.status);
    assert!(!r.usage_reported);
    assert!(r.usage.total() >= 1024, "charged at least max_tokens: {:?}", r.usage);
    assert!(r.cost_usd > 0.0);
}

#[tokio::test]
async fn budgets_are_enforced_in_the_providers_shape_on_every_route() {
    let mut h = harness("", WeaverLimits { max_tokens: Some(2000), ..WeaverLimits::unlimited() }).await;
    h.up.script([Reply::anthropic_json("claude-sonnet-4", "hi", 900, 600)]);
    let (status, _, _) = h.message(h.bound, &h.t1, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::OK);
    h.record().await;
    assert_eq!(h.proxy.usage("w1").unwrap().totals.tokens, 1500);

    // 500 left; max_tokens 1024 cannot be reserved.
    let (status, _, body) = h.message(h.bound, &h.t1, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "billing_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("token budget exhausted"), "{msg}");
    assert!(msg.contains("1500 of 2000"), "{msg}");
    assert!(msg.contains("loom weaver limits w1") && msg.contains("max_tokens"), "{msg}");

    // OpenAI shape, and passthrough is metered too.
    let bearer = format!("Bearer {}", h.t1.expose());
    for path in ["/v1/chat/completions", "/proxy/openai/v1/chat/completions"] {
        let (status, _, body) =
            h.call(h.bound, "POST", path, &[("authorization", &bearer)], &oai_body("gpt-4o", false)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "insufficient_quota");
    }
    assert_eq!(h.up.seen().len(), 1, "refused requests never reach the provider");
    let u = h.proxy.usage("w1").unwrap();
    assert_eq!((u.in_flight, u.reserved_tokens, u.totals.refused), (0, 0, 3));
    h.no_record();

    // Another weaver's budget is its own.
    h.up.script([Reply::anthropic_json("claude-sonnet-4", "hi", 1, 1)]);
    let (status, _, _) = h.message(h.shared, &h.t2, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::OK);
    h.record().await;

    // Raising the limit lets w1 go on.
    h.proxy.set_limits("w1", WeaverLimits { max_tokens: Some(100_000), ..WeaverLimits::unlimited() }).unwrap();
    h.up.script([Reply::anthropic_json("claude-sonnet-4", "hi", 1, 1)]);
    let (status, _, _) = h.message(h.bound, &h.t1, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn usd_budget_is_reconciled_from_stream_usage() {
    let mut h = harness("", WeaverLimits { max_usd: Some(0.05), ..WeaverLimits::unlimited() }).await;
    // 1M cache-read tokens of claude-sonnet-4 cost $0.30: more than the budget.
    h.up.script([Reply::anthropic_stream("claude-sonnet-4", &["a"], usage4(10, 10, 1_000_000, 0))]);
    let (status, _, _) = h.message(h.bound, &h.t1, "claude-sonnet-4", true).await;
    assert_eq!(status, StatusCode::OK);
    let r = h.record().await;
    assert!(r.cost_usd > 0.3);
    let (status, _, body) = h.message(h.bound, &h.t1, "claude-sonnet-4", true).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert!(body.contains("USD budget exhausted"), "{body}");
    assert!(body.contains("--max-usd"));
}

#[tokio::test]
async fn another_weavers_token_is_refused() {
    let h = harness("", WeaverLimits::unlimited()).await;
    h.up.set_default(Reply::anthropic_json("claude-sonnet-4", "hi", 1, 1));
    // w2's token on w1's listener is no credential there, and is answered like an unknown one.
    let (status, _, body) = h.message(h.bound, &h.t2, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(body.contains("unknown or revoked weaver token"), "{body}");
    let (status, _, body) = h.chat(h.bound, &h.t2, "gpt-4o", false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("can use only its own"), "{body}");
    // Both tokens in one request cannot smuggle w2 in either: x-api-key decides.
    let (status, _, _) = h
        .call(
            h.bound,
            "POST",
            "/v1/messages",
            &[("x-api-key", h.t2.expose()), ("authorization", &format!("Bearer {}", h.t1.expose()))],
            &anth_body("claude-sonnet-4", false),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(h.up.seen().is_empty());
}

#[tokio::test]
async fn missing_unknown_and_revoked_tokens_are_refused() {
    let mut h = harness("", WeaverLimits::unlimited()).await;
    h.up.set_default(Reply::anthropic_json("claude-sonnet-4", "hi", 1, 1));
    for addr in [h.bound, h.shared] {
        let (status, _, body) = h
            .call(
                addr,
                "POST",
                "/v1/messages",
                &[("anthropic-version", "2023-06-01")],
                &anth_body("claude-sonnet-4", false),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        let (status, _, body) = h
            .call(
                addr,
                "POST",
                "/v1/chat/completions",
                &[("authorization", "Bearer sk-proj-guess")],
                &oai_body("gpt-4o", false),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key");
        // The real provider key is no token either.
        let (status, _, _) = h
            .call(addr, "POST", "/v1/messages", &[("x-api-key", ANTHROPIC_KEY)], &anth_body("claude-sonnet-4", false))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // The shared listener accepts w2 by its token alone.
    let (status, _, _) = h.message(h.shared, &h.t2, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.record().await.weaver, "w2");

    // Unregistering kills the token and w1's bound listener.
    let final_usage = h.proxy.unregister_weaver("w1").unwrap();
    assert_eq!(final_usage.totals.requests, 0);
    let (status, _, _) = h.message(h.shared, &h.t1, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The bound serve loop notices the removal and drops its listener.
    let mut refused = Ok(());
    for _ in 0..100 {
        refused = tokio::net::TcpStream::connect(h.bound).await.map(drop);
        if refused.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused.is_err(), "w1's listener is closed after unregister");
    assert_eq!(h.up.seen().len(), 1);
    // Re-registering gives a new, different token.
    let t1b = h.proxy.register_weaver("w1", WeaverLimits::unlimited()).unwrap();
    assert_ne!(t1b.expose(), h.t1.expose());
    assert_eq!(format!("{t1b:?}"), "WeaverToken(<redacted>)");

    // After a loomd restart: the same token and the persisted totals come back.
    let saved = h.proxy.unregister_weaver("w2").unwrap();
    assert_eq!(saved.totals.requests, 1);
    let again = WeaverToken::parse(h.t2.expose()).unwrap();
    assert!(WeaverToken::parse("sk-ant-something").is_none());
    h.proxy.restore_weaver("w2", again, WeaverLimits::unlimited(), saved.totals.clone()).unwrap();
    assert!(
        h.proxy
            .restore_weaver(
                "w3",
                WeaverToken::parse(h.t2.expose()).unwrap(),
                WeaverLimits::unlimited(),
                Default::default()
            )
            .is_err()
    );
    let (status, _, _) = h.message(h.shared, &h.t2, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::OK);
    h.record().await;
    assert_eq!(h.proxy.usage("w2").unwrap().totals.requests, 2);
}

#[tokio::test]
async fn a_key_in_an_upstream_error_never_reaches_the_client() {
    let mut h = harness("", WeaverLimits::unlimited()).await;
    h.up.script([
        Reply::openai_error(401, &format!("Incorrect API key provided: {OPENAI_KEY}")),
        Reply::openai_error(400, &format!("bad request with key {OPENAI_KEY} echoed")),
    ]);
    let (status, headers, body) = h.chat(h.bound, &h.t1, "gpt-4o", false).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("refused loom's key"), "{body}");
    assert!(body.contains("providers.openai.key"));
    assert_no_keys(&body);
    assert_no_keys(&format!("{headers:?}"));
    assert_eq!(h.record().await.status, UsageStatus::UpstreamError(401));
    let (status, _, body) = h.chat(h.bound, &h.t1, "gpt-4o", false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("[REDACTED]"));
    assert_no_keys(&body);
    // Debug output of the proxy and its config holds no key.
    assert_no_keys(&format!("{:?} {:?}", h.proxy, h.proxy.config()));
}

#[tokio::test]
async fn rate_and_concurrency_limits() {
    let mut h = harness(
        "",
        WeaverLimits { max_concurrent: Some(1), requests_per_minute: Some(2), ..WeaverLimits::unlimited() },
    )
    .await;
    let gate = Arc::new(Notify::new());
    h.up.script([
        Reply::anthropic_stream("claude-sonnet-4", &["a"], usage4(1, 1, 0, 0)).insert(1, Part::WaitFor(gate.clone())),
        Reply::anthropic_json("claude-sonnet-4", "hi", 1, 1),
    ]);
    let held = h.open(h.bound, "POST", "/v1/messages", &anth_headers(&h.t1), &anth_body("claude-sonnet-4", true)).await;
    let (status, _, body) = h.message(h.bound, &h.t1, "claude-sonnet-4", true).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("rate_limit_error") && body.contains("concurrency limit"), "{body}");
    gate.notify_one();
    read_all(held.into_body()).await;
    h.record().await;
    let (status, _, _) = h.message(h.bound, &h.t1, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::OK);
    h.record().await;
    let (status, headers, body) = h.message(h.bound, &h.t1, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("2 requests per minute"), "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(h.proxy.usage("w1").unwrap().totals.refused, 2);
}

#[tokio::test]
async fn other_endpoints_pass_through() {
    let mut h = harness("", WeaverLimits::unlimited()).await;
    h.up.script([
        Reply::new(200, "application/json", r#"{"input_tokens":17}"#),
        Reply::new(200, "application/json", r#"{"object":"list","data":[{"id":"gpt-4o","object":"model"}]}"#),
        Reply::openai_json("text-embedding-3-small", "", 8, 0),
        Reply::new(200, "application/json", r#"{"id":"resp_1","object":"response","usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":1},"output_tokens":2}}"#),
    ]);
    let (status, _, body) = h
        .call(h.bound, "POST", "/v1/messages/count_tokens", &anth_headers(&h.t1), &anth_body("claude-sonnet-4", false))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"input_tokens":17}"#));
    let r = h.record().await;
    assert_eq!((r.usage.input_tokens, r.usage_reported), (FLOOR_TOKENS, false), "count_tokens reports no usage");
    assert!(r.cost_usd > 0.0, "no call is free");
    let bearer = format!("Bearer {}", h.t1.expose());
    let (status, _, body) = h.call(h.bound, "GET", "/v1/models?limit=5", &[("authorization", &bearer)], "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("gpt-4o"));
    let r = h.record().await;
    assert_eq!((r.usage.input_tokens, r.endpoint.as_str()), (FLOOR_TOKENS, "/v1/models"));
    assert_eq!(r.cost_usd, FLOOR_TOKENS as f64 * 15.0 / 1e6, "the floor is at the highest input price");
    let (status, _, _) = h
        .call(
            h.bound,
            "POST",
            "/proxy/openai/v1/embeddings",
            &[("authorization", &bearer)],
            r#"{"model":"text-embedding-3-small","input":"hi"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let r = h.record().await;
    assert_eq!((r.usage.input_tokens, r.endpoint.as_str()), (8, "/proxy/openai/v1/embeddings"));
    let (status, _, _) = h
        .call(h.bound, "POST", "/v1/responses", &[("authorization", &bearer)], r#"{"model":"gpt-4o","input":"hi"}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    let r = h.record().await;
    assert_eq!((r.usage.input_tokens, r.usage.cache_read_tokens, r.usage.output_tokens), (10, 1, 2));
    let seen = h.up.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/v1/messages/count_tokens", "/v1/models?limit=5", "/v1/embeddings", "/v1/responses"]);
    assert_eq!(seen[1].headers["authorization"], format!("Bearer {OPENAI_KEY}").as_str());

    // Unknown routes and providers, bad JSON: clear errors, nothing sent.
    let (status, _, body) = h.call(h.bound, "POST", "/proxy/bedrock/x", &[("authorization", &bearer)], "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no provider `bedrock`"));
    let (status, _, _) = h.call(h.bound, "GET", "/v2/nothing", &[("authorization", &bearer)], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = h.call(h.bound, "POST", "/v1/messages", &anth_headers(&h.t1), "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("not valid JSON"));
    let (status, _, _) = h
        .call(
            h.bound,
            "POST",
            "/v1/messages",
            &[("x-api-key", h.t1.expose()), ("x-loom-thread", "bad thread id!")],
            &anth_body("claude-sonnet-4", false),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(h.up.seen().len(), 4);
    assert_eq!(h.proxy.usage("w1").unwrap().in_flight, 0, "early errors give their slot back");
}

#[tokio::test]
async fn local_routes_get_the_authenticated_weaver() {
    let h = harness("", WeaverLimits::unlimited()).await;
    let (status, _, body) = h
        .call(h.bound, "POST", "/loom/threads/t1/events", &[("x-api-key", h.t1.expose())], "{\"kind\":\"turn\"}")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "{\"weaver\":\"w1\"}");
    let (status, _, _) =
        h.call(h.bound, "POST", "/loom/threads/t1/events", &[("x-api-key", h.t2.expose())], "{}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = h.call(h.shared, "POST", "/loom/x", &[], "{}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let calls = h.local.0.lock().unwrap().clone();
    assert_eq!(calls, vec![("w1".to_string(), "{\"kind\":\"turn\"}".to_string())]);
}

#[tokio::test]
async fn client_disconnect_mid_stream_settles_the_reservation() {
    let mut h = harness("", WeaverLimits { max_tokens: Some(100_000), ..WeaverLimits::unlimited() }).await;
    let gate = Arc::new(Notify::new());
    h.up.script([
        Reply::anthropic_stream("claude-sonnet-4", &["a"], usage4(30, 1, 0, 0)).insert(1, Part::WaitFor(gate.clone()))
    ]);
    let resp = h.open(h.bound, "POST", "/v1/messages", &anth_headers(&h.t1), &anth_body("claude-sonnet-4", true)).await;
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    assert!(h.proxy.usage("w1").unwrap().reserved_tokens > 0);
    drop(body);
    let r = h.record().await;
    assert_eq!(r.status, UsageStatus::ClientClosed);
    assert_eq!(r.usage.input_tokens, 30);
    let u = h.proxy.usage("w1").unwrap();
    assert_eq!((u.reserved_tokens, u.in_flight, u.totals.tokens), (0, 0, 31));
}

#[tokio::test]
async fn a_stalled_stream_is_ended_by_the_idle_timeout() {
    let mut h = harness("stream_idle_timeout_ms = 300\n", WeaverLimits::unlimited()).await;
    let never = Arc::new(Notify::new());
    h.up.script([
        Reply::anthropic_stream("claude-sonnet-4", &["a"], usage4(12, 1, 0, 0)).insert(2, Part::WaitFor(never.clone()))
    ]);
    let t0 = Instant::now();
    let (status, _, body) = h.message(h.bound, &h.t1, "claude-sonnet-4", true).await;
    assert_eq!(status, StatusCode::OK);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(body.contains("event: content_block_start"));
    assert!(body.contains("event: error") && body.contains("stream_idle_timeout_ms"), "{body}");
    let r = h.record().await;
    assert!(matches!(r.status, UsageStatus::Failed(ref m) if m.contains("sent nothing")));
    assert_eq!(r.usage.input_tokens, 12);
    assert_eq!(h.proxy.usage("w1").unwrap().in_flight, 0);
}

#[tokio::test]
async fn https_to_a_provider_behind_a_private_ca() {
    let up =
        FakeProvider::start_tls(include_str!("data/test-server-cert.pem"), include_str!("data/test-server-key.pem"))
            .await;
    up.script([Reply::openai_stream("llama3", &["hi"], 5, 1)]);
    let base = format!("https://localhost:{}/v1", up.addr.port());
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/test-ca.pem");
    let make = |ca_line: &str| {
        let providers = providers(&format!("[local]\nkind = \"openai-compatible\"\nbase_url = \"{base}\"\n{ca_line}"));
        ProxyConfig::from_toml(&providers, &"[retry]\nmax_attempts = 1\n".parse().unwrap()).unwrap()
    };
    for (ca_line, trusted) in [(format!("ca_file = \"{ca}\""), true), (String::new(), false)] {
        let proxy = Proxy::builder(make(&ca_line), Arc::new(Keys(HashMap::new()))).build().unwrap();
        let token = proxy.register_weaver("w", WeaverLimits::unlimited()).unwrap();
        let addr = serve(&proxy, None).await;
        let resp = post_bearer(addr, &token, "/v1/chat/completions", oai_body("llama3", true)).await;
        let status = resp.status();
        let body = read_all(resp.into_body()).await;
        if trusted {
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(body.ends_with("data: [DONE]\n\n"));
        } else {
            // The public web roots do not know the private CA: the handshake fails.
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
            assert!(body.contains("could not reach local"), "{body}");
        }
    }
    // The TLS fake saw exactly the one request that got through, without credentials.
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert!(seen[0].headers.get("authorization").is_none());

    let err = Proxy::builder(make("ca_file = \"/nonexistent/ca.pem\""), Arc::new(Keys(HashMap::new())))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("[providers.local] ca_file") && err.contains("cannot be read"), "{err}");
}
