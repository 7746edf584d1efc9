//! The first three stages of a request: [`Inner::authenticate`] (who is calling),
//! [`Inner::route`] (where it may go) and [`Inner::admit`] (the weaver's rate and concurrency
//! limits, then its body), and the answer a stage gives in place of the provider's.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::{Inner, Weaver, lock};
use crate::allow::{self, Forbidden, Meter};
use crate::body::{BoxError, ProxyBody};
use crate::config::{ApiFamily, ProviderConfig, ProxyConfig};
use crate::errors::{ErrorKind, error_response};
use crate::limits::Refusal;
use crate::route::Endpoint;

/// A request body slower than this is refused (it holds one of the weaver's slots).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(120);

const UNKNOWN_TOKEN: &str = "loom proxy: unknown or revoked weaver token; a weaver can use only its own (ANTHROPIC_API_KEY, OPENAI_API_KEY or LOOM_PROXY_TOKEN in its environment)";

/// A stage's answer in place of the provider's: the request goes no further.
#[derive(Debug, PartialEq)]
pub(crate) struct Rejection {
    pub(crate) status: StatusCode,
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
    /// For a rate limit: when the weaver may call again.
    pub(crate) retry_after: Option<Duration>,
}

impl Rejection {
    pub(crate) fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), retry_after: None }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, message)
    }

    /// The router named a provider the configuration lacks: cannot happen, as both come from
    /// the same map, but it must not take the daemon down if it does.
    pub(crate) fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Api, "loom proxy: internal routing error")
    }

    /// The weaver's limits said no.
    pub(crate) fn refused(shape: ApiFamily, weaver: &str, refusal: &Refusal) -> Self {
        let message = refusal.message(weaver);
        tracing::info!(weaver, "proxy refused a request: {message}");
        let (status, kind) = match refusal {
            Refusal::TokenBudget { .. } | Refusal::UsdBudget { .. } => match shape {
                ApiFamily::Anthropic => (StatusCode::PAYMENT_REQUIRED, ErrorKind::Billing),
                ApiFamily::OpenAi => (StatusCode::TOO_MANY_REQUESTS, ErrorKind::Billing),
            },
            _ => (StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimit),
        };
        let retry_after = match refusal {
            Refusal::RequestsPerMinute { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        Self { status, kind, message, retry_after }
    }

    /// The answer, in the error shape of the API the client speaks.
    pub(crate) fn into_response(self, shape: ApiFamily) -> Response<ProxyBody> {
        let mut r = error_response(shape, self.status, self.kind, &self.message);
        if let Some(after) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
        }
        r
    }
}

/// A request as it arrived: its head, the endpoint it names, and the API shape the proxy
/// answers it in (known before the caller is).
#[derive(Debug)]
pub(crate) struct Arrived<'a> {
    pub(crate) head: Parts,
    pub(crate) endpoint: Endpoint,
    /// The provider a `/proxy/NAME/...` path names, if it is configured.
    pub(crate) passthrough: Option<&'a ProviderConfig>,
    pub(crate) shape: ApiFamily,
    pub(crate) started: Instant,
    pub(crate) started_at: SystemTime,
}

impl<'a> Arrived<'a> {
    pub(crate) fn new(head: Parts, config: &'a ProxyConfig, started: Instant, started_at: SystemTime) -> Self {
        let anthropic_headers = head.headers.contains_key("anthropic-version");
        let endpoint = Endpoint::classify(head.uri.path(), anthropic_headers);
        let passthrough = match &endpoint {
            Endpoint::Passthrough { provider, .. } => config.providers.get(provider),
            _ => None,
        };
        let fallback = if anthropic_headers { ApiFamily::Anthropic } else { ApiFamily::OpenAi };
        let shape = endpoint.family().or(passthrough.map(|p| p.api)).unwrap_or(fallback);
        Self { head, endpoint, passthrough, shape, started, started_at }
    }
}

/// Stage 1's output: the weaver the request is from.
#[derive(Debug)]
pub(crate) struct Authenticated<'a> {
    pub(crate) arrived: Arrived<'a>,
    pub(crate) weaver: Arc<Weaver>,
}

/// Where a request may go.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Destination {
    /// loomd's own routes under `/loom/`.
    Local,
    /// A provider endpoint on the allow-list, charged by `meter`.
    Upstream { meter: Meter },
}

