//! A fake of the Anthropic and OpenAI HTTP APIs on 127.0.0.1, for tests and the benchmark:
//! the real providers are outside this machine. It speaks their wire formats (Anthropic
//! Messages SSE: message_start, content_block_start, ping, content_block_delta,
//! content_block_stop, message_delta, message_stop; OpenAI chat.completion.chunk `data:` lines
//! ending in `data: [DONE]`), answers from a per-test script, records every request it saw,
//! and misbehaves on demand: error statuses with retry-after, slow headers, pauses mid-stream,
//! streams cut mid-way, garbage bodies.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// One step of a scripted response body.
#[derive(Clone)]
pub enum Part {
    Bytes(Bytes),
    Sleep(Duration),
    /// Waits until the test calls `notify_one` on it.
    WaitFor(Arc<Notify>),
    /// Sent only if the request asked for `stream_options.include_usage` (OpenAI semantics).
    IfIncludeUsage(Bytes),
    /// Breaks the connection: the chunked body never ends properly.
    Cut,
}

#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub header_delay: Duration,
    pub parts: Vec<Part>,
}

pub struct Usage4 {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

fn sse_event(name: &str, data: serde_json::Value) -> Part {
    Part::Bytes(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
}

fn data_line(data: serde_json::Value) -> Part {
    Part::Bytes(Bytes::from(format!("data: {data}\n\n")))
}

impl Reply {
    pub fn new(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            header_delay: Duration::ZERO,
            parts: vec![Part::Bytes(body.into())],
        }
    }

    /// Anthropic's error JSON with `status`.
    pub fn anthropic_error(status: u16, ty: &str, message: &str) -> Self {
        Self::new(
            status,
            "application/json",
            serde_json::json!({"type":"error","error":{"type":ty,"message":message}}).to_string(),
        )
    }

    pub fn openai_error(status: u16, message: &str) -> Self {
        Self::new(
            status,
            "application/json",
            serde_json::json!({"error":{"message":message,"type":"server_error","param":null,"code":null}}).to_string(),
        )
    }

    pub fn garbage() -> Self {
        Self::new(200, "application/json", &b"<html>\x00\xff upstream proxy error"[..])
    }

    /// The full Anthropic Messages event sequence, one event per chunk.
    pub fn anthropic_stream(model: &str, texts: &[&str], u: Usage4) -> Self {
        let mut parts = vec![
            sse_event(
                "message_start",
                serde_json::json!({"type":"message_start","message":{"id":"msg_fake01","type":"message","role":"assistant","content":[],"model":model,"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":u.input,"cache_creation_input_tokens":u.cache_write,"cache_read_input_tokens":u.cache_read,"output_tokens":1}}}),
            ),
            sse_event(
                "content_block_start",
                serde_json::json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            ),
            sse_event("ping", serde_json::json!({"type":"ping"})),
        ];
        for t in texts {
            parts.push(sse_event(
                "content_block_delta",
                serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":t}}),
            ));
        }
        parts.push(sse_event("content_block_stop", serde_json::json!({"type":"content_block_stop","index":0})));
        parts.push(sse_event(
            "message_delta",
            serde_json::json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":u.output}}),
        ));
        parts.push(sse_event("message_stop", serde_json::json!({"type":"message_stop"})));
        Self {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/event-stream; charset=utf-8".into()),
                ("cache-control".into(), "no-cache".into()),
            ],
            header_delay: Duration::ZERO,
            parts,
        }
    }

    pub fn anthropic_json(model: &str, text: &str, input: u64, output: u64) -> Self {
        Self::new(
            200,
            "application/json",
            serde_json::json!({"id":"msg_fake02","type":"message","role":"assistant","model":model,"content":[{"type":"text","text":text}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":input,"output_tokens":output,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}).to_string(),
        )
    }

    /// OpenAI chat chunks; the usage chunk only if the request asked for it, then `[DONE]`.
    pub fn openai_stream(model: &str, texts: &[&str], prompt: u64, completion: u64) -> Self {
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| serde_json::json!({"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,"model":model,"system_fingerprint":null,"choices":[{"index":0,"delta":delta,"logprobs":null,"finish_reason":finish}]});
        let mut parts =
            vec![data_line(chunk(serde_json::json!({"role":"assistant","content":""}), serde_json::Value::Null))];
        for t in texts {
            parts.push(data_line(chunk(serde_json::json!({"content":t}), serde_json::Value::Null)));
        }
        parts.push(data_line(chunk(serde_json::json!({}), "stop".into())));
        let usage = serde_json::json!({"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,"model":model,"choices":[],"usage":{"prompt_tokens":prompt,"completion_tokens":completion,"total_tokens":prompt+completion}});
        parts.push(Part::IfIncludeUsage(Bytes::from(format!("data: {usage}\n\n"))));
        parts.push(Part::Bytes(Bytes::from_static(b"data: [DONE]\n\n")));
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            header_delay: Duration::ZERO,
            parts,
        }
    }

    pub fn openai_json(model: &str, text: &str, prompt: u64, completion: u64) -> Self {
        Self::new(
            200,
            "application/json",
            serde_json::json!({"id":"chatcmpl-fake","object":"chat.completion","created":1700000000,"model":model,"choices":[{"index":0,"message":{"role":"assistant","content":text},"finish_reason":"stop"}],"usage":{"prompt_tokens":prompt,"completion_tokens":completion,"total_tokens":prompt+completion}}).to_string(),
        )
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn delay_headers(mut self, d: Duration) -> Self {
        self.header_delay = d;
        self
    }

    /// Inserts a step before body part `i`.
    pub fn insert(mut self, i: usize, p: Part) -> Self {
        self.parts.insert(i, p);
        self
    }

    /// Keeps the first `n` parts, then breaks the connection.
    pub fn cut_after(mut self, n: usize) -> Self {
        self.parts.truncate(n);
        // Let what was sent leave the socket before the connection breaks.
        self.parts.push(Part::Sleep(Duration::from_millis(50)));
        self.parts.push(Part::Cut);
        self
    }
}

/// A request the fake saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct State {
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    default_stream: Mutex<Option<Reply>>,
    seen: Mutex<Vec<Seen>>,
    record: std::sync::atomic::AtomicBool,
}

pub struct FakeProvider {
    pub addr: SocketAddr,
    scheme: &'static str,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    /// The same fake behind TLS with the given certificate chain and PKCS#8 key (PEM).
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<_> =
            rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Self::start_inner(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        state.record.store(true, std::sync::atomic::Ordering::Relaxed);
        let st = state.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(serve(st, req).await) }
                    });
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                        }
                        None => {
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Self { addr, scheme, state, task }
    }

    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Queues replies, served in order; after them the default reply.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn set_default(&self, r: Reply) {
        *self.state.default.lock().unwrap() = Some(r);
    }

    /// The default reply to requests whose JSON body has `"stream": true`.
    pub fn set_default_stream(&self, r: Reply) {
        *self.state.default_stream.lock().unwrap() = Some(r);
    }

    /// Stops keeping requests (for the benchmark).
    pub fn stop_recording(&self) {
        self.state.record.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn serve(st: Arc<State>, req: Request<Incoming>) -> Response<FakeBody> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let json = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let flag = |ptr: &str| json.as_ref().and_then(|v| v.pointer(ptr)).and_then(|b| b.as_bool()).unwrap_or(false);
    let include_usage = flag("/stream_options/include_usage");
    let stream = flag("/stream");
    if st.record.load(std::sync::atomic::Ordering::Relaxed) {
        st.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            headers: parts.headers.clone(),
            body,
        });
    }
    let reply = st
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| stream.then(|| st.default_stream.lock().unwrap().clone()).flatten())
        .or_else(|| st.default.lock().unwrap().clone())
        .unwrap_or_else(|| Reply::openai_error(500, "fake provider has no scripted reply"));
    if !reply.header_delay.is_zero() {
        tokio::time::sleep(reply.header_delay).await;
    }
    let mut resp = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (k, v) in &reply.headers {
        resp = resp.header(k, v);
    }
    // Streams go out chunked, one chunk per event, as the real APIs send them.
    let is_stream = reply.headers.iter().any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream"));
    let simple = !is_stream && reply.parts.iter().all(|p| matches!(p, Part::Bytes(_)));
    let body = if simple {
        let mut all = Vec::new();
        for p in &reply.parts {
            if let Part::Bytes(b) = p {
                all.extend_from_slice(b);
            }
        }
        FakeBody::Full(Some(Bytes::from(all)))
    } else {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            for p in reply.parts {
                let item = match p {
                    Part::Bytes(b) => Ok(b),
                    Part::IfIncludeUsage(b) if include_usage => Ok(b),
                    Part::IfIncludeUsage(_) => continue,
                    Part::Sleep(d) => {
                        tokio::time::sleep(d).await;
                        continue;
                    }
                    Part::WaitFor(n) => {
                        n.notified().await;
                        continue;
                    }
                    Part::Cut => Err(std::io::Error::other("fake provider cut the stream")),
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        FakeBody::Chan(rx)
    };
    resp.body(body).unwrap()
}

pub enum FakeBody {
    Full(Option<Bytes>),
    Chan(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl http_body::Body for FakeBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            FakeBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            FakeBody::Chan(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            FakeBody::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            FakeBody::Full(None) => http_body::SizeHint::with_exact(0),
            FakeBody::Chan(_) => http_body::SizeHint::default(),
        }
    }
}
