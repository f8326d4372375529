//! The sign-in pages: `/hub/login` (the provider, or a form taking a Lodge token), one-time
//! links, `/hub/logout` and the minimal home page. Every form is CSRF-checked: against the
//! session's token once signed in, against a double-submit cookie before. Pages render with
//! `web::page` and hold no script; the rules of who may sign in live in `signin` and
//! `provision`, not here.

use super::{
    CSRF_COOKIE, Method, WebUser, add_cookie, begin_session, cookie, end_session, landing,
    random_secret, secret_shaped, see_other, set_cookie, sha256, signed_in,
};
use crate::Hub;
use crate::audit::SigninEvent;
use crate::error::ApiError;
use crate::http_util::ClientAddr;
use crate::web::{csrf_field, csrf_ok, error_page, page};
use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use lodge_core::ScopeKind;
use lodge_core::time::now_ms;
use lodge_store::{AuditKind, StoreError};
use maud::html;
use std::net::IpAddr;
use std::sync::Arc;

/// A page handler's failure, answered as an HTML page (never JSON: a person reads it).
pub struct PageError(Response);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        self.0
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error on a sign-in page");
        PageError(error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "The hub could not read or write its database; try again, and tell the operator if \
             it persists (the hub log has the cause).",
        ))
    }
}

impl From<Response> for PageError {
    fn from(r: Response) -> Self {
        PageError(r)
    }
}

type PageResult = Result<Response, PageError>;

/// The value of `name` in a query string.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Audits a refused sign-in.
pub(crate) fn refused(
    hub: &Hub,
    user: Option<&str>,
    method: Method,
    client: Option<IpAddr>,
    why: &str,
) {
    hub.audit.signin(SigninEvent {
        kind: AuditKind::SignInRefused,
        user,
        method: method.as_str(),
        outcome: "denied",
        client,
        detail: Some(why.to_owned()),
    });
}

/// The double-submit token of a not-yet-signed-in browser: the one its cookie holds, or a
/// new one (then `fresh` is true and the caller sets the cookie).
fn pre_signin_csrf(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, CSRF_COOKIE).filter(|v| secret_shaped(v)) {
        Some(v) => (v.to_owned(), false),
        None => (random_secret(), true),
    }
}

/// Does a form posted before sign-in carry the token its CSRF cookie holds?
fn pre_signin_csrf_ok(headers: &HeaderMap, presented: &str) -> bool {
    cookie(headers, CSRF_COOKIE).is_some_and(|expected| csrf_ok(expected, presented))
}

/// A page with a pre-sign-in form: sets the CSRF cookie when the browser has none yet.
fn with_csrf_cookie(hub: &Hub, fresh: bool, token: &str, mut r: Response) -> Response {
    if fresh {
        add_cookie(&mut r, &set_cookie(hub, CSRF_COOKIE, token, "/hub/", 3600));
    }
    r
}