/// Stage 2's output: an endpoint the weaver may call, and the thread it says the call is for.
#[derive(Debug)]
pub(crate) struct Routed<'a> {
    pub(crate) arrived: Arrived<'a>,
    pub(crate) weaver: Arc<Weaver>,
    pub(crate) destination: Destination,
    pub(crate) thread: Option<String>,
}

/// Stage 3's output: the weaver's slot is taken and the body is in.
#[derive(Debug)]
pub(crate) struct Admitted<'a> {
    pub(crate) arrived: Arrived<'a>,
    pub(crate) weaver: Arc<Weaver>,
    pub(crate) destination: Destination,
    pub(crate) thread: Option<String>,
    pub(crate) body: Bytes,
    pub(crate) slot: Slot,
}

/// A weaver's concurrency slot between [`crate::limits::Ledger::enter`] and the
/// [`crate::call::Call`] taking it over; given back if the request ends before reaching a
/// provider. A slot of loomd's own routes (`local`) is held until their answer is ready.
#[derive(Debug)]
pub(crate) struct Slot {
    weaver: Option<Arc<Weaver>>,
    local: bool,
}

impl Slot {
    /// The call that took the slot over gives it back.
    pub(crate) fn disarm(&mut self) {
        self.weaver = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(w) = self.weaver.take() {
            let mut ledger = lock(&w.ledger);
            if self.local { ledger.leave_local() } else { ledger.leave() }
        }
    }
}

/// The token a client sent: `x-api-key` (Anthropic SDKs) or `Authorization: Bearer` (OpenAI).
fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// `x-loom-thread`, which names the thread a call belongs to in the usage records.
fn thread(headers: &HeaderMap) -> Result<Option<String>, Rejection> {
    let Some(v) = headers.get("x-loom-thread") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s)
            if !s.is_empty()
                && s.len() <= 128
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            Ok(Some(s.to_string()))
        }
        _ => Err(Rejection::invalid("loom proxy: x-loom-thread must be 1 to 128 characters of [A-Za-z0-9-_.:]")),
    }
}

