//! A real OpenID provider for sign-in tests: runs tests/peers/oidc_provider.mjs (npm
//! oidc-provider on Node 22) on a loopback port, and wraps its test-only admin endpoints
//! (/test/users, /test/mint, /test/rotate). It decides nothing about Lodge; tests do.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use super::PeerLog;
use super::peers::Peers;

pub struct OidcProvider {
    child: Child,
    _stdin: Option<ChildStdin>,
    issuer: String,
    log: PeerLog,
}

/// A token from /test/mint.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub kid: String,
    pub alg: String,
    /// The claims as signed (with the defaults the provider filled in).
    pub claims: Value,
}

impl OidcProvider {
    /// Starts the provider with `config` (see tests/peers/oidc_provider.mjs: port, clients, users);
    /// returns once it listens. Panics ("run scripts/peers") if the peer is missing.
    pub fn start(config: Value) -> OidcProvider {
        let peers = Peers::get();
        let log = PeerLog::new("oidc provider");
        let mut child = Command::new(peers.node())
            .arg(peers.oidc_provider())
            .arg(config.to_string())
            // The script exits when its stdin closes: it cannot outlive a test killed outright.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.stdio())
            .spawn()
            .expect("spawn node oidc_provider.mjs");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let issuer = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the OpenID provider did not start within 30 s (run scripts/peers); its log:\n{}",
                    log.read()
                );
            }
        };
        let stdin = child.stdin.take();
        OidcProvider {
            child,
            _stdin: stdin,
            issuer,
            log,
        }
    }

    /// The issuer URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The provider's stderr so far.
    pub fn log(&self) -> String {
        self.log.read()
    }

    async fn admin(&self, path: &str, body: Value) -> Value {
        let response = super::http()
            .post(format!("{}{path}", self.issuer))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} to the OpenID provider: {e}"));
        let status = response.status();
        let value: Value = response
            .json()
            .await
            .expect("provider admin answer is JSON");
        assert!(status.is_success(), "POST {path}: {status} {value}");
        value
    }

    /// Mints a JWT access token signed with the provider's current key (published at its
    /// jwks_uri); `iss`, `iat` and `exp` (now + 300 s) are filled in when absent, a null claim is
    /// left out.
    pub async fn mint(&self, claims: Value) -> Minted {
        self.mint_with(json!({ "claims": claims })).await
    }

    /// /test/mint with a full request: {claims, header: {alg?, kid?}, variant?, hmac_key?};
    /// variants: "none", "hs256-public-key", "unknown-kid", "alg-key-mismatch".
    pub async fn mint_with(&self, request: Value) -> Minted {
        let v = self.admin("/test/mint", request).await;
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        Minted {
            token: text("token"),
            kid: text("kid"),
            alg: text("alg"),
            claims: v["claims"].clone(),
        }
    }

    /// Changes (or creates) the user NAME (a sub or preferred_username): {"disabled": true},
    /// {"groups": [...]}, or any user field. Returns the user as the provider now has it.
    pub async fn set_user(&self, name: &str, patch: Value) -> Value {
        self.admin(&format!("/test/users/{name}"), patch).await
    }

    /// Makes a new RSA and EC key pair current (the old ones stay published); returns
    /// {"kids": [...], "current": {"RS256": KID, "ES256": KID}}.
    pub async fn rotate(&self) -> Value {
        self.admin("/test/rotate", json!({})).await
    }

    /// The provider's discovery document.
    pub async fn discovery(&self) -> Value {
        self.get_json("/.well-known/openid-configuration").await
    }

    /// The published key set (jwks_uri).
    pub async fn jwks(&self) -> Value {
        let uri = self.discovery().await["jwks_uri"]
            .as_str()
            .expect("jwks_uri")
            .to_owned();
        let path = uri
            .strip_prefix(&self.issuer)
            .expect("jwks_uri on the issuer");
        self.get_json(path).await
    }

    async fn get_json(&self, path: &str) -> Value {
        super::http()
            .get(format!("{}{path}", self.issuer))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {path} from the OpenID provider: {e}"))
            .json()
            .await
            .expect("JSON")
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- OpenID provider log ---\n{}", self.log.read());
        }
    }
}
