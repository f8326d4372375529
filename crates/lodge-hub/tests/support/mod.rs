//! An in-process hub for fast tests: the real router, store, vault and rooms, with each room's
//! agent (`lodge_agent::serve`) run as a task of this process over `tokio::io::duplex` instead
//! of a sandbox. Rooms keep the local layout's files (owner marker and all) in a tempdir.
//! Needs neither root nor bubblewrap; what the sandbox itself does is tested end to end.
#![allow(dead_code)]

use async_trait::async_trait;
use axum::body::Body;
use http::{Request, StatusCode, header};
use lodge_agent::AgentConfig;
use lodge_hub::Hub;
use lodge_hub::accounts::{Accounts, TokenRequest};
use lodge_hub::rooms::RoomsSetup;
use lodge_room::spawner::{
    FilesError, RoomAddress, RoomFiles, RoomLife, RoomRequest, SpawnError, Spawner, StartedRoom,
};
use lodge_store::{SqliteStore, Store};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// The address the router believes it listens on (its Host check allows loopback names).
const BOUND: &str = "127.0.0.1:7420";

/// Starts rooms as in-process agents. Counts starts and stops, and keeps which rooms run.
pub struct InProcessSpawner {
    files: RoomFiles,
    pub starts: AtomicUsize,
    pub stops: AtomicUsize,
    live: Arc<Mutex<Vec<RoomAddress>>>,
    /// Each user's latest agent task, so a test can make a room die.
    agents: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

impl InProcessSpawner {
    pub fn new(data_dir: &std::path::Path) -> Self {
        InProcessSpawner {
            files: RoomFiles::new(data_dir),
            starts: AtomicUsize::new(0),
            stops: AtomicUsize::new(0),
            live: Arc::default(),
            agents: Mutex::default(),
        }
    }

    /// Ends `user`'s agent at once, as a crash would.
    pub fn kill(&self, user: &str) {
        if let Some(agent) = self
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
        {
            agent.abort();
        }
    }

    pub fn files(&self) -> &RoomFiles {
        &self.files
    }
}

#[async_trait]
impl Spawner for InProcessSpawner {
    async fn start(&self, request: &RoomRequest) -> Result<StartedRoom, SpawnError> {
        self.files.claim(&request.user, request.user_id)?;
        let workspace = self.files.workspace(&request.user);
        let tmp = self.files.state_dir(&request.user).join("tmp");
        for dir in [&workspace, &tmp] {
            std::fs::create_dir_all(dir).map_err(|error| SpawnError::Workspace {
                path: dir.clone(),
                error,
            })?;
        }
        let cfg = AgentConfig {
            workspace,
            tmp,
            confine: false,
            network: true,
            read_only: Vec::new(),
        };
        let (hub_end, agent_end) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(async move {
            let (reader, writer) = tokio::io::split(agent_end);
            lodge_agent::serve(reader, writer, &cfg).await
        });
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request.user.clone(), task.abort_handle());
        let (reader, writer) = tokio::io::split(hub_end);
        let address = RoomAddress {
            user: request.user.clone(),
            location: format!("in-process:{}", request.user),
        };
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(address.clone());
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(StartedRoom {
            address: address.clone(),
            reader: Box::new(reader),
            writer: Box::new(writer),
            stderr: None,
            warnings: Vec::new(),
            life: Box::new(AgentTask {
                task,
                exit: None,
                address,
                live: self.live.clone(),
            }),
        })
    }

    async fn stop(&self, room: Box<dyn RoomLife>, grace: Duration) {
        room.stop(grace).await;
        self.stops.fetch_add(1, Ordering::SeqCst);
    }

    fn list(&self) -> Vec<RoomAddress> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn reattach(&self, _address: &RoomAddress) -> Result<StartedRoom, SpawnError> {
        Err(SpawnError::Unsupported {
            what: "reattaching",
            spawner: "in-process",
        })
    }

    fn purge(&self, user: &str) -> Result<(), FilesError> {
        self.files.purge(user)
    }

    fn sweep_leftovers(&self) {}
}

