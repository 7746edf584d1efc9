//! Token usage: extracted from JSON responses and from SSE streams as they pass (pure, no I/O),
//! and the records handed to loomd's sink.

use std::time::{Duration, SystemTime};

use loom_core::sse::SseParser;
use serde_json::Value;

/// Tokens of one request, in the four classes providers bill separately.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Input tokens not served from a prompt cache.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_write_tokens)
    }
}

fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// Reads a `usage` object in any of the shapes the supported APIs use:
/// Anthropic (`input_tokens` excludes cache, `cache_read_input_tokens`,
/// `cache_creation_input_tokens`), OpenAI Chat (`prompt_tokens` includes
/// `prompt_tokens_details.cached_tokens`) and OpenAI Responses (`input_tokens` includes
/// `input_tokens_details.cached_tokens`).
pub fn usage_from_object(u: &Value) -> Option<Usage> {
    if !u.is_object() {
        return None;
    }
    if let Some(prompt) = num(u, "prompt_tokens") {
        let cached = u.get("prompt_tokens_details").and_then(|d| num(d, "cached_tokens")).unwrap_or(0).min(prompt);
        let cache_write = u.get("prompt_tokens_details").and_then(|d| num(d, "cache_write_tokens")).unwrap_or(0);
        return Some(Usage {
            input_tokens: prompt - cached,
            output_tokens: num(u, "completion_tokens").unwrap_or(0),
            cache_read_tokens: cached,
            cache_write_tokens: cache_write,
        });
    }
    let input = num(u, "input_tokens");
    let output = num(u, "output_tokens");
    if input.is_none() && output.is_none() {
        return None;
    }
    let input = input.unwrap_or(0);
    if let Some(details) = u.get("input_tokens_details") {
        let cached = num(details, "cached_tokens").unwrap_or(0).min(input);
        return Some(Usage {
            input_tokens: input - cached,
            output_tokens: output.unwrap_or(0),
            cache_read_tokens: cached,
            cache_write_tokens: 0,
        });
    }
    Some(Usage {
        input_tokens: input,
        output_tokens: output.unwrap_or(0),
        cache_read_tokens: num(u, "cache_read_input_tokens").unwrap_or(0),
        cache_write_tokens: num(u, "cache_creation_input_tokens").unwrap_or(0),
    })
}

/// Usage of a complete (non-streamed) JSON response body.
pub fn usage_from_json(body: &[u8]) -> Result<Option<Usage>, serde_json::Error> {
    let v: Value = serde_json::from_slice(body)?;
    Ok(v.get("usage")
        .and_then(usage_from_object)
        .or_else(|| v.get("response").and_then(|r| r.get("usage")).and_then(usage_from_object)))
}

/// What a scan of a whole response found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanOutcome {
    pub usage: Option<Usage>,
    /// The stream was a model stream and ended without its terminal event.
    pub cut: bool,
    /// The upstream itself sent an error event or an unparsable body.
    pub upstream_error: Option<String>,
}

/// Largest JSON body the scanner looks into (SSE lines and events: the parser's own bound);
/// past it usage is unknown.
const MAX_SCAN: usize = 8 * 1024 * 1024;

#[derive(Debug)]
enum Mode {
    Sse,
    Json,
    Other,
}

/// Watches response bytes go by without holding them up, and finds usage, the end of a model
/// stream and upstream error events.
#[derive(Debug)]
pub struct UsageScanner {
    mode: Mode,
    sse: SseParser,
    /// The stream or body grew past what the scanner looks into: usage is what was seen before.
    overflow: bool,
    usage: Option<Usage>,
    model_stream: bool,
    terminal: bool,
    error: Option<String>,
    json: Vec<u8>,
}

impl UsageScanner {
    pub fn new(content_type: &str) -> Self {
        let ct = content_type.to_ascii_lowercase();
        let mode = if ct.starts_with("text/event-stream") {
            Mode::Sse
        } else if ct.contains("json") {
            Mode::Json
        } else {
            Mode::Other
        };
        Self {
            mode,
            sse: SseParser::new(),
            overflow: false,
            usage: None,
            model_stream: false,
            terminal: false,
            error: None,
            json: Vec::new(),
        }
    }

