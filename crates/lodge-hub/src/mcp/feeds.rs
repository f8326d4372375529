//! The streams that carry what belongs to no request of a client's — an upstream server's list
//! changes and updates of subscribed resources: a sessionful client's standalone stream (`GET
//! /mcp`, one per session, a new GET replaces the old one) and a 2026-07-28 client's
//! `subscriptions/listen` streams (each with its own filter, its notifications tagged with its
//! subscription id). It only delivers: which server said what, and for whom, is decided upstream.

use super::relay::{event, stream_response, stream_response_keeping};
use axum::body::Bytes;
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Messages a stream may fall behind by before it is dropped (the client re-opens it).
const BACKLOG: usize = 64;

const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

#[derive(Default)]
struct Feed {
    user_id: i64,
    stream: Option<mpsc::Sender<Bytes>>,
    subscribed: HashSet<String>,
    /// Set for a `subscriptions/listen` stream: what it asked for.
    listen: Option<Listen>,
}

/// What one `subscriptions/listen` request opted in to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listen {
    /// The listen request's id, which tags its notifications.
    pub id: Value,
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    /// Resource URIs (as the user names them) whose updates it wants.
    pub uris: Vec<String>,
}

impl Listen {
    /// From the request's `notifications` filter; None when it is not one.
    pub fn parse(id: Value, filter: &Value) -> Option<Self> {
        let filter = filter.as_object()?;
        let flag = |k: &str| filter.get(k).and_then(Value::as_bool).unwrap_or(false);
        let uris = match filter.get("resourceSubscriptions") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|u| u.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()?,
            Some(_) => return None,
        };
        Some(Self {
            id,
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
            uris,
        })
    }

    /// The acknowledgement that opens the stream: what is honoured (everything asked).
    pub fn acknowledged(&self) -> Value {
        let mut agreed = json!({});
        for (on, key) in [
            (self.tools, "toolsListChanged"),
            (self.prompts, "promptsListChanged"),
            (self.resources, "resourcesListChanged"),
        ] {
            if on {
                agreed[key] = json!(true);
            }
        }
        if !self.uris.is_empty() {
            agreed["resourceSubscriptions"] = json!(self.uris);
        }
        json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": agreed, "_meta": { SUBSCRIPTION_ID: self.id }}})
    }

    fn wants(&self, method: &str) -> bool {
        match method {
            "notifications/tools/list_changed" => self.tools,
            "notifications/prompts/list_changed" => self.prompts,
            "notifications/resources/list_changed" => self.resources,
            _ => false,
        }
    }
}

impl Feed {
    fn unused(&self) -> bool {
        self.stream.is_none() && (self.subscribed.is_empty() || self.listen.is_some())
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

/// Runs its function when dropped.
struct OnDrop(Option<Box<dyn FnOnce() + Send>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
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

    /// Opens a `subscriptions/listen` stream under `key` (unique per listen); it ends when the
    /// client goes (or the hub stops), and then `closed` runs.
    pub fn listen(
        &self,
        key: &str,
        user_id: i64,
        listen: Listen,
        closed: impl FnOnce() + Send + 'static,
    ) -> Response {
        let (tx, rx) = mpsc::channel(BACKLOG);
        // The acknowledgement comes first, before anything can be delivered.
        let _ = tx.try_send(event(&listen.acknowledged()));
        let feed = Feed {
            user_id,
            stream: Some(tx),
            subscribed: listen.uris.iter().cloned().collect(),
            listen: Some(listen),
        };
        self.lock().insert(key.to_owned(), feed);
        stream_response_keeping(rx, OnDrop(Some(Box::new(closed))))
    }

    /// Is `uri` still wanted by some stream or session of the user?
    pub fn wanted(&self, user_id: i64, uri: &str) -> bool {
        self.lock()
            .values()
            .any(|f| f.user_id == user_id && f.subscribed.contains(uri))
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
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let updated = (method == "notifications/resources/updated")
            .then(|| message["params"]["uri"].as_str().unwrap_or_default());
        let mut feeds = self.lock();
        for feed in feeds.values_mut().filter(|f| f.user_id == user_id) {
            let wanted = match (updated, &feed.listen) {
                (Some(uri), _) => feed.subscribed.contains(uri),
                (None, Some(listen)) => listen.wants(method),
                (None, None) => true,
            };
            if !wanted {
                continue;
            }
            match &feed.listen {
                Some(listen) => {
                    let mut tagged = message.clone();
                    if let Some(params) = tagged
                        .as_object_mut()
                        .map(|m| m.entry("params").or_insert_with(|| json!({})))
                        && let Some(params) = params.as_object_mut()
                    {
                        let meta = params.entry("_meta").or_insert_with(|| json!({}));
                        meta[SUBSCRIPTION_ID] = listen.id.clone();
                    }
                    feed.send(&tagged);
                }
                None => feed.send(message),
            }
        }
        feeds.retain(|_, f| !f.unused());
    }
}
