//! Account operations shared by the CLI and the REST API, so both apply the same rules: valid
//! names, known profiles, scopes the owner may hold, sane expiry, and an audit record for each.

use crate::audit::{AdminAction, Auditor};
use lodge_core::time::now_ms;
use lodge_core::{Config, NewToken, ScopeKind, Scopes, UserName, duration};
use lodge_store::{NewTokenRow, NewUser, Store, StoreError, TokenInfo, User};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Name(#[from] lodge_core::NameError),
    #[error(transparent)]
    Scope(#[from] lodge_core::ScopeError),
    #[error(transparent)]
    Duration(#[from] duration::DurationError),
    #[error("no user named {0}: create it with 'lodge user add {0}'")]
    UnknownUser(String),
    #[error("unknown profile {0:?}: define [profiles.{0}] in lodge.toml first")]
    UnknownProfile(String),
    #[error("user {0} already exists")]
    Exists(String),
    #[error("no token with id {0}: 'lodge token list USER' shows the ids")]
    UnknownToken(String),
    #[error("note too long: at most 200 characters")]
    NoteTooLong,
    #[error(
        "scope {0} needs auth.admin_access = true in lodge.toml (or LODGE_AUTH_ADMIN_ACCESS=true): acting in other users' rooms is off on this hub"
    )]
    AdminAccessOff(String),
    #[error(
        "a token may not outlive the token that creates it: ask for an expiry of at most {max} (the creating token expires at {at})"
    )]
    OutlivesCreator { max: String, at: String },
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UserExists(n) => AccountError::Exists(n),
            other => AccountError::Store(other),
        }
    }
}

impl From<AccountError> for crate::error::ApiError {
    fn from(e: AccountError) -> Self {
        use crate::error::ApiError as A;
        match e {
            AccountError::UnknownUser(_) | AccountError::UnknownToken(_) => {
                A::NotFound(e.to_string())
            }
            AccountError::Exists(_) => A::Conflict(e.to_string()),
            AccountError::Scope(lodge_core::ScopeError::Exceeds(_))
            | AccountError::OutlivesCreator { .. } => A::Forbidden(e.to_string()),
            AccountError::Store(s) => s.into(),
            other => A::BadRequest(other.to_string()),
        }
    }
}

/// The token that asks for a new one: the new token gets no more scopes and no longer life.
pub struct Creator<'a> {
    pub owner: &'a UserName,
    pub scopes: &'a Scopes,
    /// None: the creating token never expires.
    pub expires_ms: Option<i64>,
}

pub struct TokenRequest<'a> {
    /// The token creating this one; `None` for the operator at the CLI.
    pub creator: Option<Creator<'a>>,
    pub owner: &'a str,
    pub scopes: Option<&'a str>,
    pub expires: Option<&'a str>,
    pub note: &'a str,
}

pub struct Accounts<'a> {
    pub store: &'a dyn Store,
    pub config: &'a Config,
    pub audit: &'a Auditor,
    /// Who performs the actions (None: the operator at the CLI).
    pub actor: Option<&'a str>,
}

impl Accounts<'_> {
    fn record(&self, action: &str, target: &str, outcome: &str) {
        self.audit.admin(AdminAction {
            actor: self.actor,
            action,
            target,
            outcome,
        });
    }

    pub async fn add_user(
        &self,
        name: &str,
        admin: bool,
        profile: Option<&str>,
    ) -> Result<User, AccountError> {
        let name = UserName::parse(name)?;
        let profile = profile.unwrap_or("default");
        if !self.config.has_profile(profile) {
            return Err(AccountError::UnknownProfile(profile.to_owned()));
        }
        let user = self
            .store
            .create_user(&NewUser {
                name,
                admin,
                profile: profile.to_owned(),
            })
            .await?;
        self.record(
            "user.add",
            user.name.as_str(),
            if admin { "ok admin" } else { "ok" },
        );
        Ok(user)
    }

    pub async fn remove_user(&self, name: &str) -> Result<User, AccountError> {
        let name = UserName::parse(name)?;
        let user = self
            .store
            .user(&name)
            .await?
            .ok_or_else(|| AccountError::UnknownUser(name.to_string()))?;
        self.store.remove_user(&name).await?;
        self.record("user.remove", name.as_str(), "ok");
        Ok(user)
    }

    /// Mints a token; returns the secret (shown once) and its public record.
    pub async fn create_token(
        &self,
        req: TokenRequest<'_>,
    ) -> Result<(String, TokenInfo), AccountError> {
        let owner = UserName::parse(req.owner)?;
        let user = self
            .store
            .user(&owner)
            .await?
            .ok_or_else(|| AccountError::UnknownUser(owner.to_string()))?;
        let scopes = match req.scopes {
            Some(s) => Scopes::parse_list(s, user.admin)?,
            None => Scopes::default_token(),
        };
        scopes.check_held_by(&owner, user.admin)?;
        if let Some(s) = scopes
            .iter()
            .find(|s| s.kind == ScopeKind::AccessRooms && !self.config.auth.admin_access)
        {
            return Err(AccountError::AdminAccessOff(s.to_string()));
        }
        if let Some(c) = &req.creator {
            scopes.check_within(&owner, c.scopes, c.owner)?;
        }
        let lifetime = req
            .expires
            .map(duration::parse_optional)
            .transpose()?
            .flatten();
        let now = now_ms();
        let expires_ms =
            lifetime.map(|d| now.saturating_add(d.as_millis().min(i64::MAX as u128) as i64));
        if let Some(limit) = req.creator.as_ref().and_then(|c| c.expires_ms) {
            // No expiry, or a later one, would let a short-lived token mint a lasting one.
            if expires_ms.is_none_or(|e| e > limit) {
                let left = std::time::Duration::from_secs((limit - now).max(0) as u64 / 1000);
                return Err(AccountError::OutlivesCreator {
                    max: duration::format(left),
                    at: lodge_core::time::rfc3339(limit),
                });
            }
        }
        if req.note.chars().count() > 200 {
            return Err(AccountError::NoteTooLong);
        }
        // Token ids are 48 random bits; retry the rare collision instead of failing the user.
        for _ in 0..3 {
            let t = NewToken::generate();
            let row = NewTokenRow {
                id: t.id.clone(),
                user: owner.clone(),
                hash: t.hash,
                scopes: scopes.clone(),
                note: req.note.to_owned(),
                expires_ms,
            };
            match self.store.create_token(&row).await {
                Ok(info) => {
                    self.record("token.create", &format!("{owner} {}", info.id), "ok");
                    return Ok((t.secret, info));
                }
                Err(StoreError::TokenCollision) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AccountError::Store(StoreError::TokenCollision))
    }

    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo, AccountError> {
        let shown: String = id.chars().take(20).collect();
        if !lodge_core::token::is_id(id) {
            return Err(AccountError::UnknownToken(shown));
        }
        let info = self
            .store
            .token_info(id)
            .await?
            .ok_or_else(|| AccountError::UnknownToken(shown))?;
        self.store.revoke_token(id).await?;
        self.record("token.revoke", &format!("{} {id}", info.user), "ok");
        Ok(info)
    }
}
