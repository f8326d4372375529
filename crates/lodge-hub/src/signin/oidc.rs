//! The authorization-code flow against the organisation's OpenID provider: `GET /hub/login`
//! sends the browser there with PKCE (S256), `state` and `nonce`; `GET /hub/oauth_callback`
//! takes it back, exchanges the code and verifies the ID token. A pending sign-in is single-use,
//! expires in 10 minutes and is bound to the browser that started it by a cookie. This module
//! checks what the provider says; who may sign in is `provision`'s decision.

use super::pages::{PageError, query_param, refused};
use super::provision::{self, Refusal, Vouched};
use super::{
    Method, add_cookie, begin_session, cookie, random_secret, secret_shaped, see_other, set_cookie,
    sha256,
};
use crate::Hub;
use crate::http_util::ClientAddr;
use crate::jwt::{self, ProviderMetadata};
use crate::web::error_page;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use lodge_core::config::OidcConfig;
use lodge_core::time::now_ms;
use lodge_store::PendingSignin;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The cookie binding a pending sign-in to the browser that started it.
pub const BROWSER_COOKIE: &str = "lodge_signin";
/// A sign-in must come back from the provider within this time.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Sign-ins one client address may start per minute: each stores a pending sign-in for
/// [`PENDING_TTL`], so unauthenticated requests cannot grow the store without bound.
const STARTS_PER_MINUTE: u32 = 60;

/// The client for the provider's token and userinfo endpoints, built as the verifier builds
/// its own (bounded time, no redirects).
fn http() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| jwt::Provider::http_client().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// The configured provider, if sign-in goes through one.
pub(crate) fn configured(hub: &Hub) -> Option<(&OidcConfig, &Arc<jwt::Provider>)> {
    Some((hub.config.auth.oidc.as_ref()?, hub.oidc.as_ref()?))
}

fn redirect_uri(hub: &Hub) -> String {
    format!("{}/hub/oauth_callback", hub.base_url())
}

/// The provider cannot be reached or understood: a page saying so (nothing is refused).
fn provider_down(what: &str, e: &dyn std::fmt::Display) -> PageError {
    tracing::error!(error = %e, "{what}");
    error_page(
        StatusCode::BAD_GATEWAY,
        "The identity provider is unavailable",
        "Lodge could not reach your organisation's identity provider. Try again in a moment; if \
         it persists, tell the operator (the hub log has the cause).",
    )
    .into()
}

/// `GET /hub/login` with `[auth.oidc]`: records the pending sign-in and sends the browser to
/// the provider's authorization endpoint.
pub async fn start(
    hub: &Hub,
    headers: &HeaderMap,
    client: Option<IpAddr>,
    next: &str,
) -> Result<Response, PageError> {
    let Some((cfg, provider)) = configured(hub) else {
        return Err(error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sign-in is not configured",
            "This hub has no identity provider set up.",
        )
        .into());
    };
    if let Some(ip) = client
        && let Err(wait) = hub.signin_starts.take(
            ip,
            crate::limit::Rate::per_minute(STARTS_PER_MINUTE),
            std::time::Instant::now(),
        )
    {
        let message = format!(
            "Too many sign-ins were started from your address. Try again in {} seconds.",
            crate::limit::retry_after_s(wait)
        );
        return Err(error_page(StatusCode::TOO_MANY_REQUESTS, "Slow down", &message).into());
    }
    let meta = provider
        .metadata()
        .await
        .map_err(|e| provider_down("OpenID discovery failed", &e))?;
    let (state, nonce, verifier) = (random_secret(), random_secret(), random_secret());
    let browser = cookie(headers, BROWSER_COOKIE)
        .filter(|v| secret_shaped(v))
        .map_or_else(random_secret, str::to_owned);
    hub.store
        .create_pending_signin(&PendingSignin {
            state_hash: sha256(&state),
            browser_hash: sha256(&browser),
            verifier: verifier.clone(),
            nonce: nonce.clone(),
            next: next.to_owned(),
            expires_ms: now_ms() + PENDING_TTL.as_millis() as i64,
        })
        .await?;
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &cfg.client_id)
        .append_pair("redirect_uri", &redirect_uri(hub))
        .append_pair("scope", &cfg.scopes.join(" "))
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &super::pkce_challenge(&verifier))
        .append_pair("code_challenge_method", "S256")
        .finish();
    let endpoint = &meta.authorization_endpoint;
    let sep = if endpoint.contains('?') { '&' } else { '?' };
    let mut r = see_other(&format!("{endpoint}{sep}{query}"));
    add_cookie(
        &mut r,
        &set_cookie(
            hub,
            BROWSER_COOKIE,
            &browser,
            "/hub/",
            PENDING_TTL.as_secs(),
        ),
    );
    Ok(r)
}

