//! Scopes, JupyterHub style: what a token may do, and for whom.
//!
//! `mcp` and `self` without a filter mean "the token owner's own"; every other scope without a
//! filter means "any user". A filter (`access:rooms!user=alice`) narrows a scope to one user.
//! This module decides coverage and grants; it does not know about HTTP, storage or config.

use crate::name::UserName;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKind {
    Mcp,
    OwnSelf,
    ReadUsers,
    AdminUsers,
    AdminTokens,
    ReadSessions,
    AdminSessions,
    ReadMetrics,
    /// Reserved (docs/security.md, "Scopes"): parses and may be held, but no route accepts it yet.
    ReadRooms,
    /// Reserved (docs/security.md, "Scopes"): parses and may be held, but no route accepts it yet.
    AdminRooms,
    /// Act in another user's room through `/user/{name}/mcp` (JupyterHub's `access:servers`);
    /// effective only while `auth.admin_access` is true.
    AccessRooms,
    /// Reserved (docs/security.md, "Scopes"): parses and may be held, but no route accepts it yet.
    ReadAudit,
}

impl ScopeKind {
    pub const ALL: [ScopeKind; 12] = [
        ScopeKind::Mcp,
        ScopeKind::OwnSelf,
        ScopeKind::ReadUsers,
        ScopeKind::AdminUsers,
        ScopeKind::AdminTokens,
        ScopeKind::ReadSessions,
        ScopeKind::AdminSessions,
        ScopeKind::ReadMetrics,
        ScopeKind::ReadRooms,
        ScopeKind::AdminRooms,
        ScopeKind::AccessRooms,
        ScopeKind::ReadAudit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Mcp => "mcp",
            ScopeKind::OwnSelf => "self",
            ScopeKind::ReadUsers => "read:users",
            ScopeKind::AdminUsers => "admin:users",
            ScopeKind::AdminTokens => "admin:tokens",
            ScopeKind::ReadSessions => "read:sessions",
            ScopeKind::AdminSessions => "admin:sessions",
            ScopeKind::ReadMetrics => "read:metrics",
            ScopeKind::ReadRooms => "read:rooms",
            ScopeKind::AdminRooms => "admin:rooms",
            ScopeKind::AccessRooms => "access:rooms",
            ScopeKind::ReadAudit => "read:audit",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// `mcp` and `self` are about the owner unless filtered; the rest are about anyone.
    fn is_personal(self) -> bool {
        matches!(self, ScopeKind::Mcp | ScopeKind::OwnSelf)
    }
}

/// One scope, optionally filtered to a single user.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub kind: ScopeKind,
    pub user: Option<UserName>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("unknown scope {0:?}; known scopes: {known}, each optionally filtered as SCOPE!user=NAME, or 'inherit'", known = known_list())]
    Unknown(String),
    #[error(
        "invalid scope filter in {0:?}: the only filter is '!user=NAME' with a valid user name"
    )]
    BadFilter(String),
    #[error("empty scope list: give at least one scope, e.g. --scopes mcp")]
    Empty,
    #[error("user {owner} may not hold scope {scope}: only admins hold admin and read scopes")]
    NotHeld { owner: String, scope: String },
    #[error(
        "the requesting token may not grant scope {0}: a new token gets at most the scopes of the token that creates it"
    )]
    Exceeds(String),
    #[error(
        "scope {scope} would act in {user}'s room, which takes scope access:rooms!user={user} (and auth.admin_access = true); mcp filtered to a user is only for that user's own tokens"
    )]
    McpForOther { scope: String, user: String },
}

