//! Legacy MCP sessions (revisions before 2026-07-28): owned by one user, persisted in the store
//! before their id is handed out, so they survive a hub restart.
//!
//! The in-memory index is the fast path: a lookup costs no I/O and an idle session costs about a
//! hundred bytes. Last-use times are written back every `sessions.flush_interval`. Sessions hold
//! no per-user state; rooms and kernels are keyed by user, never by session. Each user's
//! sessions are kept ordered by last use, so no per-call question (how many, which are newest,
//! which to end when a user is at `sessions.max_per_user`) walks all of a user's sessions.
//! A session's log level (`logging/setLevel`) lives in memory only: lost on restart.

use crate::context::ClientCaps;
use lodge_core::config::SessionsConfig;
use lodge_core::time::now_ms;
use lodge_store::{NewSession, Store, StoreError};
#[allow(deprecated)]
use rmcp::model::LoggingLevel;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Last-use times written per store transaction by [`Sessions::flush`].
const FLUSH_CHUNK: usize = 500;

/// A live session as the hub keeps it in memory.
#[derive(Debug)]
pub struct Session {
    pub user_id: i64,
    pub protocol: &'static str,
    /// What the client declared at initialize that it can answer.
    pub client: ClientCaps,
    pub created_ms: i64,
    last_seen_ms: AtomicI64,
    flushed_ms: AtomicI64,
    /// The level set with `logging/setLevel`, as [`LEVELS`] index + 1 (0: none set).
    log_level: AtomicU8,
}

/// Log levels, least severe first (their order in MCP).
#[allow(deprecated)] // rmcp marks logging old (SEP-2577); revisions before 2026-07-28 have it.
const LEVELS: [LoggingLevel; 8] = [
    LoggingLevel::Debug,
    LoggingLevel::Info,
    LoggingLevel::Notice,
    LoggingLevel::Warning,
    LoggingLevel::Error,
    LoggingLevel::Critical,
    LoggingLevel::Alert,
    LoggingLevel::Emergency,
];

impl Session {
    fn new(
        user_id: i64,
        protocol: &'static str,
        client: ClientCaps,
        created_ms: i64,
        last_seen_ms: i64,
    ) -> Self {
        Session {
            user_id,
            protocol,
            client,
            created_ms,
            last_seen_ms: AtomicI64::new(last_seen_ms),
            flushed_ms: AtomicI64::new(last_seen_ms),
            log_level: AtomicU8::new(0),
        }
    }

    pub fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// The level the client set with `logging/setLevel`, if it did.
    #[allow(deprecated)]
    pub fn log_level(&self) -> Option<LoggingLevel> {
        let i = self.log_level.load(Ordering::Relaxed);
        LEVELS.get(usize::from(i).checked_sub(1)?).copied()
    }

    #[allow(deprecated)]
    pub fn set_log_level(&self, level: LoggingLevel) {
        if let Some(i) = LEVELS.iter().position(|l| *l == level) {
            self.log_level.store(i as u8 + 1, Ordering::Relaxed);
        }
    }
}

/// One user's sessions as (last use, id), oldest first. A session's last use changes only
/// under this lock (or under the index's write lock), so its entry here always matches it.
type ByLastUse = Mutex<BTreeSet<(i64, u128)>>;

fn lock(m: &ByLastUse) -> MutexGuard<'_, BTreeSet<(i64, u128)>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Unknown, expired, or another user's: deliberately indistinguishable.
    #[error("session not found or expired: start a new one with initialize")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Default)]
struct Index {
    by_id: HashMap<u128, Arc<Session>>,
    by_user: HashMap<i64, ByLastUse>,
    /// Sessions reached through [`Index::session`], for tests that check a question about one
    /// user does not visit all of that user's sessions.
    #[cfg(test)]
    visits: std::sync::atomic::AtomicUsize,
}

impl Index {
    fn insert(&mut self, id: u128, s: Arc<Session>) {
        let set = self.by_user.entry(s.user_id).or_default();
        set.get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .insert((s.last_seen_ms(), id));
        self.by_id.insert(id, s);
    }

    fn remove(&mut self, id: u128) -> Option<Arc<Session>> {
        let s = self.by_id.remove(&id)?;
        if let Some(set) = self.by_user.get_mut(&s.user_id) {
            let set_inner = set.get_mut().unwrap_or_else(|p| p.into_inner());
            set_inner.remove(&(s.last_seen_ms(), id));
            if set_inner.is_empty() {
                self.by_user.remove(&s.user_id);
            }
        }
        Some(s)
    }

