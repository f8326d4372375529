//! The OpenID provider as this hub sees it: discovery of its endpoints, a cache of its signing
//! keys (JWKS), and verification of the JWTs it signs (ID tokens, and access tokens when
//! `accept_access_tokens` is on). It decides whether a JWT is genuine and meant for us; it must not
//! decide who the holder is in Lodge (auth and sign-in map claims to users).
//!
//! Refused whatever the key set holds: `alg: none`, every HMAC algorithm (a public key used as an
//! HMAC secret is the classic confusion attack), an algorithm that does not fit the key's type or
//! curve, a wrong issuer or audience, an expired or not-yet-valid token, and a key id unknown even
//! after one refetch of the key set (refetches for unknown ids are limited to one per 30 s, so
//! made-up ids cannot turn the hub into a flood against the provider).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_S: i64 = 60;
/// Unknown key ids trigger at most one refetch of the key set per this interval.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Keys are fetched again this often even when no unknown id forces it (providers retire keys).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
/// Discovery documents and key sets larger than this are refused.
const MAX_DOCUMENT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("not a signed JWT: {0}")]
    Malformed(String),
    #[error("JWT algorithm {0:?} is refused (only RS*, PS*, ES256, ES384 and EdDSA are accepted)")]
    ForbiddenAlgorithm(String),
    #[error("JWT key id {0:?} is not in the provider's key set (even after refetching it)")]
    UnknownKey(Option<String>),
    #[error("JWT algorithm {alg:?} does not fit key {kid:?} ({kty})")]
    KeyMismatch {
        alg: String,
        kid: Option<String>,
        kty: String,
    },
    #[error("JWT signature does not verify")]
    BadSignature,
    #[error("JWT claim {0:?} is missing or not of the right type")]
    MissingClaim(&'static str),
    #[error("JWT issuer {found:?} is not the expected {expected:?}")]
    WrongIssuer { found: String, expected: String },
    #[error("JWT audience {found} does not include any of {expected:?}")]
    WrongAudience {
        found: String,
        expected: Vec<String>,
    },
    #[error("JWT expired")]
    Expired,
    #[error("JWT is not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("OpenID discovery at {url} failed: {reason}")]
    Discovery { url: String, reason: String },
    #[error("the provider's key set at {url} cannot be read: {reason}")]
    Jwks { url: String, reason: String },
}

impl JwtError {
    /// A short, stable reason for audit records and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed JWT",
            JwtError::ForbiddenAlgorithm(_) => "JWT algorithm refused",
            JwtError::UnknownKey(_) => "JWT key unknown",
            JwtError::KeyMismatch { .. } => "JWT algorithm does not fit key",
            JwtError::BadSignature => "JWT signature invalid",
            JwtError::MissingClaim(_) => "JWT claim missing",
            JwtError::WrongIssuer { .. } => "JWT issuer wrong",
            JwtError::WrongAudience { .. } => "JWT audience wrong",
            JwtError::Expired => "JWT expired",
            JwtError::NotYetValid => "JWT not yet valid",
            JwtError::Discovery { .. } => "OpenID discovery failed",
            JwtError::Jwks { .. } => "JWKS unavailable",
        }
    }

    /// The provider could not be reached or understood: not the token's fault.
    pub fn is_provider_failure(&self) -> bool {
        matches!(self, JwtError::Discovery { .. } | JwtError::Jwks { .. })
    }
}

/// The claims of a verified JWT, as the provider sent them.
#[derive(Clone, Debug)]
pub struct Claims {
    pub raw: Map<String, Value>,
}

impl Claims {
    /// A string claim.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.raw.get(name).and_then(Value::as_str)
    }

    /// A claim that is a string or an array of strings (`aud`, `groups`), as a list.
    pub fn strings(&self, name: &str) -> Vec<String> {
        match self.raw.get(name) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A NumericDate claim (`exp`, `nbf`, `iat`) in seconds; fractions are allowed by RFC 7519.
    pub fn seconds(&self, name: &str) -> Option<i64> {
        let v = self.raw.get(name)?;
        v.as_i64().or_else(|| v.as_f64().map(|f| f.floor() as i64))
    }

    /// `exp` in Unix milliseconds.
    pub fn expires_ms(&self) -> Option<i64> {
        self.seconds("exp").map(|s| s.saturating_mul(1000))
    }
}

