//! Browser sign-in: web sessions and their cookie, and the ways in (the organisation's OpenID
//! provider, a Lodge token holding `self`, a one-time link), sign-out, and keeping users made by
//! the provider in step with it. This module decides which person a browser is; what they may
//! do stays with scopes elsewhere. It never stores a session id, link secret or OIDC state in
//! the clear, and never builds a URL from a request's `Host`.

pub mod oidc;
pub mod pages;
pub mod provision;
pub mod recheck;

use crate::Hub;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use lodge_core::UserName;
use lodge_core::time::now_ms;
use lodge_store::{NewWebSession, Store, StoreError};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::Duration;

/// The session cookie: its value is the session's secret id.
pub const SESSION_COOKIE: &str = "lodge_session";
/// The double-submit CSRF cookie of forms shown before anyone is signed in.
pub const CSRF_COOKIE: &str = "lodge_csrf";
/// A web session ends this long after sign-in, used or not.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// `last_seen` is written at most this often per session.
const TOUCH_EVERY_MS: i64 = 60_000;
/// The longest `lodge user login-url --expires` allows: a link is for handing over now.
pub const LINK_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The person a browser request comes from, as its session cookie says.
#[derive(Clone, Debug)]
pub struct WebUser {
    pub user_id: i64,
    pub user: UserName,
    pub admin: bool,
    pub profile: String,
    /// A stable name for the session (hex SHA-256 of the cookie value, never the value).
    pub session_id: String,
    /// The session's CSRF token: forms posted by this person must carry it.
    pub csrf: String,
}

/// 32 random bytes, URL-safe base64: session ids, CSRF tokens, link secrets, states, nonces.
pub(crate) fn random_secret() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

pub(crate) fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// PKCE S256 (RFC 7636): the challenge for `verifier`, as the hub sends it to the provider and
/// as its own authorization server checks a client's.
pub(crate) fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(verifier))
}

/// Is `s` shaped like what [`random_secret`] makes? Checked before any lookup.
fn secret_shaped(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The value of cookie `name` in the request (the first, if several are sent).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// `next` if it is a path on this hub (`/…`, not `//…` or `/\…`, visible ASCII only), so a
/// sign-in can never send the person to another site.
pub fn local_path(next: &str) -> Option<&str> {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.len() <= 2048
        && next.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(next)
}

/// Where a sign-in lands: `next` if it is local, else the home page.
pub(crate) fn landing(next: Option<&str>) -> &str {
    next.and_then(local_path).unwrap_or("/hub/")
}

/// 303 to `location`, which the caller made local.
pub(crate) fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    crate::web::secure_headers(r.headers_mut());
    r
}

/// 303 to `/hub/login?next=NEXT`; a `next` that is not a local path becomes `/hub/`.
pub fn login_redirect(next: &str) -> Response {
    let next: String = form_urlencoded::byte_serialize(landing(Some(next)).as_bytes()).collect();
    see_other(&format!("/hub/login?next={next}"))
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Secure when the hub is reached over HTTPS.
pub(crate) fn set_cookie(hub: &Hub, name: &str, value: &str, path: &str, max_age_s: u64) -> String {
    let secure = if hub.base_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!("{name}={value}; Path={path}; Max-Age={max_age_s}; HttpOnly; SameSite=Lax{secure}")
}

pub(crate) fn add_cookie(response: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Reads the session cookie: the person signed in, or None (no cookie, unknown, expired).
pub async fn signed_in(hub: &Hub, headers: &HeaderMap) -> Option<WebUser> {
    let id = cookie(headers, SESSION_COOKIE).filter(|v| secret_shaped(v))?;
    let hash = sha256(id);
    let row = match hub.store.web_session(&hash).await {
        Ok(r) => r?,
        Err(e) => {
            tracing::error!(error = %e, "cannot read a web session");
            return None;
        }
    };
    let now = now_ms();
    if row.expires_ms <= now {
        let _ = hub.store.delete_web_session(&hash).await;
        return None;
    }
    if now - row.last_seen_ms >= TOUCH_EVERY_MS
        && let Err(e) = hub.store.touch_web_session(&hash, now).await
    {
        tracing::warn!(error = %e, "cannot record a web session's last use");
    }
    Some(WebUser {
        user_id: row.user.id,
        user: row.user.name,
        admin: row.user.admin,
        profile: row.user.profile,
        session_id: hex::encode(hash),
        csrf: row.csrf,
    })
}

/// How a person signed in, for the session row and the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Oidc,
    Token,
    Link,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Oidc => "oidc",
            Method::Token => "token",
            Method::Link => "link",
        }
    }
}

