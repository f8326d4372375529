//! The provider's own JWT access tokens as bearer tokens (`[auth.oidc] accept_access_tokens`),
//! against a real OpenID provider (npm oidc-provider): a genuine token for the hub's MCP URL calls
//! a tool, and each attack on the verification is refused on its own: alg none, HMAC keyed with
//! the public key, an algorithm that does not fit the key, a wrong issuer or audience, an expired
//! token, an unknown key id; a rotated key is picked up with one refetch of the key set.

mod common;

use common::oidc::OidcProvider;
use common::{TestHub, http, init_body, session_info_call};
use serde_json::{Value, json};

/// A provider with alice, and a hub that trusts it and knows alice (not bob).
fn setup(accept: bool) -> (OidcProvider, TestHub) {
    let op = OidcProvider::start(json!({
        "port": 0,
        "clients": [{"client_id": "lodge", "client_secret": "s3cret",
                     "redirect_uris": ["http://127.0.0.1:1/hub/oauth_callback"]}],
        "users": [
            {"sub": "u1", "preferred_username": "alice", "password": "pw"},
            {"sub": "u2", "preferred_username": "bob", "password": "pw"}
        ]
    }));
    let config = format!(
        "[auth.oidc]\nissuer = \"{}\"\nclient_id = \"lodge\"\nclient_secret = \"s3cret\"\n\
         accept_access_tokens = {accept}\n",
        op.issuer()
    );
    let hub = TestHub::start_with_config(&config, &[]);
    hub.add_user("alice");
    (op, hub)
}

/// Claims of an access token for alice meant for `aud`.
fn claims(aud: &str) -> Value {
    json!({"sub": "u1", "preferred_username": "alice", "aud": aud, "scope": "openid"})
}

/// Status of an MCP initialize on `url` with `token` as bearer.
async fn status(url: &str, token: &str) -> u16 {
    http()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&init_body("2025-11-25"))
        .send()
        .await
        .expect("initialize")
        .status()
        .as_u16()
}

