//! Upstream MCP servers, one private instance per user: started on first use inside the user's
//! room with the user's own secrets, replaced (with backoff) when they die, culled when idle,
//! and their tools, prompts and resources offered under names that say which server they are
//! from. This module owns which instances run; the room runs them and relays their stdio.
//! An instance's output is its user's alone: each user's lists come from their own instance,
//! never from another user's (a user controls their instance's stdio from their own commands).

pub mod catalog;
mod conn;

use crate::caller::Caller;
use crate::context::{Ask, ClientCaps, Notice, RequestContext};
use crate::rooms::{RoomError, Rooms};
use catalog::{Catalog, Interner};
use conn::{Conn, ConnError, Listener};
use lodge_core::flight::Flights;
use lodge_core::servers::{EnvValue, UpstreamConfig};
use lodge_core::time::now_ms;
use lodge_protocol::{Op, Upstream};
use lodge_vault::{Vault, VaultError};
#[allow(deprecated)]
use rmcp::model::LoggingLevel;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The MCP revision Lodge offers upstream servers first. A server that speaks it answers with
/// it; any other answers with the newest revision it speaks (the legacy negotiation), which
/// Lodge then speaks to it.
const UPSTREAM_PROTOCOL: &str = crate::mcp::version::MODERN;
/// How long a `subscriptions/listen` request may stay open: the instance's whole life.
const LISTEN_FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// Input-required rounds one call may take before it is given up.
const MAX_ROUNDS: usize = 16;
/// How long a server that missed a deadline gets to answer `ping` before it counts as hung.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// An instance that lived this long before dying starts its backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// First and longest wait before restarting a server that keeps failing.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Pages read from one paginated list before giving up on the rest.
const MAX_PAGES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("unknown {kind} {name} (tools/list shows what you have)")]
    Unknown { kind: &'static str, name: String },
    #[error(
        "server {server} needs your secret {secret}.{field}, which you do not have: set it with \
         the secret_put tool ({{\"name\": \"{secret}\", \"fields\": {{\"{field}\": \"...\"}}}}) \
         or `lodge secret put {user} {secret} --field {field}`"
    )]
    MissingSecret {
        server: String,
        user: String,
        secret: String,
        field: String,
    },
    #[error("server {server} cannot start: {limit}")]
    Limit { server: String, limit: String },
    #[error(
        "server {server} failed {failures} times in a row; the next start is allowed in {wait_ms} ms \
         (last failure: {last})"
    )]
    BackingOff {
        server: String,
        failures: u32,
        wait_ms: u128,
        last: String,
    },
    #[error("server {server} could not start: {reason}")]
    Start { server: String, reason: String },
    #[error("{0}")]
    Room(#[from] RoomError),
    #[error("server {server}: {error}")]
    Call { server: String, error: ConnError },
    #[error("server {server} failed: {reason}; the next call starts a fresh instance")]
    Died { server: String, reason: String },
    #[error("server {server} did not answer {method} within {after:?}{stopped}")]
    Timeout {
        server: String,
        method: String,
        after: Duration,
        stopped: &'static str,
    },
}

impl UpstreamError {
    /// The JSON-RPC (code, data) this error is answered with, when it is not a tool failure:
    /// the server's own protocol errors, and names that do not exist.
    pub fn rpc(&self) -> Option<(i32, Option<Value>)> {
        match self {
            // A resource not found names its URI in `data`, as MCP asks.
            UpstreamError::Unknown {
                kind: "resource",
                name,
            } => Some((-32602, Some(json!({ "uri": name })))),
            UpstreamError::Unknown { .. } => Some((-32602, None)),
            UpstreamError::Call {
                error: ConnError::Rpc { code, data, .. },
                ..
            } => Some((i32::try_from(*code).unwrap_or(-32603), data.clone())),
            _ => None,
        }
    }
}

/// One running instance of a server for one user.
struct Instance {
    conn: Arc<Conn>,
    /// It speaks 2026-07-28: every request carries the client's `_meta`, and its answers may be
    /// input-required results.
    modern: bool,
    started: Instant,
    last_used_ms: AtomicI64,
    /// A 2026-07-28 server's `subscriptions/listen` request (how it tells of list changes and
    /// resource updates), replaced when the user's subscriptions change.
    listen: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Instance {
    fn touch(&self) {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Serving a client's request (its standing `subscriptions/listen` does not count).
    fn busy(&self) -> bool {
        let listening = lock(&self.listen)
            .as_ref()
            .is_some_and(|l| !l.is_finished());
        self.conn.in_flight() > usize::from(listening)
    }

    /// (Re)opens the server's `subscriptions/listen` for list changes and the updates of
    /// `uris` (the server's own URIs). It stays open for the instance's life.
    fn listen(&self, uris: Vec<String>) {
        let mut params = json!({"notifications": {
            "toolsListChanged": true,
            "promptsListChanged": true,
            "resourcesListChanged": true,
            "resourceSubscriptions": uris,
        }});
        stamp_meta(&mut params, ClientCaps::default(), None);
        let conn = self.conn.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = conn
                .request("subscriptions/listen", params, None, LISTEN_FOREVER)
                .await
            {
                tracing::debug!("an upstream server's subscriptions/listen ended: {e}");
            }
        });
        if let Some(old) = lock(&self.listen).replace(task.abort_handle()) {
            // Dropping its request cancels it at the server.
            old.abort();
        }
    }

    fn alive(&self) -> bool {
        self.conn.dead_reason().is_none()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(listen) = lock(&self.listen).take() {
            listen.abort();
        }
        self.conn.stop();
    }
}