/// An agent task: "exits" 0 when `serve` returned `Ok`, 1 otherwise.
struct AgentTask {
    task: JoinHandle<Result<(), lodge_agent::AgentError>>,
    exit: Option<ExitStatus>,
    address: RoomAddress,
    live: Arc<Mutex<Vec<RoomAddress>>>,
}

fn status_of(r: Result<Result<(), lodge_agent::AgentError>, tokio::task::JoinError>) -> ExitStatus {
    ExitStatus::from_raw(if matches!(r, Ok(Ok(()))) { 0 } else { 1 << 8 })
}

#[async_trait]
impl RoomLife for AgentTask {
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.exit {
            return Ok(s);
        }
        let s = status_of((&mut self.task).await);
        self.exit = Some(s);
        Ok(s)
    }

    fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() && self.task.is_finished() {
            self.exit = futures::FutureExt::now_or_never(&mut self.task).map(status_of);
        }
        self.exit
    }

    fn oom_kills(&self) -> Option<u64> {
        None
    }

    async fn stop(mut self: Box<Self>, grace: Duration) {
        if self.exit.is_none() && tokio::time::timeout(grace, self.wait()).await.is_err() {
            self.task.abort();
        }
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|a| *a != self.address);
    }
}

/// A hub on a fresh DATA_DIR with in-process rooms.
pub struct TestHub {
    pub hub: Arc<Hub>,
    pub spawner: Arc<InProcessSpawner>,
    pub store: Arc<dyn Store>,
    pub dir: tempfile::TempDir,
}

impl TestHub {
    pub async fn start() -> TestHub {
        Self::with_config("").await
    }

    /// A hub whose lodge.toml is `toml`.
    pub async fn with_config(toml: &str) -> TestHub {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lodge.toml");
        std::fs::write(&path, toml).expect("write lodge.toml");
        let config = lodge_core::Config::load(Some(&path), std::iter::empty()).expect("config");
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("lodge.db"))
                .await
                .expect("store"),
        );
        let vault = Arc::new(
            lodge_vault::Vault::open(store.clone(), dir.path(), None)
                .await
                .expect("vault"),
        );
        let spawner = Arc::new(InProcessSpawner::new(dir.path()));
        let setup = RoomsSetup {
            spawner: spawner.clone(),
        };
        let hub = Hub::start(config, store.clone(), setup, vault)
            .await
            .expect("hub");
        TestHub {
            hub,
            spawner,
            store,
            dir,
        }
    }

    /// Adds user `name` through the accounts rules (as `lodge user add` does) and creates a
    /// token for them with `scopes` (the default scopes when `None`).
    pub async fn user(&self, name: &str, scopes: Option<&str>) -> String {
        let audit = self.hub.audit.clone();
        let accounts = Accounts {
            store: &*self.store,
            config: &self.hub.config,
            audit: &audit,
            actor: None,
        };
        if self
            .store
            .user(&lodge_core::UserName::parse(name).expect("name"))
            .await
            .expect("store")
            .is_none()
        {
            accounts
                .add_user(name, false, None)
                .await
                .expect("add user");
        }
        let (secret, _) = accounts
            .create_token(TokenRequest {
                creator: None,
                owner: name,
                scopes,
                expires: None,
                note: "",
            })
            .await
            .expect("token");
        secret
    }

    /// A user with a token and an open MCP session.
    pub async fn session(&self, name: &str) -> Mcp {
        let token = self.user(name, None).await;
        let (status, headers, body) = self
            .send("/mcp", Some(&token), None, &init_body("2025-11-25"))
            .await;
        assert_eq!(status, StatusCode::OK, "initialize: {body}");
        let sid = headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .expect("session id")
            .to_owned();
        Mcp {
            hub: self.hub.clone(),
            token,
            sid,
        }
    }

    /// POSTs one JSON-RPC message to `path` through the router.
    pub async fn send(
        &self,
        path: &str,
        token: Option<&str>,
        sid: Option<&str>,
        body: &Value,
    ) -> (StatusCode, http::HeaderMap, Value) {
        post(&self.hub, path, token, sid, &[], body).await
    }

    /// POSTs one 2026-07-28 request the way a conformant client does: `_meta` with the
    /// protocol version and capabilities, and the MCP-Protocol-Version, Mcp-Method and (for
    /// named methods) Mcp-Name headers. `headers` are added after those.
    pub async fn stateless(
        &self,
        token: &str,
        method: &str,
        params: Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, Value) {
        let mut params = params;
        params["_meta"] = stateless_meta();
        let name = match method {
            "tools/call" | "prompts/get" => params["name"].as_str(),
            "resources/read" => params["uri"].as_str(),
            _ => None,
        }
        .map(str::to_owned);
        let mut all: Vec<(&str, &str)> = vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
        ];
        if let Some(n) = &name {
            all.push(("mcp-name", n));
        }
        all.extend_from_slice(headers);
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        self.raw(token, &all, &body).await
    }

    /// POSTs `body` with exactly `headers` besides the token and content type (the last of a
    /// repeated name wins).
    pub async fn raw(
        &self,
        token: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> (StatusCode, http::HeaderMap, Value) {
        post(&self.hub, "/mcp", Some(token), None, headers, body).await
    }
}

