//! The two wire protocols the agent speaks, without I/O: request bodies for Anthropic Messages
//! and OpenAI Chat Completions, the accumulators that turn their SSE streams into one
//! [`ModelReply`], and the classification of error answers (429, budget, ...).

use std::time::Duration;

use serde_json::{Value, json};

use loom_core::sse::SseEvent;

/// Which wire protocol a model is spoken to with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST {ANTHROPIC_BASE_URL}/v1/messages`
    Anthropic,
    /// `POST {OPENAI_BASE_URL}/v1/chat/completions`
    OpenAi,
}

/// A `provider/model` choice, e.g. `anthropic/claude-sonnet-4-5` or `openai/gpt-5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub provider: String,
    pub model: String,
    pub protocol: Protocol,
}

/// A `--model` value that is not `provider/model`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--model {0:?} must be provider/model, e.g. anthropic/claude-sonnet-4-5 or openai/gpt-5")]
pub struct BadModelSpec(pub String);

impl ModelSpec {
    /// `anthropic/...` speaks Anthropic Messages; every other provider speaks OpenAI chat completions.
    pub fn parse(s: &str) -> Result<ModelSpec, BadModelSpec> {
        let (provider, model) = s.split_once('/').ok_or_else(|| BadModelSpec(s.into()))?;
        if provider.is_empty() || model.is_empty() {
            return Err(BadModelSpec(s.into()));
        }
        let protocol = if provider.eq_ignore_ascii_case("anthropic") { Protocol::Anthropic } else { Protocol::OpenAi };
        Ok(ModelSpec { provider: provider.into(), model: model.into(), protocol })
    }

    /// What goes in the request's `model` field: the full `provider/model` (the loom proxy
    /// routes by that prefix), or the bare model when talking to a provider directly.
    pub fn wire_name(&self, bare: bool) -> String {
        if bare { self.model.clone() } else { format!("{}/{}", self.provider, self.model) }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub input_schema: Value,
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub input: Value,
}

/// What a tool call gave back.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub call_id: String,
    pub content: String,
    pub is_error: bool,
}

/// One message of the conversation, independent of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    User(String),
    Assistant { text: String, tool_calls: Vec<ToolCall> },
    ToolResults(Vec<ToolResult>),
}

/// Token counts of one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// One complete model reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelReply {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub stop_reason: String,
    pub usage: Usage,
}

/// A request to send, in the chosen protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    pub system: String,
    pub messages: Vec<Msg>,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: u32,
}

/// The request body for `spec`'s protocol, naming the model `wire_model`.
pub fn request_body(spec: &ModelSpec, wire_model: &str, req: &ModelRequest) -> Value {
    match spec.protocol {
        Protocol::Anthropic => anthropic_body(wire_model, req),
        Protocol::OpenAi => {
            let mut b = openai_body(wire_model, req);
            // OpenAI's own newer models refuse `max_tokens`; OpenAI-compatible servers of other
            // providers often know only `max_tokens`.
            if !spec.provider.eq_ignore_ascii_case("openai")
                && let Some(o) = b.as_object_mut()
                && let Some(v) = o.remove("max_completion_tokens")
            {
                o.insert("max_tokens".into(), v);
            }
            b
        }
    }
}

fn anthropic_body(model: &str, req: &ModelRequest) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| match m {
            Msg::User(t) => json!({"role": "user", "content": t}),
            Msg::Assistant { text, tool_calls } => {
                let mut blocks = Vec::new();
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for c in tool_calls {
                    blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.input}));
                }
                if blocks.is_empty() {
                    blocks.push(json!({"type": "text", "text": "(no reply)"}));
                }
                json!({"role": "assistant", "content": blocks})
            }
            Msg::ToolResults(rs) => json!({
                "role": "user",
                "content": rs.iter().map(|r| json!({
                    "type": "tool_result",
                    "tool_use_id": r.call_id,
                    "content": r.content,
                    "is_error": r.is_error,
                })).collect::<Vec<_>>(),
            }),
        })
        .collect();
    json!({
        "model": model,
        "max_tokens": req.max_tokens,
        "stream": true,
        "system": req.system,
        "messages": messages,
        "tools": req.tools.iter().map(|t| json!({
            "name": t.name, "description": t.description, "input_schema": t.input_schema,
        })).collect::<Vec<_>>(),
    })
}

