//! The hub's own share of an MCP client's sign-in, timed end to end as a client and a browser
//! drive it over HTTP: dynamic registration, the person's sign-in (a one-time link, so no
//! identity provider's time is counted), consent, the code exchange and the first tool call.
//! It also yields an OAuth access token for the verification rows. It measures; it checks
//! only what it needs to go on.

use super::Client;
use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use std::collections::HashMap;

/// Where the bench's registered client says it receives codes. Nothing listens there: the
/// bench reads the code from the hub's redirect without following it.
const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// One complete grant for the user whom the one-time `link` (a path) signs in; returns the
/// access token after its first tool call succeeded.
pub(super) async fn sign_in_to_first_call(base: &str, link: &str, c: &Client) -> Result<String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let client_id = register(&http, base).await?;
    let (verifier, challenge) = pkce();
    let authorize = authorize_path(base, &client_id, &challenge);
    let session = sign_in(&http, base, link).await?;
    let code = consent(&http, base, &session, &authorize).await?;
    let access = exchange(&http, base, &client_id, &code, &verifier).await?;
    c.for_token(&access).session_info_stateless().await?;
    Ok(access)
}

async fn register(http: &reqwest::Client, base: &str) -> Result<String> {
    let r = http
        .post(format!("{base}/oauth/register"))
        .json(&serde_json::json!({
            "client_name": "lodge bench",
            "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }))
        .send()
        .await
        .context("POST /oauth/register")?;
    ensure!(r.status() == 201, "registration answered {}", r.status());
    let v: serde_json::Value = r.json().await?;
    Ok(v["client_id"]
        .as_str()
        .context("registration without client_id")?
        .to_owned())
}

fn pkce() -> (String, String) {
    let verifier = format!("bench-verifier-{:032x}", rand_u128());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    (verifier, challenge)
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    // The verifier only has to differ per grant; a failure leaves zeros, still a valid verifier.
    let _ = aws_lc_rs::rand::fill(&mut b);
    u128::from_le_bytes(b)
}

/// `/oauth/authorize?…` for the MCP endpoint, as a client sends it (path and query).
fn authorize_path(base: &str, client_id: &str, challenge: &str) -> String {
    let resource = format!("{base}/mcp");
    let q = form(&[
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("state", "bench"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("resource", &resource),
        ("scope", "mcp"),
    ]);
    format!("/oauth/authorize?{q}")
}

/// Signs in through a one-time link (its page, then its button's POST); returns the
/// `lodge_session` cookie.
async fn sign_in(http: &reqwest::Client, base: &str, link: &str) -> Result<String> {
    let url = format!("{base}{link}");
    let r = http
        .get(&url)
        .send()
        .await
        .context("GET the sign-in link")?;
    ensure!(
        r.status() == 200,
        "the sign-in link answered {}",
        r.status()
    );
    let csrf_cookie = cookie(&r, "lodge_csrf").context("no lodge_csrf cookie")?;
    let fields = inputs(&r.text().await?);
    let csrf = fields
        .get("csrf")
        .context("no csrf field on the link page")?;
    let r = http
        .post(&url)
        .header(reqwest::header::COOKIE, format!("lodge_csrf={csrf_cookie}"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(form(&[("csrf", csrf)]))
        .send()
        .await
        .context("POST the sign-in link")?;
    ensure!(r.status() == 303, "link sign-in answered {}", r.status());
    cookie(&r, "lodge_session").context("sign-in set no lodge_session cookie")
}

/// Opens the consent page and approves it; returns the code from the redirect.
async fn consent(
    http: &reqwest::Client,
    base: &str,
    session: &str,
    authorize: &str,
) -> Result<String> {
    let cookie = format!("lodge_session={session}");
    let r = http
        .get(format!("{base}{authorize}"))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await
        .context("GET /oauth/authorize")?;
    ensure!(
        r.status() == 200,
        "the consent page answered {}",
        r.status()
    );
    let mut fields = inputs(&r.text().await?);
    fields.insert("decision".into(), "approve".into());
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = http
        .post(format!("{base}/oauth/authorize"))
        .header(reqwest::header::COOKIE, &cookie)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(form(&pairs))
        .send()
        .await
        .context("POST /oauth/authorize")?;
    ensure!(r.status() == 303, "approval answered {}", r.status());
    let location = r
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("approval without Location")?;
    let url = reqwest::Url::parse(location)?;
    match url.query_pairs().find(|(k, _)| k == "code") {
        Some((_, code)) => Ok(code.into_owned()),
        None => bail!("approval redirected without a code: {location}"),
    }
}

async fn exchange(
    http: &reqwest::Client,
    base: &str,
    client_id: &str,
    code: &str,
    verifier: &str,
) -> Result<String> {
    let r = http
        .post(format!("{base}/oauth/token"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("code_verifier", verifier),
        ]))
        .send()
        .await
        .context("POST /oauth/token")?;
    ensure!(
        r.status() == 200,
        "the token endpoint answered {}",
        r.status()
    );
    let v: serde_json::Value = r.json().await?;
    Ok(v["access_token"]
        .as_str()
        .context("no access_token")?
        .to_owned())
}

fn form(fields: &[(&str, &str)]) -> String {
    let mut s = reqwest::Url::parse("http://x.invalid").expect("a constant URL");
    s.query_pairs_mut().extend_pairs(fields);
    s.query().unwrap_or_default().to_owned()
}

fn cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

/// The `name="N" value="V"` pairs of a page's inputs (the hub's own pages, whose markup it
/// renders one way), with maud's escapes undone.
fn inputs(html: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for part in html.split("<input").skip(1) {
        let attr = |key: &str| {
            let start = part.find(&format!("{key}=\""))? + key.len() + 2;
            let end = part[start..].find('"')? + start;
            Some(
                part[start..end]
                    .replace("&quot;", "\"")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&"),
            )
        };
        if let (Some(n), Some(v)) = (attr("name"), attr("value")) {
            out.insert(n, v);
        }
    }
    out
}