    pub fn is_sse(&self) -> bool {
        matches!(self.mode, Mode::Sse)
    }

    /// Usage seen so far (streams report it before their end).
    pub fn usage_so_far(&self) -> Option<Usage> {
        self.usage
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if self.overflow {
            return;
        }
        match self.mode {
            Mode::Other => {}
            Mode::Json => {
                if self.json.len() + chunk.len() > MAX_SCAN {
                    self.overflow = true;
                    self.json = Vec::new();
                } else {
                    self.json.extend_from_slice(chunk);
                }
            }
            Mode::Sse => self.feed_sse(chunk),
        }
    }

    fn feed_sse(&mut self, chunk: &[u8]) {
        let mut sse = std::mem::take(&mut self.sse);
        // `event:` names carry nothing the scanner needs: every payload of the supported APIs
        // names its own type.
        if sse.feed_with(chunk, |e| self.on_data(e.data)).is_err() {
            self.overflow = true;
        }
        self.sse = sse;
    }

    fn on_data(&mut self, data: &str) {
        if data.trim() == "[DONE]" {
            self.terminal = true;
            return;
        }
        if data.contains("\"message_start\"")
            || data.contains("chat.completion.chunk")
            || data.contains("\"response.created\"")
        {
            self.model_stream = true;
        }
        // Parse only the few events that matter; text deltas are the bulk of a stream.
        let interesting = data.contains("\"usage\"")
            || data.contains("\"error\"")
            || data.contains("message_stop")
            || data.contains("\"response.");
        if !interesting {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
        match ty {
            "message_start" => {
                if let Some(u) = v.get("message").and_then(|m| m.get("usage")).and_then(usage_from_object) {
                    self.usage = Some(u);
                }
            }
            "message_delta" => {
                if let Some(d) = v.get("usage") {
                    // Cumulative counts; newer API versions repeat input and cache counts here.
                    let u = self.usage.get_or_insert_with(Usage::default);
                    if let Some(n) = num(d, "output_tokens") {
                        u.output_tokens = n;
                    }
                    if let Some(n) = num(d, "input_tokens") {
                        u.input_tokens = n;
                    }
                    if let Some(n) = num(d, "cache_read_input_tokens") {
                        u.cache_read_tokens = n;
                    }
                    if let Some(n) = num(d, "cache_creation_input_tokens") {
                        u.cache_write_tokens = n;
                    }
                }
            }
            "message_stop" => self.terminal = true,
            "error" => {
                self.error = Some(error_message(&v));
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.model_stream = true;
                self.terminal = true;
                if let Some(u) = v.get("response").and_then(|r| r.get("usage")).and_then(usage_from_object) {
                    self.usage = Some(u);
                }
                if ty == "response.failed" {
                    self.error = Some(error_message(v.get("response").unwrap_or(&v)));
                }
            }
            _ => {
                if v.get("error").is_some_and(|e| !e.is_null()) && ty.is_empty() {
                    self.error = Some(error_message(&v));
                }
                if let Some(u) = v.get("usage").and_then(usage_from_object) {
                    self.usage = Some(u);
                }
            }
        }
    }

    pub fn finish(&mut self) -> ScanOutcome {
        match self.mode {
            Mode::Sse => {
                if !self.overflow {
                    // An upstream that ends without the last blank line still sent its event.
                    let mut sse = std::mem::take(&mut self.sse);
                    let _ = sse.finish_with(|e| self.on_data(e.data));
                }
                ScanOutcome {
                    usage: self.usage,
                    cut: self.model_stream && !self.terminal && self.error.is_none(),
                    upstream_error: self.error.take(),
                }
            }
            Mode::Json => {
                if self.overflow {
                    return ScanOutcome::default();
                }
                match usage_from_json(&self.json) {
                    Ok(usage) => ScanOutcome { usage, ..Default::default() },
                    Err(e) => ScanOutcome {
                        usage: None,
                        cut: false,
                        upstream_error: Some(format!("upstream sent a body that is not JSON ({e})")),
                    },
                }
            }
            Mode::Other => ScanOutcome::default(),
        }
    }
}

fn error_message(v: &Value) -> String {
    let e = v.get("error").unwrap_or(v);
    let msg = e.get("message").and_then(Value::as_str).unwrap_or("upstream error event");
    let ty = e.get("type").and_then(Value::as_str).unwrap_or("error");
    let mut s = format!("{ty}: {msg}");
    if s.len() > 500 {
        // The provider's text may have a multi-byte character across byte 500.
        let mut cut = 500;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// How a proxied request ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "detail")]
pub enum UsageStatus {
    /// The upstream answered 2xx and the body arrived whole.
    Ok,
    /// The upstream answered with this non-2xx status (after retries and fallbacks).
    UpstreamError(u16),
    /// The request failed after the response started (stream cut, upstream error event,
    /// garbage body) or never got a response (unreachable, timed out).
    Failed(String),
    /// The client went away before the response was complete.
    ClientClosed,
}

impl UsageStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::UpstreamError(_) => "upstream_error",
            Self::Failed(_) => "failed",
            Self::ClientClosed => "client_closed",
        }
    }
}

