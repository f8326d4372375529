//! Proves the sign-in test harness itself, before any Lodge code relies on it: headless Chromium
//! signs in through the real OpenID provider's own login form and the authorization code reaches
//! a redirect listener in this test; the provider's tokens carry groups, refresh as its admin
//! endpoints say, and the JWTs it mints verify (or, for the attack variants, do not) against the
//! key set it publishes. Lodge's hub is not involved.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::auth_suite::{AuthorizationSuite, free_port};
use common::browser::Browser;
use common::oidc::OidcProvider;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// RFC 7636 appendix B's verifier and its S256 challenge.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const CLIENT: &str = "harness";
const SECRET: &str = "harness-secret";

/// A loopback HTTP listener standing in for a relying party's redirect endpoint: it records each
/// request's target and answers a small page.
struct Redirects {
    base: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Redirects {
    async fn start() -> Redirects {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut len = 0;
                    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                        match stream.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => len += n,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..len]).into_owned();
                    if let Some(target) = head.split(' ').nth(1) {
                        record.lock().expect("lock").push(target.to_owned());
                    }
                    let body = "<html><body><h1>redirect received</h1></body></html>";
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        Redirects { base, seen }
    }

    fn callback(&self) -> String {
        format!("{}/callback", self.base)
    }

    /// The query of the last request to /callback (Chromium also asks for /favicon.ico).
    fn last_query(&self) -> Vec<(String, String)> {
        let seen = self.seen.lock().expect("lock");
        let target = seen
            .iter()
            .rev()
            .find(|t| t.starts_with("/callback?"))
            .unwrap_or_else(|| panic!("no redirect reached /callback: {seen:?}"));
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
        url_pairs(query)
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .expect("query")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn provider(redirect: &str) -> OidcProvider {
    OidcProvider::start(json!({
        "port": 0,
        "clients": [{"client_id": CLIENT, "client_secret": SECRET, "redirect_uris": [redirect]}],
        "users": [
            {"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.org",
             "password": "alice-pw", "groups": ["staff", "lodge-admins"]},
            {"sub": "u-bob", "preferred_username": "bob", "password": "bob-pw", "groups": []}
        ]
    }))
}

fn authorize_url(op: &OidcProvider, redirect: &str, state: &str, pkce: bool) -> String {
    let mut url = reqwest::Url::parse(&format!("{}/auth", op.issuer())).expect("url");
    url.query_pairs_mut()
        .append_pair("client_id", CLIENT)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid profile email")
        .append_pair("redirect_uri", redirect)
        .append_pair("state", state)
        .append_pair("nonce", "nonce-1");
    if pkce {
        url.query_pairs_mut()
            .append_pair("code_challenge", CHALLENGE)
            .append_pair("code_challenge_method", "S256");
    }
    url.into()
}

async fn token_request(op: &OidcProvider, form: &[(&str, &str)]) -> (u16, Value) {
    let response = common::http()
        .post(format!("{}/token", op.issuer()))
        .basic_auth(CLIENT, Some(SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(common::form_body(form))
        .send()
        .await
        .expect("token request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("token answer is JSON"))
}

fn jwt_parts(token: &str) -> (Value, Value, Vec<u8>, String) {
    let mut parts = token.split('.');
    let (h, p, s) = (
        parts.next().expect("header"),
        parts.next().expect("payload"),
        parts.next().expect("signature"),
    );
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).expect("base64url");
    let header = serde_json::from_slice(&decode(h)).expect("header JSON");
    let payload = serde_json::from_slice(&decode(p)).expect("payload JSON");
    (header, payload, decode(s), format!("{h}.{p}"))
}

/// Verifies a JWS against a published key set with ring: true only if the header's kid names a
/// published key whose algorithm is the header's and the signature checks.
fn verifies(token: &str, jwks: &Value) -> bool {
    let (header, _, signature, input) = jwt_parts(token);
    let Some(key) = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == header["kid"])
    else {
        return false;
    };
    if key["alg"] != header["alg"] {
        return false;
    }
    let field = |k: &str| URL_SAFE_NO_PAD.decode(key[k].as_str().unwrap_or_default());
    match header["alg"].as_str() {
        Some("RS256") => {
            let (Ok(n), Ok(e)) = (field("n"), field("e")) else {
                return false;
            };
            ring::signature::RsaPublicKeyComponents { n, e }
                .verify(
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                    input.as_bytes(),
                    &signature,
                )
                .is_ok()
        }
        Some("ES256") => {
            let (Ok(x), Ok(y)) = (field("x"), field("y")) else {
                return false;
            };
            let point = [&[4u8][..], &x, &y].concat();
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                point,
            )
            .verify(input.as_bytes(), &signature)
            .is_ok()
        }
        _ => false,
    }
}

#[tokio::test]
async fn chromium_signs_in_at_the_provider_and_the_code_arrives() {
    let redirects = Redirects::start().await;
    let op = provider(&redirects.callback());
    let mut browser = Browser::start().await;
    assert!(
        browser.version.contains("Chrome"),
        "version {}",
        browser.version
    );

    // The provider's own login form, not a page of this test.
    let page = browser
        .goto(&authorize_url(&op, &redirects.callback(), "state-1", true))
        .await;
    assert_eq!(page.status, Some(200));
    assert!(
        page.url
            .starts_with(&format!("{}/interaction/", op.issuer())),
        "{}",
        page.url
    );
    let shot = browser.screenshot("harness-provider-login").await;
    assert!(
        std::fs::metadata(&shot).expect("screenshot").len() > 1000,
        "empty screenshot"
    );

    // A wrong password keeps us on the form.
    browser.fill("input[name=login]", "alice").await;
    browser.fill("input[name=password]", "wrong").await;
    browser.click("button[type=submit]").await;
    assert!(
        browser.text().await.contains("Wrong login or password"),
        "{}",
        browser.text().await
    );

    browser.fill("input[name=login]", "alice").await;
    browser.fill("input[name=password]", "alice-pw").await;
    let page = browser.click("button[type=submit]").await;
    let url = browser
        .wait_for_url(&redirects.base, Duration::from_secs(10))
        .await;
    assert_eq!(page.url, url);
    assert!(browser.text().await.contains("redirect received"));
    let query = redirects.last_query();
    assert_eq!(param(&query, "state"), Some("state-1"), "{query:?}");
    assert_eq!(param(&query, "iss"), Some(op.issuer()), "{query:?}");
    let code = param(&query, "code").expect("code").to_owned();

    // The provider's session cookie, with its flags as Chromium keeps them.
    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c.name == "_session")
        .unwrap_or_else(|| panic!("no provider session cookie in {cookies:?}"));
    assert!(session.http_only, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Lax"), "{session:?}");

    // PKCE is enforced: the code does not redeem without the verifier, nor with a wrong one
    // (oidc-provider checks PKCE before it consumes the code, so the right one still works).
    let redirect = redirects.callback();
    let exchange = |verifier: Option<&'static str>| {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect.as_str()),
        ];
        if let Some(v) = verifier {
            form.push(("code_verifier", v));
        }
        form
    };
    for verifier in [None, Some("wrong-verifier-wrong-verifier-wrong-verifier-0")] {
        let (status, body) = token_request(&op, &exchange(verifier)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{verifier:?}: {body}"
        );
    }
    let form = exchange(Some(VERIFIER));
    let (status, tokens) = token_request(&op, &form).await;
    assert_eq!(status, 200, "{tokens}");
    let jwks = op.jwks().await;
    let id_token = tokens["id_token"].as_str().expect("id_token");
    assert!(verifies(id_token, &jwks), "ID token does not verify");
    let (_, claims, _, _) = jwt_parts(id_token);
    assert_eq!(claims["iss"], op.issuer());
    assert_eq!(claims["aud"], CLIENT);
    assert_eq!(claims["sub"], "u-alice");
    assert_eq!(claims["nonce"], "nonce-1");
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(claims["groups"], json!(["staff", "lodge-admins"]));
    let refresh = tokens["refresh_token"]
        .as_str()
        .expect("a refresh token at every code exchange")
        .to_owned();

    // Changed groups show in the next refresh's ID token; after a key rotation that ID token is
    // signed with the new key, and the old key stays published.
    op.set_user("alice", json!({"groups": ["staff"]})).await;
    let rotated = op.rotate().await;
    let (status, tokens) = token_request(
        &op,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let id_token = tokens["id_token"].as_str().expect("id_token on refresh");
    let (header, claims, _, _) = jwt_parts(id_token);
    assert_eq!(claims["groups"], json!(["staff"]));
    assert_eq!(header["kid"], rotated["current"]["RS256"]);
    let jwks_after = op.jwks().await;
    assert!(verifies(id_token, &jwks_after));
    assert!(
        !verifies(id_token, &jwks),
        "the new kid was published before the rotation"
    );
    let refresh = tokens["refresh_token"]
        .as_str()
        .unwrap_or(&refresh)
        .to_owned();

    // A disabled user's refresh fails with invalid_grant.
    op.set_user("alice", json!({"disabled": true})).await;
    let (status, body) = token_request(
        &op,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );

    // A code redeems once (replaying it also revokes what it issued, so this comes last but one).
    let (status, body) = token_request(&op, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "a code redeems once: {body}"
    );

    // Without PKCE the provider refuses the authorization request itself.
    browser
        .goto(&authorize_url(&op, &redirects.callback(), "state-3", false))
        .await;
    browser
        .wait_for_url(&redirects.base, Duration::from_secs(10))
        .await;
    let query = redirects.last_query();
    assert_eq!(param(&query, "state"), Some("state-3"));
    assert_eq!(param(&query, "error"), Some("invalid_request"), "{query:?}");
    assert_eq!(param(&query, "code"), None);
}

