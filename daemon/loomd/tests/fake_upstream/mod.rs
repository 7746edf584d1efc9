//! A fake Anthropic + OpenAI upstream on 127.0.0.1 (the real providers are outside this
//! machine): `/messages` answers with Anthropic's real SSE sequence, `/chat/completions` with
//! OpenAI's `data:` chunks and `[DONE]`, `/models` with a models list (no usage), and any other
//! path with a 200 JSON object, as a provider would for its files or batches endpoints. It
//! records every request it saw (method, path, auth header), so a test can tell what reached it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

pub struct FakeUpstream {
    pub port: u16,
    pub seen_auth: Arc<Mutex<Vec<String>>>,
    /// `METHOD PATH` of every request, in order.
    pub seen: Arc<Mutex<Vec<String>>>,
}

pub const ANTHROPIC_SSE: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-test\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hello from anthropic\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

pub const OPENAI_SSE: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-test\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hello from openai\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-test\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-test\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":5,\"total_tokens\":14}}\n\n\
data: [DONE]\n\n";

pub const MODELS_JSON: &str = "{\"object\":\"list\",\"data\":[{\"id\":\"gpt-test\",\"object\":\"model\"}]}";

/// What a provider answers on an account endpoint (a file, a batch, a job).
pub const OBJECT_JSON: &str = "{\"id\":\"file-abc123\",\"object\":\"file\",\"status\":\"processed\"}";

impl FakeUpstream {
    pub fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen_auth = Arc::new(Mutex::new(vec![]));
        let seen = Arc::new(Mutex::new(vec![]));
        let (auth, paths) = (seen_auth.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (auth, paths) = (auth.clone(), paths.clone());
                std::thread::spawn(move || serve_one(stream, auth, paths));
            }
        });
        FakeUpstream { port, seen_auth, seen }
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_one(stream: std::net::TcpStream, auth: Arc<Mutex<Vec<String>>>, paths: Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut words = request_line.split(' ');
        let method = words.next().unwrap_or("").to_string();
        let path = words.next().unwrap_or("").to_string();
        paths.lock().unwrap().push(format!("{method} {path}"));
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if lower.starts_with("x-api-key:") || lower.starts_with("authorization:") {
                auth.lock().unwrap().push(l.to_string());
            }
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (content_type, reply) = if path.contains("/messages") {
            ("text/event-stream", ANTHROPIC_SSE)
        } else if path.contains("/chat/completions") {
            ("text/event-stream", OPENAI_SSE)
        } else if path.contains("/models") {
            ("application/json", MODELS_JSON)
        } else {
            ("application/json", OBJECT_JSON)
        };
        let mut out = stream.try_clone().unwrap();
        let head =
            format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n", reply.len());
        if out.write_all(head.as_bytes()).and_then(|()| out.write_all(reply.as_bytes())).is_err() {
            return;
        }
    }
}