impl Inner {
    /// Stage 1: who is calling, from the token and the listener it came on (`bound`).
    pub(crate) fn authenticate<'a>(
        &self,
        arrived: Arrived<'a>,
        bound: Option<&Weaver>,
    ) -> Result<Authenticated<'a>, Rejection> {
        let refuse = |message: &str| {
            let r = Rejection::new(StatusCode::UNAUTHORIZED, ErrorKind::Authentication, message);
            tracing::info!(path = %arrived.head.uri.path(), status = r.status.as_u16(), "proxy refused a request: {message}");
            r
        };
        let Some(token) = token(&arrived.head.headers) else {
            return Err(refuse(
                "loom proxy: no token; send the weaver's token as x-api-key or Authorization: Bearer (it is in ANTHROPIC_API_KEY / OPENAI_API_KEY inside the weaver)",
            ));
        };
        let found = {
            let reg = self.registry.read().unwrap_or_else(|e| e.into_inner());
            reg.by_token.get(token).cloned()
        };
        let weaver = match (found, bound) {
            (None, _) => return Err(refuse(UNKNOWN_TOKEN)),
            (Some(w), Some(b)) if w.id != b.id => {
                // Another weaver's token reached this one: it leaked. It is no credential here,
                // and the answer is the unknown token's, so it tells nothing about the token.
                tracing::warn!(listener = %b.id, token_of = %w.id, "proxy refused another weaver's token");
                return Err(refuse(UNKNOWN_TOKEN));
            }
            (Some(w), _) => w,
        };
        Ok(Authenticated { arrived, weaver })
    }

    /// Stage 2: the endpoint exists, its provider is configured, the allow-list lets the
    /// method and path through, and the thread header is well-formed. An endpoint the
    /// allow-list refuses counts against the weaver (`refused`).
    pub(crate) fn route<'a>(&self, a: Authenticated<'a>) -> Result<Routed<'a>, Rejection> {
        let Authenticated { arrived, weaver } = a;
        let head = &arrived.head;
        let (method, path, query) = (&head.method, head.uri.path(), head.uri.query());
        let checked = match (&arrived.endpoint, arrived.passthrough) {
            (Endpoint::NotFound, _) => {
                return Err(Rejection::new(
                    StatusCode::NOT_FOUND,
                    ErrorKind::NotFound,
                    format!(
                        "loom proxy: no route {method} {path}; it serves /v1/messages, /v1/messages/count_tokens, /v1/chat/completions, /v1/responses, /v1/models and /proxy/PROVIDER/..."
                    ),
                ));
            }
            (Endpoint::Passthrough { provider, .. }, None) => {
                let known: Vec<&str> = self.config.providers.keys().map(String::as_str).collect();
                return Err(Rejection::new(
                    StatusCode::NOT_FOUND,
                    ErrorKind::NotFound,
                    format!("loom proxy: no provider `{provider}` is configured (configured: {})", known.join(", ")),
                ));
            }
            (Endpoint::Local, _) => Ok(None),
            (Endpoint::Passthrough { provider, rest }, Some(p)) => {
                allow::check_passthrough(provider, p.kind, p.api, &p.base_url, method, rest, query).map(Some)
            }
            (e, _) => allow::check_direct(e.family().unwrap_or(ApiFamily::OpenAi), method, path, query).map(Some),
        };
        let destination = match checked {
            Ok(None) => Destination::Local,
            Ok(Some(meter)) => Destination::Upstream { meter },
            Err(forbidden) => return Err(self.forbidden(&weaver, method, &forbidden)),
        };
        let thread = thread(&arrived.head.headers)?;
        Ok(Routed { arrived, weaver, destination, thread })
    }

    fn forbidden(&self, weaver: &Weaver, method: &http::Method, forbidden: &Forbidden) -> Rejection {
        let message = forbidden.to_string();
        tracing::info!(weaver = %weaver.id, method = %method, "proxy refused a request: {message}");
        lock(&weaver.ledger).totals.refused += 1;
        Rejection::new(StatusCode::FORBIDDEN, ErrorKind::Permission, message)
    }

    /// Stage 3: the weaver's requests-per-minute and concurrency limits (loomd's own routes
    /// count apart), then the body, read within the endpoint's size limit.
    pub(crate) async fn admit<'a, B>(&self, r: Routed<'a>, body: B) -> Result<Admitted<'a>, Rejection>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let local = r.destination == Destination::Local;
        let started = r.arrived.started;
        let entered =
            if local { lock(&r.weaver.ledger).enter_local(started) } else { lock(&r.weaver.ledger).enter(started) };
        if let Err(refusal) = entered {
            return Err(Rejection::refused(r.arrived.shape, &r.weaver.id, &refusal));
        }
        let slot = Slot { weaver: Some(r.weaver.clone()), local };
        let max = match &self.local {
            Some(routes) if local => routes.max_body_bytes().min(self.config.max_request_bytes),
            _ => self.config.max_request_bytes,
        };
        let body = read_body(body, max).await?;
        let Routed { arrived, weaver, destination, thread } = r;
        Ok(Admitted { arrived, weaver, destination, thread, body, slot })
    }

    /// loomd's own routes answer; the weaver's slot is held until they have.
    pub(crate) async fn local(&self, a: Admitted<'_>) -> Response<ProxyBody> {
        let Some(local) = &self.local else {
            return error_response(
                ApiFamily::OpenAi,
                StatusCode::NOT_FOUND,
                ErrorKind::NotFound,
                "loom proxy: no local routes are mounted",
            );
        };
        let mut head = a.arrived.head;
        for h in ["authorization", "x-api-key"] {
            head.headers.remove(h);
        }
        let resp = local.handle(a.weaver.id.clone(), Request::from_parts(head, a.body)).await;
        drop(a.slot);
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, ProxyBody::full(body))
    }
}

/// Reads a request body of at most `max` bytes: one that declares more is refused at once,
/// and one that grows past it is refused as soon as it does, not read to its end.
async fn read_body<B>(body: B, max: usize) -> Result<Bytes, Rejection>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooLarge,
            format!("loom proxy: request body is over {max} bytes, the limit of this endpoint; send less"),
        )
    };
    if body.size_hint().lower() > max as u64 {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, max).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(Rejection::invalid(format!("loom proxy: could not read the request body: {e}"))),
        Err(_) => Err(Rejection::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorKind::InvalidRequest,
            format!("loom proxy: the request body did not arrive within {BODY_READ_TIMEOUT:?}"),
        )),
    }
}
