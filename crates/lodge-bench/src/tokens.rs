//! `lodge bench`'s token-verification section: what authenticating a request costs with each
//! kind of bearer, measured as the same stateless `session_info` call one after another: a
//! `lodge_` token (the baseline, in the same run), the provider's JWT access token once verified
//! (cached by hash), and a new provider JWT on every request (a signature check each time). The
//! provider is a minimal OpenID issuer in this process (discovery and a JWKS over loopback
//! HTTP, an RSA-2048 key, RS256 as most providers sign), so no network or Node is needed.

use super::{
    Bars, BenchArgs, Client, ConfigPart, HubProcess, Overhead, Stats, fmt_us, sig3, timed_calls,
};
use anyhow::{Context as _, Result, anyhow};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KID: &str = "bench-rs256";
const FIG_LODGE: &str = "lodge_ token (baseline)";
const FIG_JWT_CACHED: &str = "provider JWT (verified before)";
const FIG_JWT_MISS: &str = "provider JWT (new: signature check)";
const FIG_OAUTH: &str = "OAuth access token (hub-issued)";
const FIG_SIGN_IN: &str = "sign-in to first tool call (hub share)";

/// The bench's OpenID issuer: serves its discovery document and key set until dropped.
pub(super) struct Issuer {
    url: String,
    key: Arc<KeyPair>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Issuer {
    pub(super) async fn start() -> Result<Issuer> {
        let key = Arc::new(
            KeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow!("cannot generate a key"))?,
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen for the bench's OpenID issuer")?;
        let url = format!("http://{}", listener.local_addr()?);
        let public = key.public_key();
        let discovery = json!({
            "issuer": url,
            "authorization_endpoint": format!("{url}/authorize"),
            "token_endpoint": format!("{url}/token"),
            "jwks_uri": format!("{url}/jwks"),
        })
        .to_string();
        let jwks = json!({"keys": [{
            "kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        }]})
        .to_string();
        let server = tokio::spawn(serve(listener, discovery, jwks));
        Ok(Issuer { url, key, server })
    }

    /// The hub's `[auth.oidc]`, trusting this issuer's access tokens.
    pub(super) fn config(&self) -> ConfigPart {
        ConfigPart {
            read_only_paths: Vec::new(),
            tables: format!(
                "[auth.oidc]\nissuer = \"{}\"\nclient_id = \"lodge-bench\"\n\
                 client_secret = \"unused\"\naccept_access_tokens = true\n",
                self.url
            ),
        }
    }

    /// An RS256 access token for `user` at the hub's `/mcp`, unique by `n`, valid for an hour.
    fn mint(&self, hub_base: &str, user: &str, n: usize) -> Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let header = json!({"alg": "RS256", "kid": KID, "typ": "at+jwt"});
        let claims = json!({
            "iss": self.url, "aud": format!("{hub_base}/mcp"), "sub": user,
            "preferred_username": user, "iat": now, "exp": now + 3600,
            "jti": format!("bench-{n}"),
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| anyhow!("cannot sign a bench token"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// Answers GET /.well-known/openid-configuration and GET /jwks; anything else 404.
async fn serve(listener: TcpListener, discovery: String, jwks: String) {
    let (discovery, jwks) = (Arc::new(discovery), Arc::new(jwks));
    while let Ok((mut stream, _)) = listener.accept().await {
        let (discovery, jwks) = (discovery.clone(), jwks.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                match stream.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => len += n,
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split(' ').nth(1).unwrap_or("");
            let (status, body) = match path {
                "/.well-known/openid-configuration" => ("200 OK", discovery.as_str()),
                "/jwks" => ("200 OK", jwks.as_str()),
                _ => ("404 Not Found", "{}"),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

#[derive(Serialize)]
pub(super) struct Section {
    baseline: Row,
    rows: Vec<Row>,
    /// A whole OAuth grant as an MCP client meets it, the hub's share only (registration,
    /// token-form sign-in, consent, code exchange, first tool call); no baseline applies.
    sign_in: Row,
    /// How many grants `sign_in` timed.
    grants: usize,
}

#[derive(Serialize)]
struct Row {
    figure: &'static str,
    #[serde(flatten)]
    stats: Stats,
    /// Against the `lodge_` baseline: the difference and the ratio, per statistic.
    vs_baseline: Option<Overhead>,
}

/// Measures the rows for user `bench` (`c` its client with its `mcp` token). The OAuth grants
/// sign `bench` in with one-time links (`lodge user login-url`), made before the timing: the
/// hub is configured with a provider here, whose sign-in is not the hub's share.
pub(super) async fn run(
    a: &BenchArgs,
    issuer: &Issuer,
    hub: &HubProcess,
    c: &Client,
    bars: &Bars,
) -> Result<Section> {
    let hub_base = hub.base.as_str();
    let stateless = |c: &Client| {
        let c = c.clone();
        move || {
            let c = c.clone();
            async move { c.session_info_stateless().await }
        }
    };
    let (_, baseline) = timed_calls(a.warmup, a.requests, bars, FIG_LODGE, stateless(c)).await?;
    let jwt = c.for_token(&issuer.mint(hub_base, "bench", 0)?);
    let (_, cached) =
        timed_calls(a.warmup, a.requests, bars, FIG_JWT_CACHED, stateless(&jwt)).await?;
    // Every request a token the hub has not seen: minted beforehand, outside the timing.
    let fresh = (1..=a.warmup + a.requests)
        .map(|n| issuer.mint(hub_base, "bench", n).map(|t| c.for_token(&t)))
        .collect::<Result<Vec<_>>>()?;
    let next = AtomicUsize::new(0);
    let (_, miss) = timed_calls(a.warmup, a.requests, bars, FIG_JWT_MISS, || {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let c = fresh.get(i).cloned();
        async move {
            c.context("ran out of fresh tokens")?
                .session_info_stateless()
                .await
        }
    })
    .await?;
    // Each grant stores a client and tokens: a hundred show the spread without growing the
    // store much.
    let grants = (a.requests / 20).clamp(10, 100);
    let mut links = sign_in_links(hub, grants + 2).await?.into_iter();
    let mut next_link = move || links.next().context("ran out of sign-in links");
    let access = super::oauth::sign_in_to_first_call(hub_base, &next_link()?, c).await?;
    let (_, oauth) = timed_calls(
        a.warmup,
        a.requests,
        bars,
        FIG_OAUTH,
        stateless(&c.for_token(&access)),
    )
    .await?;
    let (_, sign_in) = timed_calls(1, grants, bars, FIG_SIGN_IN, || {
        let link = next_link();
        async move {
            super::oauth::sign_in_to_first_call(hub_base, &link?, c)
                .await
                .map(drop)
        }
    })
    .await?;
    let row = |figure, stats: Stats| Row {
        figure,
        vs_baseline: Some(Overhead::between(&baseline, &stats)),
        stats,
    };
    Ok(Section {
        rows: vec![
            row(FIG_OAUTH, oauth),
            row(FIG_JWT_CACHED, cached),
            row(FIG_JWT_MISS, miss),
        ],
        sign_in: Row {
            figure: FIG_SIGN_IN,
            stats: sign_in,
            vs_baseline: None,
        },
        grants,
        baseline: Row {
            figure: FIG_LODGE,
            stats: baseline,
            vs_baseline: None,
        },
    })
}

/// `n` one-time sign-in links for user `bench`, as paths (`/hub/login/link/…`).
async fn sign_in_links(hub: &HubProcess, n: usize) -> Result<Vec<String>> {
    let mut links = Vec::with_capacity(n);
    for _ in 0..n {
        let url =
            super::lodge_cli(&hub.exe, hub._dir.path(), &["user", "login-url", "bench"]).await?;
        let at = url
            .find("/hub/login/link/")
            .with_context(|| format!("login-url printed no link: {url:?}"))?;
        links.push(url[at..].trim().to_owned());
    }
    Ok(links)
}

pub(super) fn print(s: &Section) {
    println!("verification cost per request: stateless session_info, sequential, by bearer kind");
    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "figure", "p50", "p99", "+p50", "p50 ratio", "p99 ratio"
    );
    println!(
        "{:<38} {:>10} {:>10}",
        s.baseline.figure,
        fmt_us(s.baseline.stats.p50_us),
        fmt_us(s.baseline.stats.p99_us)
    );
    for r in &s.rows {
        let Some(o) = &r.vs_baseline else { continue };
        println!(
            "{:<38} {:>10} {:>10} {:>10} {:>9}x {:>9}x",
            r.figure,
            fmt_us(r.stats.p50_us),
            fmt_us(r.stats.p99_us),
            fmt_us(o.p50_us),
            sig3(o.ratio_p50),
            sig3(o.ratio_p99)
        );
    }
    println!(
        "{:<38} {:>10} {:>10}   ({} grants: register, link sign-in, consent, code exchange, first call)",
        s.sign_in.figure,
        fmt_us(s.sign_in.stats.p50_us),
        fmt_us(s.sign_in.stats.p99_us),
        s.grants
    );
}
