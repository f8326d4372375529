//! Attacks on the hub's edge: connections that never finish their headers or pile up from one
//! address, forged X-Forwarded-For, doubled MCP headers, made-up tool names that would become
//! metric labels, and one user's request loop. Each test also checks that others are served.

mod common;

use common::peers::Peers;
use common::{TestHub, http, init_body, open_session, session_info_call};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn hub_addr(hub: &TestHub) -> SocketAddr {
    hub.base
        .trim_start_matches("http://")
        .parse()
        .expect("hub address")
}

/// A raw connection to the hub from local address `from` (127.0.0.x).
async fn connect_from(hub: &TestHub, from: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind local address");
    socket.connect(hub_addr(hub)).await.expect("connect")
}

/// Waits up to `within` for the hub to close `s` (EOF or reset); true if it did.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A refusal or an answer may come before the close.
            Ok(Ok(_)) => continue,
        }
    }
}

/// One `GET /api/health` on a raw connection; returns the status line.
async fn health_status(hub: &TestHub, s: &mut TcpStream) -> String {
    let req = format!(
        "GET /api/health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        hub_addr(hub)
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return "write failed".into();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    text.lines()
        .next()
        .unwrap_or("closed without a reply")
        .to_owned()
}

async fn assert_serves(hub: &TestHub, token: &str) {
    let sid = open_session(&hub.mcp_url(), token).await;
    let r = http()
        .post(hub.mcp_url())
        .bearer_auth(token)
        .header("mcp-session-id", &sid)
        .json(&session_info_call())
        .send()
        .await
        .expect("session_info");
    assert_eq!(r.status(), 200, "a normal client must be served");
}

/// Slowloris: connections that send half their headers are closed after
/// `server.header_read_timeout`, silent ones and ones that stall mid-body after
/// `server.idle_timeout`, and a normal client is served all along; a kept-alive connection
/// between requests gets the idle timeout, not the header one.
#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed_while_others_are_served() {
    let hub = TestHub::start_env(&[
        ("LODGE_SERVER_HEADER_READ_TIMEOUT", "1s"),
        ("LODGE_SERVER_IDLE_TIMEOUT", "6s"),
    ]);
    hub.add_user("alice");
    let alice = hub.token("alice", &[]);
    let started = Instant::now();
    let mut slow = Vec::new();
    let mut silent = Vec::new();
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let mut s = connect_from(&hub, [127, 0, 0, 1]).await;
        s.write_all(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"jsonrpc\":",
        )
        .await
        .expect("head and part of a body");
        stalled.push(s);
    }
    for _ in 0..60 {
        let mut s = connect_from(&hub, [127, 0, 0, 1]).await;
        s.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never-Ending: ")
            .await
            .expect("half headers");
        slow.push(s);
        silent.push(connect_from(&hub, [127, 0, 0, 1]).await);
    }
    // A keep-alive connection that completed one request.
    let mut kept = connect_from(&hub, [127, 0, 0, 1]).await;
    let req = format!(
        "GET /api/health HTTP/1.1\r\nHost: {}\r\n\r\n",
        hub_addr(&hub)
    );
    kept.write_all(req.as_bytes()).await.expect("request");
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.expect("reply");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    assert_serves(&hub, &alice).await;

    for (i, s) in slow.iter_mut().enumerate() {
        let left = Duration::from_secs(4).saturating_sub(started.elapsed());
        assert!(
            closed_within(s, left).await,
            "half-header connection {i} still open after {:?} (header_read_timeout 1s)",
            started.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow connections took {:?}",
        started.elapsed()
    );
    // The silent ones and the kept-alive one wait for the idle timeout, not the header one.
    assert!(
        !closed_within(&mut silent[0], Duration::from_millis(200)).await,
        "a connection that sent nothing was closed by the header timeout"
    );
    kept.write_all(req.as_bytes())
        .await
        .expect("a kept-alive connection closed before its idle timeout");
    let n = kept.read(&mut buf).await.expect("second reply");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    assert_serves(&hub, &alice).await;
    for (i, s) in silent.iter_mut().chain(&mut stalled).enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(10)).await,
            "silent or stalled connection {i} still open after the idle timeout"
        );
    }
    assert_serves(&hub, &alice).await;
}