/// Consecutive failures of one user's server, and when it may start again.
#[derive(Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
    last: String,
}

impl Backoff {
    fn failed(&mut self, why: &str) {
        self.failures += 1;
        let delay = match self.failures {
            0 | 1 => Duration::ZERO,
            n => BACKOFF_FIRST
                .saturating_mul(1 << (n - 2).min(16))
                .min(BACKOFF_MAX),
        };
        self.not_before = Some(Instant::now() + delay);
        self.last = why.chars().take(300).collect();
    }

    fn check(&self, server: &str) -> Result<(), UpstreamError> {
        match self.not_before {
            Some(t) if t > Instant::now() => Err(UpstreamError::BackingOff {
                server: server.to_owned(),
                failures: self.failures,
                wait_ms: (t - Instant::now()).as_millis(),
                last: self.last.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// What a (user, server) keeps between its instances: how often it failed, and its lists.
#[derive(Default)]
struct Slot {
    backoff: Mutex<Backoff>,
    /// The lists this user's latest instance gave (kept when it is culled, so listing does not
    /// restart it). Only this user's own instances ever write here.
    catalog: RwLock<Option<Arc<Catalog>>>,
    /// Resources (the server's own URIs) this user's sessions subscribed to: a fresh instance
    /// is told of them again.
    subscribed: Mutex<std::collections::BTreeSet<String>>,
}

impl Slot {
    fn subscribed(&self) -> Vec<String> {
        lock(&self.subscribed).iter().cloned().collect()
    }

    fn catalog(&self) -> Option<Arc<Catalog>> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the lists `conn` gave, unless it has ended meanwhile (a replacement instance,
    /// started only after it ended, then owns the slot's lists).
    fn set_catalog(&self, conn: &Conn, catalog: Arc<Catalog>) {
        let mut current = self.catalog.write().unwrap_or_else(|p| p.into_inner());
        if conn.dead_reason().is_none() {
            *current = Some(catalog);
        }
    }
}

/// Instances running, per user and in all, for the limits.
#[derive(Default)]
struct Counts {
    per_user: HashMap<i64, u32>,
    total: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Upstreams {
    config: lodge_core::Config,
    rooms: Arc<Rooms>,
    vault: Arc<Vault>,
    slots: Mutex<HashMap<(i64, String), Arc<Slot>>>,
    /// Instances by (user, server): concurrent first calls start one instance, not several.
    instances: Flights<(i64, String), Arc<Instance>>,
    counts: Arc<Mutex<Counts>>,
    /// Users' catalogs with equal content held once (memory only: see [`Interner`]).
    interner: Arc<Mutex<Interner>>,
    /// What a user's servers say outside that user's requests (list changes, updates of
    /// subscribed resources), in the names the user sees, for the user's sessions.
    unsolicited: mpsc::UnboundedSender<(i64, Value)>,
    /// Per (user, server): the instance (by start time) whose tools hidden by built-in ones
    /// were logged, and which tools, so each instance says it once.
    shadow_warned: Mutex<HashMap<(i64, String), ShadowWarned>>,
}

type ShadowWarned = (Option<Instant>, Vec<String>);

impl Upstreams {
    pub fn new(
        config: &lodge_core::Config,
        rooms: Arc<Rooms>,
        vault: Arc<Vault>,
        unsolicited: mpsc::UnboundedSender<(i64, Value)>,
    ) -> Self {
        Self {
            unsolicited,
            config: config.clone(),
            rooms,
            vault,
            slots: Mutex::new(HashMap::new()),
            instances: Flights::new(),
            counts: Arc::default(),
            interner: Arc::default(),
            shadow_warned: Mutex::default(),
        }
    }

    /// Could a tool named `shown` be a server's: `{prefix}__…` of a configured server, or any
    /// name when a server shows its names unprefixed?
    pub fn may_route(&self, shown: &str) -> bool {
        self.config.servers.iter().any(|(name, s)| {
            let prefix = s.prefix(name);
            prefix.is_empty() || catalog::split(shown).is_some_and(|(p, _)| p == prefix)
        })
    }

    /// Servers offered to `caller` (by name, group or to everyone).
    fn enabled<'a, 'c>(
        &'a self,
        caller: &'c Caller,
    ) -> impl Iterator<Item = (&'a str, &'a UpstreamConfig)> + use<'a, 'c> {
        self.config
            .servers
            .iter()
            .filter(move |(_, s)| s.enabled_for(caller.user.as_str(), &caller.groups))
            .map(|(n, s)| (n.as_str(), s))
    }

    /// The server offered to `caller` that shows its names unprefixed (at most one: the config
    /// refuses more).
    fn unprefixed<'a>(&'a self, caller: &Caller) -> Option<(&'a str, &'a UpstreamConfig)> {
        self.enabled(caller).find(|(n, s)| s.prefix(n).is_empty())
    }

    /// The server enabled for `caller` that a `shown` tool or prompt name is routed to, and the
    /// server's own name for it: `{prefix}__{name}` goes to the server with that prefix; any
    /// other name to the server with the empty prefix (if one is enabled), unchanged.
    fn route<'a>(
        &'a self,
        caller: &Caller,
        kind: &'static str,
        shown: &'a str,
    ) -> Result<(&'a str, &'a UpstreamConfig, &'a str), UpstreamError> {
        self.route_split(caller, catalog::split(shown), shown)
            .ok_or_else(|| UpstreamError::Unknown {
                kind,
                name: shown.chars().take(100).collect(),
            })
    }

    /// [`Self::route`] for resource URIs: `lodge://{prefix}/{uri}`, else the unprefixed server's.
    fn route_uri<'a>(
        &'a self,
        caller: &Caller,
        uri: &'a str,
    ) -> Option<(&'a str, &'a UpstreamConfig, &'a str)> {
        self.route_split(caller, catalog::split_uri(uri), uri)
    }

    /// The server with the prefix of `split` (a name or URI taken apart), with its own name
    /// for it; else the unprefixed server, with `shown` unchanged.
    fn route_split<'a>(
        &'a self,
        caller: &Caller,
        split: Option<(&'a str, &'a str)>,
        shown: &'a str,
    ) -> Option<(&'a str, &'a UpstreamConfig, &'a str)> {
        split
            .and_then(|(prefix, own)| {
                let (n, s) = self.enabled(caller).find(|(n, s)| s.prefix(n) == prefix)?;
                Some((n, s, own))
            })
            .or_else(|| self.unprefixed(caller).map(|(n, s)| (n, s, shown)))
    }

    /// How long one request to `server` may take: its profile's (else the user's) command
    /// timeout.
    fn timeout(&self, caller: &Caller, server: &UpstreamConfig) -> Duration {
        let profile = server.profile.as_deref().unwrap_or(&caller.profile);
        self.config.profile(profile).command_timeout
    }

    fn slot(&self, caller: &Caller, server: &str) -> Arc<Slot> {
        lock(&self.slots)
            .entry((caller.user_id, server.to_owned()))
            .or_default()
            .clone()
    }

    /// The caller's running instance of `server`, started if needed.
    async fn instance(
        &self,
        caller: &Caller,
        name: &str,
        server: &UpstreamConfig,
    ) -> Result<Arc<Instance>, UpstreamError> {
        let slot = self.slot(caller, name);
        // Touched under the instance's lock, so the culler sees this use before it judges.
        let alive = |i: &Arc<Instance>| {
            let alive = i.alive();
            if alive {
                i.touch();
            }
            alive
        };
        let start = |dead: Option<Arc<Instance>>| async move {
            if let Some(dead) = dead {
                let why = dead.conn.dead_reason().unwrap_or_default();
                let mut b = lock(&slot.backoff);
                if dead.started.elapsed() >= STABLE_AFTER {
                    *b = Backoff::default();
                }
                b.failed(&why);
            }
            lock(&slot.backoff).check(name)?;
            let env = self.env(caller, name, server).await?;
            self.reserve(caller, name)?;
            match self.start(caller, name, server, env, &slot).await {
                Ok(instance) => {
                    let (counts, user, conn) =
                        (self.counts.clone(), caller.user_id, instance.conn.clone());
                    tokio::spawn(async move {
                        conn.closed().await;
                        release(&counts, user);
                    });
                    Ok(instance)
                }
                Err(e) => {
                    release(&self.counts, caller.user_id);
                    // An operator's problem (a bad command, a server that crashes at start):
                    // said at WARN, and kept for session_info.
                    tracing::warn!(user = %caller.user, server = name, "upstream server did not start: {e}");
                    lock(&slot.backoff).failed(&e.to_string());
                    Err(e)
                }
            }
        };
        let key = (caller.user_id, name.to_owned());
        self.instances.get_or_start(key, alive, start).await
    }

    /// The server's environment for this user, secrets resolved from their vault.
    async fn env(
        &self,
        caller: &Caller,
        name: &str,
        server: &UpstreamConfig,
    ) -> Result<BTreeMap<String, String>, UpstreamError> {
        let mut env = BTreeMap::new();
        for (var, value) in &server.env {
            let value = match value {
                EnvValue::Literal(v) => v.clone(),
                EnvValue::Secret {
                    name: secret,
                    field,
                } => match self.vault.get_field(caller.user_id, secret, field).await {
                    Ok(v) => v.to_string(),
                    Err(VaultError::NotFound { .. } | VaultError::FieldNotFound { .. }) => {
                        return Err(UpstreamError::MissingSecret {
                            server: name.to_owned(),
                            user: caller.user.to_string(),
                            secret: secret.clone(),
                            field: field.clone(),
                        });
                    }
                    Err(e) => {
                        return Err(UpstreamError::Start {
                            server: name.to_owned(),
                            reason: format!("cannot read secret {secret}.{field}: {e}"),
                        });
                    }
                },
            };
            env.insert(var.clone(), value);
        }
        Ok(env)
    }

    fn reserve(&self, caller: &Caller, server: &str) -> Result<(), UpstreamError> {
        let (per_user, total) = (
            self.config.rooms.max_servers_per_user,
            self.config.rooms.max_servers_total,
        );
        let mut c = lock(&self.counts);
        let mine = c.per_user.get(&caller.user_id).copied().unwrap_or(0);
        let limit = if mine >= per_user {
            format!(
                "you already run {mine} upstream servers (rooms.max_servers_per_user = {per_user}); idle ones stop after their idle_timeout"
            )
        } else if c.total >= total {
            format!(
                "the hub runs its maximum of {total} upstream server instances (rooms.max_servers_total); try again when idle ones have stopped"
            )
        } else {
            c.total += 1;
            *c.per_user.entry(caller.user_id).or_default() += 1;
            return Ok(());
        };
        Err(UpstreamError::Limit {
            server: server.to_owned(),
            limit,
        })
    }

    /// Starts the server in the caller's room, initializes it and reads its lists.
    async fn start(
        &self,
        caller: &Caller,
        name: &str,
        server: &UpstreamConfig,
        env: BTreeMap<String, String>,
        slot: &Arc<Slot>,
    ) -> Result<Arc<Instance>, UpstreamError> {
        let started = Instant::now();
        let room = self.rooms.room_for(caller).await?;
        let (events, receiver) = mpsc::unbounded_channel();
        let op = Op::Upstream(Upstream {
            server: name.to_owned(),
            argv: server.command.clone(),
            env: env.into_iter().map(|(k, v)| (k, v.into())).collect(),
        });
        let relay = room.client.open(op, events).map_err(RoomError::from)?;
        let outside = {
            let (tx, user) = (self.unsolicited.clone(), caller.user_id);
            let prefix = server.prefix(name).to_owned();
            Box::new(move |mut message: Value| {
                // Updates name the resource as the user knows it.
                if let Some(uri) = message.pointer_mut("/params/uri")
                    && let Some(own) = uri.as_str()
                {
                    *uri = json!(catalog::qualify_uri(&prefix, own));
                }
                let _ = tx.send((user, message));
            })
        };
        let conn = Conn::start(
            format!("{name} of {}", caller.user),
            relay,
            receiver,
            outside,
        );
        let fail = |error: ConnError| {
            conn.stop();
            match error {
                ConnError::Dead(reason) => UpstreamError::Start {
                    server: name.to_owned(),
                    reason,
                },
                error => UpstreamError::Start {
                    server: name.to_owned(),
                    reason: error.to_string(),
                },
            }
        };
        // What Lodge can do as the server's client: it passes these requests on to the user's
        // own client, which answers them or declines.
        let offered = json!({"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {"listChanged": false}});
        let init = conn
            .request(
                "initialize",
                json!({
                    "protocolVersion": UPSTREAM_PROTOCOL,
                    "capabilities": offered,
                    "clientInfo": {"name": "lodge", "version": env!("CARGO_PKG_VERSION")},
                }),
                None,
                server.start_timeout,
            )
            .await
            .map_err(fail)?;
        let modern = init.get("protocolVersion").and_then(Value::as_str) == Some(UPSTREAM_PROTOCOL);
        if !modern {
            conn.notify("notifications/initialized", json!({}));
        }
        let caps = init.get("capabilities").cloned().unwrap_or(Value::Null);
        let catalog = fetch_catalog(&conn, modern, &caps, server.start_timeout)
            .await
            .map_err(fail)?;
        slot.set_catalog(&conn, lock(&self.interner).intern(catalog));
        let instance = Arc::new(Instance {
            conn: conn.clone(),
            modern,
            started,
            last_used_ms: AtomicI64::new(now_ms()),
            listen: Mutex::new(None),
        });
        if modern {
            instance.listen(slot.subscribed());
        } else {
            // Answered or not, the start goes on: a refusal is the server's to explain.
            for uri in slot.subscribed() {
                let (conn, timeout) = (conn.clone(), server.start_timeout);
                tokio::spawn(async move {
                    let params = json!({ "uri": uri });
                    let _ = conn
                        .request("resources/subscribe", params, None, timeout)
                        .await;
                });
            }
        }
        self.watch_changes(
            caller.user_id,
            slot,
            &conn,
            modern,
            caps,
            server.start_timeout,
        );
        tracing::info!(user = %caller.user, server = name, modern, ms = started.elapsed().as_millis() as u64, "upstream instance started");
        ::metrics::counter!("lodge_upstream_starts_total", "server" => name.to_owned())
            .increment(1);
        Ok(instance)
    }

    /// Re-reads an instance's lists whenever it says they changed (for as long as it lives),
    /// into its user's slot only.
    fn watch_changes(
        &self,
        user_id: i64,
        slot: &Arc<Slot>,
        conn: &Arc<Conn>,
        modern: bool,
        caps: Value,
        timeout: Duration,
    ) {
        let slot = Arc::downgrade(slot);
        let conn = conn.clone();
        let interner = self.interner.clone();
        let unsolicited = self.unsolicited.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = conn.changed.notified() => {}
                    () = conn.closed() => return,
                }
                let Ok(fresh) = fetch_catalog(&conn, modern, &caps, timeout).await else {
                    continue;
                };
                let Some(slot) = slot.upgrade() else {
                    return;
                };
                let before = slot.catalog();
                let fresh = lock(&interner).intern(fresh);
                slot.set_catalog(&conn, fresh.clone());
                // Told only now, so a client that re-lists at once sees the new lists.
                for method in changed_lists(before.as_deref(), &fresh) {
                    let _ =
                        unsolicited.send((user_id, json!({"jsonrpc": "2.0", "method": method})));
                }
            }
        });
    }
}

/// Gives a request to a 2026-07-28 server the client's own `_meta`: the revision, what the
/// client declared it can answer, and its log level.
#[allow(deprecated)] // LoggingLevel: rmcp marks logging old; 2026-07-28 still has the key.
fn stamp_meta(params: &mut Value, client: ClientCaps, log_level: Option<LoggingLevel>) {
    let Some(p) = params.as_object_mut() else {
        return;
    };
    let meta = p.entry("_meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert(
            "io.modelcontextprotocol/protocolVersion".into(),
            json!(UPSTREAM_PROTOCOL),
        );
        meta.insert(
            "io.modelcontextprotocol/clientCapabilities".into(),
            client.declared(),
        );
        meta.insert(
            "io.modelcontextprotocol/clientInfo".into(),
            json!({"name": "lodge", "version": env!("CARGO_PKG_VERSION")}),
        );
        if let Some(level) = log_level {
            meta.insert("io.modelcontextprotocol/logLevel".into(), json!(level));
        }
    }
}

