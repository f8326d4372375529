//! Attacks on rooms (issue 3, docs/security.md): hostile paths through the file tools, and
//! hostile commands through `run_command`, against a real hub with real bubblewrap rooms.
//! Each attack checks that it failed AND that the hub and the other user carry on.

mod common;

use common::{Mcp, TestHub};
use serde_json::json;
use std::time::{Duration, Instant};

/// A profile small enough that the resource attacks hit its limits quickly.
const TIGHT: &str = r#"
[profiles.tight]
memory = "128MiB"
cpus = 0.5
pids = 64
disk = "32MiB"
command_timeout = "20s"
# The symlink race calls as fast as it can; the request budget is not under test here.
requests_per_second = 100000
request_burst = 100000
"#;

/// A hub with alice and bob on the tight profile.
async fn two_users() -> (TestHub, Mcp, Mcp) {
    let hub = TestHub::start_with_config(TIGHT, &[]);
    let alice = hub.user_session("alice", &["--profile", "tight"]).await;
    let bob = hub.user_session("bob", &["--profile", "tight"]).await;
    // Both rooms running, with something private in each.
    alice
        .ok(
            "fs_write",
            json!({"path": "secret.txt", "content": "alice-only"}),
        )
        .await;
    bob.ok(
        "fs_write",
        json!({"path": "secret.txt", "content": "bob-only"}),
    )
    .await;
    (hub, alice, bob)
}

