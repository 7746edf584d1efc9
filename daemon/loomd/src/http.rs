//! The HTTP/1.1 adapter: routes `/v1/...` on the Unix socket to [`Daemon::handle`], with the
//! client's identity from `SO_PEERCRED` and `SO_PEERGROUPS`, bounded bodies and times, streamed
//! logs, streamed uploads and an upgraded stream for exec.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request as HttpRequest, Response as HttpResponse, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use loom_core::access::Caller;
use loom_core::api::{
    CreateWeaver, ErrorBody, ErrorCode, ErrorDetail, ExecRequest, MAX_BODY_BYTES, MAX_UPLOAD_BYTES, UPLOAD_SEND_SECS,
    UploadKind,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::{UnixListener, UnixStream};

use crate::daemon::{ApiError, Daemon, Request, Response};
use crate::exec;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a non-streaming request may run: a create clones a repository.
const CREATE_TIMEOUT: Duration = Duration::from_secs(900);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn serve(daemon: Arc<Daemon>, listener: UnixListener, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let daemon = daemon.clone();
                    tokio::spawn(async move { serve_connection(daemon, stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// The client as it was when it connected: uid, gid and groups are the kernel's record of
/// that moment (`SO_PEERCRED`, `SO_PEERGROUPS`), not what its pid shows later.
fn caller_of(stream: &UnixStream) -> Option<Caller> {
    use std::os::fd::AsFd;
    let cred = stream.peer_cred().ok()?;
    let pid = cred.pid().unwrap_or(0);
    let mut gids = match crate::procfs::peer_groups(stream.as_fd()) {
        Ok(Some(gids)) => gids,
        // Kernels before 4.13 lack SO_PEERGROUPS: the pid's groups now are all there is.
        Ok(None) => crate::procfs::groups_of(pid).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, pid, "reading a client's groups failed");
            return None;
        }
    };
    gids.push(cred.gid());
    Some(Caller { uid: cred.uid(), pid, gids })
}

async fn serve_connection(daemon: Arc<Daemon>, stream: UnixStream) {
    let Some(caller) = caller_of(&stream) else {
        tracing::warn!("a client without peer credentials was refused");
        return;
    };
    let service = hyper::service::service_fn(move |req| {
        let daemon = daemon.clone();
        let caller = caller.clone();
        async move { Ok::<_, Infallible>(route(daemon, caller, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> HttpResponse<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    HttpResponse::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed())
        .unwrap_or_default()
}

pub fn error_response(e: &ApiError) -> HttpResponse<Body> {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &ErrorBody { error: ErrorDetail { code: e.code, message: e.message.clone() } })
}

/// Reads a JSON body within the size and time limits, mapping every failure to a clear 4xx.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: HttpRequest<Incoming>,
) -> Result<(T, hyper::http::request::Parts), ApiError> {
    let too_large = || {
        ApiError::new(ErrorCode::PayloadTooLarge, format!("the request body is over the {MAX_BODY_BYTES}-byte limit"))
    };
    if let Some(len) =
        req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > MAX_BODY_BYTES as u64
    {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect())
        .await
        .map_err(|_| {
            ApiError::new(ErrorCode::Timeout, format!("the request body did not arrive within {BODY_TIMEOUT:?}"))
        })?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::new(ErrorCode::BadRequest, format!("reading the request body failed: {e}"))
            }
        })?;
    let bytes = collected.to_bytes();
    let text = if bytes.is_empty() { &b"{}"[..] } else { &bytes[..] };
    let value = serde_json::from_slice(text)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))?;
    Ok((value, parts))
}

/// A query parameter, decoded (`%XX` and `+`) as the CLI encodes it; the first one wins.
fn query_value(req: &HttpRequest<Incoming>, name: &str) -> Option<String> {
    query_param(req.uri().query()?, name)
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// `?name`, `?name=true` or `?name=1`.
fn query_flag(req: &HttpRequest<Incoming>, name: &str) -> bool {
    query_value(req, name).is_some_and(|v| is_set(&v))
}

fn is_set(flag: &str) -> bool {
    matches!(flag, "" | "true" | "1")
}

/// A path segment with its `%XX` escapes decoded (an id or name the CLI escaped).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedPeer {
    name: String,
}

