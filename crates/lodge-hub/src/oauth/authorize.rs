//! `/oauth/authorize`: checks the client and its redirect URI before anything else (a request
//! that fails there gets an error page, never a redirect, so the endpoint is no open
//! redirector), signs the person in, shows the consent page, and on approval issues a
//! single-use code. The approval is a POST carrying the session's CSRF token and the id of a
//! pending authorization kept on the server, bound to that web session and to the exact
//! request parameters: a crafted approval with other parameters or another session's id fails.

use super::register::{self, Client};
use super::token::{CODE_TTL, Code};
use super::{SCOPES_SUPPORTED, endpoint_url, parse_params, resource_ok};
use crate::Hub;
use crate::audit::OAuthEvent;
use crate::signin::{self, WebUser};
use crate::web;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a consent page may stay open before its approval is refused.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Consent pages open at once, hub-wide: they are in memory, so they are capped.
const MAX_PENDING: usize = 10_000;
/// Longest `state` echoed back (it travels in a URL).
const MAX_STATE_LEN: usize = 1024;

/// The parameters an approval is bound to; the consent form echoes them and the approval must
/// carry them unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub resource: String,
    pub scope: String,
}

/// A consent page waiting for its answer.
pub struct Pending {
    session_id: String,
    user_id: i64,
    client_name: String,
    request: Request,
    pub(super) expires: Instant,
}

fn error_page(status: StatusCode, message: &str) -> Response {
    web::error_page(status, "Authorization failed", message)
}

/// A redirect back to the client (RFC 6749 §4.1.2), with `iss` (RFC 9207) on every answer.
fn back_to_client(hub: &Hub, redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return error_page(StatusCode::BAD_REQUEST, "the redirect URI is not a URL");
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        q.append_pair("iss", hub.base_url());
    }
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    web::secure_headers(r.headers_mut());
    r
}

fn error_to_client(
    hub: &Hub,
    redirect_uri: &str,
    state: Option<&str>,
    error: &str,
    description: &str,
) -> Response {
    let mut p = vec![("error", error), ("error_description", description)];
    if let Some(s) = state {
        p.push(("state", s));
    }
    back_to_client(hub, redirect_uri, &p)
}

/// The client and the redirect URI, checked before anything may be sent to that URI.
async fn client_and_redirect(
    hub: &Hub,
    p: &HashMap<String, String>,
) -> Result<(Client, String), Response> {
    let id = p
        .get("client_id")
        .ok_or_else(|| error_page(StatusCode::BAD_REQUEST, "the request names no client_id"))?;
    let client = register::client(hub, id)
        .await
        .map_err(|e| error_page(StatusCode::BAD_REQUEST, &e.to_string()))?;
    let redirect = p.get("redirect_uri").ok_or_else(|| {
        error_page(
            StatusCode::BAD_REQUEST,
            "the request names no redirect_uri; the client must send the one it registered",
        )
    })?;
    if !register::redirect_matches(&client.redirect_uris, redirect) {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            &format!(
                "the redirect_uri is not one that client {:?} registered; nothing was sent to it",
                client.name
            ),
        ));
    }
    Ok((client, redirect.clone()))
}

