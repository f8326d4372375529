//! `/oauth/token` and `/oauth/revoke`: exchanges codes (PKCE S256 only, single use: a replayed
//! code revokes what it issued) and refresh tokens (rotated on every use: a replayed one revokes
//! its whole family, access tokens included), and revokes tokens (RFC 7009). Access tokens are
//! `lodge_` tokens bound to the client's resource; refresh tokens are kept only as hashes.
//! Every answer carries `Cache-Control: no-store` (RFC 6749 §5.1).

use super::parse_params;
use crate::Hub;
use crate::audit::OAuthEvent;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lodge_core::time::now_ms;
use lodge_core::{NewToken, Scopes, TokenHash, UserName};
use lodge_store::{NewRefresh, NewTokenRow, StoreError, TokenBinding};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// An authorization code is good for this long (RFC 6749 §4.1.2 recommends at most 10 min).
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// A code is remembered this long past its expiry, so a late replay still revokes its grant.
pub const CODE_MEMORY: Duration = Duration::from_secs(600);
/// Refresh tokens carry their own prefix: never mistaken for (or accepted as) a `lodge_` token.
const REFRESH_PREFIX: &str = "lodgert_";

/// An authorization code, in memory until exchanged (kept by its hash).
pub struct Code {
    pub user_id: i64,
    pub user: UserName,
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    pub challenge: String,
    pub resource: String,
    pub scope: String,
    pub expires: Instant,
    /// The grant family of its one exchange; Some once presented.
    pub used: Option<String>,
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

fn err(error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        status: StatusCode::BAD_REQUEST,
        error,
        description: description.into(),
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error in the token endpoint");
        OAuthError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "server_error",
            description: "storage failure; see the hub log".into(),
        }
    }
}

fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        no_store(
            (
                self.status,
                Json(json!({"error": self.error, "error_description": self.description})),
            )
                .into_response(),
        )
    }
}

/// The form of a POST to the token or revocation endpoint.
fn form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ct
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(err(
            "invalid_request",
            "send the parameters as application/x-www-form-urlencoded",
        ));
    }
    let text =
        std::str::from_utf8(body).map_err(|_| err("invalid_request", "body is not UTF-8"))?;
    parse_params(text).map_err(|e| err("invalid_request", e))
}

fn required<'a>(p: &'a HashMap<String, String>, k: &str) -> Result<&'a str, OAuthError> {
    p.get(k)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| err("invalid_request", format!("parameter {k} is required")))
}

/// Does `verifier` hash to `challenge` (RFC 7636 §4.6, S256)?
fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    let shaped = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    let computed = crate::signin::pkce_challenge(verifier);
    shaped && bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

/// What a grant issues tokens for.
struct Grant<'a> {
    user: &'a UserName,
    user_id: i64,
    client_id: &'a str,
    client_name: &'a str,
    resource: &'a str,
    scope: &'a str,
    family: &'a str,
}

/// Mints an access token and a refresh token for `g`; the token response body.
async fn issue(hub: &Hub, g: &Grant<'_>) -> Result<Response, OAuthError> {
    let cfg = &hub.config.auth.oauth;
    let scopes = Scopes::parse_list(&g.scope.replace(' ', ","), false)
        .map_err(|e| err("invalid_scope", e.to_string()))?;
    let now = now_ms();
    let ttl_ms = cfg.access_token_ttl.as_millis().min(i64::MAX as u128) as i64;
    let binding = TokenBinding {
        client: g.client_name.to_owned(),
        resource: g.resource.to_owned(),
        family: g.family.to_owned(),
    };
    let mut access = None;
    for _ in 0..3 {
        let t = NewToken::generate();
        let row = NewTokenRow {
            id: t.id.clone(),
            user: g.user.clone(),
            hash: t.hash,
            scopes: scopes.clone(),
            note: format!("OAuth client {}", g.client_name),
            expires_ms: Some(now.saturating_add(ttl_ms)),
        };
        match hub.store.create_oauth_token(&row, &binding).await {
            Ok(_) => {
                access = Some(t.secret);
                break;
            }
            Err(StoreError::TokenCollision) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let access = access.ok_or(StoreError::TokenCollision)?;
    let refresh = format!("{REFRESH_PREFIX}{}", crate::signin::random_secret());
    let refresh_ms = cfg.refresh_token_ttl.as_millis().min(i64::MAX as u128) as i64;
    hub.store
        .create_refresh(&NewRefresh {
            hash: TokenHash::of(&refresh),
            family: g.family.to_owned(),
            user_id: g.user_id,
            client_id: g.client_id.to_owned(),
            client_name: g.client_name.to_owned(),
            resource: g.resource.to_owned(),
            scopes,
            expires_ms: now.saturating_add(refresh_ms),
        })
        .await?;
    Ok(no_store(
        Json(json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": cfg.access_token_ttl.as_secs(),
            "refresh_token": refresh,
            "scope": g.scope,
        }))
        .into_response(),
    ))
}

