//! `https://` base URLs (feature `tls`, for laptop use straight against a provider): a model
//! call over TLS to a local server whose certificate a test CA signed.
#![cfg(feature = "tls")]

use std::sync::Arc;
use std::time::Duration;

use loom_agent::client::ModelClient;
use loom_agent::http::Tls;
use loom_agent::llm::{ModelRequest, ModelSpec, Msg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

async fn tls_server() -> String {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(format!("{DATA}/test-server-cert.pem")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(format!("{DATA}/test-server-key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else { return };
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Read the head and the content-length body.
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..i]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if got.len() >= i + 4 + len {
                            break;
                        }
                    }
                }
                let sse = concat!(
                    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}\n\n",
                    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
                    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"over TLS\"}}\n\n",
                    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
                    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
                    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                );
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{sse}",
                    sse.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    url
}

fn request() -> ModelRequest {
    ModelRequest { system: "s".into(), messages: vec![Msg::User("hi".into())], tools: vec![], max_tokens: 10 }
}

#[tokio::test]
async fn model_call_over_tls_with_an_extra_ca() {
    let url = tls_server().await;
    let spec = ModelSpec::parse("anthropic/claude-x").unwrap();
    let mut c = ModelClient::new(spec.clone(), &url, "k".into(), true);
    c.idle_timeout = Duration::from_secs(10);
    c.tls = Some(Tls::new(Some(std::path::Path::new(&format!("{DATA}/test-ca.pem")))).unwrap());
    let reply = c.call(&request(), |_| {}).await.unwrap();
    assert_eq!(reply.text, "over TLS");

    // Without the test CA the server is not trusted.
    let mut c = ModelClient::new(spec, &url, "k".into(), true);
    c.idle_timeout = Duration::from_secs(10);
    let e = c.call(&request(), |_| {}).await.unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
}

#[test]
fn a_ca_file_without_certificates_is_refused() {
    let e = Tls::new(Some(std::path::Path::new(&format!("{DATA}/test-server-key.pem")))).unwrap_err();
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
}