fn is_pkce_challenge(c: &str) -> bool {
    // RFC 7636 §4.2: BASE64URL(SHA256(verifier)) is 43 characters; allow the unreserved set.
    (43..=128).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `GET /oauth/authorize`.
pub async fn authorize(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let raw = query.unwrap_or_default();
    let p = match parse_params(&raw) {
        Ok(p) => p,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let (client, redirect_uri) = match client_and_redirect(&hub, &p).await {
        Ok(v) => v,
        Err(page) => return page,
    };
    let state = p.get("state").map(String::as_str);
    let fail = |error: &str, description: &str| {
        error_to_client(&hub, &redirect_uri, state, error, description)
    };
    if state.is_some_and(|s| s.len() > MAX_STATE_LEN) {
        return fail("invalid_request", "state is too long");
    }
    if p.get("response_type").map(String::as_str) != Some("code") {
        return fail(
            "unsupported_response_type",
            "response_type must be code (the authorization code flow)",
        );
    }
    if p.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return fail(
            "invalid_request",
            "PKCE with code_challenge_method=S256 is required (plain is not accepted)",
        );
    }
    let Some(challenge) = p.get("code_challenge").filter(|c| is_pkce_challenge(c)) else {
        return fail(
            "invalid_request",
            "code_challenge is missing or malformed (BASE64URL of the SHA-256 of the verifier)",
        );
    };
    let Some(user) = signin::signed_in(&hub, &headers).await else {
        return signin::login_redirect(&format!("/oauth/authorize?{raw}"));
    };
    let base = hub.base_url();
    let resource = match p.get("resource") {
        None => endpoint_url(base, None),
        Some(r) if resource_ok(base, &user.user, r) => r.clone(),
        Some(_) => {
            return fail(
                "invalid_target",
                &format!(
                    "resource must be one of your MCP endpoints: {} or {}",
                    endpoint_url(base, None),
                    endpoint_url(base, Some(user.user.as_str()))
                ),
            );
        }
    };
    let scope = match p
        .get("scope")
        .map(|s| s.split_whitespace().collect::<Vec<_>>())
    {
        None => "mcp".to_owned(),
        Some(v) if v.is_empty() => "mcp".to_owned(),
        Some(v) => {
            if let Some(bad) = v.iter().find(|s| !SCOPES_SUPPORTED.contains(s)) {
                return fail(
                    "invalid_scope",
                    &format!(
                        "scope {bad:?} cannot be granted to a client (supported: {})",
                        SCOPES_SUPPORTED.join(" ")
                    ),
                );
            }
            let mut v = v;
            v.sort_unstable();
            v.dedup();
            v.join(" ")
        }
    };
    let request = Request {
        client_id: client.id.clone(),
        redirect_uri: redirect_uri.clone(),
        state: state.map(str::to_owned),
        code_challenge: challenge.clone(),
        resource,
        scope,
    };
    let id = crate::signin::random_secret();
    {
        let Ok(mut pending) = hub.oauth.pending.lock() else {
            return error_page(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        if pending.len() >= MAX_PENDING {
            let now = Instant::now();
            pending.retain(|_, v| v.expires > now);
            if pending.len() >= MAX_PENDING {
                return error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many authorizations are waiting for consent; try again in a few minutes",
                );
            }
        }
        pending.insert(
            id.clone(),
            Pending {
                session_id: user.session_id.clone(),
                user_id: user.user_id,
                client_name: client.name.clone(),
                request: request.clone(),
                expires: Instant::now() + PENDING_TTL,
            },
        );
    }
    consent_page(&user, &client, &request, &id)
}

/// Where the client's redirect goes, as the person should see it.
fn redirect_host(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(u) => match u.host_str() {
            Some(h) => match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            },
            None => format!("{}: (an application on this device)", u.scheme()),
        },
        Err(_) => uri.to_owned(),
    }
}

/// The page's CSP with the client's redirect target added to `form-action`: browsers apply
/// `form-action` to the redirect that answers the form too, and the approval's answer is a
/// redirect to the client.
fn allow_form_redirect(response: &mut Response, redirect_uri: &str) {
    let Ok(url) = url::Url::parse(redirect_uri) else {
        return;
    };
    let target = match url.origin() {
        o @ url::Origin::Tuple(..) => o.ascii_serialization(),
        url::Origin::Opaque(_) => format!("{}:", url.scheme()),
    };
    let h = response.headers_mut();
    let csp = h
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .replace(
            "form-action 'self'",
            &format!("form-action 'self' {target}"),
        );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
}

fn consent_page(user: &WebUser, client: &Client, r: &Request, pending: &str) -> Response {
    let mut page = consent_markup(user, client, r, pending);
    allow_form_redirect(&mut page, &r.redirect_uri);
    page
}

