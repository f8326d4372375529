//! A real MCP client doing OAuth against the hub: the TypeScript SDK's client auth
//! (tests/peers/oauth_client.mjs, an OAuthClientProvider) starts from the hub's 401, discovers
//! the metadata, registers (dynamic registration; separately, a client ID metadata document served
//! over loopback HTTPS with a test CA), completes the code flow with Chromium signing in and
//! consenting on the hub's pages, calls a tool, refreshes, and is refused after revocation.

mod common;

use std::time::Duration;

use common::TestHub;
use common::browser::Browser;
use common::oauth_client::OAuthClient;
use common::test_ca::TestCa;
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(60);

/// Drives Chromium through the hub's sign-in (token form) and consent at `url`; returns the
/// consent page's text. The hub then redirects to the client's loopback listener.
async fn sign_in_and_consent(hub: &TestHub, url: &str, token: &str, shot: &str) -> String {
    let mut browser = Browser::start().await;
    browser.goto(url).await;
    let login = browser.url().await;
    assert!(
        login.starts_with(&format!("{}/hub/login", hub.base)),
        "expected the sign-in page, got {login}"
    );
    browser.fill("input[name=token]", token).await;
    browser.submit("input[name=token]").await;
    let consent = browser.text().await;
    browser.screenshot(shot).await;
    browser.click("button[name=decision][value=approve]").await;
    browser
        .wait_for_url("http://127.0.0.1:", Duration::from_secs(15))
        .await;
    assert!(
        browser.text().await.contains("Authorization complete"),
        "the client's listener did not answer: {}",
        browser.text().await
    );
    consent
}

fn text_of(result: &Value) -> String {
    assert_ne!(result["isError"], true, "tool error: {result}");
    common::content_text(result)
}

/// The run every mode shares, from the first 401 to the refusal after revocation. Returns the
/// client ID the SDK ended up with and the consent page's text.
async fn full_run(hub: &TestHub, client: &mut OAuthClient) -> (String, String) {
    hub.add_user("ada");
    let token = hub.token("ada", &["--scopes", "self"]);
    let url = client.authorize_url(STEP).await;
    assert!(
        url.starts_with(&format!("{}/oauth/authorize?", hub.base)),
        "{url}"
    );
    let consent = sign_in_and_consent(hub, &url, &token, "oauth-sdk-consent").await;

    let authorized = client.step("authorized", STEP).await;
    let client_id = authorized["client_id"]
        .as_str()
        .expect("client_id")
        .to_owned();
    let refresh = authorized["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    let tools = client.step("tools", STEP).await;
    assert!(
        tools["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .any(|t| t == "session_info"),
        "{tools}"
    );
    let call = client.step("call", STEP).await;
    assert!(text_of(&call["result"]).contains("ada"), "{call}");

    let refreshed = client.step("refreshed", STEP).await;
    assert_eq!(refreshed["changed"], true, "{refreshed}");
    assert_eq!(
        refreshed["refresh_rotated"], true,
        "refresh tokens rotate: {refreshed}"
    );
    assert_ne!(refreshed["refresh_token"], refresh.as_str());
    let call = client.step("call_after_refresh", STEP).await;
    assert!(text_of(&call["result"]).contains("ada"), "{call}");
    client.step("waiting", STEP).await;

    // Revoking the refresh token ends the grant: the access token stops working and the SDK's
    // refresh is refused, so it would need a new sign-in.
    let current = refreshed["refresh_token"].as_str().expect("refresh token");
    let revoke = common::http()
        .post(format!("{}/oauth/revoke", hub.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(common::form_body(&[
            ("token", current),
            ("client_id", &client_id),
        ]))
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoke.status().as_u16(), 200);
    let again = client.again(STEP).await;
    assert_eq!(
        again["ok"], false,
        "still accepted after revocation: {again}"
    );
    assert_eq!(again["reauthorize"], true, "{again}");
    (client_id, consent)
}

#[tokio::test]
async fn the_sdk_client_registers_dynamically_and_completes_the_flow() {
    let hub = TestHub::start_logged(&[]);
    let mut client = OAuthClient::start(
        &hub.mcp_url(),
        "dcr",
        OAuthClient::tool("session_info"),
        &[],
    );
    let (client_id, consent) = full_run(&hub, &mut client).await;
    assert!(!client_id.starts_with("https://"), "{client_id}");
    assert!(
        consent.contains("Lodge OAuth test client (dcr)"),
        "the consent page names the registered client: {consent}"
    );
}

#[tokio::test]
async fn the_sdk_client_uses_a_client_id_metadata_document() {
    let ca = TestCa::new();
    let config = format!(
        r#"
[auth.oauth]
dynamic_registration = false
allow_private_client_metadata = true
extra_ca_file = "{}"
"#,
        ca.ca_cert.display()
    );
    let hub = TestHub::start_with_config_logged(&config, &[]);
    let options = json!({
        "tool": "session_info",
        "metadata_cert": ca.cert,
        "metadata_key": ca.key,
    });
    let mut client = OAuthClient::start(&hub.mcp_url(), "cimd", options, &[]);
    let (client_id, consent) = full_run(&hub, &mut client).await;
    let metadata_url = client.metadata_url.clone().expect("METADATA line");
    assert!(metadata_url.starts_with("https://127.0.0.1:"));
    assert_eq!(
        client_id, metadata_url,
        "the client ID is the document's URL"
    );
    assert!(
        consent.contains("Lodge OAuth test client (cimd)"),
        "the consent page names the client from its document: {consent}"
    );
}