async fn route(daemon: Arc<Daemon>, caller: Caller, req: HttpRequest<Incoming>) -> HttpResponse<Body> {
    match route_inner(daemon, caller, req).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

async fn route_inner(
    daemon: Arc<Daemon>,
    caller: Caller,
    req: HttpRequest<Incoming>,
) -> Result<HttpResponse<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method().clone();
    let not_found = || ApiError::new(ErrorCode::NotFound, format!("no endpoint {method} {path}: see `loom --help`"));
    let (request, timeout) = match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "status"]) => (Request::Status, REQUEST_TIMEOUT),
        (&Method::GET, ["v1", "weavers"]) => (Request::ListWeavers, REQUEST_TIMEOUT),
        (&Method::GET, ["v1", "secrets", "check"]) => (Request::SecretsCheck, REQUEST_TIMEOUT),
        (&Method::GET, ["v1", "audit"]) => (
            Request::Audit {
                weaver: query_value(&req, "weaver"),
                kind: query_value(&req, "kind"),
                since: query_value(&req, "since"),
                after_id: query_value(&req, "after").and_then(|v| v.parse().ok()),
                limit: query_value(&req, "limit").and_then(|v| v.parse().ok()),
            },
            REQUEST_TIMEOUT,
        ),
        (&Method::GET, ["v1", "threads"]) => {
            (Request::ThreadList { weaver: query_value(&req, "weaver") }, REQUEST_TIMEOUT)
        }
        (&Method::GET, ["v1", "threads", "search"]) => (
            Request::ThreadSearch {
                query: query_value(&req, "q").unwrap_or_default(),
                weaver: query_value(&req, "weaver"),
                since: query_value(&req, "since"),
                limit: query_value(&req, "limit").and_then(|v| v.parse().ok()),
            },
            REQUEST_TIMEOUT,
        ),
        (&Method::GET, ["v1", "threads", id]) => (Request::ThreadShow { id: percent_decode(id) }, REQUEST_TIMEOUT),
        (&Method::GET, ["v1", "wireguard", "peers"]) => (Request::WireguardPeers, REQUEST_TIMEOUT),
        (&Method::POST, ["v1", "wireguard", "peers"]) => {
            daemon.authorize(&caller, &"wireguard")?;
            let (body, _) = read_json::<NamedPeer>(req).await?;
            (Request::WireguardPeerAdd { name: body.name }, REQUEST_TIMEOUT)
        }
        (&Method::DELETE, ["v1", "wireguard", "peers", name]) => {
            (Request::WireguardPeerRemove { name: percent_decode(name) }, REQUEST_TIMEOUT)
        }
        (&Method::GET, ["v1", "usage"]) => (Request::Usage { weaver: query_value(&req, "weaver") }, REQUEST_TIMEOUT),
        (&Method::POST, ["v1", "weavers"]) => {
            daemon.authorize(&caller, &"create")?;
            let (body, _) = read_json::<CreateWeaver>(req).await?;
            (Request::CreateWeaver(Box::new(body)), CREATE_TIMEOUT)
        }
        (&Method::POST, ["v1", "apply"]) => {
            daemon.authorize(&caller, &"apply")?;
            let (body, _) = read_json::<loom_core::api::ApplyRequest>(req).await?;
            (Request::Apply(Box::new(body)), CREATE_TIMEOUT)
        }
        (&Method::POST, ["v1", "uploads"]) => return upload(daemon, &caller, req).await,
        (&Method::GET, ["v1", "weavers", key]) => (Request::InspectWeaver(key.to_string()), REQUEST_TIMEOUT),
        (&Method::DELETE, ["v1", "weavers", key]) => {
            (Request::RemoveWeaver { key: key.to_string(), force: query_flag(&req, "force") }, REQUEST_TIMEOUT)
        }
        (&Method::GET, ["v1", "weavers", key, "limits"]) => {
            (Request::Limits { key: key.to_string(), change: None }, REQUEST_TIMEOUT)
        }
        (&Method::POST, ["v1", "weavers", key, "limits"]) => {
            let key = key.to_string();
            daemon.authorize(&caller, &"limits")?;
            let (change, _) = read_json::<crate::llm::LimitsChange>(req).await?;
            (Request::Limits { key, change: Some(change) }, REQUEST_TIMEOUT)
        }
        (&Method::GET, ["v1", "weavers", key, "egress"]) => {
            (Request::Egress { key: key.to_string(), change: None }, REQUEST_TIMEOUT)
        }
        (&Method::POST, ["v1", "weavers", key, "egress"]) => {
            let key = key.to_string();
            daemon.authorize(&caller, &"egress")?;
            let (change, _) = read_json::<crate::daemon::EgressChange>(req).await?;
            (Request::Egress { key, change: Some(change) }, REQUEST_TIMEOUT)
        }
        (&Method::POST, ["v1", "weavers", key, "stop"]) => (Request::StopWeaver(key.to_string()), REQUEST_TIMEOUT),
        (&Method::POST, ["v1", "weavers", key, "start"]) => (Request::StartWeaver(key.to_string()), REQUEST_TIMEOUT),
        (&Method::GET, ["v1", "weavers", key, "logs"]) => {
            let follow = query_flag(&req, "follow");
            return logs(daemon, &caller, key, follow).await;
        }
        (&Method::POST, ["v1", "weavers", key, "exec"]) => {
            let key = key.to_string();
            daemon.authorize(&caller, &"exec")?;
            let (body, mut parts) = read_json::<ExecRequest>(req).await?;
            let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
            return exec::start(daemon, &caller, &key, body, on_upgrade).await;
        }
        _ => return Err(not_found()),
    };
    let too_long = || ApiError::new(ErrorCode::Timeout, format!("the request took longer than {timeout:?}"));
    let resp = if matches!(request, Request::Apply(_)) {
        // On its own task: a client that gives up must not cut a reconcile in half.
        let (d, c) = (daemon.clone(), caller.clone());
        let task = tokio::spawn(async move { d.handle(&c, request).await });
        tokio::time::timeout(timeout, task)
            .await
            .map_err(|_| too_long())?
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("the apply failed: {e}")))??
    } else {
        tokio::time::timeout(timeout, daemon.handle(&caller, request)).await.map_err(|_| too_long())??
    };
    Ok(match resp {
        Response::Status(s) => json_response(StatusCode::OK, &s),
        Response::Weaver(w) => json_response(StatusCode::OK, &w),
        Response::Weavers(ws) => json_response(StatusCode::OK, &ws),
        Response::Secrets(r) => json_response(StatusCode::OK, &r),
        Response::Usage(u) => json_response(StatusCode::OK, &u),
        Response::Audit(rows) => json_response(StatusCode::OK, &rows),
        Response::Threads(t) => json_response(StatusCode::OK, &t),
        Response::Limits(l) => json_response(StatusCode::OK, &l),
        Response::ThreadHits(h) => json_response(StatusCode::OK, &h),
        Response::Json(v) => json_response(StatusCode::OK, &v),
        Response::Applied(r) => json_response(StatusCode::OK, &r),
        Response::Thread { detail, markdown } => {
            let mut v = serde_json::to_value(&detail).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.insert("markdown".into(), serde_json::Value::String(markdown));
            }
            json_response(StatusCode::OK, &v)
        }
        Response::Removed { id } => json_response(StatusCode::OK, &serde_json::json!({ "removed": id })),
    })
}