fn consent_markup(user: &WebUser, client: &Client, r: &Request, pending: &str) -> Response {
    let documented = client.id.starts_with("https://");
    web::page(
        StatusCode::OK,
        "Allow access",
        html! {
            h1 { "Allow " (client.name) " to use Lodge?" }
            p {
                "Signed in as " strong { (user.user.as_str()) } ". "
                "The application " strong { (client.name) }
                @if documented { " (described at " code { (client.id) } ")" }
                " asks for access to your Lodge MCP endpoint."
            }
            p { "After you answer, you are sent to " strong { (redirect_host(&r.redirect_uri)) } "." }
            h2 { "It will be able to" }
            ul {
                @for s in r.scope.split(' ') {
                    li {
                        code { (s) } ": "
                        @if s == "mcp" { "call tools in your room (files, commands, notebooks, git, your secrets as tools use them)" }
                        @else { (s) }
                    }
                }
            }
            p { "For: " code { (r.resource) } }
            form method="post" action="/oauth/authorize" {
                (web::csrf_field(&user.csrf))
                input type="hidden" name="pending" value=(pending);
                input type="hidden" name="client_id" value=(r.client_id);
                input type="hidden" name="redirect_uri" value=(r.redirect_uri);
                @if let Some(s) = &r.state { input type="hidden" name="state" value=(s); }
                input type="hidden" name="code_challenge" value=(r.code_challenge);
                input type="hidden" name="resource" value=(r.resource);
                input type="hidden" name="scope" value=(r.scope);
                button type="submit" name="decision" value="approve" { "Allow" }
                " "
                button type="submit" name="decision" value="deny" { "Deny" }
            }
        },
    )
}

/// `POST /oauth/authorize`: the answer to a consent page.
pub async fn decide(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(user) = signin::signed_in(&hub, &headers).await else {
        return error_page(
            StatusCode::UNAUTHORIZED,
            "you are not signed in (any more): start again from the application",
        );
    };
    let form = match std::str::from_utf8(&body)
        .map_err(|e| e.to_string())
        .and_then(parse_params)
    {
        Ok(f) => f,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if !web::csrf_ok(&user.csrf, get("csrf")) {
        return error_page(
            StatusCode::FORBIDDEN,
            "the form's CSRF token does not match your session; nothing was approved",
        );
    }
    let pending = {
        let Ok(mut all) = hub.oauth.pending.lock() else {
            return error_page(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        // Another session's pending authorization is left alone: refusing must not let one
        // person cancel another's consent.
        match all.get(get("pending")) {
            Some(p) if p.session_id == user.session_id && p.user_id == user.user_id => {
                all.remove(get("pending"))
            }
            _ => None,
        }
    };
    let Some(pending) = pending.filter(|p| p.expires > Instant::now()) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "this authorization is unknown, expired or belongs to another session: start again from the application",
        );
    };
    let presented = Request {
        client_id: get("client_id").to_owned(),
        redirect_uri: get("redirect_uri").to_owned(),
        state: form.get("state").cloned(),
        code_challenge: get("code_challenge").to_owned(),
        resource: get("resource").to_owned(),
        scope: get("scope").to_owned(),
    };
    let r = pending.request;
    let target = format!("{} {:?}", r.client_id, pending.client_name);
    if presented != r {
        hub.audit.oauth(OAuthEvent {
            user: Some(user.user.as_str()),
            action: "oauth.consent",
            target: &target,
            outcome: "refused: parameters changed",
        });
        return error_page(
            StatusCode::BAD_REQUEST,
            "the approval does not match the request it answers; nothing was approved",
        );
    }
    let state = r.state.as_deref();
    if get("decision") != "approve" {
        hub.audit.oauth(OAuthEvent {
            user: Some(user.user.as_str()),
            action: "oauth.consent",
            target: &target,
            outcome: "denied",
        });
        return error_to_client(
            &hub,
            &r.redirect_uri,
            state,
            "access_denied",
            "the user denied the request",
        );
    }
    let code = crate::signin::random_secret();
    let entry = Code {
        user_id: user.user_id,
        user: user.user.clone(),
        client_id: r.client_id.clone(),
        client_name: pending.client_name.clone(),
        redirect_uri: r.redirect_uri.clone(),
        challenge: r.code_challenge.clone(),
        resource: r.resource.clone(),
        scope: r.scope.clone(),
        expires: Instant::now() + CODE_TTL,
        used: None,
    };
    if let Ok(mut codes) = hub.oauth.codes.lock() {
        codes.insert(crate::signin::sha256(&code), entry);
    }
    hub.audit.oauth(OAuthEvent {
        user: Some(user.user.as_str()),
        action: "oauth.consent",
        target: &target,
        outcome: "approved",
    });
    let mut p = vec![("code", code.as_str())];
    if let Some(s) = state {
        p.push(("state", s));
    }
    back_to_client(&hub, &r.redirect_uri, &p)
}
