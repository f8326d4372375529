//! The discovery documents: protected resource metadata for each MCP endpoint (RFC 9728) and
//! the authorization server metadata (RFC 8414). Every URL in them starts from the hub's base
//! URL, never from the request's `Host`, so a forged header cannot point a client elsewhere.

use super::{SCOPES_SUPPORTED, endpoint_url};
use crate::Hub;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use lodge_core::UserName;
use serde_json::{Value, json};
use std::sync::Arc;

fn document(body: Value) -> Response {
    let mut r = Json(body).into_response();
    // Public and the same for everyone; clients may keep it a while.
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

fn protected_resource(hub: &Hub, target: Option<&str>) -> Response {
    let base = hub.base_url();
    document(json!({
        "resource": endpoint_url(base, target),
        "authorization_servers": [base],
        "scopes_supported": SCOPES_SUPPORTED,
        "bearer_methods_supported": ["header"],
        "resource_name": "Lodge",
        "resource_documentation": format!("{base}/hub/"),
    }))
}

/// `GET /.well-known/oauth-protected-resource` and `…/mcp`: the hub's own MCP endpoint.
pub async fn resource_root(State(hub): State<Arc<Hub>>) -> Response {
    protected_resource(&hub, None)
}

/// `GET /.well-known/oauth-protected-resource/user/{name}/mcp`.
pub async fn resource_user(
    State(hub): State<Arc<Hub>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    // Any well-formed name gets a document (no user listing through this endpoint).
    let name =
        UserName::parse(&name).map_err(|_| ApiError::NotFound("no such MCP endpoint".into()))?;
    Ok(protected_resource(&hub, Some(name.as_str())))
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
pub async fn authorization_server(State(hub): State<Arc<Hub>>) -> Response {
    let base = hub.base_url();
    let mut m = json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": SCOPES_SUPPORTED,
        "client_id_metadata_document_supported": true,
        "authorization_response_iss_parameter_supported": true,
        "service_documentation": format!("{base}/hub/"),
    });
    if hub.config.auth.oauth.dynamic_registration {
        m["registration_endpoint"] = json!(format!("{base}/oauth/register"));
    }
    document(m)
}
