//! Test harness: runs the real `lodge` binary (CLI and `serve`) against a private DATA_DIR and
//! an ephemeral loopback port. Tests talk to it over real HTTP, as users would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub mod auth_suite;
pub mod browser;
pub mod oauth_client;
pub mod oidc;
pub mod peers;
pub mod test_ca;
pub mod tls;

pub const BIN: &str = env!("CARGO_BIN_EXE_lodge");

pub struct TestHub {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub child: Option<Child>,
    pub base: String,
    pub env: Vec<(String, String)>,
    /// When set, the hub's stderr (its log) goes to this file instead of the test's stderr.
    pub log: Option<PathBuf>,
}

/// Runs `lodge ARGS` against `dir`, returning its output.
pub fn lodge_in(dir: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .envs(env.iter().map(|(a, b)| (a.as_str(), b.as_str())))
        .env_remove("LODGE_CONFIG")
        .output()
        .expect("run lodge")
}

impl TestHub {
    /// A hub with a fresh DATA_DIR, started.
    pub fn start() -> Self {
        Self::start_env(&[])
    }

    pub fn start_env(env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), env)
    }

    /// A hub whose log (stderr) goes to DATA_DIR/hub.log.
    pub fn start_logged(env: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("hub.log");
        Self::start_with(tmp, env, Some(log))
    }

    /// Starts a hub on the (possibly prepared) DATA_DIR `tmp`.
    fn start_in(tmp: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        Self::start_with(tmp, env, None)
    }

    fn start_with(tmp: tempfile::TempDir, env: &[(&str, &str)], log: Option<PathBuf>) -> Self {
        let mut hub = Self {
            dir: tmp.path().to_owned(),
            _tmp: Some(tmp),
            child: None,
            log,
            base: String::new(),
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        hub.spawn();
        hub
    }

    /// (Re)starts `lodge serve` on the same DATA_DIR and waits for its ready line.
    pub fn spawn(&mut self) {
        // Hubs of parallel tests number their users alike: give each its own room uids, so
        // per-uid limits (RLIMIT_NPROC) of one test's rooms never touch another's.
        if !self.env.iter().any(|(k, _)| k == "LODGE_ROOMS_UID_BASE") {
            self.env
                .push(("LODGE_ROOMS_UID_BASE".into(), unique_uid_base().to_string()));
        }
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["serve", "--bind", "127.0.0.1:0"])
            .envs(self.env.iter().map(|(a, b)| (a.as_str(), b.as_str())))
            .env_remove("LODGE_CONFIG")
            .stdout(Stdio::piped())
            .stderr(match &self.log {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("open hub log"),
                ),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("spawn lodge serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("hub did not print its ready line within 30s");
        self.base = url;
        self.child = Some(child);
    }

    pub fn lodge(&self, args: &[&str]) -> Output {
        lodge_in(&self.dir, &self.env, args)
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.lodge(args);
        assert!(
            out.status.success(),
            "lodge {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    pub fn add_user(&self, name: &str) {
        self.ok(&["user", "add", name]);
    }

    pub fn add_admin(&self, name: &str) {
        self.ok(&["user", "add", name, "--admin"]);
    }

    /// Creates a token for `name` with extra flags; returns the token.
    pub fn token(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", name];
        args.extend_from_slice(extra);
        self.ok(&args).trim().to_owned()
    }

    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base)
    }

    pub fn user_url(&self, name: &str) -> String {
        format!("{}/user/{name}/mcp", self.base)
    }

    /// Graceful stop (SIGTERM) and wait, killing the hub if it takes over 20 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            for _ in 0..200 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
            if !std::thread::panicking() {
                panic!("the hub did not stop within 20 s of SIGTERM");
            }
        }
    }

    /// Hard kill (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        // Graceful, so the hub stops its rooms and releases their volumes; then make sure.
        self.stop();
        unmount_below(&self.dir);
    }
}

fn unique_uid_base() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    1_000_000_000 + (std::process::id() % 10_000) * 10_000 + (n % 10) * 1_000
}

/// A plain HTTP client for raw-protocol tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// An application/x-www-form-urlencoded body (token and revocation endpoints take forms), by the
/// serializer URL queries use.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("url");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or_default().to_owned()
}

