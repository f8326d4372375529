//! From what the provider says about a person to a Lodge user: the name (checked, or
//! normalised when `username_normalize` is on), whether their groups let them in, their admin
//! flag and profile; then the user is found or created and bound to the provider's subject.
//! It decides and records; it never talks to the provider (that is `oidc` and `recheck`).

use crate::Hub;
use crate::audit::AdminAction;
use lodge_core::UserName;
use lodge_core::config::OidcConfig;
use lodge_core::time::now_ms;
use lodge_store::{IdentityRow, NewUser, StoreError, User};
use serde_json::{Map, Value};

/// The vault purpose under which a provider refresh token is sealed.
pub const REFRESH_PURPOSE: &str = "oidc-refresh";

/// What the provider's groups make of a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub groups: Vec<String>,
    /// None: `admin_groups` is empty, so the provider does not decide (the flag is kept).
    pub admin: Option<bool>,
    /// None: `profile_for_group` is empty, so the provider does not decide.
    pub profile: Option<String>,
}

/// Why a person may not sign in; the message is shown to them and audited.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the identity provider sent no {0:?} claim to name your Lodge user")]
    NoUsername(String),
    #[error(
        "your user name {value:?} (claim {claim:?}) cannot be a Lodge user name: names start \
         with a lowercase letter and contain only a-z, 0-9, '_' and '-', at most 32 characters"
    )]
    BadName { claim: String, value: String },
    #[error(
        "you are not in a group allowed to use this hub (allowed: {allowed}); ask your \
         administrator to add you to one"
    )]
    NotAllowed { allowed: String },
    #[error(
        "there is no Lodge user {0} and this hub does not create users at sign-in; ask an administrator to add you"
    )]
    NoAccount(UserName),
    #[error(
        "the Lodge user {0} belongs to another identity at the provider; ask an administrator \
         (this protects {0}'s files and secrets from a second account with the same name)"
    )]
    NameTaken(UserName),
    #[error(
        "your identity at the provider is already bound to another Lodge user; ask an \
         administrator"
    )]
    SubjectBound,
}