/// How long a refused upload is still read (and thrown away), so that the client, which is
/// busy sending, gets to read the refusal rather than a broken connection.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Receives an upload: the body streams to a file of the caller's, bounded in size and time.
async fn upload(
    daemon: Arc<Daemon>,
    caller: &Caller,
    req: HttpRequest<Incoming>,
) -> Result<HttpResponse<Body>, ApiError> {
    let kind = query_value(&req, "kind");
    let len = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    let received = receive_upload(&daemon, caller, kind.as_deref(), len, &mut body).await;
    if received.is_err() {
        tokio::spawn(async move {
            let discard = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
        });
    }
    Ok(json_response(StatusCode::OK, &received?))
}

async fn receive_upload(
    daemon: &Daemon,
    caller: &Caller,
    kind: Option<&str>,
    len: Option<u64>,
    body: &mut Incoming,
) -> Result<loom_core::api::UploadInfo, ApiError> {
    use crate::uploads::UploadError;
    daemon.authorize(caller, &"upload")?;
    let kind = kind
        .and_then(UploadKind::parse)
        .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "an upload needs ?kind=tar or ?kind=git-bundle"))?;
    let map = |e: UploadError| match e {
        UploadError::TooLarge => ApiError::new(ErrorCode::PayloadTooLarge, e.to_string()),
        UploadError::TooMany(_) => ApiError::new(ErrorCode::Conflict, e.to_string()),
        UploadError::NotFound(_) => ApiError::new(ErrorCode::NotFound, e.to_string()),
        UploadError::Io { .. } => {
            tracing::error!(error = %crate::error_chain(&e), "storing an upload failed");
            ApiError::new(ErrorCode::Internal, format!("{e}; see loomd's log"))
        }
    };
    if len.is_some_and(|len| len > MAX_UPLOAD_BYTES) {
        return Err(map(UploadError::TooLarge));
    }
    let mut arriving = daemon.uploads().begin(caller.uid, kind).map_err(map)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(UPLOAD_SEND_SECS);
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame()).await.map_err(|_| {
            ApiError::new(
                ErrorCode::Timeout,
                format!("the upload did not arrive within {UPLOAD_SEND_SECS}s: leave large files out of --repo"),
            )
        })?;
        match frame {
            None => break,
            Some(Err(e)) => {
                return Err(ApiError::new(ErrorCode::BadRequest, format!("the upload broke off: {e}")));
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    arriving.write(data).map_err(map)?;
                }
            }
        }
    }
    arriving.commit().map_err(map)
}

