//! Whom a request acts for. It comes only from credentials (and, for `/user/{name}/mcp`, the
//! token's own `access:rooms` scope for that user), never from tool arguments nor from the
//! owner's role alone.

use crate::auth::Principal;
use crate::error::ApiError;
use lodge_core::{ScopeKind, UserName};
use lodge_store::Store;

#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: i64,
    pub user: UserName,
    pub admin: bool,
    pub profile: String,
    /// The token owner when acting for someone else (a service token), else `None`.
    pub actor: Option<UserName>,
    /// The identity provider's groups of the user (for `group:NAME` in `enabled_for`); empty
    /// until [`crate::signin::fill_groups`] looks them up.
    pub groups: std::sync::Arc<[String]>,
}

impl Caller {
    fn own(p: &Principal) -> Self {
        Self {
            user_id: p.user_id,
            user: p.user.clone(),
            admin: p.admin,
            profile: p.profile.clone(),
            actor: None,
            groups: std::sync::Arc::from([]),
        }
    }
}

/// A token without `mcp` for its owner's own endpoint: the 403 names the scope it needs.
fn lacks_mcp() -> ApiError {
    ApiError::InsufficientScope {
        message: "token lacks scope 'mcp': create one with 'lodge token create USER --scopes mcp'"
            .into(),
        scope: "mcp".into(),
    }
}

fn denied() -> ApiError {
    // One answer whether or not the user exists, so the endpoint cannot be used to list users.
    ApiError::Forbidden("this token may not use that user's MCP endpoint".into())
}

/// Resolves the user an MCP request acts for: the token's owner on `/mcp`, or `target` on
/// `/user/{target}/mcp` if the token itself holds `access:rooms` (or `access:rooms!user=TARGET`)
/// and the operator allows acting in other users' rooms at all (`auth.admin_access`).
pub async fn resolve(
    p: &Principal,
    target: Option<&str>,
    store: &dyn Store,
    admin_access: bool,
) -> Result<Caller, ApiError> {
    let Some(target) = target else {
        if !p.scopes.grants(ScopeKind::Mcp, &p.user, Some(&p.user)) {
            return Err(lacks_mcp());
        }
        return Ok(Caller::own(p));
    };
    let name = UserName::parse(target).map_err(|_| denied())?;
    if name == p.user {
        return if p.scopes.grants(ScopeKind::Mcp, &p.user, Some(&name)) {
            Ok(Caller::own(p))
        } else {
            Err(lacks_mcp())
        };
    }
    // The token's scopes decide; the owner being an admin only lets them hold the scope (the
    // scopes are already cut to the owner's current role at authentication).
    let allowed = admin_access
        && p.scopes
            .grants(ScopeKind::AccessRooms, &p.user, Some(&name));
    if !allowed {
        // With admin access on, the one scope that would do is named (the same answer whether
        // or not the user exists); with it off, no scope would, so there is nothing to name.
        return Err(if admin_access {
            ApiError::InsufficientScope {
                message: "this token may not use that user's MCP endpoint".into(),
                scope: format!("access:rooms!user={name}"),
            }
        } else {
            denied()
        });
    }
    let user = store.user(&name).await?.ok_or_else(denied)?;
    Ok(Caller {
        user_id: user.id,
        user: user.name,
        admin: user.admin,
        profile: user.profile,
        actor: Some(p.user.clone()),
        groups: std::sync::Arc::from([]),
    })
}