/// Revokes every token of a grant family, and forgets them in the verification cache.
async fn revoke_family(hub: &Hub, family: &str) -> Result<usize, StoreError> {
    let ids = hub.store.revoke_family(family).await?;
    for id in &ids {
        hub.auth.invalidate(Some(id));
    }
    Ok(ids.len())
}

/// `POST /oauth/token`.
pub async fn token(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let p = form(&headers, &body)?;
        match required(&p, "grant_type")? {
            "authorization_code" => exchange_code(&hub, &p).await,
            "refresh_token" => refresh(&hub, &p).await,
            other => Err(err(
                "unsupported_grant_type",
                format!(
                    "grant_type {other:?} is not supported (authorization_code, refresh_token)"
                ),
            )),
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn exchange_code(hub: &Hub, p: &HashMap<String, String>) -> Result<Response, OAuthError> {
    let code = required(p, "code")?;
    let client_id = required(p, "client_id")?;
    let redirect_uri = required(p, "redirect_uri")?;
    let key = crate::signin::sha256(code);
    let family = crate::signin::random_secret();
    // Whatever happens next, this presentation uses the code up.
    let (entry, replayed) = {
        let Ok(mut codes) = hub.oauth.codes.lock() else {
            return Err(err("server_error", "internal error"));
        };
        let Some(c) = codes.get_mut(&key) else {
            return Err(err(
                "invalid_grant",
                "unknown or expired authorization code",
            ));
        };
        let replayed = c.used.clone();
        if replayed.is_none() {
            c.used = Some(family.clone());
        }
        (
            Code {
                user_id: c.user_id,
                user: c.user.clone(),
                client_id: c.client_id.clone(),
                client_name: c.client_name.clone(),
                redirect_uri: c.redirect_uri.clone(),
                challenge: c.challenge.clone(),
                resource: c.resource.clone(),
                scope: c.scope.clone(),
                expires: c.expires,
                used: None,
            },
            replayed,
        )
    };
    if let Some(first) = replayed {
        let revoked = revoke_family(hub, &first).await?;
        hub.audit.oauth(OAuthEvent {
            user: Some(entry.user.as_str()),
            action: "oauth.code_reuse",
            target: &format!("{} {:?}", entry.client_id, entry.client_name),
            outcome: &format!("grant revoked ({revoked} access tokens)"),
        });
        return Err(err(
            "invalid_grant",
            "this authorization code was already used; the tokens issued for it are revoked",
        ));
    }
    if entry.expires <= Instant::now() {
        return Err(err("invalid_grant", "the authorization code expired"));
    }
    if client_id != entry.client_id {
        return Err(err(
            "invalid_grant",
            "the code was issued to another client",
        ));
    }
    if redirect_uri != entry.redirect_uri {
        return Err(err(
            "invalid_grant",
            "redirect_uri differs from the one of the authorization request",
        ));
    }
    let Some(verifier) = p.get("code_verifier") else {
        return Err(err("invalid_request", "code_verifier is required (PKCE)"));
    };
    if !pkce_ok(verifier, &entry.challenge) {
        return Err(err(
            "invalid_grant",
            "code_verifier does not match the code_challenge (S256)",
        ));
    }
    if let Some(r) = p.get("resource")
        && *r != entry.resource
    {
        return Err(err(
            "invalid_target",
            format!(
                "resource differs from the authorized one ({})",
                entry.resource
            ),
        ));
    }
    // The person may have been removed (and a namesake created) since consenting.
    match hub.store.user(&entry.user).await? {
        Some(u) if u.id == entry.user_id => {}
        _ => return Err(err("invalid_grant", "the user no longer exists")),
    }
    let response = issue(
        hub,
        &Grant {
            user: &entry.user,
            user_id: entry.user_id,
            client_id: &entry.client_id,
            client_name: &entry.client_name,
            resource: &entry.resource,
            scope: &entry.scope,
            family: &family,
        },
    )
    .await?;
    hub.audit.oauth(OAuthEvent {
        user: Some(entry.user.as_str()),
        action: "oauth.grant",
        target: &format!(
            "{} {:?} {}",
            entry.client_id, entry.client_name, entry.resource
        ),
        outcome: "ok",
    });
    Ok(response)
}

async fn refresh(hub: &Hub, p: &HashMap<String, String>) -> Result<Response, OAuthError> {
    let presented = required(p, "refresh_token")?;
    let client_id = required(p, "client_id")?;
    let Some(r) = hub
        .store
        .use_refresh(&TokenHash::of(presented), now_ms())
        .await?
    else {
        return Err(err("invalid_grant", "unknown or revoked refresh token"));
    };
    if r.replayed {
        let revoked = revoke_family(hub, &r.family).await?;
        hub.audit.oauth(OAuthEvent {
            user: Some(r.user.name.as_str()),
            action: "oauth.refresh_reuse",
            target: &format!("{} {:?}", r.client_id, r.client_name),
            outcome: &format!("family revoked ({revoked} access tokens)"),
        });
        return Err(err(
            "invalid_grant",
            "this refresh token was already used; every token of its grant is revoked",
        ));
    }
    if r.expires_ms <= now_ms() {
        return Err(err("invalid_grant", "the refresh token expired"));
    }
    if client_id != r.client_id {
        return Err(err(
            "invalid_grant",
            "the refresh token belongs to another client",
        ));
    }
    let granted = r.scopes.to_vec();
    let scope = match p.get("scope") {
        None => granted.join(" "),
        Some(s) => {
            if let Some(bad) = s
                .split_whitespace()
                .find(|x| !granted.iter().any(|g| g == x))
            {
                return Err(err(
                    "invalid_scope",
                    format!("scope {bad:?} was not granted"),
                ));
            }
            s.split_whitespace().collect::<Vec<_>>().join(" ")
        }
    };
    if let Some(res) = p.get("resource")
        && *res != r.resource
    {
        return Err(err(
            "invalid_target",
            format!("resource differs from the authorized one ({})", r.resource),
        ));
    }
    issue(
        hub,
        &Grant {
            user: &r.user.name,
            user_id: r.user.id,
            client_id: &r.client_id,
            client_name: &r.client_name,
            resource: &r.resource,
            scope: &scope,
            family: &r.family,
        },
    )
    .await
}

/// `POST /oauth/revoke` (RFC 7009): an access token or a refresh token, and with either the
/// whole grant it belongs to. Unknown tokens get the same 200, as §2.2 asks.
pub async fn revoke(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let p = form(&headers, &body)?;
        let t = required(&p, "token")?;
        if let Some((id, hash)) = lodge_core::token::parse(t) {
            if let Some(row) = hub.store.token_for_auth(id).await?
                && hash.ct_eq(&row.hash)
            {
                // An access token the hub issued ends its whole grant (RFC 7009 §2.1 allows
                // it): a client revoking means it is done with the grant.
                match &row.family {
                    Some(family) => {
                        revoke_family(&hub, family).await?;
                    }
                    None => {
                        hub.store.revoke_token(id).await?;
                    }
                }
                hub.auth.invalidate(Some(id));
                hub.audit.oauth(OAuthEvent {
                    user: Some(row.user.name.as_str()),
                    action: "oauth.revoke",
                    target: id,
                    outcome: "ok",
                });
            }
        } else if t.starts_with(REFRESH_PREFIX)
            && let Some(family) = hub.store.refresh_family(&TokenHash::of(t)).await?
        {
            revoke_family(&hub, &family).await?;
            hub.audit.oauth(OAuthEvent {
                user: None,
                action: "oauth.revoke",
                target: "refresh token family",
                outcome: "ok",
            });
        }
        Ok::<_, OAuthError>(no_store(StatusCode::OK.into_response()))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_only_matches_its_verifier() {
        let v = "dBjftJeZ4CVP-mJ92K7rUiP0m3bWJ7zE4Wn4hCxfNZ0";
        let c = "v2GGx_6V7aEDI5h3a76M5mgS3DoqNRtB0SOc9HOiwMc";
        assert!(pkce_ok(v, c));
        assert!(!pkce_ok("dBjftJeZ4CVP-mJ92K7rUiP0m3bWJ7zE4Wn4hCxfNZ1", c));
        // `plain`: the verifier presented as its own challenge.
        assert!(!pkce_ok(v, v));
        assert!(!pkce_ok("short", c));
    }
}
