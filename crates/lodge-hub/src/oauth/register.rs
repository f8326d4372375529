//! Who the clients are: configured (`[auth.oauth.clients.ID]`), registered through RFC 7591
//! (`POST /oauth/register`, public clients only), or described by a client ID metadata
//! document (a `client_id` that is an https URL). Also the redirect URI rules they all share.
//! It never authenticates a client: every client is public, PKCE is what binds a code to it.

use crate::Hub;
use crate::audit::OAuthEvent;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lodge_core::time::now_ms;
use lodge_store::OAuthClientRow;
use serde_json::{Value, json};
use std::sync::Arc;

/// At most this many redirect URIs per client, each at most this long; a name at most this
/// long: registration is unauthenticated, so nothing it stores may be large.
pub const MAX_REDIRECT_URIS: usize = 10;
pub const MAX_URI_LEN: usize = 2000;
pub const MAX_NAME_LEN: usize = 200;
const MAX_REGISTRATION_BYTES: usize = 16 * 1024;

/// A client as the authorization endpoint sees it.
#[derive(Clone, Debug)]
pub struct Client {
    pub id: String,
    /// The name shown on the consent page and by `token list`.
    pub name: String,
    pub redirect_uris: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "unknown client_id {0:?}: register the client first (dynamic registration or [auth.oauth.clients])"
    )]
    Unknown(String),
    #[error("client ID metadata document {url}: {reason}")]
    Document { url: String, reason: String },
    #[error("storage failure; see the hub log")]
    Store(#[from] lodge_store::StoreError),
}

/// Finds the client `id` names.
pub async fn client(hub: &Hub, id: &str) -> Result<Client, ClientError> {
    if let Some(c) = hub.config.auth.oauth.clients.get(id) {
        return Ok(Client {
            id: id.to_owned(),
            name: if c.name.is_empty() {
                id.to_owned()
            } else {
                c.name.clone()
            },
            redirect_uris: c.redirect_uris.clone(),
        });
    }
    if id.starts_with("https://") || id.starts_with("http://") {
        return hub
            .oauth
            .documents
            .get(&hub.config.auth.oauth, id)
            .await
            .map_err(|reason| ClientError::Document {
                url: id.chars().take(MAX_URI_LEN).collect(),
                reason: reason.to_string(),
            });
    }
    let shown: String = id.chars().take(80).collect();
    if id.len() > 100 {
        return Err(ClientError::Unknown(shown));
    }
    match hub.store.oauth_client(id).await? {
        Some(row) => Ok(Client {
            id: row.id,
            name: row.name,
            redirect_uris: row.redirect_uris,
        }),
        None => Err(ClientError::Unknown(shown)),
    }
}

/// Schemes that are not private-use schemes (RFC 8252 §7.1) and may not be redirect targets
/// otherwise than as the rules below allow.
const NOT_PRIVATE_USE: [&str; 10] = [
    "http",
    "https",
    "javascript",
    "data",
    "file",
    "vbscript",
    "about",
    "blob",
    "ws",
    "wss",
];

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// Is `uri` acceptable as a redirect URI? https; http only on loopback (RFC 8252 §7.3); or a
/// private-use scheme (§7.1). Never a fragment (RFC 6749 §3.1.2), never credentials.
pub fn check_redirect_uri(uri: &str) -> Result<url::Url, String> {
    if uri.len() > MAX_URI_LEN {
        return Err(format!(
            "a redirect URI is longer than {MAX_URI_LEN} characters"
        ));
    }
    let url =
        url::Url::parse(uri).map_err(|e| format!("redirect URI {uri:?} is not a URL: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("redirect URI {uri:?} has a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("redirect URI {uri:?} carries credentials"));
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if is_loopback_host(&url) => Ok(url),
        "http" => Err(format!(
            "redirect URI {uri:?} is plain http on a non-loopback host: use https"
        )),
        s if NOT_PRIVATE_USE.contains(&s) => Err(format!(
            "redirect URI {uri:?} has a scheme that cannot be a redirect target"
        )),
        _ => Ok(url),
    }
}

/// Does the presented redirect URI match a registered one? Exactly, except that a loopback
/// redirect matches on any port (RFC 8252 §7.3: native apps listen on a port of the moment).
pub fn redirect_matches(registered: &[String], presented: &str) -> bool {
    if registered.iter().any(|r| r == presented) {
        return true;
    }
    let Ok(p) = url::Url::parse(presented) else {
        return false;
    };
    if p.scheme() != "http" || !is_loopback_host(&p) {
        return false;
    }
    registered.iter().any(|r| {
        url::Url::parse(r).is_ok_and(|r| {
            r.scheme() == "http"
                && is_loopback_host(&r)
                && r.host() == p.host()
                && r.path() == p.path()
                && r.query() == p.query()
                && r.fragment().is_none()
                && p.fragment().is_none()
                && r.username() == p.username()
                && r.password() == p.password()
        })
    })
}

