//! The hub's router against rooms run in this process (see `support`): the MCP endpoint,
//! dispatch, the room table, upstream servers and each tool family's argument handling, in
//! seconds and without root. The end-to-end tests in crates/lodge/tests cover the sandbox.

mod support;

use http::StatusCode;
use lodge_room::spawner::Spawner;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use support::{TestHub, init_body};

fn tool_names(list: &Value) -> Vec<String> {
    list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {list}"))
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

async fn user_id(hub: &TestHub, name: &str) -> i64 {
    hub.store
        .user(&lodge_core::UserName::parse(name).expect("name"))
        .await
        .expect("store")
        .expect("user")
        .id
}

#[tokio::test]
async fn the_endpoint_wants_a_token_and_opens_sessions() {
    let hub = TestHub::start().await;
    let (status, _, _) = hub.send("/mcp", None, None, &init_body("2025-11-25")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = hub
        .send(
            "/mcp",
            Some("lodge_not_a_token"),
            None,
            &init_body("2025-11-25"),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let token = hub.user("alice", None).await;
    let (status, headers, v) = hub
        .send("/mcp", Some(&token), None, &init_body("2025-11-25"))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(headers.contains_key("mcp-session-id"), "{headers:?}");
    assert_eq!(v["result"]["protocolVersion"], "2025-11-25", "{v}");
    // Another user's endpoint is not alice's.
    hub.user("bob", None).await;
    let (status, _, v) = hub
        .send(
            "/user/bob/mcp",
            Some(&token),
            None,
            &init_body("2025-11-25"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
}

#[tokio::test]
async fn tools_list_offers_every_family_without_starting_a_room() {
    let hub = TestHub::start().await;
    let a = hub.session("alice").await;
    let names = tool_names(&a.rpc("tools/list", json!({})).await);
    for want in [
        "session_info",
        "fs_read",
        "fs_write",
        "run_command",
        "git_status",
        "notebook_list",
        "secret_put",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    a.ok("session_info", json!({})).await;
    assert_eq!(hub.spawner.starts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn dispatch_answers_bad_json_rpc_precisely() {
    let hub = TestHub::start().await;
    let a = hub.session("alice").await;
    for (body, status, code) in [
        (json!({"id": 1, "method": "ping"}), 400, -32600),
        (
            json!({"jsonrpc": "2.0", "id": null, "method": "ping"}),
            400,
            -32600,
        ),
        (
            json!({"jsonrpc": "2.0", "id": 1, "method": 42}),
            400,
            -32600,
        ),
        (
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": [1, 2]}),
            400,
            -32602,
        ),
        (json!("just a string"), 400, -32600),
        (
            json!({"jsonrpc": "2.0", "id": 2, "method": "sudo/make_me_admin"}),
            200,
            -32601,
        ),
        (
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                   "params": {"name": "rm_rf", "arguments": {}}}),
            200,
            -32602,
        ),
    ] {
        let (s, _, v) = hub.send("/mcp", Some(&a.token), Some(&a.sid), &body).await;
        assert_eq!(s.as_u16(), status, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
    }
    let pong = a.rpc("ping", json!({})).await;
    assert_eq!(pong["result"], json!({}), "{pong}");
}

#[tokio::test]
async fn one_room_per_user_shared_by_sessions_and_reused() {
    let hub = TestHub::start().await;
    let a1 = hub.session("alice").await;
    let a2 = hub.session("alice").await;
    let b = hub.session("bob").await;
    a1.ok(
        "fs_write",
        json!({"path": "notes.txt", "content": "from a1"}),
    )
    .await;
    let read = a2.ok("fs_read", json!({"path": "notes.txt"})).await;
    assert!(read.to_string().contains("from a1"), "{read}");
    assert_eq!(hub.spawner.starts.load(Ordering::SeqCst), 1);
    let info = a2.ok("session_info", json!({})).await;
    assert!(info.to_string().contains("up_for_s"), "{info}");

    // Bob gets a room of his own, which does not see alice's files.
    let e = b.err("fs_read", json!({"path": "notes.txt"})).await;
    assert!(e.contains("does not exist"), "{e}");
    assert_eq!(hub.spawner.starts.load(Ordering::SeqCst), 2);
    assert_eq!(hub.hub.rooms.running(), 2);
    let mut users: Vec<String> = hub.spawner.list().into_iter().map(|a| a.user).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
}

#[tokio::test]
async fn a_stopped_room_starts_again_with_its_files() {
    let hub = TestHub::start().await;
    let a = hub.session("alice").await;
    a.ok("fs_write", json!({"path": "kept.txt", "content": "kept"}))
        .await;
    hub.hub.rooms.stop_user(user_id(&hub, "alice").await).await;
    assert_eq!(hub.spawner.stops.load(Ordering::SeqCst), 1);
    assert_eq!(hub.hub.rooms.running(), 0);
    assert!(hub.spawner.list().is_empty());

    let read = a.ok("fs_read", json!({"path": "kept.txt"})).await;
    assert!(read.to_string().contains("kept"), "{read}");
    assert_eq!(hub.spawner.starts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_room_that_dies_is_replaced_on_the_next_call() {
    let hub = TestHub::start().await;
    let a = hub.session("alice").await;
    a.ok("fs_write", json!({"path": "kept.txt", "content": "kept"}))
        .await;
    hub.spawner.kill("alice");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while hub.spawner.stops.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead room was not stopped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(hub.hub.rooms.running(), 0);
    let read = a.ok("fs_read", json!({"path": "kept.txt"})).await;
    assert!(read.to_string().contains("kept"), "{read}");
    assert_eq!(hub.spawner.starts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn rooms_refuse_calls_once_the_hub_stops() {
    let hub = TestHub::start().await;
    let a = hub.session("alice").await;
    a.ok("run_command", json!({"command": "true"})).await;
    hub.hub.rooms.stop_all().await;
    assert_eq!(hub.spawner.stops.load(Ordering::SeqCst), 1);
    let e = a.err("run_command", json!({"command": "true"})).await;
    assert!(e.contains("shutting down"), "{e}");
}

#[tokio::test]
async fn max_users_active_is_enforced_with_a_clear_error() {
    let hub = TestHub::with_config("[rooms]\nmax_users_active = 1\n").await;
    let a = hub.session("alice").await;
    let b = hub.session("bob").await;
    a.ok("run_command", json!({"command": "true"})).await;
    let e = b.err("run_command", json!({"command": "true"})).await;
    assert!(e.contains("max_users_active"), "{e}");
    b.ok("session_info", json!({})).await;
    assert_eq!(hub.spawner.starts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_reused_name_never_inherits_a_removed_users_workspace() {
    let hub = TestHub::start().await;
    let old = hub.session("ru").await;
    old.ok("fs_write", json!({"path": "private.txt", "content": "old"}))
        .await;
    let id = user_id(&hub, "ru").await;
    let name = lodge_core::UserName::parse("ru").expect("name");
    hub.store.remove_user(&name).await.expect("remove");
    hub.hub.rooms.stop_user(id).await;

    let new = hub.session("ru").await;
    let e = new.err("fs_read", json!({"path": "private.txt"})).await;
    assert!(e.contains("removed user"), "{e}");
    assert!(!e.contains("old"), "{e}");

    // Purging the files (`lodge user remove --purge`) lets the name have a room again.
    hub.spawner.files().purge("ru").expect("purge");
    let e = new.err("fs_read", json!({"path": "private.txt"})).await;
    assert!(e.contains("does not exist"), "{e}");
}

#[tokio::test]
async fn file_tools_work_and_check_their_arguments() {
    let hub = TestHub::start().await;
    let a = hub.session("alice").await;
    a.ok("fs_mkdir", json!({"path": "src"})).await;
    a.ok(
        "fs_write",
        json!({"path": "src/main.py", "content": "x = 1\nx = 2\n"}),
    )
    .await;
    let listed = a.ok("fs_list", json!({"path": "src"})).await;
    assert!(listed.to_string().contains("main.py"), "{listed}");
    let found = a
        .ok("fs_search", json!({"glob": "**/*.py", "text": "x = 2"}))
        .await;
    assert_eq!(found["matches"][0]["line"], 2, "{found}");

    let e = a.err("fs_write", json!({"path": "x"})).await;
    assert!(
        e.contains("invalid arguments for fs_write") && e.contains("content"),
        "{e}"
    );
    let e = a.err("fs_read", json!({"path": "x", "mode": "raw"})).await;
    assert!(e.contains("unknown field"), "{e}");
    let e = a.err("fs_read", json!({"path": 7})).await;
    assert!(e.contains("path"), "{e}");
    let e = a
        .err(
            "fs_edit",
            json!({"path": "nope.txt", "old_text": "a", "new_text": "b"}),
        )
        .await;
    assert!(e.contains("nope.txt"), "{e}");
    let e = a.err("fs_read", json!({"path": "../outside"})).await;
    assert!(e.contains(".."), "{e}");
}

#[tokio::test]
async fn run_command_reports_exit_and_output_and_checks_its_arguments() {
    let hub = TestHub::start().await;
    let a = hub.session("alice").await;
    let r = a
        .ok(
            "run_command",
            json!({"command": "echo out; echo err >&2; echo \"$GREETING\"; exit 3",
                   "env": {"GREETING": "hello"}}),
        )
        .await;
    assert_eq!(r["exit_code"], 3, "{r}");
    assert_eq!(r["stdout"], "out\nhello\n", "{r}");
    assert_eq!(r["stderr"], "err\n", "{r}");

    let e = a
        .err("run_command", json!({"command": "true", "cwd": "../.."}))
        .await;
    assert!(e.contains(".."), "{e}");
    let e = a
        .err("run_command", json!({"command": "true", "timeout_s": -1}))
        .await;
    assert!(e.contains("timeout_s"), "{e}");
    let e = a.err("run_command", json!({})).await;
    assert!(
        e.contains("invalid arguments for run_command") && e.contains("command"),
        "{e}"
    );
    let e = a
        .err(
            "run_command",
            json!({"command": "true", "secrets": ["missing"]}),
        )
        .await;
    assert!(e.contains("missing"), "{e}");
}

#[tokio::test]
async fn git_tools_check_their_arguments() {
    let hub = TestHub::start().await;
    let a = hub.session("alice").await;
    let e = a.err("git_clone", json!({})).await;
    assert!(
        e.contains("invalid arguments for git_clone") && e.contains("url"),
        "{e}"
    );
    let e = a
        .err(
            "git_configure",
            json!({"name": "A", "email": "a@x", "shell": "sh"}),
        )
        .await;
    assert!(e.contains("unknown field"), "{e}");
    let e = a
        .err("git_log", json!({"path": ".", "limit": "many"}))
        .await;
    assert!(e.contains("limit"), "{e}");
    a.ok("fs_mkdir", json!({"path": "plain"})).await;
    let e = a.err("git_status", json!({"path": "plain"})).await;
    assert!(e.contains("not a git repository"), "{e}");
}

#[tokio::test]
async fn notebook_tools_check_their_arguments() {
    let hub = TestHub::start().await;
    let a = hub.session("alice").await;
    let listed = a.ok("notebook_list", json!({})).await;
    assert!(listed.to_string().contains("[]"), "{listed}");
    let e = a.err("notebook_read", json!({"path": "x.txt"})).await;
    assert!(e.contains(".ipynb"), "{e}");
    let e = a.err("notebook_create", json!({})).await;
    assert!(
        e.contains("invalid arguments for notebook_create") && e.contains("path"),
        "{e}"
    );
    let e = a
        .err(
            "cell_insert",
            json!({"path": "n.ipynb", "source": "1", "cell_type": "video"}),
        )
        .await;
    assert!(e.contains("cell_type"), "{e}");
}

#[tokio::test]
async fn secret_tools_store_per_user_and_check_their_arguments() {
    let hub = TestHub::start().await;
    let a = hub.session("alice").await;
    let b = hub.session("bob").await;
    a.ok(
        "secret_put",
        json!({"name": "github", "fields": {"token": "alice-token-value"}}),
    )
    .await;
    let list = a.ok("secret_list", json!({})).await;
    assert_eq!(list["secrets"][0]["name"], "github", "{list}");
    assert!(!list.to_string().contains("alice-token-value"), "{list}");
    let got = a
        .ok("secret_get", json!({"name": "github", "field": "token"}))
        .await;
    assert_eq!(got["value"], "alice-token-value");
    let e = b.err("secret_get", json!({"name": "github"})).await;
    assert!(e.contains("github"), "{e}");

    // A bad argument is named, its value never quoted.
    let e = a
        .err(
            "secret_put",
            json!({"name": "x", "fields": {"token": 12345678}}),
        )
        .await;
    assert!(e.contains("fields.token"), "{e}");
    assert!(!e.contains("12345678"), "{e}");
    let e = a
        .err("secret_put", json!({"name": "../x", "fields": {"a": "b"}}))
        .await;
    assert!(e.contains("invalid secret name"), "{e}");
    assert!(!e.contains("../x"), "{e}");
    // No room was needed for any of it.
    assert_eq!(hub.spawner.starts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn session_info_refuses_unknown_arguments() {
    let hub = TestHub::start().await;
    let a = hub.session("alice").await;
    let e = a.err("session_info", json!({"user": "bob"})).await;
    assert!(e.contains("unknown field"), "{e}");
    assert!(!e.contains("bob"), "{e}");
}

/// The project's probe server (tests/peers/probe_server.py, standard library only) as an
/// upstream server in in-process rooms.
fn probe_config(extra: &str) -> String {
    let probe = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/peers/probe_server.py"
    );
    format!("[servers.probe]\ncommand = [\"/usr/bin/python3\", \"{probe}\"]\n{extra}\n")
}

#[tokio::test]
async fn upstream_tools_are_listed_and_called_in_the_room() {
    let hub = TestHub::with_config(&probe_config("tools = { deny = [\"crash\"] }")).await;
    let a = hub.session("alice").await;
    let names = tool_names(&a.rpc("tools/list", json!({})).await);
    assert!(names.iter().any(|n| n == "probe__echo"), "{names:?}");
    assert!(names.iter().any(|n| n == "session_info"), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "probe__crash"),
        "denied tool listed: {names:?}"
    );

    let r = a
        .call("probe__echo", json!({"text": "through the hub"}))
        .await;
    assert!(!r.is_error, "{}", r.text);
    assert_eq!(r.text, "through the hub");
    let r = a
        .call("probe__fail", json!({"message": "on purpose"}))
        .await;
    assert!(r.is_error && r.text.contains("on purpose"), "{r:?}");
    let v = a
        .rpc(
            "tools/call",
            json!({"name": "probe__crash", "arguments": {}}),
        )
        .await;
    assert!(
        v.get("error").is_some() || v["result"]["isError"] == true,
        "{v}"
    );
    // The server ran in alice's one room.
    assert_eq!(hub.spawner.starts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_upstream_server_that_dies_fails_clearly_and_is_replaced() {
    let hub = TestHub::with_config(&probe_config("")).await;
    let a = hub.session("alice").await;
    let r = a.call("probe__crash", json!({})).await;
    assert!(r.is_error, "{r:?}");
    let r = a.call("probe__echo", json!({"text": "again"})).await;
    assert!(!r.is_error, "{}", r.text);
    assert_eq!(r.text, "again");
}

/// The 2026-07-28 checks in the order the conformance suite judges them, each error with the
/// request's id: a missing `_meta` field is -32602, header and `_meta` disagreeing is -32020
/// even for a version the hub does not speak, an unsupported version is -32022 with the
/// versions the hub does speak.
#[tokio::test]
async fn stateless_errors_come_in_the_order_the_spec_gives() {
    let hub = TestHub::start().await;
    let token = hub.user("alice", None).await;
    let meta = support::stateless_meta();
    let without = |key: &str| {
        let mut m = meta.clone();
        m.as_object_mut().expect("object").remove(key);
        json!({"_meta": m})
    };
    let discover = |id: i64, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": "server/discover", "params": params});
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "server/discover"),
    ];
    for (id, params) in [
        (101, json!({})),
        (102, without("io.modelcontextprotocol/protocolVersion")),
        (104, without("io.modelcontextprotocol/clientCapabilities")),
    ] {
        let (s, _, v) = hub
            .raw(&token, &headers, &discover(id, params.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{params}: {v}");
        assert_eq!(v["error"]["code"], -32602, "{params}: {v}");
        assert_eq!(v["id"], id, "{v}");
    }
    // clientInfo is optional.
    let (s, _, v) = hub
        .raw(
            &token,
            &headers,
            &discover(105, without("io.modelcontextprotocol/clientInfo")),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // An unsupported version, the same in header and _meta.
    let mut future = meta.clone();
    future["io.modelcontextprotocol/protocolVersion"] = json!("v999.0.0");
    let (s, _, v) = hub
        .raw(
            &token,
            &[
                ("mcp-protocol-version", "v999.0.0"),
                ("mcp-method", "server/discover"),
            ],
            &discover(301, json!({"_meta": future})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], -32022, "{v}");
    assert_eq!(v["id"], 301, "{v}");
    assert_eq!(v["error"]["data"]["requested"], "v999.0.0", "{v}");
    let supported = v["error"]["data"]["supported"].as_array().expect("list");
    assert!(supported.contains(&json!("2026-07-28")), "{v}");

    // Header and _meta disagree, one of them unsupported: a header mismatch, and the message
    // names the _meta key in full.
    let (s, _, v) = hub
        .raw(&token, &headers, &discover(302, json!({"_meta": future})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], -32020, "{v}");
    assert_eq!(v["id"], 302, "{v}");
    let msg = v["error"]["message"].as_str().expect("message");
    assert!(
        msg.contains("io.modelcontextprotocol/protocolVersion"),
        "{msg}"
    );
}

/// What 2026-07-28 removed answers 404 with -32601 under it (and keeps the request id);
/// sessionful revisions keep those methods.
#[tokio::test]
async fn removed_methods_are_not_found_under_2026_07_28_only() {
    let hub = TestHub::start().await;
    let token = hub.user("alice", None).await;
    for method in [
        "initialize",
        "ping",
        "logging/setLevel",
        "resources/subscribe",
        "resources/unsubscribe",
        "unknown/method",
    ] {
        let (s, headers, v) = hub.stateless(&token, method, json!({}), &[]).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method}: {v}");
        assert_eq!(v["error"]["code"], -32601, "{method}: {v}");
        assert_eq!(v["id"], 7, "{method}: {v}");
        assert!(!headers.contains_key("mcp-session-id"), "{method}");
    }
    // initialize with the new revision's _meta alone (no header) is no session either.
    let mut init = init_body("2026-07-28");
    init["params"]["_meta"] = support::stateless_meta();
    let (s, _, v) = hub.raw(&token, &[], &init).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], -32020, "{v}");

    let a = hub.session("alice").await;
    assert_eq!(a.rpc("ping", json!({})).await["result"], json!({}));
    let v = a.rpc("logging/setLevel", json!({"level": "warning"})).await;
    assert_eq!(v["result"], json!({}), "{v}");
    #[allow(deprecated)]
    let warning = rmcp::model::LoggingLevel::Warning;
    let session = hub.hub.sessions.get(&a.sid).expect("session");
    assert_eq!(session.log_level(), Some(warning));
    let v = a.rpc("logging/setLevel", json!({"level": "loud"})).await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert_eq!(session.log_level(), Some(warning));
}

/// `Mcp-Name` must repeat the body's name (tools/call, prompts/get) or URI (resources/read);
/// surrounding whitespace is not part of a header value.
#[tokio::test]
async fn the_mcp_name_header_must_match_the_body() {
    let hub = TestHub::start().await;
    let token = hub.user("alice", None).await;
    let call = json!({"name": "session_info", "arguments": {}});
    let (s, _, v) = hub.stateless(&token, "tools/call", call.clone(), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = hub
        .stateless(
            &token,
            "tools/call",
            call.clone(),
            &[("mcp-name", "  session_info\t")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for wrong in ["wrong_tool_name", "SESSION_INFO"] {
        let (s, _, v) = hub
            .stateless(&token, "tools/call", call.clone(), &[("mcp-name", wrong)])
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{wrong}: {v}");
        assert_eq!(v["error"]["code"], -32020, "{wrong}: {v}");
        assert_eq!(v["id"], 7, "{v}");
    }
    // Missing altogether.
    let mut params = call.clone();
    params["_meta"] = support::stateless_meta();
    let body = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": params});
    let (s, _, v) = hub
        .raw(
            &token,
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
            ],
            &body,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], -32020, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("Mcp-Name"),
        "{v}"
    );
    for (method, params, wrong) in [
        ("prompts/get", json!({"name": "p__x"}), "p__y"),
        (
            "resources/read",
            json!({"uri": "lodge://p/x"}),
            "lodge://p/y",
        ),
    ] {
        let (s, _, v) = hub
            .stateless(&token, method, params, &[("mcp-name", wrong)])
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method}: {v}");
        assert_eq!(v["error"]["code"], -32020, "{method}: {v}");
    }
    // A resource no server has is -32602 naming its URI.
    let uri = json!({"uri": "test://nonexistent"});
    let (s, _, v) = hub.stateless(&token, "resources/read", uri, &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert_eq!(v["error"]["data"]["uri"], "test://nonexistent", "{v}");
    // Methods without a name need no header.
    let (s, _, v) = hub.stateless(&token, "tools/list", json!({}), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Every 2026-07-28 result says `resultType`, built here or passed through from an upstream
/// server (which speaks an older revision and sends none); legacy results never carry it.
#[tokio::test]
async fn every_2026_07_28_result_has_a_result_type() {
    let hub = TestHub::with_config(&probe_config("")).await;
    let token = hub.user("alice", None).await;
    for (method, params) in [
        ("tools/list", json!({})),
        ("prompts/list", json!({})),
        ("resources/list", json!({})),
        ("resources/templates/list", json!({})),
        (
            "tools/call",
            json!({"name": "session_info", "arguments": {}}),
        ),
        (
            "tools/call",
            json!({"name": "probe__echo", "arguments": {"text": "hi"}}),
        ),
        (
            "prompts/get",
            json!({"name": "probe__greet", "arguments": {"name": "al"}}),
        ),
        (
            "resources/read",
            json!({"uri": "lodge://probe/probe://hello"}),
        ),
        (
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "nobody__x"},
                   "argument": {"name": "a", "value": ""}}),
        ),
    ] {
        let (s, _, v) = hub.stateless(&token, method, params.clone(), &[]).await;
        assert_eq!(s, StatusCode::OK, "{method} {params}: {v}");
        assert_eq!(
            v["result"]["resultType"], "complete",
            "{method} {params}: {v}"
        );
    }
    let a = hub.session("alice").await;
    for (method, params) in [
        ("prompts/list", json!({})),
        (
            "tools/call",
            json!({"name": "probe__echo", "arguments": {"text": "hi"}}),
        ),
    ] {
        let v = a.rpc(method, params).await;
        assert!(v["result"].is_object(), "{method}: {v}");
        assert!(v["result"].get("resultType").is_none(), "{method}: {v}");
    }
}

/// Prompts, resources and completions are declared whether or not an upstream server is
/// configured, since the hub answers those methods always, with list changes and resource
/// subscriptions (GET stream or subscriptions/listen); logging only to the sessionful
/// revisions, which have logging/setLevel.
#[tokio::test]
async fn discover_and_initialize_declare_what_the_hub_answers() {
    let hub = TestHub::start().await;
    let token = hub.user("alice", None).await;
    let (s, _, v) = hub
        .stateless(&token, "server/discover", json!({}), &[])
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let caps = &v["result"]["capabilities"];
    for c in ["tools", "prompts", "resources", "completions"] {
        assert!(caps[c].is_object(), "{c} missing: {v}");
    }
    // 2026-07-28 removed logging/setLevel; its subscriptions go through subscriptions/listen.
    assert!(caps.get("logging").is_none(), "{v}");
    assert_eq!(caps["resources"]["subscribe"], true, "{v}");
    for c in ["tools", "prompts", "resources"] {
        assert_eq!(caps[c]["listChanged"], true, "{c}: {v}");
    }
    assert_eq!(
        v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "lodge",
        "{v}"
    );
    let (s, _, v) = hub.stateless(&token, "prompts/list", json!({}), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["result"]["prompts"], json!([]), "{v}");

    let (_, _, v) = hub
        .send("/mcp", Some(&token), None, &init_body("2025-11-25"))
        .await;
    let caps = &v["result"]["capabilities"];
    for c in ["tools", "prompts", "resources", "completions", "logging"] {
        assert!(caps[c].is_object(), "{c} missing: {v}");
    }
    assert_eq!(caps["resources"]["subscribe"], true, "{v}");
}

/// `completion/complete` goes to the server that owns the prompt or resource, under that
/// server's own name for it; what no server owns completes to nothing.
#[tokio::test]
async fn completions_go_to_the_owning_server_or_complete_to_nothing() {
    let hub = TestHub::with_config(&probe_config("")).await;
    let a = hub.session("alice").await;
    let empty = json!({"values": [], "hasMore": false});
    for reference in [
        json!({"type": "ref/prompt", "name": "nobody__greet"}),
        json!({"type": "ref/prompt", "name": "no_server_part"}),
        json!({"type": "ref/resource", "uri": "file:///etc/passwd"}),
        json!({"type": "ref/other"}),
    ] {
        let v = a
            .rpc(
                "completion/complete",
                json!({"ref": reference, "argument": {"name": "name", "value": "a"}}),
            )
            .await;
        assert_eq!(v["result"]["completion"], empty, "{reference}: {v}");
    }
    let v = a
        .rpc(
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "probe__greet"},
                   "argument": {"name": "name", "value": "Al"}}),
        )
        .await;
    assert_eq!(
        v["result"]["completion"]["values"],
        json!(["Al:greet"]),
        "{v}"
    );
    let v = a
        .rpc(
            "completion/complete",
            json!({"ref": {"type": "ref/resource", "uri": "lodge://probe/probe://{x}"},
                   "argument": {"name": "x", "value": "y"}}),
        )
        .await;
    assert_eq!(
        v["result"]["completion"]["values"],
        json!(["y:probe://{x}"]),
        "{v}"
    );
}

/// At `sessions.max_per_user` a new session ends the user's least recently used one.
#[tokio::test]
async fn a_new_session_at_the_limit_ends_the_least_recently_used() {
    let hub = TestHub::with_config("[sessions]\nmax_per_user = 2\n").await;
    let first = hub.session("alice").await;
    let second = hub.session("alice").await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    first.rpc("ping", json!({})).await;
    let third = hub.session("alice").await;
    let (s, _, v) = hub
        .send(
            "/mcp",
            Some(&second.token),
            Some(&second.sid),
            &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    first.rpc("ping", json!({})).await;
    third.rpc("ping", json!({})).await;
    assert_eq!(hub.hub.sessions.count_for(user_id(&hub, "alice").await), 2);
}

/// A browser page the hub serves itself (same host and port) may call it; others may not.
#[tokio::test]
async fn the_hubs_own_origin_passes_the_origin_check() {
    let hub = TestHub::start().await;
    let token = hub.user("alice", None).await;
    let (s, _, v) = hub
        .stateless(
            &token,
            "tools/list",
            json!({}),
            &[("origin", "http://127.0.0.1:7420")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for other in ["http://evil.example", "http://127.0.0.1:7421"] {
        let (s, _, _) = hub
            .stateless(&token, "tools/list", json!({}), &[("origin", other)])
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{other}");
    }
}

/// A server that cannot start says so in session_info: its state and the reason.
#[tokio::test]
async fn session_info_shows_why_a_server_does_not_start() {
    let hub = TestHub::with_config(&format!(
        "{}[servers.broken]\ncommand = [\"/bin/false\"]\n",
        probe_config("")
    ))
    .await;
    let a = hub.session("alice").await;
    let names = tool_names(&a.rpc("tools/list", json!({})).await);
    assert!(names.iter().any(|n| n == "probe__echo"), "{names:?}");
    let info = a.ok("session_info", json!({})).await;
    let servers = info["servers"].as_array().expect("servers");
    let find = |n: &str| {
        servers
            .iter()
            .find(|s| s["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing: {info}"))
    };
    assert_eq!(find("probe")["state"], "running", "{info}");
    assert!(find("probe")["last_start_error"].is_null(), "{info}");
    let broken = find("broken");
    assert!(
        broken["state"] == "failed" || broken["state"] == "backing off",
        "{info}"
    );
    assert_eq!(broken["failures"], 1, "{info}");
    assert!(
        broken["last_start_error"]
            .as_str()
            .is_some_and(|e| e.contains("broken")),
        "{info}"
    );
}

/// An upstream tool's arguments marked `x-mcp-header` must be repeated in `Mcp-Param-*`
/// headers by 2026-07-28 clients (plain or `=?base64?…?=`), and the hub checks them, since
/// the upstream server behind it never sees the headers.
#[tokio::test]
async fn param_headers_of_upstream_tools_are_checked() {
    let hub = TestHub::with_config(&probe_config("")).await;
    let token = hub.user("alice", None).await;
    let call = json!({"name": "probe__routed", "arguments": {"region": "Hello"}});
    for ok in ["Hello", "=?base64?SGVsbG8=?="] {
        let (s, _, v) = hub
            .stateless(
                &token,
                "tools/call",
                call.clone(),
                &[("mcp-param-region", ok)],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{ok}: {v}");
        assert_eq!(v["result"]["content"][0]["text"], "Hello", "{v}");
    }
    for bad in ["Goodbye", "=?base64?SGVsbG8?=", "=?base64?SGVs!!!bG8=?="] {
        let (s, _, v) = hub
            .stateless(
                &token,
                "tools/call",
                call.clone(),
                &[("mcp-param-region", bad)],
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["error"]["code"], -32020, "{bad}: {v}");
    }
    let (s, _, v) = hub.stateless(&token, "tools/call", call.clone(), &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], -32020, "{v}");
    // Sessionful clients route nothing on headers and send none.
    let a = hub.session("alice").await;
    let r = a.call("probe__routed", json!({"region": "Hello"})).await;
    assert_eq!(r.text, "Hello", "{r:?}");
}
