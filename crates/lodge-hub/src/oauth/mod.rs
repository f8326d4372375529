//! The hub as an OAuth 2.1 authorization server for MCP clients, and the protected-resource
//! side of its MCP endpoints: metadata documents (RFC 8414, RFC 9728), clients (configured,
//! registered per RFC 7591, or client ID metadata documents), `/oauth/authorize` with its consent
//! page, `/oauth/token`, `/oauth/revoke`, and the audience rule for the tokens it issues.
//! It issues `lodge_` tokens and never decides what a token may do beyond its audience: scopes
//! and roles stay with `auth` and `caller`. Every URL it names starts from `Hub::base_url`.

pub mod authorize;
pub mod client_metadata;
pub mod metadata;
pub mod register;
pub mod token;

use crate::Hub;
use crate::auth::Principal;
use crate::error::ApiError;
use lodge_core::UserName;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// The one scope the hub grants through OAuth: a client acts in its user's own room.
pub const SCOPES_SUPPORTED: [&str; 1] = ["mcp"];

/// State of grants in flight: consent pages waiting for an answer and authorization codes not
/// yet exchanged. Both live seconds to minutes, so they stay in memory (a restart only makes
/// the person approve again).
#[derive(Default)]
pub struct OAuth {
    pending: Mutex<HashMap<String, authorize::Pending>>,
    codes: Mutex<HashMap<[u8; 32], token::Code>>,
    documents: client_metadata::Cache,
}

impl OAuth {
    /// Drops expired pending consents and codes (called by the hub's maintenance tick).
    pub fn sweep(&self) {
        let now = Instant::now();
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|_, v| v.expires > now);
        }
        if let Ok(mut c) = self.codes.lock() {
            // A used code is kept past its expiry a while, so a replay is still recognised
            // (and revokes its grant) rather than looking merely unknown.
            c.retain(|_, v| v.expires + token::CODE_MEMORY > now);
        }
        self.documents.sweep(now);
    }
}

/// The discovery documents and the authorization server's endpoints.
pub fn routes() -> axum::Router<std::sync::Arc<Hub>> {
    use axum::routing::{get, post};
    // Browser-based clients (MCP Inspector) read the documents and call these endpoints from
    // their own origin; none of them acts on a cookie, so any origin may.
    let public = axum::Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(metadata::resource_root).options(preflight),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(metadata::resource_root).options(preflight),
        )
        .route(
            "/.well-known/oauth-protected-resource/user/{name}/mcp",
            get(metadata::resource_user).options(preflight),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::authorization_server).options(preflight),
        )
        .route("/oauth/token", post(token::token).options(preflight))
        .route(
            "/oauth/register",
            post(register::register).options(preflight),
        )
        .route("/oauth/revoke", post(token::revoke).options(preflight))
        .layer(axum::middleware::map_response(any_origin));
    axum::Router::new()
        .route(
            "/oauth/authorize",
            get(authorize::authorize).post(authorize::decide),
        )
        .merge(public)
}

/// May a request to `path` come from any browser origin? Only the endpoints that act on no
/// cookie: the discovery documents, token, registration and revocation. `/oauth/authorize`
/// (the consent form) keeps the hub's Origin check.
pub fn cross_origin_ok(path: &str) -> bool {
    path.starts_with("/.well-known/oauth-")
        || matches!(path, "/oauth/token" | "/oauth/register" | "/oauth/revoke")
}

