//! Plain data exchanged with the store.

use lodge_core::{Scopes, TokenHash, UserName};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct User {
    #[serde(skip)]
    pub id: i64,
    pub name: UserName,
    pub admin: bool,
    pub profile: String,
    pub created_ms: i64,
}

#[derive(Clone, Debug)]
pub struct NewUser {
    pub name: UserName,
    pub admin: bool,
    pub profile: String,
}

#[derive(Clone, Debug)]
pub struct NewTokenRow {
    pub id: String,
    pub user: UserName,
    pub hash: TokenHash,
    pub scopes: Scopes,
    pub note: String,
    pub expires_ms: Option<i64>,
}

/// What `token list` shows: never the secret, never the hash.
#[derive(Clone, Debug, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub user: UserName,
    pub scopes: Vec<String>,
    pub note: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
    /// The OAuth client holding the token (its name), None for tokens minted by people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// A token row joined with its owner, for verification.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    pub id: String,
    pub hash: Vec<u8>,
    pub scopes: Scopes,
    pub expires_ms: Option<i64>,
    /// The MCP endpoint URL an OAuth access token is bound to; None: any endpoint.
    pub resource: Option<String>,
    /// The OAuth grant family of an access token the hub issued.
    pub family: Option<String>,
    pub user: User,
}

#[derive(Clone, Debug)]
pub struct NewSession {
    pub id: String,
    pub user_id: i64,
    pub protocol: String,
    pub client: String,
    /// What the client declared it can answer, as the hub's bit set (opaque to the store).
    pub client_caps: u8,
    pub created_ms: i64,
}

#[derive(Clone, Debug)]
pub struct SessionRow {
    pub id: String,
    pub user_id: i64,
    pub user: UserName,
    pub protocol: String,
    pub client: String,
    pub client_caps: u8,
    pub created_ms: i64,
    pub last_seen_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    AuthFailure,
    ToolCall,
    Admin,
    // --- sign-in ---
    /// A person signed in (the action names the method: oidc, token, link).
    SignIn,
    /// A sign-in was refused (the detail says why).
    SignInRefused,
    SignOut,
    /// The provider no longer vouches for a user: sessions, tokens and room were taken away.
    Deprovision,
    // --- oauth ---
    /// An OAuth event: registration, consent, grant, code or refresh-token replay, revocation
    /// (the action names it: `oauth.consent`, …).
    #[serde(rename = "oauth")]
    OAuth,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::AuthFailure => "auth_failure",
            AuditKind::ToolCall => "tool_call",
            AuditKind::Admin => "admin",
            // --- sign-in ---
            AuditKind::SignIn => "sign_in",
            AuditKind::SignInRefused => "sign_in_refused",
            AuditKind::SignOut => "sign_out",
            AuditKind::Deprovision => "deprovision",
            // --- oauth ---
            AuditKind::OAuth => "oauth",
        }
    }

    /// Every kind, in the order help texts list them.
    pub const ALL: [AuditKind; 8] = [
        AuditKind::AuthFailure,
        AuditKind::ToolCall,
        AuditKind::Admin,
        AuditKind::SignIn,
        AuditKind::SignInRefused,
        AuditKind::SignOut,
        AuditKind::Deprovision,
        AuditKind::OAuth,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord {
    pub ts_ms: i64,
    pub kind: AuditKind,
    pub user: Option<String>,
    pub session: Option<String>,
    /// The tool name, the admin action (`user.add`, `token.revoke`), or the auth failure reason.
    pub action: String,
    /// SHA-256 of the tool arguments: lets an auditor match calls without storing their values.
    pub digest: Option<String>,
    pub outcome: String,
    pub duration_ms: Option<i64>,
    pub client: Option<String>,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub user: Option<String>,
    pub since_ms: Option<i64>,
    /// Records strictly before this time (to export those that retention will prune next).
    pub until_ms: Option<i64>,
    pub kind: Option<AuditKind>,
    pub limit: u32,
}

/// One user's data key during a master-key rotation: the wrapping read before, and the new one.
/// `old` lets the store refuse the swap if the row changed in between.
#[derive(Clone)]
pub struct DataKeyRewrap {
    pub user_id: i64,
    pub old: Vec<u8>,
    pub new: Vec<u8>,
}

impl std::fmt::Debug for DataKeyRewrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeyRewrap")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// One field of a stored secret, as `list_secrets` returns it: names and times, never values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretFieldInfo {
    pub name: String,
    pub field: String,
    pub updated_ms: i64,
}

