//! The JSON REST API under `/api/`: users, tokens, sessions and secrets (names only), with
//! scopes enforced per target user. A caller without the scope for a user gets 403 whether
//! that user exists or not. Secret values may be written here but are never returned.

use crate::Hub;
use crate::accounts::{Accounts, Creator, TokenRequest};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::http_util::{ClientAddr, authorization};
use crate::sessions::Session;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use lodge_core::time::rfc3339;
use lodge_core::{ScopeKind, UserName};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// An authenticated REST caller.
pub struct Authed(pub Principal);

impl FromRequestParts<Arc<Hub>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, ApiError> {
        let ClientAddr(ip) = ClientAddr::from_request_parts(parts, hub)
            .await
            .unwrap_or(ClientAddr(None));
        hub.auth
            .authenticate(authorization(&parts.headers), ip)
            .await
            .map(Authed)
    }
}

fn require(p: &Principal, kinds: &[ScopeKind], target: Option<&UserName>) -> Result<(), ApiError> {
    if kinds.iter().any(|k| p.scopes.grants(*k, &p.user, target)) {
        return Ok(());
    }
    let need: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    Err(ApiError::Forbidden(match target {
        Some(t) => format!("token lacks scope {} for user {t}", need.join(" or ")),
        None => format!("token lacks scope {}", need.join(" or ")),
    }))
}

/// Parses a path user name; an invalid one is treated like any user the caller cannot see.
fn target(p: &Principal, name: &str, kinds: &[ScopeKind]) -> Result<UserName, ApiError> {
    let n = UserName::parse(name)
        .map_err(|_| ApiError::Forbidden("token lacks scope for that user".into()))?;
    require(p, kinds, Some(&n))?;
    Ok(n)
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t).map_err(|e| match &e {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(e.body_text()),
        _ if e.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(e.body_text()),
        // serde quotes the offending value, and a body may carry a secret's fields.
        _ => ApiError::BadRequest(lodge_core::text::without_values(&e.body_text())),
    })
}

fn accounts<'a>(hub: &'a Hub, p: &'a Principal) -> Accounts<'a> {
    Accounts {
        store: &*hub.store,
        config: &hub.config,
        audit: &hub.audit,
        actor: Some(p.user.as_str()),
    }
}

fn user_json(u: &lodge_store::User) -> Value {
    json!({"name": u.name, "admin": u.admin, "profile": u.profile, "created": rfc3339(u.created_ms)})
}

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

