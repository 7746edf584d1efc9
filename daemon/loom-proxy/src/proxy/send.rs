//! Stage 5, [`Inner::send`]: the planned request goes to each target in turn, as often as the
//! retry policy ([`crate::retry`]) says, with the provider's real key; the first response
//! worth passing on goes to the client, its body metered as it passes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use loom_core::error_chain;
use rand::Rng;
use zeroize::Zeroizing;

use super::Inner;
use super::plan::{Outgoing, Plan, Target};
use crate::body::{MeteredBody, ProxyBody};
use crate::call::Call;
use crate::config::{ApiFamily, ProviderConfig, ProviderKind};
use crate::errors::{ErrorKind, error_response};
use crate::retry::{Failure, Outcome, Schedule, Step, retry_after};
use crate::route::upstream_path;
use crate::usage::UsageStatus;

const STRIPPED_RESPONSE_HEADERS: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "trailer", "upgrade", "set-cookie"];

/// What a target needs for its attempts, made once: its key (kept to redact error bodies),
/// the header carrying it, its URL and body.
struct Prepared {
    key: Option<Zeroizing<String>>,
    auth: Option<(HeaderName, HeaderValue)>,
    uri: Uri,
    body: Bytes,
}

impl Inner {
    /// Stage 5: sends the plan and answers the client with what came back.
    pub(crate) async fn send(self: &Arc<Self>, plan: Plan<'_>) -> Response<ProxyBody> {
        let Plan { mut call, out, targets, shape } = plan;
        let (resp, used, key) = match self.forward(&mut call, &out, &targets).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        call.with(|s| {
            s.record.provider = used.provider.name.clone();
            s.record.model = used.model.clone().unwrap_or_default();
            s.record.time_to_first_byte = s.started.elapsed();
            s.record.http_status = resp.status().as_u16();
            s.upstream_status = Some(resp.status().as_u16());
        });
        self.respond(resp, call, shape, used.provider, key).await
    }

    /// Tries the targets as the retry policy says; returns the first response worth passing
    /// on, the target that gave it and the key used, or the error the client gets.
    async fn forward<'t>(
        self: &Arc<Self>,
        call: &mut Call,
        out: &Outgoing,
        targets: &'t [Target<'t>],
    ) -> Result<(Response<Incoming>, &'t Target<'t>, Option<Zeroizing<String>>), Response<ProxyBody>> {
        let mut schedule = Schedule::new(&self.config.retry, targets.len());
        let mut prepared: Option<(usize, Prepared)> = None;
        let failure = loop {
            let Some(target) = targets.get(schedule.target()) else {
                break Failure::Unusable("no upstream target".into());
            };
            let p = match &prepared {
                Some((i, p)) if *i == schedule.target() => p,
                _ => match self.prepare(target, out).await {
                    Ok(p) => &prepared.insert((schedule.target(), p)).1,
                    Err(msg) => match schedule.skip(Failure::Unusable(msg)) {
                        Ok(next) => {
                            schedule = next;
                            continue;
                        }
                        Err(failure) => break failure,
                    },
                },
            };
            call.with(|s| {
                s.record.attempts += 1;
                s.attempt_out = true;
            });
            let result = tokio::time::timeout(
                self.config.first_byte_timeout,
                self.own_ca.get(&target.provider.name).unwrap_or(&self.client).request(request(out, p)),
            )
            .await;
            let connect_failed = matches!(&result, Ok(Err(e)) if e.is_connect());
            call.with(|s| {
                s.attempt_out = false;
                s.reached |= !connect_failed;
            });
            let outcome = match result {
                Ok(Ok(response)) => {
                    let h = response.headers();
                    let retry_after = retry_after(
                        h.get("retry-after-ms").and_then(|v| v.to_str().ok()),
                        h.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()),
                        SystemTime::now(),
                    );
                    Outcome::Answered { status: response.status(), retry_after, response }
                }
                Ok(Err(e)) => Outcome::Unreachable { detail: error_chain(&e) },
                Err(_) => Outcome::TimedOut { after: self.config.first_byte_timeout },
            };
            let attempt = schedule.attempt();
            let provider = &target.provider.name;
            let jitter = rand::rng().random::<f64>();
            match schedule.after(provider, outcome, jitter) {
                Step::PassOn(response) => return Ok((response, target, prepared.take().and_then(|(_, p)| p.key))),
                Step::Retry { wait, failure, next } => {
                    match &failure {
                        Failure::Answered(status) => {
                            tracing::info!(%provider, status = status.as_u16(), attempt, "upstream asked to retry");
                        }
                        f => tracing::info!(%provider, attempt, "{f}"),
                    }
                    schedule = next;
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                Step::GiveUp(failure) => {
                    tracing::info!(%provider, attempt, "{failure}");
                    break failure;
                }
            }
        };
        let status = failure.status();
        let kind = if status == StatusCode::GATEWAY_TIMEOUT { ErrorKind::Timeout } else { ErrorKind::Api };
        let msg = format!("loom proxy: upstream failed: {failure}");
        call.with(|s| s.record.http_status = status.as_u16());
        call.finish(UsageStatus::Failed(failure.to_string()), None);
        Err(error_response(out.family, status, kind, &msg))
    }

    /// A target's key, the header that carries it, its URL and its body; an error says why
    /// the target cannot be tried.
    async fn prepare(self: &Arc<Self>, target: &Target<'_>, out: &Outgoing) -> Result<Prepared, String> {
        let provider = target.provider;
        let key =
            self.key_for(provider).await.inspect_err(|msg| tracing::error!(provider = %provider.name, "{msg}"))?;
        let auth = match &key {
            Some(k) => Some(auth_header(out.family, provider, k)?),
            None => None,
        };
        let path = upstream_path(&provider.base_url, &out.endpoint, out.uri.path(), out.uri.query());
        let uri = Uri::builder()
            .scheme(provider.base_url.scheme.clone())
            .authority(provider.base_url.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| format!("could not build the upstream URL for {}: {e}", provider.name))?;
        Ok(Prepared { key, auth, uri, body: out.body_for(target.model.as_deref()) })
    }

    async fn key_for(self: &Arc<Self>, provider: &ProviderConfig) -> Result<Option<Zeroizing<String>>, String> {
        let Some(path) = &provider.secret else {
            return Ok(None);
        };
        let Some(secret) = self.keys.key(path) else {
            return Err(format!(
                "provider {}'s secret `{path}` is not available; check it with `loom secrets check`",
                provider.name
            ));
        };
        if provider.kind == ProviderKind::Vertex {
            return self
                .vertex
                .token(&provider.name, provider.token_url.as_deref(), &secret)
                .await
                .map(Some)
                .map_err(|e| format!("provider {}: {e}", provider.name));
        }
        Ok(Some(secret))
    }

    /// The upstream's answer, passed on: a refusal of loom's key in loom's own words, other
    /// errors whole with any trace of the key taken out, a success metered as it streams.
    async fn respond(
        &self,
        resp: Response<Incoming>,
        mut call: Call,
        shape: ApiFamily,
        provider: &ProviderConfig,
        key: Option<Zeroizing<String>>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        let status = parts.status;
        for h in STRIPPED_RESPONSE_HEADERS {
            parts.headers.remove(*h);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // The provider refused loom's own key. Its message may quote part of the key, and
            // the weaver's agent can do nothing about it, so it gets loom's own words.
            drop(body);
            call.finish(UsageStatus::UpstreamError(status.as_u16()), None);
            return error_response(
                shape,
                StatusCode::BAD_GATEWAY,
                ErrorKind::Api,
                &format!(
                    "loom proxy: provider {} refused loom's key with HTTP {}; an operator must fix secret `{}` in the SOPS file",
                    provider.name,
                    status.as_u16(),
                    provider.secret.as_deref().unwrap_or("")
                ),
            );
        }
        if !status.is_success() {
            // Error bodies are small: read them whole and take out any trace of the key.
            let bytes =
                match tokio::time::timeout(Duration::from_secs(30), Limited::new(body, 1024 * 1024).collect()).await {
                    Ok(Ok(b)) => b.to_bytes(),
                    _ => Bytes::new(),
                };
            let bytes = redact(bytes, key.as_deref().map(|k| k.as_str()));
            parts.headers.remove(header::CONTENT_LENGTH);
            call.finish(UsageStatus::UpstreamError(status.as_u16()), None);
            return Response::from_parts(parts, ProxyBody::full(bytes));
        }
        drop(key);
        let content_type =
            parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = MeteredBody::new(body, &content_type, call, shape, self.config.stream_idle_timeout);
        if content_type.starts_with("text/event-stream") {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        Response::from_parts(parts, ProxyBody::Metered(Box::new(body)))
    }
}

