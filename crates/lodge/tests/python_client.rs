//! A third-party client: the official Python MCP SDK (PyPI `mcp`, pinned in
//! tests/python/requirements.txt) runs tests/python/mcp_sdk_client.py against a real hub, on the
//! caller's own endpoint and on a named user's endpoint. Each user must see only themselves and
//! their own sessions, and a token may not use another user's endpoint.
//!
//! With upstream servers configured (mcp-server-git and server-everything from scripts/peers),
//! tests/python/upstream_client.py calls their `{server}__{tool}` tools through the hub, progress
//! included.
//!
//! The interpreter is $LODGE_TEST_PYTHON, else <workspace>/.venv/bin/python. Without one that
//! can `import mcp` the test fails: `scripts/test` sets up .venv.

mod common;

use common::TestHub;
use common::peers::Peers;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use tokio::process::Command;

const SETUP_HINT: &str = "run scripts/test, which creates .venv and installs tests/python/requirements.txt \
     (or point LODGE_TEST_PYTHON at a Python with the `mcp` package)";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn script() -> PathBuf {
    workspace().join("tests/python/mcp_sdk_client.py")
}

fn upstream_script() -> PathBuf {
    workspace().join("tests/python/upstream_client.py")
}

/// The Python to run the SDK with. A missing interpreter or SDK fails the test, never skips it.
async fn python() -> PathBuf {
    let (py, from) = match std::env::var_os("LODGE_TEST_PYTHON").filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), "$LODGE_TEST_PYTHON"),
        None => (workspace().join(".venv/bin/python"), "the workspace .venv"),
    };
    assert!(
        py.exists(),
        "no Python at {} (from {from}): {SETUP_HINT}",
        py.display()
    );
    let out = Command::new(&py)
        .args(["-c", "import mcp"])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {SETUP_HINT}", py.display()));
    assert!(
        out.status.success(),
        "`import mcp` fails under {}: {}\n{SETUP_HINT}",
        py.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(script().exists(), "missing {}", script().display());
    py
}

async fn run_sdk(py: &Path, url: &str, token: &str) -> Output {
    run_script(py, &script(), url, token).await
}

async fn run_script(py: &Path, script: &Path, url: &str, token: &str) -> Output {
    Command::new(py)
        .arg(script)
        .arg(url)
        .arg(token)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()))
}

/// Runs the SDK flow, which must succeed; returns its one JSON line.
async fn sdk_ok(py: &Path, url: &str, token: &str) -> Value {
    script_ok(py, &script(), url, token).await
}

/// Runs an SDK script, which must succeed; returns its one JSON line.
async fn script_ok(py: &Path, script: &Path, url: &str, token: &str) -> Value {
    let out = run_script(py, script, url, token).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python SDK client failed against {url} ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one JSON line, got: {stdout}\nstderr: {stderr}"
    );
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("bad JSON line {:?}: {e}", lines[0]))
}

/// A sessionful session opened with raw HTTP and left open, so the other user's listing could
/// show it if sessions leaked between users.
async fn open_session(url: &str, token: &str) -> String {
    let r = common::http()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&common::init_body("2025-11-25"))
        .send()
        .await
        .expect("initialize");
    assert!(r.status().is_success(), "initialize: {}", r.status());
    r.headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("Mcp-Session-Id on initialize")
        .to_owned()
}

