//! Attacks on the HTTP/MCP surface, one test each. Every test ends by checking that a legitimate
//! user is still served, so no attack may take the hub down with it.

mod common;

use common::{TestHub, http, init_body, open_session};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

struct World {
    hub: TestHub,
    alice: String,
    bob: String,
}

fn world_env(env: &[(&str, &str)]) -> World {
    let hub = TestHub::start_env(env);
    hub.add_user("alice");
    hub.add_user("bob");
    let alice = hub.token("alice", &[]);
    let bob = hub.token("bob", &[]);
    World { hub, alice, bob }
}

fn world() -> World {
    world_env(&[])
}

fn call_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "session_info", "arguments": {}}})
}

async fn post(url: &str, auth: Option<&str>, sid: Option<&str>, body: &Value) -> Response {
    let mut r = http().post(url).json(body);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    if let Some(s) = sid {
        r = r.header("mcp-session-id", s);
    }
    r.send().await.expect("request")
}

/// An `initialize` on `/mcp` with this exact `Authorization` header value.
async fn init_as(w: &World, authorization: &str) -> Response {
    post(
        &w.hub.mcp_url(),
        Some(authorization),
        None,
        &init_body("2025-11-25"),
    )
    .await
}

/// The liveness check every attack ends with: alice can still open a session and call a tool.
async fn still_serves(w: &World) {
    let sid = open_session(&w.hub.mcp_url(), &w.alice).await;
    let r = post(
        &w.hub.mcp_url(),
        Some(&format!("Bearer {}", w.alice)),
        Some(&sid),
        &call_body(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["result"]["structuredContent"]["user"], "alice");
}

/// Asserts an HTTP status and JSON-RPC error code, showing the body when they differ.
fn expect_rpc_error(s: StatusCode, v: &Value, status: u16, code: i64, what: &str) {
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_i64()),
        (status, Some(code)),
        "{what}: {v}"
    );
}

async fn error_json(r: Response) -> (StatusCode, Value) {
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn no_token_gets_401_with_www_authenticate() {
    let w = world();
    let r = post(&w.hub.mcp_url(), None, None, &init_body("2025-11-25")).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .starts_with("Bearer")
    );
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        !challenge.contains("error="),
        "RFC 6750: no error code without credentials: {challenge}"
    );
    let (_, v) = error_json(r).await;
    // MCP endpoints answer in JSON-RPC form so MCP clients can show the reason.
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["error"]["data"]["reason"], "unauthorized");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("lodge token create"),
        "{v}"
    );
    still_serves(&w).await;
}

#[tokio::test]
async fn malformed_authorization_headers_get_401() {
    let w = world();
    let good = w.alice.clone();
    for h in [
        "Bearer",
        "Basic YWxpY2U6cHc=",
        &format!("Bearer {good} extra"),
        "Bearer lodge_",
        &format!("Bearer{good}"),
    ] {
        let r = init_as(&w, h).await;
        assert_eq!(r.status(), 401, "header {h:?}");
        assert!(r.headers().contains_key("www-authenticate"));
    }
    // JupyterHub's `token` scheme is accepted.
    let r = init_as(&w, &format!("token {good}")).await;
    assert_eq!(r.status(), 200);
    still_serves(&w).await;
}

#[tokio::test]
async fn wrong_tokens_get_401() {
    let w = world();
    // Right id, wrong secret: the id lookup succeeds, the constant-time hash compare must not.
    let mut forged = w.alice.clone();
    let last = forged.pop().expect("char");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let unknown = format!("lodge_{}", "x".repeat(40));
    for t in [
        forged.as_str(),
        unknown.as_str(),
        "ghp_notours",
        &w.alice[..20],
    ] {
        let r = init_as(&w, &format!("Bearer {t}")).await;
        assert_eq!(r.status(), 401, "token {t}");
        let challenge = r.headers()["www-authenticate"].to_str().expect("ascii");
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
    still_serves(&w).await;
}

#[tokio::test]
async fn expired_token_gets_401() {
    let w = world();
    let short = w.hub.token("alice", &["--expires", "1s"]);
    let r = init_as(&w, &format!("Bearer {short}")).await;
    assert_eq!(r.status(), 200, "fresh token must work first");
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let r = init_as(&w, &format!("Bearer {short}")).await;
    let (s, v) = error_json(r).await;
    assert_eq!(s, 401);
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("expired"),
        "{v}"
    );
    still_serves(&w).await;
}

