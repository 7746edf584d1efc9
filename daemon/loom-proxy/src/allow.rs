//! Which provider endpoints the proxy forwards, pure: only the inference endpoints a coding
//! agent needs, one table per API surface, matched exactly (method and path) after the path
//! and query passed a strict syntax check. Everything else a provider key can do (batches,
//! files, fine-tuning, assistants and vector stores, organisation, key and usage admin, model
//! pulls and deletes) is refused before the upstream is contacted: the key is loom's, not the
//! weaver's, and state left there outlives the weaver and is shared between weavers.

use std::fmt;

use http::Method;

use crate::config::{ApiFamily, BaseUrl, ProviderKind};

/// The endpoints a provider exposes to weavers, from its kind and API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// Anthropic Messages (any provider speaking `api = "anthropic"`).
    Anthropic,
    /// OpenAI, OpenRouter, z.ai: OpenAI-style inference endpoints.
    OpenAi,
    /// Ollama, vLLM, llama.cpp: OpenAI-style endpoints and Ollama's native inference API.
    OpenAiCompatible,
    /// Google Vertex AI: a publisher model's predict/generate verbs and the OpenAI-compatible
    /// chat endpoint, as full upstream paths.
    Vertex,
}

impl Surface {
    pub fn of(kind: ProviderKind, api: ApiFamily) -> Self {
        match (kind, api) {
            (ProviderKind::Vertex, _) => Self::Vertex,
            (_, ApiFamily::Anthropic) => Self::Anthropic,
            (ProviderKind::OpenAiCompatible, ApiFamily::OpenAi) => Self::OpenAiCompatible,
            (_, ApiFamily::OpenAi) => Self::OpenAi,
        }
    }

    /// The surface of a direct route (`/v1/...`), decided by the protocol it speaks.
    pub fn of_family(family: ApiFamily) -> Self {
        match family {
            ApiFamily::Anthropic => Self::Anthropic,
            ApiFamily::OpenAi => Self::OpenAi,
        }
    }

    fn tables(self) -> &'static [&'static [Rule]] {
        match self {
            Self::Anthropic => &[ANTHROPIC],
            Self::OpenAi => &[OPENAI],
            Self::OpenAiCompatible => &[OPENAI, OLLAMA],
            Self::Vertex => &[VERTEX],
        }
    }

    fn rules(self) -> impl Iterator<Item = &'static Rule> {
        self.tables().iter().flat_map(|t| t.iter())
    }
}

/// How an endpoint is metered when its response reports no usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meter {
    /// It generates output: reserves the request's worst case (input and `max_tokens`) and
    /// is charged that reservation when no usage comes back.
    Generate,
    /// It generates nothing (models lists, token counts, embeddings): reserves and is charged
    /// the floor ([`crate::charge`]) unless usage comes back.
    Flat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum M {
    Get,
    Post,
}