fn openai_body(model: &str, req: &ModelRequest) -> Value {
    let mut messages = vec![json!({"role": "system", "content": req.system})];
    for m in &req.messages {
        match m {
            Msg::User(t) => messages.push(json!({"role": "user", "content": t})),
            Msg::Assistant { text, tool_calls } => {
                let mut msg =
                    json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
                if !tool_calls.is_empty() {
                    msg["tool_calls"] = tool_calls
                        .iter()
                        .map(|c| {
                            json!({"id": c.id, "type": "function", "function": {
                                "name": c.name, "arguments": c.input.to_string(),
                            }})
                        })
                        .collect();
                }
                messages.push(msg);
            }
            Msg::ToolResults(rs) => {
                for r in rs {
                    messages.push(json!({"role": "tool", "tool_call_id": r.call_id, "content": r.content}));
                }
            }
        }
    }
    json!({
        "model": model,
        "max_completion_tokens": req.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": messages,
        "tools": req.tools.iter().map(|t| json!({"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.input_schema,
        }})).collect::<Vec<_>>(),
    })
}

/// Why a model call failed, as far as the loop cares.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// 429 (or 529/503 with retry-after): wait and send the same request again.
    #[error("rate limited for {retry_after:?}: {message}")]
    RateLimited { retry_after: Duration, message: String },
    /// The proxy says this weaver's budget is spent: the loop must stop.
    #[error("budget exhausted: {0}")]
    BudgetExhausted(String),
    /// Another HTTP error answer.
    #[error("model endpoint answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    /// Connecting, sending or reading failed; worth a retry.
    #[error("model endpoint unreachable or cut off: {0}")]
    Transport(String),
    /// The stream broke its protocol (bad JSON, an `error` event, ended before its end).
    #[error("model stream invalid: {0}")]
    Protocol(String),
}

impl ModelError {
    /// Errors worth sending the same request again for (within the same iteration).
    pub fn is_transient(&self) -> bool {
        match self {
            ModelError::Transport(_) => true,
            ModelError::Http { status, .. } => *status >= 500,
            ModelError::Protocol(m) => m.contains("ended before"),
            _ => false,
        }
    }
}

/// When no `retry-after` came with a 429.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

fn error_message(body: &str) -> String {
    let v: Option<Value> = serde_json::from_str(body).ok();
    let msg = v.as_ref().and_then(|v| {
        v.pointer("/error/message").or_else(|| v.get("message")).and_then(|m| m.as_str()).map(str::to_owned)
    });
    msg.unwrap_or_else(|| crate::tools::truncate_middle(body.trim(), 500))
}

/// Classifies an HTTP error answer. A budget error is recognised by its message (the loom
/// proxy answers in the provider's own error shape and names the budget).
pub fn classify_http_error(status: u16, retry_after: Option<&str>, body: &str) -> ModelError {
    let message = error_message(body);
    let lower = message.to_ascii_lowercase();
    if (400..500).contains(&status) && lower.contains("budget") {
        return ModelError::BudgetExhausted(message);
    }
    let retry = retry_after.and_then(parse_retry_after);
    if status == 429 || (matches!(status, 503 | 529) && retry.is_some()) {
        return ModelError::RateLimited { retry_after: retry.unwrap_or(DEFAULT_RETRY_AFTER), message };
    }
    ModelError::Http { status, message }
}

/// `retry-after` in seconds (fractions allowed). HTTP dates are not used by the providers.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// Largest reply (text plus tool inputs) accepted from a model.
pub const MAX_REPLY: usize = 16 * 1024 * 1024;

/// Turns a protocol's stream of SSE events into one [`ModelReply`].
#[derive(Debug)]
pub struct StreamAccumulator {
    protocol: Protocol,
    reply: ModelReply,
    /// Anthropic: content block index → (tool call slot, partial JSON).
    /// OpenAI: tool call index → (tool call slot, arguments so far).
    partial: Vec<(usize, usize, String)>,
    done: bool,
}

