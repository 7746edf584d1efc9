//! The proxy's configuration: `[providers.NAME]` tables and the `[proxy]` table of loomd's
//! config file. Parsing is pure; every unknown key is an error that names the table and key.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::limits::WeaverLimits;
pub use crate::prices::{Price, PriceTable};

/// Which wire protocol a request or a provider speaks. The proxy never translates between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiFamily {
    /// Anthropic Messages (`/v1/messages`, `x-api-key`, SSE with `event:` lines).
    Anthropic,
    /// OpenAI Chat Completions / Responses (`Authorization: Bearer`, `data:` chunks, `[DONE]`).
    OpenAi,
}

/// The kind of a provider: decides defaults (base URL, wire protocol, authentication).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    Anthropic,
    OpenAi,
    OpenRouter,
    /// Google Vertex AI; the secret is a service-account JSON exchanged for an OAuth token.
    Vertex,
    Zai,
    /// Any OpenAI-compatible server (Ollama, vLLM, llama.cpp); the secret is optional.
    OpenAiCompatible,
}

impl ProviderKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "anthropic" => Self::Anthropic,
            "openai" => Self::OpenAi,
            "openrouter" => Self::OpenRouter,
            "vertex" => Self::Vertex,
            "zai" | "z.ai" => Self::Zai,
            "openai-compatible" => Self::OpenAiCompatible,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::OpenAi => "openai",
            Self::OpenRouter => "openrouter",
            Self::Vertex => "vertex",
            Self::Zai => "zai",
            Self::OpenAiCompatible => "openai-compatible",
        }
    }

    fn default_base_url(self) -> Option<&'static str> {
        match self {
            Self::Anthropic => Some("https://api.anthropic.com"),
            Self::OpenAi => Some("https://api.openai.com"),
            Self::OpenRouter => Some("https://openrouter.ai/api/v1"),
            Self::Zai => Some("https://api.z.ai/api/paas/v4"),
            Self::Vertex | Self::OpenAiCompatible => None,
        }
    }

    fn default_api(self) -> ApiFamily {
        match self {
            Self::Anthropic => ApiFamily::Anthropic,
            _ => ApiFamily::OpenAi,
        }
    }
}

/// Scheme, authority and path prefix of a provider's base URL, validated once at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash; empty for `https://host`.
    pub path: String,
}

impl BaseUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL ({e})"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| format!("`{s}` has no scheme; write https://HOST[/PATH]"))?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(format!("`{s}` must be http:// or https://"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| format!("`{s}` has no host"))?;
        if uri.query().is_some() {
            return Err(format!("`{s}` must not have a query string"));
        }
        let path = uri.path().trim_end_matches('/').to_string();
        Ok(Self { scheme, authority, path })
    }
}

/// One `[providers.NAME]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// The protocol its base URL speaks; from `api`, else from `kind`.
    pub api: ApiFamily,
    pub base_url: BaseUrl,
    /// Dotted key path of its API key (or Vertex service-account JSON) in the SOPS file.
    pub secret: Option<String>,
    /// Vertex only: the OAuth token endpoint (defaults to Google's).
    pub token_url: Option<String>,
    /// PEM file of the CA(s) to trust for this provider instead of the public web roots (a
    /// self-hosted server behind a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

/// `[proxy.retry]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// Attempts per upstream target, first one included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A `retry-after` longer than this is not waited for: the error goes to the client.
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// The whole proxy configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Provider used by `/v1/messages` when the model has no `provider/` prefix.
    pub default_anthropic_provider: Option<String>,
    /// Provider used by `/v1/chat/completions`, `/v1/responses`, `/v1/models` likewise.
    pub default_openai_provider: Option<String>,
    pub default_limits: WeaverLimits,
    pub prices: PriceTable,
    pub retry: RetryConfig,
    /// `provider` or `provider/model` → ordered `provider/model` targets tried when it fails.
    pub fallbacks: BTreeMap<String, Vec<(String, String)>>,
    /// Output tokens assumed for a budget reservation when a request sets no `max_tokens`.
    pub default_output_tokens: u64,
    pub max_request_bytes: usize,
    /// How long to wait for an upstream's response headers before retrying.
    pub first_byte_timeout: Duration,
    /// How long a response body may send nothing before it is treated as cut.
    pub stream_idle_timeout: Duration,
    pub anthropic_version: String,
}

