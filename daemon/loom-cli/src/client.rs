//! A small HTTP/1.1 client over loomd's Unix socket.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use loom_core::api::ErrorBody;
use tokio::net::UnixStream;

/// A failure the CLI reports: loomd's own error, or why loomd could not be reached.
#[derive(Debug)]
pub struct CliError {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl CliError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        CliError { code: code.into(), message: message.into() }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client { socket: socket.to_path_buf() }
    }

    async fn connect<B>(&self) -> Result<hyper::client::conn::http1::SendRequest<B>, CliError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    "is loomd running? Start it, or point --socket at its socket"
                }
                std::io::ErrorKind::PermissionDenied => "you need to be in the loom group (or root) to use loomd",
                _ => "check --socket",
            };
            CliError::new("unavailable", format!("cannot connect to loomd at {}: {e} ({hint})", self.socket.display()))
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CliError::new("unavailable", format!("talking to loomd: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        upgrade: Option<&str>,
    ) -> Result<Response<Incoming>, CliError> {
        let mut sender = self.connect().await?;
        let mut builder = Request::builder().method(method).uri(path).header(hyper::header::HOST, "loomd");
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(proto) = upgrade {
            builder = builder.header(hyper::header::CONNECTION, "upgrade").header(hyper::header::UPGRADE, proto);
        }
        let req = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::new("bad_request", e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| CliError::new("unavailable", format!("loomd closed the connection: {e}")))?;
        check(resp).await
    }

    /// Streams `body` to `path` (an upload) and returns loomd's JSON answer.
    pub async fn upload<B>(&self, path: &str, body: B) -> Result<serde_json::Value, CliError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut sender = self.connect::<B>().await?;
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(hyper::header::HOST, "loomd")
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .map_err(|e| CliError::new("bad_request", e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| CliError::new("unavailable", format!("the upload to loomd broke off: {e}")))?;
        let bytes = check(resp)
            .await?
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::new("unavailable", format!("reading loomd's answer: {e}")))?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::new("internal", format!("loomd's answer is not JSON: {e}")))
    }

    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, CliError> {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap_or_default());
        let resp = self.send(method, path, body, None).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::new("unavailable", format!("reading loomd's answer: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(CliError::new("internal", format!("unexpected status {status}")));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::new("internal", format!("loomd's answer is not JSON: {e}")))
    }
}

/// loomd's error answer as a [`CliError`]; any other answer as it is.
async fn check(resp: Response<Incoming>) -> Result<Response<Incoming>, CliError> {
    if resp.status().is_client_error() || resp.status().is_server_error() {
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => CliError::new(
                &serde_json::to_value(e.error.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                e.error.message,
            ),
            Err(_) => {
                CliError::new("internal", format!("loomd answered {status}: {}", String::from_utf8_lossy(&bytes)))
            }
        });
    }
    Ok(resp)
}