impl StreamAccumulator {
    pub fn new(protocol: Protocol) -> Self {
        Self { protocol, reply: ModelReply::default(), partial: Vec::new(), done: false }
    }

    /// Feeds one SSE event. Returns text to show live (a text delta), if any.
    pub fn push(&mut self, ev: &SseEvent) -> Result<Option<String>, ModelError> {
        let size = self.reply.text.len() + self.partial.iter().map(|p| p.2.len()).sum::<usize>();
        if size > MAX_REPLY {
            return Err(ModelError::Protocol(format!("reply grew past {MAX_REPLY} bytes; refusing the rest")));
        }
        match self.protocol {
            Protocol::Anthropic => self.push_anthropic(ev),
            Protocol::OpenAi => self.push_openai(ev),
        }
    }

    fn slot(&mut self, key: usize) -> Option<&mut (usize, usize, String)> {
        self.partial.iter_mut().find(|p| p.0 == key)
    }

    fn push_anthropic(&mut self, ev: &SseEvent) -> Result<Option<String>, ModelError> {
        let v: Value = serde_json::from_str(&ev.data)
            .map_err(|e| ModelError::Protocol(format!("bad JSON in {} event: {e}", ev.event)))?;
        let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or(&ev.event);
        match kind {
            "message_start" => {
                if let Some(u) = v.pointer("/message/usage/input_tokens").and_then(Value::as_u64) {
                    self.reply.usage.input_tokens = u;
                }
            }
            "content_block_start" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let block = v.get("content_block").cloned().unwrap_or(Value::Null);
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let slot = self.reply.tool_calls.len();
                    self.reply.tool_calls.push(ToolCall {
                        id: str_field(&block, "id"),
                        name: str_field(&block, "name"),
                        input: Value::Null,
                    });
                    self.partial.push((index, slot, String::new()));
                } else if let Some(t) = block.get("text").and_then(Value::as_str)
                    && !t.is_empty()
                {
                    self.reply.text.push_str(t);
                    return Ok(Some(t.to_owned()));
                }
            }
            "content_block_delta" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let delta = v.get("delta").cloned().unwrap_or(Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let t = str_field(&delta, "text");
                        self.reply.text.push_str(&t);
                        return Ok(Some(t));
                    }
                    Some("input_json_delta") => {
                        let part = str_field(&delta, "partial_json");
                        match self.slot(index) {
                            Some(p) => p.2.push_str(&part),
                            None => {
                                return Err(ModelError::Protocol(format!(
                                    "input_json_delta for block {index}, which is no tool_use block"
                                )));
                            }
                        }
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                if let Some(pos) = self.partial.iter().position(|p| p.0 == index) {
                    let (_, slot, json) = self.partial.remove(pos);
                    self.reply.tool_calls[slot].input = parse_args(&json)?;
                }
            }
            "message_delta" => {
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.reply.stop_reason = r.to_owned();
                }
                if let Some(u) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.reply.usage.output_tokens = u;
                }
                if let Some(u) = v.pointer("/usage/input_tokens").and_then(Value::as_u64) {
                    self.reply.usage.input_tokens = u;
                }
            }
            "message_stop" => self.done = true,
            "error" => {
                return Err(ModelError::Protocol(format!(
                    "provider sent an error event: {}",
                    v.pointer("/error/message").and_then(Value::as_str).unwrap_or(&ev.data)
                )));
            }
            _ => {}
        }
        Ok(None)
    }

    fn push_openai(&mut self, ev: &SseEvent) -> Result<Option<String>, ModelError> {
        if ev.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let v: Value =
            serde_json::from_str(&ev.data).map_err(|e| ModelError::Protocol(format!("bad JSON in chunk: {e}")))?;
        if let Some(err) = v.get("error") {
            return Err(ModelError::Protocol(format!(
                "provider sent an error chunk: {}",
                err.get("message").and_then(Value::as_str).unwrap_or("?")
            )));
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.reply.usage.input_tokens = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
            self.reply.usage.output_tokens = u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0);
        }
        let mut shown = None;
        if let Some(choice) = v.pointer("/choices/0") {
            if let Some(t) = choice.pointer("/delta/content").and_then(Value::as_str)
                && !t.is_empty()
            {
                self.reply.text.push_str(t);
                shown = Some(t.to_owned());
            }
            if let Some(calls) = choice.pointer("/delta/tool_calls").and_then(Value::as_array) {
                for c in calls {
                    let index = c.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                    if self.slot(index).is_none() {
                        let slot = self.reply.tool_calls.len();
                        self.reply.tool_calls.push(ToolCall {
                            id: String::new(),
                            name: String::new(),
                            input: Value::Null,
                        });
                        self.partial.push((index, slot, String::new()));
                    }
                    let p = self.slot(index).map(|p| p.1).unwrap_or(0);
                    if let Some(id) = c.get("id").and_then(Value::as_str) {
                        self.reply.tool_calls[p].id = id.to_owned();
                    }
                    if let Some(n) = c.pointer("/function/name").and_then(Value::as_str) {
                        self.reply.tool_calls[p].name.push_str(n);
                    }
                    if let Some(a) = c.pointer("/function/arguments").and_then(Value::as_str)
                        && let Some(s) = self.slot(index)
                    {
                        s.2.push_str(a);
                    }
                }
            }
            if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
                self.reply.stop_reason = r.to_owned();
            }
        }
        Ok(shown)
    }

    /// The reply, once the stream ended. A stream cut before its end marker is an error.
    pub fn finish(mut self) -> Result<ModelReply, ModelError> {
        if !self.done {
            return Err(ModelError::Protocol("stream ended before its end marker (message_stop / [DONE])".into()));
        }
        for (_, slot, json) in std::mem::take(&mut self.partial) {
            if self.reply.tool_calls[slot].input.is_null() {
                self.reply.tool_calls[slot].input = parse_args(&json)?;
            }
        }
        for (i, c) in self.reply.tool_calls.iter_mut().enumerate() {
            if c.id.is_empty() {
                c.id = format!("call_{i}");
            }
        }
        Ok(self.reply)
    }
}