/// The list_changed notifications that tell a client what differs between two catalogs.
fn changed_lists(before: Option<&Catalog>, after: &Catalog) -> Vec<&'static str> {
    let mut out = Vec::new();
    let differs = |f: fn(&Catalog) -> &Vec<Value>| before.is_none_or(|b| f(b) != f(after));
    if differs(|c| &c.tools) {
        out.push("notifications/tools/list_changed");
    }
    if differs(|c| &c.prompts) {
        out.push("notifications/prompts/list_changed");
    }
    if differs(|c| &c.resource_templates) || after.has_resources {
        // Resource lists are not kept, so a server's change of them is passed on as said.
        out.push("notifications/resources/list_changed");
    }
    out
}

fn is_input_required(result: &Value) -> bool {
    result.get("resultType").and_then(Value::as_str) == Some("input_required")
}

/// Asks the client each of an input-required result's `inputRequests` (all at once) and
/// gathers the answers under their keys.
async fn ask_client(
    listener: Option<&Listener>,
    result: &Value,
) -> Result<Value, rmcp::model::ErrorData> {
    let requests = result
        .get("inputRequests")
        .and_then(Value::as_object)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            rmcp::model::ErrorData::internal_error(
                "the server's input-required result has no inputRequests",
                None,
            )
        })?;
    let Some(listener) = listener else {
        return Err(rmcp::model::ErrorData::internal_error(
            "the server asked for input, which this request cannot pass on",
            None,
        ));
    };
    let mut waiting = Vec::new();
    for (key, request) in requests {
        let (reply, replied) = tokio::sync::oneshot::channel();
        let ask = Ask {
            method: request
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            params: request.get("params").cloned().unwrap_or_else(|| json!({})),
            key: Some(key.clone()),
            reply,
        };
        let _ = listener.sink.send(Notice::Ask(ask));
        waiting.push((key.clone(), replied));
    }
    let mut answers = serde_json::Map::new();
    for (key, replied) in waiting {
        let answer = replied.await.unwrap_or_else(|_| {
            Err(rmcp::model::ErrorData::internal_error(
                "the client went away before answering the server's question",
                None,
            ))
        })?;
        answers.insert(key, answer);
    }
    Ok(Value::Object(answers))
}

