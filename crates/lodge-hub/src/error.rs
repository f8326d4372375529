//! The HTTP error type of every route: a failure becomes `{"error":{"code","message"}}` with the
//! right status and headers; on the MCP endpoint the body is a JSON-RPC error instead (built
//! by `mcp::jsonrpc`, or here for failures before the protocol, such as a bad token).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `Retry-After` (seconds) of a 429 whose cause names no wait of its own.
const DEFAULT_RETRY_AFTER_S: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credentials were sent at all (RFC 6750: the challenge carries no error code).
    #[error("{0}")]
    NoCredentials(String),
    /// Credentials were sent and are not valid.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// The token is valid but lacks a scope: `scope` lists every scope the request needs
    /// (RFC 6750 `insufficient_scope`, a 403).
    #[error("{message}")]
    InsufficientScope { message: String, scope: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// The method has no handler; `allow` lists those that do (the `Allow` header).
    #[error("{message}")]
    MethodNotAllowed {
        message: String,
        allow: &'static str,
    },
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_s: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// A JSON-RPC error message (`body`, built by `mcp::jsonrpc`) answered with `status`.
    #[error("JSON-RPC error answered with HTTP {status}")]
    JsonRpc {
        status: StatusCode,
        body: serde_json::Value,
    },
    /// The inner failure on an MCP endpoint: its status and headers, a JSON-RPC body.
    #[error(transparent)]
    Mcp(Box<ApiError>),
    /// A refusal by a protected resource whose challenge names its metadata document
    /// (RFC 9728 `resource_metadata`), so an MCP client can discover how to get a token.
    #[error("{inner}")]
    Challenged {
        inner: Box<ApiError>,
        resource_metadata: String,
    },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NoCredentials(_) | ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::JsonRpc { status, .. } => *status,
            ApiError::Mcp(inner) | ApiError::Challenged { inner, .. } => inner.status(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NoCredentials(_) | ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) | ApiError::InsufficientScope { .. } => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
            ApiError::JsonRpc { .. } => "jsonrpc",
            ApiError::Mcp(inner) | ApiError::Challenged { inner, .. } => inner.code(),
        }
    }
}

impl From<lodge_store::StoreError> for ApiError {
    fn from(e: lodge_store::StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError::Internal("storage failure; see the hub log".into())
    }
}

impl ApiError {
    /// The same failure for an MCP endpoint: status and headers kept, the body a JSON-RPC error
    /// so that MCP clients show the message to their users.
    pub fn mcp(self) -> Self {
        match self {
            ApiError::JsonRpc { .. } | ApiError::Mcp(_) => self,
            other => ApiError::Mcp(Box::new(other)),
        }
    }

    fn into_jsonrpc_response(self) -> Response {
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {"code": -32000, "message": self.to_string(), "data": {"reason": self.code()}},
        });
        self.respond(body)
    }

    /// The same failure from a protected resource whose metadata is at `resource_metadata`.
    pub fn challenged(self, resource_metadata: String) -> Self {
        match self {
            ApiError::Mcp(inner) => ApiError::Mcp(Box::new(inner.challenged(resource_metadata))),
            ApiError::Challenged { .. } => self,
            other => ApiError::Challenged {
                inner: Box::new(other),
                resource_metadata,
            },
        }
    }

    /// The `WWW-Authenticate` value of a 401 or scope 403 (RFC 6750 §3), None for others.
    fn challenge(&self, resource_metadata: Option<&str>) -> Option<String> {
        let mut c = String::from(r#"Bearer realm="lodge""#);
        if let Some(url) = resource_metadata {
            c.push_str(&format!(r#", resource_metadata="{url}""#));
        }
        match self {
            ApiError::NoCredentials(_) => {}
            ApiError::Unauthorized(_) => c.push_str(r#", error="invalid_token""#),
            ApiError::InsufficientScope { scope, .. } => {
                c.push_str(&format!(r#", error="insufficient_scope", scope="{scope}""#));
            }
            ApiError::Challenged {
                inner,
                resource_metadata,
            } => return inner.challenge(Some(resource_metadata)),
            _ => return None,
        }
        Some(c)
    }

    fn respond(self, body: serde_json::Value) -> Response {
        let mut resp = (self.status(), axum::Json(body)).into_response();
        let h = resp.headers_mut();
        if let Some(v) = self
            .challenge(None)
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        let base = match &self {
            ApiError::Challenged { inner, .. } => inner.as_ref(),
            other => other,
        };
        match base {
            ApiError::TooManyRequests { retry_after_s, .. } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                    h.insert(header::RETRY_AFTER, v);
                }
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Mcp(inner) => inner.into_jsonrpc_response(),
            ApiError::JsonRpc { status, body } => {
                let mut resp = (status, axum::Json(body)).into_response();
                // Every 429 says when to come back: a client that retries at once only adds
                // to what it was refused for.
                if status == StatusCode::TOO_MANY_REQUESTS {
                    resp.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(DEFAULT_RETRY_AFTER_S),
                    );
                }
                resp
            }
            other => {
                let body = serde_json::json!({"error": {"code": other.code(), "message": other.to_string()}});
                other.respond(body)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_429_says_when_to_retry() {
        let own = ApiError::TooManyRequests {
            message: "slow down".into(),
            retry_after_s: 7,
        };
        let rpc = ApiError::JsonRpc {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: serde_json::json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32000}}),
        };
        for (e, want) in [(own.mcp(), "7"), (rpc, "1")] {
            let r = e.into_response();
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(r.headers()[header::RETRY_AFTER], want);
        }
        let other = ApiError::JsonRpc {
            status: StatusCode::BAD_REQUEST,
            body: serde_json::json!({}),
        };
        assert!(
            !other
                .into_response()
                .headers()
                .contains_key(header::RETRY_AFTER)
        );
    }
}