/// `GET /hub/login[?next=PATH]`.
pub async fn login(
    State(hub): State<Arc<Hub>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> PageResult {
    let next = query_param(query.as_deref(), "next");
    let next = landing(next.as_deref());
    if signed_in(&hub, &headers).await.is_some() {
        return Ok(see_other(next));
    }
    if hub.config.auth.oidc.is_some() {
        return super::oidc::start(&hub, &headers, client, next).await;
    }
    Ok(token_form(&hub, &headers, next, None))
}

/// The form taking a Lodge token, with an error above it when a try failed.
fn token_form(
    hub: &Hub,
    headers: &HeaderMap,
    next: &str,
    error: Option<(StatusCode, &str)>,
) -> Response {
    let (csrf, fresh) = pre_signin_csrf(headers);
    let status = error.map_or(StatusCode::OK, |(s, _)| s);
    let body = html! {
        h1 { "Sign in to Lodge" }
        @if let Some((_, message)) = error {
            p.error role="alert" { (message) }
        }
        form method="post" action="/hub/login" {
            (csrf_field(&csrf))
            input type="hidden" name="next" value=(next);
            label for="token" { "Lodge token" }
            input #token type="password" name="token" autocomplete="off" required
                placeholder="lodge_…";
            button type="submit" { "Sign in" }
        }
        p.hint {
            "Use a token of yours that holds the scope " code { "self" } " (an operator makes "
            "one with " code { "lodge token create NAME --scopes mcp,self" } "), or a one-time "
            "link from " code { "lodge user login-url NAME" } "."
        }
    };
    with_csrf_cookie(hub, fresh, &csrf, page(status, "Sign in", body))
}

#[derive(serde::Deserialize)]
pub struct TokenLogin {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
    next: Option<String>,
}

/// `POST /hub/login`: sign in with a Lodge token holding `self` (without `[auth.oidc]`).
pub async fn login_post(
    State(hub): State<Arc<Hub>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    form: Result<Form<TokenLogin>, FormRejection>,
) -> PageResult {
    if hub.config.auth.oidc.is_some() {
        return Ok(error_page(
            StatusCode::NOT_FOUND,
            "Sign in with your organisation",
            "This hub signs people in through the organisation's identity provider, not with \
             tokens: open the sign-in page again.",
        ));
    }
    let Ok(Form(f)) = form else {
        return Ok(error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in form not understood",
            "The sign-in form arrived incomplete; open the sign-in page again.",
        ));
    };
    let next = landing(f.next.as_deref());
    if !pre_signin_csrf_ok(&headers, &f.csrf) {
        refused(
            &hub,
            None,
            Method::Token,
            client,
            "CSRF token missing or wrong",
        );
        return Ok(token_form(
            &hub,
            &headers,
            next,
            Some((
                StatusCode::FORBIDDEN,
                "This form expired or was sent from another site. Sign in from this page.",
            )),
        ));
    }
    let authorization = format!("Bearer {}", f.token.trim());
    let principal = match hub.auth.authenticate(Some(&authorization), client).await {
        Ok(p) => p,
        Err(ApiError::TooManyRequests { message, .. }) => {
            return Ok(token_form(
                &hub,
                &headers,
                next,
                Some((StatusCode::TOO_MANY_REQUESTS, &message)),
            ));
        }
        Err(_) => {
            return Ok(token_form(
                &hub,
                &headers,
                next,
                Some((
                    StatusCode::UNAUTHORIZED,
                    "That is not a valid Lodge token (unknown, revoked or expired).",
                )),
            ));
        }
    };
    if !principal
        .scopes
        .grants(ScopeKind::OwnSelf, &principal.user, Some(&principal.user))
    {
        refused(
            &hub,
            Some(principal.user.as_str()),
            Method::Token,
            client,
            "token lacks scope self",
        );
        return Ok(token_form(
            &hub,
            &headers,
            next,
            Some((
                StatusCode::FORBIDDEN,
                "This token does not hold the scope 'self', which signing in needs. Use a token \
                 made with --scopes mcp,self.",
            )),
        ));
    }
    let Some(user) = hub.store.user(&principal.user).await? else {
        return Ok(token_form(
            &hub,
            &headers,
            next,
            Some((
                StatusCode::UNAUTHORIZED,
                "This token's user no longer exists.",
            )),
        ));
    };
    Ok(begin_session(&hub, &headers, &user, Method::Token, client, next).await?)
}

/// Why a one-time link cannot be used, as the page that says so.
fn link_refusal(status: StatusCode, message: &str) -> Response {
    error_page(status, "This sign-in link cannot be used", message)
}

const LINK_UNKNOWN: &str = "This sign-in link is not valid. Ask your administrator for a new \
                            one (lodge user login-url NAME).";
const LINK_USED: &str = "This sign-in link was already used: each link works once. Ask your \
                         administrator for a new one (lodge user login-url NAME).";
const LINK_EXPIRED: &str = "This sign-in link has expired. Ask your administrator for a new \
                            one (lodge user login-url NAME).";

