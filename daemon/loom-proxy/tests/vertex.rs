//! Vertex AI through the proxy: the SOPS secret is a service-account JSON, exchanged at a fake
//! OAuth token endpoint (Google's is outside this machine) for an access token that is then
//! injected as the bearer; the fake checks the JWT's RS256 signature for real.

mod fake_provider;
mod harness;

use std::net::SocketAddr;
use std::sync::Arc;

use fake_provider::{FakeProvider, Reply};
use harness::{post_bearer, providers, serve};
use http_body_util::BodyExt;
use loom_proxy::{KeySource, Proxy, ProxyConfig, WeaverLimits, WeaverToken};
use rustls::pki_types::pem::PemObject;
use zeroize::Zeroizing;

const PEM: &str = include_str!("data/vertex-test-service-account-key.pem");

struct SaKey(String);

impl KeySource for SaKey {
    fn key(&self, path: &str) -> Option<Zeroizing<String>> {
        (path == "gcp.vertex_sa").then(|| Zeroizing::new(self.0.clone()))
    }
}

fn b64url_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => panic!("not base64url: {c}"),
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        acc = acc << 6 | val(c) as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A proxy with one Vertex provider at `base_url`, exchanging the service account `sa` at
/// `token_url`; its weaver's token and listener.
async fn vertex_proxy(base_url: &str, token_url: &str, sa: String, bound: bool) -> (WeaverToken, SocketAddr) {
    let providers = providers(&format!(
        "[vertex]\nbase_url = \"{base_url}\"\nsecret = \"gcp.vertex_sa\"\ntoken_url = \"{token_url}\"\n"
    ));
    let config = ProxyConfig::from_toml(&providers, &toml::Table::new()).unwrap();
    let proxy = Proxy::builder(config, Arc::new(SaKey(sa))).build().unwrap();
    let token = proxy.register_weaver("wv", WeaverLimits::unlimited()).unwrap();
    let addr = serve(&proxy, bound.then_some("wv")).await;
    (token, addr)
}

#[tokio::test]
async fn vertex_service_account_is_exchanged_for_a_cached_bearer_token() {
    let up = FakeProvider::start().await;
    let oauth = FakeProvider::start().await;
    oauth.script([Reply::new(
        200,
        "application/json",
        r#"{"access_token":"ya29.fake-vertex-token","expires_in":3599,"token_type":"Bearer"}"#,
    )]);
    up.set_default(Reply::openai_json("google/gemini-2.5-flash", "hi", 7, 3));

    let sa = serde_json::json!({
        "type": "service_account",
        "project_id": "loom-test",
        "private_key_id": "k1",
        "private_key": PEM,
        "client_email": "loom@loom-test.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    })
    .to_string();
    let token_url = format!("{}/token", oauth.base_url());
    let base_url = format!("{}/v1/projects/loom-test/locations/us-central1/endpoints/openapi", up.base_url());
    let (token, addr) = vertex_proxy(&base_url, &token_url, sa, true).await;
    for _ in 0..2 {
        let body = r#"{"model":"vertex/google/gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}"#;
        let resp = post_bearer(addr, &token, "/v1/chat/completions", body.into()).await;
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(!String::from_utf8_lossy(&body).contains("ya29"));
    }

    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path, "/v1/projects/loom-test/locations/us-central1/endpoints/openapi/chat/completions");
    assert_eq!(seen[0].headers["authorization"], "Bearer ya29.fake-vertex-token");
    assert_eq!(seen[0].json()["model"], "google/gemini-2.5-flash");

    // One exchange for both requests: the token is cached.
    let ex = oauth.seen();
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].path, "/token");
    assert_eq!(ex[0].headers["content-type"], "application/x-www-form-urlencoded");
    let form = String::from_utf8(ex[0].body.to_vec()).unwrap();
    let assertion = form.split('&').find_map(|kv| kv.strip_prefix("assertion=")).unwrap();
    assert!(form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"));
    let parts: Vec<&str> = assertion.split('.').collect();
    assert_eq!(parts.len(), 3);
    let claims: serde_json::Value = serde_json::from_slice(&b64url_decode(parts[1])).unwrap();
    assert_eq!(claims["iss"], "loom@loom-test.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], token_url.as_str());
    assert_eq!(claims["scope"], "https://www.googleapis.com/auth/cloud-platform");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 3600);

    // The signature verifies against the service account's public key.
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(PEM.as_bytes()).unwrap();
    let kp = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    let pk = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        kp.public().as_ref().to_vec(),
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    pk.verify(signed.as_bytes(), &b64url_decode(parts[2])).expect("RS256 signature verifies");
}

#[tokio::test]
async fn vertex_token_refusal_is_a_clear_error() {
    let up = FakeProvider::start().await;
    let oauth = FakeProvider::start().await;
    oauth.set_default(Reply::new(400, "application/json", r#"{"error":"invalid_grant"}"#));
    let sa = serde_json::json!({"client_email": "x@y", "private_key": PEM}).to_string();
    let (base_url, token_url) = (format!("{}/openapi", up.base_url()), format!("{}/token", oauth.base_url()));
    let (token, addr) = vertex_proxy(&base_url, &token_url, sa, false).await;
    let body = r#"{"model":"gemini-2.5-flash","messages":[]}"#;
    let resp = post_bearer(addr, &token, "/v1/chat/completions", body.into()).await;
    assert_eq!(resp.status(), 502);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("refused the service account with HTTP 400"), "{body}");
    assert!(!body.contains("PRIVATE KEY"));
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn vertex_token_expires_in_18446744073709551615_does_not_panic() {
    let up = FakeProvider::start().await;
    let oauth = FakeProvider::start().await;
    oauth.set_default(Reply::new(
        200,
        "application/json",
        r#"{"access_token":"ya29.fake","expires_in":18446744073709551615,"token_type":"Bearer"}"#,
    ));
    up.set_default(Reply::openai_json("gemini-2.5-flash", "hi", 7, 3));
    let sa = serde_json::json!({"client_email": "x@y", "private_key": PEM}).to_string();
    let (base_url, token_url) = (format!("{}/openapi", up.base_url()), format!("{}/token", oauth.base_url()));
    let (token, addr) = vertex_proxy(&base_url, &token_url, sa, false).await;
    let body = r#"{"model":"gemini-2.5-flash","messages":[]}"#;
    // post_bearer fails the test if the proxy does not answer (it would die on the lifetime).
    let resp = post_bearer(addr, &token, "/v1/chat/completions", body.into()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.seen()[0].headers["authorization"], "Bearer ya29.fake");
}
