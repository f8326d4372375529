//! What upstream servers ask of clients, relayed through the hub to the user's own client, in
//! both protocol families: on the request's event stream for sessionful clients (answered by
//! POSTing a response), and as input-required results with a signed requestState for
//! 2026-07-28 clients. The project's probe server (tests/peers/probe_server.py) asks; real
//! rooms run it.

mod common;

use common::peers::Peers;
use common::{TestHub, content_text, http};
use serde_json::{Value, json};

const MODERN: &str = "2026-07-28";

fn hub() -> TestHub {
    let p = Peers::get();
    let config = format!(
        r#"
[rooms]
read_only_paths = ["{dir}"]

[servers.probe]
command = ["/usr/bin/python3", "{probe}"]
"#,
        dir = p.dir.display(),
        probe = p.probe().display(),
    );
    TestHub::start_with_config(&config, &[])
}

/// A sessionful client of `user` that declared `caps`; (token, session id).
async fn session(hub: &TestHub, user: &str, caps: Value) -> (String, String) {
    hub.add_user(user);
    let token = hub.token(user, &[]);
    let r = http()
        .post(hub.mcp_url())
        .bearer_auth(&token)
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": caps,
            "clientInfo": {"name": "relay-test", "version": "1"}}}),
        )
        .send()
        .await
        .expect("initialize");
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    (token, sid)
}

fn ask_call(id: u64, method: &str, times: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "probe__ask",
        "arguments": {"method": method, "params": {"messages": [], "maxTokens": 5}, "times": times}}})
}

/// Reads an event stream message by message.
struct Events {
    response: reqwest::Response,
    buf: String,
}

impl Events {
    fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return Some(serde_json::from_str(data).expect("an event holds JSON"));
                }
                continue;
            }
            let chunk = self.response.chunk().await.expect("stream")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }
}

async fn post_legacy(hub: &TestHub, token: &str, sid: &str, body: &Value) -> reqwest::Response {
    http()
        .post(hub.mcp_url())
        .bearer_auth(token)
        .header("mcp-session-id", sid)
        .header("accept", "application/json, text/event-stream")
        .json(body)
        .send()
        .await
        .expect("POST")
}