/// The whole `Set-Cookie` header that sets `name`, if any.
pub fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The value a `Set-Cookie` header sets.
pub fn cookie_value(set_cookie: &str) -> String {
    let pair = set_cookie.split(';').next().expect("pair");
    pair.split_once('=').expect("=").1.to_owned()
}

pub fn init_body(version: &str) -> serde_json::Value {
    serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}
    })
}

/// Opens a legacy MCP session on `url` with `token`; returns its id.
pub async fn open_session(url: &str, token: &str) -> String {
    let r = http()
        .post(url)
        .bearer_auth(token)
        .json(&init_body("2025-11-25"))
        .send()
        .await
        .expect("initialize");
    assert_eq!(r.status(), 200, "initialize on {url}");
    r.headers()["mcp-session-id"]
        .to_str()
        .expect("session id")
        .to_owned()
}

/// A `tools/call` of `session_info` with no arguments.
pub fn session_info_call() -> serde_json::Value {
    serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "session_info", "arguments": {}}})
}

impl TestHub {
    /// A hub whose DATA_DIR has `config` as lodge.toml before it starts.
    pub fn start_with_config(config: &str, env: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("lodge.toml"), config).expect("write lodge.toml");
        Self::start_in(tmp, env)
    }

    /// [`Self::start_with_config`], with the hub's log (stderr) in DATA_DIR/hub.log.
    pub fn start_with_config_logged(config: &str, env: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("lodge.toml"), config).expect("write lodge.toml");
        let log = tmp.path().join("hub.log");
        Self::start_with(tmp, env, Some(log))
    }

    /// A user with a token and an open MCP session.
    pub async fn user_session(&self, name: &str, extra: &[&str]) -> Mcp {
        let mut args = vec!["user", "add", name];
        args.extend_from_slice(extra);
        self.ok(&args);
        let token = self.token(name, &[]);
        let url = self.mcp_url();
        let sid = open_session(&url, &token).await;
        Mcp { url, token, sid }
    }
}

/// The text blocks of a tool result's content, joined by newlines.
pub fn content_text(result: &serde_json::Value) -> String {
    result["content"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// An open legacy MCP session of one user, for tool-call tests.
#[derive(Clone)]
pub struct Mcp {
    pub url: String,
    pub token: String,
    pub sid: String,
}

/// What a tool call answered.
#[derive(Debug)]
pub struct Reply {
    pub is_error: bool,
    /// `structuredContent`, or Null.
    pub value: serde_json::Value,
    /// The concatenated text content (the error text for tool errors).
    pub text: String,
}

impl Mcp {
    /// POSTs one JSON-RPC message on this session (accepting JSON or an event stream).
    pub async fn post(&self, body: &serde_json::Value) -> reqwest::Response {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client")
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("mcp-session-id", &self.sid)
            .header("accept", "application/json, text/event-stream")
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {body}: {e}"))
    }

    /// Calls tool `name` with `args`; panics only on transport or JSON-RPC failures.
    pub async fn call(&self, name: &str, args: serde_json::Value) -> Reply {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": name, "arguments": args}});
        let r = self.post(&body).await;
        assert_eq!(r.status(), 200, "tools/call {name}");
        let v: serde_json::Value = r.json().await.expect("json");
        let result = v
            .get("result")
            .unwrap_or_else(|| panic!("{name}: JSON-RPC error {v}"));
        let text = content_text(result);
        Reply {
            is_error: result["isError"].as_bool().unwrap_or(false),
            value: result
                .get("structuredContent")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            text,
        }
    }

    /// Sends one JSON-RPC request on this session; returns the whole JSON-RPC reply.
    pub async fn rpc(&self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 8, "method": method, "params": params});
        let r = self.post(&body).await;
        assert_eq!(r.status(), 200, "{method}");
        r.json().await.expect("json")
    }

    /// Calls a tool with a `progressToken` and an event-stream Accept; returns every SSE
    /// message (notifications first, the reply last).
    pub async fn call_streamed(
        &self,
        name: &str,
        args: serde_json::Value,
    ) -> Vec<serde_json::Value> {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": name, "arguments": args, "_meta": {"progressToken": "tok"}}});
        let r = self.post(&body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let text = r.text().await.expect("body");
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).expect("json event"))
            .collect()
    }

    /// Calls a tool that must succeed; returns its structured content.
    pub async fn ok(&self, name: &str, args: serde_json::Value) -> serde_json::Value {
        let r = self.call(name, args.clone()).await;
        assert!(!r.is_error, "{name} {args} failed: {}", r.text);
        r.value
    }

    /// Calls a tool that must fail; returns the error text.
    pub async fn err(&self, name: &str, args: serde_json::Value) -> String {
        let r = self.call(name, args.clone()).await;
        assert!(
            r.is_error,
            "{name} {args} should have failed, got {}",
            r.value
        );
        r.text
    }

    /// Runs a shell command in the room; returns the command result.
    pub async fn sh(&self, command: &str) -> serde_json::Value {
        self.ok("run_command", serde_json::json!({ "command": command }))
            .await
    }
}

