//! Client ID metadata documents: a `client_id` that is an https URL names a JSON document
//! describing the client, which the hub fetches. Anyone can make the hub fetch such a URL, so
//! the fetch is guarded against server-side request forgery: the hub resolves the name itself,
//! refuses loopback, private, link-local, shared (CGNAT), cloud metadata, unspecified and
//! multicast addresses (unless `allow_private_client_metadata`), then connects to exactly the
//! address it checked (no second lookup to rebind), follows no redirects and reads a few KB at
//! most. It fetches and validates; what a client may do is the authorization endpoint's call.

use super::register::{Client, check_metadata};
use lodge_core::config::OAuthConfig;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The whole exchange (connect, TLS, response) must finish in this time.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A document larger than this is refused: real ones are a few hundred bytes.
const MAX_DOCUMENT_BYTES: usize = 10 * 1024;
/// A fetched document is used this long before it is fetched again.
const CACHE_FOR: Duration = Duration::from_secs(300);
/// Documents kept at most; past it the cache starts over (it is only a cache).
const CACHE_ENTRIES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("not a URL: {0}")]
    BadUrl(String),
    #[error("a client ID metadata document must be served over https")]
    NotHttps,
    #[error("the URL must have a path and no fragment, credentials or dot segments")]
    BadShape,
    #[error("cannot resolve {host}: {message}")]
    Resolve { host: String, message: String },
    #[error(
        "{host} resolves to {addr}, a loopback, private, link-local or otherwise internal address; \
         the hub fetches documents only from public addresses (auth.oauth.allow_private_client_metadata)"
    )]
    PrivateAddress { host: String, addr: IpAddr },
    #[error("cannot read auth.oauth.extra_ca_file: {0}")]
    ExtraCa(String),
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("the server answered HTTP {0} (redirects are not followed)")]
    Status(u16),
    #[error("the document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("the document is not a JSON object")]
    NotJson,
    #[error("the document's client_id is {found:?}, not the URL it was fetched from")]
    IdMismatch { found: String },
    #[error("{0}")]
    Metadata(String),
}

/// Fetched documents by URL.
#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<String, (Instant, Client)>>,
}

impl Cache {
    /// The client the document at `url` describes, from the cache or freshly fetched.
    pub async fn get(&self, cfg: &OAuthConfig, url: &str) -> Result<Client, DocumentError> {
        let now = Instant::now();
        if let Some((at, c)) = self.entries.lock().ok().and_then(|e| e.get(url).cloned())
            && now.duration_since(at) < CACHE_FOR
        {
            return Ok(c);
        }
        let client = fetch(cfg, url).await?;
        if let Ok(mut e) = self.entries.lock() {
            if e.len() >= CACHE_ENTRIES {
                e.clear();
            }
            e.insert(url.to_owned(), (now, client.clone()));
        }
        Ok(client)
    }

    pub fn sweep(&self, now: Instant) {
        if let Ok(mut e) = self.entries.lock() {
            e.retain(|_, (at, _)| now.duration_since(*at) < CACHE_FOR);
        }
    }
}

/// May the hub connect to `ip` to fetch a document? Public unicast addresses only.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_public_v4(a),
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = a.segments();
            // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let [a, b, c, d] = [s[6] >> 8, s[6] & 0xff, s[7] >> 8, s[7] & 0xff];
                return is_public_v4(Ipv4Addr::new(a as u8, b as u8, c as u8, d as u8));
            }
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local, fd00:ec2::254 among them
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

fn is_public_v4(a: Ipv4Addr) -> bool {
    let [o1, o2, _, _] = a.octets();
    !(a.is_loopback()
        || a.is_private()
        || a.is_link_local() // 169.254/16, the cloud metadata address among them
        || a.is_unspecified()
        || a.is_multicast()
        || a.is_broadcast()
        || o1 == 0
        || (o1 == 100 && (64..128).contains(&o2)) // shared address space (CGNAT)
        || (o1 == 192 && o2 == 0) // IETF protocol assignments, documentation
        || (o1 == 198 && (18..20).contains(&o2)) // benchmarking
        || o1 >= 240)
}

