//! Lodge's persistence boundary. The hub and CLI talk only to the [`Store`] trait; SQLite (the
//! embedded default, in DATA_DIR) implements it here, and a PostgreSQL implementation can sit
//! behind the same trait later. This crate stores and fetches; it makes no policy decisions.

mod model;
mod sqlite;

pub use model::*;
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use lodge_core::{TokenHash, UserName};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("token id collision; try again")]
    TokenCollision,
    #[error("cannot open the database at {path}: {message}")]
    Open { path: String, message: String },
    #[error("database migration failed: {0}")]
    Migrate(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Everything Lodge persists. Implementations must make each method atomic on its own.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Users.
    async fn create_user(&self, new: &NewUser) -> Result<User, StoreError>;
    async fn user(&self, name: &UserName) -> Result<Option<User>, StoreError>;
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Removes a user with their tokens and sessions; false if there was no such user.
    async fn remove_user(&self, name: &UserName) -> Result<bool, StoreError>;

    // Tokens.
    async fn create_token(&self, new: &NewTokenRow) -> Result<TokenInfo, StoreError>;
    /// The token with this public id and its owner, for verification.
    async fn token_for_auth(&self, id: &str) -> Result<Option<TokenAuth>, StoreError>;
    async fn token_info(&self, id: &str) -> Result<Option<TokenInfo>, StoreError>;
    async fn list_tokens(&self, user: &UserName) -> Result<Vec<TokenInfo>, StoreError>;
    /// Deletes a token; false if there was none with this id.
    async fn revoke_token(&self, id: &str) -> Result<bool, StoreError>;
    /// Records last-use times (write-behind from the hub).
    async fn touch_tokens(&self, uses: &[(String, i64)]) -> Result<(), StoreError>;

    // Legacy MCP sessions.
    async fn create_session(&self, s: &NewSession) -> Result<(), StoreError>;
    async fn sessions(&self) -> Result<Vec<SessionRow>, StoreError>;
    async fn delete_sessions(&self, ids: &[String]) -> Result<u64, StoreError>;
    async fn touch_sessions(&self, seen: &[(String, i64)]) -> Result<(), StoreError>;

    // Audit.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError>;
    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
    /// Deletes at most `batch` of the oldest records that are older than `before_ms` or not
    /// among the newest `keep` (by id), and returns how many went. Each call is short
    /// statements on indexed ranges, so writers wait at most one batch; call it in a loop.
    async fn prune_audit(&self, before_ms: i64, keep: u64, batch: u32) -> Result<u64, StoreError>;

    // Secret vault. Blobs are opaque sealed bytes (the crypto lives in lodge-vault); rows go
    // away with their user (ON DELETE CASCADE).
    /// The master-key verifier, None before the vault's first start.
    async fn vault_verifier(&self) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores the verifier unless one is stored already: false then (another process initialised
    /// the vault first, possibly with another key; re-read and check it).
    async fn set_vault_verifier(&self, verifier: &[u8]) -> Result<bool, StoreError>;
    /// The user's wrapped data key.
    async fn data_key(&self, user_id: i64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Inserts the user's wrapped data key unless one exists, atomically and only while the
    /// stored verifier is still `verifier` (the master key was not rotated meanwhile). Returns
    /// the key now stored (this one, or the one a concurrent first put stored), or None if the
    /// verifier changed: the caller must reload the master key and retry.
    async fn insert_data_key(
        &self,
        user_id: i64,
        wrapped: &[u8],
        verifier: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// Inserts or replaces these fields of one secret (others are kept), in one transaction.
    async fn put_secret_fields(
        &self,
        user_id: i64,
        name: &str,
        fields: &[(String, Vec<u8>)],
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Every field of one secret with its sealed value, by field name; empty if none.
    async fn secret_fields(
        &self,
        user_id: i64,
        name: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Every field of every secret of a user (names and times only), by name then field.
    async fn list_secrets(&self, user_id: i64) -> Result<Vec<SecretFieldInfo>, StoreError>;
    /// Deletes a secret, or one field of it; the number of rows removed.
    async fn delete_secret(
        &self,
        user_id: i64,
        name: &str,
        field: Option<&str>,
    ) -> Result<u64, StoreError>;
    /// Every user's wrapped data key, by user id.
    async fn all_data_keys(&self) -> Result<Vec<(i64, Vec<u8>)>, StoreError>;
    /// Master-key rotation, in ONE transaction: replaces the verifier `old_verifier` with
    /// `new_verifier` and every data key `old` with `new`. Returns false and changes nothing if
    /// anything moved since `keys` was read (the verifier is no longer `old_verifier`, a data key
    /// was added, removed or differs): the caller re-reads and tries again.
    async fn rewrap_all(
        &self,
        old_verifier: &[u8],
        new_verifier: &[u8],
        keys: &[DataKeyRewrap],
    ) -> Result<bool, StoreError>;

    // --- oauth ---
    /// Inserts an OAuth access token: a token row bound to its client, resource and family.
    async fn create_oauth_token(
        &self,
        new: &NewTokenRow,
        binding: &TokenBinding,
    ) -> Result<TokenInfo, StoreError>;
    async fn create_oauth_client(&self, client: &OAuthClientRow) -> Result<(), StoreError>;
    async fn oauth_client(&self, id: &str) -> Result<Option<OAuthClientRow>, StoreError>;
    async fn create_refresh(&self, new: &NewRefresh) -> Result<(), StoreError>;
    /// Marks a refresh token used (atomically: of two concurrent uses one sees a replay) and
    /// returns its grant; None if no such token.
    async fn use_refresh(
        &self,
        hash: &TokenHash,
        now_ms: i64,
    ) -> Result<Option<RefreshUse>, StoreError>;
    /// The family of a refresh token, used or not (for revocation).
    async fn refresh_family(&self, hash: &TokenHash) -> Result<Option<String>, StoreError>;
    /// Deletes every access and refresh token of a grant family, in one transaction; returns
    /// the ids of the access tokens deleted (so caches can forget them).
    async fn revoke_family(&self, family: &str) -> Result<Vec<String>, StoreError>;

    // --- sign-in ---
    async fn user_by_id(&self, id: i64) -> Result<Option<User>, StoreError>;
    async fn create_web_session(&self, s: &NewWebSession) -> Result<(), StoreError>;
    /// The session with this id hash and its user, whether expired or not.
    async fn web_session(&self, id_hash: &[u8]) -> Result<Option<WebSessionRow>, StoreError>;
    /// Records a use of the session (last seen).
    async fn touch_web_session(&self, id_hash: &[u8], now_ms: i64) -> Result<(), StoreError>;
    /// Ends one session; false if there was none.
    async fn delete_web_session(&self, id_hash: &[u8]) -> Result<bool, StoreError>;
    /// Ends every session of a user; how many there were.
    async fn delete_web_sessions_of(&self, user_id: i64) -> Result<u64, StoreError>;
    /// Deletes expired sessions, links and pending sign-ins; how many rows went.
    async fn delete_expired_signin_state(&self, now_ms: i64) -> Result<u64, StoreError>;
    async fn create_login_link(
        &self,
        hash: &[u8],
        user_id: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError>;
    async fn login_link(&self, hash: &[u8]) -> Result<Option<LoginLinkRow>, StoreError>;
    /// Marks the link used if it is unused and unexpired at `now_ms`, atomically: true if this
    /// call used it (so two concurrent uses cannot both succeed).
    async fn use_login_link(&self, hash: &[u8], now_ms: i64) -> Result<bool, StoreError>;
    async fn create_pending_signin(&self, p: &PendingSignin) -> Result<(), StoreError>;
    /// Removes and returns the pending sign-in with this state hash (single use).
    async fn take_pending_signin(
        &self,
        state_hash: &[u8],
    ) -> Result<Option<PendingSignin>, StoreError>;
    async fn identity_of(&self, user_id: i64) -> Result<Option<IdentityRow>, StoreError>;
    async fn identity_by_subject(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<IdentityRow>, StoreError>;
    /// Inserts or replaces the user's identity, refresh token included (the caller checked the
    /// binding rules).
    async fn put_identity(&self, i: &IdentityRow) -> Result<(), StoreError>;
    /// Identities holding a refresh token and last checked before `before_ms`, oldest first,
    /// at most `limit`.
    async fn identities_due(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> Result<Vec<IdentityRow>, StoreError>;
    /// Sets a user's admin flag and profile (the provider's groups decide them at sign-in).
    async fn set_user_role(
        &self,
        user_id: i64,
        admin: bool,
        profile: &str,
    ) -> Result<(), StoreError>;
    /// Deletes every token of a user; how many there were.
    async fn revoke_user_tokens(&self, user_id: i64) -> Result<u64, StoreError>;
}