/// Why a configuration was refused; the message names the table and key.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("[providers.{provider}]: {message}")]
    Provider { provider: String, message: String },
    #[error("[proxy]: {0}")]
    Proxy(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    base_url: Option<String>,
    secret: Option<String>,
    kind: Option<String>,
    api: Option<String>,
    token_url: Option<String>,
    ca_file: Option<std::path::PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    prices: BTreeMap<String, RawPrice>,
    #[serde(default)]
    fallbacks: BTreeMap<String, Vec<String>>,
    default_anthropic_provider: Option<String>,
    default_openai_provider: Option<String>,
    default_output_tokens: Option<u64>,
    max_request_bytes: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    stream_idle_timeout_ms: Option<u64>,
    anthropic_version: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_tokens: Option<u64>,
    max_usd: Option<f64>,
    requests_per_minute: Option<u32>,
    max_concurrent: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    base_delay_ms: Option<u64>,
    max_delay_ms: Option<u64>,
    max_retry_after_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: f64,
    output: f64,
    cache_read: Option<f64>,
    cache_write: Option<f64>,
}

fn perr(provider: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Provider { provider: provider.to_string(), message: message.into() }
}

fn xerr(message: impl Into<String>) -> ConfigError {
    ConfigError::Proxy(message.into())
}

/// `0` in the config file means "no limit".
fn nonzero<T: PartialEq + Default>(v: Option<T>, default: Option<T>) -> Option<T> {
    match v {
        Some(v) if v == T::default() => None,
        Some(v) => Some(v),
        None => default,
    }
}

impl ProxyConfig {
    /// Default per-weaver limits when `[proxy.limits]` leaves them out.
    pub const DEFAULT_MAX_USD: f64 = 50.0;
    pub const DEFAULT_RPM: u32 = 600;
    pub const DEFAULT_CONCURRENT: u32 = 32;

    /// Parses `[providers.*]` and `[proxy]` tables of loomd's config.
    pub fn from_toml(providers: &BTreeMap<String, toml::Table>, proxy: &toml::Table) -> Result<Self, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, table) in providers {
            out.insert(name.clone(), parse_provider(name, table)?);
        }
        let raw: RawProxy = proxy.clone().try_into().map_err(|e| xerr(clean_toml(e)))?;

        let default_limits = WeaverLimits {
            max_tokens: nonzero(raw.limits.max_tokens, None),
            max_usd: match raw.limits.max_usd {
                Some(v) if !v.is_finite() || v < 0.0 => {
                    return Err(xerr(format!("limits.max_usd = {v} must be a non-negative number (0 = unlimited)")));
                }
                v => nonzero(v, Some(Self::DEFAULT_MAX_USD)),
            },
            requests_per_minute: nonzero(raw.limits.requests_per_minute, Some(Self::DEFAULT_RPM)),
            max_concurrent: nonzero(raw.limits.max_concurrent, Some(Self::DEFAULT_CONCURRENT)),
        };

        let mut prices = PriceTable::default();
        for (model, p) in raw.prices {
            let price = Price {
                input: p.input,
                output: p.output,
                cache_read: p.cache_read.unwrap_or(p.input * 0.1),
                cache_write: p.cache_write.unwrap_or(p.input * 1.25),
            };
            for v in [price.input, price.output, price.cache_read, price.cache_write] {
                if !v.is_finite() || v < 0.0 {
                    return Err(xerr(format!(
                        "prices.\"{model}\": prices are USD per million tokens and must be non-negative numbers, got {v}"
                    )));
                }
            }
            if model == "default" {
                prices.default = price;
            } else {
                prices.models.insert(model, price);
            }
        }

        let d = RetryConfig::default();
        let retry = RetryConfig {
            max_attempts: raw.retry.max_attempts.unwrap_or(d.max_attempts).max(1),
            base_delay: raw.retry.base_delay_ms.map(Duration::from_millis).unwrap_or(d.base_delay),
            max_delay: raw.retry.max_delay_ms.map(Duration::from_millis).unwrap_or(d.max_delay),
            max_retry_after: raw.retry.max_retry_after_ms.map(Duration::from_millis).unwrap_or(d.max_retry_after),
        };

        let mut fallbacks = BTreeMap::new();
        for (from, targets) in raw.fallbacks {
            let from_provider = from.split('/').next().unwrap_or_default();
            if !out.contains_key(from_provider) {
                return Err(xerr(format!(
                    "fallbacks.\"{from}\": no provider `{from_provider}` is configured; keys are PROVIDER or PROVIDER/MODEL"
                )));
            }
            let mut list = Vec::new();
            for t in targets {
                let Some((p, m)) = t.split_once('/') else {
                    return Err(xerr(format!("fallbacks.\"{from}\": target `{t}` must be PROVIDER/MODEL")));
                };
                if !out.contains_key(p) || m.is_empty() {
                    return Err(xerr(format!("fallbacks.\"{from}\": target `{t}` names no configured provider")));
                }
                list.push((p.to_string(), m.to_string()));
            }
            fallbacks.insert(from, list);
        }

        let pick_default =
            |explicit: Option<String>, named: &str, api: ApiFamily| -> Result<Option<String>, ConfigError> {
                if let Some(p) = explicit {
                    if !out.contains_key(&p) {
                        return Err(xerr(format!("default provider `{p}` is not configured")));
                    }
                    return Ok(Some(p));
                }
                if out.contains_key(named) {
                    return Ok(Some(named.to_string()));
                }
                Ok(out.values().find(|p| p.api == api).map(|p| p.name.clone()))
            };
        let default_anthropic_provider =
            pick_default(raw.default_anthropic_provider, "anthropic", ApiFamily::Anthropic)?;
        let default_openai_provider = pick_default(raw.default_openai_provider, "openai", ApiFamily::OpenAi)?;

        let anthropic_version = raw.anthropic_version.unwrap_or_else(|| "2023-06-01".to_string());
        if http::HeaderValue::from_str(&anthropic_version).is_err() {
            return Err(xerr("anthropic_version is not a valid header value"));
        }

        Ok(Self {
            providers: out,
            default_anthropic_provider,
            default_openai_provider,
            default_limits,
            prices,
            retry,
            fallbacks,
            default_output_tokens: raw.default_output_tokens.unwrap_or(4096),
            max_request_bytes: raw.max_request_bytes.unwrap_or(32 * 1024 * 1024).min(usize::MAX as u64) as usize,
            first_byte_timeout: Duration::from_millis(raw.first_byte_timeout_ms.unwrap_or(600_000)),
            stream_idle_timeout: Duration::from_millis(raw.stream_idle_timeout_ms.unwrap_or(300_000).max(1)),
            anthropic_version,
        })
    }
}