/// Initializes a session with `token` and calls `session_info`; returns its structured result.
async fn call_tool(url: &str, token: &str) -> Value {
    let sid = common::open_session(url, token).await;
    let r = http()
        .post(url)
        .bearer_auth(token)
        .header("mcp-session-id", &sid)
        .header("accept", "application/json, text/event-stream")
        .json(&session_info_call())
        .send()
        .await
        .expect("tools/call");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert!(v["result"]["isError"] != json!(true), "{v}");
    v["result"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_access_token_calls_a_tool() {
    let (op, hub) = setup(true);
    let t = op.mint(claims(&hub.mcp_url())).await;
    let result = call_tool(&hub.mcp_url(), &t.token).await;
    assert!(result.to_string().contains("alice"), "{result}");
    // The path form of the resource works for its own user, on both endpoints.
    let t = op.mint(claims(&hub.user_url("alice"))).await;
    call_tool(&hub.user_url("alice"), &t.token).await;
    assert_eq!(status(&hub.mcp_url(), &t.token).await, 200);
    // An ES256 token from the provider's EC key is as good.
    let t = op
        .mint_with(json!({"claims": claims(&hub.mcp_url()), "header": {"alg": "ES256"}}))
        .await;
    assert_eq!(t.alg, "ES256");
    assert_eq!(status(&hub.mcp_url(), &t.token).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_tokens_are_refused_unless_enabled() {
    let (op, hub) = setup(false);
    let t = op.mint(claims(&hub.mcp_url())).await;
    assert_eq!(status(&hub.mcp_url(), &t.token).await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_user_unknown_to_lodge_is_not_created() {
    let (op, hub) = setup(true);
    let mut c = claims(&hub.user_url("bob"));
    c["sub"] = json!("u2");
    c["preferred_username"] = json!("bob");
    let t = op.mint(c.clone()).await;
    assert_eq!(status(&hub.user_url("bob"), &t.token).await, 401);
    c["aud"] = json!(hub.mcp_url());
    let t = op.mint(c).await;
    assert_eq!(status(&hub.mcp_url(), &t.token).await, 401);
    let users = hub.ok(&["user", "list"]);
    assert!(!users.contains("bob"), "{users}");
}

#[tokio::test(flavor = "multi_thread")]
async fn alg_none_is_refused() {
    let (op, hub) = setup(true);
    let t = op
        .mint_with(json!({"claims": claims(&hub.mcp_url()), "variant": "none"}))
        .await;
    assert_eq!(t.alg, "none");
    assert_eq!(status(&hub.mcp_url(), &t.token).await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn hmac_signed_with_the_public_key_is_refused() {
    let (op, hub) = setup(true);
    for key in ["pem", "jwk"] {
        let t = op
            .mint_with(json!({"claims": claims(&hub.mcp_url()),
                "variant": "hs256-public-key", "hmac_key": key}))
            .await;
        assert_eq!(t.alg, "HS256");
        assert_eq!(status(&hub.mcp_url(), &t.token).await, 401, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_algorithm_not_fitting_the_key_is_refused() {
    let (op, hub) = setup(true);
    let t = op
        .mint_with(json!({"claims": claims(&hub.mcp_url()), "variant": "alg-key-mismatch"}))
        .await;
    assert_eq!(status(&hub.mcp_url(), &t.token).await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_issuer_is_refused() {
    let (op, hub) = setup(true);
    let mut c = claims(&hub.mcp_url());
    for iss in ["http://127.0.0.1:1", &format!("{}/", op.issuer())] {
        c["iss"] = json!(iss);
        let t = op.mint(c.clone()).await;
        assert_eq!(status(&hub.mcp_url(), &t.token).await, 401, "{iss}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_for_another_audience_is_refused() {
    let (op, hub) = setup(true);
    hub.add_user("carol");
    for aud in [
        json!("http://127.0.0.1:1/mcp"),
        json!("lodge"),
        json!(["https://elsewhere.example/mcp"]),
        // Alice's token bound to carol's endpoint is not alice's resource.
        json!(hub.user_url("carol")),
    ] {
        let mut c = claims("x");
        c["aud"] = aud.clone();
        let t = op.mint(c).await;
        assert_eq!(status(&hub.mcp_url(), &t.token).await, 401, "{aud}");
    }
    // No audience at all.
    let mut c = claims("x");
    c["aud"] = Value::Null;
    let t = op.mint(c).await;
    assert!(t.claims.get("aud").is_none(), "{}", t.claims);
    assert_eq!(status(&hub.mcp_url(), &t.token).await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refused() {
    let (op, hub) = setup(true);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let mut c = claims(&hub.mcp_url());
    c["iat"] = json!(now - 3600);
    c["exp"] = json!(now - 120);
    let t = op.mint(c).await;
    assert_eq!(status(&hub.mcp_url(), &t.token).await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_key_id_is_refused() {
    let (op, hub) = setup(true);
    // A genuine token first, so the hub holds the key set.
    let good = op.mint(claims(&hub.mcp_url())).await;
    assert_eq!(status(&hub.mcp_url(), &good.token).await, 200);
    let t = op
        .mint_with(json!({"claims": claims(&hub.mcp_url()), "variant": "unknown-kid"}))
        .await;
    assert_ne!(t.kid, good.kid);
    assert_eq!(status(&hub.mcp_url(), &t.token).await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_verifies_after_one_refetch() {
    let (op, hub) = setup(true);
    let old = op.mint(claims(&hub.mcp_url())).await;
    assert_eq!(status(&hub.mcp_url(), &old.token).await, 200);
    let rotated = op.rotate().await;
    let new = op.mint(claims(&hub.mcp_url())).await;
    assert_ne!(new.kid, old.kid);
    assert_eq!(rotated["current"]["RS256"], json!(new.kid));
    assert_eq!(status(&hub.mcp_url(), &new.token).await, 200);
    // The old key is still published, so its tokens still verify.
    let again = op
        .mint_with(json!({"claims": claims(&hub.mcp_url()), "header": {"kid": old.kid}}))
        .await;
    assert_eq!(again.kid, old.kid);
    assert_eq!(status(&hub.mcp_url(), &again.token).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_jwts_count_against_the_failed_auth_limit() {
    let (op, hub) = setup(true);
    let t = op
        .mint_with(json!({"claims": claims(&hub.mcp_url()), "variant": "none"}))
        .await;
    // The default budget is 30 failures a minute per address; then 429 whatever is sent.
    let mut codes = Vec::new();
    for _ in 0..32 {
        codes.push(status(&hub.mcp_url(), &t.token).await);
    }
    assert_eq!(codes[0], 401);
    assert_eq!(*codes.last().expect("codes"), 429, "{codes:?}");
    // Each refusal is in the audit trail, as for bad Lodge tokens (written in batches).
    let mut audit = String::new();
    for _ in 0..50 {
        audit = hub.ok(&["audit", "--kind", "auth_failure"]);
        if audit.contains("JWT algorithm refused") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("no audited JWT refusal: {audit}");
}
