//! Notebooks and kernels end to end (issue 6): real ipykernel kernels in real bubblewrap rooms,
//! driven through the hub's MCP tools; the notebook files written are checked by PyPI nbformat
//! and executed by `jupyter nbconvert` (tests/python/notebook_check.py). scripts/peers installs
//! the Jupyter venv; a missing one fails the test.

mod common;

use common::peers::Peers;
use common::{Mcp, TestHub, content_text};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A 1x1 PNG, base64 (the kernel displays it through IPython.display.Image).
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

fn hub_with_kernels(extra: &str) -> (TestHub, Peers) {
    let p = Peers::get();
    let config = format!(
        r#"
[rooms]
read_only_paths = ["{dir}"]

[kernels]
paths = ["{data}"]
{extra}
"#,
        dir = p.dir.display(),
        data = p.jupyter_data().display(),
    );
    (TestHub::start_with_config(&config, &[]), p)
}

/// A tools/call answered in full (content blocks with their types).
async fn call_raw(m: &Mcp, name: &str, args: Value) -> Value {
    let reply = m
        .rpc("tools/call", json!({"name": name, "arguments": args}))
        .await;
    reply
        .get("result")
        .cloned()
        .unwrap_or_else(|| panic!("{name}: JSON-RPC error {reply}"))
}

/// Runs code in a kernel; returns the text and the structured summary of its one run.
async fn run(m: &Mcp, kernel: &str, code: &str, timeout_s: f64) -> (String, Value) {
    let r = m
        .call(
            "code_execute",
            json!({"code": code, "kernel": kernel, "timeout_s": timeout_s}),
        )
        .await;
    (r.text, r.value["runs"][0].clone())
}

/// An nbformat multi-line string (a string or a list of lines) as one string.
fn joined(text: &Value) -> String {
    match text {
        Value::String(s) => s.clone(),
        Value::Array(lines) => lines.iter().filter_map(Value::as_str).collect(),
        other => panic!("not nbformat text: {other}"),
    }
}

/// The notebook's bytes, through the file tools.
async fn notebook_file(m: &Mcp, path: &str) -> String {
    let read = m.ok("fs_read", json!({"path": path})).await;
    read["content"].as_str().expect("content").to_owned()
}

/// PyPI nbformat validates the file and nbconvert executes it without changing its structure.
fn check_with_nbformat_and_nbconvert(p: &Peers, content: &str) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("check.ipynb");
    std::fs::write(&file, content).expect("write");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/notebook_check.py"
    );
    let out = std::process::Command::new(p.jupyter_python())
        .arg(script)
        .arg("--allow-errors")
        .arg(&file)
        .output()
        .expect("run notebook_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let verdict: Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "notebook_check.py printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success() && verdict["ok"] == true, "{verdict}");
    verdict
}

