//! The official MCP conformance suite (npm @modelcontextprotocol/conformance, pinned by
//! scripts/peers) against the hub, for revisions 2026-07-28 and 2025-11-25, with the project's
//! fixture server (tests/peers/conformance_server.py) configured with `prefix = ""`, so the
//! suite's fixture scenarios run through the hub's relay. The run fails on any failed check that
//! tests/conformance/expected-failures.yaml does not list, and on a listed one that passes.
//! The fixture is also driven directly over its stdio, in both protocol families, so a bug of
//! its own cannot hide behind the hub's.

mod common;

use common::TestHub;
use common::peers::Peers;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const REVISIONS: [&str; 2] = ["2026-07-28", "2025-11-25"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixture from the source tree, talked to over its stdin and stdout.
struct Fixture {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
}

impl Fixture {
    fn start() -> Self {
        let mut child = Command::new("/usr/bin/python3")
            .arg(repo().join("tests/peers/conformance_server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/bin/python3 conformance_server.py");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let msg = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("the fixture wrote a non-JSON line ({e}): {line}"));
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        Fixture {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, msg: Value) {
        writeln!(self.stdin, "{msg}").expect("write to the fixture");
        self.stdin.flush().expect("flush");
    }

    fn next(&self) -> Value {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the fixture said nothing within 10 s")
    }

    /// Sends request `id`; returns (what came before the answer, the answer).
    fn rpc(&mut self, id: u64, method: &str, params: Value) -> (Vec<Value>, Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let mut before = Vec::new();
        loop {
            let msg = self.next();
            if msg["id"] == id && msg.get("method").is_none() {
                return (before, msg);
            }
            before.push(msg);
        }
    }

    fn initialize(&mut self, version: &str, capabilities: Value) -> Value {
        let (_, r) = self.rpc(
            0,
            "initialize",
            json!({"protocolVersion": version, "capabilities": capabilities,
                   "clientInfo": {"name": "test", "version": "1"}}),
        );
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        r
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn modern_meta(capabilities: Value) -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    })
}

/// 2026-07-28: results carry resultType and caching hints; what a tool needs from the client
/// comes back as input_required with a signed requestState over as many rounds as it takes; a
/// tampered state, an undeclared capability and a removed method are errors; logs only with a
/// logLevel.
#[test]
fn the_fixture_speaks_2026_07_28_on_its_own() {
    let mut f = Fixture::start();
    let init = f.initialize("2026-07-28", json!({}));
    assert_eq!(init["result"]["protocolVersion"], "2026-07-28", "{init}");
    let all = json!({"sampling": {}, "elicitation": {}, "roots": {}});
    let meta = modern_meta(all.clone());

    let (_, list) = f.rpc(1, "tools/list", json!({"_meta": meta}));
    let result = &list["result"];
    assert_eq!(result["resultType"], "complete", "{list}");
    assert!(
        result["ttlMs"].is_u64() && result["cacheScope"] == "public",
        "{list}"
    );
    let tools = result["tools"].as_array().expect("tools");
    assert!(tools.len() >= 30, "{} tools", tools.len());
    for t in tools {
        let name = t["name"].as_str().expect("name");
        assert!(
            name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c)),
            "{name}"
        );
        assert!(
            t["description"].is_string() && t["inputSchema"]["type"] == "object",
            "{t}"
        );
    }

    let call = |name: &str, extra: Value| {
        let mut p = json!({"name": name, "arguments": {}, "_meta": meta});
        if let Value::Object(m) = extra {
            p.as_object_mut().expect("object").extend(m);
        }
        p
    };
    // Two rounds, then complete; each round's state differs.
    let (_, r1) = f.rpc(
        2,
        "tools/call",
        call("test_input_required_result_multi_round", json!({})),
    );
    assert_eq!(r1["result"]["resultType"], "input_required", "{r1}");
    assert_eq!(
        r1["result"]["inputRequests"]["step1"]["method"],
        "elicitation/create"
    );
    let s1 = r1["result"]["requestState"]
        .as_str()
        .expect("state")
        .to_owned();
    let (_, r2) = f.rpc(
        3,
        "tools/call",
        call(
            "test_input_required_result_multi_round",
            json!({"inputResponses": {"step1": {"action": "accept", "content": {"name": "Ada"}}},
                   "requestState": s1}),
        ),
    );
    let s2 = r2["result"]["requestState"]
        .as_str()
        .expect("state")
        .to_owned();
    assert!(
        r2["result"]["inputRequests"]["step2"].is_object() && s2 != s1,
        "{r2}"
    );
    let (_, r3) = f.rpc(
        4,
        "tools/call",
        call(
            "test_input_required_result_multi_round",
            json!({"inputResponses": {"step2": {"action": "accept", "content": {"color": "blue"}}},
                   "requestState": s2}),
        ),
    );
    assert_eq!(r3["result"]["resultType"], "complete", "{r3}");
    assert_eq!(r3["result"]["content"][0]["text"], "Ada likes blue");

    // A state not of its own making is refused.
    let (_, tampered) = f.rpc(
        5,
        "tools/call",
        call(
            "test_input_required_result_multi_round",
            json!({"inputResponses": {}, "requestState": format!("{s1}-TAMPERED")}),
        ),
    );
    assert_eq!(tampered["error"]["code"], -32602, "{tampered}");
    // Answers of the wrong shape are refused; a wrong key is asked for again.
    let (_, bad) = f.rpc(
        6,
        "tools/call",
        call(
            "test_input_required_result_elicitation",
            json!({"inputResponses": {"user_name": 12345}}),
        ),
    );
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    let (_, again) = f.rpc(
        7,
        "tools/call",
        call(
            "test_input_required_result_elicitation",
            json!({"inputResponses": {"wrong_key": {"action": "accept", "content": {}}}}),
        ),
    );
    assert_eq!(again["result"]["resultType"], "input_required", "{again}");

    // Only what the client declared is asked for; what it must have and lacks is -32021.
    let (_, caps) = f.rpc(
        8,
        "tools/call",
        json!({"name": "test_input_required_result_capabilities", "arguments": {},
               "_meta": modern_meta(json!({"sampling": {}}))}),
    );
    let asked: Vec<&Value> = caps["result"]["inputRequests"]
        .as_object()
        .expect("inputRequests")
        .values()
        .map(|r| &r["method"])
        .collect();
    assert_eq!(asked, vec!["sampling/createMessage"], "{caps}");
    let (_, missing) = f.rpc(
        9,
        "tools/call",
        json!({"name": "test_missing_capability", "arguments": {}, "_meta": modern_meta(json!({}))}),
    );
    assert_eq!(missing["error"]["code"], -32021, "{missing}");
    assert_eq!(
        missing["error"]["data"]["requiredCapabilities"],
        json!({"sampling": {}})
    );

    // Logs only when the request set a level.
    let (quiet, _) = f.rpc(10, "tools/call", call("test_logging_tool", json!({})));
    assert!(quiet.is_empty(), "logged without a logLevel: {quiet:?}");
    let mut loud_meta = meta.clone();
    loud_meta["io.modelcontextprotocol/logLevel"] = json!("debug");
    let (loud, _) = f.rpc(
        11,
        "tools/call",
        json!({"name": "test_tool_with_logging", "arguments": {}, "_meta": loud_meta}),
    );
    assert_eq!(loud.len(), 3, "{loud:?}");

    // Notifications only on a subscriptions/listen that asked for them, tagged with its id.
    let tag = |id: u64| json!({"io.modelcontextprotocol/subscriptionId": id});
    let (silent, _) = f.rpc(
        20,
        "tools/call",
        call("test_trigger_tool_change", json!({})),
    );
    assert!(
        silent.is_empty(),
        "a change nobody listens to was sent: {silent:?}"
    );
    f.send(
        json!({"jsonrpc": "2.0", "id": 21, "method": "subscriptions/listen", "params": {
        "_meta": meta, "notifications": {"toolsListChanged": true, "bogus": true,
            "resourceSubscriptions": ["test://watched-resource"]}}}),
    );
    let ack = f.next();
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(ack["params"]["_meta"], tag(21), "{ack}");
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true, "resourceSubscriptions": ["test://watched-resource"]})
    );
    let (tools_changed, _) = f.rpc(
        22,
        "tools/call",
        call("test_trigger_tool_change", json!({})),
    );
    assert_eq!(tools_changed.len(), 1, "{tools_changed:?}");
    assert_eq!(
        tools_changed[0]["method"],
        "notifications/tools/list_changed"
    );
    assert_eq!(tools_changed[0]["params"]["_meta"], tag(21));
    let (not_asked, _) = f.rpc(
        23,
        "tools/call",
        call("test_trigger_prompt_change", json!({})),
    );
    assert!(not_asked.is_empty(), "{not_asked:?}");
    let (updated, _) = f.rpc(
        24,
        "tools/call",
        call("test_trigger_resource_update", json!({})),
    );
    assert_eq!(updated.len(), 1, "{updated:?}");
    assert_eq!(updated[0]["params"]["uri"], "test://watched-resource");
    assert_eq!(updated[0]["params"]["_meta"], tag(21));
    f.send(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 21}}),
    );
    let (after, _) = f.rpc(
        25,
        "tools/call",
        call("test_trigger_tool_change", json!({})),
    );
    assert!(
        after.is_empty(),
        "the cancelled listen still gets notifications: {after:?}"
    );
    let (_, removed) = f.rpc(
        26,
        "resources/subscribe",
        json!({"uri": "test://watched-resource", "_meta": meta}),
    );
    assert_eq!(removed["error"]["code"], -32601, "{removed}");

    let (_, gone) = f.rpc(12, "ping", json!({}));
    assert_eq!(gone["error"]["code"], -32601, "{gone}");
    let (_, nope) = f.rpc(
        13,
        "resources/read",
        json!({"uri": "test://nonexistent", "_meta": meta}),
    );
    assert_eq!(nope["error"]["code"], -32602, "{nope}");
    assert_eq!(nope["error"]["data"]["uri"], "test://nonexistent");
}