fn str_field(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn parse_args(json: &str) -> Result<Value, ModelError> {
    if json.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(json).map_err(|e| ModelError::Protocol(format!("tool input is not JSON ({e}): {json}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use loom_core::sse::SseParser;

    fn feed(protocol: Protocol, wire: &str) -> Result<ModelReply, ModelError> {
        let mut p = SseParser::new();
        let mut acc = StreamAccumulator::new(protocol);
        for ev in p.feed(wire.as_bytes()).unwrap() {
            acc.push(&ev)?;
        }
        acc.finish()
    }

    #[test]
    fn model_spec_picks_the_protocol() {
        let m = ModelSpec::parse("anthropic/claude-x").unwrap();
        assert_eq!(m.protocol, Protocol::Anthropic);
        assert_eq!(m.wire_name(false), "anthropic/claude-x");
        assert_eq!(m.wire_name(true), "claude-x");
        assert_eq!(ModelSpec::parse("openai/gpt-5").unwrap().protocol, Protocol::OpenAi);
        assert_eq!(ModelSpec::parse("groq/llama/3").unwrap().model, "llama/3");
        assert!(ModelSpec::parse("gpt-5").is_err());
        assert!(ModelSpec::parse("/x").is_err());
    }

    #[test]
    fn anthropic_stream_with_text_and_tool_use() {
        let wire = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me \"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"look.\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"read_file\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"pa\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"th\\\": \\\"a.sh\\\"}\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":30}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let r = feed(Protocol::Anthropic, wire).unwrap();
        assert_eq!(r.text, "Let me look.");
        assert_eq!(
            r.tool_calls,
            vec![ToolCall { id: "toolu_1".into(), name: "read_file".into(), input: json!({"path": "a.sh"}) }]
        );
        assert_eq!(r.stop_reason, "tool_use");
        assert_eq!(r.usage, Usage { input_tokens: 12, output_tokens: 30 });
        // Cut before message_stop.
        let cut = &wire[..wire.find("event: message_stop").unwrap()];
        assert!(matches!(feed(Protocol::Anthropic, cut), Err(e) if e.is_transient()));
    }

    #[test]
    fn openai_stream_with_tool_calls_deltas() {
        let wire = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Editing.\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"edit_file\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"path\\\":\\\"x\\\",\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"function\":{\"name\":\"bash\",\"arguments\":\"{\\\"command\\\":\\\"ls\\\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"old_str\\\":\\\"a\\\",\\\"new_str\\\":\\\"b\\\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":9}}\n\n",
            "data: [DONE]\n\n",
        );
        let r = feed(Protocol::OpenAi, wire).unwrap();
        assert_eq!(r.text, "Editing.");
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(r.tool_calls[0].name, "edit_file");
        assert_eq!(r.tool_calls[0].input, json!({"path": "x", "old_str": "a", "new_str": "b"}));
        assert_eq!(r.tool_calls[1].id, "call_b");
        assert_eq!(r.tool_calls[1].input, json!({"command": "ls"}));
        assert_eq!(r.stop_reason, "tool_calls");
        assert_eq!(r.usage, Usage { input_tokens: 7, output_tokens: 9 });
        assert!(feed(Protocol::OpenAi, &wire[..wire.find("data: [DONE]").unwrap()]).is_err());
        assert!(matches!(feed(Protocol::OpenAi, "data: {not json\n\n"), Err(ModelError::Protocol(_))));
    }

    #[test]
    fn request_bodies_carry_tool_round_trips() {
        let req = ModelRequest {
            system: "sys".into(),
            messages: vec![
                Msg::User("fix it".into()),
                Msg::Assistant {
                    text: "".into(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "bash".into(),
                        input: json!({"command": "ls"}),
                    }],
                },
                Msg::ToolResults(vec![ToolResult { call_id: "c1".into(), content: "a.sh".into(), is_error: false }]),
            ],
            tools: vec![ToolSpec { name: "bash", description: "d", input_schema: json!({"type": "object"}) }],
            max_tokens: 100,
        };
        let spec = |s: &str| ModelSpec::parse(s).unwrap();
        let a = request_body(&spec("anthropic/m"), "anthropic/m", &req);
        assert_eq!(a["system"], "sys");
        assert_eq!(a["stream"], true);
        assert_eq!(a["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(a["messages"][2]["content"][0]["tool_use_id"], "c1");
        assert_eq!(a["tools"][0]["input_schema"]["type"], "object");
        let o = request_body(&spec("openai/m"), "openai/m", &req);
        assert_eq!(o["max_completion_tokens"], 100);
        let g = request_body(&spec("groq/llama"), "groq/llama", &req);
        assert_eq!(g["max_tokens"], 100);
        assert!(g.get("max_completion_tokens").is_none());
        assert_eq!(o["messages"][0]["role"], "system");
        assert_eq!(o["messages"][2]["tool_calls"][0]["function"]["arguments"], "{\"command\":\"ls\"}");
        assert_eq!(o["messages"][3]["role"], "tool");
        assert_eq!(o["messages"][3]["tool_call_id"], "c1");
        assert_eq!(o["tools"][0]["function"]["name"], "bash");
    }

    #[test]
    fn error_answers_are_classified() {
        let e = classify_http_error(
            429,
            Some("120"),
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        );
        assert_eq!(e, ModelError::RateLimited { retry_after: Duration::from_secs(120), message: "slow down".into() });
        let e = classify_http_error(429, None, "{}");
        assert!(matches!(e, ModelError::RateLimited { retry_after, .. } if retry_after == DEFAULT_RETRY_AFTER));
        let e = classify_http_error(
            402,
            None,
            r#"{"error":{"message":"USD budget of weaver w1 exhausted; raise it with ..."}}"#,
        );
        assert!(matches!(e, ModelError::BudgetExhausted(m) if m.contains("USD budget")));
        let e = classify_http_error(429, Some("5"), r#"{"error":{"message":"token budget spent"}}"#);
        assert!(matches!(e, ModelError::BudgetExhausted(_)));
        let e = classify_http_error(500, None, "oops");
        assert!(e.is_transient());
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
    }
}