fn release(counts: &Mutex<Counts>, user_id: i64) {
    let mut c = lock(counts);
    c.total = c.total.saturating_sub(1);
    if let Some(n) = c.per_user.get_mut(&user_id) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            c.per_user.remove(&user_id);
        }
    }
}

/// Reads every page of list `method`, collecting the arrays under `key`.
async fn paginate(
    conn: &Conn,
    modern: bool,
    method: &str,
    key: &str,
    timeout: Duration,
) -> Result<Vec<Value>, ConnError> {
    let mut items = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..MAX_PAGES {
        let mut params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        if modern {
            // Lists are the same for every client: asked as one that answers nothing.
            stamp_meta(&mut params, ClientCaps::default(), None);
        }
        let page = conn.request(method, params, None, timeout).await?;
        if let Some(list) = page.get(key).and_then(Value::as_array) {
            items.extend(list.iter().cloned());
        }
        cursor = page.get("nextCursor").filter(|c| !c.is_null()).cloned();
        if cursor.is_none() {
            break;
        }
    }
    Ok(items)
}

/// Reads a fresh instance's lists, as far as its capabilities say it has them.
async fn fetch_catalog(
    conn: &Conn,
    modern: bool,
    caps: &Value,
    timeout: Duration,
) -> Result<Catalog, ConnError> {
    let has = |c: &str| caps.get(c).is_some_and(|v| !v.is_null());
    let tools = if has("tools") {
        paginate(conn, modern, "tools/list", "tools", timeout).await?
    } else {
        Vec::new()
    };
    let prompts = if has("prompts") {
        paginate(conn, modern, "prompts/list", "prompts", timeout).await?
    } else {
        Vec::new()
    };
    let resource_templates = if has("resources") {
        // Optional even for servers with resources.
        paginate(
            conn,
            modern,
            "resources/templates/list",
            "resourceTemplates",
            timeout,
        )
        .await
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Catalog {
        tools,
        prompts,
        resource_templates,
        has_resources: has("resources"),
    })
}

