//! Browser sign-in against the real binary: web sessions and their cookie, the token form,
//! one-time links, sign-out, and the attacks on them (CSRF, session fixation, open redirects,
//! replayed links).

mod common;

use common::TestHub;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use std::time::Duration;

/// Percent-encodes a query value (unreserved characters kept).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The value of the hidden `csrf` field in a page.
fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').expect("end quote")].to_owned()
}

/// A browser's view before signing in: the CSRF cookie and the form's token.
struct Form {
    csrf_cookie: String,
    csrf: String,
}

async fn open_login(hub: &TestHub) -> Form {
    let r = common::no_redirects()
        .get(format!("{}/hub/login?next=%2Fhub%2F", hub.base))
        .send()
        .await
        .expect("get login");
    assert_eq!(r.status(), 200);
    let csrf_cookie =
        common::cookie_value(&common::set_cookie(&r, "lodge_csrf").expect("csrf cookie"));
    let html = r.text().await.expect("body");
    assert!(html.contains("Lodge token"), "{html}");
    Form {
        csrf: csrf_in(&html),
        csrf_cookie,
    }
}

async fn post_login(hub: &TestHub, cookies: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    common::no_redirects()
        .post(format!("{}/hub/login", hub.base))
        .header(COOKIE, cookies)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(common::form_body(fields))
        .send()
        .await
        .expect("post login")
}

/// Signs in with `token` through the form; returns the session cookie's `Set-Cookie`.
async fn sign_in_with_token(hub: &TestHub, token: &str, next: &str) -> reqwest::Response {
    let f = open_login(hub).await;
    post_login(
        hub,
        &format!("lodge_csrf={}", f.csrf_cookie),
        &[("csrf", &f.csrf), ("token", token), ("next", next)],
    )
    .await
}

async fn home(hub: &TestHub, session: &str) -> reqwest::Response {
    common::no_redirects()
        .get(format!("{}/hub/", hub.base))
        .header(COOKIE, format!("lodge_session={session}"))
        .send()
        .await
        .expect("get home")
}

#[tokio::test]
async fn token_form_signs_in_lands_on_next_and_signs_out() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let token = hub.token("alice", &["--scopes", "mcp,self"]);

    let r = common::no_redirects()
        .get(format!("{}/hub/", hub.base))
        .send()
        .await
        .expect("home");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/hub/login?next=%2Fhub%2F");

    let r = sign_in_with_token(&hub, &token, "/hub/?tab=1").await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/hub/?tab=1");
    let set = common::set_cookie(&r, "lodge_session").expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/;"] {
        assert!(set.contains(flag), "{set} lacks {flag}");
    }
    assert!(!set.contains("Secure"), "plain http: {set}");
    let session = common::cookie_value(&set);

    let r = home(&hub, &session).await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.expect("body");
    assert!(html.contains("Signed in as alice"), "{html}");
    let csrf = csrf_in(&html);

    // Sign-out needs the session's CSRF token.
    let logout = |csrf: String| {
        let session = session.clone();
        let base = hub.base.clone();
        async move {
            common::no_redirects()
                .post(format!("{base}/hub/logout"))
                .header(COOKIE, format!("lodge_session={session}"))
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(common::form_body(&[("csrf", &csrf)]))
                .send()
                .await
                .expect("logout")
        }
    };
    let r = logout("wrong".into()).await;
    assert_eq!(r.status(), 403);
    assert_eq!(home(&hub, &session).await.status(), 200, "still signed in");

    let r = logout(csrf).await;
    assert_eq!(r.status(), 200);
    let cleared = common::set_cookie(&r, "lodge_session").expect("cleared cookie");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(home(&hub, &session).await.status(), 303, "session ended");
    assert!(common::audit_has(&hub, "\"kind\":\"sign_in\"").await);
    assert!(common::audit_has(&hub, "\"kind\":\"sign_out\"").await);
}