#[tokio::test]
async fn a_sessionful_client_answers_on_the_event_stream() {
    let hub = hub();
    let (token, sid) = session(&hub, "alice", json!({"sampling": {}})).await;
    let r = post_legacy(
        &hub,
        &token,
        &sid,
        &ask_call(5, "sampling/createMessage", 2),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut events = Events::new(r);
    for n in 0..2 {
        let question = events.next().await.expect("the server's question");
        assert_eq!(question["method"], "sampling/createMessage", "{question}");
        assert_eq!(question["params"]["maxTokens"], 5);
        let qid = question["id"].clone();
        assert!(qid.is_string(), "the hub's own id: {question}");
        // Another user cannot answer it, not even with the right id.
        let (bob, bob_sid) = session(&hub, &format!("bob{n}"), json!({"sampling": {}})).await;
        let forged = json!({"jsonrpc": "2.0", "id": qid, "result": {"role": "assistant",
            "content": {"type": "text", "text": "from bob"}, "model": "m"}});
        assert_eq!(
            post_legacy(&hub, &bob, &bob_sid, &forged).await.status(),
            202
        );
        let answer = json!({"jsonrpc": "2.0", "id": qid, "result": {"role": "assistant",
            "content": {"type": "text", "text": format!("answer {n}")}, "model": "m"}});
        assert_eq!(post_legacy(&hub, &token, &sid, &answer).await.status(), 202);
    }
    let done = events.next().await.expect("the call's result");
    assert_eq!(done["id"], 5, "{done}");
    let text = content_text(&done["result"]);
    assert!(
        text.contains("answer 0") && text.contains("answer 1"),
        "{text}"
    );
    assert!(!text.contains("from bob"), "{text}");
}

#[tokio::test]
async fn a_client_that_did_not_declare_a_capability_is_not_asked() {
    let hub = hub();
    let (token, sid) = session(&hub, "carol", json!({"sampling": {}})).await;
    let r = post_legacy(&hub, &token, &sid, &ask_call(6, "elicitation/create", 1)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r
        .json()
        .await
        .expect("a plain JSON answer: nothing was streamed");
    let text = content_text(&v["result"]);
    assert!(
        text.contains("error") && text.contains("elicitation"),
        "the server hears why: {text}"
    );
}

/// A 2026-07-28 request of `token`'s user (headers and `_meta` as the revision wants).
async fn post_modern(hub: &TestHub, token: &str, id: u64, params: Value) -> (u16, Value) {
    let caps = json!({"sampling": {}, "roots": {}});
    let r = modern_request(hub, token, id, "tools/call", params, caps)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON"))
}

fn ask_params(method: &str, times: u64) -> Value {
    ask_call(0, method, times)["params"].clone()
}

#[tokio::test]
async fn a_stateless_client_gets_input_required_rounds_with_a_signed_state() {
    let hub = hub();
    hub.add_user("dave");
    hub.add_user("erin");
    let dave = hub.token("dave", &[]);
    let erin = hub.token("erin", &[]);

    let (status, first) = post_modern(&hub, &dave, 1, ask_params("roots/list", 2)).await;
    assert_eq!(status, 200, "{first}");
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let requests = result["inputRequests"].as_object().expect("inputRequests");
    assert_eq!(requests.len(), 1, "{result}");
    let (key, request) = requests.iter().next().unwrap();
    assert_eq!(request["method"], "roots/list");
    let state = result["requestState"]
        .as_str()
        .expect("requestState")
        .to_owned();

    // Tampered, another user's, or for another tool: refused, and the call still waits.
    let mut tampered = state.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let answers = json!({ key.clone(): {"roots": [{"uri": "file:///a", "name": "a"}]} });
    let retry = |state: &str, name: &str| {
        let mut p = ask_params("roots/list", 2);
        p["name"] = json!(name);
        p["requestState"] = json!(state);
        p["inputResponses"] = answers.clone();
        p
    };
    for (who, params) in [
        (&dave, retry(&tampered, "probe__ask")),
        (&erin, retry(&state, "probe__ask")),
        (&dave, retry(&state, "probe__echo")),
    ] {
        let (status, refused) = post_modern(&hub, who, 2, params).await;
        assert_eq!(status, 400, "{refused}");
        assert_eq!(refused["error"]["code"], -32602, "{refused}");
        assert_eq!(refused["id"], 2);
    }

    // Missing answers are asked again (extra keys are ignored), with the same question.
    let mut p = retry(&state, "probe__ask");
    p["inputResponses"] = json!({"unrelated": {"x": 1}});
    let (status, again) = post_modern(&hub, &dave, 3, p).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["result"]["resultType"], "input_required", "{again}");
    assert!(
        again["result"]["inputRequests"].get(key).is_some(),
        "{again}"
    );
    let state = again["result"]["requestState"].as_str().unwrap().to_owned();

    // Round two: the server asks again; round three completes with both answers.
    let (_, second) = post_modern(&hub, &dave, 4, retry(&state, "probe__ask")).await;
    assert_eq!(second["result"]["resultType"], "input_required", "{second}");
    let state2 = second["result"]["requestState"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(state2, state);
    let key2 = second["result"]["inputRequests"]
        .as_object()
        .and_then(|r| r.keys().next().cloned())
        .unwrap();
    let mut p = retry(&state2, "probe__ask");
    p["inputResponses"] = json!({ key2: {"roots": [{"uri": "file:///b", "name": "b"}]} });
    let (status, done) = post_modern(&hub, &dave, 5, p).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["id"], 5);
    assert_ne!(done["result"]["resultType"], "input_required", "{done}");
    let text = content_text(&done["result"]);
    assert!(
        text.contains("file:///a") && text.contains("file:///b"),
        "{text}"
    );

    // The finished call's state is spent.
    let (status, spent) = post_modern(&hub, &dave, 6, retry(&state2, "probe__ask")).await;
    assert_eq!(status, 400, "{spent}");
}

/// Opens the session's standalone stream (GET).
async fn listen(hub: &TestHub, token: &str, sid: &str) -> Events {
    let r = http()
        .get(hub.mcp_url())
        .bearer_auth(token)
        .header("mcp-session-id", sid)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    Events::new(r)
}

async fn rpc(hub: &TestHub, token: &str, sid: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 3, "method": method, "params": params});
    let r = post_legacy(hub, token, sid, &body).await;
    assert_eq!(r.status(), 200, "{method}");
    r.json().await.expect("JSON")
}