/// One request of a client's to an upstream server, and where its notices go.
struct Call<'a> {
    method: &'a str,
    params: Value,
    cx: &'a RequestContext,
}

impl Upstreams {
    /// Sends one request to the caller's instance of `name` (started if needed), and answers
    /// the server's input-required rounds (2026-07-28) by asking the client. A request that
    /// times out is cancelled; if the server does not even answer `ping` then, it is taken
    /// for hung and stopped, so the next call gets a fresh instance.
    async fn ask(
        &self,
        name: &str,
        server: &UpstreamConfig,
        call: Call<'_>,
    ) -> Result<Value, UpstreamError> {
        let cx = call.cx;
        let instance = self.instance(&cx.caller, name, server).await?;
        let timeout = self.timeout(&cx.caller, server);
        let listener = cx.notices.clone().map(|sink| Listener {
            sink,
            progress: cx.progress_token.is_some(),
        });
        let mut params = call.params;
        if instance.modern {
            stamp_meta(&mut params, cx.client, cx.log_level);
            // Answers a 2026-07-28 client sent before being asked are the server's to judge.
            if let (Some(answers), Some(p)) = (&cx.input_responses, params.as_object_mut()) {
                p.insert("inputResponses".into(), answers.clone());
            }
        }
        let mut rounds = 0;
        let result = loop {
            let result = instance
                .conn
                .request(call.method, params.clone(), listener.clone(), timeout)
                .await;
            instance.touch();
            let result = match result {
                Ok(v) if is_input_required(&v) => v,
                other => break other,
            };
            rounds += 1;
            if rounds > MAX_ROUNDS {
                return Err(UpstreamError::Start {
                    server: name.to_owned(),
                    reason: format!("it asked for input {MAX_ROUNDS} times in one call"),
                });
            }
            let answers =
                ask_client(listener.as_ref(), &result)
                    .await
                    .map_err(|e| UpstreamError::Call {
                        server: name.to_owned(),
                        error: ConnError::Rpc {
                            code: i64::from(e.code.0),
                            message: e.message.to_string(),
                            data: e.data,
                        },
                    })?;
            if let Some(p) = params.as_object_mut() {
                p.insert("inputResponses".into(), answers);
                match result.get("requestState") {
                    Some(state) => p.insert("requestState".into(), state.clone()),
                    None => p.remove("requestState"),
                };
            }
        };
        match result {
            Ok(v) => {
                let slot = self.slot(&cx.caller, name);
                let mut b = lock(&slot.backoff);
                if b.failures > 0 {
                    *b = Backoff::default();
                }
                Ok(v)
            }
            Err(ConnError::Dead(reason)) => Err(UpstreamError::Died {
                server: name.to_owned(),
                reason,
            }),
            Err(ConnError::Timeout { method, after }) => {
                // 2026-07-28 has no ping; discovery is as cheap.
                let (probe, mut params) = if instance.modern {
                    ("server/discover", json!({}))
                } else {
                    ("ping", json!({}))
                };
                if instance.modern {
                    stamp_meta(&mut params, ClientCaps::default(), None);
                }
                let alive = instance
                    .conn
                    .request(probe, params, None, PING_TIMEOUT)
                    .await
                    .is_ok();
                if !alive {
                    instance.conn.stop();
                }
                Err(UpstreamError::Timeout {
                    server: name.to_owned(),
                    method,
                    after,
                    stopped: if alive {
                        " (the request was cancelled)"
                    } else {
                        "; it does not answer ping either, so it was stopped and the next call starts a fresh instance"
                    },
                })
            }
            Err(error) => Err(UpstreamError::Call {
                server: name.to_owned(),
                error,
            }),
        }
    }

