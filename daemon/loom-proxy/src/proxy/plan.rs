//! Stage 4, [`Inner::plan`]: from an admitted request, what to send to which providers (the
//! one the route or model names, then its fallbacks), and the budget that reserves. From here
//! on a [`Call`] holds the request's accounting.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri};
use serde::Deserialize;

use super::stages::{Admitted, Destination, Rejection};
use super::{Inner, lock};
use crate::allow::Meter;
use crate::call::{Call, CallState};
use crate::charge;
use crate::config::{ApiFamily, ProviderConfig, ProxyConfig};
use crate::errors::ErrorKind;
use crate::limits::Reservation;
use crate::route::{Endpoint, pick_provider};
use crate::usage::{Usage, UsageRecord, UsageStatus};

/// Client headers never sent upstream: credentials (replaced by the real key), hop-by-hop
/// headers, and what the proxy sets itself.
const STRIPPED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "proxy-authorization",
    "cookie",
    "host",
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    // Usage is read from the response as it passes, so it must arrive uncompressed.
    "accept-encoding",
    "x-loom-thread",
    // Some servers take these as the real method: the allow-list matched the request's own.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The fields of a JSON request body the proxy decides by.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// One upstream target: a provider and the model to ask it for.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    pub(crate) provider: &'a ProviderConfig,
    pub(crate) model: Option<String>,
}

/// What a request needs to be sent (again) upstream.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) method: Method,
    pub(crate) endpoint: Endpoint,
    /// The client's URI: its path and query go upstream.
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The parsed body, when it must be rewritten (model renamed, usage asked for).
    json: Option<serde_json::Value>,
    original_model: Option<String>,
    inject_usage: bool,
    /// The API the request speaks upstream: its key header and error shape follow it.
    pub(crate) family: ApiFamily,
}

/// Stage 4's output: the call, its request, and the targets to try it on, in order.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub(crate) call: Call,
    pub(crate) out: Outgoing,
    pub(crate) targets: Vec<Target<'a>>,
    /// The shape the client's API answers in.
    pub(crate) shape: ApiFamily,
}