/// One proxied model call, for loomd to persist (`loom usage`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UsageRecord {
    pub weaver: String,
    /// From the client's `x-loom-thread` header.
    pub thread: Option<String>,
    pub provider: String,
    /// The model as sent upstream (provider prefix stripped).
    pub model: String,
    /// The proxy route, e.g. `/v1/messages` or `/proxy/openai/v1/embeddings`.
    pub endpoint: String,
    pub usage: Usage,
    /// False when the response carried no usage and the budget was charged the reservation.
    pub usage_reported: bool,
    pub cost_usd: f64,
    pub status: UsageStatus,
    pub http_status: u16,
    /// Upstream attempts, retries and fallbacks included.
    pub attempts: u32,
    pub started_at: SystemTime,
    /// Until the upstream's response headers.
    pub time_to_first_byte: Duration,
    /// Until the last byte of the response.
    pub latency: Duration,
}

/// Where finished usage records go; loomd persists them. Called on the request's task: keep
/// it quick (e.g. push into a channel).
pub trait UsageSink: Send + Sync + 'static {
    fn record(&self, record: UsageRecord);
}

impl UsageSink for tokio::sync::mpsc::UnboundedSender<UsageRecord> {
    fn record(&self, record: UsageRecord) {
        // The receiver is gone only while loomd shuts down.
        let _ = self.send(record);
    }
}

