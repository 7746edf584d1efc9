//! Property tests of the proxy's parsers: the response scanner (the SSE and JSON parsing it
//! does as a provider's bytes pass) never panics on any bytes and finds the same usage, end
//! and errors in any split of a stream as in one piece; a weaver's request paths always
//! classify; the `[proxy]` config is accepted only with values the proxy can use.

use std::collections::BTreeMap;
use std::time::Instant;

use loom_proxy::ProxyConfig;
use loom_proxy::route::Endpoint;
use loom_proxy::usage::{ScanOutcome, UsageScanner, usage_from_json};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;
use support::{cases, split_at_points};

/// One definition of the helpers every crate's property tests use.
#[path = "../../loom-core/tests/fuzz/support.rs"]
mod support;

fn scan<'a>(content_type: &str, chunks: impl IntoIterator<Item = &'a [u8]>) -> ScanOutcome {
    let mut s = UsageScanner::new(content_type);
    for c in chunks {
        s.feed(c);
    }
    s.finish()
}

fn count() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<u32>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        Just(json!(-1)),
        Just(json!(1.5))
    ]
}

/// The data payloads of the Anthropic, OpenAI Chat and OpenAI Responses streams, with any
/// counts and any text (multi-byte, long) in deltas and error messages.
fn payload() -> impl Strategy<Value = String> {
    let text = "\\PC{0,300}";
    prop_oneof![
        (count(), count(), count()).prop_map(|(i, o, c)| json!({"type": "message_start", "message": {"usage": {"input_tokens": i, "output_tokens": o, "cache_read_input_tokens": c}}}).to_string()),
        (count(), count()).prop_map(|(o, i)| json!({"type": "message_delta", "usage": {"output_tokens": o, "input_tokens": i}}).to_string()),
        text.prop_map(|t| json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": t}}).to_string()),
        Just(json!({"type": "message_stop"}).to_string()),
        (text, text).prop_map(|(ty, m)| json!({"type": "error", "error": {"type": ty, "message": m}}).to_string()),
        text.prop_map(|m| json!({"error": {"message": m}}).to_string()),
        (count(), count(), count()).prop_map(|(p, c, k)| json!({"object": "chat.completion.chunk", "usage": {"prompt_tokens": p, "completion_tokens": c, "prompt_tokens_details": {"cached_tokens": k}}}).to_string()),
        (select(vec!["response.created", "response.completed", "response.incomplete", "response.failed"]), count(), count(), text)
            .prop_map(|(ty, i, o, m)| json!({"type": ty, "response": {"usage": {"input_tokens": i, "output_tokens": o, "input_tokens_details": {"cached_tokens": 1}}, "error": {"message": m}}}).to_string()),
        Just("[DONE]".to_string()),
        text.prop_map(|t| t.to_string()),
    ]
}

/// One event: `event:`/`id:`/comment lines, its payload over one or more `data:` lines
/// (with or without the space), a blank line; each line ending in LF, CRLF or CR.
fn event() -> impl Strategy<Value = Vec<u8>> {
    let ending = || select(vec!["\n", "\r\n", "\r"]);
    (
        prop::option::of(select(vec!["message_start", "ping", "error", "response.completed"])),
        prop::option::of("\\PC{0,20}"),
        payload(),
        any::<bool>(),
        prop::collection::vec(ending(), 6),
    )
        .prop_map(|(name, comment, data, spaced, ends)| {
            let mut out = String::new();
            if let Some(n) = name {
                out.push_str(&format!("event: {n}{}", ends[0]));
            }
            if let Some(c) = comment {
                out.push_str(&format!(":{c}{}", ends[1]));
            }
            out.push_str(&format!("id: 7{}", ends[2]));
            // A payload with line breaks goes over several `data:` lines, as SSE requires.
            for line in data.split(['\r', '\n']) {
                out.push_str(if spaced { "data: " } else { "data:" });
                out.push_str(line);
                out.push_str(ends[3]);
            }
            out.push_str(ends[4]);
            out.into_bytes()
        })
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(event(), 0..8).prop_map(|evs| evs.concat())
}

const CONTENT_TYPES: [&str; 4] =
    ["text/event-stream", "text/event-stream; charset=utf-8", "application/json", "text/plain"];

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn valid_streams_scan_the_same_in_any_chunks(bytes in stream(), points in prop::collection::vec(any::<usize>(), 0..12)) {
        let whole = scan("text/event-stream", [&bytes[..]]);
        let pieces = scan("text/event-stream", split_at_points(&bytes, points));
        prop_assert_eq!(&whole, &pieces);
        if let Some(e) = &whole.upstream_error {
            prop_assert!(e.len() <= 500);
        }
        // One byte at a time is the worst split there is.
        let bytewise = scan("text/event-stream", bytes.chunks(1));
        prop_assert_eq!(&whole, &bytewise);
    }

    #[test]
    fn any_bytes_scan_the_same_in_any_chunks(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        points in prop::collection::vec(any::<usize>(), 0..12),
        ct in 0..4usize,
    ) {
        let whole = scan(CONTENT_TYPES[ct], [&bytes[..]]);
        prop_assert_eq!(whole, scan(CONTENT_TYPES[ct], split_at_points(&bytes, points)));
    }

    #[test]
    fn json_bodies_never_panic(body in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        payload().prop_map(String::into_bytes),
    ]) {
        let _ = usage_from_json(&body);
        let whole = scan("application/json", [&body[..]]);
        prop_assert_eq!(whole, scan("application/json", body.chunks(7)));
    }
}

