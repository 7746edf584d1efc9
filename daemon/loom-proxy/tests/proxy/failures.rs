//! An upstream that fails: retries, fallback, cut and stalled streams, timeouts, garbage, and a client that leaves.

use super::*;

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