/// 2025-11-25 and 2025-06-18: real server-to-client requests answered over stdin, logs after
/// logging/setLevel, progress for the request's token, subscriptions and their updates.
#[test]
fn the_fixture_speaks_the_sessionful_revisions_on_its_own() {
    for version in ["2025-11-25", "2025-06-18"] {
        let mut f = Fixture::start();
        let init = f.initialize(
            version,
            json!({"sampling": {}, "elicitation": {}, "roots": {}}),
        );
        assert_eq!(init["result"]["protocolVersion"], version, "{init}");
        assert_eq!(
            init["result"]["capabilities"]["resources"]["subscribe"],
            true
        );

        // The tool asks the client; the answer it gets back shapes its result.
        f.send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "test_sampling", "arguments": {"prompt": "Say hi"}}}));
        let ask = f.next();
        assert_eq!(ask["method"], "sampling/createMessage", "{ask}");
        assert_eq!(ask["params"]["messages"][0]["content"]["text"], "Say hi");
        f.send(json!({"jsonrpc": "2.0", "id": ask["id"], "result": {
            "role": "assistant", "content": {"type": "text", "text": "hi!"}, "model": "m"}}));
        let done = f.next();
        assert_eq!(done["id"], 1, "{done}");
        assert_eq!(done["result"]["content"][0]["text"], "LLM response: hi!");
        assert!(done["result"].get("resultType").is_none(), "{done}");

        // Elicitation and roots, the same way.
        f.send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "test_elicitation_sep1330_enums", "arguments": {}}}));
        let ask = f.next();
        assert_eq!(ask["method"], "elicitation/create", "{ask}");
        let props = &ask["params"]["requestedSchema"]["properties"];
        for field in [
            "untitledSingle",
            "titledSingle",
            "legacyEnum",
            "untitledMulti",
            "titledMulti",
        ] {
            assert!(props[field].is_object(), "{field} missing: {ask}");
        }
        f.send(json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "decline"}}));
        let done = f.next();
        assert!(
            done["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or("")
                .contains("action=decline"),
            "{done}"
        );

        // Logs follow the level the client set.
        f.rpc(3, "logging/setLevel", json!({"level": "warning"}));
        let (none, _) = f.rpc(4, "tools/call", json!({"name": "test_tool_with_logging"}));
        assert!(none.is_empty(), "info logged at level warning: {none:?}");
        f.rpc(5, "logging/setLevel", json!({"level": "debug"}));
        let (logs, _) = f.rpc(6, "tools/call", json!({"name": "test_tool_with_logging"}));
        assert_eq!(logs.len(), 3, "{logs:?}");

        let (progress, _) = f.rpc(
            7,
            "tools/call",
            json!({"name": "test_tool_with_progress", "_meta": {"progressToken": "tok"}}),
        );
        let steps: Vec<&Value> = progress.iter().map(|p| &p["params"]["progress"]).collect();
        assert_eq!(steps, vec![0, 50, 100], "{progress:?}");
        assert!(
            progress
                .iter()
                .all(|p| p["params"]["progressToken"] == "tok")
        );

        // Updates reach subscribers only.
        let uri = "test://watched-resource";
        let (quiet, _) = f.rpc(
            8,
            "tools/call",
            json!({"name": "test_trigger_resource_update"}),
        );
        assert!(quiet.is_empty(), "{quiet:?}");
        f.rpc(9, "resources/subscribe", json!({ "uri": uri }));
        let (updated, _) = f.rpc(
            10,
            "tools/call",
            json!({"name": "test_trigger_resource_update"}),
        );
        assert_eq!(updated.len(), 1, "{updated:?}");
        assert_eq!(updated[0]["method"], "notifications/resources/updated");
        assert_eq!(updated[0]["params"]["uri"], uri);
        f.rpc(11, "resources/unsubscribe", json!({ "uri": uri }));
        let (quiet, _) = f.rpc(
            12,
            "tools/call",
            json!({"name": "test_trigger_resource_update"}),
        );
        assert!(quiet.is_empty(), "{quiet:?}");

        let (_, done) = f.rpc(
            13,
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"},
                   "argument": {"name": "arg1", "value": "par"}}),
        );
        assert_eq!(
            done["result"]["completion"]["values"],
            json!(["paris", "park", "party"])
        );
        let (_, nope) = f.rpc(14, "resources/read", json!({"uri": "test://nonexistent"}));
        assert_eq!(nope["error"]["code"], -32002, "{nope}");
    }
}

