//! Requests still being answered, so a client's `notifications/cancelled` can stop one: its
//! work is dropped, which cancels it in the room and tells an upstream server. Keyed by the
//! user, the session (empty for stateless requests) and the request id, so one user can never
//! cancel another's work.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

type Key = (i64, String, String);

#[derive(Default)]
pub struct Inflight {
    running: Mutex<HashMap<Key, Vec<(u64, CancellationToken)>>>,
    serial: AtomicU64,
}

/// Removes its request from the table when the request ends.
pub struct Registered<'a> {
    table: &'a Inflight,
    key: Key,
    serial: u64,
    pub token: CancellationToken,
}

fn key(user_id: i64, session: Option<&str>, id: &Value) -> Key {
    (user_id, session.unwrap_or("").to_owned(), id.to_string())
}

impl Inflight {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Vec<(u64, CancellationToken)>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, user_id: i64, session: Option<&str>, id: &Value) -> Registered<'_> {
        let key = key(user_id, session, id);
        let token = CancellationToken::new();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(key.clone())
            .or_default()
            .push((serial, token.clone()));
        Registered {
            table: self,
            key,
            serial,
            token,
        }
    }

    /// Cancels the caller's running request(s) with this id; returns how many there were.
    pub fn cancel(&self, user_id: i64, session: Option<&str>, id: &Value) -> usize {
        let running = self.lock();
        let tokens = running.get(&key(user_id, session, id));
        for (_, t) in tokens.into_iter().flatten() {
            t.cancel();
        }
        tokens.map_or(0, Vec::len)
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut running = self.table.lock();
        if let Some(tokens) = running.get_mut(&self.key) {
            tokens.retain(|(serial, _)| *serial != self.serial);
            if tokens.is_empty() {
                running.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_same_user_and_session_can_cancel() {
        let t = Inflight::default();
        let r = t.register(1, Some("s1"), &json!(7));
        assert_eq!(t.cancel(2, Some("s1"), &json!(7)), 0);
        assert_eq!(t.cancel(1, Some("s2"), &json!(7)), 0);
        assert_eq!(t.cancel(1, Some("s1"), &json!("7")), 0);
        assert!(!r.token.is_cancelled());
        assert_eq!(t.cancel(1, Some("s1"), &json!(7)), 1);
        assert!(r.token.is_cancelled());
        drop(r);
        assert!(t.lock().is_empty());
    }
}