fn known_list() -> String {
    ScopeKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Scope {
    pub fn new(kind: ScopeKind) -> Self {
        Self { kind, user: None }
    }

    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        let s = s.trim();
        let (base, filter) = match s.split_once('!') {
            Some((b, f)) => (b, Some(f)),
            None => (s, None),
        };
        let kind = ScopeKind::parse(base).ok_or_else(|| ScopeError::Unknown(s.to_owned()))?;
        let user = match filter {
            None => None,
            Some(f) => {
                let name = f
                    .strip_prefix("user=")
                    .ok_or_else(|| ScopeError::BadFilter(s.to_owned()))?;
                Some(UserName::parse(name).map_err(|_| ScopeError::BadFilter(s.to_owned()))?)
            }
        };
        Ok(Self { kind, user })
    }

    /// Does this scope, held by `owner`, cover acting on `target`?
    fn grants(&self, kind: ScopeKind, owner: &UserName, target: Option<&UserName>) -> bool {
        if self.kind != kind {
            return false;
        }
        match (&self.user, target) {
            (Some(only), Some(t)) => only == t,
            (Some(_), None) => false,
            (None, Some(t)) if kind.is_personal() => t == owner,
            (None, _) => true,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(u) => write!(f, "{}!user={u}", self.kind.as_str()),
            None => f.write_str(self.kind.as_str()),
        }
    }
}