#[tokio::test]
async fn minted_tokens_verify_against_the_published_jwks_and_attacks_do_not() {
    let op = provider("http://127.0.0.1:9/callback");
    let jwks = op.jwks().await;
    let published: Vec<&str> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid"))
        .collect();

    let minted = op
        .mint(json!({"sub": "u-alice", "aud": "http://hub/mcp", "scope": "mcp"}))
        .await;
    assert_eq!(minted.alg, "RS256");
    assert!(published.contains(&minted.kid.as_str()), "{published:?}");
    assert!(verifies(&minted.token, &jwks));
    let (_, claims, _, _) = jwt_parts(&minted.token);
    assert_eq!(claims["iss"], op.issuer());
    assert_eq!(claims["aud"], "http://hub/mcp");
    assert!(claims["exp"].as_i64() > claims["iat"].as_i64());
    assert_eq!(minted.claims, claims);

    let es = op
        .mint_with(json!({"claims": {"sub": "u-alice", "exp": null}, "header": {"alg": "ES256"}}))
        .await;
    assert_eq!(es.alg, "ES256");
    assert!(verifies(&es.token, &jwks));
    let (_, claims, _, _) = jwt_parts(&es.token);
    assert!(claims.get("exp").is_none(), "a null claim is left out");

    // Tampering with the payload breaks the signature: the check above can fail.
    let (h, _, s, _) = jwt_parts(&minted.token);
    let forged = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(h.to_string()),
        URL_SAFE_NO_PAD.encode(json!({"sub": "u-root", "iss": op.issuer()}).to_string()),
        URL_SAFE_NO_PAD.encode(s)
    );
    assert!(!verifies(&forged, &jwks));

    let none = op
        .mint_with(json!({"claims": {"sub": "u-alice"}, "variant": "none"}))
        .await;
    let (header, _, signature, _) = jwt_parts(&none.token);
    assert_eq!(header["alg"], "none");
    assert!(signature.is_empty());
    assert!(!verifies(&none.token, &jwks));

    // HMAC keyed with the public key: the classic confusion token carries the real kid.
    let hs = op
        .mint_with(json!({"claims": {"sub": "u-alice"}, "variant": "hs256-public-key"}))
        .await;
    let (header, _, signature, input) = jwt_parts(&hs.token);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["kid"], minted.kid);
    assert!(!verifies(&hs.token, &jwks));
    // ...and its MAC really is keyed with the public key's PEM, so a verifier that took the key
    // bytes as an HMAC secret would accept it.
    let rsa = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("published");
    let pem = spki_pem(rsa);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pem.as_bytes());
    assert!(ring::hmac::verify(&key, input.as_bytes(), &signature).is_ok());

    let unknown = op
        .mint_with(json!({"claims": {"sub": "u-alice"}, "variant": "unknown-kid"}))
        .await;
    assert!(!published.contains(&unknown.kid.as_str()));
    assert!(!verifies(&unknown.token, &jwks));

    let mismatch = op
        .mint_with(json!({"claims": {"sub": "u-alice"}, "variant": "alg-key-mismatch"}))
        .await;
    let (header, _, _, _) = jwt_parts(&mismatch.token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], minted.kid, "names the RSA key");
    assert!(!verifies(&mismatch.token, &jwks));

    // After a rotation the new key signs and the old one stays published.
    let rotated = op.rotate().await;
    let jwks = op.jwks().await;
    let fresh = op.mint(json!({"sub": "u-alice"})).await;
    assert_eq!(
        fresh.kid,
        rotated["current"]["RS256"].as_str().expect("kid")
    );
    assert_ne!(fresh.kid, minted.kid);
    assert!(verifies(&fresh.token, &jwks));
    assert!(
        verifies(&minted.token, &jwks),
        "the old key is still published"
    );
}