async fn any_origin(mut r: axum::response::Response) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// A CORS preflight: simple methods and the headers an OAuth client sends.
async fn preflight() -> axum::response::Response {
    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::IntoResponse;
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, mcp-protocol-version"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

/// The URL of an MCP endpoint: `BASE/mcp`, or `BASE/user/NAME/mcp` for `target` NAME.
pub fn endpoint_url(base: &str, target: Option<&str>) -> String {
    match target {
        None => format!("{base}/mcp"),
        Some(name) => format!("{base}/user/{name}/mcp"),
    }
}

/// Where an MCP endpoint's protected resource metadata is (RFC 9728 §3.1: the well-known
/// name inserted before the endpoint's path).
pub fn resource_metadata_url(base: &str, target: Option<&str>) -> String {
    // A name that is not a user name has no metadata of its own; the root document still
    // tells the client where to get a token.
    match target.filter(|t| UserName::parse(t).is_ok()) {
        None => format!("{base}/.well-known/oauth-protected-resource/mcp"),
        Some(name) => format!("{base}/.well-known/oauth-protected-resource/user/{name}/mcp"),
    }
}

/// The audience rule: a token bound to a resource is good only at that MCP endpoint, where
/// `/mcp` and `/user/{owner}/mcp` count as one for the token's owner.
pub fn audience_ok(base: &str, p: &Principal, target: Option<&str>) -> bool {
    let Some(bound) = &p.resource else {
        return true;
    };
    let here = endpoint_url(base, target);
    if *bound == here {
        return true;
    }
    let own = [
        endpoint_url(base, None),
        endpoint_url(base, Some(p.user.as_str())),
    ];
    own.contains(bound) && own.contains(&here)
}

/// Refuses a token bound to another endpoint: 401 `invalid_token`, audited as an auth failure.
pub fn check_audience(
    hub: &Hub,
    p: &Principal,
    target: Option<&str>,
    client: Option<std::net::IpAddr>,
) -> Result<(), ApiError> {
    if audience_ok(hub.base_url(), p, target) {
        return Ok(());
    }
    hub.audit
        .auth_failure("token for another resource", Some(&p.token_id), client);
    Err(ApiError::Unauthorized(format!(
        "this token was issued for {}, not for this endpoint: get a token whose resource is {}",
        p.resource.as_deref().unwrap_or_default(),
        endpoint_url(hub.base_url(), target),
    )))
}

/// Is `resource` one of the MCP endpoints `user` may ask a token for (RFC 8707)?
pub fn resource_ok(base: &str, user: &UserName, resource: &str) -> bool {
    resource == endpoint_url(base, None) || resource == endpoint_url(base, Some(user.as_str()))
}

/// Parses a form or query string, refusing a parameter given twice (RFC 6749 §3.1: "request
/// and response parameters MUST NOT be included more than once"), which would let two readers
/// of the same request see different values.
pub(crate) fn parse_params(raw: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        if out.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(format!("parameter {k} is given more than once"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_core::Scopes;

    fn principal(user: &str, resource: Option<&str>) -> Principal {
        Principal {
            token_id: "abcdefgh".into(),
            user_id: 1,
            user: UserName::parse(user).unwrap(),
            admin: false,
            profile: "default".into(),
            scopes: Scopes::default_token(),
            expires_ms: None,
            resource: resource.map(str::to_owned),
        }
    }

    #[test]
    fn audience_binds_to_the_named_endpoint_and_own_endpoints_count_as_one() {
        let b = "https://hub.example";
        let unbound = principal("alice", None);
        assert!(audience_ok(b, &unbound, Some("bob")));
        let own = principal("alice", Some("https://hub.example/mcp"));
        assert!(audience_ok(b, &own, None));
        assert!(audience_ok(b, &own, Some("alice")));
        assert!(!audience_ok(b, &own, Some("bob")));
        let user = principal("alice", Some("https://hub.example/user/alice/mcp"));
        assert!(audience_ok(b, &user, None));
        let other = principal("alice", Some("https://other.example/mcp"));
        assert!(!audience_ok(b, &other, None));
        let bobs = principal("alice", Some("https://hub.example/user/bob/mcp"));
        assert!(audience_ok(b, &bobs, Some("bob")));
        assert!(!audience_ok(b, &bobs, None));
    }

    #[test]
    fn duplicate_parameters_are_refused() {
        assert!(parse_params("a=1&b=2").is_ok());
        assert!(parse_params("a=1&a=1").is_err());
        assert_eq!(parse_params("x=%2F%20").unwrap()["x"], "/ ");
    }
}