/// A set of scopes held by a token (or implied by a role).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// What a role holds: users get `mcp` and `self`; admins may hold every scope.
    pub fn for_role(admin: bool) -> Self {
        if admin {
            Self(ScopeKind::ALL.into_iter().map(Scope::new).collect())
        } else {
            Self(vec![
                Scope::new(ScopeKind::Mcp),
                Scope::new(ScopeKind::OwnSelf),
            ])
        }
    }

    /// The default for a new token: the user's own MCP endpoint only.
    pub fn default_token() -> Self {
        Self(vec![Scope::new(ScopeKind::Mcp)])
    }

    /// Parses `a,b,c`; `inherit` expands to everything the owner's role holds except
    /// `access:rooms`: acting in other users' rooms is granted only when asked for by name.
    pub fn parse_list(s: &str, owner_admin: bool) -> Result<Self, ScopeError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "inherit" {
                out.extend(
                    Self::for_role(owner_admin)
                        .0
                        .into_iter()
                        .filter(|s| s.kind != ScopeKind::AccessRooms),
                );
            } else {
                out.push(Scope::parse(part)?);
            }
        }
        if out.is_empty() {
            return Err(ScopeError::Empty);
        }
        out.sort();
        out.dedup();
        Ok(Self(out))
    }

    /// Parses a list stored by this module, dropping entries that no longer parse.
    pub fn from_stored(s: &str) -> Self {
        let mut v: Vec<Scope> = s.split(',').filter_map(|p| Scope::parse(p).ok()).collect();
        v.sort();
        v.dedup();
        Self(v)
    }

    /// Refuses scopes the owner's role cannot hold (a user asking for `admin:users`; admins
    /// hold every scope), and `mcp` filtered to someone else (`mcp!user=bob` on alice's
    /// token): acting in another user's room is `access:rooms!user=bob`, one way only.
    pub fn check_held_by(&self, owner: &UserName, admin: bool) -> Result<(), ScopeError> {
        let role = Self::for_role(admin);
        for s in &self.0 {
            if !admin && !role.covers(s, owner) {
                return Err(ScopeError::NotHeld {
                    owner: owner.to_string(),
                    scope: s.to_string(),
                });
            }
            if let Some(u) = s
                .user
                .as_ref()
                .filter(|u| s.kind == ScopeKind::Mcp && *u != owner)
            {
                return Err(ScopeError::McpForOther {
                    scope: s.to_string(),
                    user: u.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Does this set hold `kind` in any form (filtered or not)?
    pub fn has_kind(&self, kind: ScopeKind) -> bool {
        self.0.iter().any(|s| s.kind == kind)
    }

    /// The token's scopes limited to what the owner's current role still holds, so that
    /// demoting an admin takes effect on their existing tokens.
    pub fn effective(&self, owner: &UserName, admin: bool) -> Self {
        if admin {
            return self.clone();
        }
        let role = Self::for_role(admin);
        Self(
            self.0
                .iter()
                .filter(|s| role.covers(s, owner))
                .cloned()
                .collect(),
        )
    }

    fn covers(&self, s: &Scope, owner: &UserName) -> bool {
        self.0.iter().any(|held| match (&held.user, &s.user) {
            _ if held.kind != s.kind => false,
            (None, None) => true,
            (None, Some(t)) => !s.kind.is_personal() || t == owner,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        })
    }

    /// Refuses to mint scopes (for a token owned by `owner`) that the creating token (held by
    /// `creator_owner`) could not exercise itself, as JupyterHub does. `self` lets a user mint
    /// their own `mcp`/`self` tokens; `admin:tokens` for a user lets one mint that user's
    /// personal scopes; anything else must be held by the creator as it stands.
    pub fn check_within(
        &self,
        owner: &UserName,
        creator: &Scopes,
        creator_owner: &UserName,
    ) -> Result<(), ScopeError> {
        for s in &self.0 {
            let target = match (&s.user, s.kind.is_personal()) {
                (Some(u), _) => Some(u),
                (None, true) => Some(owner),
                (None, false) => None,
            };
            let by_self = s.kind.is_personal()
                && target == Some(creator_owner)
                && creator.grants(ScopeKind::OwnSelf, creator_owner, Some(creator_owner));
            let by_admin = s.kind.is_personal()
                && creator.grants(ScopeKind::AdminTokens, creator_owner, target);
            if !(by_self || by_admin || creator.grants(s.kind, creator_owner, target)) {
                return Err(ScopeError::Exceeds(s.to_string()));
            }
        }
        Ok(())
    }

    /// Does any scope grant `kind` for acting on `target` (None: the collection as a whole)?
    pub fn grants(&self, kind: ScopeKind, owner: &UserName, target: Option<&UserName>) -> bool {
        self.0.iter().any(|s| s.grants(kind, owner, target))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn to_stored(&self) -> String {
        self.0
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().map(|s| s.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> UserName {
        UserName::parse(s).unwrap()
    }

    #[test]
    fn parses_and_round_trips() {
        let s = Scopes::parse_list("mcp, read:users!user=bob,mcp", true).unwrap();
        assert_eq!(s.to_stored(), "mcp,read:users!user=bob");
        assert_eq!(Scopes::from_stored(&s.to_stored()), s);
    }

    #[test]
    fn refuses_unknown_and_bad_filters() {
        assert!(matches!(
            Scopes::parse_list("root", false),
            Err(ScopeError::Unknown(_))
        ));
        assert!(matches!(
            Scopes::parse_list("mcp!group=x", false),
            Err(ScopeError::BadFilter(_))
        ));
        assert!(matches!(
            Scopes::parse_list("mcp!user=Bad", false),
            Err(ScopeError::BadFilter(_))
        ));
        assert_eq!(Scopes::parse_list(" , ", false), Err(ScopeError::Empty));
    }

    #[test]
    fn plain_mcp_is_own_endpoint_only() {
        let alice = n("alice");
        let s = Scopes::default_token();
        assert!(s.grants(ScopeKind::Mcp, &alice, Some(&alice)));
        assert!(!s.grants(ScopeKind::Mcp, &alice, Some(&n("bob"))));
    }

    #[test]
    fn filtered_access_rooms_covers_that_user_only() {
        let svc = n("svc");
        let s = Scopes::parse_list("access:rooms!user=bob", true).unwrap();
        assert!(s.grants(ScopeKind::AccessRooms, &svc, Some(&n("bob"))));
        assert!(!s.grants(ScopeKind::AccessRooms, &svc, Some(&n("carol"))));
        assert!(!s.grants(ScopeKind::Mcp, &svc, Some(&svc)), "no own /mcp");
        let all = Scopes::parse_list("access:rooms", true).unwrap();
        assert!(all.grants(ScopeKind::AccessRooms, &svc, Some(&n("carol"))));
    }

    #[test]
    fn the_new_spec_scopes_parse_and_round_trip() {
        let s = Scopes::parse_list(
            "read:rooms,admin:rooms,access:rooms!user=bob,read:audit",
            true,
        )
        .unwrap();
        assert_eq!(
            s.to_stored(),
            "read:rooms,admin:rooms,access:rooms!user=bob,read:audit"
        );
        assert_eq!(Scopes::from_stored(&s.to_stored()), s);
    }

    #[test]
    fn inherit_never_includes_access_to_other_rooms() {
        let s = Scopes::parse_list("inherit", true).unwrap();
        assert!(!s.has_kind(ScopeKind::AccessRooms));
        assert!(s.has_kind(ScopeKind::ReadAudit));
    }

    #[test]
    fn mcp_filtered_to_another_user_is_refused_with_the_scope_to_use() {
        let root = n("root");
        let e = Scopes::parse_list("mcp!user=bob", true)
            .unwrap()
            .check_held_by(&root, true)
            .unwrap_err();
        assert!(e.to_string().contains("access:rooms!user=bob"), "{e}");
        let own = Scopes::parse_list("mcp!user=root", true).unwrap();
        assert!(own.check_held_by(&root, true).is_ok());
    }

    #[test]
    fn users_cannot_hold_admin_scopes_or_act_for_others() {
        let alice = n("alice");
        let s = Scopes::parse_list("admin:users", false).unwrap();
        assert!(s.check_held_by(&alice, false).is_err());
        assert!(s.check_held_by(&alice, true).is_ok());
        let other = Scopes::parse_list("mcp!user=bob", false).unwrap();
        assert!(other.check_held_by(&alice, false).is_err());
        let own = Scopes::parse_list("mcp!user=alice,self", false).unwrap();
        assert!(own.check_held_by(&alice, false).is_ok());
    }

    #[test]
    fn admins_may_mint_service_tokens_for_one_user() {
        let root = n("root");
        let s = Scopes::parse_list("access:rooms!user=bob", true).unwrap();
        assert!(s.check_held_by(&root, true).is_ok());
        assert!(s.check_held_by(&root, false).is_err());
        assert!(
            s.effective(&root, true)
                .grants(ScopeKind::AccessRooms, &root, Some(&n("bob")))
        );
        // Demoted, the same token no longer acts for bob.
        assert!(
            !s.effective(&root, false)
                .grants(ScopeKind::AccessRooms, &root, Some(&n("bob")))
        );
    }

    #[test]
    fn new_tokens_stay_within_the_creating_token() {
        let (root, alice) = (n("root"), n("alice"));
        let self_only = Scopes::parse_list("self", true).unwrap();
        let all = Scopes::parse_list("inherit", true).unwrap();
        let mcp = Scopes::parse_list("mcp,self", false).unwrap();
        assert!(mcp.check_within(&root, &self_only, &root).is_ok());
        assert!(
            all.check_within(&root, &self_only, &root).is_err(),
            "self must not mint admin"
        );
        assert!(all.check_within(&root, &all, &root).is_ok());
        let admin_tokens = Scopes::parse_list("admin:tokens", true).unwrap();
        assert!(mcp.check_within(&alice, &admin_tokens, &root).is_ok());
        let read = Scopes::parse_list("read:users", true).unwrap();
        assert!(read.check_within(&root, &admin_tokens, &root).is_err());
        assert!(
            mcp.check_within(&alice, &self_only, &root).is_err(),
            "self is about oneself"
        );
    }

    #[test]
    fn demotion_drops_admin_scopes() {
        let a = n("a");
        let s = Scopes::parse_list("inherit", true).unwrap();
        let eff = s.effective(&a, false);
        assert!(!eff.grants(ScopeKind::AdminUsers, &a, None));
        assert!(eff.grants(ScopeKind::Mcp, &a, Some(&a)));
    }
}
