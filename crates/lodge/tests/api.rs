//! The REST API with its scopes, metrics, the audit trail, session limits and expiry, and the
//! CLI's refusals of bad input.

mod common;

use common::{TestHub, http, init_body, open_session};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn get(hub: &TestHub, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut r = http().get(format!("{}{path}", hub.base));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.expect("get");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn initialize(hub: &TestHub, token: &str) -> reqwest::Response {
    http()
        .post(hub.mcp_url())
        .bearer_auth(token)
        .json(&init_body("2025-06-18"))
        .send()
        .await
        .expect("init")
}

#[tokio::test]
async fn rest_scopes_are_enforced_per_target_user() {
    let hub = TestHub::start();
    hub.add_admin("root");
    hub.add_user("alice");
    hub.add_user("bob");
    let root = hub.token("root", &["--scopes", "inherit"]);
    let alice_mcp = hub.token("alice", &[]);
    let alice_self = hub.token("alice", &["--scopes", "self"]);

    let (s, v) = get(&hub, "/api/health", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));

    let (s, v) = get(&hub, "/api/users", Some(&root)).await;
    assert_eq!(s, 200);
    assert_eq!(v["users"].as_array().expect("users").len(), 3);
    assert_eq!(get(&hub, "/api/users", Some(&alice_mcp)).await.0, 403);
    assert_eq!(get(&hub, "/api/users", Some(&alice_self)).await.0, 403);
    assert_eq!(get(&hub, "/api/users", None).await.0, 401);

    // `self` reads one's own record and tokens only; others are 403 whether or not they exist.
    assert_eq!(
        get(&hub, "/api/users/alice", Some(&alice_self)).await.0,
        200
    );
    assert_eq!(
        get(&hub, "/api/users/alice", Some(&alice_mcp)).await.0,
        403,
        "mcp scope is not self"
    );
    let (sb, vb) = get(&hub, "/api/users/bob", Some(&alice_self)).await;
    let (sg, vg) = get(&hub, "/api/users/ghost", Some(&alice_self)).await;
    assert_eq!((sb, sg), (403, 403));
    let (mb, mg) = (
        vb.to_string().replace("bob", "X"),
        vg.to_string().replace("ghost", "X"),
    );
    assert_eq!(mb, mg, "existence leaks through the error body");
    assert_eq!(get(&hub, "/api/users/ghost", Some(&root)).await.0, 404);
    let (s, v) = get(&hub, "/api/users/alice/tokens", Some(&alice_self)).await;
    assert_eq!(s, 200);
    let listed = v.to_string();
    assert!(!listed.contains(&alice_mcp[14..]), "token secret listed");
    assert!(
        listed.contains(&alice_mcp[6..14]),
        "token id missing from listing"
    );
    assert_eq!(
        get(&hub, "/api/users/bob/tokens", Some(&alice_self))
            .await
            .0,
        403
    );

    // Self-service token creation cannot escalate scopes.
    let r = http()
        .post(format!("{}/api/users/alice/tokens", hub.base))
        .bearer_auth(&alice_self)
        .json(&json!({"scopes": ["admin:users"]}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    let r = http()
        .post(format!("{}/api/users/alice/tokens", hub.base))
        .bearer_auth(&alice_self)
        .json(&json!({"scopes": ["mcp"], "expires": "1h", "note": "laptop"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.expect("json");
    let minted = v["token"].as_str().expect("token").to_owned();
    assert_eq!(initialize(&hub, &minted).await.status(), 200);

    // A self-only token of an admin cannot mint an admin token (no escalation through REST).
    let root_self = hub.token("root", &["--scopes", "self"]);
    let r = http()
        .post(format!("{}/api/users/root/tokens", hub.base))
        .bearer_auth(&root_self)
        .json(&json!({"scopes": ["inherit"]}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403, "self-only token minted an admin token");

    // Admin user management over REST, with clear errors for bad input.
    let post_user = async |body: Value| {
        let r = http()
            .post(format!("{}/api/users", hub.base))
            .bearer_auth(&root)
            .json(&body)
            .send()
            .await;
        r.expect("post").status().as_u16()
    };
    assert_eq!(post_user(json!({"name": "carol"})).await, 201);
    assert_eq!(post_user(json!({"name": "carol"})).await, 409);
    assert_eq!(post_user(json!({"name": "Carol!"})).await, 400);
    assert_eq!(
        post_user(json!({"name": "dave", "profile": "gpu"})).await,
        400
    );
    assert_eq!(post_user(json!({"nom": "x"})).await, 400);
    let r = http()
        .post(format!("{}/api/users", hub.base))
        .bearer_auth(&root)
        .body(r#"{"name":"zed"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 415, "JSON body without Content-Type");
    let r = http()
        .post(format!("{}/api/users", hub.base))
        .bearer_auth(&root)
        .json(&json!({"name": "x".repeat(5 * 1024 * 1024)}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413, "oversized REST body");
    let r = http()
        .post(format!("{}/api/users", hub.base))
        .bearer_auth(&alice_self)
        .json(&json!({"name": "eve"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let r = http()
        .delete(format!("{}/api/users/carol", hub.base))
        .bearer_auth(&root)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    assert_eq!(get(&hub, "/api/users/carol", Some(&root)).await.0, 404);
}

#[tokio::test]
async fn a_token_cannot_mint_one_that_outlives_it() {
    let hub = TestHub::start();
    hub.add_admin("root");
    hub.add_user("alice");
    let mint = async |creator: &str, owner: &str, body: Value| {
        let r = http()
            .post(format!("{}/api/users/{owner}/tokens", hub.base))
            .bearer_auth(creator)
            .json(&body)
            .send()
            .await
            .expect("post");
        let s = r.status().as_u16();
        (s, r.json::<Value>().await.unwrap_or(Value::Null))
    };
    let hour_self = hub.token("alice", &["--scopes", "self", "--expires", "1h"]);
    for body in [
        json!({"scopes": ["mcp"]}),
        json!({"scopes": ["mcp"], "expires": "never"}),
        json!({"scopes": ["mcp"], "expires": "2h"}),
    ] {
        let (s, v) = mint(&hour_self, "alice", body.clone()).await;
        assert_eq!(s, 403, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("may not outlive") && msg.contains("at most 59m"),
            "{body}: the error must say the longest expiry allowed: {msg}"
        );
    }
    let (s, v) = mint(
        &hour_self,
        "alice",
        json!({"scopes": ["mcp"], "expires": "30m"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // The same rule for an admin minting for someone else.
    let hour_admin = hub.token("root", &["--scopes", "admin:tokens", "--expires", "1h"]);
    assert_eq!(mint(&hour_admin, "alice", json!({})).await.0, 403);
    assert_eq!(
        mint(&hour_admin, "alice", json!({"expires": "10m"}))
            .await
            .0,
        201
    );
    // A token that never expires may mint any expiry; the operator at the CLI is unbounded.
    let lasting = hub.token("alice", &["--scopes", "self"]);
    assert_eq!(
        mint(&lasting, "alice", json!({"scopes": ["mcp"]})).await.0,
        201
    );
    hub.ok(&["token", "create", "alice", "--expires", "never"]);
}

#[tokio::test]
async fn sessions_api_lists_own_or_all_and_ends_them() {
    let hub = TestHub::start();
    hub.add_admin("root");
    hub.add_user("alice");
    hub.add_user("bob");
    let root = hub.token("root", &["--scopes", "inherit"]);
    let alice = hub.token("alice", &["--scopes", "mcp,self"]);
    let bob = hub.token("bob", &["--scopes", "mcp,self"]);
    let sid_a = open_session(&hub.mcp_url(), &alice).await;
    let sid_b = open_session(&hub.mcp_url(), &bob).await;

    let (s, v) = get(&hub, "/api/sessions", Some(&alice)).await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = v["sessions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|x| x["id"].as_str())
        .collect();
    assert_eq!(ids, vec![sid_a.as_str()]);
    let (_, v) = get(&hub, "/api/sessions", Some(&root)).await;
    assert_eq!(v["sessions"].as_array().expect("list").len(), 2);
    assert_eq!(
        get(&hub, &format!("/api/sessions/{sid_b}"), Some(&alice))
            .await
            .0,
        404
    );
    assert_eq!(
        get(&hub, &format!("/api/sessions/{sid_b}"), Some(&root))
            .await
            .1["user"],
        "bob"
    );

    let del = |t: &str, id: &str| {
        http()
            .delete(format!("{}/api/sessions/{id}", hub.base))
            .bearer_auth(t.to_owned())
            .send()
    };
    assert_eq!(
        del(&alice, &sid_b).await.expect("del").status(),
        404,
        "alice ended bob's session"
    );
    assert_eq!(del(&root, &sid_b).await.expect("del").status(), 204);
    assert_eq!(del(&alice, &sid_a).await.expect("del").status(), 204);
    let r = http()
        .post(hub.mcp_url())
        .bearer_auth(&alice)
        .header("mcp-session-id", &sid_a)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .expect("ping");
    assert_eq!(r.status(), 404, "an ended session must not answer");
}

#[tokio::test]
async fn session_limits_idle_timeout_and_max_age() {
    let hub = TestHub::start_env(&[
        ("LODGE_SESSIONS_MAX_PER_USER", "2"),
        ("LODGE_SESSIONS_IDLE_TIMEOUT", "1s"),
        ("LODGE_SESSIONS_MAX_AGE", "3s"),
        ("LODGE_SESSIONS_FLUSH_INTERVAL", "200ms"),
    ]);
    hub.add_user("alice");
    hub.add_user("bob");
    let a = hub.token("alice", &[]);
    let b = hub.token("bob", &[]);
    let ping = |sid: String| {
        http()
            .post(hub.mcp_url())
            .bearer_auth(&a)
            .header("mcp-session-id", sid)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            .send()
    };
    let s1 = open_session(&hub.mcp_url(), &a).await;
    let s2 = open_session(&hub.mcp_url(), &a).await;
    let sb = open_session(&hub.mcp_url(), &b).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(ping(s1.clone()).await.expect("ping").status(), 200);
    // A third session over max_per_user=2 ends the least recently used one (s2), not s1.
    let r = initialize(&hub, &a).await;
    assert_eq!(r.status(), 200, "third session over max_per_user=2");
    assert_eq!(
        ping(s2.clone()).await.expect("ping").status(),
        404,
        "the least recently used session was not ended"
    );
    let pb = http()
        .post(hub.mcp_url())
        .bearer_auth(&b)
        .header("mcp-session-id", sb)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .expect("ping");
    assert_eq!(pb.status(), 200, "one user's limit must not affect another");
    // Kept alive by use past the idle timeout, but not past max age.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        assert_eq!(
            ping(s1.clone()).await.expect("ping").status(),
            200,
            "at {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        ping(s1.clone()).await.expect("ping").status(),
        404,
        "session outlived max_age"
    );
    // The idle one was reaped, so alice can open sessions again.
    assert_eq!(initialize(&hub, &a).await.status(), 200);
}

#[tokio::test]
async fn metrics_need_a_scope_and_report_traffic() {
    let hub = TestHub::start();
    hub.add_admin("root");
    hub.add_user("alice");
    let root = hub.token("root", &["--scopes", "read:metrics"]);
    let alice = hub.token("alice", &[]);
    let sid = open_session(&hub.mcp_url(), &alice).await;
    http()
        .post(hub.mcp_url())
        .bearer_auth(&alice)
        .header("mcp-session-id", sid)
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "session_info", "arguments": {}}}))
        .send()
        .await
        .expect("call");
    let _ = http()
        .post(hub.mcp_url())
        .bearer_auth("lodge_wrong")
        .json(&init_body("2025-06-18"))
        .send()
        .await;

    let url = format!("{}/api/metrics", hub.base);
    assert_eq!(http().get(&url).send().await.expect("m").status(), 401);
    assert_eq!(
        http()
            .get(&url)
            .bearer_auth(&alice)
            .send()
            .await
            .expect("m")
            .status(),
        403
    );
    let r = http().get(&url).bearer_auth(&root).send().await.expect("m");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("text");
    for needle in [
        "lodge_http_requests_total{",
        "lodge_http_request_duration_seconds_bucket{",
        "lodge_sessions_active 1",
        "lodge_auth_failures_total{",
        "lodge_tool_calls_total{tool=\"session_info\",outcome=\"ok\"} 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    assert!(!text.contains(&alice), "a token leaked into metrics");
}

#[tokio::test]
async fn audit_records_auth_failures_tool_calls_and_admin_actions() {
    let hub = TestHub::start_env(&[("LODGE_SESSIONS_FLUSH_INTERVAL", "100ms")]);
    hub.add_user("alice");
    let alice = hub.token("alice", &[]);
    let sid = open_session(&hub.mcp_url(), &alice).await;
    http()
        .post(hub.mcp_url())
        .bearer_auth(&alice)
        .header("mcp-session-id", &sid)
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "session_info", "arguments": {}}}))
        .send()
        .await
        .expect("call");
    let wrong = format!("lodge_{}", "Z".repeat(40));
    let _ = http()
        .post(hub.mcp_url())
        .bearer_auth(&wrong)
        .json(&init_body("2025-06-18"))
        .send()
        .await;

    let deadline = Instant::now() + Duration::from_secs(5);
    let records: Vec<Value> = loop {
        let out = hub.ok(&["audit", "--json"]);
        let recs: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        let kinds: Vec<&str> = recs.iter().filter_map(|r| r["kind"].as_str()).collect();
        if kinds.contains(&"tool_call") && kinds.contains(&"auth_failure") {
            break recs;
        }
        assert!(Instant::now() < deadline, "audit records missing: {recs:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let call = records
        .iter()
        .find(|r| r["kind"] == "tool_call")
        .expect("tool call");
    assert_eq!(call["user"], "alice");
    assert_eq!(call["action"], "session_info");
    assert_eq!(call["session"], sid.as_str());
    assert_eq!(call["outcome"], "ok");
    assert!(call["digest"].as_str().is_some_and(|d| d.len() == 24));
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "admin" && r["action"] == "user.add")
    );
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "admin" && r["action"] == "token.create")
    );
    let all = serde_json::to_string(&records).expect("json");
    assert!(
        !all.contains(&alice) && !all.contains(&wrong),
        "a token secret reached the audit log"
    );

    let only_alice = hub.ok(&["audit", "--json", "--user", "alice", "--since", "1h"]);
    assert!(only_alice.lines().all(|l| l.contains("\"user\":\"alice\"")));
    let future = hub.ok(&["audit", "--json", "--since", "2999-01-01T00:00:00Z"]);
    assert!(future.trim().is_empty());
}

#[test]
fn cli_refuses_bad_input_with_clear_messages() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let cases: &[(&[&str], &str)] = &[
        (&["user", "add", "Alice"], "invalid user name"),
        (&["user", "add", "alice"], "already exists"),
        (
            &["user", "add", "bob", "--profile", "nope"],
            "unknown profile",
        ),
        (&["user", "remove", "ghost"], "no user named ghost"),
        (&["token", "create", "ghost"], "no user named ghost"),
        (
            &["token", "create", "alice", "--scopes", "root"],
            "unknown scope",
        ),
        (
            &["token", "create", "alice", "--scopes", "admin:users"],
            "may not hold",
        ),
        (
            &["token", "create", "alice", "--scopes", "mcp!user=bob"],
            "may not hold",
        ),
        (
            &["token", "create", "alice", "--expires", "soon"],
            "invalid duration",
        ),
        (
            &["token", "create", "alice", "--expires", "0s"],
            "greater than zero",
        ),
        (&["token", "list", "ghost"], "no user named ghost"),
        (&["token", "revoke", "nothere1"], "no token with id"),
        (&["audit", "--since", "yesterday-ish"], "invalid --since"),
        (&["audit", "--kind", "everything"], "invalid --kind"),
        (&["mcp-config", "ghost"], "no user named ghost"),
    ];
    for (args, expect) in cases {
        let out = hub.lodge(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in {err:?}"
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed to stdout on failure"
        );
    }
    // `token create` prints the token alone on stdout.
    let out = hub.lodge(&["token", "create", "alice", "--note", "ci"]);
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    assert_eq!(stdout.lines().count(), 1);
    assert!(
        stdout.starts_with("lodge_") && stdout.trim().len() == 46,
        "{stdout:?}"
    );
    // An unknown config key names itself.
    let out = hub.lodge(&["--config", "/nonexistent.toml", "user", "list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
    // Read commands on a mistyped DATA_DIR say so instead of creating an empty one.
    let missing = hub.dir.join("typo");
    let out = common::lodge_in(&missing, &[], &["audit"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Lodge data in"));
    assert!(!missing.exists(), "a read command created DATA_DIR");
    let out = common::lodge_in(
        &hub.dir,
        &[("LODGE_SERVER_BINDD".into(), "x".into())],
        &["user", "list"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bindd"));
}

#[test]
fn mcp_config_prints_a_ready_client_config() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let out = hub.ok(&["mcp-config", "alice", "--url", "https://lodge.example/"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    let s = &v["mcpServers"]["lodge"];
    assert_eq!(s["url"], "https://lodge.example/user/alice/mcp");
    assert_eq!(s["type"], "http");
    assert_eq!(s["headers"]["Authorization"], "Bearer ${LODGE_TOKEN}");
}

#[test]
fn public_bind_without_tls_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(common::BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--bind", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-public"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_session_info_over_many_sessions_stays_bounded_and_alive() {
    // 440 requests of one user at once: above the default request burst, which is not what
    // this test is about.
    let hub = TestHub::start_with_config(
        "[profiles.default]\nrequests_per_second = 1000\nrequest_burst = 1000\n",
        &[],
    );
    hub.add_user("alice");
    let t = hub.token("alice", &[]);
    let mut sids = Vec::new();
    for _ in 0..40 {
        sids.push(open_session(&hub.mcp_url(), &t).await);
    }
    // Every call updates last-use times while others list and sort them.
    let calls = (0..400).map(|i| {
        let (url, t, sid) = (hub.mcp_url(), t.clone(), sids[i % sids.len()].clone());
        tokio::spawn(async move {
            let r = http()
                .post(url)
                .bearer_auth(t)
                .header("mcp-session-id", sid)
                .json(&json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "session_info", "arguments": {}}}))
                .send()
                .await
                .expect("call");
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.expect("json")
        })
    });
    for c in futures_join(calls).await {
        let v = c.expect("task");
        let info = &v["result"]["structuredContent"];
        assert_eq!(info["usage"]["sessions"], 40);
        assert_eq!(
            info["sessions"].as_array().expect("list").len(),
            20,
            "reply must be capped"
        );
    }
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await);
    }
    out
}