/// The probe's answer to touching probe://hello in session `sid`: "updated" when the user's
/// instance has it subscribed.
async fn touch(hub: &TestHub, token: &str, sid: &str) -> String {
    let call = json!({"name": "probe__touch", "arguments": {"uri": "probe://hello"}});
    content_text(&rpc(hub, token, sid, "tools/call", call).await["result"])
}

async fn next_within(events: &mut Events, secs: u64) -> Option<Value> {
    tokio::time::timeout(std::time::Duration::from_secs(secs), events.next())
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn subscribed_updates_and_list_changes_reach_the_sessions_stream_only() {
    let hub = hub();
    let (token, sid) = session(&hub, "frank", json!({})).await;
    // The same user's second session, without the subscription.
    let other_sid = common::open_session(&hub.mcp_url(), &token).await;
    let (grace, grace_sid) = session(&hub, "grace", json!({})).await;
    let mut mine = listen(&hub, &token, &sid).await;
    let mut other = listen(&hub, &token, &other_sid).await;
    let mut foreign = listen(&hub, &grace, &grace_sid).await;

    let uri = "lodge://probe/probe://hello";
    let sub = rpc(
        &hub,
        &token,
        &sid,
        "resources/subscribe",
        json!({"uri": uri}),
    )
    .await;
    assert_eq!(sub["result"], json!({}), "{sub}");
    // Grace's own instance sees no subscription of Frank's.
    assert_eq!(touch(&hub, &grace, &grace_sid).await, "not subscribed");
    assert_eq!(touch(&hub, &token, &sid).await, "updated");
    let update = next_within(&mut mine, 10).await.expect("the update");
    assert_eq!(update["method"], "notifications/resources/updated");
    assert_eq!(update["params"]["uri"], uri, "named as the user knows it");
    assert!(
        next_within(&mut other, 1).await.is_none(),
        "not subscribed there"
    );
    assert!(
        next_within(&mut foreign, 1).await.is_none(),
        "another user's"
    );

    // A list change reaches every stream of the user, once the hub's lists are fresh.
    rpc(
        &hub,
        &token,
        &sid,
        "tools/call",
        json!({"name": "probe__change_tools", "arguments": {}}),
    )
    .await;
    for events in [&mut mine, &mut other] {
        let change = next_within(events, 10).await.expect("the list change");
        assert_eq!(
            change["method"], "notifications/tools/list_changed",
            "{change}"
        );
    }
    let tools = rpc(&hub, &token, &sid, "tools/list", json!({})).await;
    assert!(
        tools.to_string().contains("probe__extra"),
        "the fresh list is served"
    );
    assert!(
        next_within(&mut foreign, 1).await.is_none(),
        "another user's"
    );

    // Unsubscribed: the server stops sending.
    rpc(
        &hub,
        &token,
        &sid,
        "resources/unsubscribe",
        json!({"uri": uri}),
    )
    .await;
    assert_eq!(touch(&hub, &token, &sid).await, "not subscribed");
}

/// A 2026-07-28 request of any method (headers and `_meta` as the revision wants).
fn modern_request(
    hub: &TestHub,
    token: &str,
    id: u64,
    method: &str,
    mut params: Value,
    caps: Value,
) -> reqwest::RequestBuilder {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": caps,
        "io.modelcontextprotocol/clientInfo": {"name": "relay-test", "version": "1"},
    });
    let mut r = http()
        .post(hub.mcp_url())
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", MODERN)
        .header("mcp-method", method);
    if let Some(name) = params.get("name").and_then(Value::as_str) {
        r = r.header("mcp-name", name);
    }
    r.json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
}