    /// The session with `id`: the one way from an id in a user's set to its session.
    fn session(&self, id: u128) -> Option<&Arc<Session>> {
        #[cfg(test)]
        self.visits.fetch_add(1, Ordering::Relaxed);
        self.by_id.get(&id)
    }

    fn count_for(&self, user_id: i64) -> usize {
        self.by_user.get(&user_id).map_or(0, |s| lock(s).len())
    }

    /// The user's least recently used session: the first of their set, O(log n).
    fn oldest_of(&self, user_id: i64) -> Option<u128> {
        self.by_user
            .get(&user_id)
            .and_then(|s| lock(s).first().map(|(_, k)| *k))
    }
}

pub struct Sessions {
    store: Arc<dyn Store>,
    idle_ms: i64,
    max_age_ms: i64,
    max_per_user: u32,
    index: RwLock<Index>,
}

/// A new session, and the sessions of the same user ended to make room for it.
#[derive(Debug)]
pub struct Created {
    pub id: String,
    pub ended: Vec<String>,
}

/// Session ids are 32 lowercase hex digits (a random UUID); anything else is not one of ours.
pub fn parse_id(s: &str) -> Option<u128> {
    (s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| u128::from_str_radix(s, 16).ok())
    .flatten()
}

pub fn format_id(id: u128) -> String {
    format!("{id:032x}")
}

impl Sessions {
    /// Loads live sessions from the store, dropping those that expired while the hub was down.
    pub async fn load(store: Arc<dyn Store>, cfg: &SessionsConfig) -> Result<Self, StoreError> {
        let me = Self {
            store: store.clone(),
            idle_ms: cfg.idle_timeout.as_millis() as i64,
            max_age_ms: cfg.max_age.as_millis() as i64,
            max_per_user: cfg.max_per_user,
            index: RwLock::new(Index::default()),
        };
        let now = now_ms();
        let mut stale = Vec::new();
        let mut idx = Index::default();
        for row in store.sessions().await? {
            let Some(id) = parse_id(&row.id) else {
                stale.push(row.id);
                continue;
            };
            if me.expired(row.created_ms, row.last_seen_ms, now) {
                stale.push(row.id);
                continue;
            }
            let s = Session::new(
                row.user_id,
                crate::mcp::version::intern(&row.protocol),
                ClientCaps::from_bits(row.client_caps),
                row.created_ms,
                row.last_seen_ms,
            );
            idx.insert(id, Arc::new(s));
        }
        if !stale.is_empty() {
            store.delete_sessions(&stale).await?;
        }
        *me.write() = idx;
        Ok(me)
    }

