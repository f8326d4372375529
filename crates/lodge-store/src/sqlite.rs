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
    /// One token row: a person's (no binding) or one the OAuth server issued to a client,
    /// bound to a resource and a grant's family.
    async fn insert_token(
        &self,
        new: &NewTokenRow,
        binding: Option<&TokenBinding>,
    ) -> Result<TokenInfo, StoreError> {
        let created_ms = now_ms();
        let res = sqlx::query(
            "INSERT INTO tokens (id, user_id, hash, scopes, note, created_ms, expires_ms, client, \
             resource, family) SELECT ?, id, ?, ?, ?, ?, ?, ?, ?, ? FROM users WHERE name = ?",
        )
        .bind(&new.id)
        .bind(new.hash.0.as_slice())
        .bind(new.scopes.to_stored())
        .bind(&new.note)
        .bind(created_ms)
        .bind(new.expires_ms)
        .bind(binding.map(|b| &b.client))
        .bind(binding.map(|b| &b.resource))
        .bind(binding.map(|b| &b.family))
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
                client: binding.map(|b| b.client.clone()),
            }),
            Ok(_) => Err(StoreError::Database(sqlx::Error::RowNotFound)),
            Err(e) if is_unique_violation(&e) => Err(StoreError::TokenCollision),
            Err(e) => Err(e.into()),
        }
    }

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
        client: row.try_get("client")?,
    })
}

