//! The hub as an OAuth 2.1 authorization server for MCP clients, against the real binary: the
//! discovery documents, the challenges of the MCP endpoints, the code flow from registration to
//! a tool call, refresh and revocation, and the attacks on each step (PKCE, code replay,
//! redirect URIs, audiences, refresh replay, client metadata documents, crafted consent).

mod common;

use base64::Engine;
use common::{Mcp, TestHub, open_session};
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::HashMap;

/// A configured client whose loopback redirect matches on any port.
const CONFIG: &str = r#"
[auth.oauth.clients.cli]
name = "Test CLI"
redirect_uris = ["http://127.0.0.1/callback"]
"#;
const REDIRECT: &str = "http://127.0.0.1:4711/callback";

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Every `name="N" value="V"` pair of a page's inputs.
fn inputs(html: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = html;
    while let Some(at) = rest.find("name=\"") {
        rest = &rest[at + 6..];
        let Some(end) = rest.find('"') else { break };
        let name = rest[..end].to_owned();
        rest = &rest[end..];
        if let Some(v) = rest.strip_prefix("\" value=\"") {
            let vend = v.find('"').expect("value end");
            out.insert(name, unescape(&v[..vend]));
        }
    }
    out
}

fn pkce() -> (String, String) {
    let verifier = format!(
        "{}{}",
        uuid_like(),
        "-verifier-with-enough-entropy-0123456789"
    );
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_nanos();
    format!("{n:x}")
}

/// A hub with the configured client and user alice signed in through the token form.
struct Setup {
    hub: TestHub,
    /// alice's `lodge_session` cookie value.
    session: String,
}