/// Streams a weaver's log: what is there, then (with follow) what is appended while it runs.
async fn logs(daemon: Arc<Daemon>, caller: &Caller, key: &str, follow: bool) -> Result<HttpResponse<Body>, ApiError> {
    let (id, path) = daemon.log_of(caller, key)?;
    if let Some(argv) = daemon.backend().log_command(&id, follow) {
        return command_output_stream(&argv, daemon.clone(), id);
    }
    // The older half of a rotated log first (see `logcap`), opened before the current one so
    // that a rotation in between loses output rather than showing it twice.
    let older = tokio::fs::File::open(crate::logcap::older(&path)).await.ok();
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(ApiError::new(ErrorCode::Internal, format!("reading {}: {e}", path.display())));
        }
    };
    struct Tail {
        older: Option<tokio::fs::File>,
        file: Option<tokio::fs::File>,
        path: PathBuf,
        follow: bool,
        daemon: Arc<Daemon>,
        id: loom_core::weaver::WeaverId,
        buf: Vec<u8>,
    }
    let state = Tail { older, file, path, follow, daemon, id, buf: vec![0; 64 * 1024] };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(o) = st.older.as_mut() {
                match o.read(&mut st.buf).await {
                    Ok(0) => st.older = None,
                    Ok(n) => return Some((Ok(Frame::data(Bytes::copy_from_slice(&st.buf[..n]))), st)),
                    Err(e) => return Some((Err(e), st)),
                }
                continue;
            }
            if st.file.is_none() {
                st.file = tokio::fs::File::open(&st.path).await.ok();
            }
            if let Some(f) = st.file.as_mut() {
                match f.read(&mut st.buf).await {
                    Ok(0) => {
                        // Rotated while followed: what was `log` is read to its end, then the new one.
                        if st.follow && rotated(f, &st.path).await {
                            st.file = None;
                            continue;
                        }
                    }
                    Ok(n) => {
                        let chunk = Bytes::copy_from_slice(&st.buf[..n]);
                        return Some((Ok(Frame::data(chunk)), st));
                    }
                    Err(e) => return Some((Err(e), st)),
                }
            }
            if !st.follow {
                return None;
            }
            if !st.daemon.is_active(&st.id) {
                // One last read for what the run wrote as it ended.
                if let Some(f) = st.file.as_mut() {
                    let pos = f.stream_position().await.unwrap_or(0);
                    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                    if len > pos {
                        continue;
                    }
                }
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(HttpResponse::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_default())
}

