//! One streaming model call over HTTP: request body out, SSE in, one [`ModelReply`] back.

use std::time::Duration;

use crate::http::{Tls, join_url, post_json_tls};
use crate::llm::{
    ModelError, ModelReply, ModelRequest, ModelSpec, Protocol, StreamAccumulator, classify_http_error, request_body,
};
use loom_core::sse::SseParser;

/// Where and how to reach the model.
#[derive(Clone)]
pub struct ModelClient {
    pub spec: ModelSpec,
    /// Full URL of the messages / chat completions endpoint.
    pub url: String,
    api_key: String,
    /// The `model` field sent.
    pub wire_model: String,
    /// Longest silence of the stream before it counts as cut.
    pub idle_timeout: Duration,
    /// For `https://` base URLs (feature `tls`).
    pub tls: Option<Tls>,
}

impl std::fmt::Debug for ModelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a per-weaver token, but it is still a credential: never printed.
        f.debug_struct("ModelClient")
            .field("url", &self.url)
            .field("wire_model", &self.wire_model)
            .finish_non_exhaustive()
    }
}

/// The endpoint URL for a protocol given its base URL (with or without a trailing `/v1`).
pub fn endpoint(protocol: Protocol, base: &str) -> String {
    let base = base.trim_end_matches('/');
    let has_v1 = base.ends_with("/v1");
    match (protocol, has_v1) {
        (Protocol::Anthropic, true) => join_url(base, "messages"),
        (Protocol::Anthropic, false) => join_url(base, "v1/messages"),
        (Protocol::OpenAi, true) => join_url(base, "chat/completions"),
        (Protocol::OpenAi, false) => join_url(base, "v1/chat/completions"),
    }
}

impl ModelClient {
    pub fn new(spec: ModelSpec, base_url: &str, api_key: String, bare_model: bool) -> ModelClient {
        ModelClient {
            url: endpoint(spec.protocol, base_url),
            wire_model: spec.wire_name(bare_model),
            spec,
            api_key,
            idle_timeout: Duration::from_secs(300),
            tls: None,
        }
    }

    /// Sends `req` and streams the reply; `on_text` sees text as it arrives.
    pub async fn call(&self, req: &ModelRequest, mut on_text: impl FnMut(&str)) -> Result<ModelReply, ModelError> {
        let body = request_body(&self.spec, &self.wire_model, req).to_string();
        let bearer = format!("Bearer {}", self.api_key);
        let headers: Vec<(&str, &str)> = match self.spec.protocol {
            Protocol::Anthropic => vec![
                ("x-api-key", self.api_key.as_str()),
                ("anthropic-version", "2023-06-01"),
                ("accept", "text/event-stream"),
            ],
            Protocol::OpenAi => vec![("authorization", bearer.as_str()), ("accept", "text/event-stream")],
        };
        let mut resp = post_json_tls(&self.url, &headers, body.into_bytes(), self.idle_timeout, self.tls.as_ref())
            .await
            .map_err(|e| ModelError::Transport(e.to_string()))?;
        if resp.status != 200 {
            let retry = resp.header("retry-after").map(str::to_owned);
            let status = resp.status;
            let text = resp.text(64 * 1024).await.map_err(|e| ModelError::Transport(e.to_string()))?;
            return Err(classify_http_error(status, retry.as_deref(), &text));
        }
        let mut parser = SseParser::new();
        let mut acc = StreamAccumulator::new(self.spec.protocol);
        while let Some(chunk) = resp.chunk().await.map_err(|e| ModelError::Transport(e.to_string()))? {
            let events = parser.feed(&chunk).map_err(|e| ModelError::Protocol(e.to_string()))?;
            for ev in events {
                if let Some(t) = acc.push(&ev)? {
                    on_text(&t);
                }
            }
        }
        acc.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(endpoint(Protocol::Anthropic, "http://p:1"), "http://p:1/v1/messages");
        assert_eq!(endpoint(Protocol::Anthropic, "http://p:1/v1/"), "http://p:1/v1/messages");
        assert_eq!(endpoint(Protocol::OpenAi, "http://p:1/v1"), "http://p:1/v1/chat/completions");
        assert_eq!(endpoint(Protocol::OpenAi, "http://p:1"), "http://p:1/v1/chat/completions");
    }

    #[test]
    fn debug_never_prints_the_key() {
        let c = ModelClient::new(ModelSpec::parse("openai/x").unwrap(), "http://p", "sekrit-token".into(), false);
        assert!(!format!("{c:?}").contains("sekrit"));
    }
}