/// The conformance suite's `authorization` runner, proven against the test provider (which is
/// an OAuth authorization server too): the URL it prints is found, Chromium completes the code
/// flow at it, and the suite's checks are read back.
#[tokio::test]
async fn the_authorization_suite_runner_completes_a_code_grant_through_chromium() {
    let port = free_port();
    let callback = format!("http://127.0.0.1:{port}/callback");
    let op = OidcProvider::start(json!({
        "clients": [{"client_id": "suite", "redirect_uris": [callback]}],
        "users": [{"sub": "u-alice", "preferred_username": "alice", "password": "alice-pw"}]
    }));
    let mut suite = AuthorizationSuite::start(op.issuer(), "suite", None, port);
    let url = suite
        .authorization_url(Duration::from_secs(60))
        .await
        .expect("the suite asks for a sign-in");
    assert!(url.starts_with(&format!("{}/auth?", op.issuer())), "{url}");

    let mut browser = Browser::start().await;
    browser.goto(&url).await;
    browser.fill("input[name=login]", "alice").await;
    browser.fill("input[name=password]", "alice-pw").await;
    browser.click("button[type=submit]").await;
    browser
        .wait_for_url(&callback, Duration::from_secs(15))
        .await;

    let outcome = suite.finish(Duration::from_secs(60)).await;
    assert!(
        outcome.failures().is_empty() && outcome.success,
        "{:?}\n{}",
        outcome.failures(),
        outcome.transcript
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
}

/// The SPKI PEM of an RSA JWK, as Node exports it: the bytes an HMAC-confused verifier would use.
fn spki_pem(jwk: &Value) -> String {
    fn der_len(len: usize) -> Vec<u8> {
        if len < 128 {
            vec![len as u8]
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            [vec![0x80 | bytes.len() as u8], bytes].concat()
        }
    }
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        [vec![tag], der_len(body.len()), body.to_vec()].concat()
    }
    fn integer(bytes: &[u8]) -> Vec<u8> {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        let body = if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
            [vec![0], trimmed].concat()
        } else {
            trimmed
        };
        tlv(0x02, &body)
    }
    let field = |k: &str| URL_SAFE_NO_PAD.decode(jwk[k].as_str().expect(k)).expect(k);
    let rsa_key = tlv(0x30, &[integer(&field("n")), integer(&field("e"))].concat());
    // AlgorithmIdentifier: rsaEncryption (1.2.840.113549.1.1.1), NULL parameters.
    let algorithm = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let bit_string = tlv(0x03, &[vec![0], rsa_key].concat());
    let spki = tlv(0x30, &[algorithm.to_vec(), bit_string].concat());
    let b64 = STANDARD.encode(spki);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}
