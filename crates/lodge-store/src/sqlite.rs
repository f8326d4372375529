//! The embedded store: one SQLite file in DATA_DIR, WAL journal, versioned migrations.
//!
//! Durability: WAL with `synchronous=NORMAL` keeps every committed transaction across a killed
//! process (SIGKILL); only a power loss may drop the last commits. The hub batches hot-path
//! writes (last-use times, audit) itself; this module does one statement or one transaction
//! per call.

use crate::*;
use lodge_core::time::now_ms;
use lodge_core::{Scopes, UserName};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| open_err(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(opts)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        Ok(Self { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies `sql` (binding a time, then an id) to each pair in one transaction: the shape of
    /// every write-behind "last used" update.
    async fn touch_many(
        &self,
        sql: &'static str,
        items: &[(String, i64)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, at) in items {
            sqlx::query(sql).bind(at).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn user_from_row(row: &sqlx::sqlite::SqliteRow, prefix: &str) -> Result<User, sqlx::Error> {
    let col = |c: &str| format!("{prefix}{c}");
    let name: String = row.try_get(col("name").as_str())?;
    Ok(User {
        id: row.try_get(col("id").as_str())?,
        name: UserName::parse(&name).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        admin: row.try_get(col("admin").as_str())?,
        profile: row.try_get(col("profile").as_str())?,
        created_ms: row.try_get(col("created_ms").as_str())?,
    })
}

fn token_info_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<TokenInfo, sqlx::Error> {
    let user: String = row.try_get("user_name")?;
    let scopes: String = row.try_get("scopes")?;
    Ok(TokenInfo {
        id: row.try_get("id")?,
        user: UserName::parse(&user).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        scopes: Scopes::from_stored(&scopes).to_vec(),
        note: row.try_get("note")?,
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
        last_used_ms: row.try_get("last_used_ms")?,
    })
}

const TOKEN_INFO_SELECT: &str = "SELECT t.id, u.name AS user_name, t.scopes, t.note, t.created_ms, \
     t.expires_ms, t.last_used_ms FROM tokens t JOIN users u ON u.id = t.user_id";

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, new: &NewUser) -> Result<User, StoreError> {
        let created_ms = now_ms();
        let res = sqlx::query(
            "INSERT INTO users (name, admin, profile, created_ms) VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(new.name.as_str())
        .bind(new.admin)
        .bind(&new.profile)
        .bind(created_ms)
        .fetch_one(&self.pool)
        .await;
        match res {
            Ok(row) => Ok(User {
                id: row.try_get("id")?,
                name: new.name.clone(),
                admin: new.admin,
                profile: new.profile.clone(),
                created_ms,
            }),
            Err(e) if is_unique_violation(&e) => Err(StoreError::UserExists(new.name.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    async fn user(&self, name: &UserName) -> Result<Option<User>, StoreError> {
        let row =
            sqlx::query("SELECT id, name, admin, profile, created_ms FROM users WHERE name = ?")
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| user_from_row(&r, "")).transpose()?)
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows =
            sqlx::query("SELECT id, name, admin, profile, created_ms FROM users ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| user_from_row(r, ""))
            .collect::<Result<_, _>>()?)
    }

    async fn remove_user(&self, name: &UserName) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM users WHERE name = ?")
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    async fn create_token(&self, new: &NewTokenRow) -> Result<TokenInfo, StoreError> {
        let created_ms = now_ms();
        let res = sqlx::query(
            "INSERT INTO tokens (id, user_id, hash, scopes, note, created_ms, expires_ms) \
             SELECT ?, id, ?, ?, ?, ?, ? FROM users WHERE name = ?",
        )
        .bind(&new.id)
        .bind(new.hash.0.as_slice())
        .bind(new.scopes.to_stored())
        .bind(&new.note)
        .bind(created_ms)
        .bind(new.expires_ms)
        .bind(new.user.as_str())
        .execute(&self.pool)
        .await;
        match res {
            Ok(r) if r.rows_affected() == 1 => Ok(TokenInfo {
                id: new.id.clone(),
                user: new.user.clone(),
                scopes: new.scopes.to_vec(),
                note: new.note.clone(),
                created_ms,
                expires_ms: new.expires_ms,
                last_used_ms: None,
            }),
            Ok(_) => Err(StoreError::Database(sqlx::Error::RowNotFound)),
            Err(e) if is_unique_violation(&e) => Err(StoreError::TokenCollision),
            Err(e) => Err(e.into()),
        }
    }

    async fn token_for_auth(&self, id: &str) -> Result<Option<TokenAuth>, StoreError> {
        let row = sqlx::query(
            "SELECT t.id AS tid, t.hash, t.scopes, t.expires_ms, u.id AS u_id, u.name AS u_name, \
             u.admin AS u_admin, u.profile AS u_profile, u.created_ms AS u_created_ms \
             FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let scopes: String = r.try_get("scopes")?;
        Ok(Some(TokenAuth {
            id: r.try_get("tid")?,
            hash: r.try_get("hash")?,
            scopes: Scopes::from_stored(&scopes),
            expires_ms: r.try_get("expires_ms")?,
            user: user_from_row(&r, "u_")?,
        }))
    }

    async fn token_info(&self, id: &str) -> Result<Option<TokenInfo>, StoreError> {
        let sql = const_format_token_info_by_id();
        let row = sqlx::query(sql).bind(id).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| token_info_from_row(&r)).transpose()?)
    }

    async fn list_tokens(&self, user: &UserName) -> Result<Vec<TokenInfo>, StoreError> {
        let sql = const_format_token_info_by_user();
        let rows = sqlx::query(sql)
            .bind(user.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(token_info_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM tokens WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    async fn touch_tokens(&self, uses: &[(String, i64)]) -> Result<(), StoreError> {
        self.touch_many(
            "UPDATE tokens SET last_used_ms = max(coalesce(last_used_ms, 0), ?) WHERE id = ?",
            uses,
        )
        .await
    }

    async fn create_session(&self, s: &NewSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id, user_id, protocol, client, created_ms, last_seen_ms) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.id)
        .bind(s.user_id)
        .bind(&s.protocol)
        .bind(&s.client)
        .bind(s.created_ms)
        .bind(s.created_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn sessions(&self) -> Result<Vec<SessionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.id, s.user_id, u.name, s.protocol, s.client, s.created_ms, s.last_seen_ms \
             FROM sessions s JOIN users u ON u.id = s.user_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.try_get("name")?;
            out.push(SessionRow {
                id: r.try_get("id")?,
                user_id: r.try_get("user_id")?,
                user: UserName::parse(&name).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                protocol: r.try_get("protocol")?,
                client: r.try_get("client")?,
                created_ms: r.try_get("created_ms")?,
                last_seen_ms: r.try_get("last_seen_ms")?,
            });
        }
        Ok(out)
    }

    async fn delete_sessions(&self, ids: &[String]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut n = 0;
        for id in ids {
            n += sqlx::query("DELETE FROM sessions WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn touch_sessions(&self, seen: &[(String, i64)]) -> Result<(), StoreError> {
        self.touch_many(
            "UPDATE sessions SET last_seen_ms = max(last_seen_ms, ?) WHERE id = ?",
            seen,
        )
        .await
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for r in records {
            sqlx::query(
                "INSERT INTO audit (ts_ms, kind, user, session, action, digest, outcome, \
                 duration_ms, client, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(r.ts_ms)
            .bind(r.kind.as_str())
            .bind(&r.user)
            .bind(&r.session)
            .bind(&r.action)
            .bind(&r.digest)
            .bind(&r.outcome)
            .bind(r.duration_ms)
            .bind(&r.client)
            .bind(&r.detail)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT ts_ms, kind, user, session, action, digest, outcome, duration_ms, client, detail \
             FROM audit WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR ts_ms >= ?2) \
             AND (?3 IS NULL OR kind = ?3) ORDER BY id DESC LIMIT ?4",
        )
        .bind(&q.user)
        .bind(q.since_ms)
        .bind(q.kind.map(|k| k.as_str()))
        .bind(if q.limit == 0 { 1000 } else { q.limit as i64 })
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let kind: String = r.try_get("kind")?;
            out.push(AuditRecord {
                ts_ms: r.try_get("ts_ms")?,
                kind: AuditKind::parse(&kind).unwrap_or(AuditKind::Admin),
                user: r.try_get("user")?,
                session: r.try_get("session")?,
                action: r.try_get("action")?,
                digest: r.try_get("digest")?,
                outcome: r.try_get("outcome")?,
                duration_ms: r.try_get("duration_ms")?,
                client: r.try_get("client")?,
                detail: r.try_get("detail")?,
            });
        }
        out.reverse();
        Ok(out)
    }
}

// `sqlx::query` takes `&'static str`; these keep the shared SELECT in one place.
fn const_format_token_info_by_id() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| format!("{TOKEN_INFO_SELECT} WHERE t.id = ?"))
}

fn const_format_token_info_by_user() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| format!("{TOKEN_INFO_SELECT} WHERE u.name = ? ORDER BY t.created_ms"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_core::NewToken;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("lodge.db"))
            .await
            .unwrap();
        (dir, s)
    }

    fn name(s: &str) -> UserName {
        UserName::parse(s).unwrap()
    }

    #[tokio::test]
    async fn users_tokens_and_cascade() {
        let (_d, s) = store().await;
        let alice = s
            .create_user(&NewUser {
                name: name("alice"),
                admin: false,
                profile: "default".into(),
            })
            .await
            .unwrap();
        let dup = s
            .create_user(&NewUser {
                name: name("alice"),
                admin: true,
                profile: "default".into(),
            })
            .await;
        assert!(matches!(dup, Err(StoreError::UserExists(_))));
        let t = NewToken::generate();
        s.create_token(&NewTokenRow {
            id: t.id.clone(),
            user: name("alice"),
            hash: t.hash,
            scopes: Scopes::default_token(),
            note: "n".into(),
            expires_ms: None,
        })
        .await
        .unwrap();
        let auth = s.token_for_auth(&t.id).await.unwrap().unwrap();
        assert!(t.hash.ct_eq(&auth.hash));
        assert_eq!(auth.user.id, alice.id);
        s.create_session(&NewSession {
            id: "s1".into(),
            user_id: alice.id,
            protocol: "2025-06-18".into(),
            client: String::new(),
            created_ms: 1,
        })
        .await
        .unwrap();
        assert_eq!(s.sessions().await.unwrap().len(), 1);
        assert!(s.remove_user(&name("alice")).await.unwrap());
        assert!(s.token_for_auth(&t.id).await.unwrap().is_none());
        assert!(s.sessions().await.unwrap().is_empty());
        assert!(!s.remove_user(&name("alice")).await.unwrap());
    }

    #[tokio::test]
    async fn token_for_missing_user_is_refused() {
        let (_d, s) = store().await;
        let t = NewToken::generate();
        let r = s
            .create_token(&NewTokenRow {
                id: t.id,
                user: name("ghost"),
                hash: t.hash,
                scopes: Scopes::default_token(),
                note: String::new(),
                expires_ms: None,
            })
            .await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn audit_round_trip_and_filters() {
        let (_d, s) = store().await;
        let rec = |user: &str, ts| AuditRecord {
            ts_ms: ts,
            kind: AuditKind::ToolCall,
            user: Some(user.into()),
            session: None,
            action: "session_info".into(),
            digest: None,
            outcome: "ok".into(),
            duration_ms: Some(1),
            client: None,
            detail: None,
        };
        s.append_audit(&[rec("a", 10), rec("b", 20), rec("a", 30)])
            .await
            .unwrap();
        let all = s.query_audit(&AuditQuery::default()).await.unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].ts_ms, 10);
        let q = AuditQuery {
            user: Some("a".into()),
            since_ms: Some(15),
            ..Default::default()
        };
        let some = s.query_audit(&q).await.unwrap();
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].ts_ms, 30);
    }
}