/// Lowercases, keeps an email's local part, and turns every other character outside
/// `a-z 0-9 _ -` into `-`. The result must still pass the name rule.
pub fn normalize(raw: &str) -> String {
    let lower = raw.trim().to_lowercase();
    let local = match lower.rsplit_once('@') {
        Some((local, _)) => local,
        None => lower.as_str(),
    };
    local
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The Lodge user name the claims give, under the configured rule.
pub fn username(cfg: &OidcConfig, claims: &Map<String, Value>) -> Result<UserName, Refusal> {
    let claim = &cfg.username_claim;
    let raw = claims
        .get(claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Refusal::NoUsername(claim.clone()))?;
    let candidate = if cfg.username_normalize {
        normalize(raw)
    } else {
        raw.to_owned()
    };
    UserName::parse(&candidate).map_err(|_| Refusal::BadName {
        claim: claim.clone(),
        value: raw.chars().take(64).filter(|c| !c.is_control()).collect(),
    })
}

/// The groups the claims list (a string or an array of strings under `groups_claim`).
pub fn groups(cfg: &OidcConfig, claims: &Map<String, Value>) -> Option<Vec<String>> {
    match claims.get(&cfg.groups_claim)? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

/// Whether `groups` may use the hub, and the admin flag and profile they give.
pub fn role(cfg: &OidcConfig, groups: Vec<String>) -> Result<Role, Refusal> {
    let member = |g: &String| groups.contains(g);
    if !cfg.allowed_groups.is_empty() && !cfg.allowed_groups.iter().any(member) {
        return Err(Refusal::NotAllowed {
            allowed: cfg.allowed_groups.join(", "),
        });
    }
    let admin = (!cfg.admin_groups.is_empty()).then(|| cfg.admin_groups.iter().any(member));
    let profile = (!cfg.profile_for_group.is_empty()).then(|| {
        cfg.profile_for_group
            .iter()
            .find(|(g, _)| groups.contains(g))
            .map_or_else(|| "default".to_owned(), |(_, p)| p.clone())
    });
    Ok(Role {
        groups,
        admin,
        profile,
    })
}

/// A sign-in the provider vouched for, ready to be provisioned.
pub struct Vouched {
    pub issuer: String,
    pub subject: String,
    pub name: UserName,
    pub role: Role,
    /// The provider's refresh token, if it issued one (sealed before it is stored).
    pub refresh_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot seal the provider's refresh token: {0}")]
    Vault(#[from] lodge_vault::VaultError),
}

/// Finds or creates the user, enforces the one-subject-one-user binding, applies the role and
/// records the identity (groups, sealed refresh token, check time).
pub async fn provision(hub: &Hub, cfg: &OidcConfig, v: Vouched) -> Result<User, ProvisionError> {
    let store = &*hub.store;
    let bound = store.identity_by_subject(&v.issuer, &v.subject).await?;
    let user = match store.user(&v.name).await? {
        Some(u) => u,
        None if !cfg.auto_create => return Err(Refusal::NoAccount(v.name).into()),
        None => {
            if bound.is_some() {
                // The subject already has a user under another name (renamed at the provider).
                return Err(Refusal::SubjectBound.into());
            }
            create(hub, &v).await?
        }
    };
    if let Some(b) = &bound
        && b.user_id != user.id
    {
        return Err(Refusal::SubjectBound.into());
    }
    if bound.is_none()
        && let Some(existing) = store.identity_of(user.id).await?
        && (existing.issuer != v.issuer || existing.subject != v.subject)
    {
        return Err(Refusal::NameTaken(v.name).into());
    }
    let user = apply_role(hub, user, &v.role).await?;
    let refresh_sealed = match &v.refresh_token {
        Some(t) => Some(hub.vault.seal_internal(user.id, REFRESH_PURPOSE, t).await?),
        // Keep the one from an earlier sign-in: recheck still has something to ask with.
        None => bound.and_then(|b| b.refresh_sealed),
    };
    store
        .put_identity(&IdentityRow {
            user_id: user.id,
            issuer: v.issuer,
            subject: v.subject,
            groups: v.role.groups,
            refresh_sealed,
            checked_ms: now_ms(),
        })
        .await?;
    Ok(user)
}

async fn create(hub: &Hub, v: &Vouched) -> Result<User, StoreError> {
    let new = NewUser {
        name: v.name.clone(),
        admin: v.role.admin.unwrap_or(false),
        profile: v
            .role
            .profile
            .clone()
            .filter(|p| hub.config.has_profile(p))
            .unwrap_or_else(|| "default".into()),
    };
    match hub.store.create_user(&new).await {
        Ok(u) => {
            hub.audit.admin(AdminAction {
                actor: None,
                action: "user.add",
                target: u.name.as_str(),
                outcome: if u.admin {
                    "ok admin (oidc sign-in)"
                } else {
                    "ok (oidc sign-in)"
                },
            });
            Ok(u)
        }
        // Two first sign-ins at once: the other created it.
        Err(StoreError::UserExists(_)) => hub
            .store
            .user(&v.name)
            .await?
            .ok_or_else(|| StoreError::UserExists(v.name.to_string())),
        Err(e) => Err(e),
    }
}

/// Sets the admin flag and profile the provider decides (where it decides), and drops cached
/// token verifications when they changed, so a demoted admin's tokens lose their scopes now.
pub async fn apply_role(hub: &Hub, user: User, role: &Role) -> Result<User, StoreError> {
    let admin = role.admin.unwrap_or(user.admin);
    let profile = match &role.profile {
        Some(p) if hub.config.has_profile(p) => p.clone(),
        Some(p) => {
            tracing::warn!(profile = %p, user = %user.name, "auth.oidc.profile_for_group names an undefined profile; using default");
            "default".into()
        }
        None => user.profile.clone(),
    };
    if admin == user.admin && profile == user.profile {
        return Ok(user);
    }
    hub.store.set_user_role(user.id, admin, &profile).await?;
    hub.auth.invalidate(None);
    hub.audit.admin(AdminAction {
        actor: None,
        action: "user.role",
        target: user.name.as_str(),
        outcome: &format!("admin={admin} profile={profile} (from the identity provider)"),
    });
    Ok(User {
        admin,
        profile,
        ..user
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> OidcConfig {
        OidcConfig {
            issuer: "https://idp.example".into(),
            client_id: "lodge".into(),
            ..OidcConfig::default()
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn names_are_checked_or_normalised() {
        let mut c = cfg();
        let bad = claims(json!({"preferred_username": "Alice.Smith@Example.org"}));
        let e = username(&c, &bad).unwrap_err();
        assert!(matches!(e, Refusal::BadName { .. }), "{e}");
        assert!(e.to_string().contains("Alice.Smith@Example.org"), "{e}");
        c.username_normalize = true;
        assert_eq!(username(&c, &bad).unwrap().as_str(), "alice-smith");
        // Normalising cannot rescue a name that still breaks the rule.
        let digits = claims(json!({"preferred_username": "42@example.org"}));
        assert!(matches!(
            username(&c, &digits),
            Err(Refusal::BadName { .. })
        ));
        let none = claims(json!({"email": "a@b"}));
        assert_eq!(
            username(&c, &none),
            Err(Refusal::NoUsername("preferred_username".into()))
        );
        assert_eq!(normalize("Jörg Müller"), "j-rg-m-ller");
    }

    #[test]
    fn groups_decide_entry_admin_and_profile() {
        let mut c = cfg();
        c.allowed_groups = vec!["staff".into()];
        c.admin_groups = vec!["ops".into()];
        c.profile_for_group = [("gpu".to_owned(), "big".to_owned())].into();
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(
            role(&c, g(&["guests"])),
            Err(Refusal::NotAllowed { .. })
        ));
        let r = role(&c, g(&["staff", "ops", "gpu"])).unwrap();
        assert_eq!((r.admin, r.profile.as_deref()), (Some(true), Some("big")));
        let r = role(&c, g(&["staff"])).unwrap();
        assert_eq!(
            (r.admin, r.profile.as_deref()),
            (Some(false), Some("default"))
        );
        // Unset tables leave the decision with the operator.
        let open = cfg();
        let r = role(&open, Vec::new()).unwrap();
        assert_eq!((r.admin, r.profile), (None, None));
        let c2 = claims(json!({"groups": "solo"}));
        assert_eq!(groups(&open, &c2), Some(vec!["solo".to_owned()]));
    }
}