    fn expired(&self, created: i64, last_seen: i64, now: i64) -> bool {
        now - last_seen > self.idle_ms || now - created > self.max_age_ms
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates and persists a session; the id is returned only once it is durable. A user at
    /// `sessions.max_per_user` loses their least recently used session to it: clients that
    /// never end their sessions (one per run, for some) would otherwise lock their user out
    /// until the idle timeout.
    pub async fn create(
        &self,
        user_id: i64,
        protocol: &'static str,
        client: &str,
        caps: ClientCaps,
    ) -> Result<Created, SessionError> {
        let id = uuid::Uuid::new_v4().as_u128();
        let now = now_ms();
        let session = Arc::new(Session::new(user_id, protocol, caps, now, now));
        let evicted = {
            // Reserve under the lock so concurrent creates cannot exceed the limit.
            let mut idx = self.write();
            let mut evicted = Vec::new();
            while idx.count_for(user_id) as u32 >= self.max_per_user {
                let Some(oldest) = idx.oldest_of(user_id) else {
                    break;
                };
                idx.remove(oldest);
                evicted.push(oldest);
            }
            idx.insert(id, session);
            evicted
        };
        let ended: Vec<String> = evicted.iter().map(|k| format_id(*k)).collect();
        if !ended.is_empty() {
            let ids = &ended;
            tracing::info!(
                user_id,
                ended = ?ids,
                "ended the user's least recently used session for a new one (sessions.max_per_user)"
            );
            metrics::gauge!("lodge_sessions_active").decrement(ids.len() as f64);
            if let Err(e) = self.store.delete_sessions(ids).await {
                // Gone from memory already, so no request finds them; the store's copies are
                // dropped as expired at the next load.
                tracing::warn!(error = %e, "cannot delete ended sessions from the store");
            }
        }
        let row = NewSession {
            id: format_id(id),
            user_id,
            protocol: protocol.to_owned(),
            client: client.chars().take(200).collect(),
            client_caps: caps.bits(),
            created_ms: now,
        };
        if let Err(e) = self.store.create_session(&row).await {
            self.write().remove(id);
            return Err(e.into());
        }
        metrics::gauge!("lodge_sessions_active").increment(1.0);
        Ok(Created { id: row.id, ended })
    }

    /// Finds `id` for `user_id` and marks it used. Unknown, expired and foreign sessions all
    /// give the same [`SessionError::NotFound`].
    pub async fn touch(&self, id: &str, user_id: i64) -> Result<Arc<Session>, SessionError> {
        let key = parse_id(id).ok_or(SessionError::NotFound)?;
        let now = now_ms();
        let s = {
            let idx = self.read();
            let s = idx.by_id.get(&key).cloned().ok_or(SessionError::NotFound)?;
            if s.user_id != user_id {
                return Err(SessionError::NotFound);
            }
            if !self.expired(s.created_ms, s.last_seen_ms(), now)
                && let Some(set) = idx.by_user.get(&user_id)
            {
                // Moves the session to its new place in the user's order: O(log n).
                let mut set = lock(set);
                let old = s.last_seen_ms();
                if now > old && set.remove(&(old, key)) {
                    s.last_seen_ms.store(now, Ordering::Relaxed);
                    set.insert((now, key));
                }
            }
            s
        };
        if self.expired(s.created_ms, s.last_seen_ms(), now) {
            self.end_many(vec![key]).await?;
            return Err(SessionError::NotFound);
        }
        Ok(s)
    }

    /// Ends `id` if it belongs to `user_id` (or to anyone, when `user_id` is None: admins).
    pub async fn end(&self, id: &str, user_id: Option<i64>) -> Result<(), SessionError> {
        let key = parse_id(id).ok_or(SessionError::NotFound)?;
        {
            let idx = self.read();
            let s = idx.by_id.get(&key).ok_or(SessionError::NotFound)?;
            if user_id.is_some_and(|u| u != s.user_id) {
                return Err(SessionError::NotFound);
            }
        }
        if self.end_many(vec![key]).await? == 0 {
            return Err(SessionError::NotFound);
        }
        Ok(())
    }

    async fn end_many(&self, keys: Vec<u128>) -> Result<usize, SessionError> {
        let removed: Vec<u128> = {
            let mut idx = self.write();
            keys.into_iter()
                .filter(|k| idx.remove(*k).is_some())
                .collect()
        };
        if !removed.is_empty() {
            let ids: Vec<String> = removed.iter().map(|k| format_id(*k)).collect();
            self.store.delete_sessions(&ids).await?;
            metrics::gauge!("lodge_sessions_active").decrement(removed.len() as f64);
        }
        Ok(removed.len())
    }

    /// Ends every session of one user (user removed).
    pub async fn end_user(&self, user_id: i64) -> Result<usize, SessionError> {
        let keys: Vec<u128> = self
            .read()
            .by_user
            .get(&user_id)
            .map(|s| lock(s).iter().map(|(_, k)| *k).collect())
            .unwrap_or_default();
        self.end_many(keys).await
    }

    /// Ends sessions past their idle timeout or max age; returns how many.
    pub async fn reap(&self) -> Result<usize, SessionError> {
        let now = now_ms();
        let expired: Vec<u128> = self
            .read()
            .by_id
            .iter()
            .filter(|(_, s)| self.expired(s.created_ms, s.last_seen_ms(), now))
            .map(|(k, _)| *k)
            .collect();
        self.end_many(expired).await
    }

    /// Writes changed last-use times to the store.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let dirty: Vec<(String, i64)> = self
            .read()
            .by_id
            .iter()
            .filter_map(|(k, s)| {
                let seen = s.last_seen_ms();
                let old = s.flushed_ms.swap(seen, Ordering::Relaxed);
                (seen > old).then(|| (format_id(*k), seen))
            })
            .collect();
        // One transaction per chunk: a flush of many sessions in one transaction held
        // SQLite's write lock long enough to stall new sessions' inserts under load.
        for chunk in dirty.chunks(FLUSH_CHUNK) {
            self.store.touch_sessions(chunk).await?;
        }
        Ok(())
    }