/// A registration refusal (RFC 7591 §3.2.2).
fn refuse(status: StatusCode, error: &str, description: String) -> Response {
    let mut r = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Validates the metadata of a registration or document: the redirect URIs and the name.
pub fn check_metadata(m: &Value) -> Result<(Vec<String>, Option<String>), (String, String)> {
    let bad = |e: &str, d: String| (e.to_owned(), d);
    let uris = m
        .get("redirect_uris")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            bad(
                "invalid_redirect_uri",
                "redirect_uris (an array) is required".into(),
            )
        })?;
    if uris.is_empty() || uris.len() > MAX_REDIRECT_URIS {
        return Err(bad(
            "invalid_redirect_uri",
            format!("give between 1 and {MAX_REDIRECT_URIS} redirect_uris"),
        ));
    }
    let mut out = Vec::new();
    for u in uris {
        let s = u.as_str().ok_or_else(|| {
            bad(
                "invalid_redirect_uri",
                "redirect_uris must be strings".into(),
            )
        })?;
        check_redirect_uri(s).map_err(|e| bad("invalid_redirect_uri", e))?;
        out.push(s.to_owned());
    }
    for (field, allowed) in [
        ("grant_types", &["authorization_code", "refresh_token"][..]),
        ("response_types", &["code"][..]),
    ] {
        if let Some(list) = m.get(field).and_then(Value::as_array)
            && let Some(v) = list
                .iter()
                .find(|v| !v.as_str().is_some_and(|s| allowed.contains(&s)))
        {
            return Err(bad(
                "invalid_client_metadata",
                format!(
                    "{field} {v} is not supported (supported: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    let name = match m.get("client_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if n.chars().count() <= MAX_NAME_LEN && !n.trim().is_empty() => {
            Some(n.trim().to_owned())
        }
        Some(_) => {
            return Err(bad(
                "invalid_client_metadata",
                format!(
                    "client_name must be a non-empty string of at most {MAX_NAME_LEN} characters"
                ),
            ));
        }
    };
    Ok((out, name))
}

/// `POST /oauth/register` (RFC 7591): registers a public client.
pub async fn register(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    if !hub.config.auth.oauth.dynamic_registration {
        return refuse(
            StatusCode::FORBIDDEN,
            "access_denied",
            "dynamic client registration is turned off (auth.oauth.dynamic_registration); \
             ask the operator to configure the client, or use a client ID metadata document"
                .into(),
        );
    }
    if body.len() > MAX_REGISTRATION_BYTES {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_client_metadata",
            format!("registration requests are limited to {MAX_REGISTRATION_BYTES} bytes"),
        );
    }
    let m: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                "the body must be a JSON object of client metadata".into(),
            );
        }
    };
    let (redirect_uris, name) = match check_metadata(&m) {
        Ok(v) => v,
        Err((e, d)) => return refuse(StatusCode::BAD_REQUEST, &e, d),
    };
    let id = format!("lodge-{}", crate::signin::random_secret());
    let name = name.unwrap_or_else(|| {
        url::Url::parse(&redirect_uris[0])
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "unnamed client".into())
    });
    let created_ms = now_ms();
    let row = OAuthClientRow {
        id: id.clone(),
        name: name.clone(),
        redirect_uris: redirect_uris.clone(),
        created_ms,
    };
    if let Err(e) = hub.store.create_oauth_client(&row).await {
        tracing::error!(error = %e, "cannot store a registered client");
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "storage failure; see the hub log".into(),
        );
    }
    hub.audit.oauth(OAuthEvent {
        user: None,
        action: "oauth.register",
        target: &format!("{id} {name:?}"),
        outcome: "ok",
    });
    let mut r = (
        StatusCode::CREATED,
        Json(json!({
            "client_id": id,
            "client_id_issued_at": created_ms / 1000,
            "client_name": name,
            "redirect_uris": redirect_uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uri_rules() {
        assert!(check_redirect_uri("https://app.example/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:3000/cb").is_ok());
        assert!(check_redirect_uri("http://localhost/cb").is_ok());
        assert!(check_redirect_uri("http://[::1]:5/cb").is_ok());
        assert!(check_redirect_uri("cursor://anysphere.cursor/oauth").is_ok());
        assert!(check_redirect_uri("http://app.example/cb").is_err());
        assert!(check_redirect_uri("https://app.example/cb#x").is_err());
        assert!(check_redirect_uri("javascript:alert(1)").is_err());
        assert!(check_redirect_uri("https://u:p@app.example/cb").is_err());
        assert!(check_redirect_uri("data:text/html,x").is_err());
    }

    #[test]
    fn loopback_redirects_match_on_any_port_only() {
        let reg = vec![
            "http://127.0.0.1/callback".to_owned(),
            "https://app.example/cb".to_owned(),
        ];
        assert!(redirect_matches(&reg, "http://127.0.0.1:4711/callback"));
        assert!(redirect_matches(&reg, "https://app.example/cb"));
        assert!(!redirect_matches(&reg, "https://app.example:444/cb"));
        assert!(!redirect_matches(&reg, "https://app.example/cb/../x"));
        assert!(!redirect_matches(&reg, "http://127.0.0.1:4711/other"));
        assert!(!redirect_matches(&reg, "http://127.0.0.2:4711/callback"));
        assert!(!redirect_matches(&reg, "https://evil.example/cb"));
    }
}