/// The parts of the provider's discovery document the hub uses.
#[derive(Clone, Debug, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// One verification key of the provider.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    /// `RSA`, `EC P-256`, ... for messages, and the algorithm check.
    kind: KeyKind,
    /// The key's own `alg`, when the provider pins one.
    alg: Option<Algorithm>,
    decoding: DecodingKey,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RSA key",
            KeyKind::EcP256 => "EC P-256 key",
            KeyKind::EcP384 => "EC P-384 key",
            KeyKind::Ed25519 => "Ed25519 key",
        }
    }
}

/// A JWKS as the hub keeps it: only keys that can verify signatures.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Keys the hub cannot or must not use for
    /// signatures (encryption keys, symmetric `oct` keys, unknown types) are left out one by
    /// one, so one exotic key does not hide the others.
    pub fn from_jwks(doc: &Value) -> Result<Self, String> {
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no \"keys\" array")?;
        let keys = list.iter().filter_map(Self::key).collect();
        Ok(Self { keys })
    }

    fn key(v: &Value) -> Option<Key> {
        let jwk: Jwk = serde_json::from_value(v.clone()).ok()?;
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return None;
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyKind::EcP256,
                EllipticCurve::P384 => KeyKind::EcP384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => KeyKind::Ed25519,
                _ => return None,
            },
            // A symmetric key in a public key set is never a verification key here.
            AlgorithmParameters::OctetKey(_) => return None,
        };
        let alg = match jwk.common.key_algorithm {
            // A key pinned to an algorithm we do not verify with (RSA-OAEP, HS256...) is unusable.
            Some(a) => Some(
                Algorithm::from_str(&a.to_string())
                    .ok()
                    .filter(|a| kind.fits(*a))?,
            ),
            None => None,
        };
        let decoding = DecodingKey::from_jwk(&jwk).ok()?;
        Some(Key {
            kid: jwk.common.key_id,
            kind,
            alg,
            decoding,
        })
    }

    /// The key for a token's `kid` (or, without one, the only key that fits its algorithm).
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.kind.fits(alg));
                let first = fitting.next();
                first.filter(|_| fitting.next().is_none())
            }
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The signed header of a JWT: its algorithm (already refused if `none` or HMAC) and key id.
struct Header {
    alg: Algorithm,
    kid: Option<String>,
}

/// Reads the header without trusting it, refusing what no key may ever verify.
fn header(token: &str) -> Result<Header, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "a JWS has three dot-separated parts".into(),
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| JwtError::Malformed("header is not base64url".into()))?;
    let json: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed("header is not a JSON object".into()))?;
    let alg = json
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| JwtError::Malformed("header has no alg".into()))?;
    // Extensions we do not understand must not be ignored (RFC 7515, section 4.1.11).
    if json.contains_key("crit") {
        return Err(JwtError::Malformed(
            "critical header extensions are not supported".into(),
        ));
    }
    let refused = || JwtError::ForbiddenAlgorithm(alg.to_owned());
    let alg_parsed = Algorithm::from_str(alg).map_err(|_| refused())?;
    if matches!(
        alg_parsed,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err(refused());
    }
    let kid = match json.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtError::Malformed("kid is not a string".into())),
    };
    Ok(Header {
        alg: alg_parsed,
        kid,
    })
}

/// Checks the signature with `key` and returns the payload.
fn signed_claims(token: &str, header: &Header, key: &Key) -> Result<Claims, JwtError> {
    let alg_name = || format!("{:?}", header.alg);
    if !key.kind.fits(header.alg) || key.alg.is_some_and(|a| a != header.alg) {
        return Err(JwtError::KeyMismatch {
            alg: alg_name(),
            kid: key.kid.clone(),
            kty: key.kind.name().to_owned(),
        });
    }
    let mut v = Validation::new(header.alg);
    // The claims are checked below with the caller's clock and our own rules (jsonwebtoken
    // would pass a token without `iss`, for one).
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &v) {
        Ok(data) => Ok(Claims { raw: data.claims }),
        Err(e) => {
            use jsonwebtoken::errors::ErrorKind as K;
            Err(match e.kind() {
                K::InvalidSignature => JwtError::BadSignature,
                K::InvalidAlgorithm | K::InvalidKeyFormat => JwtError::KeyMismatch {
                    alg: alg_name(),
                    kid: key.kid.clone(),
                    kty: key.kind.name().to_owned(),
                },
                other => JwtError::Malformed(format!("{other:?}")),
            })
        }
    }
}