#[tokio::test]
async fn token_form_refuses_a_token_without_self() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let mcp_only = hub.token("alice", &[]);
    let r = sign_in_with_token(&hub, &mcp_only, "/hub/").await;
    assert_eq!(r.status(), 403);
    assert!(common::set_cookie(&r, "lodge_session").is_none());
    let html = r.text().await.expect("body");
    assert!(
        html.contains("scope &#39;self&#39;") || html.contains("scope 'self'"),
        "{html}"
    );
    assert!(common::audit_has(&hub, "token lacks scope self").await);

    let r = sign_in_with_token(&hub, "lodge_notavalidtokenatallxxxxxxxxxxxxxxxxxxx", "/").await;
    assert_eq!(r.status(), 401);
    assert!(common::set_cookie(&r, "lodge_session").is_none());
}

#[tokio::test]
async fn token_form_refuses_a_wrong_or_missing_csrf_token() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let token = hub.token("alice", &["--scopes", "mcp,self"]);
    let f = open_login(&hub).await;
    // A form field that does not match the cookie (a forged cross-site post).
    let r = post_login(
        &hub,
        &format!("lodge_csrf={}", f.csrf_cookie),
        &[("csrf", "forged"), ("token", &token)],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert!(common::set_cookie(&r, "lodge_session").is_none());
    // No cookie at all (a cross-site post carries none under SameSite=Lax).
    let r = post_login(&hub, "", &[("csrf", &f.csrf), ("token", &token)]).await;
    assert_eq!(r.status(), 403);
    assert!(common::set_cookie(&r, "lodge_session").is_none());
}

#[tokio::test]
async fn a_session_cookie_planted_before_sign_in_is_never_the_one_after() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let token = hub.token("alice", &["--scopes", "mcp,self"]);
    // Signs in through the form from a browser that already carries `session_cookie`.
    let sign_in_over = |session_cookie: String| {
        let (hub, token) = (&hub, &token);
        async move {
            let f = open_login(hub).await;
            let r = post_login(
                hub,
                &format!(
                    "lodge_session={session_cookie}; lodge_csrf={}",
                    f.csrf_cookie
                ),
                &[("csrf", &f.csrf), ("token", token)],
            )
            .await;
            assert_eq!(r.status(), 303);
            common::cookie_value(&common::set_cookie(&r, "lodge_session").expect("cookie"))
        }
    };
    let planted = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let session = sign_in_over(planted.into()).await;
    assert_ne!(session, planted);
    assert_eq!(home(&hub, &session).await.status(), 200);
    assert_eq!(
        home(&hub, planted).await.status(),
        303,
        "planted id is not signed in"
    );

    // Signing in again from a signed-in browser replaces the session too.
    let second = sign_in_over(session.clone()).await;
    assert_ne!(second, session);
    assert_eq!(
        home(&hub, &session).await.status(),
        303,
        "old session ended"
    );
}

#[tokio::test]
async fn next_must_be_a_local_path() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let token = hub.token("alice", &["--scopes", "mcp,self"]);
    for evil in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let r = sign_in_with_token(&hub, &token, evil).await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()[LOCATION], "/hub/", "next {evil:?}");
    }
}

#[tokio::test]
async fn the_session_cookie_is_secure_when_the_hub_is_reached_over_https() {
    let hub = TestHub::start_env(&[("LODGE_SERVER_PUBLIC_URL", "https://lodge.example")]);
    hub.add_user("alice");
    let token = hub.token("alice", &["--scopes", "mcp,self"]);
    let r = common::no_redirects()
        .get(format!("{}/hub/login", hub.base))
        .send()
        .await
        .expect("login");
    let csrf_set = common::set_cookie(&r, "lodge_csrf").expect("csrf cookie");
    assert!(csrf_set.contains("; Secure"), "{csrf_set}");
    let r = sign_in_with_token(&hub, &token, "/hub/").await;
    let set = common::set_cookie(&r, "lodge_session").expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Lax", "; Secure"] {
        assert!(set.contains(flag), "{set} lacks {flag}");
    }
}

