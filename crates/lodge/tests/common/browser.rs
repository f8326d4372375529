//! A headless Chromium for browser tests: runs tests/peers/browser.mjs (puppeteer-core driving
//! Debian's /usr/bin/chromium) and speaks its one-JSON-line-per-command protocol, so a test can
//! interleave HTTP calls and browser steps. It holds no test logic and never skips: a missing
//! peer or browser panics.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::PeerLog;
use super::peers::Peers;

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Per-command timeout the driver enforces; the Rust side waits a little longer before it
/// declares the driver itself dead.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    log: PeerLog,
    /// Chromium's version string, as the driver reported it.
    pub version: String,
}

/// Where a navigation ended: the page's URL and the HTTP status of its document (None when the
/// step caused no navigation or the load failed).
#[derive(Debug, Clone)]
pub struct Page {
    pub url: String,
    pub status: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub domain: String,
    pub path: String,
    pub http_only: bool,
    pub secure: bool,
    /// "Strict", "Lax", "None", or None when the cookie set no SameSite.
    pub same_site: Option<String>,
    /// A session cookie (no Expires / Max-Age).
    pub session: bool,
}

/// Where screenshots go: the dir CI keeps as test artifacts.
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts/screenshots")
}

impl Browser {
    /// Starts Chromium with a fresh profile; panics ("run scripts/peers") if the driver or the
    /// browser is missing or does not come up.
    pub async fn start() -> Browser {
        let peers = Peers::get();
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: install Debian's chromium (.ci/run does), then run scripts/peers"
        );
        let log = PeerLog::new("browser");
        let mut child = Command::new(peers.node())
            .arg(peers.browser_driver())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.stdio())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node browser.mjs");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut browser = Browser {
            child,
            stdin,
            lines,
            log,
            version: String::new(),
        };
        let ready = browser
            .answer(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("Chromium did not start: {e} (run scripts/peers)"));
        browser.version = ready["version"].as_str().unwrap_or_default().to_owned();
        browser
    }

    /// Sends one command ({"cmd": NAME, ...}) and returns its answer, or the driver's error.
    pub async fn command(&mut self, command: Value) -> Result<Value, String> {
        let mut line = command.to_string();
        line.push('\n');
        let stdin = self.stdin.as_mut().expect("browser stdin open");
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("browser driver gone: {e}"))?;
        let timeout = command["timeout"]
            .as_u64()
            .map(Duration::from_millis)
            .unwrap_or(COMMAND_TIMEOUT);
        self.answer(timeout + Duration::from_secs(5)).await
    }

    async fn answer(&mut self, timeout: Duration) -> Result<Value, String> {
        let line = match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Err(_) => return Err(format!("no answer from the browser driver in {timeout:?}")),
            Ok(Err(e)) => return Err(format!("reading the browser driver: {e}")),
            Ok(Ok(None)) => {
                return Err(format!(
                    "the browser driver exited; its log:\n{}",
                    self.log.read()
                ));
            }
            Ok(Ok(Some(line))) => line,
        };
        let value: Value =
            serde_json::from_str(&line).map_err(|e| format!("bad answer {line:?}: {e}"))?;
        match value["error"].as_str() {
            Some(error) => Err(error.to_owned()),
            None => Ok(value),
        }
    }

    /// Runs a command that must succeed.
    async fn must(&mut self, command: Value) -> Value {
        let what = command.to_string();
        match self.command(command).await {
            Ok(v) => v,
            Err(e) => panic!("browser {what} failed: {e}"),
        }
    }

    pub async fn goto(&mut self, url: &str) -> Page {
        page(self.must(json!({"cmd": "goto", "url": url})).await)
    }

    /// Types `value` into the field `selector` (its old value cleared).
    pub async fn fill(&mut self, selector: &str, value: &str) {
        self.must(json!({"cmd": "fill", "selector": selector, "value": value}))
            .await;
    }

    /// Clicks `selector` and waits for the navigation it causes, if any.
    pub async fn click(&mut self, selector: &str) -> Page {
        page(
            self.must(json!({"cmd": "click", "selector": selector}))
                .await,
        )
    }

    /// Submits the form `selector` (or the form of the field or button `selector`).
    pub async fn submit(&mut self, selector: &str) -> Page {
        page(
            self.must(json!({"cmd": "submit", "selector": selector}))
                .await,
        )
    }

    pub async fn url(&mut self) -> String {
        string(self.must(json!({"cmd": "url"})).await, "url")
    }

    /// The page's visible text (body innerText).
    pub async fn text(&mut self) -> String {
        string(self.must(json!({"cmd": "text"})).await, "text")
    }

    pub async fn html(&mut self) -> String {
        string(self.must(json!({"cmd": "html"})).await, "html")
    }

    /// Every cookie of the profile, with its flags.
    pub async fn cookies(&mut self) -> Vec<Cookie> {
        let answer = self.must(json!({"cmd": "cookies"})).await;
        let text = |c: &Value, k: &str| c[k].as_str().unwrap_or_default().to_owned();
        answer["cookies"]
            .as_array()
            .expect("cookies array")
            .iter()
            .map(|c| Cookie {
                name: text(c, "name"),
                value: text(c, "value"),
                domain: text(c, "domain"),
                path: text(c, "path"),
                http_only: c["httpOnly"] == true,
                secure: c["secure"] == true,
                same_site: c["sameSite"].as_str().map(str::to_owned),
                session: c["session"] == true,
            })
            .collect()
    }

    /// Sets a cookie: {name, value, url | domain+path, httpOnly?, secure?, sameSite?}.
    pub async fn set_cookie(&mut self, cookie: Value) {
        self.must(json!({"cmd": "setCookie", "cookie": cookie}))
            .await;
    }

    pub async fn clear_cookies(&mut self) {
        self.must(json!({"cmd": "clearCookies"})).await;
    }

    /// Saves a full-page PNG as target/test-artifacts/screenshots/NAME.png; returns its path.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let path = screenshot_dir().join(format!("{name}.png"));
        self.must(json!({"cmd": "screenshot", "path": path})).await;
        path
    }

    /// Waits until the page's URL starts with `prefix`; returns the URL.
    pub async fn wait_for_url(&mut self, prefix: &str, timeout: Duration) -> String {
        let answer = self
            .must(json!({"cmd": "waitForUrl", "prefix": prefix, "timeout": timeout.as_millis() as u64}))
            .await;
        string(answer, "url")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing stdin lets the driver close Chromium and remove its profile; Chromium also
        // exits by itself when its debugging pipe closes, so the kill after a grace period
        // (kill_on_drop) leaves nothing behind.
        self.stdin.take();
        for _ in 0..50 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if std::thread::panicking() {
            eprintln!("--- browser driver log ---\n{}", self.log.read());
        }
    }
}

fn page(answer: Value) -> Page {
    Page {
        url: answer["url"].as_str().unwrap_or_default().to_owned(),
        status: answer["status"]
            .as_u64()
            .and_then(|s| u16::try_from(s).ok()),
    }
}

fn string(answer: Value, key: &str) -> String {
    answer[key]
        .as_str()
        .unwrap_or_else(|| panic!("browser answer without {key}: {answer}"))
        .to_owned()
}