#[tokio::test]
async fn revoked_token_gets_401_via_rest_at_once_and_via_cli_within_cache_ttl() {
    let w = world();
    let admin = {
        w.hub.add_admin("root");
        w.hub.token("root", &["--scopes", "inherit"])
    };
    let victim = w.hub.token("alice", &["--note", "to revoke"]);
    let id = &victim["lodge_".len().."lodge_".len() + 8];
    let auth = format!("Bearer {victim}");
    assert_eq!(init_as(&w, &auth).await.status(), 200);
    let r = http()
        .delete(format!("{}/api/users/alice/tokens/{id}", w.hub.base))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    assert_eq!(init_as(&w, &auth).await.status(), 401);

    // CLI revocation reaches a running hub within auth.token_cache (default 2 s).
    let victim2 = w.hub.token("alice", &[]);
    let auth2 = format!("Bearer {victim2}");
    assert_eq!(init_as(&w, &auth2).await.status(), 200);
    w.hub.ok(&["token", "revoke", &victim2[6..14]]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
    loop {
        let s = init_as(&w, &auth2).await.status();
        if s == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CLI-revoked token still accepted after 4 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    still_serves(&w).await;
}

#[tokio::test]
async fn other_users_endpoint_is_403_alike_for_existing_missing_and_invalid_users() {
    let w = world();
    let auth = format!("Bearer {}", w.alice);
    let mut bodies = Vec::new();
    for target in [
        "bob",
        "ghost",
        "Not-A-Name",
        "alice%2F..%2Fbob",
        "%2e%2e%2fbob",
        "a%00b",
    ] {
        let r = post(
            &w.hub.user_url(target),
            Some(&auth),
            None,
            &init_body("2025-11-25"),
        )
        .await;
        let (s, v) = error_json(r).await;
        assert_eq!(s, 403, "target {target}");
        bodies.push(v);
    }
    assert!(
        bodies.windows(2).all(|p| p[0] == p[1]),
        "403 bodies differ: {bodies:?}"
    );
    // Own endpoint by name works.
    let r = post(
        &w.hub.user_url("alice"),
        Some(&auth),
        None,
        &init_body("2025-11-25"),
    )
    .await;
    assert_eq!(r.status(), 200);
    still_serves(&w).await;
}

/// `session_info` through `/user/{target}/mcp` with this token: the HTTP status, and the
/// user and `acting_via` it reports when it ran.
async fn act_in(w: &World, target: &str, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let r = post(
        &w.hub.user_url(target),
        Some(&auth),
        None,
        &init_body("2025-11-25"),
    )
    .await;
    if r.status() != 200 {
        return (r.status().as_u16(), Value::Null);
    }
    let sid = open_session(&w.hub.user_url(target), token).await;
    let r = post(
        &w.hub.user_url(target),
        Some(&auth),
        Some(&sid),
        &call_body(),
    )
    .await;
    let s = r.status().as_u16();
    let v: Value = r.json().await.expect("json");
    (s, v["result"]["structuredContent"].clone())
}

#[tokio::test]
async fn an_admin_token_acts_in_another_room_only_with_access_rooms() {
    // admin_access on: the operator allows acting in other users' rooms, the token decides.
    let w = world_env(&[("LODGE_AUTH_ADMIN_ACCESS", "true")]);
    w.hub.add_admin("root");
    for scopes in [
        "read:metrics",
        "mcp",
        "inherit",
        "mcp,self,admin:users,admin:tokens",
    ] {
        let t = w.hub.token("root", &["--scopes", scopes]);
        let (s, _) = act_in(&w, "bob", &t).await;
        assert_eq!(
            s, 403,
            "an admin token with only {scopes} acted in bob's room"
        );
    }
    let t = w.hub.token("root", &["--scopes", "access:rooms"]);
    for target in ["bob", "alice"] {
        let (s, v) = act_in(&w, target, &t).await;
        assert_eq!(s, 200, "access:rooms on {target}");
        assert_eq!(v["user"], target);
        assert_eq!(v["acting_via"], "root");
    }
    // A user cannot hold it at all.
    let out = w
        .hub
        .lodge(&["token", "create", "alice", "--scopes", "access:rooms"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not hold"));
    still_serves(&w).await;
}

#[tokio::test]
async fn filtered_access_rooms_acts_for_exactly_one_user() {
    let w = world_env(&[("LODGE_AUTH_ADMIN_ACCESS", "true")]);
    w.hub.add_user("carol");
    w.hub.add_admin("svc");
    let svc = w.hub.token("svc", &["--scopes", "access:rooms!user=bob"]);
    let (s, v) = act_in(&w, "bob", &svc).await;
    assert_eq!(s, 200);
    assert_eq!(v["user"], "bob");
    assert_eq!(v["acting_via"], "svc");
    for other in ["carol", "alice", "svc", "ghost"] {
        assert_eq!(act_in(&w, other, &svc).await.0, 403, "svc token on {other}");
    }
    let r = init_as(&w, &format!("Bearer {svc}")).await;
    assert_eq!(r.status(), 403, "a bob-only token has no own /mcp");
    still_serves(&w).await;
}

#[tokio::test]
async fn acting_in_other_rooms_needs_admin_access_and_one_scope_name() {
    let w = world();
    w.hub.add_admin("root");
    // admin_access off (the default): access:rooms cannot be minted, and the error says why.
    let out = w.hub.lodge(&[
        "token",
        "create",
        "root",
        "--scopes",
        "access:rooms!user=bob",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.admin_access"), "{err}");
    // The old service-token form no longer acts for bob; the error names the scope to use.
    let out = w
        .hub
        .lodge(&["token", "create", "root", "--scopes", "mcp!user=bob"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("access:rooms!user=bob"), "{err}");
    // An admin's token, whatever it holds, is refused everywhere but its own room.
    let t = w.hub.token("root", &["--scopes", "inherit"]);
    assert_eq!(act_in(&w, "bob", &t).await.0, 403);
    assert_eq!(act_in(&w, "root", &w.hub.token("root", &[])).await.0, 200);
    still_serves(&w).await;
}

#[tokio::test]
async fn stolen_session_id_is_useless_to_another_user() {
    let w = world();
    let sid = open_session(&w.hub.mcp_url(), &w.alice).await;
    let bob = format!("Bearer {}", w.bob);
    let r = post(&w.hub.mcp_url(), Some(&bob), Some(&sid), &call_body()).await;
    assert_eq!(r.status(), 404, "bob used alice's session");
    let r = post(&w.hub.user_url("bob"), Some(&bob), Some(&sid), &call_body()).await;
    assert_eq!(r.status(), 404);
    let r = http()
        .delete(w.hub.mcp_url())
        .bearer_auth(&w.bob)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 404, "bob ended alice's session");
    // A random id and a junk id give the same answer as the stolen one.
    for junk in [&"0".repeat(32), "../../etc/passwd", ""] {
        let r = post(&w.hub.mcp_url(), Some(&bob), Some(junk), &call_body()).await;
        assert!(
            r.status() == 404 || (junk.is_empty() && r.status() == 400),
            "junk {junk:?}: {}",
            r.status()
        );
    }
    // Alice's session is intact.
    let r = post(
        &w.hub.mcp_url(),
        Some(&format!("Bearer {}", w.alice)),
        Some(&sid),
        &call_body(),
    )
    .await;
    assert_eq!(r.status(), 200);
    still_serves(&w).await;
}

#[tokio::test]
async fn forged_origin_and_host_are_refused_before_auth() {
    let w = world();
    let auth = format!("Bearer {}", w.alice);
    let r = http()
        .post(w.hub.mcp_url())
        .header("authorization", &auth)
        .header("origin", "http://evil.example")
        .json(&init_body("2025-11-25"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 403);
    let r = http()
        .post(w.hub.mcp_url())
        .header("authorization", &auth)
        .header("host", "evil.example")
        .json(&init_body("2025-11-25"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 403, "DNS-rebinding Host must be refused");
    still_serves(&w).await;
}

#[tokio::test]
async fn allowed_origin_passes() {
    let w = world_env(&[("LODGE_SERVER_ALLOWED_ORIGINS", "[\"https://app.example\"]")]);
    let r = http()
        .post(w.hub.mcp_url())
        .bearer_auth(&w.alice)
        .header("origin", "https://app.example")
        .json(&init_body("2025-11-25"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    still_serves(&w).await;
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let w = world_env(&[("LODGE_SERVER_MAX_BODY_BYTES", "65536")]);
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "session_info", "arguments": {"pad": "x".repeat(200_000)}}});
    let sid = open_session(&w.hub.mcp_url(), &w.alice).await;
    let r = post(
        &w.hub.mcp_url(),
        Some(&format!("Bearer {}", w.alice)),
        Some(&sid),
        &big,
    )
    .await;
    let (s, v) = error_json(r).await;
    assert_eq!(s, 413);
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("max_body_bytes"),
        "{v}"
    );
    still_serves(&w).await;
}

async fn raw(w: &World, sid: Option<&str>, body: &str, content_type: &str) -> (StatusCode, Value) {
    let mut r = http()
        .post(w.hub.mcp_url())
        .bearer_auth(&w.alice)
        .header("content-type", content_type)
        .body(body.to_owned());
    if let Some(s) = sid {
        r = r.header("mcp-session-id", s);
    }
    error_json(r.send().await.expect("req")).await
}

#[tokio::test]
async fn malformed_json_rpc_gets_precise_errors() {
    let w = world();
    let sid = open_session(&w.hub.mcp_url(), &w.alice).await;
    let cases: [(&str, u16, i64); 7] = [
        ("{not json", 400, -32700),
        ("", 400, -32700),
        (r#"{"id":1,"method":"ping"}"#, 400, -32600),
        (
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            400,
            -32600,
        ),
        (r#"{"jsonrpc":"2.0","id":1,"method":42}"#, 400, -32600),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1,2]}"#,
            400,
            -32602,
        ),
        (r#""just a string""#, 400, -32600),
    ];
    for (body, status, code) in cases {
        let (s, v) = raw(&w, Some(&sid), body, "application/json").await;
        assert_eq!(s.as_u16(), status, "body {body:?}: {v}");
        assert_eq!(v["error"]["code"], code, "body {body:?}: {v}");
        assert_eq!(v["jsonrpc"], "2.0");
    }
    let (s, _) = raw(
        &w,
        Some(&sid),
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
        "text/plain",
    )
    .await;
    assert_eq!(s, 415);
    // Bad tool arguments are a tool error the model can read, not a protocol failure.
    let bad_args = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"session_info","arguments":{"user":"bob"}}}"#;
    let (s, v) = raw(&w, Some(&sid), bad_args, "application/json").await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(
        v["result"]["content"][0]["text"]
            .as_str()
            .expect("text")
            .contains("unknown field"),
        "{v}"
    );
    let unknown_tool = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"rm_rf","arguments":{}}}"#;
    let (_, v) = raw(&w, Some(&sid), unknown_tool, "application/json").await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    still_serves(&w).await;
}

#[tokio::test]
async fn unknown_method_is_method_not_found_in_both_revisions() {
    let w = world();
    let sid = open_session(&w.hub.mcp_url(), &w.alice).await;
    let (s, v) = raw(
        &w,
        Some(&sid),
        r#"{"jsonrpc":"2.0","id":9,"method":"sudo/make_me_admin"}"#,
        "application/json",
    )
    .await;
    expect_rpc_error(s, &v, 200, -32601, "");
    assert_eq!(v["id"], 9);
    let r = http()
        .post(w.hub.mcp_url())
        .bearer_auth(&w.alice)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "sudo/make_me_admin")
        .json(&json!({"jsonrpc": "2.0", "id": 10, "method": "sudo/make_me_admin", "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}}}))
        .send()
        .await
        .expect("req");
    let (s, v) = error_json(r).await;
    expect_rpc_error(s, &v, 404, -32601, "");
    still_serves(&w).await;
}

#[tokio::test]
async fn batches_of_garbage_are_refused() {
    let w = world();
    let sid = open_session(&w.hub.mcp_url(), &w.alice).await;
    for body in [
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/list"}]"#,
        r#"[1, "two", null, {}, [[]]]"#,
        "[]",
    ] {
        let (s, v) = raw(&w, Some(&sid), body, "application/json").await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(v["error"]["code"], -32600, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .expect("msg")
                .contains("batch"),
            "{v}"
        );
    }
    still_serves(&w).await;
}

#[tokio::test]
async fn stateless_requests_with_inconsistent_versions_are_refused() {
    let w = world();
    let meta = |v: &str| json!({"io.modelcontextprotocol/protocolVersion": v, "io.modelcontextprotocol/clientCapabilities": {}});
    let send =
        async |header: Option<&'static str>, method_header: Option<&'static str>, meta: Value| {
            let mut r = http().post(w.hub.mcp_url()).bearer_auth(&w.alice);
            if let Some(h) = header {
                r = r.header("mcp-protocol-version", h);
            }
            if let Some(m) = method_header {
                r = r.header("mcp-method", m);
            }
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                "params": {"_meta": meta}});
            let r = r.json(&body).send().await.expect("request");
            error_json(r).await
        };
    let (s, v) = send(Some("2026-07-28"), Some("tools/list"), meta("2026-07-28")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["tools"][0]["name"], "session_info");
    let (s, v) = send(None, None, meta("2026-07-28")).await;
    expect_rpc_error(s, &v, 400, -32020, "missing header");
    let (s, v) = send(Some("2026-07-28"), Some("tools/call"), meta("2026-07-28")).await;
    expect_rpc_error(s, &v, 400, -32020, "method header lies");
    let (s, v) = send(Some("2099-01-01"), None, meta("2099-01-01")).await;
    expect_rpc_error(s, &v, 400, -32022, "future version");
    let (s, v) = send(Some("2026-07-28"), None, meta("2026-07-28")).await;
    expect_rpc_error(s, &v, 400, -32020, "missing Mcp-Method header");
    let (s, v) = send(None, None, json!({})).await;
    expect_rpc_error(s, &v, 400, -32600, "no session, no version");
    still_serves(&w).await;
}

#[tokio::test]
async fn failed_auth_flood_is_rate_limited_but_known_tokens_still_work() {
    let w = world_env(&[("LODGE_AUTH_FAILED_AUTH_PER_MINUTE", "5")]);
    // Alice's token is verified once before the flood.
    let sid = open_session(&w.hub.mcp_url(), &w.alice).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let t = format!("Bearer lodge_{:0>40}", i);
        statuses.push(init_as(&w, &t).await.status().as_u16());
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // Missing and malformed credentials count against the same budget (no audit flood).
    assert_eq!(init_as(&w, "Bearer lodge_guess").await.status(), 429);
    assert_eq!(init_as(&w, "Basic x").await.status(), 429);
    let r = post(&w.hub.mcp_url(), None, None, &init_body("2025-11-25")).await;
    assert_eq!(r.status(), 429);
    let r = init_as(&w, &format!("Bearer lodge_{:0>40}", 99)).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let r = post(
        &w.hub.mcp_url(),
        Some(&format!("Bearer {}", w.alice)),
        Some(&sid),
        &call_body(),
    )
    .await;
    assert_eq!(
        r.status(),
        200,
        "a verified token must not be locked out by a guesser on the same address"
    );
    still_serves(&w).await;
}

#[tokio::test]
async fn a_session_cannot_switch_protocol_version() {
    let w = world();
    let sid = open_session(&w.hub.mcp_url(), &w.alice).await;
    let r = http()
        .post(w.hub.mcp_url())
        .bearer_auth(&w.alice)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-06-18")
        .json(&call_body())
        .send()
        .await
        .expect("req");
    let (s, v) = error_json(r).await;
    expect_rpc_error(s, &v, 400, -32020, "session negotiated 2025-11-25");
    still_serves(&w).await;
}

#[tokio::test]
async fn missing_session_and_get_stream_are_clear() {
    let w = world();
    let (s, v) = raw(
        &w,
        None,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        "application/json",
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("initialize"),
        "{v}"
    );
    let r = http()
        .get(w.hub.mcp_url())
        .bearer_auth(&w.alice)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 405, "a GET stream needs a session");
    assert_eq!(r.headers()["allow"], "GET, POST, DELETE");
    assert_eq!(
        error_json(r).await.1["error"]["data"]["reason"],
        "method_not_allowed"
    );
    let r = http().get(w.hub.mcp_url()).send().await.expect("get");
    assert_eq!(
        r.status(),
        401,
        "GET without a token is an auth failure first"
    );
    // Another user's session (or a made-up one) opens no stream.
    let bobs = common::open_session(&w.hub.mcp_url(), &w.bob).await;
    for sid in [bobs.as_str(), "00000000000000000000000000000000"] {
        let r = http()
            .get(w.hub.mcp_url())
            .bearer_auth(&w.alice)
            .header("mcp-session-id", sid)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "{sid}");
    }
    still_serves(&w).await;
}
