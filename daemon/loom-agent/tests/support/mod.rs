//! Test support: a scripted fake of the Anthropic Messages and OpenAI Chat Completions APIs
//! (the model providers are outside this machine), speaking their real SSE wire formats over
//! chunked HTTP/1.1 on 127.0.0.1; and a stand-in for loomd's event intake that feeds the real
//! loom-threads store.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake answers to one model call.
#[derive(Debug, Clone)]
pub enum FakeReply {
    /// A streamed assistant turn: text, then tool calls `(name, input)`.
    Turn { text: String, tools: Vec<(String, Value)> },
    /// 429 with `retry-after` (seconds).
    RateLimited { retry_after: String },
    /// The loom proxy's answer when a weaver's budget is spent (provider error shape).
    BudgetSpent,
    /// Any status with an error body.
    Status(u16, String),
    /// A stream cut before its end marker.
    CutStream,
}

pub fn turn(text: &str, tools: &[(&str, Value)]) -> FakeReply {
    FakeReply::Turn { text: text.into(), tools: tools.iter().map(|(n, v)| ((*n).into(), v.clone())).collect() }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

type Responder = Arc<dyn Fn(usize, &Recorded) -> FakeReply + Send + Sync>;

/// The fake model provider.
pub struct FakeModelApi {
    pub base_url: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeModelApi {
    /// Starts the fake; `respond(n, request)` decides the answer to the n-th call (0-based).
    pub async fn start(respond: impl Fn(usize, &Recorded) -> FakeReply + Send + Sync + 'static) -> FakeModelApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let respond: Responder = Arc::new(respond);
        let reqs = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else { return };
                let (reqs, respond) = (reqs.clone(), respond.clone());
                tokio::spawn(async move {
                    let _ = serve_model(s, reqs, respond).await;
                });
            }
        });
        FakeModelApi { base_url, requests }
    }

    /// A fake that answers with `script` in order, then with `after` forever.
    pub async fn scripted(script: Vec<FakeReply>, after: FakeReply) -> FakeModelApi {
        Self::start(move |n, _| script.get(n).cloned().unwrap_or_else(|| after.clone())).await
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 request (head + content-length body).
pub async fn read_request(
    s: &mut TcpStream,
) -> std::io::Result<Option<(String, String, Vec<(String, String)>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))).collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Ok(Some((method, path, headers, body)))
}

async fn plain(s: &mut TcpStream, status: u16, extra: &str, body: &str) -> std::io::Result<()> {
    let resp = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await
}

async fn chunk(s: &mut TcpStream, data: &str) -> std::io::Result<()> {
    s.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await?;
    s.flush().await
}

fn split3(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    let (a, b) = (n / 3, 2 * n / 3);
    vec![chars[..a].iter().collect(), chars[a..b].iter().collect(), chars[b..].iter().collect()]
}

fn anthropic_events(text: &str, tools: &[(String, Value)], n: usize) -> Vec<String> {
    let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    let mut out = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": format!("msg_{n}"), "type": "message", "role": "assistant", "content": [], "model": "fake", "stop_reason": null, "usage": {"input_tokens": 100 + n, "output_tokens": 1}}}),
    )];
    out.push(ev("ping", json!({"type": "ping"})));
    let mut idx = 0;
    if !text.is_empty() {
        out.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": idx, "content_block": {"type": "text", "text": ""}}),
        ));
        for part in split3(text) {
            out.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": idx, "delta": {"type": "text_delta", "text": part}}),
            ));
        }
        out.push(ev("content_block_stop", json!({"type": "content_block_stop", "index": idx})));
        idx += 1;
    }
    for (i, (name, input)) in tools.iter().enumerate() {
        out.push(ev("content_block_start", json!({"type": "content_block_start", "index": idx, "content_block": {"type": "tool_use", "id": format!("toolu_{n}_{i}"), "name": name, "input": {}}})));
        for part in split3(&input.to_string()) {
            out.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": idx, "delta": {"type": "input_json_delta", "partial_json": part}})));
        }
        out.push(ev("content_block_stop", json!({"type": "content_block_stop", "index": idx})));
        idx += 1;
    }
    let stop = if tools.is_empty() { "end_turn" } else { "tool_use" };
    out.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 20 + n}})));
    out.push(ev("message_stop", json!({"type": "message_stop"})));
    out
}

