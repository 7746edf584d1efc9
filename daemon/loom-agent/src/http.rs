//! A lean HTTP/1.1 client over plain TCP (hyper 1). Inside a weaver every endpoint (the
//! proxy, loomd's event intake) is `http://` on loopback; TLS is not built in.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Errors of one HTTP exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "URL {0:?} is not http://host[:port]/path; the loom agent speaks plain http to the weaver's proxy (https needs a build with --features tls)"
    )]
    BadUrl(String),
    /// The extra CA file for TLS could not be used.
    #[error("CA file {path} is unusable ({message}); give a PEM file of certificates")]
    BadCa { path: String, message: String },
    /// Nothing listens there, or the network refused; the message is the OS's reason.
    #[error("connecting to {addr} failed: {message}")]
    Connect { addr: String, message: String },
    #[error("HTTP exchange with {url} failed: {message}")]
    Exchange { url: String, message: String },
    #[error("{url} sent nothing for {secs}s")]
    Timeout { url: String, secs: u64 },
}

/// A response whose body is read chunk by chunk.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    body: hyper::body::Incoming,
    url: String,
    idle: Duration,
}

impl Response {
    /// The next body chunk, `None` at the end. Waiting longer than the idle timeout is an error.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            let frame = tokio::time::timeout(self.idle, self.body.frame())
                .await
                .map_err(|_| HttpError::Timeout { url: self.url.clone(), secs: self.idle.as_secs() })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(HttpError::Exchange { url: self.url.clone(), message: e.to_string() });
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body, at most `cap` bytes (the rest is dropped).
    pub async fn text(mut self, cap: usize) -> Result<String, HttpError> {
        let mut buf = Vec::new();
        while let Some(c) = self.chunk().await? {
            if buf.len() < cap {
                buf.extend_from_slice(&c[..c.len().min(cap - buf.len())]);
            }
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Joins a base URL and a path without doubling or dropping slashes.
pub fn join_url(base: &str, path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
}

/// TLS settings for `https://` endpoints (laptop use, straight to a provider). Inside a
/// weaver every endpoint is plain http on loopback and this is never built.
#[cfg(feature = "tls")]
#[derive(Clone)]
pub struct Tls(std::sync::Arc<tokio_rustls::rustls::ClientConfig>);

#[cfg(feature = "tls")]
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

#[cfg(feature = "tls")]
impl Tls {
    /// The Mozilla roots (webpki-roots), plus the PEM certificates in `extra_ca` if given (a
    /// company proxy's CA, or a test CA).
    pub fn new(extra_ca: Option<&std::path::Path>) -> Result<Tls, HttpError> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::CertificateDer;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            let bad = |m: String| HttpError::BadCa { path: path.display().to_string(), message: m };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(e.to_string()))?;
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
                n += 1;
            }
            if n == 0 {
                return Err(bad("no PEM certificate in it".into()));
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::BadCa { path: "(built-in roots)".into(), message: e.to_string() })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls(std::sync::Arc::new(cfg)))
    }
}

/// TLS is not built in: `https://` URLs are refused with a clear error.
#[cfg(not(feature = "tls"))]
#[derive(Clone, Debug)]
pub struct Tls(());

/// POSTs `body` as JSON to an `http://` URL and returns the response once its head arrived.
pub async fn post_json(
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    idle: Duration,
) -> Result<Response, HttpError> {
    post_json_tls(url, headers, body, idle, None).await
}

/// Like [`post_json`], also for `https://` URLs when built with the `tls` feature.
pub async fn post_json_tls(
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    idle: Duration,
    tls: Option<&Tls>,
) -> Result<Response, HttpError> {
    let uri: hyper::Uri = url.parse().map_err(|_| HttpError::BadUrl(url.into()))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") if cfg!(feature = "tls") => true,
        _ => return Err(HttpError::BadUrl(url.into())),
    };
    let host = uri.host().ok_or_else(|| HttpError::BadUrl(url.into()))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host_port = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let stream = tokio::time::timeout(idle, tokio::net::TcpStream::connect(&host_port))
        .await
        .map_err(|_| HttpError::Timeout { url: url.into(), secs: idle.as_secs() })?
        .map_err(|e| HttpError::Connect { addr: host_port.clone(), message: e.to_string() })?;
    let _ = stream.set_nodelay(true);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    let ex = Exchange { url, host_port: &host_port, path, headers, body, idle };
    if https {
        #[cfg(feature = "tls")]
        {
            let tls = match tls {
                Some(t) => t.clone(),
                None => Tls::new(None)?,
            };
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|_| HttpError::BadUrl(url.into()))?;
            let conn = tokio_rustls::TlsConnector::from(tls.0);
            let tls_stream = tokio::time::timeout(idle, conn.connect(name, stream))
                .await
                .map_err(|_| HttpError::Timeout { url: url.into(), secs: idle.as_secs() })?
                .map_err(|e| HttpError::Connect { addr: host_port.clone(), message: format!("TLS: {e}") })?;
            return ex.run(tls_stream).await;
        }
    }
    let _ = tls;
    ex.run(stream).await
}

struct Exchange<'a> {
    url: &'a str,
    host_port: &'a str,
    path: String,
    headers: &'a [(&'a str, &'a str)],
    body: Vec<u8>,
    idle: Duration,
}

impl Exchange<'_> {
    async fn run<IO>(self, io: IO) -> Result<Response, HttpError>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let url = self.url;
        let ex = |e: hyper::Error| HttpError::Exchange { url: url.into(), message: e.to_string() };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(ex)?;
        tokio::spawn(async move {
            // The connection ends with the response body; its error, if any, reaches the reader.
            let _ = conn.await;
        });
        let mut req = Request::post(self.path)
            .header(hyper::header::HOST, self.host_port)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (k, v) in self.headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(self.body)))
            .map_err(|e| HttpError::Exchange { url: url.into(), message: e.to_string() })?;
        let resp = tokio::time::timeout(self.idle, sender.send_request(req))
            .await
            .map_err(|_| HttpError::Timeout { url: url.into(), secs: self.idle.as_secs() })?
            .map_err(ex)?;
        let (parts, body) = resp.into_parts();
        Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body, url: url.into(), idle: self.idle })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(join_url("http://a:1/", "/v1/messages"), "http://a:1/v1/messages");
        assert_eq!(join_url("http://a:1/v1", "chat/completions"), "http://a:1/v1/chat/completions");
    }

    #[cfg(not(feature = "tls"))]
    #[tokio::test]
    async fn https_is_refused_with_a_clear_error() {
        let e = post_json("https://api.example.com/v1", &[], vec![], Duration::from_secs(1)).await.unwrap_err();
        assert!(e.to_string().contains("plain http"), "{e}");
    }
}