/// Lazily unmounts anything still mounted below `dir` (a killed hub leaves its rooms'
/// workspace volumes mounted).
pub fn unmount_below(dir: &Path) {
    for mount_point in mounts_below(dir) {
        let _ = Command::new("umount").arg("-l").arg(mount_point).status();
    }
}

/// Mount points in the test's (the host's) mount namespace at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = dir.to_string_lossy().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

impl TestHub {
    /// The Prometheus text of /api/metrics.
    pub async fn metrics_text(&self) -> String {
        http()
            .get(format!("{}/api/metrics", self.base))
            .bearer_auth(self.token_for_metrics())
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// A token that may read /api/metrics (creates the admin `metrics-reader` on first use).
    pub fn token_for_metrics(&self) -> String {
        let _ = self.lodge(&["user", "add", "metrics-reader", "--admin"]);
        self.token("metrics-reader", &["--scopes", "read:metrics"])
    }
}

/// Pids of processes whose command line contains `needle` (a room's bwrap has
/// `--hostname lodge-NAME`; a command's shell has its command line).
pub fn pids_matching(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Every (file, needle) below `dir` where the file's bytes contain the needle. Files are read
/// in chunks (workspace volume images are large and sparse).
pub fn files_containing(dir: &Path, needles: &[&str]) -> Vec<String> {
    use std::io::Read;
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    let overlap = needles.iter().map(|n| n.len()).max().unwrap_or(0);
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => hits.extend(files_containing(&path, needles)),
            Ok(t) if t.is_file() => {
                let Ok(mut f) = std::fs::File::open(&path) else {
                    continue;
                };
                let mut buf = vec![0u8; 1 << 20];
                let mut carry: Vec<u8> = Vec::new();
                loop {
                    let n = f.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    carry.extend_from_slice(&buf[..n]);
                    for needle in needles {
                        if memchr::memmem::find(&carry, needle.as_bytes()).is_some() {
                            hits.push(format!("{} holds {needle}", path.display()));
                        }
                    }
                    let keep = carry.len().saturating_sub(overlap);
                    carry.drain(..keep);
                }
            }
            _ => {}
        }
    }
    hits.sort();
    hits.dedup();
    hits
}

/// A peer process's stderr, kept in a temp file and shown when a test fails (the peers are
/// chatty, and their output only matters then).
pub struct PeerLog {
    file: tempfile::NamedTempFile,
    pub name: &'static str,
}

impl PeerLog {
    pub fn new(name: &'static str) -> PeerLog {
        PeerLog {
            file: tempfile::NamedTempFile::new().expect("peer log file"),
            name,
        }
    }

    /// A handle for the child's stderr.
    pub fn stdio(&self) -> Stdio {
        Stdio::from(self.file.reopen().expect("reopen peer log"))
    }

    pub fn read(&self) -> String {
        std::fs::read_to_string(self.file.path()).unwrap_or_default()
    }
}

/// An HTTP client that shows redirects instead of following them (sign-in and OAuth tests
/// read each `Location`).
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Does the audit trail hold `needle` within five seconds? (The writer batches.)
pub async fn audit_has(hub: &TestHub, needle: &str) -> bool {
    for _ in 0..50 {
        if hub.ok(&["audit", "--json"]).contains(needle) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}
