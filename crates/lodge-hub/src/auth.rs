//! Authentication: turns an `Authorization` header into a [`Principal`], or a 401/429.
//!
//! Tokens are looked up by their public id and their SHA-256 compared in constant time. Verified
//! tokens are cached for `auth.token_cache` so the hot path does no I/O; failed attempts are
//! limited per client address (a token bucket: `auth.failed_auth_per_minute` at once, refilled
//! over a minute). With `[auth.oidc] accept_access_tokens`, a bearer that is a JWT is verified
//! against the provider instead (crate::jwt) and maps to an existing Lodge user; its failures
//! count like bad Lodge tokens. This module decides who is calling, not what they may do.

use crate::audit::Auditor;
use crate::error::ApiError;
use crate::jwt::{self, JwtError, Provider};
use crate::limit::{Buckets, Rate, retry_after_s};
use lodge_core::time::now_ms;
use lodge_core::{Scopes, TokenHash, UserName, token};
use lodge_store::Store;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub struct Principal {
    pub token_id: String,
    pub user_id: i64,
    pub user: UserName,
    pub admin: bool,
    pub profile: String,
    pub scopes: Scopes,
    /// When the presented token expires (None: never); a token it mints may not outlive it.
    pub expires_ms: Option<i64>,
    /// The MCP endpoint URL an OAuth access token is bound to (its audience); None: a token
    /// minted by a person, good wherever its scopes are.
    pub resource: Option<String>,
}

struct Cached {
    principal: Principal,
    expires_ms: Option<i64>,
    verified_ms: i64,
    last_used_ms: AtomicI64,
    flushed_ms: AtomicI64,
}

pub struct Authenticator {
    store: Arc<dyn Store>,
    audit: Auditor,
    ttl_ms: i64,
    failure_rate: Rate,
    cache: RwLock<HashMap<TokenHash, Arc<Cached>>>,
    failures: Buckets<IpAddr>,
    /// The provider's access tokens, when `accept_access_tokens` is on.
    provider_tokens: Option<ProviderTokens>,
}

/// How provider JWTs become principals.
struct ProviderTokens {
    provider: Arc<Provider>,
    /// `[auth.oidc]`, whose username rule (claim, normalisation) names the user.
    oidc: lodge_core::config::OidcConfig,
    /// The hub's base URL, known once the router is built; the audiences derive from it.
    base_url: std::sync::OnceLock<String>,
    /// Verified JWTs by hash, until they expire: the signature is checked once per token.
    cache: RwLock<HashMap<TokenHash, Arc<JwtCached>>>,
}

struct JwtCached {
    user: UserName,
    expires_ms: i64,
    /// The user as last read from the store, re-read every `auth.token_cache` (a removed user
    /// or a changed role takes effect as for Lodge tokens).
    checked: std::sync::Mutex<Option<(Principal, i64)>>,
}

impl Authenticator {
    pub fn new(
        store: Arc<dyn Store>,
        audit: Auditor,
        ttl: Duration,
        failures_per_minute: u32,
    ) -> Self {
        Self {
            store,
            audit,
            ttl_ms: ttl.as_millis() as i64,
            failure_rate: Rate::per_minute(failures_per_minute),
            cache: RwLock::new(HashMap::new()),
            failures: Buckets::default(),
            provider_tokens: None,
        }
    }

    /// Also accepts the provider's JWT access tokens (`[auth.oidc] accept_access_tokens`).
    pub fn accept_provider_tokens(
        mut self,
        provider: Arc<Provider>,
        oidc: &lodge_core::config::OidcConfig,
    ) -> Self {
        self.provider_tokens = Some(ProviderTokens {
            provider,
            oidc: oidc.clone(),
            base_url: Default::default(),
            cache: RwLock::new(HashMap::new()),
        });
        self
    }

    /// The hub's base URL, from which the accepted JWT audiences derive (`BASE/mcp`).
    pub fn set_base_url(&self, base: &str) {
        if let Some(p) = &self.provider_tokens {
            let _ = p.base_url.set(base.trim_end_matches('/').to_owned());
        }
    }