/// The provider's answer at its token endpoint.
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    pub id_token: Option<String>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
}

/// Why a token-endpoint call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenCallError {
    /// The provider answered with an OAuth error (RFC 6749 section 5.2): it decided.
    #[error("the provider refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        error: String,
        description: Option<String>,
    },
    /// Network trouble, a 5xx, or an answer that is not OAuth: nothing was decided.
    #[error("the provider's token endpoint is unavailable: {0}")]
    Unavailable(String),
}

/// Calls the token endpoint with `params`, authenticating as the configured client
/// (`client_secret_basic` or `client_secret_post` with a secret; `client_id` alone without).
pub(crate) async fn token_call(
    cfg: &OidcConfig,
    meta: &ProviderMetadata,
    params: &[(&str, &str)],
) -> Result<TokenResponse, TokenCallError> {
    let http = http().map_err(TokenCallError::Unavailable)?;
    let mut form: Vec<(&str, &str)> = params.to_vec();
    let mut request = http.post(&meta.token_endpoint);
    match &cfg.client_secret {
        Some(secret) if cfg.token_endpoint_auth_method == "client_secret_post" => {
            form.push(("client_id", &cfg.client_id));
            form.push(("client_secret", secret.expose()));
        }
        Some(secret) => {
            // RFC 6749 section 2.3.1: both parts form-encoded before Base64.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(&cfg.client_id), enc(secret.expose()));
            request = request.header(
                reqwest::header::AUTHORIZATION,
                format!("Basic {}", STANDARD.encode(pair)),
            );
        }
        None => form.push(("client_id", &cfg.client_id)),
    }
    let response = request
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|e| TokenCallError::Unavailable(e.without_url().to_string()))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return serde_json::from_value(body)
            .map_err(|e| TokenCallError::Unavailable(format!("not a token response: {e}")));
    }
    match body.get("error").and_then(Value::as_str) {
        Some(error) if status.is_client_error() => Err(TokenCallError::Refused {
            error: error.to_owned(),
            description: body
                .get("error_description")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }),
        _ => Err(TokenCallError::Unavailable(format!("HTTP {status}"))),
    }
}

/// The userinfo claims for `access_token`, if the provider has the endpoint; only when their
/// `sub` is `subject` (OpenID Connect Core section 5.3.2).
pub(crate) async fn userinfo(
    meta: &ProviderMetadata,
    access_token: &str,
    subject: &str,
) -> Result<Option<Map<String, Value>>, String> {
    let Some(endpoint) = &meta.userinfo_endpoint else {
        return Ok(None);
    };
    let response = http()?
        .get(endpoint)
        .bearer_auth(access_token)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !response.status().is_success() {
        return Err(format!("userinfo answered HTTP {}", response.status()));
    }
    let claims: Map<String, Value> = response.json().await.map_err(|e| e.to_string())?;
    if claims.get("sub").and_then(Value::as_str) != Some(subject) {
        return Err("userinfo names another subject than the ID token".into());
    }
    Ok(Some(claims))
}

