//! Sessionful clients' standalone event streams (`GET /mcp`): what belongs to no request of
//! theirs — an upstream server's list changes, and updates of the resources the session
//! subscribed to. One stream per session (a new GET replaces the old one). It only delivers:
//! which server said what, and for whom, is decided upstream.

use super::relay::{event, stream_response};
use axum::body::Bytes;
use axum::response::Response;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Messages a stream may fall behind by before it is dropped (the client re-opens it).
const BACKLOG: usize = 64;

#[derive(Default)]
struct Feed {
    user_id: i64,
    stream: Option<mpsc::Sender<Bytes>>,
    subscribed: HashSet<String>,
}

impl Feed {
    fn unused(&self) -> bool {
        self.stream.is_none() && self.subscribed.is_empty()
    }

    /// Queues `message`; a stream that is gone or too far behind is dropped.
    fn send(&mut self, message: &Value) {
        if let Some(tx) = &self.stream
            && tx.try_send(event(message)).is_err()
        {
            self.stream = None;
        }
    }
}

/// The sessions that have a stream or subscriptions, by session id.
#[derive(Default)]
pub struct Feeds {
    feeds: Mutex<HashMap<String, Feed>>,
}

impl Feeds {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Feed>> {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the session's stream (replacing an older one) and answers the GET with it.
    pub fn open(&self, session: &str, user_id: i64) -> Response {
        let (tx, rx) = mpsc::channel(BACKLOG);
        let mut feeds = self.lock();
        let feed = feeds.entry(session.to_owned()).or_default();
        feed.user_id = user_id;
        feed.stream = Some(tx);
        stream_response(rx)
    }

    /// Records that the session wants updates of `uri`.
    pub fn subscribe(&self, session: &str, user_id: i64, uri: &str) {
        let mut feeds = self.lock();
        let feed = feeds.entry(session.to_owned()).or_default();
        feed.user_id = user_id;
        feed.subscribed.insert(uri.to_owned());
    }

    /// Forgets the session's subscription to `uri`; true if another session of the user still
    /// has one (so the server must keep sending updates).
    pub fn unsubscribe(&self, session: &str, user_id: i64, uri: &str) -> bool {
        let mut feeds = self.lock();
        if let Some(feed) = feeds.get_mut(session) {
            feed.subscribed.remove(uri);
            if feed.unused() {
                feeds.remove(session);
            }
        }
        feeds
            .values()
            .any(|f| f.user_id == user_id && f.subscribed.contains(uri))
    }

    /// Closes every stream (the hub is stopping); subscriptions stay for reconnecting clients.
    pub fn close_all(&self) {
        let mut feeds = self.lock();
        for feed in feeds.values_mut() {
            feed.stream = None;
        }
        feeds.retain(|_, f| !f.unused());
    }

    /// A session ended: its stream closes and its subscriptions go.
    pub fn end(&self, session: &str) {
        self.lock().remove(session);
    }

    /// Delivers `message` from one of the user's servers: a `resources/updated` to the
    /// sessions subscribed to its URI, anything else to every stream of the user.
    pub fn deliver(&self, user_id: i64, message: &Value) {
        let updated = (message.get("method").and_then(Value::as_str)
            == Some("notifications/resources/updated"))
        .then(|| message["params"]["uri"].as_str().unwrap_or_default());
        let mut feeds = self.lock();
        for feed in feeds.values_mut().filter(|f| f.user_id == user_id) {
            if updated.is_none_or(|uri| feed.subscribed.contains(uri)) {
                feed.send(message);
            }
        }
        feeds.retain(|_, f| !f.unused());
    }
}