const TOKEN_INFO_SELECT: &str = "SELECT t.id, u.name AS user_name, t.scopes, t.note, t.created_ms, \
     t.expires_ms, t.last_used_ms, t.client FROM tokens t JOIN users u ON u.id = t.user_id";

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
        self.insert_token(new, None).await
    }

    async fn token_for_auth(&self, id: &str) -> Result<Option<TokenAuth>, StoreError> {
        let row = sqlx::query(
            "SELECT t.id AS tid, t.hash, t.scopes, t.expires_ms, t.resource, t.family, u.id AS u_id, u.name AS u_name, \
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
            resource: r.try_get("resource")?,
            family: r.try_get("family")?,
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
            "INSERT INTO sessions (id, user_id, protocol, client, client_caps, created_ms, \
             last_seen_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.id)
        .bind(s.user_id)
        .bind(&s.protocol)
        .bind(&s.client)
        .bind(i64::from(s.client_caps))
        .bind(s.created_ms)
        .bind(s.created_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn sessions(&self) -> Result<Vec<SessionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.id, s.user_id, u.name, s.protocol, s.client, s.client_caps, s.created_ms, \
             s.last_seen_ms \
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
                client_caps: u8::try_from(r.try_get::<i64, _>("client_caps")?).unwrap_or(0),
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
             AND (?3 IS NULL OR kind = ?3) AND (?5 IS NULL OR ts_ms < ?5) ORDER BY id DESC LIMIT ?4",
        )
        .bind(&q.user)
        .bind(q.since_ms)
        .bind(q.kind.map(|k| k.as_str()))
        .bind(if q.limit == 0 { 1000 } else { q.limit as i64 })
        .bind(q.until_ms)
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

    async fn prune_audit(&self, before_ms: i64, keep: u64, batch: u32) -> Result<u64, StoreError> {
        // Two statements, each an index range (rowid; audit_ts) read from its low end, so
        // neither scans the table when there is nothing to delete. Ids only grow, so "not
        // among the newest `keep` ids" is "id <= max(id) - keep".
        let over_cap = sqlx::query(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit \
             WHERE id <= (SELECT max(id) FROM audit) - ?1 ORDER BY id LIMIT ?2)",
        )
        .bind(keep.min(i64::MAX as u64) as i64)
        .bind(batch)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let left = u64::from(batch).saturating_sub(over_cap);
        if left == 0 {
            return Ok(over_cap);
        }
        let too_old = sqlx::query(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit \
             WHERE ts_ms < ?1 ORDER BY ts_ms LIMIT ?2)",
        )
        .bind(before_ms)
        .bind(left as i64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(over_cap + too_old)
    }

    async fn vault_verifier(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT verifier FROM vault_meta WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("verifier")).transpose()?)
    }

    async fn set_vault_verifier(&self, verifier: &[u8]) -> Result<bool, StoreError> {
        let res = sqlx::query("INSERT INTO vault_meta (id, verifier) VALUES (1, ?)")
            .bind(verifier)
            .execute(&self.pool)
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn data_key(&self, user_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT wrapped FROM vault_keys WHERE user_id = ?")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("wrapped")).transpose()?)
    }

    async fn insert_data_key(
        &self,
        user_id: i64,
        wrapped: &[u8],
        verifier: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        // The write comes first so the transaction holds the write lock before it reads.
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT OR IGNORE INTO vault_keys (user_id, wrapped) SELECT ?1, ?2 \
             WHERE EXISTS (SELECT 1 FROM vault_meta WHERE id = 1 AND verifier = ?3)",
        )
        .bind(user_id)
        .bind(wrapped)
        .bind(verifier)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT k.wrapped FROM vault_keys k JOIN vault_meta m ON m.id = 1 \
             WHERE k.user_id = ? AND m.verifier = ?",
        )
        .bind(user_id)
        .bind(verifier)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.map(|r| r.try_get("wrapped")).transpose()?)
    }

    async fn put_secret_fields(
        &self,
        user_id: i64,
        name: &str,
        fields: &[(String, Vec<u8>)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (field, sealed) in fields {
            sqlx::query(
                "INSERT INTO secrets (user_id, name, field, sealed, updated_ms) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, name, field) \
                 DO UPDATE SET sealed = excluded.sealed, updated_ms = excluded.updated_ms",
            )
            .bind(user_id)
            .bind(name)
            .bind(field)
            .bind(sealed.as_slice())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn secret_fields(
        &self,
        user_id: i64,
        name: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT field, sealed FROM secrets WHERE user_id = ? AND name = ? ORDER BY field",
        )
        .bind(user_id)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push((r.try_get("field")?, r.try_get("sealed")?));
        }
        Ok(out)
    }

    async fn list_secrets(&self, user_id: i64) -> Result<Vec<SecretFieldInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, field, updated_ms FROM secrets WHERE user_id = ? ORDER BY name, field",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(SecretFieldInfo {
                name: r.try_get("name")?,
                field: r.try_get("field")?,
                updated_ms: r.try_get("updated_ms")?,
            });
        }
        Ok(out)
    }

    async fn delete_secret(
        &self,
        user_id: i64,
        name: &str,
        field: Option<&str>,
    ) -> Result<u64, StoreError> {
        let res = sqlx::query(
            "DELETE FROM secrets WHERE user_id = ?1 AND name = ?2 AND (?3 IS NULL OR field = ?3)",
        )
        .bind(user_id)
        .bind(name)
        .bind(field)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected())
    }

    async fn all_data_keys(&self) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let rows = sqlx::query("SELECT user_id, wrapped FROM vault_keys ORDER BY user_id")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push((r.try_get("user_id")?, r.try_get("wrapped")?));
        }
        Ok(out)
    }

    async fn rewrap_all(
        &self,
        old_verifier: &[u8],
        new_verifier: &[u8],
        keys: &[DataKeyRewrap],
    ) -> Result<bool, StoreError> {
        // The verifier swap is the first statement: it takes the write lock, and fails the whole
        // rotation if another one got there first.
        let mut tx = self.pool.begin().await?;
        let swapped =
            sqlx::query("UPDATE vault_meta SET verifier = ? WHERE id = 1 AND verifier = ?")
                .bind(new_verifier)
                .bind(old_verifier)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if swapped != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let count: i64 = sqlx::query("SELECT count(*) AS n FROM vault_keys")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if usize::try_from(count).ok() != Some(keys.len()) {
            tx.rollback().await?;
            return Ok(false);
        }
        for k in keys {
            let n =
                sqlx::query("UPDATE vault_keys SET wrapped = ? WHERE user_id = ? AND wrapped = ?")
                    .bind(k.new.as_slice())
                    .bind(k.user_id)
                    .bind(k.old.as_slice())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if n != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    // --- sign-in ---
    async fn user_by_id(&self, id: i64) -> Result<Option<User>, StoreError> {
        let row =
            sqlx::query("SELECT id, name, admin, profile, created_ms FROM users WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| user_from_row(&r, "")).transpose()?)
    }

    async fn create_web_session(&self, s: &NewWebSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, user_id, csrf, method, created_ms, expires_ms, \
             last_seen_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(s.id_hash.as_slice())
        .bind(s.user_id)
        .bind(&s.csrf)
        .bind(&s.method)
        .bind(s.created_ms)
        .bind(s.expires_ms)
        .bind(s.created_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn web_session(&self, id_hash: &[u8]) -> Result<Option<WebSessionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT w.csrf, w.method, w.created_ms AS w_created_ms, w.expires_ms, w.last_seen_ms, \
             u.id AS u_id, u.name AS u_name, u.admin AS u_admin, u.profile AS u_profile, \
             u.created_ms AS u_created_ms \
             FROM web_sessions w JOIN users u ON u.id = w.user_id WHERE w.id_hash = ?",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(WebSessionRow {
            user: user_from_row(&r, "u_")?,
            csrf: r.try_get("csrf")?,
            method: r.try_get("method")?,
            created_ms: r.try_get("w_created_ms")?,
            expires_ms: r.try_get("expires_ms")?,
            last_seen_ms: r.try_get("last_seen_ms")?,
        }))
    }

    async fn touch_web_session(&self, id_hash: &[u8], now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE web_sessions SET last_seen_ms = max(last_seen_ms, ?) WHERE id_hash = ?",
        )
        .bind(now_ms)
        .bind(id_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_web_session(&self, id_hash: &[u8]) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM web_sessions WHERE id_hash = ?")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    async fn delete_web_sessions_of(&self, user_id: i64) -> Result<u64, StoreError> {
        let res = sqlx::query("DELETE FROM web_sessions WHERE user_id = ?")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected())
    }

    async fn delete_expired_signin_state(&self, now_ms: i64) -> Result<u64, StoreError> {
        let mut n = 0;
        for sql in [
            "DELETE FROM web_sessions WHERE expires_ms <= ?",
            "DELETE FROM login_links WHERE expires_ms <= ?",
            "DELETE FROM pending_signins WHERE expires_ms <= ?",
        ] {
            n += sqlx::query(sql)
                .bind(now_ms)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(n)
    }

    async fn create_login_link(
        &self,
        hash: &[u8],
        user_id: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO login_links (hash, user_id, created_ms, expires_ms) VALUES (?, ?, ?, ?)",
        )
        .bind(hash)
        .bind(user_id)
        .bind(now_ms())
        .bind(expires_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn login_link(&self, hash: &[u8]) -> Result<Option<LoginLinkRow>, StoreError> {
        let row = sqlx::query(
            "SELECT l.expires_ms, l.used_ms, u.id AS u_id, u.name AS u_name, u.admin AS u_admin, \
             u.profile AS u_profile, u.created_ms AS u_created_ms \
             FROM login_links l JOIN users u ON u.id = l.user_id WHERE l.hash = ?",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(LoginLinkRow {
            user: user_from_row(&r, "u_")?,
            expires_ms: r.try_get("expires_ms")?,
            used_ms: r.try_get("used_ms")?,
        }))
    }

    async fn use_login_link(&self, hash: &[u8], now_ms: i64) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "UPDATE login_links SET used_ms = ?1 WHERE hash = ?2 AND used_ms IS NULL \
             AND expires_ms > ?1",
        )
        .bind(now_ms)
        .bind(hash)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn create_pending_signin(&self, p: &PendingSignin) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pending_signins (state_hash, browser_hash, verifier, nonce, next, \
             expires_ms) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(p.state_hash.as_slice())
        .bind(p.browser_hash.as_slice())
        .bind(&p.verifier)
        .bind(&p.nonce)
        .bind(&p.next)
        .bind(p.expires_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_pending_signin(
        &self,
        state_hash: &[u8],
    ) -> Result<Option<PendingSignin>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM pending_signins WHERE state_hash = ? \
             RETURNING state_hash, browser_hash, verifier, nonce, next, expires_ms",
        )
        .bind(state_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let hash32 = |col: &str| -> Result<[u8; 32], sqlx::Error> {
            let v: Vec<u8> = r.try_get(col)?;
            v.try_into()
                .map_err(|_| sqlx::Error::Decode(format!("{col} is not 32 bytes").into()))
        };
        Ok(Some(PendingSignin {
            state_hash: hash32("state_hash")?,
            browser_hash: hash32("browser_hash")?,
            verifier: r.try_get("verifier")?,
            nonce: r.try_get("nonce")?,
            next: r.try_get("next")?,
            expires_ms: r.try_get("expires_ms")?,
        }))
    }

    async fn identity_of(&self, user_id: i64) -> Result<Option<IdentityRow>, StoreError> {
        let row = sqlx::query(
            "SELECT user_id, issuer, subject, groups, refresh, checked_ms FROM identities \
             WHERE user_id = ?",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| identity_from_row(&r)).transpose()?)
    }

    async fn identity_by_subject(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<IdentityRow>, StoreError> {
        let row = sqlx::query(
            "SELECT user_id, issuer, subject, groups, refresh, checked_ms FROM identities \
             WHERE issuer = ? AND subject = ?",
        )
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| identity_from_row(&r)).transpose()?)
    }

    async fn put_identity(&self, i: &IdentityRow) -> Result<(), StoreError> {
        let groups = serde_json::to_string(&i.groups)
            .map_err(|e| StoreError::Database(sqlx::Error::Encode(Box::new(e))))?;
        sqlx::query(
            "INSERT INTO identities (user_id, issuer, subject, groups, refresh, checked_ms) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET issuer = \
             excluded.issuer, subject = excluded.subject, groups = excluded.groups, refresh = \
             excluded.refresh, checked_ms = excluded.checked_ms",
        )
        .bind(i.user_id)
        .bind(&i.issuer)
        .bind(&i.subject)
        .bind(groups)
        .bind(i.refresh_sealed.as_deref())
        .bind(i.checked_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn identities_due(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> Result<Vec<IdentityRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT user_id, issuer, subject, groups, refresh, checked_ms FROM identities \
             WHERE refresh IS NOT NULL AND checked_ms < ? ORDER BY checked_ms LIMIT ?",
        )
        .bind(before_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(identity_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn set_user_role(
        &self,
        user_id: i64,
        admin: bool,
        profile: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET admin = ?, profile = ? WHERE id = ?")
            .bind(admin)
            .bind(profile)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn revoke_user_tokens(&self, user_id: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("DELETE FROM tokens WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // OAuth refresh tokens go too: one would otherwise mint new access tokens for the
        // deprovisioned user.
        let refresh = sqlx::query("DELETE FROM oauth_refresh WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n + refresh)
    }

    // --- oauth ---
    async fn create_oauth_token(
        &self,
        new: &NewTokenRow,
        binding: &TokenBinding,
    ) -> Result<TokenInfo, StoreError> {
        self.insert_token(new, Some(binding)).await
    }

    async fn create_oauth_client(&self, client: &OAuthClientRow) -> Result<(), StoreError> {
        let uris = serde_json::to_string(&client.redirect_uris)
            .map_err(|e| StoreError::Database(sqlx::Error::Encode(Box::new(e))))?;
        sqlx::query(
            "INSERT INTO oauth_clients (id, name, redirect_uris, created_ms) VALUES (?, ?, ?, ?)",
        )
        .bind(&client.id)
        .bind(&client.name)
        .bind(uris)
        .bind(client.created_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn oauth_client(&self, id: &str) -> Result<Option<OAuthClientRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, redirect_uris, created_ms FROM oauth_clients WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let uris: String = r.try_get("redirect_uris")?;
        Ok(Some(OAuthClientRow {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            redirect_uris: serde_json::from_str(&uris)
                .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?,
            created_ms: r.try_get("created_ms")?,
        }))
    }

    async fn create_refresh(&self, new: &NewRefresh) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_refresh (hash, family, user_id, client_id, client_name, resource, \
             scopes, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(new.hash.0.as_slice())
        .bind(&new.family)
        .bind(new.user_id)
        .bind(&new.client_id)
        .bind(&new.client_name)
        .bind(&new.resource)
        .bind(new.scopes.to_stored())
        .bind(now_ms())
        .bind(new.expires_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn use_refresh(
        &self,
        hash: &TokenHash,
        now_ms: i64,
    ) -> Result<Option<RefreshUse>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT r.family, r.client_id, r.client_name, r.resource, r.scopes, r.expires_ms, \
             r.rotated_ms, u.id AS u_id, u.name AS u_name, u.admin AS u_admin, \
             u.profile AS u_profile, u.created_ms AS u_created_ms \
             FROM oauth_refresh r JOIN users u ON u.id = r.user_id WHERE r.hash = ?",
        )
        .bind(hash.0.as_slice())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let rotated: Option<i64> = r.try_get("rotated_ms")?;
        if rotated.is_none() {
            // Only the first use sets it; a concurrent second use finds it set (the
            // transaction holds SQLite's write lock from this UPDATE to the commit).
            let done = sqlx::query(
                "UPDATE oauth_refresh SET rotated_ms = ? WHERE hash = ? AND rotated_ms IS NULL",
            )
            .bind(now_ms)
            .bind(hash.0.as_slice())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Database(sqlx::Error::RowNotFound));
            }
        }
        tx.commit().await?;
        let scopes: String = r.try_get("scopes")?;
        Ok(Some(RefreshUse {
            family: r.try_get("family")?,
            user: user_from_row(&r, "u_")?,
            client_id: r.try_get("client_id")?,
            client_name: r.try_get("client_name")?,
            resource: r.try_get("resource")?,
            scopes: Scopes::from_stored(&scopes),
            expires_ms: r.try_get("expires_ms")?,
            replayed: rotated.is_some(),
        }))
    }

    async fn refresh_family(&self, hash: &TokenHash) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT family FROM oauth_refresh WHERE hash = ?")
                .bind(hash.0.as_slice())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn revoke_family(&self, family: &str) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> =
            sqlx::query_scalar("DELETE FROM tokens WHERE family = ? RETURNING id")
                .bind(family)
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM oauth_refresh WHERE family = ?")
            .bind(family)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids)
    }
}

fn identity_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<IdentityRow, sqlx::Error> {
    let groups: String = r.try_get("groups")?;
    Ok(IdentityRow {
        user_id: r.try_get("user_id")?,
        issuer: r.try_get("issuer")?,
        subject: r.try_get("subject")?,
        groups: serde_json::from_str(&groups).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        refresh_sealed: r.try_get("refresh")?,
        checked_ms: r.try_get("checked_ms")?,
    })
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
            client_caps: 3,
            created_ms: 1,
        })
        .await
        .unwrap();
        let rows = s.sessions().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].client_caps, 3,
            "what the client declared survives a restart"
        );
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
        let q = AuditQuery {
            until_ms: Some(30),
            ..Default::default()
        };
        let before: Vec<i64> = s
            .query_audit(&q)
            .await
            .unwrap()
            .iter()
            .map(|r| r.ts_ms)
            .collect();
        assert_eq!(before, [10, 20]);
    }

    fn audit_at(ts_ms: i64, action: &str) -> AuditRecord {
        AuditRecord {
            ts_ms,
            kind: AuditKind::ToolCall,
            user: Some("a".into()),
            session: None,
            action: action.into(),
            digest: None,
            outcome: "ok".into(),
            duration_ms: None,
            client: None,
            detail: None,
        }
    }

    /// Prunes the way the hub does: batch after batch until one comes back short.
    async fn prune_all(s: &SqliteStore, before_ms: i64, keep: u64, batch: u32) -> (u64, u32) {
        let (mut total, mut calls) = (0, 0);
        loop {
            let n = s.prune_audit(before_ms, keep, batch).await.unwrap();
            total += n;
            calls += 1;
            assert!(
                n <= u64::from(batch),
                "one call deleted {n} > batch {batch}"
            );
            if n < u64::from(batch) {
                return (total, calls);
            }
        }
    }

    async fn audit_times(s: &SqliteStore) -> Vec<i64> {
        let q = AuditQuery {
            limit: u32::MAX,
            ..Default::default()
        };
        s.query_audit(&q)
            .await
            .unwrap()
            .iter()
            .map(|r| r.ts_ms)
            .collect()
    }

    #[tokio::test]
    async fn retention_prunes_old_records_in_batches_and_keeps_recent_ones() {
        let (_d, s) = store().await;
        // Written out of time order too (a late flush): age decides, not position.
        let mut recs: Vec<AuditRecord> = (0..2500).map(|i| audit_at(i, "old")).collect();
        recs.push(audit_at(5000, "recent"));
        recs.push(audit_at(10, "old-late"));
        recs.extend((0..100).map(|i| audit_at(6000 + i, "recent")));
        s.append_audit(&recs).await.unwrap();
        let (deleted, calls) = prune_all(&s, 3000, u64::MAX, 1000).await;
        assert_eq!(deleted, 2501);
        assert!(calls >= 3, "{calls} calls: pruning must go in batches");
        let left = audit_times(&s).await;
        assert_eq!(left.len(), 101);
        assert!(left.iter().all(|t| *t >= 5000), "{left:?}");
        // Nothing more to do: the next call deletes nothing.
        assert_eq!(s.prune_audit(3000, u64::MAX, 1000).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn the_row_cap_prunes_the_oldest_records_first() {
        let (_d, s) = store().await;
        for chunk in (0..2300).collect::<Vec<i64>>().chunks(500) {
            let recs: Vec<AuditRecord> = chunk.iter().map(|i| audit_at(100 + i, "x")).collect();
            s.append_audit(&recs).await.unwrap();
        }
        let (deleted, _) = prune_all(&s, 0, 1000, 400).await;
        assert_eq!(deleted, 1300);
        let left = audit_times(&s).await;
        assert_eq!(left.len(), 1000);
        assert_eq!(left.first(), Some(&1400), "the oldest went first");
        assert_eq!(left.last(), Some(&2399));
        // Under the cap and within retention: nothing goes.
        assert_eq!(s.prune_audit(0, 1000, 400).await.unwrap(), 0);
    }
    async fn user_id(s: &SqliteStore, n: &str) -> i64 {
        s.create_user(&NewUser {
            name: name(n),
            admin: false,
            profile: "default".into(),
        })
        .await
        .unwrap()
        .id
    }

    #[tokio::test]
    async fn vault_verifier_is_set_once() {
        let (_d, s) = store().await;
        assert_eq!(s.vault_verifier().await.unwrap(), None);
        assert!(s.set_vault_verifier(b"v1").await.unwrap());
        assert!(!s.set_vault_verifier(b"v2").await.unwrap());
        assert_eq!(
            s.vault_verifier().await.unwrap().as_deref(),
            Some(&b"v1"[..])
        );
    }

    #[tokio::test]
    async fn data_keys_are_inserted_once_and_only_under_the_current_verifier() {
        let (_d, s) = store().await;
        let a = user_id(&s, "alice").await;
        // No verifier yet: nothing is inserted.
        assert_eq!(s.insert_data_key(a, b"k1", b"v1").await.unwrap(), None);
        assert_eq!(s.data_key(a).await.unwrap(), None);
        s.set_vault_verifier(b"v1").await.unwrap();
        assert_eq!(s.insert_data_key(a, b"k1", b"v2").await.unwrap(), None);
        assert_eq!(s.data_key(a).await.unwrap(), None);
        assert_eq!(
            s.insert_data_key(a, b"k1", b"v1").await.unwrap().as_deref(),
            Some(&b"k1"[..])
        );
        // A second insert keeps the first key and returns it.
        assert_eq!(
            s.insert_data_key(a, b"k2", b"v1").await.unwrap().as_deref(),
            Some(&b"k1"[..])
        );
        // A user that does not exist is refused, not silently ignored.
        assert!(s.insert_data_key(a + 100, b"k", b"v1").await.is_err());
    }

    #[tokio::test]
    async fn secret_rows_merge_list_delete_and_cascade() {
        let (_d, s) = store().await;
        let a = user_id(&s, "alice").await;
        let b = user_id(&s, "bob").await;
        let f = |n: &str, v: &[u8]| (n.to_string(), v.to_vec());
        s.put_secret_fields(a, "github", &[f("token", b"t1"), f("user", b"u1")], 10)
            .await
            .unwrap();
        s.put_secret_fields(a, "github", &[f("token", b"t2")], 20)
            .await
            .unwrap();
        s.put_secret_fields(b, "github", &[f("token", b"bt")], 30)
            .await
            .unwrap();
        assert_eq!(
            s.secret_fields(a, "github").await.unwrap(),
            vec![f("token", b"t2"), f("user", b"u1")]
        );
        let list = s.list_secrets(a).await.unwrap();
        assert_eq!(
            list.iter()
                .map(|i| (i.field.as_str(), i.updated_ms))
                .collect::<Vec<_>>(),
            vec![("token", 20), ("user", 10)]
        );
        assert_eq!(s.delete_secret(a, "github", Some("nope")).await.unwrap(), 0);
        assert_eq!(s.delete_secret(a, "github", Some("user")).await.unwrap(), 1);
        assert_eq!(s.delete_secret(a, "github", None).await.unwrap(), 1);
        assert!(s.secret_fields(a, "github").await.unwrap().is_empty());
        assert_eq!(s.secret_fields(b, "github").await.unwrap().len(), 1);
        // Removing a user removes their secrets and data key.
        s.set_vault_verifier(b"v").await.unwrap();
        s.insert_data_key(b, b"k", b"v").await.unwrap();
        assert!(s.remove_user(&name("bob")).await.unwrap());
        assert!(s.list_secrets(b).await.unwrap().is_empty());
        assert_eq!(s.data_key(b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn rewrap_all_is_all_or_nothing() {
        let (_d, s) = store().await;
        let a = user_id(&s, "alice").await;
        let b = user_id(&s, "bob").await;
        s.set_vault_verifier(b"v1").await.unwrap();
        s.insert_data_key(a, b"ka", b"v1").await.unwrap();
        s.insert_data_key(b, b"kb", b"v1").await.unwrap();
        let rw = |user_id, old: &[u8], new: &[u8]| DataKeyRewrap {
            user_id,
            old: old.to_vec(),
            new: new.to_vec(),
        };
        // A key missing from the set, a stale old value, a stale verifier: nothing changes.
        assert!(
            !s.rewrap_all(b"v1", b"v2", &[rw(a, b"ka", b"ka2")])
                .await
                .unwrap()
        );
        assert!(
            !s.rewrap_all(b"v1", b"v2", &[rw(a, b"ka", b"ka2"), rw(b, b"xx", b"kb2")])
                .await
                .unwrap()
        );
        assert!(
            !s.rewrap_all(b"v0", b"v2", &[rw(a, b"ka", b"ka2"), rw(b, b"kb", b"kb2")])
                .await
                .unwrap()
        );
        assert_eq!(
            s.vault_verifier().await.unwrap().as_deref(),
            Some(&b"v1"[..])
        );
        assert_eq!(s.data_key(a).await.unwrap().as_deref(), Some(&b"ka"[..]));
        assert!(
            s.rewrap_all(b"v1", b"v2", &[rw(a, b"ka", b"ka2"), rw(b, b"kb", b"kb2")])
                .await
                .unwrap()
        );
        assert_eq!(
            s.vault_verifier().await.unwrap().as_deref(),
            Some(&b"v2"[..])
        );
        assert_eq!(
            s.all_data_keys().await.unwrap(),
            vec![(a, b"ka2".to_vec()), (b, b"kb2".to_vec())]
        );
    }
}