pub async fn list_users(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
) -> Result<Json<Value>, ApiError> {
    require(&p, &[ScopeKind::ReadUsers], None)?;
    let users = hub.store.list_users().await?;
    Ok(Json(
        json!({"users": users.iter().map(user_json).collect::<Vec<_>>()}),
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    name: String,
    #[serde(default)]
    admin: bool,
    profile: Option<String>,
}

pub async fn add_user(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
    b: Result<Json<NewUserBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    require(&p, &[ScopeKind::AdminUsers], None)?;
    let b = body(b)?;
    let u = accounts(&hub, &p)
        .add_user(&b.name, b.admin, b.profile.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(user_json(&u))).into_response())
}

pub async fn get_user(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let n = target(&p, &name, &[ScopeKind::ReadUsers, ScopeKind::OwnSelf])?;
    let u = hub
        .store
        .user(&n)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user named {n}")))?;
    Ok(Json(user_json(&u)))
}

pub async fn remove_user(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    target(&p, &name, &[ScopeKind::AdminUsers])?;
    let u = accounts(&hub, &p).remove_user(&name).await?;
    hub.sessions
        .end_user(u.id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    hub.auth.invalidate(None);
    hub.upstreams.stop_user(u.id).await;
    hub.rooms.stop_user(u.id).await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_tokens(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let n = target(&p, &name, &[ScopeKind::AdminTokens, ScopeKind::OwnSelf])?;
    let tokens = hub.store.list_tokens(&n).await?;
    Ok(Json(json!({"tokens": tokens})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTokenBody {
    #[serde(default)]
    scopes: Option<Vec<String>>,
    expires: Option<String>,
    #[serde(default)]
    note: String,
}

pub async fn create_token(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
    Path(name): Path<String>,
    b: Result<Json<NewTokenBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    target(&p, &name, &[ScopeKind::AdminTokens, ScopeKind::OwnSelf])?;
    let b = body(b)?;
    let scopes = b.scopes.map(|s| s.join(","));
    let (secret, info) = accounts(&hub, &p)
        .create_token(TokenRequest {
            creator: Some(Creator {
                owner: &p.user,
                scopes: &p.scopes,
                expires_ms: p.expires_ms,
            }),
            owner: &name,
            scopes: scopes.as_deref(),
            expires: b.expires.as_deref(),
            note: &b.note,
        })
        .await?;
    let mut v = serde_json::to_value(&info).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["token"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

pub async fn revoke_token(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let n = target(&p, &name, &[ScopeKind::AdminTokens, ScopeKind::OwnSelf])?;
    let not_found = || ApiError::NotFound(format!("user {n} has no token with that id"));
    let info = hub.store.token_info(&id).await?.ok_or_else(not_found)?;
    if info.user != n {
        return Err(not_found());
    }
    accounts(&hub, &p).revoke_token(&id).await?;
    hub.auth.invalidate(Some(&id));
    Ok(StatusCode::NO_CONTENT)
}

async fn names(hub: &Hub) -> Result<HashMap<i64, UserName>, ApiError> {
    Ok(hub
        .store
        .list_users()
        .await?
        .into_iter()
        .map(|u| (u.id, u.name))
        .collect())
}

fn session_json(id: &str, s: &Session, user: Option<&UserName>) -> Value {
    json!({
        "id": id,
        "user": user,
        "protocol": s.protocol,
        "created": rfc3339(s.created_ms),
        "last_seen": rfc3339(s.last_seen_ms()),
    })
}

pub async fn list_sessions(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
) -> Result<Json<Value>, ApiError> {
    let scope = if p.scopes.grants(ScopeKind::ReadSessions, &p.user, None) {
        None
    } else {
        require(
            &p,
            &[ScopeKind::ReadSessions, ScopeKind::OwnSelf],
            Some(&p.user),
        )?;
        Some(p.user_id)
    };
    let names = names(&hub).await?;
    let list: Vec<Value> = hub
        .sessions
        .list(scope)
        .iter()
        .map(|(id, s)| session_json(id, s, names.get(&s.user_id)))
        .collect();
    Ok(Json(json!({"sessions": list})))
}

/// Finds a session the caller may see under `kinds`; anything else is "not found".
async fn visible_session(
    hub: &Hub,
    p: &Principal,
    id: &str,
    kinds: &[ScopeKind],
) -> Result<(Arc<Session>, UserName), ApiError> {
    let not_found = || ApiError::NotFound("no such session".into());
    let s = hub.sessions.get(id).ok_or_else(not_found)?;
    let owner = names(hub).await?.remove(&s.user_id).ok_or_else(not_found)?;
    if !kinds
        .iter()
        .any(|k| p.scopes.grants(*k, &p.user, Some(&owner)))
    {
        return Err(not_found());
    }
    Ok((s, owner))
}

pub async fn get_session(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (s, owner) = visible_session(
        &hub,
        &p,
        &id,
        &[ScopeKind::ReadSessions, ScopeKind::OwnSelf],
    )
    .await?;
    Ok(Json(session_json(&id, &s, Some(&owner))))
}

pub async fn end_session(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (_, owner) = visible_session(
        &hub,
        &p,
        &id,
        &[ScopeKind::AdminSessions, ScopeKind::OwnSelf],
    )
    .await?;
    hub.sessions
        .end(&id, None)
        .await
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    hub.audit.admin(crate::audit::AdminAction {
        actor: Some(p.user.as_str()),
        action: "session.end",
        target: &format!("{owner} {id}"),
        outcome: "ok",
    });
    Ok(StatusCode::NO_CONTENT)
}

pub async fn metrics(
    State(hub): State<Arc<Hub>>,
    ClientAddr(ip): ClientAddr,
    headers: axum::http::HeaderMap,
) -> Response {
    if !hub.config.metrics.public {
        let p = match hub.auth.authenticate(authorization(&headers), ip).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        if let Err(e) = require(&p, &[ScopeKind::ReadMetrics], None) {
            return e.into_response();
        }
    }
    let text = crate::metrics::render(&hub);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

// ---- secrets: names and field names only; values go in, never out ----

/// The user a secrets call targets (own with `self`, anyone with `admin:users`), with their id.
async fn secrets_owner(hub: &Hub, p: &Principal, name: &str) -> Result<(UserName, i64), ApiError> {
    let n = target(p, name, &[ScopeKind::AdminUsers, ScopeKind::OwnSelf])?;
    let user = hub
        .store
        .user(&n)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user {n}")))?;
    Ok((n, user.id))
}

fn vault_api_error(e: lodge_vault::VaultError) -> ApiError {
    use lodge_vault::VaultError as V;
    match e {
        V::NotFound { .. } | V::FieldNotFound { .. } => ApiError::NotFound(e.to_string()),
        V::InvalidName { .. } | V::TooLarge { .. } | V::NoFields { .. } => {
            ApiError::BadRequest(e.to_string())
        }
        other => ApiError::Internal(other.to_string()),
    }
}

pub async fn list_secrets(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, id) = secrets_owner(&hub, &p, &name).await?;
    let secrets = hub.vault.list(id).await.map_err(vault_api_error)?;
    Ok(Json(json!({ "secrets": secrets })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    fields: std::collections::BTreeMap<String, String>,
}

pub async fn put_secret(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
    Path((name, secret)): Path<(String, String)>,
    b: Result<Json<SecretBody>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let (owner, id) = secrets_owner(&hub, &p, &name).await?;
    let b = body(b)?;
    if b.fields.is_empty() {
        return Err(ApiError::BadRequest(
            "fields must hold at least one field".into(),
        ));
    }
    let fields = b
        .fields
        .into_iter()
        .map(|(k, v)| (k, zeroize::Zeroizing::new(v)))
        .collect();
    hub.vault
        .put(id, &secret, fields)
        .await
        .map_err(vault_api_error)?;
    hub.audit.admin(crate::audit::AdminAction {
        actor: Some(p.user.as_str()),
        action: "secret.put",
        target: &format!("{owner} {secret}"),
        outcome: "ok",
    });
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldQuery {
    field: Option<String>,
}

pub async fn delete_secret(
    State(hub): State<Arc<Hub>>,
    Authed(p): Authed,
    Path((name, secret)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<FieldQuery>,
) -> Result<StatusCode, ApiError> {
    let (owner, id) = secrets_owner(&hub, &p, &name).await?;
    hub.vault
        .delete(id, &secret, q.field.as_deref())
        .await
        .map_err(vault_api_error)?;
    hub.audit.admin(crate::audit::AdminAction {
        actor: Some(p.user.as_str()),
        action: "secret.delete",
        target: &format!("{owner} {secret}"),
        outcome: "ok",
    });
    Ok(StatusCode::NO_CONTENT)
}
