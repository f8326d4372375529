//! DNS-rebinding and cross-origin protection, as the MCP transport spec requires: the `Host`
//! header must name this hub, and a browser `Origin`, when present, must be the hub's own (the
//! Host the request was sent to, or `public_url`) or configured. Runs before authentication on
//! every route; the OAuth endpoints that act on no cookie (discovery, token, registration,
//! revocation) take any origin, as browser-based MCP clients call them.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lodge_core::config::ServerConfig;
use std::sync::Arc;

pub struct HostGuard {
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl HostGuard {
    /// Loopback names are accepted on any port when bound to loopback; otherwise only the
    /// configured hosts (and the public URL's host).
    pub fn new(cfg: &ServerConfig, bound: std::net::SocketAddr) -> Self {
        let mut hosts: Vec<String> = cfg
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if bound.ip().is_loopback() || bound.ip().is_unspecified() {
            hosts.extend(["localhost", "127.0.0.1", "[::1]"].map(String::from));
        }
        let mut origins: Vec<String> = cfg
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        if let Some(url) = &cfg.public_url {
            let url = url.trim_end_matches('/').to_ascii_lowercase();
            if let Some(authority) = url
                .split("://")
                .nth(1)
                .map(|r| r.split('/').next().unwrap_or(r))
            {
                hosts.push(authority.to_owned());
                if let Some((scheme, _)) = url.split_once("://") {
                    origins.push(format!("{scheme}://{authority}"));
                }
            }
        }
        Self { hosts, origins }
    }

    fn host_ok(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let bare = strip_port(&host);
        self.hosts.iter().any(|h| *h == host || *h == bare)
    }

    /// Is `origin` allowed for a request sent to `host` (already found to be ours)? A page
    /// the hub serves itself (same host and port) is; others only when configured.
    fn origin_ok(&self, origin: &str, host: &str) -> bool {
        let o = origin.trim_end_matches('/').to_ascii_lowercase();
        self.origins.contains(&o) || same_origin(&o, &host.to_ascii_lowercase())
    }
}

/// Does `origin` (`scheme://host[:port]`, lowercase) name the authority `host` (the Host
/// header, lowercase)? The port must agree, an absent one standing for its scheme's default.
/// The scheme cannot be checked against a Host header, and need not be: one port serves one
/// scheme, so the same host and port is the same origin.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |a: &str| -> Option<(String, String)> {
        let bare = strip_port(a);
        let port = match &a[bare.len()..] {
            "" => default.to_owned(),
            p => p.strip_prefix(':')?.to_owned(),
        };
        (!bare.is_empty()).then(|| (bare.to_owned(), port))
    };
    match (with_port(authority), with_port(host)) {
        (Some(o), Some(h)) => o == h,
        _ => false,
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map(|i| &host[..=i]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

pub async fn check(State(g): State<Arc<HostGuard>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let host = match host {
        Some(h) if g.host_ok(h) => h,
        Some(h) => {
            let shown: String = h.chars().take(80).collect();
            return ApiError::Forbidden(format!(
                "Host {shown:?} is not served here: add it to server.allowed_hosts (DNS-rebinding protection)"
            ))
            .into_response();
        }
        None => return ApiError::BadRequest("missing Host header".into()).into_response(),
    };
    // The OAuth endpoints that act on no cookie answer any origin (browser-based MCP clients).
    if let Some(origin) = headers.get(http::header::ORIGIN)
        && !crate::oauth::cross_origin_ok(req.uri().path())
    {
        let ok = origin.to_str().is_ok_and(|o| g.origin_ok(o, host));
        if !ok {
            return ApiError::Forbidden(
                "Origin not allowed: add it to server.allowed_origins to let this browser origin call the hub".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_defaults() {
        let g = HostGuard::new(&ServerConfig::default(), "127.0.0.1:8765".parse().unwrap());
        assert!(g.host_ok("127.0.0.1:8765"));
        assert!(g.host_ok("localhost:1"));
        assert!(g.host_ok("[::1]:8765"));
        assert!(!g.host_ok("evil.example:8765"));
        assert!(!g.host_ok("127.0.0.1.evil.example"));
        assert!(!g.origin_ok("http://evil.example", "127.0.0.1:8765"));
    }

    #[test]
    fn the_hubs_own_origin_is_allowed_and_no_other() {
        let g = HostGuard::new(&ServerConfig::default(), "127.0.0.1:8765".parse().unwrap());
        let host = "localhost:8765";
        assert!(g.origin_ok("http://localhost:8765", host));
        assert!(g.origin_ok("HTTP://LOCALHOST:8765/", host));
        assert!(g.origin_ok("https://localhost:8765", host));
        for other in [
            "http://localhost:8766",
            "http://localhost",
            "http://127.0.0.1:8765",
            "http://evil.example:8765",
            "http://localhost:8765.evil.example",
            "file://localhost:8765",
            "null",
            "localhost:8765",
        ] {
            assert!(!g.origin_ok(other, host), "{other}");
        }
        // Default ports: a Host without one is port 80 for http, 443 for https.
        assert!(g.origin_ok("http://localhost", "localhost"));
        assert!(g.origin_ok("http://localhost:80", "localhost"));
        assert!(g.origin_ok("https://localhost", "localhost:443"));
        assert!(!g.origin_ok("https://localhost", "localhost:80"));
        assert!(g.origin_ok("http://[::1]:8765", "[::1]:8765"));
        assert!(!g.origin_ok("http://[::1]:8765", "[::2]:8765"));
    }

    #[test]
    fn configured_hosts_and_origins() {
        let cfg = ServerConfig {
            allowed_hosts: vec!["hub.example".into()],
            allowed_origins: vec!["https://app.example/".into()],
            public_url: Some("https://lodge.example/".into()),
            ..Default::default()
        };
        let g = HostGuard::new(&cfg, "10.0.0.1:8765".parse().unwrap());
        assert!(g.host_ok("hub.example"));
        assert!(g.host_ok("hub.example:443"));
        assert!(g.host_ok("lodge.example"));
        assert!(!g.host_ok("localhost"));
        assert!(g.origin_ok("https://app.example", "hub.example"));
        assert!(g.origin_ok("https://lodge.example", "hub.example"));
        assert!(!g.origin_ok("https://app.example.evil", "hub.example"));
    }
}