/// A real ipykernel through the hub: state kept between cells, print, display, a PNG as MCP
/// image content, an exception with a clean traceback; outputs and execution counts land in an
/// nbformat-valid file that nbconvert executes with the same structure.
#[tokio::test]
async fn cells_run_in_a_real_kernel_and_the_file_stays_valid() {
    let (hub, p) = hub_with_kernels("");
    let a = hub.user_session("alice", &[]).await;
    let nb = "work/analysis.ipynb";

    let created = a.call("notebook_create", json!({"path": nb})).await;
    assert!(!created.is_error, "{}", created.text);
    let again = a.call("notebook_create", json!({"path": nb})).await;
    assert!(
        again.is_error && again.text.contains("already exists"),
        "{}",
        again.text
    );

    a.ok(
        "cell_insert",
        json!({"path": nb, "cell_type": "markdown", "source": "# Title"}),
    )
    .await;
    let first = a
        .call(
            "cell_insert",
            json!({"path": nb, "source": "x = 20\nprint('hello', x)", "execute": true}),
        )
        .await;
    assert!(!first.is_error, "{}", first.text);
    assert!(first.text.contains("hello 20"), "{}", first.text);
    assert!(first.text.contains("In [1]"), "{}", first.text);

    let second = a
        .call(
            "cell_insert",
            json!({"path": nb, "source": "x * 2 + 2", "execute": true}),
        )
        .await;
    assert!(
        second.text.contains("Out[2]: 42"),
        "state was not kept: {}",
        second.text
    );
    // Another spelling of the path names the same notebook and the same kernel.
    let spelled = a
        .call(
            "code_execute",
            json!({"code": "x + 1", "kernel": "./work//analysis.ipynb"}),
        )
        .await;
    assert!(
        spelled.text.contains("21"),
        "./work//analysis.ipynb got a kernel of its own: {}",
        spelled.text
    );

    let code = format!(
        "import base64\nfrom IPython.display import Image, display\ndisplay('shown')\ndisplay(Image(data=base64.b64decode('{PNG}')))"
    );
    a.ok("cell_insert", json!({"path": nb, "source": code}))
        .await;
    let image = call_raw(&a, "cell_execute", json!({"path": nb, "cell": -1})).await;
    assert_ne!(image["isError"], true, "{image}");
    let blocks = image["content"].as_array().expect("content");
    assert!(
        blocks
            .iter()
            .any(|b| b["type"] == "image" && b["mimeType"] == "image/png" && b["data"] == PNG),
        "no PNG image content in {image}"
    );
    assert!(content_text(&image).contains("'shown'"), "{image}");

    a.ok(
        "cell_insert",
        json!({"path": nb, "source": "def f():\n    return 1/0\nf()"}),
    )
    .await;
    let error = a.call("cell_execute", json!({"path": nb, "cell": 4})).await;
    assert!(
        !error.is_error,
        "an exception is an outcome, not a tool error: {}",
        error.text
    );
    assert!(
        error.text.contains("ZeroDivisionError: division by zero"),
        "{}",
        error.text
    );
    assert!(
        error.text.contains("return 1/0"),
        "traceback missing: {}",
        error.text
    );
    assert!(
        !error.text.contains('\u{1b}'),
        "ANSI codes left in: {:?}",
        error.text
    );
    assert_eq!(error.value["runs"][0]["status"], "error");

    let read = a.call("notebook_read", json!({"path": nb})).await;
    assert!(read.text.contains("# Title"), "{}", read.text);
    assert!(read.text.contains("hello 20"), "{}", read.text);
    assert!(read.text.contains("image/png"), "{}", read.text);
    let one = call_raw(&a, "cell_read", json!({"path": nb, "cell": 3})).await;
    assert!(
        one["content"]
            .as_array()
            .expect("content")
            .iter()
            .any(|b| b["type"] == "image"),
        "{one}"
    );

    // The file: outputs and counts stored, valid nbformat, runs under nbconvert unchanged.
    let content = notebook_file(&a, nb).await;
    let file: Value = serde_json::from_str(&content).expect("the notebook is JSON");
    assert_eq!(file["nbformat"], 4);
    let cells = file["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 5);
    assert_eq!(cells[1]["execution_count"], 1);
    assert_eq!(joined(&cells[1]["outputs"][0]["text"]), "hello 20\n");
    assert_eq!(joined(&cells[2]["outputs"][0]["data"]["text/plain"]), "42");
    assert_eq!(
        joined(&cells[3]["outputs"][1]["data"]["image/png"]).trim(),
        PNG
    );
    assert_eq!(cells[4]["outputs"][0]["ename"], "ZeroDivisionError");
    let verdict = check_with_nbformat_and_nbconvert(&p, &content);
    assert_eq!(verdict["cells"], 5, "{verdict}");

    // Cell moves, edits and deletes keep the file valid too.
    a.ok("cell_move", json!({"path": nb, "cell": 0, "to": 4}))
        .await;
    a.ok(
        "cell_edit",
        json!({"path": nb, "cell": 0, "source": "y = 1"}),
    )
    .await;
    a.ok("cell_delete", json!({"path": nb, "cell": 2})).await;
    let content = notebook_file(&a, nb).await;
    let verdict = check_with_nbformat_and_nbconvert(&p, &content);
    assert_eq!(verdict["cells"], 4, "{verdict}");

    let whole = a
        .call(
            "notebook_execute",
            json!({"path": nb, "stop_on_error": false}),
        )
        .await;
    assert!(!whole.is_error, "{}", whole.text);
    let statuses: Vec<Value> = whole.value["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        vec![json!("ok"), json!("ok"), json!("error")],
        "{}",
        whole.text
    );

    let listed = a.ok("notebook_list", json!({})).await;
    assert_eq!(listed["notebooks"][0]["path"], nb, "{listed}");
    let kernels = a.ok("kernel_list", json!({})).await;
    assert_eq!(kernels["kernels"][0]["id"], nb, "{kernels}");
    assert!(
        kernels["kernels"][0]["memory_bytes"].as_u64().unwrap_or(0) > 10 << 20,
        "{kernels}"
    );
    assert!(
        kernels["specs"]
            .as_array()
            .expect("specs")
            .iter()
            .any(|s| s["name"] == "python3"),
        "{kernels}"
    );
}

/// A loop that never ends is stopped at the timeout with its state kept; kernel_interrupt stops
/// a long call; kernel_restart clears the state; a kernel that dies is reported, stays dead
/// until restarted, and comes back on kernel_restart.
#[tokio::test]
async fn timeouts_interrupts_restarts_and_deaths() {
    let (hub, _p) = hub_with_kernels("");
    let a = hub.user_session("alice", &[]).await;

    // A caller that asked for progress hears every second that its code still runs.
    let events = a
        .call_streamed(
            "code_execute",
            json!({"code": "import time\ntime.sleep(2.5)\n'slept'"}),
        )
        .await;
    let ticks = events
        .iter()
        .filter(|e| {
            e["method"] == "notifications/progress" && e["params"]["progressToken"] == "tok"
        })
        .count();
    assert!(ticks >= 2, "{ticks} progress notifications: {events:?}");
    let last = events.last().expect("a reply");
    assert!(
        last["result"]["content"].to_string().contains("slept"),
        "{last}"
    );

    // Output beyond the profile's output_cap (1 MiB) is cut, with a note saying so.
    let (text, big) = run(&a, "scratch", "print('x' * 3_000_000)", 30.0).await;
    assert_eq!(big["truncated"], true, "{big}");
    assert!(
        text.contains("bytes of output dropped"),
        "no note: {}",
        &text[text.len() - 200..]
    );
    assert!(text.len() < 1_100_000, "{} bytes came back", text.len());

    let (_, set) = run(&a, "scratch", "kept = 'still here'", 30.0).await;
    assert_eq!(set["status"], "ok", "{set}");
    let started = Instant::now();
    let (text, spin) = run(&a, "scratch", "while True:\n    pass", 2.0).await;
    assert_eq!(spin["status"], "timed_out", "{text}");
    assert!(text.contains("KeyboardInterrupt"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (text, _) = run(&a, "scratch", "kept", 30.0).await;
    assert!(
        text.contains("still here"),
        "state lost at the timeout: {text}"
    );

    // kernel_interrupt reaches a call that is still running.
    let sleeper = {
        let a = a.clone();
        tokio::spawn(async move { run(&a, "scratch", "import time\ntime.sleep(60)", 90.0).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let interrupted = a
        .call("kernel_interrupt", json!({"kernel": "scratch"}))
        .await;
    assert!(!interrupted.is_error, "{}", interrupted.text);
    let (text, slept) = sleeper.await.expect("join");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(slept["status"], "error", "{text}");
    assert!(text.contains("KeyboardInterrupt"), "{text}");

    let restarted = a.call("kernel_restart", json!({"kernel": "scratch"})).await;
    assert!(!restarted.is_error, "{}", restarted.text);
    let (text, gone) = run(&a, "scratch", "kept", 30.0).await;
    assert_eq!(gone["status"], "error", "{text}");
    assert!(
        text.contains("NameError"),
        "state survived a restart: {text}"
    );

    // A kernel that dies.
    let died = a
        .call(
            "code_execute",
            json!({"code": "import os\nos._exit(3)", "kernel": "scratch"}),
        )
        .await;
    assert!(died.is_error, "{}", died.text);
    assert!(
        died.text.contains("died") && died.text.contains("code 3"),
        "{}",
        died.text
    );
    let dead = a
        .call("code_execute", json!({"code": "1", "kernel": "scratch"}))
        .await;
    assert!(
        dead.is_error && dead.text.contains("kernel_restart"),
        "{}",
        dead.text
    );
    let listed = a.ok("kernel_list", json!({})).await;
    assert_eq!(listed["kernels"][0]["state"], "dead", "{listed}");
    a.ok("kernel_restart", json!({"kernel": "scratch"})).await;
    let (text, back) = run(&a, "scratch", "6 * 7", 30.0).await;
    assert_eq!(back["status"], "ok", "{text}");
    assert!(text.contains("42"), "{text}");
}

/// Edits made outside Lodge are never overwritten blindly: a stale revision is refused, and a
/// cell edited while it ran keeps the edit (the outputs are returned, not saved). Hostile paths
/// are refused.
#[tokio::test]
async fn outside_edits_are_detected_and_paths_confined() {
    let (hub, _p) = hub_with_kernels("");
    let a = hub.user_session("alice", &[]).await;
    let nb = "edit.ipynb";
    a.ok("notebook_create", json!({"path": nb})).await;
    let inserted = a
        .ok(
            "cell_insert",
            json!({"path": nb, "source": "import time\ntime.sleep(3)\n'done'"}),
        )
        .await;
    let revision = inserted["revision"].as_str().expect("revision").to_owned();

    // Someone edits the file outside Lodge (here through the file tools).
    let content = notebook_file(&a, nb).await;
    a.ok(
        "fs_write",
        json!({"path": nb, "content": content.replace("'done'", "'edited outside'")}),
    )
    .await;
    let stale = a
        .call(
            "cell_edit",
            json!({"path": nb, "cell": 0, "source": "1", "revision": revision}),
        )
        .await;
    assert!(
        stale.is_error && stale.text.contains("changed since revision"),
        "{}",
        stale.text
    );

    // An edit while the cell runs: the outputs come back but the edit stays.
    let runner = {
        let a = a.clone();
        tokio::spawn(async move { a.call("cell_execute", json!({"path": nb, "cell": 0})).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.ok(
        "fs_edit",
        json!({"path": nb, "old_text": "edited outside", "new_text": "edited during the run"}),
    )
    .await;
    let ran = runner.await.expect("join");
    assert!(ran.text.contains("edited outside"), "{}", ran.text);
    assert!(ran.text.contains("not saved"), "{}", ran.text);
    let after = notebook_file(&a, nb).await;
    assert!(
        after.contains("edited during the run"),
        "the outside edit was lost: {after}"
    );

    for hostile in [
        "../escape.ipynb",
        "/etc/x.ipynb",
        "a/../../b.ipynb",
        "link.ipynb",
    ] {
        if hostile == "link.ipynb" {
            a.sh("ln -s /etc/passwd link.ipynb").await;
        }
        let r = a.call("notebook_read", json!({"path": hostile})).await;
        assert!(r.is_error, "{hostile} was read: {}", r.text);
        let r = a
            .call(
                "notebook_create",
                json!({"path": hostile, "overwrite": true}),
            )
            .await;
        assert!(r.is_error, "{hostile} was written: {}", r.text);
    }
    let not_nb = a.call("notebook_read", json!({"path": "x.txt"})).await;
    assert!(
        not_nb.is_error && not_nb.text.contains(".ipynb"),
        "{}",
        not_nb.text
    );
}

/// Alice's and Bob's kernels are separate: variables, files and processes, and two executions
/// at once each get their own result.
#[tokio::test]
async fn users_kernels_are_private() {
    let (hub, _p) = hub_with_kernels("");
    let a = hub.user_session("alice", &[]).await;
    let b = hub.user_session("bob", &[]).await;
    a.ok(
        "fs_write",
        json!({"path": "alice-only.txt", "content": "a"}),
    )
    .await;
    run(&a, "scratch", "secret = 'alice-data'", 30.0).await;

    let both = ["alice", "bob"].map(|who| {
        let m = if who == "alice" { a.clone() } else { b.clone() };
        let code = format!("import time\nme = '{who}'\ntime.sleep(1)\nme");
        tokio::spawn(async move { run(&m, "scratch", &code, 30.0).await })
    });
    let [alice, bob] = both;
    let (alice, bob) = (alice.await.expect("join"), bob.await.expect("join"));
    assert!(alice.0.contains("'alice'"), "{}", alice.0);
    assert!(bob.0.contains("'bob'"), "{}", bob.0);

    let (text, r) = run(&b, "scratch", "secret", 30.0).await;
    assert_eq!(r["status"], "error", "{text}");
    assert!(text.contains("NameError"), "{text}");
    let (text, _) = run(
        &b,
        "scratch",
        "import os\nos.path.exists('/workspace/alice-only.txt')",
        30.0,
    )
    .await;
    assert!(text.contains("False"), "{text}");
    let (text, _) = run(
        &b,
        "scratch",
        "import os\nsorted(open(f'/proc/{p}/cmdline').read().replace(chr(0), ' ') for p in os.listdir('/proc') if p.isdigit())",
        30.0,
    )
    .await;
    assert!(
        !text.contains("alice"),
        "bob sees alice's processes: {text}"
    );
    let bobs = b.ok("kernel_list", json!({})).await;
    assert_eq!(bobs["kernels"].as_array().map(Vec::len), Some(1), "{bobs}");
}

/// kernels.max_per_user is enforced with an error naming it, and idle kernels are shut down.
#[tokio::test]
async fn kernel_limits_and_idle_culling() {
    let (hub, _p) = hub_with_kernels("max_per_user = 2\nidle_timeout = \"3s\"");
    let a = hub.user_session("alice", &[]).await;
    run(&a, "one", "1", 30.0).await;
    run(&a, "two", "2", 30.0).await;
    let third = a
        .call("code_execute", json!({"code": "3", "kernel": "three"}))
        .await;
    assert!(
        third.is_error && third.text.contains("kernels.max_per_user"),
        "{}",
        third.text
    );
    let bad = a
        .call("code_execute", json!({"code": "3", "kernel": "../x"}))
        .await;
    assert!(bad.is_error, "{}", bad.text);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = a.ok("kernel_list", json!({})).await;
        if listed["kernels"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle kernels were not culled: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A room with a kernel is not culled at the room's own idle timeout (the kernel would die
/// with it); once the kernel's idle timeout has passed, kernel and room go.
#[tokio::test]
async fn a_room_outlives_its_idle_timeout_while_a_kernel_may_live() {
    let p = Peers::get();
    let config = format!(
        "[sessions]\nflush_interval = \"200ms\"\n\n[rooms]\nread_only_paths = [\"{dir}\"]\nidle_timeout = \"1s\"\n\n[kernels]\npaths = [\"{data}\"]\nidle_timeout = \"5s\"\n",
        dir = p.dir.display(),
        data = p.jupyter_data().display(),
    );
    let hub = TestHub::start_with_config(&config, &[]);
    let a = hub.user_session("alice", &[]).await;
    run(&a, "scratch", "x = 'kept'", 30.0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (text, r) = run(&a, "scratch", "x", 30.0).await;
    assert_eq!(
        r["status"], "ok",
        "the room was culled under a live kernel: {text}"
    );
    tokio::time::sleep(Duration::from_secs(9)).await;
    let (text, r) = run(&a, "scratch", "x", 30.0).await;
    assert_eq!(r["status"], "error", "the idle kernel was kept: {text}");
    assert!(text.contains("NameError"), "{text}");
}

/// A kernel counts against its room's memory limit: one that allocates past it is killed by the
/// room's OOM killer (not the agent, not the hub), reported dead, and restartable.
#[tokio::test]
async fn a_kernel_past_the_rooms_memory_limit_is_killed_alone() {
    let (hub, _p) = hub_with_kernels("\n[profiles.default]\nmemory = \"400MiB\"\n");
    let a = hub.user_session("alice", &[]).await;
    run(&a, "hog", "1", 30.0).await;
    let hog = a
        .call(
            "code_execute",
            json!({"code": "blocks = [bytearray(64 << 20) for _ in range(32)]", "kernel": "hog"}),
        )
        .await;
    assert!(hog.is_error, "{}", hog.text);
    assert!(
        hog.text.contains("died") && hog.text.contains("signal 9"),
        "{}",
        hog.text
    );
    // The room (its agent) survived: files still work, and the kernel comes back.
    a.ok("fs_write", json!({"path": "after.txt", "content": "ok"}))
        .await;
    a.ok("kernel_restart", json!({"kernel": "hog"})).await;
    let (text, r) = run(&a, "hog", "40 + 2", 30.0).await;
    assert_eq!(r["status"], "ok", "{text}");
    let health = common::http()
        .get(format!("{}/api/health", hub.base))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
}

/// Kernelspecs are found in the room, the user's own first: one written into the workspace
/// (as `ipykernel install --user` would) is listed and runs, and a notebook created for it
/// starts its kernel from it.
#[tokio::test]
async fn a_users_own_kernelspec_is_found_and_runs() {
    let (hub, p) = hub_with_kernels("");
    let a = hub.user_session("alice", &[]).await;
    let spec = json!({
        "argv": [p.jupyter_python(), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Alice's Python",
        "language": "python",
        "env": {"ALICE_KERNEL": "yes"},
    });
    a.ok(
        "fs_write",
        json!({"path": ".local/share/jupyter/kernels/alices/kernel.json",
               "content": spec.to_string(), "create_dirs": true}),
    )
    .await;
    let listed = a.ok("kernel_list", json!({})).await;
    let names: Vec<&str> = listed["specs"]
        .as_array()
        .expect("specs")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        names.contains(&"alices") && names.contains(&"python3"),
        "{listed}"
    );

    a.ok(
        "notebook_create",
        json!({"path": "mine.ipynb", "kernel": "alices"}),
    )
    .await;
    let ran = a
        .call(
            "cell_insert",
            json!({"path": "mine.ipynb", "execute": true,
                   "source": "import os\nos.environ.get('ALICE_KERNEL')"}),
        )
        .await;
    assert!(
        ran.text.contains("'yes'"),
        "not started from alice's spec: {}",
        ran.text
    );
    let kernels = a.ok("kernel_list", json!({})).await;
    assert_eq!(kernels["kernels"][0]["name"], "alices", "{kernels}");
}

/// Issue 12 finding 15: a room without kernelspecs gets a hint that can work in that room. A
/// room without network (the default) cannot pip install anything, so it is sent to the
/// operator's Debian package; a room with network may make its own venv.
#[tokio::test]
async fn a_room_without_kernelspecs_gets_a_hint_that_works_there() {
    // No system kernelspecs, whatever this machine has installed, and no operator paths.
    let hub = TestHub::start_with_config(
        "[kernels]\nsystem_paths = []\n[profiles.online]\nnetwork = \"host\"\n",
        &[],
    );
    let offline = hub.user_session("offline", &[]).await;
    let online = hub.user_session("online", &["--profile", "online"]).await;

    for (tool, args) in [
        ("notebook_create", json!({"path": "a.ipynb"})),
        ("code_execute", json!({"code": "1"})),
    ] {
        let e = offline.err(tool, args.clone()).await;
        assert!(
            e.contains("this room has no Jupyter kernelspecs"),
            "{tool}: {e}"
        );
        assert!(e.contains("no network"), "{tool}: {e}");
        assert!(
            e.contains("apt-get install python3-ipykernel"),
            "{tool}: {e}"
        );
        assert!(
            !e.contains("pip install"),
            "{tool}: pip cannot work here: {e}"
        );

        let e = online.err(tool, args).await;
        assert!(
            e.contains("this room has no Jupyter kernelspecs"),
            "{tool}: {e}"
        );
        assert!(
            e.contains("python3 -m venv ~/.venv && ~/.venv/bin/pip install ipykernel"),
            "{tool}: {e}"
        );
        assert!(!e.contains("no network"), "{tool}: {e}");
    }
    // The offline room really has no network, so its hint's premise holds.
    let r = offline
        .sh("python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 53), 3)'")
        .await;
    assert_ne!(r["exit_code"], 0, "{r}");
}