/// `lodge user login-url` prints BASE/hub/login/link/SECRET; the path is what matters here
/// (the test hub binds port 0, so BASE names the configured bind).
fn login_link_path(hub: &TestHub, user: &str, extra: &[&str]) -> String {
    let mut args = vec!["user", "login-url", user];
    args.extend_from_slice(extra);
    let url = hub.ok(&args).trim().to_owned();
    let at = url.find("/hub/login/link/").expect("link path");
    url[at..].to_owned()
}

async fn use_link(hub: &TestHub, path: &str) -> reqwest::Response {
    let r = common::no_redirects()
        .get(format!("{}{path}", hub.base))
        .send()
        .await
        .expect("open link");
    if r.status() != 200 {
        return r;
    }
    let csrf_cookie =
        common::cookie_value(&common::set_cookie(&r, "lodge_csrf").expect("csrf cookie"));
    let html = r.text().await.expect("body");
    common::no_redirects()
        .post(format!("{}{path}", hub.base))
        .header(COOKIE, format!("lodge_csrf={csrf_cookie}"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(common::form_body(&[("csrf", &csrf_in(&html))]))
        .send()
        .await
        .expect("post link")
}

#[tokio::test]
async fn login_url_works_once_then_is_refused_and_expires() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let out = hub.ok(&["user", "login-url", "alice"]);
    assert!(
        out.trim()
            .starts_with("http://127.0.0.1:8765/hub/login/link/"),
        "BASE is the configured bind: {out}"
    );
    let path = login_link_path(&hub, "alice", &[]);

    // Opening the link spends nothing (link previews); the button does.
    let preview = common::no_redirects()
        .get(format!("{}{path}", hub.base))
        .send()
        .await
        .expect("preview");
    assert_eq!(preview.status(), 200);
    let r = use_link(&hub, &path).await;
    assert_eq!(r.status(), 303);
    let session = common::cookie_value(&common::set_cookie(&r, "lodge_session").expect("cookie"));
    let html = home(&hub, &session).await.text().await.expect("home");
    assert!(html.contains("Signed in as alice"), "{html}");

    let r = use_link(&hub, &path).await;
    assert_eq!(r.status(), 410);
    assert!(r.text().await.expect("body").contains("already used"));

    let short = login_link_path(&hub, "alice", &["--expires", "1s"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = use_link(&hub, &short).await;
    assert_eq!(r.status(), 410);
    assert!(r.text().await.expect("body").contains("expired"));

    let r = use_link(
        &hub,
        "/hub/login/link/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .await;
    assert_eq!(r.status(), 404);
    assert!(common::audit_has(&hub, "\"action\":\"link\"").await);

    let out = hub.lodge(&["user", "login-url", "alice", "--expires", "30d"]);
    assert!(!out.status.success(), "a month-long link is refused");
}

// --- Through a real OpenID provider (npm oidc-provider) ---

use common::browser::Browser;
use common::oidc::OidcProvider;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const CLIENT_ID: &str = "lodge";
const CLIENT_SECRET: &str = "lodge-secret";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn users() -> Value {
    json!([
        {"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.org",
         "password": "alice-pw", "groups": ["staff", "ops", "gpu"]},
        {"sub": "u-bob", "preferred_username": "bob", "password": "bob-pw", "groups": []},
        {"sub": "u-carol", "preferred_username": "Carol.Smith@Example.org",
         "password": "carol-pw", "groups": ["staff"]},
        {"sub": "u-dave", "preferred_username": "dave", "password": "dave-pw",
         "groups": ["staff"]}
    ])
}

/// A hub signing people in through a fresh provider. The provider's port is chosen first (the
/// hub names it as issuer; discovery happens at first use), the hub's is known once it runs
/// (the provider names it as redirect URI).
struct Oidc {
    hub: TestHub,
    op: OidcProvider,
}

fn oidc_hub(env: &[(&str, &str)], config: &str) -> Oidc {
    oidc_hub_as(Some("client_secret_basic"), env, config)
}

/// [`oidc_hub`] with the hub authenticating at the token endpoint by `auth` (a
/// `token_endpoint_auth_method`), or as a public client without a secret (`None`).
fn oidc_hub_as(auth: Option<&str>, env: &[(&str, &str)], config: &str) -> Oidc {
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let mut all: Vec<(&str, &str)> = vec![
        ("LODGE_AUTH_OIDC_ISSUER", &issuer),
        ("LODGE_AUTH_OIDC_CLIENT_ID", CLIENT_ID),
    ];
    if let Some(method) = auth {
        all.push(("LODGE_AUTH_OIDC_CLIENT_SECRET", CLIENT_SECRET));
        all.push(("LODGE_AUTH_OIDC_TOKEN_ENDPOINT_AUTH_METHOD", method));
    }
    all.extend_from_slice(env);
    let hub = TestHub::start_with_config_logged(config, &all);
    let mut client = json!({"client_id": CLIENT_ID,
                            "redirect_uris": [format!("{}/hub/oauth_callback", hub.base)]});
    if let Some(method) = auth {
        client["client_secret"] = json!(CLIENT_SECRET);
        client["token_endpoint_auth_method"] = json!(method);
    }
    let op = OidcProvider::start(json!({
        "port": port,
        "clients": [client],
        "users": users(),
    }));
    assert_eq!(op.issuer(), issuer);
    Oidc { hub, op }
}

/// `GET /hub/login` without a browser: the provider URL it redirects to, and the
/// browser-binding cookie it sets.
async fn start_sign_in(hub: &TestHub, next: &str) -> (String, String) {
    let r = common::no_redirects()
        .get(format!("{}/hub/login?next={}", hub.base, enc(next)))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 303);
    let location = r.headers()[LOCATION].to_str().expect("ascii").to_owned();
    let redirect = format!(
        "redirect_uri={}",
        enc(&format!("{}/hub/oauth_callback", hub.base))
    );
    for part in [
        "response_type=code",
        "code_challenge_method=S256",
        "code_challenge=",
        "nonce=",
        "state=",
        "scope=openid+profile+email",
        &redirect,
    ] {
        assert!(location.contains(part), "{part} missing from {location}");
    }
    let binding =
        common::cookie_value(&common::set_cookie(&r, "lodge_signin").expect("binding cookie"));
    (location, binding)
}

/// Signs in at the provider's own form over plain HTTP (its cookies kept by hand) and returns
/// the hub callback URL the provider redirects to, unvisited.
async fn provider_login(o: &Oidc, auth_url: &str, login: &str, password: &str) -> String {
    let callback = format!("{}/hub/oauth_callback", o.hub.base);
    let mut jar: BTreeMap<String, String> = BTreeMap::new();
    let mut url = auth_url.to_owned();
    let mut post: Option<String> = None;
    for _ in 0..20 {
        if url.starts_with(&callback) {
            return url;
        }
        let cookies = jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let request = match post.take() {
            Some(body) => common::no_redirects()
                .post(&url)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body),
            None => common::no_redirects().get(&url),
        };
        let r = request
            .header(COOKIE, cookies)
            .send()
            .await
            .expect("provider");
        for c in r.headers().get_all(SET_COOKIE) {
            let pair = c.to_str().expect("cookie").split(';').next().expect("pair");
            if let Some((k, v)) = pair.split_once('=') {
                jar.insert(k.to_owned(), v.to_owned());
            }
        }
        if r.status().is_redirection() {
            let loc = r.headers()[LOCATION].to_str().expect("location").to_owned();
            url = if loc.starts_with('/') {
                format!("{}{loc}", o.op.issuer())
            } else {
                loc
            };
            continue;
        }
        let html = r.text().await.expect("provider page");
        let at = html
            .find("action=\"")
            .unwrap_or_else(|| panic!("no login form at {url}: {html}"));
        let action = &html[at + 8..];
        let action = &action[..action.find('"').expect("quote")];
        url = format!("{}{action}", o.op.issuer());
        post = Some(common::form_body(&[
            ("login", login),
            ("password", password),
        ]));
    }
    panic!("the provider never redirected to {callback}");
}

async fn get_with(url: &str, cookies: &str) -> reqwest::Response {
    common::no_redirects()
        .get(url)
        .header(COOKIE, cookies)
        .send()
        .await
        .expect("get")
}

/// A whole sign-in without a browser; returns the callback's response.
async fn oidc_sign_in(o: &Oidc, login: &str, password: &str) -> reqwest::Response {
    let (auth, binding) = start_sign_in(&o.hub, "/hub/").await;
    let callback = provider_login(o, &auth, login, password).await;
    get_with(&callback, &format!("lodge_signin={binding}")).await
}

async fn session_of(r: reqwest::Response) -> String {
    let status = r.status();
    let set = common::set_cookie(&r, "lodge_session");
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 303, "sign-in did not complete: {text}");
    common::cookie_value(&set.expect("session cookie"))
}

fn user_json(hub: &TestHub, name: &str) -> Value {
    let users: Value = serde_json::from_str(&hub.ok(&["user", "list", "--json"])).expect("json");
    users
        .as_array()
        .expect("array")
        .iter()
        .find(|u| u["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_browser_signs_in_through_the_providers_own_form_and_out() {
    let o = oidc_hub(&[], "");
    let mut b = Browser::start().await;
    let page = b.goto(&format!("{}/hub/", o.hub.base)).await;
    assert!(
        page.url.starts_with(o.op.issuer()),
        "sent to the provider: {}",
        page.url
    );
    b.screenshot("signin-provider-form").await;
    b.fill("input[name=login]", "alice").await;
    b.fill("input[name=password]", "alice-pw").await;
    b.click("#submit").await;
    let url = b
        .wait_for_url(&format!("{}/hub/", o.hub.base), Duration::from_secs(15))
        .await;
    assert_eq!(url, format!("{}/hub/", o.hub.base));
    let text = b.text().await;
    assert!(text.contains("Signed in as alice"), "{text}");
    b.screenshot("signin-home").await;
    let session = b
        .cookies()
        .await
        .into_iter()
        .find(|c| c.name == "lodge_session")
        .expect("session cookie");
    assert!(session.http_only && !session.secure, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Lax"));

    b.click("button[type=submit]").await;
    let text = b.text().await;
    assert!(text.contains("You are signed out"), "{text}");
    b.screenshot("signin-signed-out").await;
    assert!(
        !b.cookies().await.iter().any(|c| c.name == "lodge_session"),
        "the cookie is cleared"
    );
    assert_eq!(home(&o.hub, &session.value).await.status(), 303);
    assert!(common::audit_has(&o.hub, "\"action\":\"oidc\"").await);
}

#[tokio::test]
async fn the_token_login_page_in_a_browser() {
    let hub = TestHub::start();
    hub.add_user("dora");
    let token = hub.token("dora", &["--scopes", "mcp,self"]);
    let mut b = Browser::start().await;
    b.goto(&format!("{}/hub/", hub.base)).await;
    b.screenshot("signin-token-form").await;
    b.fill("#token", &token).await;
    b.click("button[type=submit]").await;
    let text = b.text().await;
    assert!(text.contains("Signed in as dora"), "{text}");
}

#[tokio::test]
async fn a_forged_state_is_refused() {
    let o = oidc_hub(&[], "");
    let (_auth, binding) = start_sign_in(&o.hub, "/hub/").await;
    let r = get_with(
        &format!(
            "{}/hub/oauth_callback?code=abc&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            o.hub.base
        ),
        &format!("lodge_signin={binding}"),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(common::set_cookie(&r, "lodge_session").is_none());
    assert!(r.text().await.expect("body").contains("stale or forged"));
}

#[tokio::test]
async fn a_state_from_another_browser_is_refused() {
    let o = oidc_hub(&[], "");
    let (auth, _victims_binding) = start_sign_in(&o.hub, "/hub/").await;
    let callback = provider_login(&o, &auth, "alice", "alice-pw").await;
    let (_, other) = start_sign_in(&o.hub, "/hub/").await;
    let r = get_with(&callback, &format!("lodge_signin={other}")).await;
    assert_eq!(r.status(), 400);
    assert!(common::set_cookie(&r, "lodge_session").is_none());
    assert!(r.text().await.expect("body").contains("another browser"));
    // The state is spent even so: the right browser cannot use it afterwards either.
    let r = get_with(&callback, "").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_replayed_or_spliced_callback_is_refused_and_fixation_fails() {
    let o = oidc_hub(&[], "");
    let (auth, binding) = start_sign_in(&o.hub, "/hub/?x=1").await;
    let callback = provider_login(&o, &auth, "alice", "alice-pw").await;
    let planted = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    let r = get_with(
        &callback,
        &format!("lodge_session={planted}; lodge_signin={binding}"),
    )
    .await;
    assert_eq!(r.headers()[LOCATION], "/hub/?x=1");
    let session = session_of(r).await;
    assert_ne!(session, planted, "a planted session id is never promoted");
    assert_eq!(home(&o.hub, &session).await.status(), 200);
    assert_eq!(home(&o.hub, planted).await.status(), 303);

    // The same callback again (its code, state and ID token nonce replayed): refused.
    let r = get_with(&callback, &format!("lodge_signin={binding}")).await;
    assert_eq!(r.status(), 400);
    assert!(common::set_cookie(&r, "lodge_session").is_none());

    // A code from one sign-in spliced onto another sign-in's state: that sign-in's PKCE
    // verifier and nonce do not fit, so the provider's code is refused.
    let (auth_a, binding) = start_sign_in(&o.hub, "/hub/").await;
    let state_a = auth_a
        .split("state=")
        .nth(1)
        .expect("state")
        .split('&')
        .next()
        .expect("s");
    let (auth_b, _) = start_sign_in(&o.hub, "/hub/").await;
    let callback_b = provider_login(&o, &auth_b, "alice", "alice-pw").await;
    let code_b = callback_b
        .split("code=")
        .nth(1)
        .expect("code")
        .split('&')
        .next()
        .expect("c");
    let spliced = format!(
        "{}/hub/oauth_callback?code={code_b}&state={state_a}",
        o.hub.base
    );
    let r = get_with(&spliced, &format!("lodge_signin={binding}")).await;
    assert_eq!(r.status(), 403);
    assert!(common::set_cookie(&r, "lodge_session").is_none());
    assert!(common::audit_has(&o.hub, "sign_in_refused").await);
}

#[tokio::test]
async fn a_name_that_breaks_the_rule_is_refused_or_normalised() {
    let o = oidc_hub(&[], "");
    let r = oidc_sign_in(&o, "Carol.Smith@Example.org", "carol-pw").await;
    assert_eq!(r.status(), 403);
    let text = r.text().await.expect("body");
    assert!(text.contains("cannot be a Lodge user name"), "{text}");
    assert!(text.contains("Carol.Smith@Example.org"), "{text}");
    assert_eq!(user_json(&o.hub, "carol-smith"), Value::Null);

    let o = oidc_hub(&[("LODGE_AUTH_OIDC_USERNAME_NORMALIZE", "true")], "");
    let session = session_of(oidc_sign_in(&o, "Carol.Smith@Example.org", "carol-pw").await).await;
    let html = home(&o.hub, &session).await.text().await.expect("home");
    assert!(html.contains("Signed in as carol-smith"), "{html}");
}

#[tokio::test]
async fn only_allowed_groups_sign_in_and_groups_decide_admin_and_profile() {
    let config = r#"
        [profiles.big]
        memory = "2GiB"
        [auth.oidc.profile_for_group]
        gpu = "big"
    "#;
    let o = oidc_hub(
        &[
            ("LODGE_AUTH_OIDC_ALLOWED_GROUPS", r#"["staff"]"#),
            ("LODGE_AUTH_OIDC_ADMIN_GROUPS", r#"["ops"]"#),
        ],
        config,
    );
    let r = oidc_sign_in(&o, "bob", "bob-pw").await;
    assert_eq!(r.status(), 403);
    let text = r.text().await.expect("body");
    assert!(text.contains("not in a group allowed"), "{text}");
    assert_eq!(user_json(&o.hub, "bob"), Value::Null, "not created");

    session_of(oidc_sign_in(&o, "alice", "alice-pw").await).await;
    let alice = user_json(&o.hub, "alice");
    assert_eq!(
        (&alice["admin"], &alice["profile"]),
        (&json!(true), &json!("big"))
    );

    // The provider decides again at the next sign-in.
    o.op.set_user("alice", json!({"groups": ["staff"]})).await;
    session_of(oidc_sign_in(&o, "alice", "alice-pw").await).await;
    let alice = user_json(&o.hub, "alice");
    assert_eq!(
        (&alice["admin"], &alice["profile"]),
        (&json!(false), &json!("default"))
    );
}

async fn rooms_running(hub: &TestHub) -> f64 {
    hub.metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("lodge_rooms_running "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A new token of `user` (who exists already) and an MCP session with it.
async fn mcp_session(hub: &TestHub, user: &str) -> common::Mcp {
    let token = hub.token(user, &[]);
    let url = hub.mcp_url();
    let sid = common::open_session(&url, &token).await;
    common::Mcp { url, token, sid }
}

/// alice signed in through the provider, with a web session, a token, an MCP session and a
/// running room.
async fn alice_everywhere(o: &Oidc) -> (String, common::Mcp) {
    let session = session_of(oidc_sign_in(o, "alice", "alice-pw").await).await;
    let mcp = mcp_session(&o.hub, "alice").await;
    mcp.sh("echo up").await;
    assert_eq!(rooms_running(&o.hub).await, 1.0);
    (session, mcp)
}

async fn assert_deprovisioned(o: &Oidc, session: &str, mcp: &common::Mcp, why: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !common::audit_has(&o.hub, "\"kind\":\"deprovision\"").await {
        assert!(std::time::Instant::now() < deadline, "never deprovisioned");
    }
    assert!(
        common::audit_has(&o.hub, why).await,
        "audit names why: {why}"
    );
    assert_eq!(
        home(&o.hub, session).await.status(),
        303,
        "web session ended"
    );
    let r = mcp.post(&common::session_info_call()).await;
    assert_eq!(r.status(), 401, "token revoked");
    assert!(
        o.hub.ok(&["token", "list", "alice"]).lines().count() <= 1,
        "no tokens left"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rooms_running(&o.hub).await != 0.0 {
        assert!(std::time::Instant::now() < deadline, "room still running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn recheck_deprovisions_a_user_the_provider_disabled() {
    let o = oidc_hub(&[("LODGE_AUTH_OIDC_RECHECK", "1s")], "");
    let (session, mcp) = alice_everywhere(&o).await;
    o.op.set_user("alice", json!({"disabled": true})).await;
    assert_deprovisioned(&o, &session, &mcp, "invalid_grant").await;
}

#[tokio::test]
async fn recheck_deprovisions_a_user_removed_from_the_allowed_group() {
    let o = oidc_hub(
        &[
            ("LODGE_AUTH_OIDC_RECHECK", "1s"),
            ("LODGE_AUTH_OIDC_ALLOWED_GROUPS", r#"["staff"]"#),
        ],
        "",
    );
    let (session, mcp) = alice_everywhere(&o).await;
    o.op.set_user("alice", json!({"groups": ["ops"]})).await;
    assert_deprovisioned(&o, &session, &mcp, "no longer in an allowed group").await;
}

#[tokio::test]
async fn a_provider_failing_during_recheck_deprovisions_nobody() {
    let o = oidc_hub(&[("LODGE_AUTH_OIDC_RECHECK", "1s")], "");
    let session = session_of(oidc_sign_in(&o, "alice", "alice-pw").await).await;
    let token = o.hub.token("alice", &[]);
    // Groups the provider cannot serialise make its token endpoint fail with a 500.
    o.op.set_user("alice", json!({"groups": null})).await;
    let log = o.hub.dir.join("hub.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("HTTP 500") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no 500 seen: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then the provider goes away altogether.
    drop(o.op);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hub = o.hub;
    assert_eq!(home(&hub, &session).await.status(), 200, "still signed in");
    let r = common::http()
        .get(format!("{}/api/users/alice", hub.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_ne!(r.status(), 401, "token kept");
    assert!(
        !hub.ok(&["audit", "--json"])
            .contains("\"kind\":\"deprovision\"")
    );
}

#[tokio::test]
async fn a_server_enabled_for_a_group_is_offered_to_its_members_only() {
    let peers = common::peers::Peers::get();
    let config = format!(
        r#"
[rooms]
read_only_paths = ["{dir}"]

[servers.probe]
command = ["/usr/bin/python3", "{probe}"]
enabled_for = ["group:gpu"]
"#,
        dir = peers.dir.display(),
        probe = peers.probe().display(),
    );
    let o = oidc_hub(&[], &config);
    let mut servers = BTreeMap::new();
    for (name, password) in [("alice", "alice-pw"), ("dave", "dave-pw")] {
        session_of(oidc_sign_in(&o, name, password).await).await;
        let mcp = mcp_session(&o.hub, name).await;
        let info = mcp.ok("session_info", json!({})).await;
        servers.insert(name, info["servers"].to_string());
    }
    assert!(servers["alice"].contains("probe"), "{servers:?}");
    assert!(!servers["dave"].contains("probe"), "{servers:?}");
}

#[tokio::test]
async fn the_hub_signs_in_with_client_secret_post_and_as_a_public_client() {
    for auth in [Some("client_secret_post"), None] {
        let o = oidc_hub_as(auth, &[], "");
        let session = session_of(oidc_sign_in(&o, "dave", "dave-pw").await).await;
        let html = home(&o.hub, &session).await.text().await.expect("home");
        assert!(html.contains("Signed in as dave"), "{auth:?}: {html}");
    }
}

#[tokio::test]
async fn sign_in_starts_are_limited_per_address() {
    let o = oidc_hub(&[], "");
    // Each start stores a pending sign-in: an unauthenticated loop must not grow the store.
    // The budget is 60 a minute, refilled continuously (one a second): the loop may get one
    // more start per second it took, never more.
    let began = std::time::Instant::now();
    let mut allowed = 0;
    let r = loop {
        let r = common::no_redirects()
            .get(format!("{}/hub/login", o.hub.base))
            .send()
            .await
            .expect("login");
        if r.status() != 303 {
            break r;
        }
        allowed += 1;
        assert!(
            allowed <= 200,
            "200 sign-in starts in a row were all accepted"
        );
    };
    let budget = 60 + began.elapsed().as_secs() + 1;
    assert!(
        (60..=budget).contains(&allowed),
        "{allowed} starts were accepted before the limit (60 a minute, {budget} at most in this time)"
    );
    assert_eq!(r.status(), 429);
    assert!(r.text().await.expect("body").contains("Too many sign-ins"));
}
