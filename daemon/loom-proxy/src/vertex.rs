//! Vertex AI: the SOPS secret is a Google service-account JSON; the proxy signs a JWT with its
//! key (RS256), exchanges it at the OAuth token endpoint for an access token, and caches the
//! token until shortly before it expires.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: Zeroizing<String>,
    token_uri: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Zeroizing<String>,
    expires_in: Option<u64>,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub(crate) struct VertexAuth {
    client: HttpClient,
    cache: Mutex<HashMap<String, (Zeroizing<String>, Instant)>>,
}

pub(crate) fn base64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        let chars = c.len() + 1;
        for i in 0..chars {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A signed RS256 JWT asking for a cloud-platform token.
pub(crate) fn signed_assertion(sa_json: &str, token_url: &str, now_unix: u64) -> Result<String, String> {
    let sa: ServiceAccount = serde_json::from_str(sa_json)
        .map_err(|e| format!("the secret is not a service-account JSON ({e}); Vertex needs the key file's JSON"))?;
    let der = PrivatePkcs8KeyDer::from_pem_slice(sa.private_key.as_bytes())
        .map_err(|e| format!("service account private_key is not a PKCS#8 PEM key ({e})"))?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| format!("service account private_key is not an RSA key ({e})"))?;
    let header = base64url(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": sa.client_email,
        "scope": SCOPE,
        "aud": token_url,
        "iat": now_unix,
        "exp": now_unix + 3600,
    });
    let mut msg = format!("{header}.{}", base64url(claims.to_string().as_bytes()));
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), msg.as_bytes(), &mut sig)
        .map_err(|_| "could not sign the token request".to_string())?;
    msg.push('.');
    msg.push_str(&base64url(&sig));
    Ok(msg)
}

impl VertexAuth {
    pub(crate) fn new(client: HttpClient) -> Self {
        Self { client, cache: Mutex::new(HashMap::new()) }
    }

    /// An access token for `provider`, from the cache or a fresh exchange.
    pub(crate) async fn token(
        &self,
        provider: &str,
        token_url: Option<&str>,
        sa_json: &str,
    ) -> Result<Zeroizing<String>, String> {
        // Held across the exchange so concurrent requests do one exchange, not many.
        let mut cache = self.cache.lock().await;
        if let Some((t, until)) = cache.get(provider)
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let url = match token_url {
            Some(u) => u.to_string(),
            None => serde_json::from_str::<ServiceAccount>(sa_json)
                .ok()
                .and_then(|s| s.token_uri)
                .unwrap_or_else(|| DEFAULT_TOKEN_URL.to_string()),
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let jwt = Zeroizing::new(signed_assertion(sa_json, &url, now)?);
        let form = Zeroizing::new(format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={}",
            jwt.as_str()
        ));
        let req = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::copy_from_slice(form.as_bytes())))
            .map_err(|e| format!("token_url `{url}` is not usable ({e})"))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| format!("OAuth token endpoint {url} did not answer within 30s"))?
            .map_err(|e| format!("could not reach OAuth token endpoint {url}: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| format!("could not read the OAuth token response: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "OAuth token endpoint {url} refused the service account with HTTP {}",
                status.as_u16()
            ));
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| format!("OAuth token endpoint {url} sent no access_token ({e})"))?;
        // The endpoint's number is added to the clock: bounded, so no answer can overflow it.
        let ttl = Duration::from_secs(t.expires_in.unwrap_or(3600).min(86_400).saturating_sub(60).max(30));
        cache.insert(provider.to_string(), (t.access_token.clone(), Instant::now() + ttl));
        Ok(t.access_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(i.as_bytes()), o);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn bad_service_account_is_a_clear_error() {
        let e = signed_assertion("not json", "u", 0).unwrap_err();
        assert!(e.contains("not a service-account JSON"));
        let e = signed_assertion(
            r#"{"client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}"#,
            "u",
            0,
        )
        .unwrap_err();
        assert!(e.contains("not an RSA key"), "{e}");
    }
}