/// The entries of tests/conformance/expected-failures.yaml: revision -> (entry, reason).
fn expected_failures() -> BTreeMap<String, Vec<(String, String)>> {
    let path = repo().join("tests/conformance/expected-failures.yaml");
    let text = std::fs::read_to_string(&path).expect("read expected-failures.yaml");
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut revision = None;
    for line in text.lines() {
        if let Some(rev) = line
            .strip_suffix(':')
            .filter(|l| !l.starts_with([' ', '#']))
        {
            revision = Some(rev.trim_matches('"').to_owned());
            out.entry(rev.trim_matches('"').to_owned()).or_default();
        } else if let Some(entry) = line.trim_start().strip_prefix("- ") {
            let rev = revision.clone().expect("an entry before any revision");
            let (id, reason) = entry.split_once('#').unwrap_or((entry, ""));
            out.entry(rev)
                .or_default()
                .push((id.trim().to_owned(), reason.trim().to_owned()));
        }
    }
    out
}

/// Each listed failure says why, and docs/conformance.md lists it.
#[test]
fn every_expected_failure_has_a_reason_and_is_documented() {
    let docs = std::fs::read_to_string(repo().join("docs/conformance.md")).expect("docs");
    let all = expected_failures();
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        ["2025-11-25", "2026-07-28"],
        "one list per revision"
    );
    for (rev, entries) in &all {
        for (id, reason) in entries {
            assert!(
                !reason.is_empty(),
                "{rev}: {id} has no reason (a # comment)"
            );
            assert!(
                docs.contains(&format!("`{id}`")),
                "{rev}: {id} is not listed in docs/conformance.md"
            );
        }
    }
}

