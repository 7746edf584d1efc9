//! Streams and routing: what reaches the provider and what comes back, byte by byte.

use super::*;

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
async fn https_to_a_provider_behind_a_private_ca() {
    let up = FakeProvider::start_tls(
        include_str!("../data/test-server-cert.pem"),
        include_str!("../data/test-server-key.pem"),
    )
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