    /// Verifies the `Authorization` header value (`Bearer T` or `token T`).
    pub async fn authenticate(
        &self,
        header: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Principal, ApiError> {
        let now = now_ms();
        let presented = header.map(parse_authorization);
        let parsed = presented.flatten().and_then(token::parse);
        if let (Some(Some(t)), None, Some(p)) = (presented, parsed, &self.provider_tokens)
            && jwt::looks_like_jwt(t)
        {
            return self.authenticate_jwt(p, t, client, now).await;
        }
        let cached = parsed.and_then(|(_, hash)| self.cache_get(&hash));
        // Over-budget clients are refused before any lookup or audit write, whatever they send,
        // unless they present a token this hub already verified.
        if cached.is_none() {
            self.check_rate(client)?;
        }
        let (id, hash) = match (presented, parsed) {
            (None, _) => {
                let e = self.fail(client, "missing credentials", None).await;
                return Err(ApiError::NoCredentials(e.to_string()));
            }
            (Some(None), _) => {
                return Err(self
                    .fail(client, "malformed Authorization header", None)
                    .await);
            }
            (Some(Some(_)), None) => {
                return Err(self.fail(client, "not a Lodge token", None).await);
            }
            (Some(Some(_)), Some(p)) => p,
        };
        let entry = match cached {
            Some(c) if now - c.verified_ms < self.ttl_ms => c,
            _ => match self.verify(id, &hash, now).await? {
                Some(c) => c,
                None => {
                    self.cache_remove(&hash);
                    return Err(self
                        .fail(client, "unknown or revoked token", Some(id))
                        .await);
                }
            },
        };
        if entry.expires_ms.is_some_and(|e| e <= now) {
            return Err(self.fail(client, "token expired", Some(id)).await);
        }
        entry.last_used_ms.store(now, Ordering::Relaxed);
        Ok(entry.principal.clone())
    }

    /// A provider access token: verified once (signature, `iss`, `aud`, `exp`), then cached by
    /// hash until it expires; the user it names must exist in Lodge (never created here).
    async fn authenticate_jwt(
        &self,
        p: &ProviderTokens,
        token: &str,
        client: Option<IpAddr>,
        now: i64,
    ) -> Result<Principal, ApiError> {
        let hash = TokenHash::of(token);
        let cached = p
            .cache
            .read()
            .ok()
            .and_then(|c| c.get(&hash).cloned())
            .filter(|e| now < e.expires_ms);
        let entry = match cached {
            Some(e) => e,
            None => {
                self.check_rate(client)?;
                match self.verify_jwt(p, token, now).await {
                    Ok(e) => {
                        if let Ok(mut c) = p.cache.write() {
                            c.insert(hash, e.clone());
                        }
                        e
                    }
                    Err(e) if e.is_provider_failure() => {
                        // Not the caller's fault: no failure is counted against their address.
                        tracing::warn!(error = %e, "cannot verify a provider access token");
                        return Err(ApiError::Unavailable(format!(
                            "cannot verify the access token with the identity provider: {e}"
                        )));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "provider access token refused");
                        return Err(self.fail(client, e.reason(), None).await);
                    }
                }
            }
        };
        let fresh = entry
            .checked
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .filter(|(_, at)| now - at < self.ttl_ms);
        if let Some((principal, _)) = fresh {
            return Ok(principal);
        }
        let Some(user) = self.store.user(&entry.user).await? else {
            if let Ok(mut c) = p.cache.write() {
                c.remove(&hash);
            }
            return Err(self.fail(client, "JWT user not in Lodge", None).await);
        };
        let scopes = Scopes::default_token();
        let principal = Principal {
            token_id: format!("jwt-{}", hex::encode(&hash.0[..6])),
            user_id: user.id,
            scopes: scopes.effective(&user.name, user.admin),
            user: user.name,
            admin: user.admin,
            profile: user.profile,
            expires_ms: Some(entry.expires_ms),
            // Its audience was checked to be one of this user's endpoints (`/mcp` or
            // `/user/NAME/mcp`), which count as one; with scope `mcp` only, nothing else opens.
            resource: None,
        };
        if let Ok(mut c) = entry.checked.lock() {
            *c = Some((principal.clone(), now));
        }
        Ok(principal)
    }

    async fn verify_jwt(
        &self,
        p: &ProviderTokens,
        token: &str,
        now: i64,
    ) -> Result<Arc<JwtCached>, JwtError> {
        let base = p.base_url.get().map(String::as_str).unwrap_or("");
        // The per-user endpoint names its user; which user comes from the (not yet verified)
        // claims, and is the one checked below once the signature holds.
        let named = jwt::unverified_claims(token)
            .and_then(|c| crate::signin::provision::username(&p.oidc, &c.raw).ok());
        let own = format!("{base}/mcp");
        let per_user = named.map(|n| format!("{base}/user/{n}/mcp"));
        let mut audiences = vec![own.as_str()];
        audiences.extend(per_user.as_deref());
        let claims = p
            .provider
            .verify(token, p.provider.issuer(), &audiences, now)
            .await?;
        // The same rule as browser sign-in, so a person is the same user either way.
        let user = crate::signin::provision::username(&p.oidc, &claims.raw)
            .map_err(|_| JwtError::MissingClaim("username_claim"))?;
        let expires_ms = claims.expires_ms().ok_or(JwtError::MissingClaim("exp"))?;
        Ok(Arc::new(JwtCached {
            user,
            expires_ms,
            checked: std::sync::Mutex::new(None),
        }))
    }

