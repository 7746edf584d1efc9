//! Routing, pure: which endpoint a path is, which provider serves it, the model to send, the
//! upstream path.

use crate::config::{ApiFamily, BaseUrl, ProxyConfig};

/// The proxy's routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/messages`
    AnthropicMessages,
    /// `/v1/messages/count_tokens`
    AnthropicCountTokens,
    /// `/v1/models...` asked with Anthropic headers
    AnthropicModels,
    /// `/v1/chat/completions`
    OpenAiChat,
    /// `/v1/responses...`
    OpenAiResponses,
    /// `/v1/models...`
    OpenAiModels,
    /// `/proxy/{provider}/{rest}`: sent to `{base_url}/{rest}` untouched, if [`crate::allow`]
    /// lets it through.
    Passthrough {
        provider: String,
        rest: String,
    },
    /// `/loom/...`: loomd's own routes.
    Local,
    NotFound,
}

impl Endpoint {
    /// `path` without the query; `anthropic_headers` when the client sent `anthropic-version`.
    pub fn classify(path: &str, anthropic_headers: bool) -> Self {
        match path {
            "/v1/messages" => Self::AnthropicMessages,
            "/v1/messages/count_tokens" => Self::AnthropicCountTokens,
            "/v1/chat/completions" => Self::OpenAiChat,
            p if p == "/v1/responses" || p.starts_with("/v1/responses/") => Self::OpenAiResponses,
            p if p == "/v1/models" || p.starts_with("/v1/models/") => {
                if anthropic_headers {
                    Self::AnthropicModels
                } else {
                    Self::OpenAiModels
                }
            }
            p if p == "/loom" || p.starts_with("/loom/") => Self::Local,
            p => match p.strip_prefix("/proxy/") {
                Some(rest) => {
                    let (provider, rest) = rest.split_once('/').unwrap_or((rest, ""));
                    if provider.is_empty() {
                        Self::NotFound
                    } else {
                        Self::Passthrough { provider: provider.to_string(), rest: format!("/{rest}") }
                    }
                }
                None => Self::NotFound,
            },
        }
    }

    /// The protocol of this endpoint's requests; `None` for passthrough (the provider's).
    pub fn family(&self) -> Option<ApiFamily> {
        match self {
            Self::AnthropicMessages | Self::AnthropicCountTokens | Self::AnthropicModels => Some(ApiFamily::Anthropic),
            Self::OpenAiChat | Self::OpenAiResponses | Self::OpenAiModels => Some(ApiFamily::OpenAi),
            _ => None,
        }
    }

    /// Whether its JSON body names a `model` that routes the request.
    pub fn routes_by_model(&self) -> bool {
        matches!(self, Self::AnthropicMessages | Self::AnthropicCountTokens | Self::OpenAiChat | Self::OpenAiResponses)
    }
}

/// The provider and upstream model a model name selects: a `provider/` prefix naming a
/// configured provider wins and is stripped; anything else goes to the endpoint's default
/// provider unchanged (so `meta-llama/llama-3` reaches an OpenRouter default as is).
pub fn pick_provider<'c, 'm>(
    config: &'c ProxyConfig,
    family: ApiFamily,
    model: Option<&'m str>,
) -> Result<(&'c str, Option<&'m str>), String> {
    if let Some(m) = model
        && let Some((prefix, rest)) = m.split_once('/')
        && !rest.is_empty()
        && let Some((name, _)) = config.providers.get_key_value(prefix)
    {
        return Ok((name.as_str(), Some(rest)));
    }
    let default = match family {
        ApiFamily::Anthropic => config.default_anthropic_provider.as_deref(),
        ApiFamily::OpenAi => config.default_openai_provider.as_deref(),
    };
    match default {
        Some(p) => Ok((p, model)),
        None => Err(format!(
            "no provider serves this endpoint: configure [providers.{}] in loomd's config, or prefix the model with a configured provider (PROVIDER/MODEL)",
            match family {
                ApiFamily::Anthropic => "anthropic",
                ApiFamily::OpenAi => "openai",
            }
        )),
    }
}

