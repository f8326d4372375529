//! Test harness: runs the real `lodge` binary (CLI and `serve`) against a private DATA_DIR and
//! an ephemeral loopback port. Tests talk to it over real HTTP, as users would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_lodge");

pub struct TestHub {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub child: Option<Child>,
    pub base: String,
    pub env: Vec<(String, String)>,
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
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut hub = Self {
            dir: tmp.path().to_owned(),
            _tmp: Some(tmp),
            child: None,
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
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["serve", "--bind", "127.0.0.1:0"])
            .envs(self.env.iter().map(|(a, b)| (a.as_str(), b.as_str())))
            .env_remove("LODGE_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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

    /// Graceful stop (SIGTERM) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
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
        self.kill();
    }
}

/// A plain HTTP client for raw-protocol tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
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