/// Whether `path` is no longer the file `f` has open.
async fn rotated(f: &tokio::fs::File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata().await, tokio::fs::metadata(path).await) {
        (Ok(open), Ok(now)) => open.ino() != now.ino() || open.dev() != now.dev(),
        _ => false,
    }
}

/// Streams a command's stdout (e.g. journalctl for a unit's log); the command dies with the
/// response when the client goes away, and a followed log ends a little after the weaver does.
fn command_output_stream(
    argv: &[String],
    daemon: Arc<Daemon>,
    id: loom_core::weaver::WeaverId,
) -> Result<HttpResponse<Body>, ApiError> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("reading the log with {}: {e}", argv[0])))?;
    let stdout = child.stdout.take().ok_or_else(|| ApiError::new(ErrorCode::Internal, "no log stream"))?;
    struct Follow {
        out: tokio::process::ChildStdout,
        _child: tokio::process::Child,
        buf: Vec<u8>,
        daemon: Arc<Daemon>,
        id: loom_core::weaver::WeaverId,
        idle_after_end: u8,
    }
    let state = Follow { out: stdout, _child: child, buf: vec![0u8; 64 * 1024], daemon, id, idle_after_end: 0 };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            tokio::select! {
                r = st.out.read(&mut st.buf) => return match r {
                    Ok(0) => None,
                    Ok(n) => Some((Ok(Frame::data(Bytes::copy_from_slice(&st.buf[..n]))), st)),
                    Err(e) => Some((Err(e), st)),
                },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    // Give the journal a moment to deliver the last lines, then end.
                    if !st.daemon.is_active(&st.id) {
                        st.idle_after_end += 1;
                        if st.idle_after_end >= 2 {
                            return None;
                        }
                    }
                }
            }
        }
    });
    Ok(HttpResponse::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::{is_set, percent_decode, query_param};

    /// What `loom` sends: every byte but `[A-Za-z0-9-]` as `%XX` (loom-cli's `path_key`).
    #[test]
    fn query_values_and_path_segments_are_decoded_as_the_cli_encodes_them() {
        let q = "since=2026-01-01T00%3A00%3A00%2B02%3A00&weaver=a%5Fb&q=two+words%21&force&since=later";
        assert_eq!(query_param(q, "since").as_deref(), Some("2026-01-01T00:00:00+02:00"));
        assert_eq!(query_param(q, "weaver").as_deref(), Some("a_b"));
        assert_eq!(query_param(q, "q").as_deref(), Some("two words!"));
        assert_eq!(query_param(q, "force").as_deref(), Some(""));
        assert_eq!(query_param(q, "forc"), None, "a prefix of a name is not the name");
        assert_eq!(query_param("a=%zz%e2%82%ac", "a").as_deref(), Some("%zz€"));
        assert_eq!(percent_decode("my%20weaver%2F..%ff"), "my weaver/..\u{fffd}");
        assert!(is_set("") && is_set("1") && is_set("true") && !is_set("0") && !is_set("false"));
    }
}