/// Connections beyond `server.max_connections_per_address` are answered 503 and closed, while
/// another address still gets through; a closed connection gives its place back.
#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_refused_but_other_addresses_are_served() {
    let hub = TestHub::start_env(&[("LODGE_SERVER_MAX_CONNECTIONS_PER_ADDRESS", "8")]);
    hub.add_user("alice");
    let alice = hub.token("alice", &[]);
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect_from(&hub, [127, 0, 0, 1]).await);
    }
    // Make sure the hub has accepted all eight before the ninth comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ninth = connect_from(&hub, [127, 0, 0, 1]).await;
    let status = health_status(&hub, &mut ninth).await;
    assert!(
        status.contains("503") || status == "closed without a reply" || status == "write failed",
        "the 9th connection from one address was served: {status}"
    );
    let mut other = connect_from(&hub, [127, 0, 0, 2]).await;
    assert_eq!(
        health_status(&hub, &mut other).await,
        "HTTP/1.1 200 OK",
        "another address must still get through"
    );
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect_from(&hub, [127, 0, 0, 1]).await;
        if health_status(&hub, &mut again).await == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a closed connection did not give its place back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    assert_serves(&hub, &alice).await;
}

/// An initialize with a wrong token, from local address `from`, with `X-Forwarded-For: xff`.
async fn wrong_token_from(hub: &TestHub, from: [u8; 4], xff: &str) -> StatusCode {
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .build()
        .expect("client");
    client
        .post(hub.mcp_url())
        .bearer_auth(format!("lodge_{}", "W".repeat(40)))
        .header("x-forwarded-for", xff)
        .json(&init_body("2025-11-25"))
        .send()
        .await
        .expect("request")
        .status()
}

/// `X-Forwarded-For` decides the client address (here: for the failed-authentication limit)
/// only when the peer is a trusted proxy; from anyone else it is ignored, so rotating it does
/// not escape the limit.
#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let hub = TestHub::start_env(&[
        ("LODGE_AUTH_FAILED_AUTH_PER_MINUTE", "3"),
        ("LODGE_SERVER_TRUSTED_PROXIES", r#"["127.0.0.1/32"]"#),
    ]);
    hub.add_user("alice");
    let alice = hub.token("alice", &[]);
    // Through the trusted proxy (127.0.0.1): each forwarded client has its own budget.
    for _ in 0..3 {
        assert_eq!(
            wrong_token_from(&hub, [127, 0, 0, 1], "198.51.100.9, 203.0.113.5").await,
            401
        );
    }
    assert_eq!(
        wrong_token_from(&hub, [127, 0, 0, 1], "203.0.113.5").await,
        429,
        "the forwarded client 203.0.113.5 is over its budget"
    );
    assert_eq!(
        wrong_token_from(&hub, [127, 0, 0, 1], "203.0.113.6").await,
        401,
        "another forwarded client behind the same proxy has its own budget"
    );
    // From an untrusted peer (127.0.0.2) the header is ignored: a new forged address per
    // request does not help.
    for i in 0..3 {
        let forged = format!("192.0.2.{i}");
        assert_eq!(wrong_token_from(&hub, [127, 0, 0, 2], &forged).await, 401);
    }
    assert_eq!(
        wrong_token_from(&hub, [127, 0, 0, 2], "192.0.2.77").await,
        429,
        "a forged X-Forwarded-For from an untrusted peer escaped the limit"
    );
    // The audit trail names the forwarded client, not the proxy.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = hub.ok(&["audit", "--json", "--kind", "auth_failure"]);
        if out.contains("203.0.113.6") {
            assert!(!out.contains("192.0.2.0"), "a forged address was recorded");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no audit record names 203.0.113.6"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_serves(&hub, &alice).await;
}

/// Two `Mcp-Method` or two `MCP-Protocol-Version` headers are refused with 400 and a JSON-RPC
/// error naming the header, even when the first one alone would be right.
#[tokio::test]
async fn duplicate_mcp_headers_are_refused() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let alice = hub.token("alice", &[]);
    let sid = open_session(&hub.mcp_url(), &alice).await;
    let r = http()
        .post(hub.mcp_url())
        .bearer_auth(&alice)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&session_info_call())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        v["jsonrpc"] == "2.0" && msg.contains("MCP-Protocol-Version") && msg.contains("once"),
        "{v}"
    );

    let stateless = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "session_info", "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let send = |methods: &'static [&'static str]| {
        let mut req = http()
            .post(hub.mcp_url())
            .bearer_auth(&alice)
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-name", "session_info");
        for m in methods {
            req = req.header("mcp-method", *m);
        }
        req.json(&stateless).send()
    };
    let r = send(&["tools/call", "tools/list"]).await.expect("request");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("Mcp-Method") && msg.contains("2 times"), "{v}");
    // The same request with the header once is fine.
    let r = send(&["tools/call"]).await.expect("request");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