/// `iss`, `aud`, `exp` (required) and `nbf` (when present) against the caller's expectations.
fn check_claims(
    claims: &Claims,
    expected_issuer: &str,
    expected_audience: &[&str],
    now_ms: i64,
) -> Result<(), JwtError> {
    let iss = claims.str("iss").ok_or(JwtError::MissingClaim("iss"))?;
    if iss != expected_issuer {
        return Err(JwtError::WrongIssuer {
            found: iss.to_owned(),
            expected: expected_issuer.to_owned(),
        });
    }
    let aud = claims.strings("aud");
    if !aud.iter().any(|a| expected_audience.contains(&a.as_str())) {
        return Err(JwtError::WrongAudience {
            found: if aud.is_empty() {
                "(none)".into()
            } else {
                format!("{aud:?}")
            },
            expected: expected_audience.iter().map(|s| s.to_string()).collect(),
        });
    }
    let now_s = now_ms.div_euclid(1000);
    let exp = claims.seconds("exp").ok_or(JwtError::MissingClaim("exp"))?;
    if exp.saturating_add(LEEWAY_S) <= now_s {
        return Err(JwtError::Expired);
    }
    if claims.raw.contains_key("nbf") {
        let nbf = claims.seconds("nbf").ok_or(JwtError::MissingClaim("nbf"))?;
        if nbf > now_s.saturating_add(LEEWAY_S) {
            return Err(JwtError::NotYetValid);
        }
    }
    Ok(())
}

/// Verifies `token` against a fixed key set: the whole check without any fetching.
pub fn verify_with_keys(
    keys: &KeySet,
    token: &str,
    expected_issuer: &str,
    expected_audience: &[&str],
    now_ms: i64,
) -> Result<Claims, JwtError> {
    let h = header(token)?;
    let key = keys
        .find(h.kid.as_deref(), h.alg)
        .ok_or_else(|| JwtError::UnknownKey(h.kid.clone()))?;
    let claims = signed_claims(token, &h, key)?;
    check_claims(&claims, expected_issuer, expected_audience, now_ms)?;
    Ok(claims)
}

/// Reads a JWT's claims WITHOUT verifying anything, to learn which audience to expect (the
/// per-user MCP URL names the user). Never use the result for a decision: verify first.
pub fn unverified_claims(token: &str) -> Option<Claims> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes)
        .ok()
        .map(|raw| Claims { raw })
}

/// Whether a bearer looks like a compact JWS (three base64url parts, the first a JSON header).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("eyJ")
}

#[derive(Default)]
struct FetchState {
    /// When a token's unknown key id last made us refetch.
    last_forced: Option<Instant>,
    /// When a scheduled (stale) fetch last failed; such fetches wait a refetch interval after it.
    last_failed: Option<Instant>,
}

struct Current {
    keys: Arc<KeySet>,
    fetched: Option<Instant>,
}

/// The configured OpenID provider: discovery (done once, on first use) and its keys.
pub struct Provider {
    issuer: String,
    http: Result<reqwest::Client, String>,
    metadata: tokio::sync::OnceCell<Arc<ProviderMetadata>>,
    current: RwLock<Current>,
    /// Serialises fetches of the key set, so a burst of tokens with a new key fetches once.
    fetch: tokio::sync::Mutex<FetchState>,
    refetch_interval: Duration,
    /// Key-set fetches made, for tests and metrics.
    fetches: std::sync::atomic::AtomicU64,
}

impl Provider {
    /// `issuer` exactly as configured; nothing is fetched until first use. An HTTP client that
    /// cannot be built (no TLS roots) shows as a discovery error on use, with the reason.
    pub fn new(issuer: &str) -> Self {
        Self::with_client(issuer, Self::http_client().map_err(|e| e.to_string()))
    }