#[tokio::test]
async fn a_stateless_client_listens_for_what_it_asked_only() {
    let hub = hub();
    hub.add_user("heidi");
    let token = hub.token("heidi", &[]);
    let uri = "lodge://probe/probe://hello";
    let open = |id: u64, filter: Value| {
        modern_request(
            &hub,
            &token,
            id,
            "subscriptions/listen",
            json!({"notifications": filter}),
            json!({}),
        )
        .send()
    };
    let everything = open(
        41,
        json!({"toolsListChanged": true, "resourceSubscriptions": [uri]}),
    )
    .await
    .expect("listen");
    assert_eq!(everything.status(), 200);
    let mut everything = Events::new(everything);
    let ack = next_within(&mut everything, 10)
        .await
        .expect("acknowledged");
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        41
    );
    assert_eq!(
        ack["params"]["notifications"]["toolsListChanged"], true,
        "{ack}"
    );
    let narrow = open(42, json!({"promptsListChanged": true}))
        .await
        .expect("listen");
    let mut narrow = Events::new(narrow);
    assert!(
        next_within(&mut narrow, 10).await.is_some(),
        "its acknowledgement"
    );

    let call = |id: u64, tool: &str, args: Value| {
        post_modern(&hub, &token, id, json!({"name": tool, "arguments": args}))
    };
    let (_, r) = call(43, "probe__touch", json!({"uri": "probe://hello"})).await;
    assert_eq!(
        content_text(&r["result"]),
        "updated",
        "subscribed at the server: {r}"
    );
    let update = next_within(&mut everything, 10).await.expect("the update");
    assert_eq!(update["method"], "notifications/resources/updated");
    assert_eq!(update["params"]["uri"], uri);
    assert_eq!(
        update["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        41
    );

    call(44, "probe__change_tools", json!({})).await;
    let change = next_within(&mut everything, 10)
        .await
        .expect("the list change");
    assert_eq!(
        change["method"], "notifications/tools/list_changed",
        "{change}"
    );
    assert_eq!(
        change["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        41
    );
    assert!(
        next_within(&mut narrow, 1).await.is_none(),
        "it asked for prompts only"
    );

    // The listener gone, nobody wants the resource: the server is told to stop.
    drop(everything);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, r) = call(45, "probe__touch", json!({"uri": "probe://hello"})).await;
        if content_text(&r["result"]) == "not subscribed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still subscribed: {r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A subscription outlives the instance it was made at: the user's next instance is told of
/// it again.
#[tokio::test]
async fn a_fresh_instance_is_told_the_users_subscriptions_again() {
    let hub = hub();
    let (token, sid) = session(&hub, "ivan", json!({})).await;
    let uri = "lodge://probe/probe://hello";
    let sub = rpc(
        &hub,
        &token,
        &sid,
        "resources/subscribe",
        json!({"uri": uri}),
    )
    .await;
    assert_eq!(sub["result"], json!({}), "{sub}");
    assert_eq!(touch(&hub, &token, &sid).await, "updated");
    let crash = json!({"name": "probe__crash", "arguments": {}});
    rpc(&hub, &token, &sid, "tools/call", crash).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // The first call after the crash may still meet the dead instance.
        if touch(&hub, &token, &sid).await == "updated" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new instance never heard of it"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
