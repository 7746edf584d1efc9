//! Errors the proxy itself answers, in the shape of the API the client speaks, so an SDK shows
//! the message as it would show the provider's.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::body::ProxyBody;
use crate::config::ApiFamily;

/// The class of an error; maps to each API's own error type names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    TooLarge,
    RateLimit,
    Billing,
    Api,
    Timeout,
}

impl ErrorKind {
    fn anthropic_type(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::Permission => "permission_error",
            Self::NotFound => "not_found_error",
            Self::TooLarge => "request_too_large",
            Self::RateLimit => "rate_limit_error",
            Self::Billing => "billing_error",
            Self::Api => "api_error",
            Self::Timeout => "timeout_error",
        }
    }

    /// OpenAI's `(type, code)`.
    fn openai_type(self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::InvalidRequest => ("invalid_request_error", None),
            Self::Authentication => ("invalid_request_error", Some("invalid_api_key")),
            Self::Permission => ("invalid_request_error", Some("permission_denied")),
            Self::NotFound => ("invalid_request_error", Some("not_found")),
            Self::TooLarge => ("invalid_request_error", Some("request_too_large")),
            Self::RateLimit => ("requests", Some("rate_limit_exceeded")),
            Self::Billing => ("insufficient_quota", Some("insufficient_quota")),
            Self::Api => ("server_error", None),
            Self::Timeout => ("server_error", Some("timeout")),
        }
    }
}

/// The JSON error body of `shape`.
pub fn error_json(shape: ApiFamily, kind: ErrorKind, message: &str) -> Bytes {
    let v = match shape {
        ApiFamily::Anthropic => json!({
            "type": "error",
            "error": { "type": kind.anthropic_type(), "message": message },
        }),
        ApiFamily::OpenAi => {
            let (ty, code) = kind.openai_type();
            json!({
                "error": { "message": message, "type": ty, "param": null, "code": code },
            })
        }
    };
    Bytes::from(v.to_string())
}

pub fn error_response(shape: ApiFamily, status: StatusCode, kind: ErrorKind, message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(error_json(shape, kind, message)));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert("x-loom-proxy-error", HeaderValue::from_static("1"));
    r
}

/// The event that ends a stream which broke after its first byte went out.
pub fn stream_error_event(shape: ApiFamily, message: &str) -> Bytes {
    match shape {
        ApiFamily::Anthropic => {
            let v = json!({"type": "error", "error": {"type": "api_error", "message": message}});
            Bytes::from(format!("\n\nevent: error\ndata: {v}\n\n"))
        }
        ApiFamily::OpenAi => {
            let v = json!({"error": {"message": message, "type": "server_error", "param": null, "code": "stream_interrupted"}});
            Bytes::from(format!("\n\ndata: {v}\n\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let a: serde_json::Value =
            serde_json::from_slice(&error_json(ApiFamily::Anthropic, ErrorKind::Billing, "m")).unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "billing_error");
        let o: serde_json::Value =
            serde_json::from_slice(&error_json(ApiFamily::OpenAi, ErrorKind::Authentication, "m")).unwrap();
        assert_eq!(o["error"]["code"], "invalid_api_key");
        assert_eq!(o["error"]["message"], "m");
        let e = stream_error_event(ApiFamily::Anthropic, "cut");
        assert!(std::str::from_utf8(&e).unwrap().contains("event: error\ndata: {"));
    }
}
