//! Property tests of the agent's SSE parser and of the reply accumulator behind it: a valid
//! stream gives the same events in any chunks as in one, any bytes and any events never
//! panic, and HTTP error answers always classify.

use loom_agent::llm::{Protocol, StreamAccumulator, classify_http_error, parse_retry_after};
use loom_agent::sse::{SseEvent, SseParser};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;

fn cases(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn split_at_points(bytes: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
    points.iter_mut().for_each(|p| *p %= bytes.len() + 1);
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for p in points {
        chunks.push(&bytes[start..p]);
        start = p;
    }
    chunks.push(&bytes[start..]);
    chunks
}

fn parse<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<SseEvent>, String> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for c in chunks {
        out.extend(p.feed(c).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// An event as a provider writes it (LF or CRLF lines, comments, `id:`), and what it means.
fn event() -> impl Strategy<Value = (Vec<u8>, SseEvent)> {
    let line = "\\PC{0,40}";
    (
        prop::option::of(line),
        prop::option::of(line),
        prop::collection::vec((line, any::<bool>()), 1..4),
        select(vec!["\n", "\r\n"]),
    )
        .prop_map(|(name, comment, data, nl)| {
            let mut wire = String::new();
            if let Some(c) = comment {
                wire.push_str(&format!(":{c}{nl}"));
            }
            if let Some(n) = &name {
                wire.push_str(&format!("event: {n}{nl}"));
            }
            wire.push_str(&format!("id: 1{nl}"));
            let mut lines = Vec::new();
            for (d, spaced) in &data {
                wire.push_str(&format!("data:{}{d}{nl}", if *spaced { " " } else { "" }));
                lines.push(if *spaced { d.as_str() } else { d.strip_prefix(' ').unwrap_or(d) });
            }
            wire.push_str(nl);
            let event = SseEvent { event: name.unwrap_or_default(), data: lines.join("\n") };
            (wire.into_bytes(), event)
        })
}

/// Events of both protocols with any indices, types and text, to feed the accumulator.
fn model_event() -> impl Strategy<Value = SseEvent> {
    let idx = prop_oneof![0..4u64, any::<u64>()];
    let text = "\\PC{0,20}";
    let data = prop_oneof![
        (idx.clone(), select(vec!["tool_use", "text"]), text).prop_map(|(i, t, s)| json!({"type": "content_block_start", "index": i, "content_block": {"type": t, "id": s, "name": s, "text": s}})),
        (idx.clone(), select(vec!["text_delta", "input_json_delta", "other"]), text).prop_map(|(i, t, s)| json!({"type": "content_block_delta", "index": i, "delta": {"type": t, "text": s, "partial_json": s}})),
        idx.clone().prop_map(|i| json!({"type": "content_block_stop", "index": i})),
        (any::<u64>(), text).prop_map(|(n, r)| json!({"type": "message_delta", "delta": {"stop_reason": r}, "usage": {"output_tokens": n}})),
        Just(json!({"type": "message_stop"})),
        (idx, text, text).prop_map(|(i, s, a)| json!({"choices": [{"delta": {"content": s, "tool_calls": [{"index": i, "id": s, "function": {"name": s, "arguments": a}}]}, "finish_reason": s}]})),
        any::<u64>().prop_map(|n| json!({"usage": {"prompt_tokens": n, "completion_tokens": n}})),
        text.prop_map(|m| json!({"type": "error", "error": {"message": m}})),
    ];
    (prop::option::of(select(vec!["message_start", "error", ""])), prop_oneof![4 => data.prop_map(|d| d.to_string()), 1 => Just("[DONE]".to_string()), 1 => text.prop_map(String::from)])
        .prop_map(|(event, data)| SseEvent { event: event.unwrap_or_default().to_string(), data })
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn valid_streams_give_their_events_in_any_chunks(
        events in prop::collection::vec(event(), 0..8),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let wire: Vec<u8> = events.iter().flat_map(|(w, _)| w.clone()).collect();
        let want: Vec<SseEvent> = events.into_iter().map(|(_, e)| e).collect();
        prop_assert_eq!(parse([&wire[..]]), Ok(want.clone()));
        prop_assert_eq!(parse(split_at_points(&wire, points)), Ok(want.clone()));
        prop_assert_eq!(parse(wire.chunks(1)), Ok(want));
    }

    #[test]
    fn any_bytes_parse_the_same_in_any_chunks(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        prop_assert_eq!(parse([&bytes[..]]), parse(split_at_points(&bytes, points)));
    }

    #[test]
    fn any_model_events_accumulate_or_fail(events in prop::collection::vec(model_event(), 0..12), openai in any::<bool>()) {
        let mut acc = StreamAccumulator::new(if openai { Protocol::OpenAi } else { Protocol::Anthropic });
        for ev in &events {
            if acc.push(ev).is_err() {
                return Ok(());
            }
        }
        let _ = acc.finish();
    }

    #[test]
    fn http_errors_always_classify(status in any::<u16>(), retry in prop::option::of(any::<String>()), body in any::<String>()) {
        let _ = classify_http_error(status, retry.as_deref(), &body);
        if let Some(d) = retry.as_deref().and_then(parse_retry_after) {
            prop_assert!(d.as_secs() <= 86_400);
        }
    }
}
