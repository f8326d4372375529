//! Rooms end to end, through the real hub binary, real bubblewrap sandboxes and real HTTP:
//! the file and command tools, progress notifications, and the room lifecycle (shared by
//! sessions, culled when idle, restarted after dying, limited in number, stopped with the hub).

mod common;

use common::{Mcp, TestHub, mounts_below};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn file_tools_round_trip() {
    let hub = TestHub::start();
    let a = hub.user_session("fa", &[]).await;
    a.ok(
        "fs_write",
        json!({"path": "src/main.py", "content": "print('hi')\nx = 1\n"}),
    )
    .await;
    let page = a.ok("fs_read", json!({"path": "src/main.py"})).await;
    assert_eq!(page["content"], "print('hi')\nx = 1\n");
    assert_eq!(page["eof"], true);

    // Paged reads: 5 bytes at a time, following next_offset, give the whole file back.
    let mut offset = 0;
    let mut whole = String::new();
    loop {
        let p = a
            .ok(
                "fs_read",
                json!({"path": "src/main.py", "offset": offset, "limit": 5}),
            )
            .await;
        whole.push_str(p["content"].as_str().expect("content"));
        if p["eof"] == true {
            break;
        }
        offset = p["next_offset"].as_u64().expect("next_offset");
    }
    assert_eq!(whole, "print('hi')\nx = 1\n");

    let edited = a
        .ok(
            "fs_edit",
            json!({"path": "src/main.py", "old_text": "x = 1", "new_text": "x = 2"}),
        )
        .await;
    assert_eq!(edited["replacements"], 1);
    a.ok("fs_mkdir", json!({"path": "docs/notes"})).await;
    a.ok(
        "fs_move",
        json!({"from": "src/main.py", "to": "docs/main.py"}),
    )
    .await;
    let listing = a.ok("fs_list", json!({"recursive": true})).await;
    let paths: Vec<&str> = listing["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(paths.contains(&"docs/main.py"), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.starts_with("src/main")),
        "{paths:?}"
    );

    let found = a
        .ok("fs_search", json!({"glob": "**/*.py", "text": "x = 2"}))
        .await;
    assert_eq!(found["matches"][0]["path"], "docs/main.py", "{found}");
    assert_eq!(found["matches"][0]["line"], 2, "{found}");

    a.ok("fs_delete", json!({"path": "docs", "recursive": true}))
        .await;
    let e = a.err("fs_read", json!({"path": "docs/main.py"})).await;
    assert!(e.contains("does not exist"), "{e}");

    // Bad input is a tool error that says what was wrong.
    let e = a.err("fs_write", json!({"path": "x"})).await;
    assert!(e.contains("content"), "{e}");
    let e = a
        .err(
            "fs_edit",
            json!({"path": "nope.txt", "old_text": "a", "new_text": "b"}),
        )
        .await;
    assert!(e.contains("nope.txt"), "{e}");
}

#[tokio::test]
async fn run_command_reports_exit_output_and_limits() {
    let hub = TestHub::start();
    let a = hub.user_session("ca", &[]).await;
    let r = a.sh("echo out; echo err >&2; exit 3").await;
    assert_eq!(r["exit_code"], 3, "{r}");
    assert_eq!(r["stdout"], "out\n");
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(r["timed_out"], false);
    assert!(r["duration_ms"].is_u64());

    // The workspace is the working directory, shared with the file tools; cwd and env apply.
    a.ok("fs_write", json!({"path": "sub/f.txt", "content": "data"}))
        .await;
    let r = a
        .ok(
            "run_command",
            json!({"command": "cat f.txt; pwd; echo \"$GREETING\"", "cwd": "sub", "env": {"GREETING": "hello"}}),
        )
        .await;
    assert_eq!(r["stdout"], "data/workspace/sub\nhello\n", "{r}");

    // A timeout kills the command even when it ignores SIGTERM.
    let started = Instant::now();
    let r = a
        .ok(
            "run_command",
            json!({"command": "trap '' TERM; sleep 60", "timeout_s": 1}),
        )
        .await;
    assert_eq!(r["timed_out"], true, "{r}");
    assert!(started.elapsed() < Duration::from_secs(10), "{r}");

    // Output beyond the cap is cut and flagged, and the command still finishes.
    let r = a.sh("head -c 5000000 /dev/zero | tr '\\0' x").await;
    assert_eq!(r["stdout_truncated"], true, "{}", r["stdout_truncated"]);
    assert_eq!(r["exit_code"], 0);
    assert!(r["stdout"].as_str().expect("stdout").len() <= 1 << 20);

    let e = a
        .err("run_command", json!({"command": "true", "cwd": "../.."}))
        .await;
    assert!(e.contains(".."), "{e}");
    let e = a
        .err("run_command", json!({"command": "true", "timeout_s": -1}))
        .await;
    assert!(e.contains("timeout_s"), "{e}");
    let e = a
        .err(
            "run_command",
            json!({"command": "true", "timeout_s": 99999}),
        )
        .await;
    assert!(e.contains("maximum"), "{e}");
}