/// The other user still works, and sees only their own file.
async fn still_fine(user: &Mcp, expected: &str) {
    let started = Instant::now();
    let r = user.ok("fs_read", json!({"path": "secret.txt"})).await;
    assert_eq!(r["content"], expected);
    let r = user.sh("echo alive").await;
    assert_eq!(r["stdout"], "alive\n", "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the other user's calls took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn hostile_paths_stay_inside_the_workspace() {
    let (hub, alice, bob) = two_users().await;
    let bob_ws = hub.dir.join("workspaces/bob");
    // Links made from inside the room, pointing out of it.
    alice
        .sh(&format!(
            "ln -s /etc etc-link; ln -s /etc/passwd passwd-link; ln -s {} bob-link; \
             ln -s ../../.. up-link; echo x > own.txt; ln own.txt hard.txt",
            bob_ws.display()
        ))
        .await;
    let long = "a".repeat(300);
    let deep = "d/".repeat(3000);
    let cases: Vec<(&str, String)> = vec![
        ("fs_read", "../bob/secret.txt".into()),
        ("fs_read", "../../lodge.db".into()),
        ("fs_read", "/etc/passwd".into()),
        ("fs_read", format!("{}/secret.txt", bob_ws.display())),
        ("fs_read", "etc-link/passwd".into()),
        ("fs_read", "passwd-link".into()),
        ("fs_read", "bob-link/secret.txt".into()),
        ("fs_read", "up-link/lodge.db".into()),
        ("fs_read", "hard.txt".into()),
        ("fs_read", "/proc/self/root/etc/passwd".into()),
        ("fs_read", "proc/../../etc/passwd".into()),
        ("fs_read", "own.txt\u{0}../../etc/passwd".into()),
        ("fs_read", long),
        ("fs_read", deep),
        ("fs_write", "../escape.txt".into()),
        ("fs_write", "etc-link/evil".into()),
        ("fs_write", "bob-link/evil".into()),
        ("fs_delete", "../bob".into()),
        ("fs_list", "up-link".into()),
        ("fs_list", "..".into()),
        ("fs_mkdir", "/tmp/evil".into()),
    ];
    for (tool, path) in cases {
        let args = match tool {
            "fs_write" => json!({"path": path, "content": "pwned"}),
            _ => json!({"path": path}),
        };
        let r = alice.call(tool, args).await;
        assert!(
            r.is_error,
            "{tool} {:?} should be refused, got {}",
            path.chars().take(60).collect::<String>(),
            r.value
        );
    }
    let e = alice
        .err(
            "fs_move",
            json!({"from": "own.txt", "to": "../../moved.txt"}),
        )
        .await;
    assert!(e.contains("moved.txt") || e.contains(".."), "{e}");
    // Nothing landed outside, and bob's file is untouched.
    assert!(!hub.dir.join("escape.txt").exists());
    assert!(!hub.dir.join("moved.txt").exists());
    assert!(!bob_ws.join("evil").exists());
    still_fine(&bob, "bob-only").await;
}

/// A symlink swapped in between a check and a use (a race) still cannot lead out: the file
/// tools resolve every path in the kernel, beneath the workspace, at the moment of use.
#[tokio::test]
async fn swapping_a_symlink_during_reads_never_escapes() {
    let (_hub, alice, bob) = two_users().await;
    alice.sh("mkdir -p d && echo inside > d/f").await;
    let swapper = {
        let a = alice.clone();
        tokio::spawn(async move {
            a.ok(
                "run_command",
                json!({"command": "end=$(($(date +%s)+4)); while [ $(date +%s) -lt $end ]; do \
                        rm -rf d; ln -s /etc d; rm -f d; mkdir d; echo inside > d/f; done",
                       "timeout_s": 10}),
            )
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut reads = 0;
    while Instant::now() < deadline {
        let r = alice.call("fs_read", json!({"path": "d/f"})).await;
        if !r.is_error {
            // Empty is the moment between `echo`'s open and write; anything else escaped.
            let content = r.value["content"].as_str().unwrap_or_default();
            assert!(
                content == "inside\n" || content.is_empty(),
                "read escaped: {}",
                r.value
            );
        }
        let r = alice.call("fs_read", json!({"path": "d/passwd"})).await;
        assert!(r.is_error, "read through the swapped link: {}", r.value);
        reads += 1;
    }
    assert!(reads > 10, "only {reads} reads raced");
    swapper.await.expect("swapper");
    still_fine(&bob, "bob-only").await;
}

#[tokio::test]
async fn commands_cannot_read_host_secrets_or_other_workspaces() {
    let (hub, alice, bob) = two_users().await;
    let db = hub.dir.join("lodge.db");
    let bob_ws = hub.dir.join("workspaces/bob");
    for cmd in [
        "cat /etc/shadow".to_owned(),
        format!("cat {}", db.display()),
        format!("ls {}", hub.dir.display()),
        format!("cat {}/master.key", hub.dir.display()),
        format!("cat {}/secret.txt", bob_ws.display()),
        "cat /workspace/../bob/secret.txt".to_owned(),
        "cat /proc/1/root/etc/shadow".to_owned(),
    ] {
        let r = alice.sh(&cmd).await;
        assert_ne!(r["exit_code"], 0, "{cmd} succeeded: {r}");
        let err = r["stderr"].as_str().unwrap_or_default();
        assert!(
            err.contains("No such file") || err.contains("Permission denied"),
            "{cmd} failed for another reason: {r}"
        );
        let out = r["stdout"].as_str().unwrap_or_default();
        assert!(
            !out.contains("bob-only") && !out.contains("root:"),
            "{cmd} leaked: {out}"
        );
    }
    // What the room sees of the filesystem: its workspace, and no other user's.
    let r = alice.sh("ls /workspace; ls / | tr '\\n' ' '").await;
    let out = r["stdout"].as_str().expect("stdout");
    assert!(out.contains("secret.txt"), "{out}");
    assert!(
        !out.contains("work ") && !out.contains("root "),
        "host dirs visible: {out}"
    );
    // The file the room wrote is owned on the host by the room's own unprivileged uid.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(hub.dir.join("workspaces/alice/secret.txt")).expect("file");
    assert_ne!(meta.uid(), 0, "room files are owned by root on the host");
    still_fine(&bob, "bob-only").await;
}

#[tokio::test]
async fn commands_cannot_see_or_signal_other_processes() {
    let (hub, alice, bob) = two_users().await;
    // Bob's command runs while alice looks for it (a command's processes end with it).
    let bob_busy = {
        let b = bob.clone();
        tokio::spawn(async move { b.sh("sleep 300 & sleep 8").await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::pids_matching("sleep 300").is_empty() {
        assert!(Instant::now() < deadline, "bob's command did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hub_pid = hub.pid().expect("hub pid");
    // Only the room's own processes are visible: no hub, no bob.
    let r = alice
        .sh("for p in /proc/[0-9]*; do cat $p/cmdline | tr '\\0' ' '; echo; done")
        .await;
    let out = r["stdout"].as_str().expect("stdout");
    assert!(!out.contains("serve"), "the hub is visible: {out}");
    assert!(
        !out.contains("sleep 300"),
        "bob's process is visible: {out}"
    );
    let r = alice.sh(&format!("kill -9 {hub_pid}")).await;
    assert_ne!(r["exit_code"], 0, "{r}");
    assert!(
        r["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("No such process"),
        "{r}"
    );
    // Every pid bob could have: none is reachable from alice's room.
    let bob_pids = common::pids_matching("sleep 300");
    assert!(!bob_pids.is_empty());
    for pid in bob_pids {
        let r = alice.sh(&format!("kill -9 {pid}")).await;
        assert_ne!(r["exit_code"], 0, "signalled pid {pid}: {r}");
    }
    assert!(
        !common::pids_matching("sleep 300").is_empty(),
        "bob's process was killed"
    );
    let r = bob_busy.await.expect("bob's command");
    assert_eq!(r["exit_code"], 0, "{r}");
    still_fine(&bob, "bob-only").await;
}

#[tokio::test]
async fn commands_cannot_reach_the_hub_over_the_network() {
    let (hub, alice, bob) = two_users().await;
    let port = hub.base.rsplit(':').next().expect("port");
    let probe = format!(
        "python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', {port}), 2); print('CONNECTED')\""
    );
    let r = alice.sh(&probe).await;
    assert_ne!(r["exit_code"], 0, "{r}");
    let err = r["stderr"].as_str().unwrap_or_default();
    assert!(
        err.contains("Connection refused") || err.contains("Permission denied"),
        "the probe failed for another reason: {r}"
    );
    assert!(
        !r["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("CONNECTED")
    );
    // No interfaces but loopback.
    let r = alice.sh("cat /proc/net/dev").await;
    let out = r["stdout"].as_str().expect("stdout");
    let ifaces: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, vec!["lo"], "{out}");
    still_fine(&bob, "bob-only").await;
}

/// AF_VSOCK ignores network namespaces, so a `network = "none"` room must not open one (nor
/// other families a room does not need); the families rooms use still work.
#[tokio::test]
async fn commands_cannot_open_vsock_or_other_unneeded_socket_families() {
    let (_hub, alice, bob) = two_users().await;
    let probe = r#"python3 -c '
import socket
for name, fam, kind in [("vsock", socket.AF_VSOCK, socket.SOCK_STREAM), ("packet", socket.AF_PACKET, socket.SOCK_RAW), ("unix", socket.AF_UNIX, socket.SOCK_STREAM), ("inet", socket.AF_INET, socket.SOCK_DGRAM)]:
    try:
        socket.socket(fam, kind).close()
        print(name, "opened")
    except OSError as e:
        print(name, "refused", e.errno)
'"#;
    let r = alice.sh(probe).await;
    let out = r["stdout"].as_str().unwrap_or_default();
    let eafnosupport = 97;
    assert!(
        out.contains(&format!("vsock refused {eafnosupport}")),
        "{r}"
    );
    assert!(
        out.contains(&format!("packet refused {eafnosupport}")),
        "{r}"
    );
    assert!(out.contains("unix opened"), "{r}");
    assert!(out.contains("inet opened"), "{r}");
    still_fine(&bob, "bob-only").await;
}

#[tokio::test]
async fn a_fork_bomb_is_contained() {
    let (hub, alice, bob) = two_users().await;
    let started = Instant::now();
    let r = alice
        .ok(
            "run_command",
            json!({"command": "bomb() { bomb | bomb & }; bomb; sleep 3", "timeout_s": 8}),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(30), "{r}");
    // The bomb hit the room's process limit.
    let err = r["stderr"].as_str().unwrap_or_default();
    assert!(
        err.contains("fork") || err.contains("Resource temporarily unavailable"),
        "{r}"
    );
    still_fine(&bob, "bob-only").await;
    // The bomb's room recovers once the command's tree is gone.
    let r = alice.sh("echo recovered").await;
    assert_eq!(r["stdout"], "recovered\n", "{r}");
    assert!(hub.pid().is_some());
}

#[tokio::test]
async fn a_memory_hog_is_killed_inside_its_room_only() {
    let (_hub, alice, bob) = two_users().await;
    let r = alice
        .ok(
            "run_command",
            json!({"command": "python3 -c \"b = bytearray(600 * 1024 * 1024); print('ALLOCATED')\"", "timeout_s": 20}),
        )
        .await;
    assert!(
        !r["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("ALLOCATED"),
        "{r}"
    );
    // Killed by the kernel's OOM killer inside the room's cgroup (or refused the memory).
    let err = r["stderr"].as_str().unwrap_or_default();
    let killed = r["signal"] == 9 || r["exit_code"] == 137;
    assert!(killed || err.contains("MemoryError"), "{r}");
    still_fine(&bob, "bob-only").await;
    let r = alice.sh("echo still-here").await;
    assert_eq!(r["stdout"], "still-here\n", "{r}");
}

#[tokio::test]
async fn a_cpu_hog_does_not_starve_other_users() {
    let (_hub, alice, bob) = two_users().await;
    let hog = {
        let a = alice.clone();
        tokio::spawn(async move {
            a.ok(
                "run_command",
                json!({"command": "for i in 1 2 3 4; do (while :; do :; done) & done; sleep 6", "timeout_s": 8}),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..5 {
        still_fine(&bob, "bob-only").await;
    }
    let r = hog.await.expect("hog");
    assert_eq!(r["timed_out"], false, "{r}");
}

#[tokio::test]
async fn filling_the_disk_stops_at_the_quota() {
    let (hub, alice, bob) = two_users().await;
    let r = alice
        .sh("head -c 100000000 /dev/zero > big; echo rc=$?; for i in 1 2 3 4 5; do head -c 10000000 /dev/zero > f$i; done; du -sk /workspace")
        .await;
    let err = r["stderr"].as_str().unwrap_or_default();
    assert!(
        err.contains("No space left") || err.contains("File too large"),
        "the quota did not stop the writes: {r}"
    );
    let used: u64 = walk_size(&hub.dir.join("workspaces/alice"));
    assert!(
        used <= 40 << 20,
        "alice's workspace holds {used} bytes, quota 32MiB"
    );
    // The room still works (deleting frees space again) and bob is unaffected.
    alice.ok("fs_delete", json!({"path": "big"})).await;
    alice
        .ok("fs_write", json!({"path": "after.txt", "content": "ok"}))
        .await;
    still_fine(&bob, "bob-only").await;
}

#[tokio::test]
async fn two_users_at_once_see_only_their_own_files_and_results() {
    let (_hub, alice, bob) = two_users().await;
    let runs = (0..5).map(|i| {
        let (a, b) = (&alice, &bob);
        async move {
            let ca = format!("echo alice-{i} > same-{i}.txt; cat same-{i}.txt; cat secret.txt");
            let cb = format!("echo bob-{i} > same-{i}.txt; cat same-{i}.txt; cat secret.txt");
            let (ra, rb) = tokio::join!(a.sh(&ca), b.sh(&cb));
            assert_eq!(ra["stdout"], format!("alice-{i}\nalice-only"), "{ra}");
            assert_eq!(rb["stdout"], format!("bob-{i}\nbob-only"), "{rb}");
        }
    });
    futures::future::join_all(runs).await;
}

fn walk_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += walk_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
