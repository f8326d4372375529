//! rmcp's own client over real HTTP, in both lifecycles: the sessionful `initialize` revisions
//! and the stateless 2026-07-28 `server/discover` one. Two users work at once; each must see
//! only their own identity and sessions.

mod common;

use common::TestHub;
use rmcp::model::{CallToolRequestParams, ClientConfig, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::Value;

type Client = RunningService<RoleClient, ClientConfig>;

/// Connects with rmcp's client; `version` picks the sessionful revision for `Initialize`.
async fn connect(
    url: &str,
    token: &str,
    mode: ClientLifecycleMode,
    version: ProtocolVersion,
) -> Client {
    let cfg =
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned());
    let transport = StreamableHttpClientTransport::from_config(cfg);
    let mut info = ClientConfig::default();
    info.protocol_version = version;
    info.serve_with_lifecycle(transport, mode)
        .await
        .expect("client connects")
}

fn negotiated(c: &Client) -> Option<ProtocolVersion> {
    c.peer().peer_info().map(|i| i.protocol_version.clone())
}

fn modern() -> ClientLifecycleMode {
    ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    }
}

async fn session_info(c: &Client) -> Value {
    let r = c
        .peer()
        .call_tool(CallToolRequestParams::new("session_info"))
        .await
        .expect("session_info call");
    assert_ne!(r.is_error, Some(true), "session_info failed: {r:?}");
    r.structured_content.expect("structured content")
}

fn session_ids(info: &Value) -> Vec<String> {
    info["sessions"]
        .as_array()
        .expect("sessions list")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_each_see_only_themselves_in_every_protocol_revision() {
    let hub = TestHub::start();
    hub.add_user("alice");
    hub.add_user("bob");
    let ta = hub.token("alice", &[]);
    let tb = hub.token("bob", &[]);

    for v in [ProtocolVersion::V_2025_11_25, ProtocolVersion::V_2025_06_18] {
        let a = connect(
            &hub.mcp_url(),
            &ta,
            ClientLifecycleMode::Initialize,
            v.clone(),
        )
        .await;
        let b = connect(
            &hub.user_url("bob"),
            &tb,
            ClientLifecycleMode::Initialize,
            v.clone(),
        )
        .await;
        assert_eq!(negotiated(&a), Some(v.clone()));
        let tools = a.peer().list_all_tools().await.expect("tools/list");
        assert!(tools.iter().any(|t| t.name == "session_info"));

        let (ia, ib) = tokio::join!(session_info(&a), session_info(&b));
        assert_eq!(ia["user"], "alice");
        assert_eq!(ib["user"], "bob");
        assert_eq!(ia["protocol_version"], v.as_str());
        let (sa, sb) = (session_ids(&ia), session_ids(&ib));
        let own_a = ia["session_id"]
            .as_str()
            .expect("alice's session id")
            .to_owned();
        let own_b = ib["session_id"]
            .as_str()
            .expect("bob's session id")
            .to_owned();
        assert!(
            sa.contains(&own_a) && !sa.contains(&own_b),
            "alice sees {sa:?}"
        );
        assert!(
            sb.contains(&own_b) && !sb.contains(&own_a),
            "bob sees {sb:?}"
        );
        a.cancel().await.expect("close a");
        b.cancel().await.expect("close b");
    }

    // Stateless revision: no session at all, same identity rules.
    let a = connect(&hub.mcp_url(), &ta, modern(), ProtocolVersion::V_2026_07_28).await;
    let b = connect(
        &hub.user_url("bob"),
        &tb,
        modern(),
        ProtocolVersion::V_2026_07_28,
    )
    .await;
    assert_eq!(negotiated(&a), Some(ProtocolVersion::V_2026_07_28));
    let (ia, ib) = tokio::join!(session_info(&a), session_info(&b));
    assert_eq!(ia["user"], "alice");
    assert_eq!(ib["user"], "bob");
    assert!(
        ia["session_id"].is_null(),
        "stateless calls have no session: {ia}"
    );
    assert_eq!(ia["protocol_version"], "2026-07-28");
    assert!(
        session_ids(&ib)
            .iter()
            .all(|s| !session_ids(&ia).contains(s))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_token_cannot_open_another_users_endpoint_with_rmcp() {
    let hub = TestHub::start();
    hub.add_user("alice");
    hub.add_user("bob");
    let ta = hub.token("alice", &[]);
    let cfg = StreamableHttpClientTransportConfig::with_uri(hub.user_url("bob")).auth_header(ta);
    let transport = StreamableHttpClientTransport::from_config(cfg);
    let r = ClientConfig::default()
        .serve_with_lifecycle(transport, ClientLifecycleMode::Initialize)
        .await;
    assert!(r.is_err(), "alice must not reach bob's endpoint");
}
