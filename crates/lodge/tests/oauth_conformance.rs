//! The MCP conformance suite's `authorization` subcommand against the hub's OAuth 2.1
//! authorization server: `authorization-server-metadata-endpoint` (RFC 8414 metadata) and
//! `authorization-code-grant` (a pre-registered public client with a loopback redirect, PKCE
//! S256, the hub's own sign-in and consent pages driven by headless Chromium). Zero failures.

mod common;

use std::time::Duration;

use common::TestHub;
use common::auth_suite::{AuthorizationSuite, free_port};
use common::browser::Browser;

const CLIENT: &str = "conformance";
const CLIENT_NAME: &str = "MCP conformance suite";

#[tokio::test]
async fn the_authorization_suite_passes_against_the_hub() {
    // The suite's callback listener binds this port once the metadata scenario has run; the hub
    // must know the redirect URI before it starts.
    let port = free_port();
    let callback = format!("http://127.0.0.1:{port}/callback");
    let config = format!(
        r#"
[auth.oauth.clients.{CLIENT}]
name = "{CLIENT_NAME}"
redirect_uris = ["{callback}"]
"#
    );
    let hub = TestHub::start_with_config_logged(&config, &[]);
    hub.add_user("suite");
    let token = hub.token("suite", &["--scopes", "self"]);

    let mut suite = AuthorizationSuite::start(&hub.base, CLIENT, Some(&hub.mcp_url()), port);
    let url = match suite.authorization_url(Duration::from_secs(60)).await {
        Some(url) => url,
        None => {
            let outcome = suite.finish(Duration::from_secs(30)).await;
            panic!(
                "the suite ended without asking for a sign-in:\n{}",
                outcome.transcript
            );
        }
    };
    assert!(
        url.starts_with(&format!("{}/oauth/authorize?", hub.base)),
        "the suite should open the hub's authorization endpoint, not {url}"
    );

    // Not signed in: the hub sends the browser to its sign-in page, which takes a Lodge token
    // holding `self`, then back to the authorization request and its consent page.
    let mut browser = Browser::start().await;
    browser.goto(&url).await;
    let login = browser.url().await;
    assert!(
        login.starts_with(&format!("{}/hub/login", hub.base)),
        "expected the sign-in page, got {login}"
    );
    browser.fill("input[name=token]", &token).await;
    browser.submit("input[name=token]").await;
    let consent = browser.text().await;
    browser.screenshot("oauth-conformance-consent").await;
    assert!(
        consent.contains(CLIENT_NAME),
        "the consent page should name the client: {consent}"
    );
    browser.click("button[name=decision][value=approve]").await;
    browser
        .wait_for_url(&callback, Duration::from_secs(15))
        .await;

    let outcome = suite.finish(Duration::from_secs(60)).await;
    println!("{}", outcome.transcript);
    for check in &outcome.checks {
        println!(
            "{} {} {} {}",
            check.scenario, check.id, check.status, check.message
        );
    }
    assert!(
        outcome.failures().is_empty(),
        "failures: {:?}",
        outcome.failures()
    );
    // The two scenarios' own checks (a metadata scenario may add warnings about optional fields).
    for id in ["authorization-server-metadata", "authorization-code-grant"] {
        assert_eq!(
            outcome.status(id),
            Some("SUCCESS"),
            "{id}: {:?}",
            outcome.checks
        );
    }
    assert!(outcome.success, "the suite exited with failure");
}
