//! Keeps users who signed in through the provider in step with it: every `recheck`, each
//! identity's refresh token is used with the provider. `invalid_grant` (disabled, removed,
//! signed out everywhere) or groups no longer allowed deprovision the user: web and MCP
//! sessions end, every token goes (OAuth ones too), the room stops. Network trouble and 5xx
//! answers never deprovision anyone; they are tried again at the next recheck.

use super::oidc::{TokenCallError, claims_with_userinfo, configured, token_call};
use super::provision::{self, REFRESH_PURPOSE, Refusal};
use crate::Hub;
use crate::audit::SigninEvent;
use crate::jwt::Provider;
use lodge_core::config::OidcConfig;
use lodge_core::time::now_ms;
use lodge_store::{AuditKind, IdentityRow, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Identities checked per round; the rest wait for the next tick.
const BATCH: u32 = 100;

/// What one recheck concluded.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The provider still vouches for the user (role and groups updated).
    Kept,
    /// The user was deprovisioned, for this reason.
    Deprovisioned(String),
    /// Nothing could be decided (network, 5xx, a misconfiguration); tried again later.
    Retry(String),
}

/// Runs until `stop`: removes expired sign-in state and, with `[auth.oidc]`, rechecks the
/// identities that are due.
pub async fn run(hub: Arc<Hub>, stop: CancellationToken) {
    let period = hub
        .config
        .auth
        .oidc
        .as_ref()
        .map_or(Duration::from_secs(60), |o| o.recheck / 2)
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        super::sweep(&*hub.store).await;
        match recheck_due(&hub).await {
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "sign-in recheck failed"),
        }
    }
}

/// Rechecks every identity last checked longer than `recheck` ago; returns the outcomes.
pub async fn recheck_due(hub: &Hub) -> Result<Vec<(i64, Outcome)>, StoreError> {
    let Some((cfg, provider)) = configured(hub) else {
        return Ok(Vec::new());
    };
    let before = now_ms() - cfg.recheck.as_millis().min(i64::MAX as u128) as i64;
    let mut out = Vec::new();
    for ident in hub.store.identities_due(before, BATCH).await? {
        let user_id = ident.user_id;
        let outcome = recheck(hub, cfg, provider, ident).await?;
        match &outcome {
            Outcome::Kept => tracing::debug!(user_id, "identity rechecked"),
            Outcome::Deprovisioned(why) => tracing::warn!(user_id, why, "user deprovisioned"),
            Outcome::Retry(why) => {
                tracing::warn!(user_id, why, "identity recheck deferred to the next round");
            }
        }
        out.push((user_id, outcome));
    }
    Ok(out)
}

/// Asks the provider about one identity and acts on the answer.
async fn recheck(
    hub: &Hub,
    cfg: &OidcConfig,
    provider: &Provider,
    mut ident: IdentityRow,
) -> Result<Outcome, StoreError> {
    let outcome = ask(hub, cfg, provider, &ident).await;
    let Some(user) = hub.store.user_by_id(ident.user_id).await? else {
        return Ok(Outcome::Kept); // removed meanwhile; its identity went with it
    };
    ident.checked_ms = now_ms();
    match outcome {
        Answer::Retry(why) => {
            hub.store.put_identity(&ident).await?;
            Ok(Outcome::Retry(why))
        }
        Answer::Gone(why) => {
            deprovision(hub, &user, ident, &why).await?;
            Ok(Outcome::Deprovisioned(why))
        }
        Answer::Vouches {
            groups,
            refresh_sealed,
        } => match provision::role(cfg, groups.clone()) {
            Err(r @ Refusal::NotAllowed { .. }) => {
                let why = format!("no longer in an allowed group ({r})");
                deprovision(hub, &user, ident, &why).await?;
                Ok(Outcome::Deprovisioned(why))
            }
            Err(r) => Ok(Outcome::Retry(r.to_string())),
            Ok(role) => {
                provision::apply_role(hub, user, &role).await?;
                ident.groups = groups;
                if refresh_sealed.is_some() {
                    ident.refresh_sealed = refresh_sealed;
                }
                hub.store.put_identity(&ident).await?;
                Ok(Outcome::Kept)
            }
        },
    }
}