    /// As [`Provider::new`] with a given client (tests, extra CAs).
    pub fn with_client(issuer: &str, http: Result<reqwest::Client, String>) -> Self {
        Self {
            issuer: issuer.to_owned(),
            http,
            metadata: tokio::sync::OnceCell::new(),
            current: RwLock::new(Current {
                keys: Arc::default(),
                fetched: None,
            }),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            refetch_interval: REFETCH_INTERVAL,
            fetches: Default::default(),
        }
    }

    /// An HTTP client fit for talking to a provider: bounded time, no redirects (discovery and
    /// keys come from the URLs the issuer names, not from wherever a redirect points).
    pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// How many times the key set was fetched.
    pub fn key_fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The discovery document, fetched on first use; its `issuer` must equal the configured
    /// one exactly (OpenID Connect Discovery 1.0, section 4.3). A failure is retried next call.
    pub async fn metadata(&self) -> Result<Arc<ProviderMetadata>, JwtError> {
        self.metadata
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let fail = |reason: String| JwtError::Discovery {
                    url: url.clone(),
                    reason,
                };
                let doc: Value = self.get_json(&url).await.map_err(fail)?;
                let meta: ProviderMetadata = serde_json::from_value(doc)
                    .map_err(|e| fail(format!("not a provider configuration: {e}")))?;
                if meta.issuer != self.issuer {
                    return Err(fail(format!(
                        "the document names issuer {:?}, configured is {:?}",
                        meta.issuer, self.issuer
                    )));
                }
                Ok(Arc::new(meta))
            })
            .await
            .cloned()
    }

    /// Verifies a JWT signed by this provider: signature with a key from its JWKS (refetched
    /// once for an unknown key id, at most once per 30 s), then `iss` = `expected_issuer`, one
    /// of `expected_audience` in `aud`, `exp` and `nbf` against `now_ms` (Unix milliseconds)
    /// with 60 s leeway.
    pub async fn verify(
        &self,
        token: &str,
        expected_issuer: &str,
        expected_audience: &[&str],
        now_ms: i64,
    ) -> Result<Claims, JwtError> {
        let h = header(token)?;
        let keys = self.keys().await?;
        let claims = match keys.find(h.kid.as_deref(), h.alg) {
            Some(key) => signed_claims(token, &h, key)?,
            None => {
                let Some(kid) = h.kid.as_deref() else {
                    return Err(JwtError::UnknownKey(None));
                };
                let keys = self.refetch_for(kid).await?;
                let key = keys
                    .find(Some(kid), h.alg)
                    .ok_or_else(|| JwtError::UnknownKey(h.kid.clone()))?;
                signed_claims(token, &h, key)?
            }
        };
        check_claims(&claims, expected_issuer, expected_audience, now_ms)?;
        Ok(claims)
    }

    /// The current key set, fetched first if never fetched or older than the refresh interval.
    async fn keys(&self) -> Result<Arc<KeySet>, JwtError> {
        let (keys, fetched) = self.snapshot();
        if fetched.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL) {
            return Ok(keys);
        }
        let mut state = self.fetch.lock().await;
        let (keys, fetched) = self.snapshot();
        if fetched.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL) {
            return Ok(keys); // another task fetched while we waited
        }
        if state
            .last_failed
            .is_some_and(|t| t.elapsed() < self.refetch_interval)
        {
            // Recently failed: keep what we have rather than asking again on every request.
            return match fetched {
                Some(_) => Ok(keys),
                None => Err(self
                    .jwks_error("the last attempt failed; retrying shortly")
                    .await),
            };
        }
        match self.fetch_keys().await {
            Ok(k) => {
                state.last_failed = None;
                Ok(k)
            }
            Err(e) => {
                state.last_failed = Some(Instant::now());
                tracing::warn!(error = %e, "cannot refresh the provider's keys");
                match fetched {
                    Some(_) => Ok(keys),
                    None => Err(e),
                }
            }
        }
    }

    /// A token names key `kid` we do not have: fetch the set again, unless that was done in
    /// the last refetch interval.
    async fn refetch_for(&self, kid: &str) -> Result<Arc<KeySet>, JwtError> {
        let mut state = self.fetch.lock().await;
        let (keys, _) = self.snapshot();
        if keys.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) {
            return Ok(keys); // another task's refetch brought it
        }
        if state
            .last_forced
            .is_some_and(|t| t.elapsed() < self.refetch_interval)
        {
            return Ok(keys);
        }
        state.last_forced = Some(Instant::now());
        match self.fetch_keys().await {
            Ok(k) => Ok(k),
            Err(e) => {
                tracing::warn!(error = %e, "cannot refetch the provider's keys");
                Ok(keys)
            }
        }
    }

    fn snapshot(&self) -> (Arc<KeySet>, Option<Instant>) {
        match self.current.read() {
            Ok(c) => (c.keys.clone(), c.fetched),
            Err(_) => (Arc::default(), None),
        }
    }

    async fn jwks_error(&self, reason: &str) -> JwtError {
        let url = match self.metadata().await {
            Ok(m) => m.jwks_uri.clone(),
            Err(e) => return e,
        };
        JwtError::Jwks {
            url,
            reason: reason.to_owned(),
        }
    }

    async fn fetch_keys(&self) -> Result<Arc<KeySet>, JwtError> {
        let meta = self.metadata().await?;
        let url = meta.jwks_uri.clone();
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let doc = self.get_json(&url).await.map_err(|reason| JwtError::Jwks {
            url: url.clone(),
            reason,
        })?;
        let keys =
            Arc::new(KeySet::from_jwks(&doc).map_err(|reason| JwtError::Jwks { url, reason })?);
        if let Ok(mut c) = self.current.write() {
            c.keys = keys.clone();
            c.fetched = Some(Instant::now());
        }
        Ok(keys)
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let http = self
            .http
            .as_ref()
            .map_err(|e| format!("no HTTP client: {e}"))?;
        let r = http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("{e}"))?;
        if !r.status().is_success() {
            return Err(format!("HTTP {}", r.status()));
        }
        if r.content_length().is_some_and(|n| n > MAX_DOCUMENT as u64) {
            return Err("document too large".into());
        }
        let body = r.bytes().await.map_err(|e| format!("{e}"))?;
        if body.len() > MAX_DOCUMENT {
            return Err("document too large".into());
        }
        serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;

    pub const ISS: &str = "https://idp.example";
    pub const AUD: &str = "https://hub.example/mcp";
    const NOW_MS: i64 = 1_800_000_000_000;
    const NOW_S: i64 = NOW_MS / 1000;

    /// A signing key of the test provider, with its public JWK.
    pub enum TestKey {
        Rsa(aws_lc_rs::rsa::KeyPair),
        Ec(EcdsaKeyPair),
    }

    impl TestKey {
        pub fn rsa() -> Self {
            TestKey::Rsa(
                aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
            )
        }

        pub fn ec() -> Self {
            TestKey::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            )
        }

        pub fn jwk(&self, kid: &str) -> Value {
            match self {
                TestKey::Rsa(k) => {
                    let p = k.public_key();
                    json!({"kty": "RSA", "kid": kid, "use": "sig",
                        "n": URL_SAFE_NO_PAD.encode(p.modulus().big_endian_without_leading_zero()),
                        "e": URL_SAFE_NO_PAD.encode(p.exponent().big_endian_without_leading_zero())})
                }
                TestKey::Ec(k) => {
                    let point = k.public_key().as_ref();
                    json!({"kty": "EC", "kid": kid, "crv": "P-256",
                        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                        "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
                }
            }
        }

        /// RS256 or ES256, as fits the key.
        pub fn alg(&self) -> &'static str {
            match self {
                TestKey::Rsa(_) => "RS256",
                TestKey::Ec(_) => "ES256",
            }
        }

        pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
            let rng = SystemRandom::new();
            match self {
                TestKey::Rsa(k) => {
                    let mut sig = vec![0; k.public_modulus_len()];
                    k.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                        .unwrap();
                    sig
                }
                TestKey::Ec(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            }
        }

        /// A token with this key's algorithm, signed by it.
        pub fn token(&self, kid: &str, claims: &Value) -> String {
            jws(
                &json!({"alg": self.alg(), "kid": kid, "typ": "JWT"}),
                claims,
                |m| self.sign(m),
            )
        }
    }

    /// A compact JWS with any header, signed by `sign` over `header.payload`.
    pub fn jws(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = sign(msg.as_bytes());
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn claims() -> Value {
        json!({"iss": ISS, "aud": AUD, "sub": "u1", "exp": NOW_S + 300, "iat": NOW_S,
            "preferred_username": "alice"})
    }

    fn with(mut base: Value, key: &str, v: Value) -> Value {
        base[key] = v;
        base
    }

    fn keyset(keys: &[Value]) -> KeySet {
        KeySet::from_jwks(&json!({ "keys": keys })).unwrap()
    }

    fn check(keys: &KeySet, token: &str) -> Result<Claims, JwtError> {
        verify_with_keys(keys, token, ISS, &[AUD], NOW_MS)
    }

    #[test]
    fn rs256_and_es256_tokens_verify() {
        let (r, e) = (TestKey::rsa(), TestKey::ec());
        let keys = keyset(&[r.jwk("r1"), e.jwk("e1")]);
        let c = check(&keys, &r.token("r1", &claims())).unwrap();
        assert_eq!(c.str("preferred_username"), Some("alice"));
        assert_eq!(c.expires_ms(), Some((NOW_S + 300) * 1000));
        check(&keys, &e.token("e1", &claims())).unwrap();
        // An aud array holding our audience among others is fine too.
        let multi = with(claims(), "aud", json!(["other", AUD]));
        check(&keys, &r.token("r1", &multi)).unwrap();
    }

    #[test]
    fn alg_none_is_refused() {
        let r = TestKey::rsa();
        let keys = keyset(&[r.jwk("r1")]);
        for alg in ["none", "None", "NONE"] {
            let t = jws(&json!({"alg": alg, "kid": "r1"}), &claims(), |_| Vec::new());
            let e = check(&keys, &t).unwrap_err();
            assert!(matches!(e, JwtError::ForbiddenAlgorithm(_)), "{alg}: {e}");
        }
        // And with the signature part dropped altogether.
        let t = jws(&json!({"alg": "none"}), &claims(), |_| Vec::new());
        let unsigned = t.trim_end_matches('.');
        assert!(check(&keys, unsigned).is_err());
    }

    #[test]
    fn hmac_signed_with_the_public_key_is_refused() {
        let r = TestKey::rsa();
        let jwk = r.jwk("r1");
        let keys = keyset(std::slice::from_ref(&jwk));
        // The attacker knows the public key; every plausible encoding of it as an HMAC secret.
        let TestKey::Rsa(kp) = &r else { unreachable!() };
        let secrets: Vec<Vec<u8>> = vec![
            kp.public_key().as_ref().to_vec(),
            jwk.to_string().into_bytes(),
            kp.public_key()
                .modulus()
                .big_endian_without_leading_zero()
                .to_vec(),
        ];
        for alg in ["HS256", "HS384", "HS512"] {
            for secret in &secrets {
                let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
                let t = jws(&json!({"alg": alg, "kid": "r1"}), &claims(), |m| {
                    aws_lc_rs::hmac::sign(&key, m).as_ref().to_vec()
                });
                let e = check(&keys, &t).unwrap_err();
                assert!(matches!(e, JwtError::ForbiddenAlgorithm(_)), "{alg}: {e}");
            }
        }
        // A symmetric key published in the set is never used either.
        let oct = json!({"kty": "oct", "kid": "s1", "k": URL_SAFE_NO_PAD.encode(b"secret")});
        assert!(keyset(&[oct]).is_empty());
    }

    #[test]
    fn algorithm_must_fit_the_key() {
        let (r, e) = (TestKey::rsa(), TestKey::ec());
        let keys = keyset(&[r.jwk("r1"), e.jwk("e1")]);
        // An ES256 header pointing at the RSA key, and RS256 at the EC key.
        let t = jws(&json!({"alg": "ES256", "kid": "r1"}), &claims(), |m| {
            e.sign(m)
        });
        assert!(matches!(
            check(&keys, &t),
            Err(JwtError::KeyMismatch { .. })
        ));
        let t = jws(&json!({"alg": "RS256", "kid": "e1"}), &claims(), |m| {
            r.sign(m)
        });
        assert!(matches!(
            check(&keys, &t),
            Err(JwtError::KeyMismatch { .. })
        ));
        // A key pinned to RS256 does not verify PS256, whatever the signature.
        let pinned = keyset(&[with(r.jwk("r1"), "alg", json!("RS256"))]);
        let t = jws(&json!({"alg": "PS256", "kid": "r1"}), &claims(), |m| {
            r.sign(m)
        });
        assert!(matches!(
            check(&pinned, &t),
            Err(JwtError::KeyMismatch { .. })
        ));
        // Encryption keys are not verification keys.
        let enc = keyset(&[with(r.jwk("r1"), "use", json!("enc"))]);
        assert!(enc.is_empty());
    }

    #[test]
    fn issuer_must_match_exactly() {
        let r = TestKey::rsa();
        let keys = keyset(&[r.jwk("r1")]);
        for iss in [
            "https://evil.example",
            "https://idp.example/",
            "HTTPS://IDP.EXAMPLE",
        ] {
            let t = r.token("r1", &with(claims(), "iss", json!(iss)));
            assert!(
                matches!(check(&keys, &t), Err(JwtError::WrongIssuer { .. })),
                "{iss}"
            );
        }
        let mut c = claims();
        c.as_object_mut().unwrap().remove("iss");
        let e = check(&keys, &r.token("r1", &c)).unwrap_err();
        assert!(matches!(e, JwtError::MissingClaim("iss")), "{e}");
    }

    #[test]
    fn audience_must_include_ours() {
        let r = TestKey::rsa();
        let keys = keyset(&[r.jwk("r1")]);
        for aud in [
            json!("https://other.example/mcp"),
            json!(["a", "b"]),
            json!([]),
        ] {
            let t = r.token("r1", &with(claims(), "aud", aud.clone()));
            assert!(
                matches!(check(&keys, &t), Err(JwtError::WrongAudience { .. })),
                "{aud}"
            );
        }
        let mut c = claims();
        c.as_object_mut().unwrap().remove("aud");
        let e = check(&keys, &r.token("r1", &c)).unwrap_err();
        assert!(matches!(e, JwtError::WrongAudience { .. }), "{e}");
    }

    #[test]
    fn expiry_and_not_before_with_leeway() {
        let r = TestKey::rsa();
        let keys = keyset(&[r.jwk("r1")]);
        let exp = |s: i64| r.token("r1", &with(claims(), "exp", json!(s)));
        assert!(matches!(
            check(&keys, &exp(NOW_S - 61)),
            Err(JwtError::Expired)
        ));
        check(&keys, &exp(NOW_S - 30)).unwrap(); // within the leeway
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(matches!(
            check(&keys, &r.token("r1", &c)),
            Err(JwtError::MissingClaim("exp"))
        ));
        let nbf = |s: i64| r.token("r1", &with(claims(), "nbf", json!(s)));
        assert!(matches!(
            check(&keys, &nbf(NOW_S + 120)),
            Err(JwtError::NotYetValid)
        ));
        check(&keys, &nbf(NOW_S + 30)).unwrap();
    }

    #[test]
    fn unknown_kid_and_bad_signatures() {
        let (r, other) = (TestKey::rsa(), TestKey::rsa());
        let keys = keyset(&[r.jwk("r1")]);
        let e = check(&keys, &r.token("r9", &claims())).unwrap_err();
        assert!(
            matches!(e, JwtError::UnknownKey(Some(ref k)) if k == "r9"),
            "{e}"
        );
        // Another key claiming our key's id.
        let e = check(&keys, &other.token("r1", &claims())).unwrap_err();
        assert!(matches!(e, JwtError::BadSignature), "{e}");
        // A payload changed after signing.
        let t = r.token("r1", &claims());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(with(claims(), "sub", json!("admin")).to_string());
        let t = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert!(matches!(check(&keys, &t), Err(JwtError::BadSignature)));
        // Not a JWS at all, and a JWE-shaped five-part token.
        assert!(matches!(check(&keys, "abc"), Err(JwtError::Malformed(_))));
        assert!(matches!(
            check(&keys, "a.b.c.d.e"),
            Err(JwtError::Malformed(_))
        ));
        // Critical extensions we do not know.
        let t = jws(
            &json!({"alg": "RS256", "kid": "r1", "crit": ["exp"]}),
            &claims(),
            |m| r.sign(m),
        );
        assert!(matches!(check(&keys, &t), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn no_kid_uses_the_only_fitting_key() {
        let (r, r2) = (TestKey::rsa(), TestKey::rsa());
        let t = jws(&json!({"alg": "RS256"}), &claims(), |m| r.sign(m));
        check(&keyset(&[r.jwk("r1")]), &t).unwrap();
        let e = check(&keyset(&[r.jwk("r1"), r2.jwk("r2")]), &t).unwrap_err();
        assert!(matches!(e, JwtError::UnknownKey(None)), "{e}");
    }

    /// A provider serving discovery and a JWKS that the test can change.
    struct FakeIdp {
        issuer: String,
        jwks: Arc<std::sync::Mutex<Value>>,
    }

    async fn fake_idp(issuer_override: Option<&str>) -> FakeIdp {
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let jwks = Arc::new(std::sync::Mutex::new(json!({"keys": []})));
        let doc = json!({
            "issuer": issuer_override.unwrap_or(&base),
            "authorization_endpoint": format!("{base}/auth"),
            "token_endpoint": format!("{base}/token"),
            "jwks_uri": format!("{base}/jwks"),
        });
        let served = jwks.clone();
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(doc) }),
            )
            .route(
                "/jwks",
                get(move || async move { axum::Json(served.lock().unwrap().clone()) }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeIdp { issuer: base, jwks }
    }

    fn claims_for(issuer: &str) -> Value {
        let now = lodge_core::time::now_ms() / 1000;
        json!({"iss": issuer, "aud": AUD, "exp": now + 300})
    }

    #[tokio::test]
    async fn discovery_refuses_a_document_for_another_issuer() {
        let idp = fake_idp(Some("https://impostor.example")).await;
        let p = Provider::new(&idp.issuer);
        let e = p.metadata().await.unwrap_err();
        assert!(matches!(e, JwtError::Discovery { .. }), "{e}");
        assert!(e.to_string().contains("impostor"), "{e}");
    }

    #[tokio::test]
    async fn rotation_is_picked_up_with_one_refetch_and_refetches_are_limited() {
        let idp = fake_idp(None).await;
        let (old, new) = (TestKey::rsa(), TestKey::ec());
        *idp.jwks.lock().unwrap() = json!({"keys": [old.jwk("k1")]});
        let p = Provider::new(&idp.issuer);
        let meta = p.metadata().await.unwrap();
        assert!(meta.jwks_uri.ends_with("/jwks"));
        let now = lodge_core::time::now_ms();
        let c = claims_for(&idp.issuer);
        p.verify(&old.token("k1", &c), &idp.issuer, &[AUD], now)
            .await
            .unwrap();
        assert_eq!(p.key_fetches(), 1);
        // The provider rotates: a token signed with the new key verifies after one refetch.
        *idp.jwks.lock().unwrap() = json!({"keys": [new.jwk("k2")]});
        p.verify(&new.token("k2", &c), &idp.issuer, &[AUD], now)
            .await
            .unwrap();
        assert_eq!(p.key_fetches(), 2);
        // Made-up key ids within the refetch interval: refused without asking the provider.
        for kid in ["x1", "x2", "x3"] {
            let e = p
                .verify(&new.token(kid, &c), &idp.issuer, &[AUD], now)
                .await
                .unwrap_err();
            assert!(matches!(e, JwtError::UnknownKey(_)), "{e}");
        }
        assert_eq!(p.key_fetches(), 2);
        // The retired key is gone from the set.
        let e = p
            .verify(&old.token("k1", &c), &idp.issuer, &[AUD], now)
            .await
            .unwrap_err();
        assert!(matches!(e, JwtError::UnknownKey(_)), "{e}");
    }
}
