//! Per-user secrets end to end (issue 4): the MCP tools, the REST API and the CLI; injection
//! into one command with output redaction; no value in DATA_DIR's bytes, logs, audit, metrics
//! or any process's argv; isolation between users; master-key errors and rotation, including a
//! rotation killed midway.

mod common;

use common::{BIN, TestHub, files_containing};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Distinctive values: if any of these bytes show up anywhere they must not, the test fails.
const ALICE_TOKEN: &str = "ghp_AliceSuperSecretValue4242";
const BOB_TOKEN: &str = "ghp_BobOtherSecretValue9191";

fn contains(haystack: &[u8], needle: &str) -> bool {
    memchr::memmem::find(haystack, needle.as_bytes()).is_some()
}

fn with_stdin(mut cmd: Command, input: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lodge");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn lodge_cmd(hub: &TestHub, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--data-dir").arg(&hub.dir).args(args);
    c.envs(hub.env.iter().map(|(a, b)| (a.as_str(), b.as_str())));
    c
}

#[tokio::test]
async fn tools_store_inject_and_redact_without_leaking() {
    // The debug log lands in DATA_DIR, which is searched byte by byte at the end.
    let mut hub = TestHub::start_logged(&[("RUST_LOG", "debug")]);
    let log = hub.log.clone().expect("log path");

    let alice = hub.user_session("alice", &[]).await;
    let bob = hub.user_session("bob", &[]).await;
    alice
        .ok(
            "secret_put",
            json!({"name": "github", "fields": {"token": ALICE_TOKEN, "user": "al1"}}),
        )
        .await;
    bob.ok(
        "secret_put",
        json!({"name": "github", "fields": {"token": BOB_TOKEN}}),
    )
    .await;

    // Listing shows names and field names only.
    let list = alice.ok("secret_list", json!({})).await;
    assert_eq!(list["secrets"][0]["name"], "github", "{list}");
    assert!(!list.to_string().contains(ALICE_TOKEN), "{list}");
    let got = alice
        .ok("secret_get", json!({"name": "github", "field": "token"}))
        .await;
    assert_eq!(got["value"], ALICE_TOKEN);
    let got = bob.ok("secret_get", json!({"name": "github"})).await;
    assert_eq!(
        got["fields"]["token"], BOB_TOKEN,
        "each user has their own github"
    );

    // Injection: the value reaches the command's environment only, and is masked in output.
    let r = alice
        .ok(
            "run_command",
            json!({"command": "echo \"token=$GITHUB_TOKEN\"; printf %s \"$GITHUB_TOKEN\" | wc -c; echo user=$GITHUB_USER; echo \"$GITHUB_TOKEN\" >&2",
                   "secrets": ["github"]}),
        )
        .await;
    let out = r["stdout"].as_str().expect("stdout");
    assert!(out.contains("token=***"), "{r}");
    assert!(
        out.contains(&format!("{}\n", ALICE_TOKEN.len())),
        "the value was not injected: {r}"
    );
    assert!(
        out.contains("user=al1"),
        "values under 4 characters are not masked: {r}"
    );
    assert!(
        !r.to_string().contains(ALICE_TOKEN),
        "value leaked in the result: {r}"
    );
    assert_eq!(r["stderr"], "***\n", "{r}");
    // One field only, by NAME.FIELD; the next command does not see it.
    let r = alice
        .ok(
            "run_command",
            json!({"command": "echo ${GITHUB_USER:-unset} ${GITHUB_TOKEN:+set}", "secrets": ["github.user"]}),
        )
        .await;
    assert_eq!(r["stdout"], "al1\n", "{r}");
    let r = alice.sh("echo ${GITHUB_TOKEN:-unset}").await;
    assert_eq!(r["stdout"], "unset\n", "{r}");

    // While a command holding the secret runs, no process's argv shows it.
    let waiting = {
        let a = alice.clone();
        tokio::spawn(async move {
            a.ok(
                "run_command",
                json!({"command": "sleep 2; echo done", "secrets": ["github"]}),
            )
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::pids_matching("sleep 2").is_empty() {
        assert!(Instant::now() < deadline, "the command did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            assert!(
                !contains(&cmdline, ALICE_TOKEN),
                "argv of {:?} shows the secret",
                entry.file_name()
            );
        }
    }
    waiting.await.expect("command");
    // Nor is it written anywhere in the room's filesystem.
    let r = alice
        .ok(
            "run_command",
            json!({"command": "grep -rlsF -e \"$GITHUB_TOKEN\" /workspace /tmp /etc; echo searched",
                   "secrets": ["github.token"]}),
        )
        .await;
    assert_eq!(r["stdout"], "searched\n", "{r}");

    // Bob cannot reach Alice's secrets: not by tool arguments, not by her endpoint, not by REST.
    let e = bob
        .err(
            "run_command",
            json!({"command": "true", "secrets": ["alice.github"]}),
        )
        .await;
    assert!(!e.contains(ALICE_TOKEN), "{e}");
    let r = common::http()
        .post(hub.user_url("alice"))
        .bearer_auth(&bob.token)
        .json(&common::init_body("2025-11-25"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let api = |user: &str| format!("{}/api/users/{user}/secrets", hub.base);
    // Bob's REST token may manage his own secrets, so a 403 below is about the target.
    let bob_rest = hub.token("bob", &["--scopes", "self"]);
    let r = common::http()
        .get(api("bob"))
        .bearer_auth(&bob_rest)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let r = common::http()
        .get(api("alice"))
        .bearer_auth(&bob_rest)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 403);
    let r = common::http()
        .put(format!("{}/github", api("alice")))
        .bearer_auth(&bob_rest)
        .json(&json!({"fields": {"token": "overwritten"}}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 403);
    let r = common::http()
        .delete(format!("{}/github", api("alice")))
        .bearer_auth(&bob_rest)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 403);
    assert_eq!(
        alice
            .ok("secret_get", json!({"name": "github", "field": "token"}))
            .await["value"],
        ALICE_TOKEN
    );
    // Her own REST view (a token with scope `self`): names and fields, never values.
    let own = hub.token("alice", &["--scopes", "self"]);
    let mine = common::http()
        .get(api("alice"))
        .bearer_auth(&own)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(mine.contains("github") && mine.contains("token"), "{mine}");
    assert!(!mine.contains(ALICE_TOKEN), "{mine}");

    // Metrics and audit hold no value; neither does the log with debug on.
    let metrics = hub.metrics_text().await;
    assert!(!metrics.contains(ALICE_TOKEN));
    hub.stop();
    let audit = hub.ok(&["audit", "--json"]);
    assert!(audit.contains("secret_put"), "secret calls are audited");
    for v in [ALICE_TOKEN, BOB_TOKEN] {
        assert!(!audit.contains(v), "audit holds a value");
        let logged = std::fs::read(&log).expect("hub log");
        assert!(logged.len() > 1000, "debug log is suspiciously short");
        assert!(!contains(&logged, v), "the hub log holds a value");
    }
    let hits = files_containing(&hub.dir, &[ALICE_TOKEN, BOB_TOKEN]);
    assert!(hits.is_empty(), "plain value in DATA_DIR files: {hits:?}");
}

#[tokio::test]
async fn argument_errors_never_quote_the_value_given() {
    let hub = TestHub::start();
    let alice = hub.user_session("alice", &[]).await;
    let bad_args = [
        json!({"name": "github", "fields": ALICE_TOKEN}),
        json!({"name": "github", "fields": {"token": [ALICE_TOKEN]}}),
        json!({"name": "github", "fields": {"token": "x"}, (ALICE_TOKEN): 1}),
        json!({"name": ALICE_TOKEN.replace('_', "/"), "fields": {"token": "x"}}),
        json!({"name": "github", "fields": {(ALICE_TOKEN.replace('_', ":")): "x"}}),
    ];
    for args in &bad_args {
        let r = alice
            .post(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "secret_put", "arguments": args}}))
            .await;
        let body = r.text().await.expect("body");
        assert!(body.contains("invalid"), "{args}: not refused: {body}");
        let needle = ALICE_TOKEN.split(['_']).nth(1).expect("part");
        assert!(
            !body.contains(needle),
            "{args}: the error quotes the value: {body}"
        );
    }
    // The arguments themselves given as a string, and the REST API's secret body.
    let r = alice
        .post(&json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
            "params": {"name": "secret_put", "arguments": ALICE_TOKEN}}))
        .await;
    let body = r.text().await.expect("body");
    assert!(!body.contains(ALICE_TOKEN), "{body}");
    let r = common::http()
        .put(format!("{}/api/users/alice/secrets/github", hub.base))
        .bearer_auth(hub.token("alice", &["--scopes", "self"]))
        .json(&json!({"fields": ALICE_TOKEN}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 400);
    let body = r.text().await.expect("body");
    assert!(body.contains("fields"), "the error names the field: {body}");
    assert!(!body.contains(ALICE_TOKEN), "{body}");
}