    async fn verify(
        &self,
        id: &str,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<Arc<Cached>>, ApiError> {
        let Some(row) = self.store.token_for_auth(id).await? else {
            return Ok(None);
        };
        if !hash.ct_eq(&row.hash) {
            return Ok(None);
        }
        let principal = Principal {
            token_id: row.id,
            user_id: row.user.id,
            scopes: row.scopes.effective(&row.user.name, row.user.admin),
            user: row.user.name,
            admin: row.user.admin,
            profile: row.user.profile,
            expires_ms: row.expires_ms,
            resource: row.resource,
        };
        let entry = Arc::new(Cached {
            principal,
            expires_ms: row.expires_ms,
            verified_ms: now,
            last_used_ms: AtomicI64::new(0),
            flushed_ms: AtomicI64::new(0),
        });
        if let Ok(mut c) = self.cache.write() {
            c.insert(*hash, entry.clone());
        }
        Ok(Some(entry))
    }

    fn cache_get(&self, hash: &TokenHash) -> Option<Arc<Cached>> {
        self.cache.read().ok()?.get(hash).cloned()
    }

    fn cache_remove(&self, hash: &TokenHash) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(hash);
        }
    }

    /// Forget cached verifications of one token (REST revocation) or of everything.
    pub fn invalidate(&self, token_id: Option<&str>) {
        if let Ok(mut c) = self.cache.write() {
            match token_id {
                Some(id) => c.retain(|_, v| v.principal.token_id != id),
                None => c.clear(),
            }
        }
        // Users changed: provider tokens re-read their user on next use.
        if token_id.is_none()
            && let Some(p) = &self.provider_tokens
            && let Ok(c) = p.cache.read()
        {
            for e in c.values() {
                if let Ok(mut checked) = e.checked.lock() {
                    *checked = None;
                }
            }
        }
    }

    /// Clients over their failure budget get 429 before any lookup, unless they present a
    /// token this hub has verified before (so a guesser cannot lock out a NAT's real users).
    fn check_rate(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(ip) = client else { return Ok(()) };
        self.failures
            .check(&ip, self.failure_rate, Instant::now())
            .map_err(|wait| {
                let retry_after_s = retry_after_s(wait);
                ApiError::TooManyRequests {
                    message: format!(
                        "too many failed authentications from {ip}; retry after {retry_after_s}s"
                    ),
                    retry_after_s,
                }
            })
    }

    async fn fail(&self, client: Option<IpAddr>, reason: &str, token_id: Option<&str>) -> ApiError {
        metrics::counter!("lodge_auth_failures_total", "reason" => reason.to_owned()).increment(1);
        if let Some(ip) = client {
            // An empty bucket stays empty: the failure needs no further counting.
            let _ = self.failures.take(ip, self.failure_rate, Instant::now());
        }
        self.audit.auth_failure(reason, token_id, client);
        ApiError::Unauthorized(format!(
            "{reason}: send 'Authorization: Bearer lodge_…' with a valid token (create one with 'lodge token create USER')"
        ))
    }

    /// Last-use times not yet written to the store.
    pub fn take_dirty_uses(&self) -> Vec<(String, i64)> {
        let Ok(c) = self.cache.read() else {
            return Vec::new();
        };
        c.values()
            .filter_map(|e| {
                let used = e.last_used_ms.load(Ordering::Relaxed);
                let flushed = e.flushed_ms.swap(used, Ordering::Relaxed);
                (used > flushed).then(|| (e.principal.token_id.clone(), used))
            })
            .collect()
    }

    /// Drops cache entries long unused, so the cache holds only tokens in active use.
    pub fn sweep(&self) {
        let now = now_ms();
        if let Ok(mut c) = self.cache.write() {
            c.retain(|_, e| {
                now - e.last_used_ms.load(Ordering::Relaxed).max(e.verified_ms) < 600_000
            });
        }
        self.failures.sweep(Instant::now());
        if let Some(p) = &self.provider_tokens
            && let Ok(mut c) = p.cache.write()
        {
            c.retain(|_, e| now < e.expires_ms);
        }
    }
}

/// `Bearer T` or `token T` (JupyterHub's form), case-insensitive scheme, one space or more.
fn parse_authorization(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let ok = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
    let t = rest.trim();
    (ok && !t.is_empty() && !t.contains(' ')).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::parse_authorization as p;

    #[test]
    fn authorization_forms() {
        assert_eq!(p("Bearer abc"), Some("abc"));
        assert_eq!(p("bearer  abc "), Some("abc"));
        assert_eq!(p("token abc"), Some("abc"));
        assert_eq!(p("Basic abc"), None);
        assert_eq!(p("Bearer"), None);
        assert_eq!(p("Bearer a b"), None);
        assert_eq!(p(""), None);
    }
}