enum Answer {
    /// The provider still knows the user: their current groups, and a rotated refresh token.
    Vouches {
        groups: Vec<String>,
        refresh_sealed: Option<Vec<u8>>,
    },
    /// The provider no longer vouches for the user.
    Gone(String),
    Retry(String),
}

/// One refresh with the provider, classified. Only an OAuth `invalid_grant` means "gone".
async fn ask(hub: &Hub, cfg: &OidcConfig, provider: &Provider, ident: &IdentityRow) -> Answer {
    if ident.issuer != cfg.issuer {
        return Answer::Retry(format!(
            "the identity is from issuer {} but the hub now uses {}; it is checked again at \
             the user's next sign-in",
            ident.issuer, cfg.issuer
        ));
    }
    let Some(sealed) = &ident.refresh_sealed else {
        return Answer::Retry("no refresh token".into());
    };
    let refresh = match hub
        .vault
        .open_internal(ident.user_id, REFRESH_PURPOSE, sealed)
        .await
    {
        Ok(r) => r,
        Err(e) => return Answer::Retry(format!("cannot open the sealed refresh token: {e}")),
    };
    let meta = match provider.metadata().await {
        Ok(m) => m,
        Err(e) => return Answer::Retry(e.to_string()),
    };
    let params = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
    ];
    let tokens = match token_call(cfg, &meta, &params).await {
        Ok(t) => t,
        Err(TokenCallError::Refused { error, description }) if error == "invalid_grant" => {
            return Answer::Gone(format!(
                "the identity provider no longer accepts the user's sign-in (invalid_grant{}): \
                 disabled, removed or signed out at the provider",
                description.map(|d| format!(": {d}")).unwrap_or_default()
            ));
        }
        Err(e) => return Answer::Retry(e.to_string()),
    };
    let mut claims = serde_json::Map::new();
    if let Some(id_token) = &tokens.id_token {
        match provider
            .verify(id_token, &cfg.issuer, &[&cfg.client_id], now_ms())
            .await
        {
            Ok(c) if c.str("sub") == Some(ident.subject.as_str()) => claims = c.raw,
            Ok(_) => return Answer::Retry("the refreshed ID token names another subject".into()),
            Err(e) => return Answer::Retry(format!("the refreshed ID token: {e}")),
        }
    }
    let claims = claims_with_userinfo(
        cfg,
        &meta,
        claims,
        tokens.access_token.as_deref(),
        &ident.subject,
    )
    .await;
    // A provider that sends no groups on refresh leaves them as they were.
    let groups = provision::groups(cfg, &claims).unwrap_or_else(|| ident.groups.clone());
    let refresh_sealed = match &tokens.refresh_token {
        Some(t) => match hub
            .vault
            .seal_internal(ident.user_id, REFRESH_PURPOSE, t)
            .await
        {
            Ok(s) => Some(s),
            Err(e) => return Answer::Retry(format!("cannot seal the rotated refresh token: {e}")),
        },
        None => None,
    };
    Answer::Vouches {
        groups,
        refresh_sealed,
    }
}

/// Takes everything away from a user the provider no longer vouches for: web sessions, MCP
/// sessions, every token (OAuth refresh tokens included), upstream instances and the room. The
/// identity stays bound (the name cannot pass to another subject) without a refresh token, so
/// it is not rechecked until the person signs in again.
pub async fn deprovision(
    hub: &Hub,
    user: &lodge_store::User,
    mut ident: IdentityRow,
    why: &str,
) -> Result<(), StoreError> {
    let web = hub.store.delete_web_sessions_of(user.id).await?;
    let mcp = match hub.sessions.end_user(user.id).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, user = %user.name, "cannot end MCP sessions");
            0
        }
    };
    let tokens = hub.store.revoke_user_tokens(user.id).await?;
    hub.auth.invalidate(None);
    hub.upstreams.stop_user(user.id).await;
    hub.rooms.stop_user(user.id).await;
    ident.refresh_sealed = None;
    hub.store.put_identity(&ident).await?;
    hub.audit.signin(SigninEvent {
        kind: AuditKind::Deprovision,
        user: Some(user.name.as_str()),
        method: "recheck",
        outcome: "ok",
        client: None,
        detail: Some(format!(
            "{why}; ended {web} web and {mcp} MCP sessions, revoked {tokens} tokens, stopped the room"
        )),
    });
    Ok(())
}
