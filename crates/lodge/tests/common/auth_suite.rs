//! Runs the MCP conformance suite's `authorization` subcommand (npm
//! @modelcontextprotocol/conformance, installed by scripts/peers) against an authorization
//! server, and hands the test the URL the suite prints for a person to open, so the test can drive
//! a browser through sign-in and consent. It reads the suite's results; it judges nothing itself.
//!
//! Without `--scenario` the subcommand runs `authorization-server-metadata-endpoint`, then
//! `authorization-code-grant` with the metadata the first one fetched. The latter needs a
//! pre-registered client whose redirect URI is `http://127.0.0.1:PORT/callback`, prints the
//! authorization URL after "Access the following URL in your browser", and waits for the redirect
//! on PORT.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::PeerLog;
use super::peers::Peers;

pub struct AuthorizationSuite {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    out: tempfile::TempDir,
    log: PeerLog,
    /// Everything the suite printed so far.
    pub transcript: String,
}

/// One check of one scenario, from the suite's checks.json.
#[derive(Debug, Clone)]
pub struct Check {
    pub scenario: String,
    pub id: String,
    pub status: String,
    pub message: String,
}

pub struct Outcome {
    pub success: bool,
    pub checks: Vec<Check>,
    pub transcript: String,
}

impl Outcome {
    pub fn failures(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == "FAILURE")
            .collect()
    }

    /// The status of the check `id` (None if the suite never reported it).
    pub fn status(&self, id: &str) -> Option<&str> {
        self.checks
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.status.as_str())
    }
}

/// A loopback port free right now, for the suite's callback listener (and the redirect URI the
/// hub's config pre-registers before the suite starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl AuthorizationSuite {
    /// Starts `conformance authorization --url ISSUER --client-id CLIENT [--resource RESOURCE]
    /// --port PORT`. Panics ("run scripts/peers") if the suite is not installed.
    pub fn start(
        issuer: &str,
        client_id: &str,
        resource: Option<&str>,
        port: u16,
    ) -> AuthorizationSuite {
        let peers = Peers::get();
        let suite = peers.conformance_suite();
        let out = tempfile::tempdir().expect("tempdir");
        let log = PeerLog::new("conformance authorization");
        let mut child = Command::new(peers.node())
            .arg(suite)
            .args(["authorization", "--url", issuer, "--client-id", client_id])
            .args(resource.map(|r| ["--resource", r]).into_iter().flatten())
            .args(["--port", &port.to_string()])
            .arg("--output-dir")
            .arg(out.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.stdio())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the conformance suite");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        AuthorizationSuite {
            child,
            lines,
            out,
            log,
            transcript: String::new(),
        }
    }

    /// Reads the suite's output until it prints the URL to open; None if it ended first (a
    /// scenario failed before asking). Panics if it says nothing for `timeout`.
    pub async fn authorization_url(&mut self, timeout: Duration) -> Option<String> {
        let mut asked = false;
        loop {
            let line = match tokio::time::timeout(timeout, self.lines.next_line()).await {
                Err(_) => panic!(
                    "the conformance suite printed nothing for {timeout:?}; so far:\n{}",
                    self.transcript
                ),
                Ok(Ok(Some(line))) => line,
                Ok(_) => return None,
            };
            self.transcript.push_str(&line);
            self.transcript.push('\n');
            if line.contains("Access the following URL") {
                asked = true;
            } else if asked && line.trim_start().starts_with("http") {
                return Some(line.trim().to_owned());
            }
        }
    }

    /// Waits for the suite to end (at most `timeout`) and reads every scenario's checks.
    pub async fn finish(mut self, timeout: Duration) -> Outcome {
        let drain = async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                self.transcript.push_str(&line);
                self.transcript.push('\n');
            }
            self.child.wait().await
        };
        let status = match tokio::time::timeout(timeout, drain).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the conformance suite: {e}"),
            Err(_) => panic!(
                "the conformance suite did not finish within {timeout:?}; so far:\n{}",
                self.transcript
            ),
        };
        let log = self.log.read();
        if !log.trim().is_empty() {
            self.transcript.push_str("--- stderr ---\n");
            self.transcript.push_str(&log);
        }
        Outcome {
            success: status.success(),
            checks: read_checks(self.out.path()),
            transcript: self.transcript,
        }
    }
}

/// Every checks.json below `dir` (one dir per scenario run, named after the scenario).
fn read_checks(dir: &Path) -> Vec<Check> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "checks.json") {
                found.push(path);
            }
        }
    }
    found.sort();
    let mut checks = Vec::new();
    for path in found {
        let scenario = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path).expect("read checks.json");
        let list: Vec<Value> = serde_json::from_str(&text).expect("checks.json is a JSON list");
        for c in list {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            checks.push(Check {
                scenario: scenario.clone(),
                id: text("id"),
                status: text("status"),
                message: text("errorMessage"),
            });
        }
    }
    checks
}