    /// Sessions of one user, or of everyone (`None`), as (id, session) pairs.
    pub fn list(&self, user_id: Option<i64>) -> Vec<(String, Arc<Session>)> {
        let idx = self.read();
        match user_id {
            Some(u) => {
                let keys: Vec<u128> = idx
                    .by_user
                    .get(&u)
                    .map(|s| lock(s).iter().map(|(_, k)| *k).collect())
                    .unwrap_or_default();
                keys.into_iter()
                    .filter_map(|k| idx.session(k).map(|s| (format_id(k), s.clone())))
                    .collect()
            }
            None => idx
                .by_id
                .iter()
                .map(|(k, s)| (format_id(*k), s.clone()))
                .collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.read().by_id.get(&parse_id(id)?).cloned()
    }

    pub fn count(&self) -> usize {
        self.read().by_id.len()
    }

    pub fn count_for(&self, user_id: i64) -> usize {
        self.read().count_for(user_id)
    }

    /// How many sessions `user_id` holds, and the `n` most recently used (newest first, with
    /// the last-use time they are ordered by). Costs O(log total + n), whatever the total.
    pub fn newest(&self, user_id: i64, n: usize) -> (usize, Vec<(String, Arc<Session>, i64)>) {
        let idx = self.read();
        let Some(set) = idx.by_user.get(&user_id) else {
            return (0, Vec::new());
        };
        let set = lock(set);
        let shown = set
            .iter()
            .rev()
            .take(n)
            .filter_map(|&(seen, k)| idx.session(k).map(|s| (format_id(k), s.clone(), seen)))
            .collect();
        (set.len(), shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_store::{NewUser, SqliteStore};

    #[test]
    fn ids_round_trip_and_reject_junk() {
        let id = uuid::Uuid::new_v4().as_u128();
        assert_eq!(parse_id(&format_id(id)), Some(id));
        for bad in [
            "",
            "xyz",
            "../../etc/passwd",
            &"A".repeat(32),
            &"0".repeat(33),
            "+0000000000000000000000000000000",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_flush_larger_than_one_chunk_writes_every_last_use() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("lodge.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).await.unwrap());
        let user = store
            .create_user(&NewUser {
                name: lodge_core::UserName::parse("alice").unwrap(),
                admin: false,
                profile: "default".into(),
            })
            .await
            .unwrap();
        let cfg = SessionsConfig {
            max_per_user: 5000,
            ..SessionsConfig::default()
        };
        let sessions = Sessions::load(store.clone(), &cfg).await.unwrap();
        let n = FLUSH_CHUNK * 2 + 7;
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(
                sessions
                    .create(user.id, "2025-06-18", "t", ClientCaps::default())
                    .await
                    .unwrap()
                    .id,
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        for id in &ids {
            sessions.touch(id, user.id).await.unwrap();
        }
        sessions.flush().await.unwrap();

        let reloaded = Sessions::load(store, &cfg).await.unwrap();
        for id in &ids {
            let before = sessions.get(id).unwrap().last_seen_ms();
            let after = reloaded.get(id).unwrap().last_seen_ms();
            assert_eq!(after, before, "session {id}'s last use was not written");
        }
    }

    async fn one_user(max_per_user: u32) -> (tempfile::TempDir, Sessions, i64, i64) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("lodge.db"))
                .await
                .unwrap(),
        );
        let mut ids = Vec::new();
        for name in ["alice", "bob"] {
            let u = store
                .create_user(&NewUser {
                    name: lodge_core::UserName::parse(name).unwrap(),
                    admin: false,
                    profile: "default".into(),
                })
                .await
                .unwrap();
            ids.push(u.id);
        }
        let cfg = SessionsConfig {
            max_per_user,
            ..SessionsConfig::default()
        };
        let sessions = Sessions::load(store, &cfg).await.unwrap();
        (dir, sessions, ids[0], ids[1])
    }

    /// Sets a session's last use directly (as a touch at that time would), so the test
    /// controls the order without sleeping.
    fn seen_at(sessions: &Sessions, id: &str, at: i64) {
        let idx = sessions.read();
        let key = parse_id(id).unwrap();
        let s = idx.by_id.get(&key).unwrap();
        let mut set = lock(idx.by_user.get(&s.user_id).unwrap());
        assert!(set.remove(&(s.last_seen_ms(), key)));
        s.last_seen_ms.store(at, Ordering::Relaxed);
        set.insert((at, key));
    }

    #[tokio::test]
    async fn newest_lists_the_most_recently_used_without_visiting_the_rest() {
        let n = 3000;
        let (_dir, sessions, alice, bob) = one_user(n as u32).await;
        let base = now_ms() - 10 * n as i64;
        let mut ids = Vec::new();
        for i in 0..n {
            let id = sessions
                .create(alice, "2025-06-18", "t", ClientCaps::default())
                .await
                .unwrap()
                .id;
            // Last use in a shuffled order, so creation order is not the answer.
            seen_at(&sessions, &id, base + ((i * 7919) % n) as i64);
            ids.push(id);
        }
        sessions
            .create(bob, "2025-06-18", "t", ClientCaps::default())
            .await
            .unwrap();
        // A real touch moves a session to the front.
        let touched = ids[17].clone();
        sessions.touch(&touched, alice).await.unwrap();

        let mut expect: Vec<(i64, String)> = ids
            .iter()
            .map(|id| (sessions.get(id).unwrap().last_seen_ms(), id.clone()))
            .collect();
        expect.sort_by(|a, b| b.cmp(a));
        let expect: Vec<String> = expect.into_iter().take(20).map(|(_, id)| id).collect();

        sessions.read().visits.store(0, Ordering::Relaxed);
        let (total, newest) = sessions.newest(alice, 20);
        let visited = sessions.read().visits.load(Ordering::Relaxed);
        assert_eq!(total, n);
        let got: Vec<String> = newest.iter().map(|(id, ..)| id.clone()).collect();
        assert_eq!(got, expect);
        assert_eq!(got[0], touched);
        for (id, s, seen) in &newest {
            assert_eq!(s.user_id, alice, "{id} is not alice's");
            assert_eq!(*seen, s.last_seen_ms());
        }
        // The operation count that catches a return to list-and-sort: only the sessions
        // shown are visited, however many the user holds.
        assert_eq!(visited, 20, "newest() visited {visited} of {n} sessions");
        assert_eq!(sessions.newest(bob, 20).0, 1);

        // Ending sessions keeps the order and the count right.
        sessions.end(&touched, Some(alice)).await.unwrap();
        let (total, newest) = sessions.newest(alice, 20);
        assert_eq!(total, n - 1);
        assert_eq!(newest[0].0, expect[1]);
        assert_eq!(sessions.end_user(alice).await.unwrap(), n - 1);
        assert_eq!(sessions.newest(alice, 20).0, 0);
    }

    #[tokio::test]
    async fn at_the_per_user_limit_a_new_session_ends_the_least_recently_used() {
        let (_dir, sessions, alice, bob) = one_user(3).await;
        let base = now_ms() - 10_000;
        let mut ids = Vec::new();
        for i in 0..3 {
            let id = sessions
                .create(alice, "2025-06-18", "t", ClientCaps::default())
                .await
                .unwrap()
                .id;
            seen_at(&sessions, &id, base + i);
            ids.push(id);
        }
        let bobs = sessions
            .create(bob, "2025-06-18", "t", ClientCaps::default())
            .await
            .unwrap()
            .id;
        seen_at(&sessions, &bobs, base - 1);
        // The oldest by creation is the most recently used: the second one goes.
        sessions.touch(&ids[0], alice).await.unwrap();
        let fourth = sessions
            .create(alice, "2025-06-18", "t", ClientCaps::default())
            .await
            .unwrap();
        assert_eq!(fourth.ended, [ids[1].clone()]);
        let fourth = fourth.id;
        assert_eq!(sessions.count_for(alice), 3);
        assert!(matches!(
            sessions.touch(&ids[1], alice).await,
            Err(SessionError::NotFound)
        ));
        for live in [&ids[0], &ids[2], &fourth] {
            sessions.touch(live, alice).await.unwrap();
        }
        // Gone from the store too, and another user's older session is untouched.
        assert!(
            sessions
                .store
                .sessions()
                .await
                .unwrap()
                .iter()
                .all(|r| r.id != ids[1])
        );
        assert_eq!(sessions.count_for(bob), 1);
        sessions.touch(&bobs, bob).await.unwrap();
    }

    #[tokio::test]
    #[allow(deprecated)]
    async fn a_session_keeps_the_log_level_it_was_given() {
        let (_dir, sessions, alice, _) = one_user(3).await;
        let id = sessions
            .create(alice, "2025-06-18", "t", ClientCaps::default())
            .await
            .unwrap()
            .id;
        let s = sessions.get(&id).unwrap();
        assert_eq!(s.log_level(), None);
        for level in LEVELS {
            s.set_log_level(level);
            assert_eq!(sessions.get(&id).unwrap().log_level(), Some(level));
        }
    }
}
