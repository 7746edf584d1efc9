//! What the proxy forwards and what it charges, end to end over real TCP against
//! `fake_provider` (a fake of the providers' APIs: the real ones are outside this machine):
//! only inference endpoints reach the upstream, every forwarded call costs something, and
//! loomd's own routes have the model calls' limits and a body limit enforced while the body
//! streams in.

mod fake_provider;
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use fake_provider::Reply;
use harness::*;
use http::StatusCode;
use loom_proxy::WeaverLimits;
use loom_proxy::charge::FLOOR_TOKENS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn only_inference_endpoints_are_forwarded() {
    let mut h = harness("", WeaverLimits::unlimited()).await;
    h.up.set_default(Reply::new(200, "application/json", r#"{"id":"file-1","object":"file"}"#));
    let bearer = format!("Bearer {}", h.t1.expose());
    let oai = [("authorization", bearer.as_str())];
    let refused = [
        ("POST", "/proxy/openai/v1/batches", "POST /proxy/openai/v1/batches is not forwarded to provider `openai`"),
        ("POST", "/proxy/openai/v1/files", "POST /proxy/openai/v1/files is not forwarded"),
        ("POST", "/proxy/openai/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs is not forwarded"),
        ("GET", "/proxy/openai/v1/organization/admin_api_keys", "is not forwarded"),
        ("POST", "/proxy/openai/v1/vector_stores", "is not forwarded"),
        ("GET", "/proxy/openai/v1/chat/completions", "GET /proxy/openai/v1/chat/completions is not forwarded"),
        ("POST", "/proxy/openai/v1/chat/completions/%2e%2e/%2e%2e/files", "percent-encoding"),
        ("POST", "/proxy/openai/v1/chat%2fcompletions", "percent-encoding"),
        ("POST", "/proxy/openai/v1//files", "empty segment"),
        ("POST", "/proxy/openai/v1/chat/completions?_method=DELETE", "would change the method"),
        ("GET", "/proxy/zai/files", "GET /proxy/zai/files is not forwarded to provider `zai`"),
        ("GET", "/v1/responses/resp_1", "GET /v1/responses/resp_1 is not forwarded: loom forwards only"),
        ("DELETE", "/v1/models/ft:gpt-4o:me::1", "DELETE /v1/models/ft:gpt-4o:me::1 is not forwarded"),
    ];
    for (method, path, why) in refused {
        let (status, _, body) = h.call(h.bound, method, path, &oai, "{}").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "permission_denied", "OpenAI's error shape: {body}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(why), "{method} {path}: {msg}");
    }
    // The raw `..` form: what a client that does not normalise would send.
    let mut s = TcpStream::connect(h.bound).await.unwrap();
    let req = format!(
        "POST /proxy/openai/v1/chat/completions/../../v1/files HTTP/1.1\r\nhost: x\r\n{}: {}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}",
        oai[0].0, oai[0].1
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("`.` or `..` segment"), "{resp}");
    // Anthropic providers answer in Anthropic's shape and list their own endpoints.
    let (status, _, body) =
        h.call(h.bound, "POST", "/proxy/anthropic/v1/messages/batches", &anth_headers(&h.t1), "{}").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["type"].as_str(), v["error"]["type"].as_str()), (Some("error"), Some("permission_error")));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("POST /proxy/anthropic/v1/messages,") && msg.contains("batches"), "{msg}");

    assert!(h.up.seen().is_empty(), "a refused request reached the upstream: {:?}", h.up.seen()[0].path);
    h.no_record();
    let u = h.proxy.usage("w1").unwrap();
    assert_eq!((u.totals.refused, u.totals.requests, u.in_flight), (refused.len() as u64 + 2, 0, 0));

    // The allowed forms of the same provider do go through, the override header stripped.
    h.up.script([Reply::openai_json("gpt-4o", "hi", 3, 1)]);
    let headers = [oai[0], ("x-http-method-override", "DELETE")];
    let (status, _, _) =
        h.call(h.bound, "POST", "/proxy/openai/v1/chat/completions", &headers, &oai_body("gpt-4o", false)).await;
    assert_eq!(status, StatusCode::OK);
    let seen = h.up.seen();
    assert_eq!((seen.len(), seen[0].path.as_str()), (1, "/v1/chat/completions"));
    assert!(!seen[0].headers.contains_key("x-http-method-override"));
    assert_eq!(h.record().await.usage.total(), 4);
}

