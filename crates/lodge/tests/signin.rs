//! Browser sign-in against the real binary: web sessions and their cookie, the token form,
//! one-time links, sign-out, and the attacks on them (CSRF, session fixation, open redirects,
//! replayed links).

mod common;

use common::TestHub;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use std::time::Duration;

/// A client that does not follow redirects and keeps no cookies: each test says what it sends.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

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

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The whole `Set-Cookie` header that sets `name`, if any.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The value a `Set-Cookie` header sets.
fn cookie_value(set_cookie: &str) -> String {
    let pair = set_cookie.split(';').next().expect("pair");
    pair.split_once('=').expect("=").1.to_owned()
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
    let r = client()
        .get(format!("{}/hub/login?next=%2Fhub%2F", hub.base))
        .send()
        .await
        .expect("get login");
    assert_eq!(r.status(), 200);
    let csrf_cookie = cookie_value(&set_cookie(&r, "lodge_csrf").expect("csrf cookie"));
    let html = r.text().await.expect("body");
    assert!(html.contains("Lodge token"), "{html}");
    Form {
        csrf: csrf_in(&html),
        csrf_cookie,
    }
}

async fn post_login(hub: &TestHub, cookies: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    client()
        .post(format!("{}/hub/login", hub.base))
        .header(COOKIE, cookies)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(fields))
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
    client()
        .get(format!("{}/hub/", hub.base))
        .header(COOKIE, format!("lodge_session={session}"))
        .send()
        .await
        .expect("get home")
}

async fn audit_has(hub: &TestHub, needle: &str) -> bool {
    // The audit writer batches; give it a moment.
    for _ in 0..50 {
        let out = hub.ok(&["audit", "--json"]);
        if out.contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn token_form_signs_in_lands_on_next_and_signs_out() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let token = hub.token("alice", &["--scopes", "mcp,self"]);

    let r = client()
        .get(format!("{}/hub/", hub.base))
        .send()
        .await
        .expect("home");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/hub/login?next=%2Fhub%2F");

    let r = sign_in_with_token(&hub, &token, "/hub/?tab=1").await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/hub/?tab=1");
    let set = set_cookie(&r, "lodge_session").expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/;"] {
        assert!(set.contains(flag), "{set} lacks {flag}");
    }
    assert!(!set.contains("Secure"), "plain http: {set}");
    let session = cookie_value(&set);

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
            client()
                .post(format!("{base}/hub/logout"))
                .header(COOKIE, format!("lodge_session={session}"))
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form(&[("csrf", &csrf)]))
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
    let cleared = set_cookie(&r, "lodge_session").expect("cleared cookie");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(home(&hub, &session).await.status(), 303, "session ended");
    assert!(audit_has(&hub, "\"kind\":\"sign_in\"").await);
    assert!(audit_has(&hub, "\"kind\":\"sign_out\"").await);
}

#[tokio::test]
async fn token_form_refuses_a_token_without_self() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let mcp_only = hub.token("alice", &[]);
    let r = sign_in_with_token(&hub, &mcp_only, "/hub/").await;
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "lodge_session").is_none());
    let html = r.text().await.expect("body");
    assert!(
        html.contains("scope &#39;self&#39;") || html.contains("scope 'self'"),
        "{html}"
    );
    assert!(audit_has(&hub, "token lacks scope self").await);

    let r = sign_in_with_token(&hub, "lodge_notavalidtokenatallxxxxxxxxxxxxxxxxxxx", "/").await;
    assert_eq!(r.status(), 401);
    assert!(set_cookie(&r, "lodge_session").is_none());
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
    assert!(set_cookie(&r, "lodge_session").is_none());
    // No cookie at all (a cross-site post carries none under SameSite=Lax).
    let r = post_login(&hub, "", &[("csrf", &f.csrf), ("token", &token)]).await;
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "lodge_session").is_none());
}

#[tokio::test]
async fn a_session_cookie_planted_before_sign_in_is_never_the_one_after() {
    let hub = TestHub::start();
    hub.add_user("alice");
    let token = hub.token("alice", &["--scopes", "mcp,self"]);
    let planted = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let f = open_login(&hub).await;
    let r = post_login(
        &hub,
        &format!("lodge_session={planted}; lodge_csrf={}", f.csrf_cookie),
        &[("csrf", &f.csrf), ("token", &token)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let session = cookie_value(&set_cookie(&r, "lodge_session").expect("cookie"));
    assert_ne!(session, planted);
    assert_eq!(home(&hub, &session).await.status(), 200);
    assert_eq!(
        home(&hub, planted).await.status(),
        303,
        "planted id is not signed in"
    );

    // Signing in again from a signed-in browser replaces the session too.
    let f = open_login(&hub).await;
    let r = post_login(
        &hub,
        &format!("lodge_session={session}; lodge_csrf={}", f.csrf_cookie),
        &[("csrf", &f.csrf), ("token", &token)],
    )
    .await;
    // Already signed in: the login page sends the browser on; a post still mints anew.
    assert_eq!(r.status(), 303);
    let second = cookie_value(&set_cookie(&r, "lodge_session").expect("cookie"));
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
    let r = client()
        .get(format!("{}/hub/login", hub.base))
        .send()
        .await
        .expect("login");
    let csrf_set = set_cookie(&r, "lodge_csrf").expect("csrf cookie");
    assert!(csrf_set.contains("; Secure"), "{csrf_set}");
    let r = sign_in_with_token(&hub, &token, "/hub/").await;
    let set = set_cookie(&r, "lodge_session").expect("session cookie");
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
    let r = client()
        .get(format!("{}{path}", hub.base))
        .send()
        .await
        .expect("open link");
    if r.status() != 200 {
        return r;
    }
    let csrf_cookie = cookie_value(&set_cookie(&r, "lodge_csrf").expect("csrf cookie"));
    let html = r.text().await.expect("body");
    client()
        .post(format!("{}{path}", hub.base))
        .header(COOKIE, format!("lodge_csrf={csrf_cookie}"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &csrf_in(&html))]))
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
    let preview = client()
        .get(format!("{}{path}", hub.base))
        .send()
        .await
        .expect("preview");
    assert_eq!(preview.status(), 200);
    let r = use_link(&hub, &path).await;
    assert_eq!(r.status(), 303);
    let session = cookie_value(&set_cookie(&r, "lodge_session").expect("cookie"));
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
    assert!(audit_has(&hub, "\"action\":\"link\"").await);

    let out = hub.lodge(&["user", "login-url", "alice", "--expires", "30d"]);
    assert!(!out.status.success(), "a month-long link is refused");
}