    /// The lists of `name` for `caller`, from the caller's own instance only: the latest it
    /// gave, else (none yet since the hub started) those of their newly started instance.
    /// Another user's lists are never an answer: that user may have written them.
    async fn catalog(
        &self,
        caller: &Caller,
        name: &str,
        server: &UpstreamConfig,
    ) -> Result<Arc<Catalog>, UpstreamError> {
        let slot = self.slot(caller, name);
        if let Some(known) = slot.catalog() {
            return Ok(known);
        }
        self.instance(caller, name, server).await?;
        slot.catalog().ok_or_else(|| UpstreamError::Start {
            server: name.to_owned(),
            reason: "it ended while its lists were read".to_owned(),
        })
    }

    /// Is `qualified` (`{server}__{tool}`) a tool `caller` has: the server enabled for them,
    /// the tool permitted by the config and listed by their own instance (started if needed)?
    /// Other users' lists never count. Unknown names are `Unknown`; a catalog that cannot be
    /// had gives the reason (a missing secret, a server that does not start).
    pub async fn check_tool(&self, caller: &Caller, qualified: &str) -> Result<(), UpstreamError> {
        let (name, server, tool) = self.route(caller, "tool", qualified)?;
        if server.tools.permits(tool) && self.catalog(caller, name, server).await?.has_tool(tool) {
            return Ok(());
        }
        Err(UpstreamError::Unknown {
            kind: "tool",
            name: qualified.chars().take(100).collect(),
        })
    }