/// Calls of tools the caller does not have (made-up built-ins, unknown servers, a configured
/// server's unknown tool) and overlong names get a clear error, and their names reach neither
/// /api/metrics nor the audit trail.
#[tokio::test]
async fn unknown_and_overlong_tool_names_leave_no_trace() {
    let p = Peers::get();
    let config = format!(
        "[rooms]\nread_only_paths = [\"{dir}\"]\n[metrics]\npublic = true\n\
         [servers.probe]\ncommand = [\"/usr/bin/python3\", \"{probe}\"]\n",
        dir = p.dir.display(),
        probe = p.probe().display()
    );
    let hub = TestHub::start_with_config(&config, &[("LODGE_SESSIONS_FLUSH_INTERVAL", "200ms")]);
    let a = hub.user_session("alice", &[]).await;
    // The server runs and answers, so the names below are judged against its real catalog.
    let echo = a.call("probe__echo", json!({"text": "hi"})).await;
    assert!(!echo.is_error, "{}", echo.text);

    let marker = "zq7marker";
    let long = format!("probe__{marker}{}", "x".repeat(1 << 20));
    let v = a
        .rpc("tools/call", json!({"name": long, "arguments": {}}))
        .await;
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("at most 128 bytes") && !msg.contains(marker),
        "{}",
        &msg[..msg.len().min(300)]
    );
    for name in [
        format!("probe__{marker}-nope"),
        format!("nosuch__{marker}"),
        format!("{marker}_builtin"),
        format!("probe__{marker}\nuser=bob tool=secret_get"),
    ] {
        let v = a
            .rpc("tools/call", json!({"name": name, "arguments": {}}))
            .await;
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains("unknown tool"), "{name:?}: {v}");
    }
    // A known call afterwards, as a control: it must show up in both places.
    a.ok("session_info", json!({})).await;

    let metrics = http()
        .get(format!("{}/api/metrics", hub.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains(r#"tool="session_info""#),
        "control missing"
    );
    assert!(metrics.contains(r#"tool="probe__echo""#), "control missing");
    assert!(
        !metrics.contains(marker),
        "a made-up tool name became a metric label"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let out = hub.ok(&["audit", "--json", "--kind", "tool_call"]);
        if out.contains("\"session_info\"") {
            break out;
        }
        assert!(Instant::now() < deadline, "control call not audited: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(audit.contains("probe__echo"), "control missing: {audit}");
    assert!(
        !audit.contains(marker),
        "a made-up tool name reached the audit trail"
    );
}

/// A user over their profile's request budget gets 429 with `Retry-After` and a JSON-RPC
/// error; another user is unaffected, and the budget refills.
#[tokio::test]
async fn a_user_over_budget_gets_429_and_others_are_unaffected() {
    let hub = TestHub::start_with_config(
        "[profiles.tight]\nrequests_per_second = 0.2\nrequest_burst = 4\n",
        &[],
    );
    let flood = hub.user_session("flood", &["--profile", "tight"]).await;
    let calm = hub.user_session("calm", &[]).await;
    // initialize took one: three more pass, then the bucket is empty.
    for i in 0..3 {
        let r = flood.post(&session_info_call()).await;
        assert_eq!(r.status(), 200, "request {i} within the burst");
    }
    let asked = Instant::now();
    let r = flood.post(&session_info_call()).await;
    assert_eq!(r.status(), 429);
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "a refusal must be held, so a loop ignoring Retry-After cannot spin on it"
    );
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=5).contains(&retry), "one request per 5 s: {retry}");
    let v: Value = r.json().await.expect("json");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        v["jsonrpc"] == "2.0" && msg.contains("profiles.tight.requests_per_second"),
        "{v}"
    );
    for _ in 0..20 {
        assert_eq!(calm.post(&session_info_call()).await.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(
        flood.post(&session_info_call()).await.status(),
        200,
        "the budget refills"
    );
}