fn clean_toml(e: toml::de::Error) -> String {
    e.message().trim().to_string()
}

fn parse_provider(name: &str, table: &toml::Table) -> Result<ProviderConfig, ConfigError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        return Err(perr(name, "provider names may only hold letters, digits, '-', '_' and '.'"));
    }
    let raw: RawProvider = table.clone().try_into().map_err(|e| perr(name, clean_toml(e)))?;
    let kind = match &raw.kind {
        Some(k) => ProviderKind::parse(k).ok_or_else(|| {
            perr(
                name,
                format!(
                    "kind = \"{k}\" is unknown; use anthropic, openai, openrouter, vertex, zai or openai-compatible"
                ),
            )
        })?,
        None => ProviderKind::parse(name).ok_or_else(|| {
            perr(
                name,
                "set kind = \"anthropic\"|\"openai\"|\"openrouter\"|\"vertex\"|\"zai\"|\"openai-compatible\" (it can only be guessed from those names)",
            )
        })?,
    };
    let api = match raw.api.as_deref() {
        None => kind.default_api(),
        Some("anthropic") => ApiFamily::Anthropic,
        Some("openai") => ApiFamily::OpenAi,
        Some(other) => {
            return Err(perr(name, format!("api = \"{other}\" is unknown; use \"anthropic\" or \"openai\"")));
        }
    };
    let base = match raw.base_url.as_deref().or(kind.default_base_url()) {
        Some(b) => b,
        None => {
            return Err(perr(name, format!("base_url is required for kind {}", kind.as_str())));
        }
    };
    let base_url = BaseUrl::parse(base).map_err(|m| perr(name, format!("base_url: {m}")))?;
    if raw.secret.is_none() && kind != ProviderKind::OpenAiCompatible {
        return Err(perr(name, "secret (the key path of its API key in the SOPS file) is required"));
    }
    if let Some(s) = &raw.secret
        && (s.is_empty() || s.split('.').any(str::is_empty))
    {
        return Err(perr(name, format!("secret = \"{s}\" is not a dotted key path")));
    }
    if raw.token_url.is_some() && kind != ProviderKind::Vertex {
        return Err(perr(name, "token_url only applies to kind = \"vertex\""));
    }
    if let Some(t) = &raw.token_url {
        BaseUrl::parse(t).map_err(|m| perr(name, format!("token_url: {m}")))?;
    }
    Ok(ProviderConfig {
        name: name.to_string(),
        kind,
        api,
        base_url,
        secret: raw.secret,
        token_url: raw.token_url,
        ca_file: raw.ca_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn providers(src: &str) -> BTreeMap<String, toml::Table> {
        let t: toml::Table = src.parse().unwrap();
        t.into_iter().map(|(k, v)| (k, v.as_table().unwrap().clone())).collect()
    }

    fn check_err(provs: &str, proxy: &str, expected: &str) {
        let e = ProxyConfig::from_toml(&providers(provs), &proxy.parse().unwrap()).unwrap_err();
        let s = e.to_string();
        assert!(s.contains(expected), "{s:?} does not contain {expected:?}");
    }

    #[test]
    fn defaults_from_design_example() {
        let c = ProxyConfig::from_toml(
            &providers(
                r#"
                [anthropic]
                base_url = "https://api.anthropic.com"
                secret = "anthropic_api_key"
                [openai]
                base_url = "https://api.openai.com"
                secret = "openai_api_key"
                [ollama]
                kind = "openai-compatible"
                base_url = "http://127.0.0.1:11434/v1"
                "#,
            ),
            &toml::Table::new(),
        )
        .unwrap();
        assert_eq!(c.providers["anthropic"].kind, ProviderKind::Anthropic);
        assert_eq!(c.providers["anthropic"].api, ApiFamily::Anthropic);
        assert_eq!(c.providers["openai"].api, ApiFamily::OpenAi);
        assert_eq!(c.providers["ollama"].base_url.path, "/v1");
        assert_eq!(c.providers["ollama"].secret, None);
        assert_eq!(c.default_anthropic_provider.as_deref(), Some("anthropic"));
        assert_eq!(c.default_openai_provider.as_deref(), Some("openai"));
        assert_eq!(c.default_limits.max_usd, Some(50.0));
        assert_eq!(c.default_limits.max_tokens, None);
        assert_eq!(c.retry.max_attempts, 3);
    }

    #[test]
    fn proxy_table_parses_and_zero_means_unlimited() {
        let c = ProxyConfig::from_toml(
            &providers("[anthropic]\nsecret = \"a.b\"\n[openrouter]\nsecret = \"or\""),
            &r#"
            default_output_tokens = 1000
            [limits]
            max_tokens = 1000000
            max_usd = 0
            requests_per_minute = 10
            [retry]
            max_attempts = 5
            base_delay_ms = 10
            [prices."my-model"]
            input = 1.0
            output = 2.0
            [prices.default]
            input = 9.0
            output = 9.0
            [fallbacks]
            "anthropic/claude-opus-4" = ["openrouter/anthropic/claude-opus-4"]
            "#
            .parse()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.default_limits.max_tokens, Some(1_000_000));
        assert_eq!(c.default_limits.max_usd, None);
        assert_eq!(c.default_limits.requests_per_minute, Some(10));
        assert_eq!(c.retry.max_attempts, 5);
        assert_eq!(c.retry.base_delay, Duration::from_millis(10));
        assert_eq!(c.prices.price_for("my-model").cache_read, 0.1);
        assert_eq!(c.prices.price_for("unknown").input, 9.0);
        assert_eq!(
            c.fallbacks["anthropic/claude-opus-4"],
            vec![("openrouter".to_string(), "anthropic/claude-opus-4".to_string())]
        );
        assert_eq!(c.providers["openrouter"].base_url.path, "/api/v1");
        assert_eq!(c.default_openai_provider.as_deref(), Some("openrouter"));
    }

    #[test]
    fn errors_name_table_and_key() {
        check_err("[anthropic]\nsecret = \"k\"\nbase_ur = \"x\"", "", "[providers.anthropic]: unknown field `base_ur`");
        check_err("[anthropic]\nsecret = \"k\"", "colour = 1", "unknown field `colour`");
        check_err("[anthropic]\nsecret = \"k\"", "[limits]\nmax_dollars = 1", "unknown field `max_dollars`");
        check_err("[mine]\nsecret = \"k\"", "", "[providers.mine]: set kind");
        check_err("[x]\nkind = \"bedrock\"\nsecret = \"k\"", "", "kind = \"bedrock\" is unknown");
        check_err("[openai]\nbase_url = \"https://a\"", "", "secret (the key path");
        check_err("[openai]\nsecret = \"k\"\nbase_url = \"ftp://x\"", "", "must be http:// or https://");
        check_err("[openai]\nsecret = \"a..b\"", "", "not a dotted key path");
        check_err("[x]\nkind = \"vertex\"\nsecret = \"k\"", "", "base_url is required");
        check_err("[openai]\nsecret = \"k\"", "[fallbacks]\n\"openai\" = [\"nope/m\"]", "names no configured provider");
        check_err("[openai]\nsecret = \"k\"", "[limits]\nmax_usd = -1.0", "non-negative");
        check_err("[openai]\nsecret = \"k\"", "[prices.x]\ninput = 1.0\noutput = -2.0", "non-negative");
    }
}