fn session_ids(info: &Value) -> Vec<String> {
    info["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("session_info has no sessions list: {info}"))
        .iter()
        .map(|s| s["id"].as_str().expect("session id").to_owned())
        .collect()
}

/// The tool names an SDK script printed under `tools`.
fn tool_names(out: &Value) -> Vec<&str> {
    out["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools list: {out}"))
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// Checks one user's SDK result; returns (the SDK's session id, the listed session ids).
fn check(out: &Value, user: &str) -> (String, Vec<String>) {
    let tools = tool_names(out);
    assert!(tools.contains(&"session_info"), "tools: {tools:?}");
    let info = &out["session_info"];
    assert_eq!(info["user"], user, "{user}'s session_info: {info}");
    // The pinned SDK offers 2025-11-25, which the hub speaks.
    assert_eq!(out["protocol"], "2025-11-25", "{out}");
    assert_eq!(info["protocol_version"], out["protocol"], "{out}");
    let sid = info["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{user}'s session_info has no session_id: {info}"))
        .to_owned();
    let ids = session_ids(info);
    assert!(
        ids.contains(&sid),
        "{user}'s own session {sid} missing from {ids:?}"
    );
    // Its room: the file it wrote, the command's output, and progress streamed over SSE.
    let written = format!("written by {user}");
    assert_eq!(out["file"], written.as_str(), "{out}");
    assert_eq!(out["command"]["stdout"], written.as_str(), "{out}");
    let progress = out["progress"].as_array().expect("progress list");
    assert!(
        progress.len() >= 2,
        "expected progress notifications: {out}"
    );
    (sid, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_sees_only_its_own_user_and_sessions() {
    let py = python().await;
    let hub = TestHub::start();
    hub.add_user("alice");
    hub.add_user("bob");
    let ta = hub.token("alice", &[]);
    let tb = hub.token("bob", &[]);

    // Sessions that stay open while the SDK runs as the other user.
    let alice_open = open_session(&hub.mcp_url(), &ta).await;
    let bob_open = open_session(&hub.mcp_url(), &tb).await;

    let alice = sdk_ok(&py, &hub.mcp_url(), &ta).await;
    let (alice_sid, alice_ids) = check(&alice, "alice");
    assert!(
        alice_ids.contains(&alice_open),
        "alice's open session missing: {alice_ids:?}"
    );
    assert!(
        !alice_ids.contains(&bob_open),
        "alice sees bob's session: {alice_ids:?}"
    );
    assert_eq!(alice_ids.len(), 2, "alice's sessions: {alice_ids:?}");

    let bob = sdk_ok(&py, &hub.user_url("bob"), &tb).await;
    let (bob_sid, bob_ids) = check(&bob, "bob");
    assert_ne!(alice_sid, bob_sid);
    assert!(
        !bob_ids.contains(&alice_sid),
        "bob sees alice's session: {bob_ids:?}"
    );
    assert!(
        !bob_ids.contains(&alice_open),
        "bob sees alice's session: {bob_ids:?}"
    );
    assert!(
        bob_ids.contains(&bob_open),
        "bob's open session missing: {bob_ids:?}"
    );
    assert_eq!(bob_ids.len(), 2, "bob's sessions: {bob_ids:?}");

    // The SDK ends its session with DELETE on close: alice's is gone, her raw one is not.
    let probe = |sid: String| {
        let (url, token) = (hub.mcp_url(), ta.clone());
        async move {
            common::http()
                .post(url)
                .bearer_auth(token)
                .header("mcp-session-id", sid)
                .json(&serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
                .send()
                .await
                .expect("tools/list")
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        probe(alice_sid).await,
        404,
        "SDK session still alive after close"
    );
    assert_eq!(probe(alice_open).await, 200);

    // Alice's token on bob's endpoint: the SDK must fail, on the hub's 403.
    let out = run_sdk(&py, &hub.user_url("bob"), &ta).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "alice used bob's endpoint: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "no JSON on failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("-> 403"),
        "expected a 403 from the hub: {stderr}"
    );
}

/// The SDK calls a user's own instances of upstream servers through the hub: mcp-server-git on
/// the room's workspace and server-everything on Node, whose progress notifications reach the
/// SDK's progress callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_calls_upstream_servers() {
    let py = python().await;
    assert!(
        upstream_script().exists(),
        "missing {}",
        upstream_script().display()
    );
    let p = Peers::get();
    let config = format!(
        r#"
[rooms]
read_only_paths = ["{dir}"]

[servers.git]
command = ["{git}", "--repository", "{{workspace}}"]

[servers.everything]
command = ["{node}", "{everything}", "stdio"]
"#,
        dir = p.dir.display(),
        git = p.mcp_server_git().display(),
        node = p.node().display(),
        everything = p.everything().display(),
    );
    let hub = TestHub::start_with_config(&config, &[]);
    hub.add_user("alice");
    let token = hub.token("alice", &[]);

    let out = script_ok(&py, &upstream_script(), &hub.mcp_url(), &token).await;
    let tools = tool_names(&out);
    for want in ["git__git_status", "everything__echo", "session_info"] {
        assert!(tools.contains(&want), "{want} missing from {tools:?}");
    }
    let status = out["git_status"].as_str().expect("git_status text");
    assert!(status.contains("a.txt"), "git status: {status}");
    assert_eq!(out["echo"], "Echo: sdk", "{out}");
    let progress = out["progress"].as_array().expect("progress list");
    assert!(
        progress.len() >= 3,
        "expected progress notifications: {out}"
    );
    for p in progress {
        assert_eq!(p[1].as_f64(), Some(4.0), "progress total: {p} in {out}");
    }
    let long = out["long_result"].as_str().expect("long_result text");
    assert!(long.contains("completed"), "long-running result: {long}");
}