#[tokio::test]
async fn cli_secrets_take_values_from_stdin_never_argv() {
    let hub = TestHub::start();
    hub.add_user("carol");
    let out = with_stdin(
        lodge_cmd(
            &hub,
            &["secret", "put", "carol", "mail", "--field", "password"],
        ),
        "hunter2-but-longer\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_stdin(
        lodge_cmd(&hub, &["secret", "put", "carol", "mail"]),
        "user=carol@example.org\nhost=imap.example.org\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = hub.ok(&["secret", "get", "carol", "mail", "password"]);
    assert_eq!(v, "hunter2-but-longer\n");
    let all = hub.ok(&["secret", "get", "carol", "mail"]);
    assert!(
        all.contains("host=imap.example.org") && all.contains("user=carol@example.org"),
        "{all}"
    );
    let list = hub.ok(&["secret", "list", "carol", "--json"]);
    assert!(
        list.contains("password") && !list.contains("hunter2"),
        "{list}"
    );
    // A value on the command line is not accepted.
    let out = hub.lodge(&["secret", "put", "carol", "mail", "password=oops"]);
    assert!(!out.status.success());
    hub.ok(&["secret", "delete", "carol", "mail", "--field", "host"]);
    let all = hub.ok(&["secret", "get", "carol", "mail"]);
    assert!(!all.contains("host="), "{all}");
    let out = hub.lodge(&["secret", "get", "carol", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[tokio::test]
async fn a_wrong_or_missing_master_key_stops_the_hub_with_a_clear_error() {
    let mut hub = TestHub::start();
    hub.add_user("dave");
    let out = with_stdin(
        lodge_cmd(&hub, &["secret", "put", "dave", "api", "--field", "key"]),
        "dave-key-123456",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hub.stop();
    let key = hub.dir.join("master.key");
    let original = std::fs::read(&key).expect("master.key created at first start");
    let serve = |extra_env: &[(&str, &str)]| {
        let mut c = lodge_cmd(&hub, &["serve", "--bind", "127.0.0.1:0"]);
        c.envs(extra_env.iter().copied()).stdin(Stdio::null());
        c.output().expect("run serve")
    };

    // Missing: refused, and nothing is re-created behind the operator's back.
    std::fs::rename(&key, hub.dir.join("master.key.bak")).expect("move key");
    let out = serve(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("master"), "{err}");
    assert!(
        !key.exists(),
        "a new master key was created over an existing vault"
    );

    // Wrong: refused, in the file and in the environment.
    std::fs::rename(hub.dir.join("master.key.bak"), &key).expect("restore key");
    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = serve(&[("LODGE_MASTER_KEY", other)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match"), "{err}");
    let out = serve(&[("LODGE_MASTER_KEY", "not a key")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LODGE_MASTER_KEY"));

    // The right key still opens everything: nothing was reset.
    assert_eq!(std::fs::read(&key).expect("key"), original);
    assert_eq!(
        hub.ok(&["secret", "get", "dave", "api", "key"]),
        "dave-key-123456\n"
    );
    hub.spawn();
}

#[tokio::test]
async fn rotation_killed_at_any_moment_loses_nothing() {
    let mut hub = TestHub::start();
    hub.stop();
    const USERS: usize = 150;
    // Many users, so a rotation takes long enough to be killed in the middle.
    for i in 0..USERS {
        let name = format!("u{i:03}");
        hub.add_user(&name);
        let out = with_stdin(
            lodge_cmd(&hub, &["secret", "put", &name, "k", "--field", "v"]),
            &format!("value-of-{name}-0123456789"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let check_all = |round: usize| {
        for i in (0..USERS).step_by(15) {
            let name = format!("u{i:03}");
            let v = hub.ok(&["secret", "get", &name, "k", "v"]);
            assert_eq!(v, format!("value-of-{name}-0123456789\n"), "round {round}");
        }
    };
    let mut keys = std::collections::HashSet::new();
    for round in 0..8 {
        let mut child = lodge_cmd(&hub, &["secret", "rotate-master-key"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rotation");
        std::thread::sleep(Duration::from_millis(5 + 12 * round as u64));
        let _ = child.kill();
        let _ = child.wait();
        check_all(round);
        keys.insert(std::fs::read(hub.dir.join("master.key")).expect("key"));
    }
    // A complete rotation changes the key and keeps every secret.
    let before = std::fs::read(hub.dir.join("master.key")).expect("key");
    hub.ok(&["secret", "rotate-master-key"]);
    let after = std::fs::read(hub.dir.join("master.key")).expect("key");
    assert_ne!(before, after, "rotation did not change the key");
    check_all(99);
    // The hub starts on the rotated key.
    hub.spawn();
}