#[tokio::test]
async fn calls_without_usage_are_charged_the_floor_or_their_reservation() {
    let mut h = harness("", WeaverLimits { max_tokens: Some(100_000), ..WeaverLimits::unlimited() }).await;
    let bearer = format!("Bearer {}", h.t1.expose());
    let oai = [("authorization", bearer.as_str())];
    h.up.script([
        Reply::new(200, "application/json", r#"{"object":"list","data":[{"id":"gpt-4o"}]}"#),
        Reply::new(200, "application/json", r#"{"object":"list","data":[{"embedding":[0.1]}]}"#),
        Reply::new(200, "application/json", r#"{"object":"list","data":[]}"#),
        Reply::new(200, "application/json", r#"{"id":"chatcmpl-1","choices":[]}"#),
    ]);
    // A models list: the floor.
    let (status, _, _) = h.call(h.bound, "GET", "/proxy/openai/v1/models", &oai, "").await;
    assert_eq!(status, StatusCode::OK);
    let r = h.record().await;
    assert_eq!((r.usage.input_tokens, r.usage_reported), (FLOOR_TOKENS, false));
    assert!(r.cost_usd > 0.0);
    // Embeddings without a usage block: bytes / 4 once that is over the floor.
    let big = format!(r#"{{"model":"text-embedding-3-small","input":"{}"}}"#, "x".repeat(8000));
    let (status, _, _) = h.call(h.bound, "POST", "/proxy/openai/v1/embeddings", &oai, &big).await;
    assert_eq!(status, StatusCode::OK);
    let r = h.record().await;
    assert_eq!(r.usage.input_tokens, (big.len() as u64).div_ceil(4));
    assert!((r.cost_usd - r.usage.input_tokens as f64 * 15.0 / 1e6).abs() < 1e-12, "{}", r.cost_usd);
    // Small embeddings: the floor.
    let (status, _, _) =
        h.call(h.bound, "POST", "/v1/embeddings", &oai, r#"{"model":"text-embedding-3-small","input":"hi"}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "embeddings are a passthrough route only");
    let (status, _, _) = h
        .call(
            h.bound,
            "POST",
            "/proxy/openai/v1/embeddings",
            &oai,
            r#"{"model":"text-embedding-3-small","input":"hi"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.record().await.usage.input_tokens, FLOOR_TOKENS);
    // A chat completion answered without usage: its whole reservation (input and max tokens).
    let (status, _, _) = h.call(h.bound, "POST", "/v1/chat/completions", &oai, &oai_body("gpt-4o", false)).await;
    assert_eq!(status, StatusCode::OK);
    let r = h.record().await;
    assert!(r.usage.input_tokens >= 512, "charged at least max_completion_tokens: {:?}", r.usage);
    let totals = h.proxy.usage("w1").unwrap().totals;
    assert_eq!(totals.requests, 4);
    assert!(totals.cost_usd > 0.0 && totals.tokens > 2 * FLOOR_TOKENS);

    // Once the budget cannot hold the floor, even a models list is refused.
    let left = 100_000 - totals.tokens;
    h.proxy
        .set_limits(
            "w1",
            WeaverLimits { max_tokens: Some(totals.tokens + FLOOR_TOKENS - 1), ..WeaverLimits::unlimited() },
        )
        .unwrap();
    let (status, _, body) = h.call(h.bound, "GET", "/proxy/openai/v1/models", &oai, "").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body} ({left} were left)");
    assert!(body.contains("token budget exhausted") && body.contains("insufficient_quota"), "{body}");
    assert_eq!(h.up.seen().len(), 4);
}

/// A raw request to `addr` whose body is sent in pieces: `head` is everything before the body.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s
}

/// The status line of the answer on `s`, if one comes within `wait`.
async fn status_line(s: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(wait, async {
        while !buf.windows(2).any(|w| w == b"\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split("\r\n").next().filter(|l| !l.is_empty()).map(str::to_string)
}

#[tokio::test]
async fn local_route_bodies_are_refused_while_they_stream_in() {
    let h = harness("", WeaverLimits::unlimited()).await;
    let token = h.t1.expose();
    // The harness's local routes take the default 1 MiB.
    let limit = 1024 * 1024;
    // A declared length over the limit is refused before a byte of the body is sent.
    let head = format!(
        "POST /loom/v1/threads/events HTTP/1.1\r\nhost: x\r\nx-api-key: {token}\r\ncontent-length: {}\r\n\r\n",
        limit + 1
    );
    let mut s = raw(h.bound, &head, b"").await;
    assert_eq!(status_line(&mut s, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 413 Payload Too Large"));
    // A chunked body is refused as soon as it crosses the limit, though its chunk is unfinished.
    let head = format!(
        "POST /loom/v1/threads/events HTTP/1.1\r\nhost: x\r\nx-api-key: {token}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
        4 * limit
    );
    let mut s = raw(h.bound, &head, &vec![b'x'; limit + 1]).await;
    assert_eq!(status_line(&mut s, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 413 Payload Too Large"));
    // Under the limit, the same stream is waited for (and then taken).
    let mut s = raw(h.bound, &head, &vec![b'x'; limit - 10]).await;
    assert_eq!(status_line(&mut s, Duration::from_millis(300)).await, None);
    assert!(h.local.0.lock().unwrap().is_empty(), "no oversized body reached the local routes");
}

#[tokio::test]
async fn local_routes_have_the_model_calls_limits_counted_apart() {
    let mut h = harness(
        "",
        WeaverLimits { max_concurrent: Some(1), requests_per_minute: Some(3), ..WeaverLimits::unlimited() },
    )
    .await;
    let token = h.t1.expose().to_string();
    // One event post whose body is still arriving holds the weaver's one local slot.
    let head =
        format!("POST /loom/v1/threads/events HTTP/1.1\r\nhost: x\r\nx-api-key: {token}\r\ncontent-length: 4\r\n\r\n");
    let mut held = raw(h.bound, &head, b"{}").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, body) = h.call(h.bound, "POST", "/loom/v1/threads/events", &[("x-api-key", &token)], "{}").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("concurrency limit"), "{body}");
    // A model call has its own slot meanwhile.
    h.up.script([Reply::anthropic_json("claude-sonnet-4", "hi", 1, 1)]);
    let (status, _, _) = h.message(h.bound, &h.t1, "claude-sonnet-4", false).await;
    assert_eq!(status, StatusCode::OK);
    h.record().await;
    held.write_all(b"  ").await.unwrap();
    assert_eq!(status_line(&mut held, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 200 OK"));
    // Requests per minute: the held post took one of three (a refused one takes none).
    for _ in 0..2 {
        let (status, _, _) = h.call(h.bound, "POST", "/loom/v1/threads/events", &[("x-api-key", &token)], "{}").await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, headers, body) =
        h.call(h.bound, "POST", "/loom/v1/threads/events", &[("x-api-key", &token)], "{}").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("3 requests per minute") && headers.contains_key("retry-after"), "{body}");
    assert_eq!(h.local.0.lock().unwrap().len(), 3);
}
