//! The TypeScript SDK's MCP client doing OAuth (tests/peers/oauth_client.mjs), run as a child
//! whose output lines a test reads in order: the authorization URL to drive a browser to, then
//! one JSON step per line. It knows the script's protocol, not what a test should conclude.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::PeerLog;
use super::peers::Peers;

pub struct OAuthClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    log: PeerLog,
    /// (cimd) the client ID metadata document URL the script serves, once printed.
    pub metadata_url: Option<String>,
}

/// One line of the script's output.
#[derive(Debug, Clone)]
pub enum Event {
    Metadata(String),
    Authorize(String),
    Step(Value),
}

impl OAuthClient {
    /// Starts `oauth_client.mjs MCP_URL MODE OPTIONS` ("dcr" or "cimd"; OPTIONS as the script's
    /// head says), with `env` added (e.g. NODE_EXTRA_CA_CERTS).
    pub fn start(mcp_url: &str, mode: &str, options: Value, env: &[(&str, &str)]) -> OAuthClient {
        let peers = Peers::get();
        let log = PeerLog::new("oauth client");
        let mut child = Command::new(peers.node())
            .arg(peers.oauth_client())
            .args([mcp_url, mode, &options.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.stdio())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node oauth_client.mjs");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        OAuthClient {
            child,
            stdin,
            lines,
            log,
            metadata_url: None,
        }
    }

    /// The next line; panics if the script is silent for `timeout` or ends.
    pub async fn next(&mut self, timeout: Duration) -> Event {
        let line = match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Err(_) => panic!(
                "the OAuth client printed nothing for {timeout:?}; its log:\n{}",
                self.log.read()
            ),
            Ok(_) => panic!("the OAuth client ended; its log:\n{}", self.log.read()),
        };
        if let Some(url) = line.strip_prefix("METADATA ") {
            self.metadata_url = Some(url.to_owned());
            return Event::Metadata(url.to_owned());
        }
        if let Some(url) = line.strip_prefix("AUTHORIZE ") {
            return Event::Authorize(url.to_owned());
        }
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("OAuth client line {line:?}: {e}"));
        Event::Step(value)
    }

    /// Reads up to the AUTHORIZE line; returns its URL. Panics on an error step.
    pub async fn authorize_url(&mut self, timeout: Duration) -> String {
        loop {
            match self.next(timeout).await {
                Event::Authorize(url) => return url,
                Event::Metadata(_) => {}
                Event::Step(v) => panic!("expected AUTHORIZE, got {v}; log:\n{}", self.log.read()),
            }
        }
    }

    /// Reads the next step, which must be `name` (an error step panics with its message).
    pub async fn step(&mut self, name: &str, timeout: Duration) -> Value {
        match self.next(timeout).await {
            Event::Step(v) if v["step"] == name => v,
            other => panic!(
                "expected step {name}, got {other:?}; log:\n{}",
                self.log.read()
            ),
        }
    }

    /// After the `waiting` step: sends `again` and returns the `again` step.
    pub async fn again(&mut self, timeout: Duration) -> Value {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"again\n").await.expect("write again");
        stdin.flush().await.expect("flush");
        self.step("again", timeout).await
    }

    /// The script's stderr so far.
    pub fn log(&self) -> String {
        self.log.read()
    }

    /// The default options for a tool call: {"tool": NAME, "arguments": {}}.
    pub fn tool(name: &str) -> Value {
        json!({ "tool": name, "arguments": {} })
    }
}

impl Drop for OAuthClient {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("--- OAuth client log ---\n{}", self.log.read());
        }
    }
}