/// The stored link for `secret` if it can still be used, else the page saying why not.
async fn usable_link(hub: &Hub, secret: &str) -> Result<lodge_store::LoginLinkRow, PageError> {
    if !secret_shaped(secret) {
        return Err(link_refusal(StatusCode::NOT_FOUND, LINK_UNKNOWN).into());
    }
    let Some(row) = hub.store.login_link(&sha256(secret)).await? else {
        return Err(link_refusal(StatusCode::NOT_FOUND, LINK_UNKNOWN).into());
    };
    if row.used_ms.is_some() {
        return Err(link_refusal(StatusCode::GONE, LINK_USED).into());
    }
    if row.expires_ms <= now_ms() {
        return Err(link_refusal(StatusCode::GONE, LINK_EXPIRED).into());
    }
    Ok(row)
}

/// `GET /hub/login/link/{secret}`: a page with one button. Opening the link uses nothing, so
/// a chat's link preview cannot spend it; the button's POST does.
pub async fn link(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(secret): Path<String>,
) -> PageResult {
    let row = usable_link(&hub, &secret).await?;
    let (csrf, fresh) = pre_signin_csrf(&headers);
    let body = html! {
        h1 { "Sign in to Lodge" }
        p { "This one-time link signs you in as " strong { (row.user.name) } "." }
        form method="post" action={ "/hub/login/link/" (secret) } {
            (csrf_field(&csrf))
            button type="submit" { "Sign in as " (row.user.name) }
        }
    };
    Ok(with_csrf_cookie(
        &hub,
        fresh,
        &csrf,
        page(StatusCode::OK, "Sign in", body),
    ))
}

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /hub/login/link/{secret}`: uses the link (once) and signs in.
pub async fn link_post(
    State(hub): State<Arc<Hub>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Path(secret): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> PageResult {
    let row = usable_link(&hub, &secret).await?;
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !pre_signin_csrf_ok(&headers, &csrf) {
        refused(
            &hub,
            Some(row.user.name.as_str()),
            Method::Link,
            client,
            "CSRF token missing or wrong",
        );
        return Ok(error_page(
            StatusCode::FORBIDDEN,
            "Sign-in refused",
            "This form expired or was sent from another site. Open your sign-in link again.",
        ));
    }
    // Checked again atomically: of two concurrent uses, one wins.
    if !hub.store.use_login_link(&sha256(&secret), now_ms()).await? {
        return Ok(link_refusal(StatusCode::GONE, LINK_USED));
    }
    Ok(begin_session(&hub, &headers, &row.user, Method::Link, client, "/hub/").await?)
}

/// `POST /hub/logout`: ends the session (CSRF token from the session) and clears the cookie.
pub async fn logout(
    State(hub): State<Arc<Hub>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> PageResult {
    let Some(who) = signed_in(&hub, &headers).await else {
        return Ok(see_other("/hub/login"));
    };
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !csrf_ok(&who.csrf, &csrf) {
        return Ok(error_page(
            StatusCode::FORBIDDEN,
            "Sign-out refused",
            "This sign-out came from another site or an old page. Use the sign-out button on \
             your Lodge home page.",
        ));
    }
    hub.audit.signin(SigninEvent {
        kind: AuditKind::SignOut,
        user: Some(who.user.as_str()),
        method: "web",
        outcome: "ok",
        client,
        detail: None,
    });
    let body = html! {
        h1 { "Signed out" }
        p { "You are signed out of Lodge." }
        p { a href="/hub/login" { "Sign in again" } }
    };
    Ok(end_session(&hub, &who, page(StatusCode::OK, "Signed out", body)).await)
}

/// `GET /hub/`: who is signed in, and a sign-out button (the portal comes later).
pub async fn home(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let Some(who) = signed_in(&hub, &headers).await else {
        return super::login_redirect("/hub/");
    };
    home_page(&who)
}

fn home_page(who: &WebUser) -> Response {
    let body = html! {
        h1 { "Signed in as " (who.user) }
        p {
            "Profile " strong { (who.profile) }
            @if who.admin { " · administrator" }
        }
        form method="post" action="/hub/logout" {
            (csrf_field(&who.csrf))
            button type="submit" { "Sign out" }
        }
    };
    page(StatusCode::OK, "Home", body)
}