impl Inner {
    /// Stage 4: reads the model, the stream flag and the output bound from the body, picks
    /// the provider and the model sent to it, reserves the call's worst case from the budget,
    /// and builds what goes upstream.
    pub(crate) fn plan<'a>(self: &'a Arc<Self>, a: Admitted<'a>) -> Result<Plan<'a>, Rejection> {
        let Admitted { arrived, weaver, destination, thread, body, mut slot } = a;
        let shape = arrived.shape;
        let Destination::Upstream { meter } = destination else {
            return Err(Rejection::internal());
        };
        let endpoint = arrived.endpoint;
        let is_post_json = body.first() == Some(&b'{');
        let peek = if is_post_json {
            match serde_json::from_slice::<Peek>(&body) {
                Ok(p) => Some(p),
                Err(e) if endpoint.routes_by_model() => {
                    return Err(Rejection::new(
                        StatusCode::BAD_REQUEST,
                        ErrorKind::InvalidRequest,
                        format!("loom proxy: request body is not valid JSON: {e}"),
                    ));
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let model: Option<&str> = peek.as_ref().and_then(|p| p.model.as_deref());
        if model.is_some_and(|m| m.len() > 256) {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidRequest,
                "loom proxy: model names are at most 256 characters",
            ));
        }
        let (provider, upstream_model) = self.pick(&endpoint, arrived.passthrough, model)?;
        let family = endpoint.family().unwrap_or(provider.api);

        let streaming = peek.as_ref().and_then(|p| p.stream).unwrap_or(false);
        let chat_like = match &endpoint {
            Endpoint::OpenAiChat => true,
            Endpoint::Passthrough { rest, .. } => rest.ends_with("/chat/completions"),
            _ => false,
        };
        let inject_usage = chat_like
            && streaming
            && peek.as_ref().and_then(|p| p.stream_options.as_ref()).and_then(|s| s.include_usage) != Some(true);

        let output_bound = peek.as_ref().and_then(|p| p.max_tokens.or(p.max_completion_tokens).or(p.max_output_tokens));
        let want = reservation(&self.config, meter, output_bound, upstream_model, body.len());
        let reserved = lock(&weaver.ledger).reserve(want);
        let reservation = reserved.map_err(|refusal| Rejection::refused(shape, &weaver.id, &refusal))?;

        // From here on the Call owns the slot and settles it.
        slot.disarm();
        let original_model = model.map(str::to_string);
        let upstream_model = upstream_model.map(str::to_string);
        let call = Call {
            state: Some(CallState {
                inner: self.clone(),
                weaver: weaver.clone(),
                reservation,
                meter,
                request_bytes: body.len(),
                upstream_status: None,
                reached: false,
                attempt_out: false,
                record: UsageRecord {
                    weaver: weaver.id.clone(),
                    thread,
                    provider: provider.name.clone(),
                    model: upstream_model.clone().unwrap_or_default(),
                    endpoint: arrived.head.uri.path().to_string(),
                    usage: Usage::default(),
                    usage_reported: false,
                    cost_usd: 0.0,
                    status: UsageStatus::Ok,
                    http_status: 0,
                    attempts: 0,
                    started_at: arrived.started_at,
                    time_to_first_byte: Duration::ZERO,
                    latency: Duration::ZERO,
                },
                started: arrived.started,
            }),
        };

        let headers = forwarded_headers(&arrived.head.headers, family, &self.config.anthropic_version);
        let needs_json = inject_usage
            || upstream_model != original_model
            || has_fallbacks(&self.config, provider, upstream_model.as_deref());
        let json =
            if needs_json && is_post_json { serde_json::from_slice::<serde_json::Value>(&body).ok() } else { None };
        drop(peek);
        let mut targets = vec![Target { provider, model: upstream_model.clone() }];
        targets.extend(fallback_targets(&self.config, provider, upstream_model.as_deref()));
        let head = arrived.head;
        let out = Outgoing {
            method: head.method,
            endpoint,
            uri: head.uri,
            headers,
            body,
            json,
            original_model,
            inject_usage,
            family,
        };
        Ok(Plan { call, out, targets, shape })
    }

    /// The provider that serves the request and the model it is asked for: the one a
    /// `/proxy/NAME/` path names, else the one the model's `provider/` prefix or the endpoint's
    /// default names.
    fn pick<'a, 'm>(
        &'a self,
        endpoint: &Endpoint,
        passthrough: Option<&'a ProviderConfig>,
        model: Option<&'m str>,
    ) -> Result<(&'a ProviderConfig, Option<&'m str>), Rejection> {
        if let Endpoint::Passthrough { .. } = endpoint {
            return passthrough.map(|p| (p, model)).ok_or_else(Rejection::internal);
        }
        let family = endpoint.family().unwrap_or(ApiFamily::OpenAi);
        let by_model = if endpoint.routes_by_model() { model } else { None };
        match pick_provider(&self.config, family, by_model) {
            Ok((name, m)) => match self.config.providers.get(name) {
                Some(p) => Ok((p, if endpoint.routes_by_model() { m } else { None })),
                None => Err(Rejection::internal()),
            },
            Err(msg) => Err(Rejection::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, format!("loom proxy: {msg}"))),
        }
    }
}

/// The budget a call reserves: its worst case. A generating call is priced at its output
/// bound (`max_tokens`, else the configured default) and its estimated input; one without a
/// `model` in its body (Vertex-style URLs name it in the path) at the default price. Any
/// other call reserves the floor it is charged when no usage comes back.
fn reservation(
    config: &ProxyConfig,
    meter: Meter,
    output_bound: Option<u64>,
    model: Option<&str>,
    body_len: usize,
) -> Reservation {
    match meter {
        Meter::Generate => {
            let out = output_bound.unwrap_or(config.default_output_tokens);
            let price = config.prices.price_for(model.unwrap_or(""));
            let est = Usage { input_tokens: charge::estimated_input(body_len), output_tokens: out, ..Usage::default() };
            Reservation { tokens: est.total(), usd: price.cost(&est) }
        }
        Meter::Flat => {
            let (usage, usd) = charge::floor(&config.prices, body_len);
            Reservation { tokens: usage.total(), usd }
        }
    }
}