impl M {
    fn is(self, m: &Method) -> bool {
        match self {
            Self::Get => m == Method::GET,
            Self::Post => m == Method::POST,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

/// One allowed endpoint. Path patterns are `/`-separated segments: a literal, alternatives
/// `a|b`, `{}` (one identifier: a model id), or `{}:verb|verb` (an identifier and one of the
/// verbs, as in Vertex's `models/gemini-2.5-pro:generateContent`).
struct Rule(M, &'static str, Meter);

use Meter::{Flat, Generate};

const ANTHROPIC: &[Rule] = &[
    Rule(M::Post, "/v1/messages", Generate),
    Rule(M::Post, "/v1/messages/count_tokens", Flat),
    Rule(M::Get, "/v1/models", Flat),
    Rule(M::Get, "/v1/models/{}", Flat),
];

const OPENAI: &[Rule] = &[
    Rule(M::Post, "/v1/chat/completions", Generate),
    Rule(M::Post, "/v1/completions", Generate),
    Rule(M::Post, "/v1/responses", Generate),
    Rule(M::Post, "/v1/embeddings", Flat),
    Rule(M::Get, "/v1/models", Flat),
    Rule(M::Get, "/v1/models/{}", Flat),
];

/// Ollama's native API: inference and model listing only; never pull, push, create, copy or
/// delete, which change what the shared server holds.
const OLLAMA: &[Rule] = &[
    Rule(M::Post, "/api/chat", Generate),
    Rule(M::Post, "/api/generate", Generate),
    Rule(M::Post, "/api/embed", Flat),
    Rule(M::Post, "/api/embeddings", Flat),
    Rule(M::Get, "/api/tags", Flat),
    Rule(M::Post, "/api/show", Flat),
];

const VERTEX: &[Rule] = &[
    Rule(
        M::Post,
        "/v1|v1beta1/projects/{}/locations/{}/publishers/{}/models/{}:generateContent|streamGenerateContent|rawPredict|streamRawPredict|predict",
        Generate,
    ),
    Rule(M::Post, "/v1|v1beta1/projects/{}/locations/{}/publishers/{}/models/{}:countTokens", Flat),
    Rule(M::Post, "/v1|v1beta1/projects/{}/locations/{}/endpoints/openapi/chat/completions", Generate),
];

/// Why a request was refused; the message names what was refused and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forbidden {
    /// The path or query failed the syntax check.
    Path {
        path: String,
        problem: &'static str,
    },
    Query {
        problem: String,
    },
    /// A well-formed path that is not an inference endpoint of this surface.
    Endpoint {
        method: String,
        path: String,
        provider: Option<String>,
        allowed: String,
    },
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path { path, problem } => write!(
                f,
                "loom proxy: refused path {path:?}: {problem}; paths are matched exactly, so write them plainly (no `.` or `..` segments, no `//`, no percent-encoding)"
            ),
            Self::Query { problem } => write!(f, "loom proxy: refused query string: {problem}"),
            Self::Endpoint { method, path, provider, allowed } => {
                write!(f, "loom proxy: {method} {path} is not forwarded")?;
                if let Some(p) = provider {
                    write!(f, " to provider `{p}`")?;
                }
                write!(
                    f,
                    ": loom forwards only inference endpoints ({allowed}); batches, files, uploads, fine-tuning, assistants, threads, vector stores and organisation, key, project or usage endpoints are refused, as they act on loom's provider account rather than on this request"
                )
            }
        }
    }
}

/// Checks a direct route (`/v1/...` on the listener) against its protocol's table.
pub fn check_direct(family: ApiFamily, method: &Method, path: &str, query: Option<&str>) -> Result<Meter, Forbidden> {
    check_syntax(path, query)?;
    let surface = Surface::of_family(family);
    find(surface, method, path).ok_or_else(|| Forbidden::Endpoint {
        method: method.to_string(),
        path: path.to_string(),
        provider: None,
        allowed: describe(surface, None),
    })
}

/// Checks a passthrough request (`/proxy/PROVIDER` + `rest`, sent to the provider's base URL +
/// `rest`) against the provider's table.
pub fn check_passthrough(
    provider: &str,
    kind: ProviderKind,
    api: ApiFamily,
    base: &BaseUrl,
    method: &Method,
    rest: &str,
    query: Option<&str>,
) -> Result<Meter, Forbidden> {
    let client_path = format!("/proxy/{provider}{rest}");
    check_syntax(rest, query).map_err(|e| match e {
        Forbidden::Path { problem, .. } => Forbidden::Path { path: client_path.clone(), problem },
        other => other,
    })?;
    let surface = Surface::of(kind, api);
    let key = canonical(surface, api, base, rest);
    find(surface, method, &key).ok_or_else(|| Forbidden::Endpoint {
        method: method.to_string(),
        path: client_path,
        provider: Some(provider.to_string()),
        allowed: describe(surface, Some((provider, api, base))),
    })
}

/// The path a passthrough `rest` stands for in the tables. Anthropic clients append the full
/// `/v1/...` path to a base URL; OpenAI clients replace `/v1` by a base URL's own path (see
/// `route::upstream_path`), so `/proxy/openrouter/chat/completions` is `/v1/chat/completions`.
/// Vertex's tables hold full upstream paths, as its base URLs carry project and location.
fn canonical(surface: Surface, api: ApiFamily, base: &BaseUrl, rest: &str) -> String {
    match (surface, api) {
        (Surface::Vertex, _) => format!("{}{rest}", base.path),
        (_, ApiFamily::OpenAi) if !base.path.is_empty() => format!("/v1{rest}"),
        _ => rest.to_string(),
    }
}

fn find(surface: Surface, method: &Method, path: &str) -> Option<Meter> {
    surface.rules().find(|r| r.0.is(method) && matches(r.1, path)).map(|r| r.2)
}

/// The allowed endpoints as a client writes them.
fn describe(surface: Surface, passthrough: Option<(&str, ApiFamily, &BaseUrl)>) -> String {
    surface
        .rules()
        .map(|Rule(m, pattern, _)| {
            let shown = pattern.replace("{}", "{id}");
            let shown = match passthrough {
                None => shown,
                Some((name, _, _)) if surface == Surface::Vertex => format!("/proxy/{name}…{shown}"),
                Some((name, ApiFamily::OpenAi, base)) if !base.path.is_empty() => {
                    format!("/proxy/{name}{}", shown.strip_prefix("/v1").unwrap_or(&shown))
                }
                Some((name, _, _)) => format!("/proxy/{name}{shown}"),
            };
            format!("{} {shown}", m.as_str())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn matches(pattern: &str, path: &str) -> bool {
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if segment_matches(p, s) => {}
            _ => return false,
        }
    }
}

fn segment_matches(pattern: &str, seg: &str) -> bool {
    match pattern.strip_prefix("{}") {
        Some("") => is_id(seg),
        Some(verbs) => {
            let verbs = verbs.strip_prefix(':').unwrap_or(verbs);
            seg.rsplit_once(':').is_some_and(|(id, verb)| is_id(id) && verbs.split('|').any(|v| v == verb))
        }
        None => pattern.split('|').any(|alt| alt == seg),
    }
}

/// A model or resource id: `gpt-4o`, `claude-3-5-sonnet-v2@20241022`, `ft:gpt-4o:org::id`.
fn is_id(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
}

/// Query parameters that make some servers act as another method, or start an upload.
const REFUSED_QUERY_KEYS: &[&str] = &[
    "_method",
    "method",
    "$method",
    "httpmethod",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "uploadtype",
    "upload_protocol",
];

/// The path must be plain: every segment non-empty, no `.` or `..`, no percent-encoding (which
/// would let `%2e%2e` or `%2f` mean something else upstream than what was matched here), no
/// backslash, nothing outside printable ASCII. The query may not change the method.
fn check_syntax(path: &str, query: Option<&str>) -> Result<(), Forbidden> {
    let refuse = |problem| Err(Forbidden::Path { path: path.to_string(), problem });
    let Some(body) = path.strip_prefix('/') else {
        return refuse("it does not start with `/`");
    };
    if path.bytes().any(|b| b == b'%') {
        return refuse("it holds percent-encoding");
    }
    if path.bytes().any(|b| b == b'\\' || !(0x21..0x7f).contains(&b)) {
        return refuse("it holds a backslash, a space, a control or a non-ASCII character");
    }
    for seg in body.split('/') {
        match seg {
            "" => return refuse("it has an empty segment (`//` or a trailing `/`)"),
            "." | ".." => return refuse("it has a `.` or `..` segment"),
            _ => {}
        }
    }
    let Some(q) = query else { return Ok(()) };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(Forbidden::Query {
                problem: format!("parameter name {key:?} must be letters, digits, `-`, `_` or `.`"),
            });
        }
        if REFUSED_QUERY_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
            return Err(Forbidden::Query {
                problem: format!("parameter `{key}` would change the method or start an upload"),
            });
        }
    }
    if q.bytes().any(|b| b == b'\\' || b == b'#' || !(0x21..0x7f).contains(&b)) {
        return Err(Forbidden::Query { problem: "it holds a backslash, `#`, a space or a control character".into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Surface::*;

    /// `expected`: `Some(meter)` when forwarded, `None` when refused.
    fn check(surface: Surface, method: &str, path: &str, expected: Option<Meter>) {
        let method: Method = method.parse().unwrap();
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let got = check_syntax(path, query).ok().and_then(|()| find(surface, &method, path));
        assert_eq!(got, expected, "{surface:?} {method} {path} {query:?}");
    }

    #[test]
    fn anthropic() {
        check(Anthropic, "POST", "/v1/messages", Some(Generate));
        check(Anthropic, "POST", "/v1/messages?beta=true", Some(Generate));
        check(Anthropic, "POST", "/v1/messages/count_tokens", Some(Flat));
        check(Anthropic, "GET", "/v1/models", Some(Flat));
        check(Anthropic, "GET", "/v1/models/claude-sonnet-4-5?limit=5", Some(Flat));
        check(Anthropic, "GET", "/v1/messages", None);
        check(Anthropic, "POST", "/v1/messages/batches", None);
        check(Anthropic, "GET", "/v1/messages/batches/msgbatch_1/results", None);
        check(Anthropic, "POST", "/v1/files", None);
        check(Anthropic, "GET", "/v1/organizations/api_keys", None);
        check(Anthropic, "GET", "/v1/organizations/usage_report/messages", None);
        check(Anthropic, "DELETE", "/v1/models/x", None);
        check(Anthropic, "POST", "/v1/models", None);
        check(Anthropic, "POST", "/v1/chat/completions", None);
    }

    #[test]
    fn openai() {
        for p in ["/v1/chat/completions", "/v1/completions", "/v1/responses"] {
            check(OpenAi, "POST", p, Some(Generate));
            check(OpenAiCompatible, "POST", p, Some(Generate));
        }
        check(OpenAi, "POST", "/v1/embeddings", Some(Flat));
        check(OpenAi, "GET", "/v1/models", Some(Flat));
        check(OpenAi, "GET", "/v1/models/ft:gpt-4o-mini:org::abc123", Some(Flat));
        for refused in [
            "/v1/batches",
            "/v1/files",
            "/v1/uploads",
            "/v1/fine_tuning/jobs",
            "/v1/assistants",
            "/v1/threads",
            "/v1/threads/thread_1/runs",
            "/v1/vector_stores",
            "/v1/organization/admin_api_keys",
            "/v1/organization/users",
            "/v1/organization/projects",
            "/v1/organization/usage/completions",
            "/v1/responses/resp_1",
            "/v1/responses/resp_1/input_items",
            "/v1/chat/completions/chatcmpl_1",
            "/v1/models/a/b",
            "/v1/audio/speech",
            "/v1/images/generations",
            "/v1/moderations",
            "/",
            "/v1",
        ] {
            check(OpenAi, "POST", refused, None);
            check(OpenAi, "GET", refused, None);
        }
        check(OpenAi, "GET", "/v1/chat/completions", None);
        check(OpenAi, "DELETE", "/v1/models/ft:gpt-4o:org::x", None);
        check(OpenAi, "POST", "/api/chat", None);
    }

    #[test]
    fn ollama_native() {
        check(OpenAiCompatible, "POST", "/api/chat", Some(Generate));
        check(OpenAiCompatible, "POST", "/api/generate", Some(Generate));
        check(OpenAiCompatible, "POST", "/api/embed", Some(Flat));
        check(OpenAiCompatible, "POST", "/api/embeddings", Some(Flat));
        check(OpenAiCompatible, "GET", "/api/tags", Some(Flat));
        check(OpenAiCompatible, "POST", "/api/show", Some(Flat));
        for refused in ["/api/pull", "/api/push", "/api/delete", "/api/create", "/api/copy", "/api/blobs/sha256:x"] {
            check(OpenAiCompatible, "POST", refused, None);
            check(OpenAiCompatible, "DELETE", refused, None);
        }
        check(OpenAiCompatible, "GET", "/api/chat", None);
    }

    #[test]
    fn vertex() {
        let m = "/v1/projects/p-1/locations/us-east5/publishers";
        check(Vertex, "POST", &format!("{m}/google/models/gemini-2.5-pro:generateContent"), Some(Generate));
        check(
            Vertex,
            "POST",
            &format!("{m}/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse"),
            Some(Generate),
        );
        check(Vertex, "POST", &format!("{m}/anthropic/models/claude-sonnet-4@20250514:rawPredict"), Some(Generate));
        check(
            Vertex,
            "POST",
            &format!("{m}/anthropic/models/claude-sonnet-4@20250514:streamRawPredict"),
            Some(Generate),
        );
        check(Vertex, "POST", &format!("{m}/google/models/gemini-2.5-pro:countTokens"), Some(Flat));
        check(Vertex, "POST", "/v1beta1/projects/p/locations/l/endpoints/openapi/chat/completions", Some(Generate));
        check(Vertex, "POST", &format!("{m}/google/models/gemini-2.5-pro"), None);
        check(Vertex, "POST", &format!("{m}/google/models/:generateContent"), None);
        check(Vertex, "GET", &format!("{m}/google/models/gemini-2.5-pro:generateContent"), None);
        check(Vertex, "POST", "/v1/projects/p/locations/l/batchPredictionJobs", None);
        check(Vertex, "POST", "/v1/projects/p/locations/l/tuningJobs", None);
        check(Vertex, "POST", "/v1/projects/p/locations/l/cachedContents", None);
        check(Vertex, "POST", "/v1/projects/p/locations/l/endpoints/e1:predict", None);
    }

    #[test]
    fn tricks_are_refused() {
        for p in [
            "/v1/chat/completions/../../v1/files",
            "/v1/chat/completions/%2e%2e/%2e%2e/v1/files",
            "/v1/%2e%2e/v1/files",
            "/v1/chat%2fcompletions",
            "/v1/chat%2Fcompletions",
            "/v1/%63hat/completions",
            "/v1//chat/completions",
            "//v1/chat/completions",
            "/v1/chat/completions/",
            "/v1/./chat/completions",
            "/v1/chat\\completions",
            "v1/chat/completions",
            "/v1/models/..",
        ] {
            check(OpenAi, "POST", p, None);
            check(OpenAi, "GET", p, None);
        }
        for q in [
            "_method=DELETE",
            "x-http-method-override=GET",
            "$method=GET",
            "uploadType=resumable",
            "a%2fb=1",
            "=1",
            "a b=1",
        ] {
            check(OpenAi, "POST", &format!("/v1/chat/completions?{q}"), None);
        }
        check(OpenAi, "POST", "/v1/chat/completions?api-version=2024-10-21&x=%2F", Some(Generate));
    }

    #[test]
    fn passthrough_paths_are_relative_to_the_base_url() {
        let base = |s: &str| BaseUrl::parse(s).unwrap();
        let post = Method::POST;
        let pt = |kind, api, b: &str, rest: &str| {
            check_passthrough("p", kind, api, &base(b), &post, rest, None).map_err(|e| e.to_string())
        };
        use ProviderKind as K;
        assert_eq!(pt(K::OpenAi, ApiFamily::OpenAi, "https://api.openai.com", "/v1/chat/completions"), Ok(Generate));
        assert_eq!(pt(K::OpenAi, ApiFamily::OpenAi, "https://api.openai.com/v1", "/chat/completions"), Ok(Generate));
        assert_eq!(pt(K::OpenRouter, ApiFamily::OpenAi, "https://openrouter.ai/api/v1", "/embeddings"), Ok(Flat));
        assert_eq!(pt(K::Zai, ApiFamily::Anthropic, "https://api.z.ai/api/anthropic", "/v1/messages"), Ok(Generate));
        assert_eq!(pt(K::OpenAiCompatible, ApiFamily::OpenAi, "http://gpu:11434", "/api/chat"), Ok(Generate));
        assert_eq!(
            pt(
                K::Vertex,
                ApiFamily::OpenAi,
                "https://aiplatform.googleapis.com/v1/projects/p/locations/l",
                "/publishers/google/models/g:generateContent"
            ),
            Ok(Generate)
        );
        let e = pt(K::OpenRouter, ApiFamily::OpenAi, "https://openrouter.ai/api/v1", "/keys").unwrap_err();
        assert!(e.contains("POST /proxy/p/keys is not forwarded to provider `p`"), "{e}");
        assert!(e.contains("POST /proxy/p/chat/completions") && e.contains("GET /proxy/p/models/{id}"), "{e}");
        let e = pt(K::OpenAi, ApiFamily::OpenAi, "https://api.openai.com", "/v1/files").unwrap_err();
        assert!(e.contains("POST /proxy/p/v1/chat/completions") && e.contains("files"), "{e}");
        let e = pt(K::OpenAiCompatible, ApiFamily::OpenAi, "http://gpu:11434", "/api/pull").unwrap_err();
        assert!(e.contains("POST /proxy/p/api/pull is not forwarded") && e.contains("POST /proxy/p/api/chat"), "{e}");
        let e = pt(K::OpenAi, ApiFamily::OpenAi, "https://api.openai.com", "/v1/%2e%2e/files").unwrap_err();
        assert!(e.contains("refused path \"/proxy/p/v1/%2e%2e/files\": it holds percent-encoding"), "{e}");
    }

    #[test]
    fn direct_routes_name_what_is_allowed() {
        let e = check_direct(ApiFamily::OpenAi, &Method::GET, "/v1/responses/resp_1", None).unwrap_err().to_string();
        assert!(e.contains("GET /v1/responses/resp_1 is not forwarded: loom forwards only inference endpoints"), "{e}");
        assert!(e.contains("POST /v1/responses,"), "{e}");
        assert_eq!(check_direct(ApiFamily::Anthropic, &Method::GET, "/v1/models", None), Ok(Flat));
    }
}
