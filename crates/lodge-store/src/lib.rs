//! Lodge's persistence boundary. The hub and CLI talk only to the [`Store`] trait; SQLite (the
//! embedded default, in DATA_DIR) implements it here, and a PostgreSQL implementation can sit
//! behind the same trait later. This crate stores and fetches; it makes no policy decisions.

mod model;
mod sqlite;

pub use model::*;
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use lodge_core::UserName;

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
}