/// The claims that decide a sign-in: the verified ID token's, with the username and groups
/// claims filled in from userinfo when the ID token lacks them.
pub(crate) async fn claims_with_userinfo(
    cfg: &OidcConfig,
    meta: &ProviderMetadata,
    id_claims: Map<String, Value>,
    access_token: Option<&str>,
    subject: &str,
) -> Map<String, Value> {
    let mut all = id_claims;
    let wanted = [cfg.username_claim.as_str(), cfg.groups_claim.as_str()];
    let missing = wanted.iter().any(|c| !all.contains_key(*c));
    if let (true, Some(at)) = (missing, access_token) {
        match userinfo(meta, at, subject).await {
            Ok(Some(info)) => {
                for c in wanted {
                    if let (false, Some(v)) = (all.contains_key(c), info.get(c)) {
                        all.insert(c.to_owned(), v.clone());
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "userinfo not used"),
        }
    }
    all
}

/// A sign-in that cannot go on: audited, and a page that says why.
fn refuse(
    hub: &Hub,
    client: Option<IpAddr>,
    user: Option<&str>,
    status: StatusCode,
    why: &str,
) -> PageError {
    refused(hub, user, Method::Oidc, client, why);
    error_page(status, "Sign-in refused", why).into()
}

const STALE: &str = "This sign-in link was stale or forged: it was already used, has expired, or \
                     was not started by this hub. Start again from the sign-in page.";
const OTHER_BROWSER: &str = "This sign-in was started in another browser (or this browser's \
                             cookies were cleared). Start again from the sign-in page here.";

/// `GET /hub/oauth_callback`: the provider sends the browser back here with `code` and `state`.
pub async fn callback(
    State(hub): State<Arc<Hub>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let Some((cfg, provider)) = configured(&hub) else {
        return Ok(error_page(
            StatusCode::NOT_FOUND,
            "Sign-in is not configured",
            "This hub has no identity provider set up.",
        ));
    };
    let q = query.as_deref();
    let state = query_param(q, "state").filter(|s| secret_shaped(s));
    let Some(state) = state else {
        return Err(refuse(&hub, client, None, StatusCode::BAD_REQUEST, STALE));
    };
    // Taken (deleted) before anything else: a state works once, whatever happens next.
    let Some(pending) = hub.store.take_pending_signin(&sha256(&state)).await? else {
        return Err(refuse(&hub, client, None, StatusCode::BAD_REQUEST, STALE));
    };
    let same_browser = cookie(&headers, BROWSER_COOKIE)
        .is_some_and(|c| bool::from(sha256(c).ct_eq(&pending.browser_hash)));
    if !same_browser {
        return Err(refuse(
            &hub,
            client,
            None,
            StatusCode::BAD_REQUEST,
            OTHER_BROWSER,
        ));
    }
    if pending.expires_ms <= now_ms() {
        return Err(refuse(&hub, client, None, StatusCode::BAD_REQUEST, STALE));
    }
    if let Some(error) = query_param(q, "error") {
        let description = query_param(q, "error_description").unwrap_or_default();
        let why = format!("The identity provider did not sign you in: {error} {description}");
        return Err(refuse(
            &hub,
            client,
            None,
            StatusCode::FORBIDDEN,
            why.trim(),
        ));
    }
    let Some(code) = query_param(q, "code") else {
        return Err(refuse(&hub, client, None, StatusCode::BAD_REQUEST, STALE));
    };
    let meta = provider
        .metadata()
        .await
        .map_err(|e| provider_down("OpenID discovery failed", &e))?;
    let redirect = redirect_uri(&hub);
    let tokens = token_call(
        cfg,
        &meta,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect),
            ("code_verifier", &pending.verifier),
        ],
    )
    .await;
    let tokens = match tokens {
        Ok(t) => t,
        Err(e @ TokenCallError::Refused { .. }) => {
            let why = format!("The identity provider refused the sign-in code ({e}). Start again.");
            return Err(refuse(&hub, client, None, StatusCode::FORBIDDEN, &why));
        }
        Err(e) => return Err(provider_down("the code exchange failed", &e)),
    };
    let Some(id_token) = tokens.id_token.as_deref() else {
        let why = "The identity provider sent no ID token (is \"openid\" among auth.oidc.scopes?).";
        return Err(refuse(&hub, client, None, StatusCode::BAD_GATEWAY, why));
    };
    let claims = match provider
        .verify(id_token, &cfg.issuer, &[&cfg.client_id], now_ms())
        .await
    {
        Ok(c) => c,
        Err(e) if e.is_provider_failure() => {
            return Err(provider_down("the provider's keys are unavailable", &e));
        }
        Err(e) => {
            let why = format!("The ID token from the identity provider is not valid: {e}.");
            return Err(refuse(&hub, client, None, StatusCode::FORBIDDEN, &why));
        }
    };
    // The nonce ties the ID token to this sign-in: one from another sign-in (replayed) fails.
    let nonce_ok = claims
        .str("nonce")
        .is_some_and(|n| bool::from(n.as_bytes().ct_eq(pending.nonce.as_bytes())));
    if !nonce_ok {
        let why = "The ID token does not belong to this sign-in (its nonce differs): it may have \
                   been replayed. Start again.";
        return Err(refuse(&hub, client, None, StatusCode::FORBIDDEN, why));
    }
    // Several audiences: the token must say it was issued to us (OpenID Connect Core 3.1.3.7).
    if claims.strings("aud").len() > 1 && claims.str("azp") != Some(cfg.client_id.as_str()) {
        let why = "The ID token was issued to another client (azp).";
        return Err(refuse(&hub, client, None, StatusCode::FORBIDDEN, why));
    }
    let Some(subject) = claims.str("sub").map(str::to_owned) else {
        let why = "The ID token names no subject (sub).";
        return Err(refuse(&hub, client, None, StatusCode::FORBIDDEN, why));
    };
    let all = claims_with_userinfo(
        cfg,
        &meta,
        claims.raw,
        tokens.access_token.as_deref(),
        &subject,
    )
    .await;
    let name = match provision::username(cfg, &all) {
        Ok(n) => n,
        Err(r) => return Err(refusal_page(&hub, client, None, &r)),
    };
    let groups = provision::groups(cfg, &all).unwrap_or_default();
    let role = match provision::role(cfg, groups) {
        Ok(role) => role,
        Err(r) => return Err(refusal_page(&hub, client, Some(&name), &r)),
    };
    let user = provision::provision(
        &hub,
        cfg,
        Vouched {
            issuer: cfg.issuer.clone(),
            subject,
            name: name.clone(),
            role,
            refresh_token: tokens.refresh_token,
        },
    )
    .await;
    let user = match user {
        Ok(u) => u,
        Err(provision::ProvisionError::Refused(r)) => {
            return Err(refusal_page(&hub, client, Some(&name), &r));
        }
        Err(provision::ProvisionError::Store(e)) => return Err(e.into()),
        Err(e @ provision::ProvisionError::Vault(_)) => {
            return Err(provider_down(
                "cannot keep the provider's refresh token",
                &e,
            ));
        }
    };
    let mut r = begin_session(&hub, &headers, &user, Method::Oidc, client, &pending.next).await?;
    add_cookie(&mut r, &set_cookie(&hub, BROWSER_COOKIE, "", "/hub/", 0));
    Ok(r)
}

fn refusal_page(
    hub: &Hub,
    client: Option<IpAddr>,
    name: Option<&lodge_core::UserName>,
    r: &Refusal,
) -> PageError {
    let why = r.to_string();
    let mut first = why.chars();
    let why: String = first
        .next()
        .map(|c| c.to_uppercase().chain(first).collect())
        .unwrap_or_default();
    refuse(
        hub,
        client,
        name.map(|n| n.as_str()),
        StatusCode::FORBIDDEN,
        &format!("{why}."),
    )
}