/// The `_meta` every 2026-07-28 request carries.
pub fn stateless_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "in-process-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    })
}

pub fn init_body(version: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {},
                   "clientInfo": {"name": "in-process-test", "version": "1"}}
    })
}

async fn post(
    hub: &Arc<Hub>,
    path: &str,
    token: Option<&str>,
    sid: Option<&str>,
    headers: &[(&str, &str)],
    body: &Value,
) -> (StatusCode, http::HeaderMap, Value) {
    let bound: SocketAddr = BOUND.parse().expect("address");
    let mut req = Request::post(path)
        .header(header::HOST, BOUND)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(s) = sid {
        req = req.header("mcp-session-id", s);
    }
    let mut req = req.body(Body::from(body.to_string())).expect("request");
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        let value = http::HeaderValue::from_str(value).expect("header value");
        req.headers_mut().insert(name, value);
    }
    let resp = hub.router(bound).oneshot(req).await.expect("router");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, headers, value)
}

/// What a tool call answered.
#[derive(Debug)]
pub struct Reply {
    pub is_error: bool,
    /// `structuredContent`, or Null.
    pub value: Value,
    /// The text content joined by newlines (the error text for tool errors).
    pub text: String,
}

/// An open MCP session of one user.
#[derive(Clone)]
pub struct Mcp {
    pub hub: Arc<Hub>,
    pub token: String,
    pub sid: String,
}

impl Mcp {
    /// Sends one JSON-RPC request on this session; returns the whole reply.
    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params});
        let (status, _, v) = post(
            &self.hub,
            "/mcp",
            Some(&self.token),
            Some(&self.sid),
            &[],
            &body,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{method}: {v}");
        v
    }

    /// Calls tool `name`; panics only on JSON-RPC failures.
    pub async fn call(&self, name: &str, args: Value) -> Reply {
        let v = self
            .rpc("tools/call", json!({"name": name, "arguments": args}))
            .await;
        let result = v
            .get("result")
            .unwrap_or_else(|| panic!("{name}: JSON-RPC error {v}"));
        let text = result["content"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        Reply {
            is_error: result["isError"].as_bool().unwrap_or(false),
            value: result
                .get("structuredContent")
                .cloned()
                .unwrap_or(Value::Null),
            text,
        }
    }

    /// A call that must succeed; its structured content.
    pub async fn ok(&self, name: &str, args: Value) -> Value {
        let r = self.call(name, args.clone()).await;
        assert!(!r.is_error, "{name} {args} failed: {}", r.text);
        r.value
    }

    /// A call that must fail as a tool error; its text.
    pub async fn err(&self, name: &str, args: Value) -> String {
        let r = self.call(name, args.clone()).await;
        assert!(r.is_error, "{name} {args} succeeded: {:?}", r.value);
        r.text
    }
}