    /// The input schema of tool `qualified` as the caller's own instance lists it (only its
    /// server starts, if it must), when the caller has that tool.
    pub async fn tool_schema(&self, caller: &Caller, qualified: &str) -> Option<Value> {
        let (name, server, tool) = self.route(caller, "tool", qualified).ok()?;
        if !server.tools.permits(tool) {
            return None;
        }
        let catalog = self.catalog(caller, name, server).await.ok()?;
        catalog
            .tools
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(tool))
            .and_then(|t| t.get("inputSchema"))
            .cloned()
    }

    /// Every enabled server's catalog for the caller (servers not yet seen start in parallel).
    async fn catalogs<'a>(
        &'a self,
        caller: &Caller,
    ) -> Vec<(&'a str, &'a UpstreamConfig, Arc<Catalog>)> {
        let enabled: Vec<_> = self.enabled(caller).collect();
        let lookups = enabled.into_iter().map(|(name, server)| async move {
            match self.catalog(caller, name, server).await {
                Ok(c) => Some((name, server, c)),
                Err(e) => {
                    tracing::info!(user = %caller.user, server = name, "cannot list the server's tools: {e}");
                    None
                }
            }
        });
        futures::future::join_all(lookups)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The caller's upstream tools, named `{prefix}__{tool}`, as the config filters them. An
    /// unprefixed server's tool named like a built-in one (`builtin`) is left out: the built-in
    /// tool answers that name.
    pub async fn tools(
        &self,
        caller: &Caller,
        builtin: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<Value> {
        let mut out = Vec::new();
        for (name, server, catalog) in self.catalogs(caller).await {
            let prefix = server.prefix(name);
            out.extend(
                catalog
                    .tools
                    .iter()
                    .filter(|t| {
                        let Some(tool) = t.get("name").and_then(Value::as_str) else {
                            return false;
                        };
                        if prefix.is_empty() && builtin(tool) {
                            self.warn_shadowed(caller, name, tool);
                            return false;
                        }
                        server.tools.permits(tool)
                    })
                    .filter_map(|t| catalog::renamed(t, "name", |n| catalog::qualify(prefix, n))),
            );
        }
        out
    }

    /// Says once per instance that its tool `tool` is hidden by the built-in tool of that name.
    fn warn_shadowed(&self, caller: &Caller, server: &str, tool: &str) {
        let key = (caller.user_id, server.to_owned());
        let Some(started) = self.instances.peek(&key).map(|i| i.started) else {
            return;
        };
        let mut warned = lock(&self.shadow_warned);
        let seen = warned.entry(key).or_default();
        if seen.0 != Some(started) {
            *seen = (Some(started), Vec::new());
        }
        if !seen.1.iter().any(|t| t == tool) {
            seen.1.push(tool.to_owned());
            tracing::warn!(user = %caller.user, server, tool,
                "server {server} has prefix = \"\" and a tool named like the built-in tool {tool}: \
                 the built-in tool is offered, the server's is not");
        }
    }

    pub async fn prompts(&self, caller: &Caller) -> Vec<Value> {
        let mut out = Vec::new();
        for (name, server, catalog) in self.catalogs(caller).await {
            let prefix = server.prefix(name);
            out.extend(
                catalog
                    .prompts
                    .iter()
                    .filter_map(|p| catalog::renamed(p, "name", |n| catalog::qualify(prefix, n))),
            );
        }
        out
    }

    pub async fn resource_templates(&self, caller: &Caller) -> Vec<Value> {
        let mut out = Vec::new();
        for (name, server, catalog) in self.catalogs(caller).await {
            let prefix = server.prefix(name);
            out.extend(catalog.resource_templates.iter().filter_map(|t| {
                catalog::renamed(t, "uriTemplate", |u| catalog::qualify_uri(prefix, u))
            }));
        }
        out
    }

    /// The caller's resources of every enabled server that has any (their instances start:
    /// resources are the user's own data, so no list is shared between users).
    pub async fn resources(&self, caller: &Caller) -> Vec<Value> {
        let wanted: Vec<_> = self
            .catalogs(caller)
            .await
            .into_iter()
            .filter(|(_, _, c)| c.has_resources)
            .collect();
        let lists = wanted.into_iter().map(|(name, server, _)| async move {
            let list = match self.instance(caller, name, server).await {
                Ok(i) => paginate(
                    &i.conn,
                    i.modern,
                    "resources/list",
                    "resources",
                    self.timeout(caller, server),
                )
                .await
                .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            let prefix = server.prefix(name);
            list.iter()
                .filter_map(|r| catalog::renamed(r, "uri", |u| catalog::qualify_uri(prefix, u)))
                .collect::<Vec<_>>()
        });
        futures::future::join_all(lists)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// `tools/call` of `{server}__{tool}`.
    pub async fn call_tool(
        &self,
        cx: &RequestContext,
        qualified: &str,
        args: Value,
    ) -> Result<Value, UpstreamError> {
        let (name, server, tool) = self.route(&cx.caller, "tool", qualified)?;
        if !server.tools.permits(tool) {
            return Err(UpstreamError::Unknown {
                kind: "tool",
                name: qualified.to_owned(),
            });
        }
        let params = json!({ "name": tool, "arguments": args });
        self.ask(
            name,
            server,
            Call {
                method: "tools/call",
                params,
                cx,
            },
        )
        .await
    }

    /// `prompts/get` of `{server}__{prompt}`.
    pub async fn get_prompt(
        &self,
        cx: &RequestContext,
        qualified: &str,
        arguments: Option<Value>,
    ) -> Result<Value, UpstreamError> {
        let (name, server, prompt) = self.route(&cx.caller, "prompt", qualified)?;
        let mut params = json!({ "name": prompt });
        if let Some(a) = arguments {
            params["arguments"] = a;
        }
        self.ask(
            name,
            server,
            Call {
                method: "prompts/get",
                params,
                cx,
            },
        )
        .await
    }

    /// `resources/read` of `lodge://{server}/{uri}`.
    pub async fn read_resource(
        &self,
        cx: &RequestContext,
        uri: &str,
    ) -> Result<Value, UpstreamError> {
        let caller = &cx.caller;
        let unknown = || UpstreamError::Unknown {
            kind: "resource",
            name: uri.chars().take(200).collect(),
        };
        let (name, server, own_uri) = self.route_uri(caller, uri).ok_or_else(unknown)?;
        let params = json!({ "uri": own_uri });
        let mut result = self
            .ask(
                name,
                server,
                Call {
                    method: "resources/read",
                    params,
                    cx,
                },
            )
            .await?;
        catalog::qualify_contents(server.prefix(name), &mut result);
        Ok(result)
    }

    /// `completion/complete`: a `ref/prompt` name or `ref/resource` URI goes to the server
    /// that owns it, under that server's own name for it. A reference no server of the
    /// caller's owns, or a server without completions, completes to nothing.
    pub async fn complete(
        &self,
        cx: &RequestContext,
        params: Value,
    ) -> Result<Value, UpstreamError> {
        let nothing = || json!({ "completion": { "values": [], "hasMore": false } });
        let mut params = params;
        let reference = params.get("ref").cloned().unwrap_or(Value::Null);
        let (kind, field) = match reference.get("type").and_then(Value::as_str) {
            Some("ref/prompt") => ("prompt", "name"),
            Some("ref/resource") => ("resource", "uri"),
            _ => return Ok(nothing()),
        };
        let Some(qualified) = reference.get(field).and_then(Value::as_str) else {
            return Ok(nothing());
        };
        let owner = match kind {
            "prompt" => self.route(&cx.caller, "prompt", qualified).ok(),
            _ => self.route_uri(&cx.caller, qualified),
        };
        let Some((name, server, own)) = owner else {
            return Ok(nothing());
        };
        params["ref"][field] = json!(own);
        // The client's own `_meta` (its protocol version, its log level) is not the server's.
        if let Some(p) = params.as_object_mut() {
            p.remove("_meta");
        }
        let call = Call {
            method: "completion/complete",
            params,
            cx,
        };
        match self.ask(name, server, call).await {
            Err(UpstreamError::Call {
                error: ConnError::Rpc { code: -32601, .. },
                ..
            }) => Ok(nothing()),
            other => other,
        }
    }

    /// `resources/subscribe` (or unsubscribe) of a resource as the user names it, at the
    /// server that has it.
    pub async fn subscribe(
        &self,
        cx: &RequestContext,
        uri: &str,
        on: bool,
    ) -> Result<Value, UpstreamError> {
        let unknown = || UpstreamError::Unknown {
            kind: "resource",
            name: uri.chars().take(200).collect(),
        };
        let (name, server, own_uri) = self.route_uri(&cx.caller, uri).ok_or_else(unknown)?;
        let slot = self.slot(&cx.caller, name);
        {
            let mut subscribed = lock(&slot.subscribed);
            if on {
                subscribed.insert(own_uri.to_owned());
            } else {
                subscribed.remove(own_uri);
            }
        }
        let instance = self.instance(&cx.caller, name, server).await?;
        if instance.modern {
            // 2026-07-28 has no resources/subscribe: the standing listen names the resources.
            instance.listen(slot.subscribed());
            return Ok(json!({}));
        }
        let method = if on {
            "resources/subscribe"
        } else {
            "resources/unsubscribe"
        };
        let params = json!({ "uri": own_uri });
        self.ask(name, server, Call { method, params, cx }).await
    }

    /// Stops instances idle longer than their server's `idle_timeout`.
    pub async fn cull(&self) -> usize {
        let now = now_ms();
        // Instances being started are skipped (cull does); dead ones stay, for the backoff.
        let idle = |(_, name): &(i64, String), i: &Arc<Instance>| {
            let Some(server) = self.config.servers.get(name) else {
                return false;
            };
            let idle_ms = server.idle_timeout.as_millis() as i64;
            i.alive() && !i.busy() && now - i.last_used_ms.load(Ordering::Relaxed) >= idle_ms
        };
        self.instances
            .cull(idle, |i| async move { i.conn.stop() })
            .await
    }

    /// Stops every instance of one user (the user was removed).
    pub async fn stop_user(&self, user_id: i64) {
        // Every instance has its slot (made first, in `instance`), so the slots name them all.
        let keys: Vec<_> = {
            let mut all = lock(&self.slots);
            let keys: Vec<_> = all.keys().filter(|(u, _)| *u == user_id).cloned().collect();
            for key in &keys {
                all.remove(key);
            }
            keys
        };
        for key in keys {
            self.instances
                .remove(&key, |i| async move { i.conn.stop() })
                .await;
        }
    }

    /// What `session_info` shows: each enabled server, the state of the caller's instance
    /// (`running`, `stopped`, `failed`, or `backing off` until its next start is allowed) and
    /// why its last start failed, so a server whose tools are missing says why.
    pub fn status(&self, caller: &Caller) -> Vec<Value> {
        self.enabled(caller)
            .map(|(name, server)| {
                let running = self
                    .instances
                    .peek(&(caller.user_id, name.to_owned()))
                    .filter(|i| i.alive())
                    .map(|i| i.started.elapsed().as_secs());
                let slot = lock(&self.slots)
                    .get(&(caller.user_id, name.to_owned()))
                    .cloned();
                let (failures, wait_ms, last_error) = slot.map_or((0, None, None), |slot| {
                    let b = lock(&slot.backoff);
                    let wait = b
                        .not_before
                        .and_then(|t| t.checked_duration_since(Instant::now()))
                        .filter(|w| !w.is_zero())
                        .map(|w| w.as_millis() as u64);
                    let last = (b.failures > 0).then(|| b.last.clone());
                    (b.failures, wait, last)
                });
                let state = match (running, wait_ms, failures) {
                    (Some(_), ..) => "running",
                    (None, Some(_), _) => "backing off",
                    (None, None, 1..) => "failed",
                    (None, None, 0) => "stopped",
                };
                json!({
                    "name": name,
                    "description": server.description,
                    "state": state,
                    "running": running.is_some(),
                    "up_for_s": running,
                    "failures": failures,
                    "last_start_error": last_error,
                    "next_start_in_ms": wait_ms,
                    "secrets": server.secrets().map(|(s, f)| format!("{s}.{f}")).collect::<Vec<_>>(),
                    "tool_prefix": catalog::qualify(server.prefix(name), ""),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn a_2026_07_28_server_hears_the_clients_log_level() {
        let mut params = json!({"name": "t"});
        stamp_meta(
            &mut params,
            ClientCaps::default(),
            Some(LoggingLevel::Warning),
        );
        assert_eq!(
            params["_meta"]["io.modelcontextprotocol/logLevel"],
            "warning"
        );
        let mut params = json!({});
        stamp_meta(&mut params, ClientCaps::default(), None);
        assert!(
            params["_meta"]
                .get("io.modelcontextprotocol/logLevel")
                .is_none()
        );
    }
}