/// The client's headers that go upstream: not its credentials, not hop-by-hop ones (also
/// those its `Connection` names), with `anthropic-version` added where Anthropic needs it.
fn forwarded_headers(client: &HeaderMap, family: ApiFamily, anthropic_version: &str) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(client.len() + 2);
    let connection_listed: Vec<String> = client
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in client {
        let n = name.as_str();
        if STRIPPED_REQUEST_HEADERS.contains(&n) || connection_listed.iter().any(|c| c == n) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if family == ApiFamily::Anthropic
        && !headers.contains_key("anthropic-version")
        && let Ok(v) = HeaderValue::from_str(anthropic_version)
    {
        headers.insert("anthropic-version", v);
    }
    headers
}

fn has_fallbacks(config: &ProxyConfig, provider: &ProviderConfig, model: Option<&str>) -> bool {
    !config.fallbacks.is_empty()
        && (config.fallbacks.contains_key(&provider.name)
            || model.is_some_and(|m| config.fallbacks.contains_key(&format!("{}/{m}", provider.name))))
}

/// `[proxy.fallbacks]` for the provider and model: the `provider/model` entry, else the
/// provider's.
fn fallback_targets<'a>(config: &'a ProxyConfig, provider: &ProviderConfig, model: Option<&str>) -> Vec<Target<'a>> {
    if config.fallbacks.is_empty() {
        return Vec::new();
    }
    let list = model
        .and_then(|m| config.fallbacks.get(&format!("{}/{m}", provider.name)))
        .or_else(|| config.fallbacks.get(&provider.name));
    list.into_iter()
        .flatten()
        .filter_map(|(p, m)| config.providers.get(p).map(|provider| Target { provider, model: Some(m.clone()) }))
        .collect()
}

impl Outgoing {
    /// The body for a target asking for `model`: the client's bytes when nothing changes.
    pub(crate) fn body_for(&self, model: Option<&str>) -> Bytes {
        let Some(json) = &self.json else {
            return self.body.clone();
        };
        if !self.inject_usage && model == self.original_model.as_deref() {
            return self.body.clone();
        }
        let mut v = json.clone();
        if let Some(obj) = v.as_object_mut() {
            if let Some(m) = model {
                obj.insert("model".into(), serde_json::Value::String(m.to_string()));
            }
            if self.inject_usage {
                let so = obj.entry("stream_options").or_insert_with(|| serde_json::json!({}));
                if let Some(so) = so.as_object_mut() {
                    so.insert("include_usage".into(), serde_json::Value::Bool(true));
                }
            }
        }
        serde_json::to_vec(&v).map(Bytes::from).unwrap_or_else(|_| self.body.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_drop_credentials_and_hop_by_hop_ones() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-api-key", "loom-wv-token"),
            ("authorization", "Bearer loom-wv-token"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("accept-encoding", "gzip"),
            ("x-http-method-override", "DELETE"),
            ("x-loom-thread", "t1"),
            ("anthropic-beta", "tools"),
            ("content-type", "application/json"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        let names = |h: &HeaderMap| h.keys().map(|k| k.as_str().to_string()).collect::<Vec<_>>();
        let out = forwarded_headers(&h, ApiFamily::Anthropic, "2023-06-01");
        assert_eq!(names(&out), ["anthropic-beta", "content-type", "anthropic-version"]);
        assert_eq!(out["anthropic-version"], "2023-06-01");
        assert_eq!(names(&forwarded_headers(&h, ApiFamily::OpenAi, "2023-06-01")), ["anthropic-beta", "content-type"]);
    }
}