/// Path (and query) to request upstream. Anthropic endpoints append the full path to the base
/// URL (as Anthropic SDKs do); OpenAI endpoints append it to a bare host but replace the `/v1`
/// of the path by a base URL's own path (`https://openrouter.ai/api/v1`,
/// `https://api.z.ai/api/paas/v4`, `http://host:11434/v1`), as OpenAI SDKs do; passthrough
/// appends `rest` verbatim.
pub fn upstream_path(base: &BaseUrl, endpoint: &Endpoint, path: &str, query: Option<&str>) -> String {
    let tail = match endpoint {
        Endpoint::Passthrough { rest, .. } => rest.as_str(),
        e if e.family() == Some(ApiFamily::OpenAi) && !base.path.is_empty() => path.strip_prefix("/v1").unwrap_or(path),
        _ => path,
    };
    let mut s = String::with_capacity(base.path.len() + tail.len() + 32);
    s.push_str(&base.path);
    s.push_str(tail);
    if s.is_empty() {
        s.push('/');
    }
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config() -> ProxyConfig {
        let t: toml::Table = r#"
            [anthropic]
            secret = "a"
            [openai]
            secret = "o"
            [openrouter]
            secret = "r"
            [zai]
            secret = "z"
        "#
        .parse()
        .unwrap();
        let p: BTreeMap<String, toml::Table> = t.into_iter().map(|(k, v)| (k, v.as_table().unwrap().clone())).collect();
        ProxyConfig::from_toml(&p, &toml::Table::new()).unwrap()
    }

    #[test]
    fn classify_paths() {
        let check = |p: &str, h: bool, e: Endpoint| assert_eq!(Endpoint::classify(p, h), e, "{p}");
        check("/v1/messages", false, Endpoint::AnthropicMessages);
        check("/v1/messages/count_tokens", true, Endpoint::AnthropicCountTokens);
        check("/v1/chat/completions", false, Endpoint::OpenAiChat);
        check("/v1/responses", false, Endpoint::OpenAiResponses);
        check("/v1/responses/resp_1", false, Endpoint::OpenAiResponses);
        check("/v1/models", false, Endpoint::OpenAiModels);
        check("/v1/models", true, Endpoint::AnthropicModels);
        check("/loom/events", false, Endpoint::Local);
        check(
            "/proxy/openai/v1/embeddings",
            false,
            Endpoint::Passthrough { provider: "openai".into(), rest: "/v1/embeddings".into() },
        );
        check("/proxy/zai", false, Endpoint::Passthrough { provider: "zai".into(), rest: "/".into() });
        check("/proxy/", false, Endpoint::NotFound);
        check("/v2/messages", false, Endpoint::NotFound);
        check("/loomx", false, Endpoint::NotFound);
    }

    #[test]
    fn model_prefix_routes_and_is_stripped() {
        let c = config();
        let check = |fam, m: Option<&str>, want: (&str, Option<&str>)| {
            assert_eq!(pick_provider(&c, fam, m).unwrap(), want, "{m:?}")
        };
        check(ApiFamily::Anthropic, Some("claude-sonnet-4"), ("anthropic", Some("claude-sonnet-4")));
        check(
            ApiFamily::OpenAi,
            Some("openrouter/anthropic/claude-sonnet-4"),
            ("openrouter", Some("anthropic/claude-sonnet-4")),
        );
        check(ApiFamily::OpenAi, Some("meta-llama/llama-3"), ("openai", Some("meta-llama/llama-3")));
        check(ApiFamily::OpenAi, Some("zai/glm-4.6"), ("zai", Some("glm-4.6")));
        check(ApiFamily::OpenAi, Some("zai/"), ("openai", Some("zai/")));
        check(ApiFamily::OpenAi, None, ("openai", None));
    }

    #[test]
    fn upstream_paths() {
        let c = config();
        let p = |prov: &str, e: &Endpoint, path: &str, q| upstream_path(&c.providers[prov].base_url, e, path, q);
        assert_eq!(
            p("anthropic", &Endpoint::AnthropicMessages, "/v1/messages", Some("beta=true")),
            "/v1/messages?beta=true"
        );
        assert_eq!(p("openai", &Endpoint::OpenAiChat, "/v1/chat/completions", None), "/v1/chat/completions");
        assert_eq!(p("openrouter", &Endpoint::OpenAiChat, "/v1/chat/completions", None), "/api/v1/chat/completions");
        assert_eq!(p("zai", &Endpoint::OpenAiChat, "/v1/chat/completions", None), "/api/paas/v4/chat/completions");
        let pt = Endpoint::Passthrough { provider: "openrouter".into(), rest: "/models".into() };
        assert_eq!(p("openrouter", &pt, "/proxy/openrouter/models", None), "/api/v1/models");
    }
}