/// Counts of each status in `dir/results/*/checks.json`, and every failure with its message.
fn tally(dir: &Path) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut failures = Vec::new();
    let Ok(runs) = std::fs::read_dir(dir.join("results")) else {
        return (counts, failures);
    };
    let mut runs: Vec<_> = runs.flatten().map(|e| e.path()).collect();
    runs.sort();
    for run in runs {
        let Ok(text) = std::fs::read_to_string(run.join("checks.json")) else {
            continue;
        };
        let checks: Vec<Value> = serde_json::from_str(&text).expect("checks.json");
        let scenario = run
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for c in checks {
            let status = c["status"].as_str().unwrap_or("?").to_owned();
            if status == "FAILURE" {
                failures.push(format!(
                    "{scenario}: {}: {}",
                    c["id"].as_str().unwrap_or("?"),
                    c["errorMessage"].as_str().unwrap_or("")
                ));
            }
            *counts.entry(status).or_insert(0) += 1;
        }
    }
    (counts, failures)
}

/// The whole suite, both revisions, through the hub and the token-adding shim.
#[tokio::test]
async fn the_conformance_suite_passes_through_the_hub() {
    let p = Peers::get();
    let config = format!(
        r#"
[rooms]
read_only_paths = ["{dir}"]

[servers.conformance]
description = "the project's conformance fixture"
command = ["/usr/bin/python3", "{fixture}"]
prefix = ""
"#,
        dir = p.dir.display(),
        fixture = p.conformance_server().display(),
    );
    p.conformance_suite();
    let hub = TestHub::start_with_config_logged(&config, &[]);
    hub.add_user("suite");
    let token = hub.token("suite", &[]);
    let out = tempfile::tempdir().expect("tempdir");
    let run = tokio::task::spawn_blocking({
        let (url, out) = (hub.mcp_url(), out.path().to_owned());
        let peers = p.dir.clone();
        move || {
            Command::new(repo().join("scripts/conformance"))
                .args(["--url", &url, "--token", &token, "--out"])
                .arg(&out)
                .arg("--expected-failures")
                .arg(repo().join("tests/conformance/expected-failures.yaml"))
                .env("LODGE_TEST_PEERS", peers)
                .output()
                .expect("run scripts/conformance")
        }
    })
    .await
    .expect("join");
    println!("{}", String::from_utf8_lossy(&run.stdout));
    eprintln!("{}", String::from_utf8_lossy(&run.stderr));

    for rev in REVISIONS {
        let (counts, failures) = tally(&out.path().join(rev));
        println!("{rev}: {counts:?}");
        for f in &failures {
            println!("  FAIL {f}");
        }
        assert!(
            counts.get("SUCCESS").copied().unwrap_or(0) > 20,
            "{rev}: the suite hardly ran ({counts:?}); see its log in the output above"
        );
    }
    assert!(
        run.status.success(),
        "the conformance suite found failures that tests/conformance/expected-failures.yaml \
         does not list, or listed ones that now pass (remove those): see above"
    );
}