async fn fetch(cfg: &OAuthConfig, raw: &str) -> Result<Client, DocumentError> {
    let url = url::Url::parse(raw).map_err(|e| DocumentError::BadUrl(e.to_string()))?;
    if url.scheme() != "https" {
        return Err(DocumentError::NotHttps);
    }
    if url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.path() == "/"
        || raw.contains("/./")
        || raw.contains("/../")
    {
        return Err(DocumentError::BadShape);
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let (domain, addr) = match url.host() {
        Some(url::Host::Domain(d)) => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((d, port))
                .await
                .map_err(|e| DocumentError::Resolve {
                    host: d.to_owned(),
                    message: e.to_string(),
                })?
                .collect();
            // Every address must pass: the hub picks one, and checks them all so no answer
            // order can slip an internal one in.
            let first = *addrs.first().ok_or_else(|| DocumentError::Resolve {
                host: d.to_owned(),
                message: "no addresses".into(),
            })?;
            if !cfg.allow_private_client_metadata
                && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip()))
            {
                return Err(DocumentError::PrivateAddress {
                    host: d.to_owned(),
                    addr: bad.ip(),
                });
            }
            (Some(d.to_owned()), first)
        }
        Some(url::Host::Ipv4(a)) => (None, SocketAddr::new(IpAddr::V4(a), port)),
        Some(url::Host::Ipv6(a)) => (None, SocketAddr::new(IpAddr::V6(a), port)),
        None => return Err(DocumentError::BadShape),
    };
    if !cfg.allow_private_client_metadata && !is_public(addr.ip()) {
        return Err(DocumentError::PrivateAddress {
            host: url.host_str().unwrap_or_default().to_owned(),
            addr: addr.ip(),
        });
    }
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .https_only(true)
        // A proxy would make its own lookup: the checked address would not be the one used.
        .no_proxy();
    if let Some(d) = &domain {
        builder = builder.resolve(d, addr);
    }
    if let Some(path) = &cfg.extra_ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| DocumentError::ExtraCa(format!("{}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| DocumentError::ExtraCa(format!("{}: {e}", path.display())))?;
        builder = builder.tls_certs_merge(certs);
    }
    let http = builder
        .build()
        .map_err(|e| DocumentError::Fetch(e.to_string()))?;
    let mut resp = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| DocumentError::Fetch(error_chain(&e)))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(DocumentError::Status(resp.status().as_u16()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(DocumentError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| DocumentError::Fetch(error_chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(DocumentError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| DocumentError::NotJson)?;
    if !doc.is_object() {
        return Err(DocumentError::NotJson);
    }
    let found = doc
        .get("client_id")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if found != raw {
        return Err(DocumentError::IdMismatch {
            found: found.chars().take(200).collect(),
        });
    }
    let (redirect_uris, name) =
        check_metadata(&doc).map_err(|(_, d)| DocumentError::Metadata(d))?;
    Ok(Client {
        id: raw.to_owned(),
        name: name.unwrap_or_else(|| url.host_str().unwrap_or("client").to_owned()),
        redirect_uris,
    })
}

/// An error with its causes ("error sending request: … : certificate not trusted").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a} passed as public");
        }
        for a in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(is_public(a.parse().unwrap()), "{a} refused");
        }
    }

    #[tokio::test]
    async fn plain_http_and_private_addresses_are_refused_before_any_connection() {
        let cfg = OAuthConfig::default();
        let e = fetch(&cfg, "http://example.com/client.json").await;
        assert!(matches!(e, Err(DocumentError::NotHttps)), "{e:?}");
        let e = fetch(&cfg, "https://127.0.0.1:9/client.json").await;
        assert!(
            matches!(e, Err(DocumentError::PrivateAddress { .. })),
            "{e:?}"
        );
        let e = fetch(&cfg, "https://[fd00:ec2::254]/client.json").await;
        assert!(
            matches!(e, Err(DocumentError::PrivateAddress { .. })),
            "{e:?}"
        );
        let e = fetch(&cfg, "https://localhost:9/client.json").await;
        assert!(
            matches!(e, Err(DocumentError::PrivateAddress { .. })),
            "{e:?}"
        );
    }
}