/// The header carrying a provider's key: `x-api-key` for Anthropic's API, a bearer token for
/// the others (Vertex's Anthropic models too), marked sensitive so it is never logged.
fn auth_header(family: ApiFamily, provider: &ProviderConfig, key: &str) -> Result<(HeaderName, HeaderValue), String> {
    // Secrets stored from a file often end in a newline.
    let key = key.trim();
    let bad = || format!("provider {}'s key is not a valid header value", provider.name);
    let (name, mut value) = if family == ApiFamily::Anthropic && provider.kind != ProviderKind::Vertex {
        (HeaderName::from_static("x-api-key"), HeaderValue::from_str(key).map_err(|_| bad())?)
    } else {
        let bearer = Zeroizing::new(format!("Bearer {key}"));
        (header::AUTHORIZATION, HeaderValue::from_str(&bearer).map_err(|_| bad())?)
    };
    value.set_sensitive(true);
    Ok((name, value))
}

/// One attempt's request.
fn request(out: &Outgoing, p: &Prepared) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(p.body.clone()));
    *req.method_mut() = out.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.headers_mut() = out.headers.clone();
    if let Some((name, value)) = &p.auth {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    req
}

fn redact(bytes: Bytes, key: Option<&str>) -> Bytes {
    let Some(key) = key.map(str::trim).filter(|k| k.len() >= 8) else {
        return bytes;
    };
    let k = key.as_bytes();
    if !bytes.windows(k.len()).any(|w| w == k) {
        return bytes;
    }
    let s = String::from_utf8_lossy(&bytes).replace(key, "[REDACTED]");
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        let key = "sk-secret-123456";
        assert_eq!(redact(Bytes::from("a sk-secret-123456 b"), Some(key)), Bytes::from("a [REDACTED] b"));
        assert_eq!(redact(Bytes::from("nothing"), Some(key)), Bytes::from("nothing"));
        assert_eq!(redact(Bytes::from("short key"), Some("short")), Bytes::from("short key"));
    }
}