/// Starts a NEW session for `user` (whatever session cookie the browser sent is ended, never
/// reused: a cookie planted before sign-in cannot become a signed-in one), audits the sign-in
/// and answers 303 to `next` with the cookie set.
pub(crate) async fn begin_session(
    hub: &Hub,
    request: &HeaderMap,
    user: &lodge_store::User,
    method: Method,
    client: Option<IpAddr>,
    next: &str,
) -> Result<Response, StoreError> {
    if let Some(old) = cookie(request, SESSION_COOKIE).filter(|v| secret_shaped(v)) {
        hub.store.delete_web_session(&sha256(old)).await?;
    }
    let id = random_secret();
    let now = now_ms();
    hub.store
        .create_web_session(&NewWebSession {
            id_hash: sha256(&id),
            user_id: user.id,
            csrf: random_secret(),
            method: method.as_str().into(),
            created_ms: now,
            expires_ms: now + SESSION_TTL.as_millis() as i64,
        })
        .await?;
    hub.audit.signin(crate::audit::SigninEvent {
        kind: lodge_store::AuditKind::SignIn,
        user: Some(user.name.as_str()),
        method: method.as_str(),
        outcome: "ok",
        client,
        detail: None,
    });
    let mut r = see_other(landing(Some(next)));
    add_cookie(
        &mut r,
        &set_cookie(hub, SESSION_COOKIE, &id, "/", SESSION_TTL.as_secs()),
    );
    // The pre-sign-in CSRF cookie has served its purpose.
    add_cookie(&mut r, &set_cookie(hub, CSRF_COOKIE, "", "/hub/", 0));
    Ok(r)
}

/// Ends the browser's session (if any) and answers with the cookie cleared.
pub(crate) async fn end_session(hub: &Hub, who: &WebUser, mut response: Response) -> Response {
    if let Ok(hash) = hex::decode(&who.session_id)
        && let Err(e) = hub.store.delete_web_session(&hash).await
    {
        tracing::error!(error = %e, "cannot end a web session");
    }
    add_cookie(&mut response, &set_cookie(hub, SESSION_COOKIE, "", "/", 0));
    response
}

/// Mints a one-time sign-in link for `user`, valid for `ttl`: `BASE/hub/login/link/SECRET`.
/// Only the secret's hash is stored.
pub async fn mint_login_link(
    store: &dyn Store,
    base_url: &str,
    user: &lodge_store::User,
    ttl: Duration,
) -> Result<String, StoreError> {
    let secret = random_secret();
    let expires_ms = now_ms() + ttl.as_millis().min(i64::MAX as u128) as i64;
    store
        .create_login_link(&sha256(&secret), user.id, expires_ms)
        .await?;
    Ok(format!(
        "{}/hub/login/link/{secret}",
        base_url.trim_end_matches('/')
    ))
}

/// Adds the user's groups at the provider (as of their last sign-in or recheck) to `caller`,
/// for `group:NAME` in `[servers.NAME] enabled_for`. Looked up only when some server names a
/// group, so hubs without group-enabled servers do no extra lookup per request.
pub async fn fill_groups(
    hub: &Hub,
    mut caller: crate::caller::Caller,
) -> Result<crate::caller::Caller, crate::error::ApiError> {
    if !hub.config.servers.values().any(|s| s.names_groups()) {
        return Ok(caller);
    }
    if let Some(identity) = hub.store.identity_of(caller.user_id).await? {
        caller.groups = identity.groups.into();
    }
    Ok(caller)
}

/// Deletes expired sessions, links and pending sign-ins.
pub async fn sweep(store: &dyn Store) {
    match store.delete_expired_signin_state(now_ms()).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(rows = n, "expired sign-in state removed"),
        Err(e) => tracing::error!(error = %e, "cannot remove expired sign-in state"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_landing_places() {
        for ok in ["/", "/hub/", "/oauth/authorize?client_id=a&x=%2F%2F"] {
            assert_eq!(local_path(ok), Some(ok));
        }
        for bad in [
            "",
            "hub",
            "//evil.example/",
            "/\\evil.example",
            "/a\\b",
            "https://evil.example/",
            "/a b",
            "/a\r\nSet-Cookie: x=1",
            "/é",
        ] {
            assert_eq!(local_path(bad), None, "{bad:?}");
        }
        assert_eq!(landing(Some("//evil")), "/hub/");
        assert_eq!(landing(None), "/hub/");
    }

    #[test]
    fn login_redirect_encodes_next_and_drops_foreign_ones() {
        let r = login_redirect("/oauth/authorize?a=1&b=2");
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            r.headers()[header::LOCATION],
            "/hub/login?next=%2Foauth%2Fauthorize%3Fa%3D1%26b%3D2"
        );
        let r = login_redirect("//evil.example");
        assert_eq!(r.headers()[header::LOCATION], "/hub/login?next=%2Fhub%2F");
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("xlodge_session=a; lodge_session=b; other=c"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("b"));
        assert_eq!(cookie(&h, "missing"), None);
    }
}