fn openai_events(text: &str, tools: &[(String, Value)], n: usize) -> Vec<String> {
    let ch = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": format!("chatcmpl-{n}"), "object": "chat.completion.chunk", "model": "fake", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut out = vec![ch(json!({"role": "assistant", "content": ""}), Value::Null)];
    for part in split3(text) {
        if !part.is_empty() {
            out.push(ch(json!({"content": part}), Value::Null));
        }
    }
    for (i, (name, input)) in tools.iter().enumerate() {
        out.push(ch(json!({"tool_calls": [{"index": i, "id": format!("call_{n}_{i}"), "type": "function", "function": {"name": name, "arguments": ""}}]}), Value::Null));
        for part in split3(&input.to_string()) {
            out.push(ch(json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}), Value::Null));
        }
    }
    let finish = if tools.is_empty() { "stop" } else { "tool_calls" };
    out.push(ch(json!({}), json!(finish)));
    out.push(format!("data: {}\n\n", json!({"id": format!("chatcmpl-{n}"), "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 100 + n, "completion_tokens": 20 + n, "total_tokens": 120 + 2 * n}})));
    out.push("data: [DONE]\n\n".into());
    out
}

async fn serve_model(mut s: TcpStream, reqs: Arc<Mutex<Vec<Recorded>>>, respond: Responder) -> std::io::Result<()> {
    let Some((_method, path, headers, body)) = read_request(&mut s).await? else { return Ok(()) };
    let rec = Recorded { path: path.clone(), headers, body: serde_json::from_slice(&body).unwrap_or(Value::Null) };
    let n = {
        let mut r = reqs.lock().unwrap();
        r.push(rec.clone());
        r.len() - 1
    };
    let anthropic = path.ends_with("/v1/messages");
    let reply = respond(n, &rec);
    match reply {
        FakeReply::RateLimited { retry_after } => {
            let body = if anthropic {
                json!({"type": "error", "error": {"type": "rate_limit_error", "message": "usage limit reached"}})
            } else {
                json!({"error": {"message": "usage limit reached", "type": "rate_limit_exceeded"}})
            };
            plain(&mut s, 429, &format!("retry-after: {retry_after}\r\n"), &body.to_string()).await
        }
        FakeReply::BudgetSpent => {
            let msg = "loom: USD budget of weaver w1 is spent ($5.00 of $5.00); raise it with loom weaver update --budget-usd";
            let body = if anthropic {
                json!({"type": "error", "error": {"type": "rate_limit_error", "message": msg}})
            } else {
                json!({"error": {"message": msg, "type": "insufficient_quota"}})
            };
            plain(&mut s, 429, "", &body.to_string()).await
        }
        FakeReply::Status(code, msg) => {
            plain(&mut s, code, "", &json!({"error": {"type": "invalid_request_error", "message": msg}}).to_string())
                .await
        }
        reply => {
            let (text, tools, cut) = match reply {
                FakeReply::Turn { text, tools } => (text, tools, false),
                _ => ("partial".to_owned(), vec![], true),
            };
            let events = if anthropic { anthropic_events(&text, &tools, n) } else { openai_events(&text, &tools, n) };
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").await?;
            let keep = if cut { events.len() / 2 } else { events.len() };
            for e in &events[..keep] {
                chunk(&mut s, e).await?;
            }
            if !cut {
                s.write_all(b"0\r\n\r\n").await?;
            }
            s.flush().await?;
            // A cut stream: the connection just closes without the last chunk.
            Ok(())
        }
    }
}

/// A stand-in for loomd's event intake: `POST /loom/v1/threads/events` with a bearer token,
/// stored with the real `loom_threads::append_events` into a real SQLite file.
pub struct FakeLoomd {
    pub base_url: String,
    pub db: std::path::PathBuf,
    pub posts: Arc<Mutex<usize>>,
}

impl FakeLoomd {
    pub async fn start(db: std::path::PathBuf, token: &'static str, weaver: &'static str) -> FakeLoomd {
        Self::start_on("127.0.0.1:0", db, token, weaver).await
    }

    pub async fn start_on(addr: &str, db: std::path::PathBuf, token: &'static str, weaver: &'static str) -> FakeLoomd {
        let listener = TcpListener::bind(addr).await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        loom_threads::configure_connection(&conn).unwrap();
        loom_threads::migrate(&mut conn).unwrap();
        let conn = Arc::new(Mutex::new(conn));
        let posts: Arc<Mutex<usize>> = Arc::default();
        let p = posts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let (conn, p) = (conn.clone(), p.clone());
                tokio::spawn(async move {
                    let Ok(Some((method, path, headers, body))) = read_request(&mut s).await else { return };
                    let auth = headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.clone());
                    if method != "POST" || path != loom_threads::EVENTS_PATH {
                        let _ = plain(&mut s, 404, "", "{}").await;
                        return;
                    }
                    if auth.as_deref() != Some(&format!("Bearer {token}")) {
                        let _ = plain(&mut s, 401, "", "{\"error\":\"bad token\"}").await;
                        return;
                    }
                    let batch: loom_threads::EventBatch = match serde_json::from_slice(&body) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = plain(&mut s, 400, "", &json!({"error": e.to_string()}).to_string()).await;
                            return;
                        }
                    };
                    let r = loom_threads::append_events(&mut conn.lock().unwrap(), weaver, &batch.events);
                    *p.lock().unwrap() += 1;
                    match r {
                        Ok(resp) => {
                            let _ = plain(&mut s, 200, "", &serde_json::to_string(&resp).unwrap()).await;
                        }
                        Err(e) => {
                            let _ = plain(&mut s, 400, "", &json!({"error": e.to_string()}).to_string()).await;
                        }
                    }
                });
            }
        });
        FakeLoomd { base_url, db, posts }
    }

    pub fn conn(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.db).unwrap()
    }
}

/// A git repository with a shell "library" whose test fails: `add` subtracts.
pub fn failing_repo(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("calc.sh"), "# calc: tiny arithmetic helpers\nadd() {\n  echo $(( $1 - $2 ))\n}\n")
        .unwrap();
    std::fs::write(
        dir.join("test.sh"),
        "#!/bin/sh\n. ./calc.sh\ngot=$(add 2 3)\nif [ \"$got\" != 5 ]; then echo \"FAIL: add 2 3 gave $got, want 5\"; exit 1; fi\necho PASS\n",
    )
    .unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "initial"]);
}

pub fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn short(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
