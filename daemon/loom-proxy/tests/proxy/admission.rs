//! Who may call and how much: tokens, budgets, rate and concurrency limits, and keys that never leak.

use super::*;

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