async fn sign_in(hub: &TestHub, user: &str) -> String {
    let token = hub.token(user, &["--scopes", "self"]);
    let r = common::no_redirects()
        .get(format!("{}/hub/login?next=%2Fhub%2F", hub.base))
        .send()
        .await
        .expect("login page");
    assert_eq!(r.status(), 200);
    let csrf_cookie = set_cookie(&r, "lodge_csrf").expect("csrf cookie");
    let html = r.text().await.expect("body");
    let csrf = inputs(&html).remove("csrf").expect("csrf field");
    let r = common::no_redirects()
        .post(format!("{}/hub/login", hub.base))
        .header(COOKIE, format!("lodge_csrf={csrf_cookie}"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(common::form_body(&[
            ("csrf", &csrf),
            ("token", &token),
            ("next", "/hub/"),
        ]))
        .send()
        .await
        .expect("post login");
    assert_eq!(r.status(), 303, "token sign-in");
    set_cookie(&r, "lodge_session").expect("session cookie")
}

/// The value of the cookie `name` a response sets.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    common::set_cookie(r, name).map(|h| common::cookie_value(&h))
}

async fn setup_with(config: &str) -> Setup {
    let hub = TestHub::start_with_config(config, &[]);
    hub.add_user("alice");
    let session = sign_in(&hub, "alice").await;
    Setup { hub, session }
}

async fn setup() -> Setup {
    setup_with(CONFIG).await
}

/// The authorization request of client `cli` with PKCE challenge `challenge`, plus `extra`.
fn request(challenge: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut p = vec![
        ("response_type", "code"),
        ("client_id", "cli"),
        ("redirect_uri", REDIRECT),
        ("state", "st-123"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ];
    for (k, v) in extra {
        p.retain(|(pk, _)| pk != k);
        if !v.is_empty() {
            p.push((k, v));
        }
    }
    p.into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn query(p: &[(String, String)]) -> String {
    let f: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    common::form_body(&f)
}

async fn get_authorize(
    s: &Setup,
    session: Option<&str>,
    p: &[(String, String)],
) -> reqwest::Response {
    let mut r = common::no_redirects().get(format!("{}/oauth/authorize?{}", s.hub.base, query(p)));
    if let Some(c) = session {
        r = r.header(COOKIE, format!("lodge_session={c}"));
    }
    r.send().await.expect("authorize")
}

/// The consent page's form fields (after checking it is the consent page).
async fn consent(s: &Setup, session: &str, p: &[(String, String)]) -> HashMap<String, String> {
    let r = get_authorize(s, Some(session), p).await;
    assert_eq!(r.status(), 200, "consent page");
    let html = r.text().await.expect("body");
    assert!(html.contains("Allow") && html.contains("Deny"), "{html}");
    inputs(&html)
}

async fn post_decision(
    s: &Setup,
    session: &str,
    fields: &HashMap<String, String>,
) -> reqwest::Response {
    let f: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    common::no_redirects()
        .post(format!("{}/oauth/authorize", s.hub.base))
        .header(COOKIE, format!("lodge_session={session}"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(common::form_body(&f))
        .send()
        .await
        .expect("decision")
}

fn approve(fields: &HashMap<String, String>) -> HashMap<String, String> {
    let mut f = fields.clone();
    f.insert("decision".into(), "approve".into());
    f
}

/// The query parameters of a redirect's `Location`.
fn location_params(r: &reqwest::Response) -> (String, HashMap<String, String>) {
    let loc = r
        .headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("no Location on {}", r.status()))
        .to_str()
        .expect("ascii")
        .to_owned();
    // A relative Location (the hub's own pages) is read against any base.
    let url = reqwest::Url::parse("http://relative.invalid")
        .and_then(|b| b.join(&loc))
        .expect("a URL");
    let params = url.query_pairs().into_owned().collect();
    (loc, params)
}

/// Approves the request on the consent page; returns the code.
async fn code_for(s: &Setup, p: &[(String, String)]) -> String {
    let fields = consent(s, &s.session, p).await;
    let r = post_decision(s, &s.session, &approve(&fields)).await;
    assert_eq!(r.status(), 303, "approval redirects");
    let (loc, q) = location_params(&r);
    assert!(loc.starts_with(REDIRECT), "{loc}");
    assert_eq!(q.get("state").map(String::as_str), Some("st-123"));
    assert_eq!(q.get("iss"), Some(&s.hub.base), "RFC 9207 iss");
    assert!(!q.contains_key("error"), "{loc}");
    q.get("code").expect("code").clone()
}

async fn token_endpoint(hub: &TestHub, fields: &[(&str, &str)]) -> (u16, Value) {
    let r = common::no_redirects()
        .post(format!("{}/oauth/token", hub.base))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(common::form_body(fields))
        .send()
        .await
        .expect("token");
    let status = r.status().as_u16();
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "token responses are never cached"
    );
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn exchange(hub: &TestHub, code: &str, verifier: &str) -> (u16, Value) {
    token_endpoint(
        hub,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", "cli"),
            ("code_verifier", verifier),
        ],
    )
    .await
}

async fn refresh(hub: &TestHub, rt: &str) -> (u16, Value) {
    token_endpoint(
        hub,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", "cli"),
        ],
    )
    .await
}

/// A full grant: (access token, refresh token).
async fn grant(s: &Setup, extra: &[(&str, &str)]) -> (String, String) {
    let (verifier, challenge) = pkce();
    let code = code_for(s, &request(&challenge, extra)).await;
    let (status, v) = exchange(&s.hub, &code, &verifier).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    (
        v["access_token"].as_str().expect("access").to_owned(),
        v["refresh_token"].as_str().expect("refresh").to_owned(),
    )
}

/// The status of an `initialize` on `url` with `token`, and its `WWW-Authenticate`.
async fn mcp_status(url: &str, token: Option<&str>) -> (u16, String) {
    let mut r = common::no_redirects()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&common::init_body("2025-11-25"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.expect("mcp");
    let www = r
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (r.status().as_u16(), www)
}

#[tokio::test]
async fn metadata_documents_name_the_hub_and_its_endpoints() {
    let hub = TestHub::start();
    let base = &hub.base;
    let get = |path: String| async move {
        let r = common::no_redirects().get(path).send().await.expect("get");
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()[CONTENT_TYPE]
                .to_str()
                .expect("ct")
                .starts_with("application/json")
        );
        r.json::<Value>().await.expect("json")
    };
    let m = get(format!("{base}/.well-known/oauth-authorization-server")).await;
    assert_eq!(m["issuer"], json!(base));
    assert_eq!(
        m["authorization_endpoint"],
        json!(format!("{base}/oauth/authorize"))
    );
    assert_eq!(m["token_endpoint"], json!(format!("{base}/oauth/token")));
    assert_eq!(
        m["registration_endpoint"],
        json!(format!("{base}/oauth/register"))
    );
    assert_eq!(
        m["revocation_endpoint"],
        json!(format!("{base}/oauth/revoke"))
    );
    assert_eq!(m["response_types_supported"], json!(["code"]));
    assert_eq!(m["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(m["token_endpoint_auth_methods_supported"], json!(["none"]));
    assert_eq!(
        m["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(m["client_id_metadata_document_supported"], json!(true));
    assert_eq!(m["scopes_supported"], json!(["mcp"]));

    for (path, resource) in [
        (
            "/.well-known/oauth-protected-resource",
            format!("{base}/mcp"),
        ),
        (
            "/.well-known/oauth-protected-resource/mcp",
            format!("{base}/mcp"),
        ),
        (
            "/.well-known/oauth-protected-resource/user/alice/mcp",
            format!("{base}/user/alice/mcp"),
        ),
    ] {
        let d = get(format!("{base}{path}")).await;
        assert_eq!(d["resource"], json!(resource), "{path}");
        assert_eq!(d["authorization_servers"], json!([base]), "{path}");
        assert_eq!(d["bearer_methods_supported"], json!(["header"]));
        assert_eq!(d["scopes_supported"], json!(["mcp"]));
    }
    let r = common::no_redirects()
        .get(format!(
            "{base}/.well-known/oauth-protected-resource/user/..%2Fx/mcp"
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.status(),
        404,
        "no document for a name that is not a user name"
    );
}

#[tokio::test]
async fn unauthorized_mcp_requests_name_their_resource_metadata() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let base = &hub.base;
    let (s, www) = mcp_status(&hub.mcp_url(), None).await;
    assert_eq!(s, 401);
    assert_eq!(
        www,
        format!(
            r#"Bearer realm="lodge", resource_metadata="{base}/.well-known/oauth-protected-resource/mcp""#
        )
    );
    let (s, www) = mcp_status(&hub.mcp_url(), Some("lodge_not-a-real-token")).await;
    assert_eq!(s, 401);
    assert!(www.ends_with(r#", error="invalid_token""#), "{www}");
    assert!(www.contains("resource_metadata="), "{www}");
    let (s, www) = mcp_status(&hub.user_url("alice"), None).await;
    assert_eq!(s, 401);
    assert!(
        www.contains(&format!(
            r#"resource_metadata="{base}/.well-known/oauth-protected-resource/user/alice/mcp""#
        )),
        "{www}"
    );
}

#[tokio::test]
async fn a_token_lacking_a_scope_gets_insufficient_scope_naming_it() {
    let hub = TestHub::start();
    hub.add_user("alice");
    hub.add_user("bob");
    let self_only = hub.token("alice", &["--scopes", "self"]);
    let (s, www) = mcp_status(&hub.mcp_url(), Some(&self_only)).await;
    assert_eq!(s, 403);
    assert!(
        www.contains(r#"error="insufficient_scope", scope="mcp""#),
        "{www}"
    );
    assert!(www.contains("resource_metadata="), "{www}");
    // Another user's endpoint with admin access off: no scope would do, so none is named.
    let mcp = hub.token("alice", &[]);
    let (s, www) = mcp_status(&hub.user_url("bob"), Some(&mcp)).await;
    assert_eq!(s, 403);
    assert!(!www.contains("insufficient_scope"), "{www}");
}

#[tokio::test]
async fn the_code_flow_reaches_a_tool_call_refreshes_and_is_refused_after_revocation() {
    let s = setup().await;
    let hub = &s.hub;
    // Not signed in: sent to sign-in, and back to this very request afterwards.
    let (_, challenge) = pkce();
    let r = get_authorize(&s, None, &request(&challenge, &[])).await;
    assert_eq!(r.status(), 303);
    let (loc, _) = location_params(&r);
    assert!(
        loc.starts_with("/hub/login?next=%2Foauth%2Fauthorize%3F"),
        "{loc}"
    );

    // Dynamic registration, then the flow with that client.
    let r = common::no_redirects()
        .post(format!("{}/oauth/register", hub.base))
        .json(
            &json!({"client_name": "Editor <b>X</b>", "redirect_uris": [REDIRECT],
                      "token_endpoint_auth_method": "none"}),
        )
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201);
    let reg: Value = r.json().await.expect("json");
    let client_id = reg["client_id"].as_str().expect("client_id").to_owned();
    assert_eq!(reg["token_endpoint_auth_method"], "none");
    assert!(common::audit_has(hub, "oauth.register").await);

    let (verifier, challenge) = pkce();
    let p = request(&challenge, &[("client_id", &client_id), ("scope", "mcp")]);
    let r = get_authorize(&s, Some(&s.session), &p).await;
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(
        csp.contains("form-action 'self' http://127.0.0.1:4711;"),
        "the approval may redirect to the client and nowhere else: {csp}"
    );
    let html = r.text().await.expect("html");
    assert!(
        html.contains("Editor &lt;b&gt;X&lt;/b&gt;"),
        "client name, escaped: {html}"
    );
    assert!(
        html.contains("127.0.0.1:4711"),
        "the redirect host is shown: {html}"
    );
    assert!(
        html.contains("<code>mcp</code>"),
        "the scope is shown: {html}"
    );
    let fields = inputs(&html);
    let r = post_decision(&s, &s.session, &approve(&fields)).await;
    assert_eq!(r.status(), 303);
    let (_, q) = location_params(&r);
    let code = q.get("code").expect("code").clone();
    let (status, v) = token_endpoint(
        hub,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", &client_id),
            ("code_verifier", &verifier),
            ("resource", &hub.mcp_url()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["scope"], "mcp");
    assert_eq!(v["expires_in"], 3600);
    let access = v["access_token"].as_str().expect("access").to_owned();
    let refresh_token = v["refresh_token"].as_str().expect("refresh").to_owned();
    assert!(common::audit_has(hub, "oauth.consent").await);
    assert!(common::audit_has(hub, "oauth.grant").await);
    let oauth_only = hub.ok(&["audit", "--kind", "oauth", "--json"]);
    assert!(
        oauth_only.contains("oauth.consent") && !oauth_only.contains("\"sign_in\""),
        "{oauth_only}"
    );

    // A tool call with the access token.
    let sid = open_session(&hub.mcp_url(), &access).await;
    let mcp = Mcp {
        url: hub.mcp_url(),
        token: access.clone(),
        sid,
    };
    let reply = mcp.call("session_info", json!({})).await;
    assert!(!reply.is_error, "{}", reply.text);
    assert!(reply.text.contains("alice"), "{}", reply.text);

    // `token list` names the client; the REST view too.
    let listed = hub.ok(&["token", "list", "alice"]);
    assert!(listed.contains("Editor <b>X</b>"), "{listed}");

    // Refresh: new tokens, which work.
    let (status, v) = token_endpoint(
        hub,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let access2 = v["access_token"].as_str().expect("access").to_owned();
    assert_ne!(
        v["refresh_token"].as_str(),
        Some(refresh_token.as_str()),
        "rotated"
    );
    assert_eq!(mcp_status(&hub.mcp_url(), Some(&access2)).await.0, 200);

    // Revocation (RFC 7009): refused at once, even though the hub had it cached.
    let r = common::no_redirects()
        .post(format!("{}/oauth/revoke", hub.base))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(common::form_body(&[
            ("token", &access2),
            ("client_id", &client_id),
        ]))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 200);
    let (status, www) = mcp_status(&hub.mcp_url(), Some(&access2)).await;
    assert_eq!(status, 401);
    assert!(www.contains(r#"error="invalid_token""#), "{www}");
    // ... and with it the whole grant: the older access token and the refresh token.
    assert_eq!(mcp_status(&hub.mcp_url(), Some(&access)).await.0, 401);
    let rt2 = v["refresh_token"].as_str().expect("rt2").to_owned();
    let (status, v) = token_endpoint(
        hub,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt2),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));

    // Revoking a refresh token ends its grant too.
    let (verifier, challenge) = pkce();
    let p = request(&challenge, &[("client_id", &client_id)]);
    let fields = consent(&s, &s.session, &p).await;
    let r = post_decision(&s, &s.session, &approve(&fields)).await;
    let (_, q) = location_params(&r);
    let (status, v) = token_endpoint(
        hub,
        &[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("redirect_uri", REDIRECT),
            ("client_id", &client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let access = v["access_token"].as_str().expect("access").to_owned();
    let rt2 = v["refresh_token"].as_str().expect("rt").to_owned();
    assert_eq!(mcp_status(&hub.mcp_url(), Some(&access)).await.0, 200);
    let r = common::no_redirects()
        .post(format!("{}/oauth/revoke", hub.base))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(common::form_body(&[("token", &rt2)]))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 200);
    let (status, v) = token_endpoint(
        hub,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt2),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(mcp_status(&hub.mcp_url(), Some(&access)).await.0, 401);
}

#[tokio::test]
async fn a_missing_code_challenge_method_is_refused_at_the_redirect() {
    let s = setup().await;
    let (_, challenge) = pkce();
    let r = get_authorize(
        &s,
        Some(&s.session),
        &request(&challenge, &[("code_challenge_method", "")]),
    )
    .await;
    assert_eq!(r.status(), 303);
    let (loc, q) = location_params(&r);
    assert!(loc.starts_with(REDIRECT), "{loc}");
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"));
    assert_eq!(q.get("state").map(String::as_str), Some("st-123"));
    assert!(!q.contains_key("code"));
    // No challenge at all, likewise.
    let r = get_authorize(&s, Some(&s.session), &request("", &[])).await;
    let (_, q) = location_params(&r);
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"));
}

#[tokio::test]
async fn a_plain_code_challenge_is_refused() {
    let s = setup().await;
    let (verifier, _) = pkce();
    let r = get_authorize(
        &s,
        Some(&s.session),
        &request(&verifier, &[("code_challenge_method", "plain")]),
    )
    .await;
    assert_eq!(r.status(), 303);
    let (_, q) = location_params(&r);
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"));
    assert!(!q.contains_key("code"));
}

#[tokio::test]
async fn a_wrong_or_missing_code_verifier_gets_no_token() {
    let s = setup().await;
    let (_, challenge) = pkce();
    let code = code_for(&s, &request(&challenge, &[])).await;
    let (other_verifier, _) = pkce();
    let (status, v) = exchange(&s.hub, &code, &other_verifier).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
    assert!(v.get("access_token").is_none());
    // The code is spent by the failed attempt: an attacker gets one guess.
    let (verifier2, challenge2) = pkce();
    let code2 = code_for(&s, &request(&challenge2, &[])).await;
    let (status, v) = token_endpoint(
        &s.hub,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code2),
            ("redirect_uri", REDIRECT),
            ("client_id", "cli"),
        ],
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
    let (status, _) = exchange(&s.hub, &code2, &verifier2).await;
    assert_eq!(status, 400, "a code presented once is used up");
}

#[tokio::test]
async fn a_code_used_twice_is_refused_and_revokes_what_it_issued() {
    let s = setup().await;
    let (verifier, challenge) = pkce();
    let code = code_for(&s, &request(&challenge, &[])).await;
    let (status, v) = exchange(&s.hub, &code, &verifier).await;
    assert_eq!(status, 200, "{v}");
    let access = v["access_token"].as_str().expect("access").to_owned();
    let rt = v["refresh_token"].as_str().expect("refresh").to_owned();
    assert_eq!(mcp_status(&s.hub.mcp_url(), Some(&access)).await.0, 200);
    let (status, v) = exchange(&s.hub, &code, &verifier).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
    assert_eq!(mcp_status(&s.hub.mcp_url(), Some(&access)).await.0, 401);
    assert_eq!(refresh(&s.hub, &rt).await.0, 400);
    assert!(common::audit_has(&s.hub, "oauth.code_reuse").await);
}

#[tokio::test]
async fn a_redirect_uri_mismatch_gets_an_error_page_never_a_redirect() {
    let s = setup().await;
    let (verifier, challenge) = pkce();
    for evil in [
        "https://evil.example/callback",
        "http://127.0.0.1:4711/other",
        "http://127.0.0.1.evil.example/callback",
        "http://127.0.0.1:4711/callback#frag",
    ] {
        let r = get_authorize(
            &s,
            Some(&s.session),
            &request(&challenge, &[("redirect_uri", evil)]),
        )
        .await;
        assert_eq!(r.status(), 400, "{evil}");
        assert!(r.headers().get(LOCATION).is_none(), "no redirect to {evil}");
        let html = r.text().await.expect("html");
        assert!(html.contains("redirect_uri"), "{html}");
    }
    // An unknown client cannot use the endpoint as a redirector either, nor a bad request
    // before the client is known.
    let r = get_authorize(
        &s,
        Some(&s.session),
        &request(
            &challenge,
            &[
                ("client_id", "nobody"),
                ("redirect_uri", "https://evil.example/"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.headers().get(LOCATION).is_none());
    // The token endpoint insists on the authorization request's redirect URI.
    let code = code_for(&s, &request(&challenge, &[])).await;
    let (status, v) = token_endpoint(
        &s.hub,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9999/callback"),
            ("client_id", "cli"),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let s = setup_with(&format!("{CONFIG}\n[auth]\nadmin_access = true\n")).await;
    let hub = &s.hub;
    hub.add_user("bob");
    // Bound to alice's own endpoint: good at /mcp and /user/alice/mcp alike.
    let (access, _) = grant(&s, &[("resource", &hub.user_url("alice"))]).await;
    assert_eq!(
        mcp_status(&hub.user_url("alice"), Some(&access)).await.0,
        200
    );
    assert_eq!(mcp_status(&hub.mcp_url(), Some(&access)).await.0, 200);
    let (status, www) = mcp_status(&hub.user_url("bob"), Some(&access)).await;
    assert_eq!(status, 401, "another endpoint is another audience");
    assert!(www.contains(r#"error="invalid_token""#), "{www}");
    assert!(common::audit_has(hub, "token for another resource").await);
    // A resource that is not one of the user's endpoints is refused at the start.
    let (_, challenge) = pkce();
    for other in [
        "https://other.example/mcp".to_owned(),
        hub.user_url("bob"),
        format!("{}/api/users", hub.base),
    ] {
        let r = get_authorize(
            &s,
            Some(&s.session),
            &request(&challenge, &[("resource", &other)]),
        )
        .await;
        assert_eq!(r.status(), 303, "{other}");
        let (_, q) = location_params(&r);
        assert_eq!(
            q.get("error").map(String::as_str),
            Some("invalid_target"),
            "{other}"
        );
    }
    // And a resource changed at the token endpoint.
    let (verifier, challenge) = pkce();
    let code = code_for(&s, &request(&challenge, &[])).await;
    let (status, v) = token_endpoint(
        hub,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", "cli"),
            ("code_verifier", &verifier),
            ("resource", &hub.user_url("bob")),
        ],
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_target")),
        "{v}"
    );
}

#[tokio::test]
async fn a_refresh_token_reused_after_rotation_revokes_the_whole_family() {
    let s = setup().await;
    let hub = &s.hub;
    let (a1, r1) = grant(&s, &[]).await;
    let (status, v) = refresh(hub, &r1).await;
    assert_eq!(status, 200, "{v}");
    let a2 = v["access_token"].as_str().expect("a2").to_owned();
    let r2 = v["refresh_token"].as_str().expect("r2").to_owned();
    assert_eq!(mcp_status(&hub.mcp_url(), Some(&a2)).await.0, 200);
    // Another grant of the same person is not of this family.
    let (other, _) = grant(&s, &[]).await;
    // The replay: refused, and every token of the family stops working.
    let (status, v) = refresh(hub, &r1).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
    assert_eq!(mcp_status(&hub.mcp_url(), Some(&a1)).await.0, 401);
    assert_eq!(mcp_status(&hub.mcp_url(), Some(&a2)).await.0, 401);
    assert_eq!(
        refresh(hub, &r2).await.0,
        400,
        "the newer refresh token is revoked too"
    );
    assert_eq!(mcp_status(&hub.mcp_url(), Some(&other)).await.0, 200);
    assert!(common::audit_has(hub, "oauth.refresh_reuse").await);
}

#[tokio::test]
async fn client_metadata_documents_on_private_addresses_or_plain_http_are_refused() {
    let s = setup().await;
    let (_, challenge) = pkce();
    for (doc, says) in [
        ("https://127.0.0.1:9/client.json", "internal address"),
        ("https://localhost:9/client.json", "internal address"),
        (
            "https://169.254.169.254/latest/meta-data",
            "internal address",
        ),
        ("https://[fd00:ec2::254]/client.json", "internal address"),
        ("http://127.0.0.1:9/client.json", "https"),
    ] {
        let r = get_authorize(
            &s,
            Some(&s.session),
            &request(&challenge, &[("client_id", doc)]),
        )
        .await;
        assert_eq!(r.status(), 400, "{doc}");
        assert!(r.headers().get(LOCATION).is_none());
        let html = r.text().await.expect("html");
        assert!(html.contains(says), "{doc}: {html}");
    }
    // Allowed private addresses still need https: a plain loopback document is refused.
    let allowed = setup_with(&format!(
        "{CONFIG}\n[auth.oauth]\nallow_private_client_metadata = true\n"
    ))
    .await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let doc = format!("http://127.0.0.1:{port}/client.json");
    let r = get_authorize(
        &allowed,
        Some(&allowed.session),
        &request(&challenge, &[("client_id", &doc)]),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("html").contains("https"));
    // With the flag, a loopback https document is fetched (and here fails the TLS handshake
    // with a server that speaks none): the refusal is no longer about the address.
    let doc = format!("https://127.0.0.1:{port}/client.json");
    let r = get_authorize(
        &allowed,
        Some(&allowed.session),
        &request(&challenge, &[("client_id", &doc)]),
    )
    .await;
    assert_eq!(r.status(), 400);
    let html = r.text().await.expect("html");
    assert!(
        !html.contains("internal address") && html.contains("fetch failed"),
        "{html}"
    );
    drop(listener);
}

#[tokio::test]
async fn consent_cannot_be_skipped_by_crafting_the_approval() {
    let s = setup().await;
    let hub = &s.hub;
    hub.add_user("bob");
    let bob = sign_in(hub, "bob").await;
    let (_, challenge) = pkce();
    let p = request(&challenge, &[]);
    let fields = approve(&consent(&s, &s.session, &p).await);
    let refused = |r: &reqwest::Response, what: &str| {
        assert!(
            r.status() == 400 || r.status() == 403 || r.status() == 401,
            "{what}: {}",
            r.status()
        );
        assert!(r.headers().get(LOCATION).is_none(), "{what}: no code sent");
    };
    // No CSRF token, another CSRF token.
    let mut f = fields.clone();
    f.remove("csrf");
    refused(&post_decision(&s, &s.session, &f).await, "no csrf");
    let mut f = fields.clone();
    f.insert("csrf".into(), "x".repeat(43));
    refused(&post_decision(&s, &s.session, &f).await, "other csrf");
    // No session at all.
    let r = common::no_redirects()
        .post(format!("{}/oauth/authorize", hub.base))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(common::form_body(&[
            ("pending", &fields["pending"]),
            ("decision", "approve"),
        ]))
        .send()
        .await
        .expect("post");
    refused(&r, "no session");
    // Bob, signed in, posts alice's pending id with his own CSRF token.
    let bob_fields = approve(&consent(&s, &bob, &p).await);
    let mut f = fields.clone();
    f.insert("csrf".into(), bob_fields["csrf"].clone());
    refused(
        &post_decision(&s, &bob, &f).await,
        "another session's pending id",
    );
    // Alice's approval with a parameter changed.
    for (k, v) in [
        ("redirect_uri", "http://127.0.0.1:4712/callback"),
        ("code_challenge", "A".repeat(43).as_str()),
        ("state", "other"),
    ] {
        let fresh = approve(&consent(&s, &s.session, &p).await);
        let mut f = fresh.clone();
        f.insert(k.into(), v.into());
        refused(&post_decision(&s, &s.session, &f).await, k);
    }
    assert!(common::audit_has(hub, "parameters changed").await);
    // The untouched approval still works (the attempts did not consume it), once.
    let r = post_decision(&s, &s.session, &fields).await;
    assert_eq!(r.status(), 303);
    let (_, q) = location_params(&r);
    assert!(q.contains_key("code"));
    refused(
        &post_decision(&s, &s.session, &fields).await,
        "a pending id answered twice",
    );
    // Deny sends access_denied.
    let denied = consent(&s, &s.session, &p).await;
    let mut f = denied.clone();
    f.insert("decision".into(), "deny".into());
    let r = post_decision(&s, &s.session, &f).await;
    assert_eq!(r.status(), 303);
    let (_, q) = location_params(&r);
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"));
    assert!(!q.contains_key("code"));
}

#[tokio::test]
async fn registration_validates_redirect_uris_and_can_be_turned_off() {
    let hub = TestHub::start();
    let register = |body: Value| {
        let url = format!("{}/oauth/register", hub.base);
        async move {
            let r = common::no_redirects()
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("register");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for bad in [
        json!({"redirect_uris": ["http://app.example/cb"]}),
        json!({"redirect_uris": ["https://app.example/cb#x"]}),
        json!({"redirect_uris": ["javascript:alert(1)"]}),
        json!({"redirect_uris": []}),
        json!({"client_name": "x"}),
    ] {
        let (s, v) = register(bad.clone()).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_redirect_uri")),
            "{bad}"
        );
    }
    let (s, v) = register(
        json!({"redirect_uris": ["https://app.example/cb"], "client_name": "n".repeat(500)}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_client_metadata"))
    );
    let (s, v) =
        register(json!({"redirect_uris": ["https://app.example/cb", "myapp.example:/cb"]})).await;
    assert_eq!(s, 201, "{v}");

    let off = TestHub::start_with_config("[auth.oauth]\ndynamic_registration = false\n", &[]);
    let r = common::no_redirects()
        .post(format!("{}/oauth/register", off.base))
        .json(&json!({"redirect_uris": ["https://app.example/cb"]}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 403);
    let m: Value = common::no_redirects()
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            off.base
        ))
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert!(m.get("registration_endpoint").is_none());
}

/// Browser-based clients (MCP Inspector) call the discovery documents and the token and
/// registration endpoints from their own origin; the consent form keeps the Origin check.
#[tokio::test]
async fn browser_clients_reach_the_public_endpoints_from_any_origin_but_not_the_consent_form() {
    let s = setup().await;
    let hub = &s.hub;
    let origin = "http://localhost:6274";
    let r = common::no_redirects()
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            hub.base
        ))
        .header("origin", origin)
        .send()
        .await
        .expect("metadata");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = common::no_redirects()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/oauth/register", hub.base),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("preflight");
    assert_eq!(r.status(), 204);
    assert!(
        r.headers()["access-control-allow-headers"]
            .to_str()
            .expect("ascii")
            .contains("content-type")
    );
    let r = common::no_redirects()
        .post(format!("{}/oauth/register", hub.base))
        .header("origin", origin)
        .json(&json!({"redirect_uris": ["http://localhost:6274/oauth/callback"]}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = common::no_redirects()
        .post(format!("{}/oauth/token", hub.base))
        .header("origin", origin)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(common::form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", "cli"),
        ]))
        .send()
        .await
        .expect("token");
    assert_eq!(
        r.status(),
        400,
        "answered by the token endpoint, not the Origin guard"
    );
    // The consent form and the MCP endpoint still refuse a foreign origin.
    let (_, challenge) = pkce();
    let fields = approve(&consent(&s, &s.session, &request(&challenge, &[])).await);
    let f: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = common::no_redirects()
        .post(format!("{}/oauth/authorize", hub.base))
        .header("origin", origin)
        .header(COOKIE, format!("lodge_session={}", s.session))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(common::form_body(&f))
        .send()
        .await
        .expect("decision");
    assert_eq!(r.status(), 403);
    assert!(r.headers().get(LOCATION).is_none());
    let r = common::no_redirects()
        .post(hub.mcp_url())
        .header("origin", origin)
        .json(&common::init_body("2025-11-25"))
        .send()
        .await
        .expect("mcp");
    assert_eq!(r.status(), 403);
}

/// Revoking an OAuth access token as people do (`lodge token revoke`, as deprovisioning does)
/// ends its grant: the refresh token cannot mint the access back.
#[tokio::test]
async fn revoking_an_access_token_ends_its_grant() {
    let s = setup().await;
    let (access, rt) = grant(&s, &[]).await;
    let listed = s.hub.ok(&["token", "list", "alice", "--json"]);
    let tokens: Value = serde_json::from_str(&listed).expect("json");
    let id = tokens
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["client"] == "Test CLI")
        .and_then(|t| t["id"].as_str())
        .unwrap_or_else(|| panic!("no token of the client in {listed}"))
        .to_owned();
    assert!(access.starts_with(&format!("lodge_{id}")));
    s.hub.ok(&["token", "revoke", &id]);
    let (status, v) = refresh(&s.hub, &rt).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
}