/// With a `progressToken`, a long command streams `notifications/progress` before its result.
#[tokio::test]
async fn long_commands_stream_progress() {
    let hub = TestHub::start();
    let a = hub.user_session("pa", &[]).await;
    let messages = a
        .call_streamed("run_command", json!({"command": "sleep 2.5; echo done"}))
        .await;
    let text = format!("{messages:?}");
    let (last, progress) = messages.split_last().expect("events");
    assert!(progress.len() >= 2, "expected progress events, got {text}");
    for p in progress {
        assert_eq!(p["method"], "notifications/progress", "{p}");
        assert_eq!(p["params"]["progressToken"], "tok");
    }
    assert_eq!(last["id"], 9);
    assert_eq!(
        last["result"]["structuredContent"]["stdout"], "done\n",
        "{last}"
    );
}

/// All of a user's sessions, and stateless requests, reach one room.
#[tokio::test]
async fn one_room_serves_all_sessions_of_a_user() {
    let hub = TestHub::start();
    let a1 = hub.user_session("sa", &[]).await;
    let a2 = Mcp {
        sid: common::open_session(&a1.url, &a1.token).await,
        ..a1.clone()
    };
    a1.sh("sleep 300 >/dev/null 2>&1 & echo $! > /tmp/bg.pid")
        .await;
    a1.ok("fs_write", json!({"path": "shared.txt", "content": "one"}))
        .await;
    assert_eq!(
        a2.ok("fs_read", json!({"path": "shared.txt"})).await["content"],
        "one"
    );
    // The same /tmp means the same room (a second room would have a fresh /tmp).
    let r = a2.sh("cat /tmp/bg.pid").await;
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(metric(&hub, "lodge_rooms_running").await, 1.0);
    // session_info shows the running room and the profile's limits.
    let info = a2.ok("session_info", json!({})).await;
    assert!(info["room"]["up_for_s"].is_u64(), "{info}");
    assert_eq!(info["limits"]["memory"], "1GiB", "{info}");
    assert_eq!(info["limits"]["network"], "none", "{info}");
}

