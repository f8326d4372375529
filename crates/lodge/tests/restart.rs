//! Durability: sessions survive a graceful restart; a hub killed with SIGKILL while users and
//! tokens are being written loses none that were committed (reported as created).

mod common;

use common::{TestHub, http, open_session, session_info_call};
use serde_json::Value;

async fn call_session_info(hub: &TestHub, token: &str, sid: &str) -> (u16, Value) {
    let r = http()
        .post(hub.mcp_url())
        .bearer_auth(token)
        .header("mcp-session-id", sid)
        .json(&session_info_call())
        .send()
        .await
        .expect("call");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn session_survives_graceful_restart_and_kill() {
    let mut hub = TestHub::start();
    hub.add_user("alice");
    let t = hub.token("alice", &[]);
    let sid = open_session(&hub.mcp_url(), &t).await;
    let (status, body) = call_session_info(&hub, &t, &sid).await;
    assert_eq!(status, 200, "{body}");

    hub.stop();
    hub.spawn();
    let (status, body) = call_session_info(&hub, &t, &sid).await;
    assert_eq!(status, 200, "session lost over a graceful restart: {body}");
    assert_eq!(
        body["result"]["structuredContent"]["session_id"],
        sid.as_str()
    );

    // A session is durable before its id is returned, so even SIGKILL right after keeps it.
    let sid2 = open_session(&hub.mcp_url(), &t).await;
    hub.kill();
    hub.spawn();
    let (status, body) = call_session_info(&hub, &t, &sid2).await;
    assert_eq!(status, 200, "session lost over SIGKILL: {body}");

    // An ended session stays ended across restarts.
    let r = http()
        .delete(hub.mcp_url())
        .bearer_auth(&t)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    hub.stop();
    hub.spawn();
    let (status, _) = call_session_info(&hub, &t, &sid).await;
    assert_eq!(status, 404);
}

#[test]
fn sigkill_mid_write_loses_no_committed_user_or_token() {
    let mut hub = TestHub::start();
    // A writer process adds users and tokens in a loop; we kill it and the hub at random moments
    // and check every user and token it reported as created is still there and still works.
    let script = format!(
        "for i in $(seq 1 400); do {bin} --data-dir {dir} user add u$i >/dev/null 2>&1 && echo user u$i; \
         t=$({bin} --data-dir {dir} token create u$i 2>/dev/null) && echo token u$i $t; done",
        bin = common::BIN,
        dir = hub.dir.display()
    );
    let mut writer = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("writer");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // Kill the hub and the writer's current child mid-write.
    hub.kill();
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("{} user add", hub.dir.display())])
        .status();
    let _ = std::process::Command::new("pkill")
        .args([
            "-KILL",
            "-f",
            &format!("{} token create", hub.dir.display()),
        ])
        .status();
    let _ = writer.kill();
    let out = writer.wait_with_output().expect("writer output");
    let reported = String::from_utf8_lossy(&out.stdout).to_string();
    let users: Vec<&str> = reported
        .lines()
        .filter_map(|l| l.strip_prefix("user "))
        .collect();
    let tokens: Vec<(&str, &str)> = reported
        .lines()
        .filter_map(|l| l.strip_prefix("token "))
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, t)| t.starts_with("lodge_"))
        .collect();
    assert!(
        users.len() >= 3,
        "writer made too little progress to test anything: {reported}"
    );

    hub.spawn();
    let listed = hub.ok(&["user", "list", "--json"]);
    let listed: Value = serde_json::from_str(&listed).expect("json");
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    for u in &users {
        assert!(names.contains(u), "committed user {u} lost after SIGKILL");
    }
    let rt = tokio::runtime::Runtime::new().expect("rt");
    for (user, token) in &tokens {
        let sid = rt.block_on(open_session(&hub.mcp_url(), token));
        let (status, body) = rt.block_on(call_session_info(&hub, token, &sid));
        assert_eq!(status, 200);
        assert_eq!(body["result"]["structuredContent"]["user"], *user);
    }
}

#[tokio::test]
async fn a_new_user_never_inherits_a_removed_users_sessions() {
    let hub = TestHub::start();
    hub.add_user("bob");
    let tb = hub.token("bob", &[]);
    let sid = open_session(&hub.mcp_url(), &tb).await;
    // Removed through the CLI while the hub runs, then a new user is added.
    hub.ok(&["user", "remove", "bob"]);
    hub.add_user("carol");
    let tc = hub.token("carol", &[]);
    let (status, body) = call_session_info(&hub, &tc, &sid).await;
    assert_eq!(status, 404, "carol reached bob's old session: {body}");
    let own = open_session(&hub.mcp_url(), &tc).await;
    let (_, body) = call_session_info(&hub, &tc, &own).await;
    let listed = body["result"]["structuredContent"]["sessions"].to_string();
    assert!(!listed.contains(&sid), "carol sees bob's session: {listed}");
}