#[test]
fn error_event_with_a_multibyte_char_across_byte_500_does_not_panic() {
    // "error: " is 7 bytes; 492 more put the 2-byte 'é' across byte 500.
    let message = format!("{}é and more", "x".repeat(492));
    let event = format!("data: {}\n\n", json!({"type": "error", "error": {"message": message}}));
    let out = scan("text/event-stream", [event.as_bytes()]);
    assert_eq!(out.upstream_error, Some(format!("error: {}", "x".repeat(492))));
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn any_request_path_classifies(
        path in prop_oneof![any::<String>(), "/(v1|proxy|loom)?/[a-z_/.%]{0,30}"],
        anthropic in any::<bool>(),
    ) {
        match Endpoint::classify(&path, anthropic) {
            Endpoint::Passthrough { provider, rest } => {
                prop_assert!(!provider.is_empty() && !provider.contains('/'));
                prop_assert!(rest.starts_with('/'));
                prop_assert!(path.ends_with(rest.trim_start_matches('/')));
            }
            Endpoint::NotFound => {}
            e => prop_assert!(path.starts_with("/v1/") || path.starts_with("/loom"), "{e:?} for {path:?}"),
        }
    }

    #[test]
    fn proxy_tables_are_usable_or_refused(
        fields in prop::collection::btree_map(
            select(vec![
                "first_byte_timeout_ms", "stream_idle_timeout_ms", "default_output_tokens", "max_request_bytes",
                "anthropic_version", "retry.max_attempts", "retry.base_delay_ms", "retry.max_delay_ms",
                "retry.max_retry_after_ms", "limits.max_tokens", "limits.max_usd", "limits.requests_per_minute",
                "limits.max_concurrent", "prices.default.input", "prices.default.output", "extra",
            ]),
            // Mostly numbers of the right sign, so that whole tables often get through.
            prop_oneof![
                4 => (0..=i64::MAX).prop_map(|n| n.to_string()),
                4 => (0..100_000i64).prop_map(|n| n.to_string()),
                1 => any::<i64>().prop_map(|n| n.to_string()),
                1 => any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
                1 => "\\PC{0,12}".prop_map(|s| toml::Value::String(s).to_string()),
            ],
            0..4,
        ),
    ) {
        let text: String = fields.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let Ok(table) = text.parse::<toml::Table>() else { return Ok(()) };
        match ProxyConfig::from_toml(&BTreeMap::new(), &table) {
            Ok(c) => {
                prop_assert!(Instant::now().checked_add(c.stream_idle_timeout).is_some());
                prop_assert!(Instant::now().checked_add(c.first_byte_timeout).is_some());
                prop_assert!(c.retry.max_attempts >= 1);
                let l = c.default_limits;
                prop_assert!(l.max_usd.is_none_or(|v| v.is_finite() && v > 0.0));
                for p in std::iter::once(&c.prices.default).chain(c.prices.models.values()) {
                    prop_assert!([p.input, p.output, p.cache_read, p.cache_write].iter().all(|v| v.is_finite() && *v >= 0.0));
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