// --- sign-in ---

/// A browser session as stored: the cookie value never is, only its SHA-256.
#[derive(Clone, Debug)]
pub struct NewWebSession {
    pub id_hash: [u8; 32],
    pub user_id: i64,
    pub csrf: String,
    /// How the person signed in: `oidc`, `token` or `link`.
    pub method: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// A stored browser session with its user.
#[derive(Clone, Debug)]
pub struct WebSessionRow {
    pub user: User,
    pub csrf: String,
    pub method: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub last_seen_ms: i64,
}

/// A one-time sign-in link as stored (found by the hash of its secret).
#[derive(Clone, Debug)]
pub struct LoginLinkRow {
    pub user: User,
    pub expires_ms: i64,
    pub used_ms: Option<i64>,
}

/// A sign-in waiting for the provider's answer, found by the hash of its `state`.
#[derive(Clone)]
pub struct PendingSignin {
    pub state_hash: [u8; 32],
    /// SHA-256 of the cookie that binds the sign-in to the browser that started it.
    pub browser_hash: [u8; 32],
    pub verifier: String,
    pub nonce: String,
    pub next: String,
    pub expires_ms: i64,
}

impl std::fmt::Debug for PendingSignin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSignin")
            .field("next", &self.next)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

/// The provider identity a user is bound to.
#[derive(Clone)]
pub struct IdentityRow {
    pub user_id: i64,
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    /// The provider's refresh token, sealed by the vault (opaque here).
    pub refresh_sealed: Option<Vec<u8>>,
    pub checked_ms: i64,
}

impl std::fmt::Debug for IdentityRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityRow")
            .field("user_id", &self.user_id)
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("groups", &self.groups)
            .field("checked_ms", &self.checked_ms)
            .finish_non_exhaustive()
    }
}

// --- oauth ---

/// What binds an OAuth access token to its grant: the client's name (shown by `token list`),
/// the MCP endpoint URL it may be used at, and the grant family a replay revokes.
#[derive(Clone, Debug)]
pub struct TokenBinding {
    pub client: String,
    pub resource: String,
    pub family: String,
}

/// A client registered through RFC 7591 dynamic registration.
#[derive(Clone, Debug)]
pub struct OAuthClientRow {
    pub id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub created_ms: i64,
}

/// A new refresh token (its hash) and the grant it renews.
#[derive(Clone, Debug)]
pub struct NewRefresh {
    pub hash: TokenHash,
    pub family: String,
    pub user_id: i64,
    pub client_id: String,
    pub client_name: String,
    pub resource: String,
    pub scopes: Scopes,
    pub expires_ms: i64,
}

/// A refresh token as presented: its grant, and whether it had been used before.
#[derive(Clone, Debug)]
pub struct RefreshUse {
    pub family: String,
    pub user: User,
    pub client_id: String,
    pub client_name: String,
    pub resource: String,
    pub scopes: Scopes,
    pub expires_ms: i64,
    /// It had been rotated already: this presentation is a replay.
    pub replayed: bool,
}

#[cfg(test)]
mod tests {
    use super::AuditKind;

    #[test]
    fn audit_kind_names_are_their_json_names_and_parse_back() {
        for k in AuditKind::ALL {
            let json = serde_json::to_string(&k).expect("json");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(AuditKind::parse(k.as_str()), Some(k));
        }
    }
}
