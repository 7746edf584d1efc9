//! Property tests of the agent's reply accumulator (behind `loom_core::sse`, whose own
//! properties are in loom-core's `tests/fuzz.rs`): any events never panic, and HTTP error
//! answers always classify.

use loom_agent::llm::{Protocol, StreamAccumulator, classify_http_error, parse_retry_after};
use loom_core::sse::SseEvent;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;
use support::cases;

/// The helpers every crate's property tests share, defined once in loom-core's.
#[path = "../../loom-core/tests/fuzz/support.rs"]
mod support;

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