/// Discards records; totals are still kept in memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl UsageSink for NullSink {
    fn record(&self, _record: UsageRecord) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(ct: &str, parts: &[&str]) -> ScanOutcome {
        let mut s = UsageScanner::new(ct);
        for p in parts {
            s.feed(p.as_bytes());
        }
        s.finish()
    }

    const ANTHROPIC: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":7,\"cache_creation_input_tokens\":3,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn anthropic_stream_in_any_split() {
        let want = Usage { input_tokens: 25, output_tokens: 15, cache_read_tokens: 7, cache_write_tokens: 3 };
        for split in 0..ANTHROPIC.len() {
            let (a, b) = ANTHROPIC.split_at(split);
            let o = scan("text/event-stream; charset=utf-8", &[a, b]);
            assert_eq!(o.usage, Some(want), "split at {split}");
            assert!(!o.cut);
            assert_eq!(o.upstream_error, None);
        }
        let crlf = ANTHROPIC.replace('\n', "\r\n");
        for split in 0..crlf.len() {
            let (a, b) = crlf.split_at(split);
            assert_eq!(scan("text/event-stream", &[a, b]).usage, Some(want));
        }
    }

    #[test]
    fn anthropic_stream_cut_before_message_stop() {
        let cut = &ANTHROPIC[..ANTHROPIC.find("event: message_delta").unwrap()];
        let o = scan("text/event-stream", &[cut]);
        assert!(o.cut);
        assert_eq!(o.usage.unwrap().input_tokens, 25);
    }

    #[test]
    fn anthropic_error_event() {
        let o = scan(
            "text/event-stream",
            &[
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            ],
        );
        assert_eq!(o.upstream_error.as_deref(), Some("overloaded_error: Overloaded"));
    }

    #[test]
    fn openai_stream_final_usage_chunk() {
        let s = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":20,\"total_tokens\":120,\"prompt_tokens_details\":{\"cached_tokens\":40}}}\n\ndata: [DONE]\n\n";
        let o = scan("text/event-stream", &[s]);
        assert_eq!(
            o.usage,
            Some(Usage { input_tokens: 60, output_tokens: 20, cache_read_tokens: 40, cache_write_tokens: 0 })
        );
        assert!(!o.cut);
        let o = scan("text/event-stream", &[&s[..s.find("data: [DONE]").unwrap()]]);
        assert!(o.cut);
    }

    #[test]
    fn openai_error_chunk_and_non_model_stream() {
        let o = scan("text/event-stream", &["data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n"]);
        assert_eq!(o.upstream_error.as_deref(), Some("server_error: boom"));
        // A stream that is not a model stream is never called cut.
        let o = scan("text/event-stream", &["data: hello\n\n"]);
        assert!(!o.cut);
    }

    #[test]
    fn responses_api_stream_and_json() {
        let s = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{}}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":50,\"input_tokens_details\":{\"cached_tokens\":10},\"output_tokens\":5}}}\n\n";
        let o = scan("text/event-stream", &[s]);
        assert_eq!(o.usage.unwrap().input_tokens, 40);
        assert_eq!(o.usage.unwrap().cache_read_tokens, 10);
        assert!(!o.cut);
    }

    #[test]
    fn json_bodies() {
        let o = scan("application/json", &["{\"id\":\"msg\",\"usage\":{\"input_tokens\":3,", "\"output_tokens\":4}}"]);
        assert_eq!(o.usage.unwrap().total(), 7);
        let o = scan("application/json", &["{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}"]);
        assert_eq!(o.usage.unwrap().output_tokens, 4);
        let o = scan("application/json", &["<html>bad gateway"]);
        assert!(o.upstream_error.unwrap().contains("not JSON"));
        assert_eq!(scan("application/json", &["{\"data\":[]}"]).usage, None);
        assert_eq!(scan("text/plain", &["whatever"]), ScanOutcome::default());
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let pieces: [&[u8]; 9] = [
            b"data: ",
            b"\n",
            b"\r\n",
            b"{\"type\":\"message_delta\",\"usage\":{\"output_tokens\":",
            b"\"usage\":{\"prompt_tokens\":-1}",
            b"[DONE]",
            b"\xff\xfe",
            b"event: error\n",
            b"}}",
        ];
        for ct in ["text/event-stream", "application/json", "text/plain"] {
            for _ in 0..300 {
                let mut s = UsageScanner::new(ct);
                for _ in 0..rng.random_range(0..40) {
                    if rng.random_bool(0.5) {
                        s.feed(pieces[rng.random_range(0..pieces.len())]);
                    } else {
                        let n = rng.random_range(0..64);
                        let v: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                        s.feed(&v);
                    }
                }
                let _ = s.finish();
            }
        }
    }

    #[test]
    fn records_serialize_for_the_store() {
        let r = UsageRecord {
            weaver: "w".into(),
            thread: Some("t".into()),
            provider: "anthropic".into(),
            model: "claude-sonnet-4".into(),
            endpoint: "/v1/messages".into(),
            usage: Usage { input_tokens: 1, output_tokens: 2, cache_read_tokens: 3, cache_write_tokens: 4 },
            usage_reported: true,
            cost_usd: 0.5,
            status: UsageStatus::UpstreamError(529),
            http_status: 529,
            attempts: 3,
            started_at: SystemTime::UNIX_EPOCH,
            time_to_first_byte: Duration::from_millis(5),
            latency: Duration::from_millis(9),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], serde_json::json!({"status": "upstream_error", "detail": 529}));
        assert_eq!(v["usage"]["cache_write_tokens"], 4);
        assert_eq!(serde_json::from_value::<UsageRecord>(v).unwrap(), r);
        let ok = serde_json::to_value(UsageStatus::Ok).unwrap();
        assert_eq!(ok, serde_json::json!({"status": "ok"}));
    }
}