#[tokio::test]
async fn idle_rooms_are_culled_and_start_again() {
    let hub = TestHub::start_env(&[
        ("LODGE_ROOMS_IDLE_TIMEOUT", "1s"),
        ("LODGE_SESSIONS_FLUSH_INTERVAL", "200ms"),
    ]);
    let a = hub.user_session("ia", &[]).await;
    a.sh("echo first > /tmp/marker").await;
    assert_eq!(metric(&hub, "lodge_rooms_running").await, 1.0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&hub, "lodge_rooms_running").await != 0.0 {
        assert!(Instant::now() < deadline, "idle room was not culled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A new room: /tmp is fresh, the workspace persists.
    let r = a.sh("test -e /tmp/marker; echo $?").await;
    assert_eq!(r["stdout"], "1\n", "{r}");
}

/// A room whose agent dies gives the caller a clear error at once, and the next call gets a
/// new room.
#[tokio::test]
async fn a_dead_room_is_reported_and_restarted() {
    let hub = TestHub::start();
    let a = hub.user_session("da", &[]).await;
    a.ok("fs_write", json!({"path": "keep.txt", "content": "kept"}))
        .await;
    let started = Instant::now();
    // The shell's parent is the agent: killing it kills the room under this very call.
    let e = a
        .err("run_command", json!({"command": "kill -9 $PPID; sleep 30"}))
        .await;
    assert!(e.contains("room"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "caller waited too long"
    );
    assert_eq!(
        a.ok("fs_read", json!({"path": "keep.txt"})).await["content"],
        "kept"
    );
}

#[tokio::test]
async fn max_users_active_is_enforced_with_a_clear_error() {
    let hub = TestHub::start_env(&[("LODGE_ROOMS_MAX_USERS_ACTIVE", "1")]);
    let a = hub.user_session("ma", &[]).await;
    let b = hub.user_session("mb", &[]).await;
    a.sh("true").await;
    let e = b.err("run_command", json!({"command": "true"})).await;
    assert!(e.contains("max_users_active"), "{e}");
    // session_info needs no room and still works.
    b.ok("session_info", json!({})).await;
}

/// Stopping the hub stops its rooms at once: a command still running ends with an error
/// instead of holding the shutdown for its whole timeout, and no room process outlives it.
#[tokio::test]
async fn rooms_stop_with_the_hub() {
    let before = cgroups_named("-za");
    let mut hub = TestHub::start();
    let a = hub.user_session("za", &[]).await;
    let long = {
        let a = a.clone();
        tokio::spawn(async move {
            a.call(
                "run_command",
                json!({"command": "sleep 600", "timeout_s": 900}),
            )
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::pids_matching("sleep 600").is_empty() {
        assert!(Instant::now() < deadline, "the command did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !common::pids_matching("lodge-za").is_empty(),
        "room not found in /proc"
    );
    let started = Instant::now();
    hub.stop();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    let r = long.await.expect("call task");
    assert!(r.is_error && r.text.contains("room"), "{r:?}");
    // The hub waited for its rooms to be cleaned up before exiting.
    let left: Vec<_> = cgroups_named("-za")
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(left.is_empty(), "room cgroups left behind: {left:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !common::pids_matching("lodge-za").is_empty() {
        assert!(
            Instant::now() < deadline,
            "room outlived the hub: {:?}",
            common::pids_matching("lodge-za")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A user name reused after `user remove` without `--purge` does not inherit the removed
/// user's workspace.
#[tokio::test]
async fn a_reused_name_never_inherits_a_removed_users_workspace() {
    let hub = TestHub::start();
    let old = hub.user_session("ru", &[]).await;
    old.ok("fs_write", json!({"path": "private.txt", "content": "old"}))
        .await;
    hub.ok(&["user", "remove", "ru"]);
    let new = hub.user_session("ru", &[]).await;
    let e = new.err("fs_read", json!({"path": "private.txt"})).await;
    assert!(e.contains("removed user"), "{e}");
    assert!(!e.contains("old"), "{e}");
}

#[tokio::test]
async fn isolation_none_runs_rooms_without_a_sandbox() {
    let hub = TestHub::start_env(&[("LODGE_ROOMS_ISOLATION", "none")]);
    let a = hub.user_session("na", &[]).await;
    a.ok("fs_write", json!({"path": "f.txt", "content": "plain"}))
        .await;
    let r = a.sh("cat f.txt").await;
    assert_eq!(r["stdout"], "plain", "{r}");
    // Without a sandbox the workspace is the host directory itself.
    let ws = hub.dir.join("workspaces/na/f.txt");
    assert_eq!(std::fs::read_to_string(ws).expect("host file"), "plain");
}

/// Room cgroup directories (`lodge-<instance>-<user>`) whose name ends with `suffix`, in any
/// controller hierarchy, a few levels deep.
fn cgroups_named(suffix: &str) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, depth: usize, suffix: &str, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && name.starts_with("lodge-") && name.ends_with(suffix) {
                out.push(e.path());
            } else if is_dir && depth > 0 {
                walk(&e.path(), depth - 1, suffix, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(std::path::Path::new("/sys/fs/cgroup"), 4, suffix, &mut out);
    out
}

/// A gauge's value from /api/metrics (0 when the gauge is absent).
async fn metric(hub: &TestHub, name: &str) -> f64 {
    let text = hub.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `user remove --purge` deletes the workspace (unmounting its quota volume) and room state.
#[tokio::test]
async fn purge_removes_the_workspace_volume() {
    let hub = TestHub::start();
    let a = hub.user_session("pu", &[]).await;
    a.ok("fs_write", json!({"path": "f.txt", "content": "x"}))
        .await;
    let ws = hub.dir.join("workspaces/pu");
    let mounted = |p: &std::path::Path| !common::mounts_below(p).is_empty();
    assert!(
        mounted(&ws),
        "the default profile's disk quota mounts a volume"
    );
    hub.ok(&["user", "remove", "pu", "--purge"]);
    assert!(!ws.exists(), "workspace survived the purge");
    assert!(
        !hub.dir.join("rooms/pu").exists(),
        "room state survived the purge"
    );
    assert!(!mounted(&ws), "volume still mounted");
}

/// Loop devices whose backing file lies below `dir`.
fn loop_devices_below(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            backing
                .trim()
                .starts_with(dir.to_str()?)
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// `lodge doctor --json`'s "room leftovers" check.
fn leftovers_check(hub: &TestHub) -> serde_json::Value {
    let out = hub.lodge(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "room leftovers")
        .cloned()
        .expect("a room leftovers check")
}

/// A hub killed with SIGKILL takes its rooms with it (bwrap dies with its parent) but never
/// runs their stop path, so their quota volumes stay mounted and their cgroups stay. `lodge
/// doctor` names them; the next hub on the same DATA_DIR removes them before it serves, and
/// the users' files are all there on their next call.
#[tokio::test]
async fn a_killed_hubs_room_leftovers_are_reported_and_removed_by_the_next_hub() {
    let mut hub = TestHub::start();
    let dir = std::fs::canonicalize(&hub.dir).expect("data dir");
    let users = ["kleft1", "kleft2"];
    for name in users {
        let s = hub.user_session(name, &[]).await;
        s.ok("fs_write", json!({"path": "f.txt", "content": name}))
            .await;
    }
    assert_eq!(mounts_below(&dir).len(), 2, "{:?}", mounts_below(&dir));
    assert_eq!(loop_devices_below(&dir).len(), 2);
    hub.kill();

    // Once the rooms are dead, doctor reports what they left (live rooms are never listed).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let check = loop {
        let check = leftovers_check(&hub);
        let detail = check["detail"].as_str().unwrap_or_default().to_owned();
        if users
            .iter()
            .all(|u| detail.contains(&format!("workspaces/{u}")))
        {
            break check;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "doctor did not report the dead rooms' mounts: {check}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(check["status"], "degraded", "{check}");
    let detail = check["detail"].as_str().unwrap_or_default();
    for u in users {
        assert!(detail.contains(&format!("-{u}")), "cgroup of {u}: {check}");
    }
    assert_eq!(mounts_below(&dir).len(), 2, "the kill unmounted nothing");

    // The next hub sweeps before it prints its ready line.
    hub.spawn();
    assert!(
        mounts_below(&dir).is_empty(),
        "mounts survived the restart: {:?}",
        mounts_below(&dir)
    );
    // A loop device goes with the last mount of its volume. Rooms of the tests running beside
    // this one were started while the volumes were mounted, so their namespaces hold copies
    // until they stop (seconds, in this test binary).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !loop_devices_below(&dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "loop devices survived the restart: {:?}",
            loop_devices_below(&dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for u in users {
        assert!(cgroups_named(&format!("-{u}")).is_empty(), "cgroup of {u}");
    }
    assert_eq!(leftovers_check(&hub)["status"], "ok");

    // Nothing of the users' was lost.
    for name in users {
        let token = hub.token(name, &[]);
        let url = hub.mcp_url();
        let sid = common::open_session(&url, &token).await;
        let s = Mcp { url, token, sid };
        let r = s.ok("fs_read", json!({"path": "f.txt"})).await;
        assert!(r.to_string().contains(name), "{r}");
    }
}
