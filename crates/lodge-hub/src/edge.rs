//! The hub's HTTP edge: accepts connections, caps them (in total and per client address),
//! closes those that idle or send their headers too slowly, and tells handlers who the client
//! is (believing `X-Forwarded-For` from trusted proxies only). With TLS, the handshake happens
//! inside the connection caps and within `server.header_read_timeout`. It decides nothing about
//! requests.

use crate::http_util::ClientAddr;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use lodge_core::config::ServerConfig;
use lodge_core::net::IpNet;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

/// What a connection refused for a cap is told before it is closed.
fn refusal() -> Vec<u8> {
    let body = r#"{"error":{"code":"unavailable","message":"too many connections from this address, or in all: retry later (server.max_connections_per_address, server.max_connections)"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Settings of the edge, from `[server]`.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub trusted_proxies: Arc<[IpNet]>,
    /// Serve HTTPS with this configuration (its certificate resolver may change underneath).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl EdgeConfig {
    /// `[server]`'s settings; `max_connections` is held to `fd_budget` (descriptors the hub
    /// may spend on connections).
    pub fn new(c: &ServerConfig, fd_budget: Option<u64>) -> Self {
        let mut max_connections = c.max_connections as usize;
        if let Some(budget) = fd_budget.map(|b| b as usize)
            && budget < max_connections
        {
            tracing::info!(
                configured = max_connections,
                allowed = budget,
                "connections capped at half the open-file limit (the rest is for rooms and the \
                 store); raise the hard RLIMIT_NOFILE (systemd: LimitNOFILE=) for more"
            );
            max_connections = budget.max(1);
        }
        Self {
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            max_connections,
            max_connections_per_address: c.max_connections_per_address as usize,
            trusted_proxies: c.trusted_proxies.clone().into(),
            tls: None,
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(ip))
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in progress
/// finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: EdgeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let config = Arc::new(config);
    let counts = Arc::new(Counts::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's own header timer runs from when it starts waiting for a request until the head is
    // complete, so it bounds an idle connection; `HeadClock` bounds the head itself.
    http.timer(TokioTimer::new())
        .header_read_timeout(config.idle_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let peer_ip = peer.ip().to_canonical();
        let per_address = !config.trusted(peer_ip);
        let Some(permit) = counts.admit(address_key(peer_ip), per_address, &config) else {
            // Never wait on a refused client: one try to say why, then close.
            let _ = stream.try_write(&refusal());
            ::metrics::counter!("lodge_connections_refused_total").increment(1);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let busy = Arc::new(AtomicBool::new(false));
        let head_limit = config.header_read_timeout;
        let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let clock_busy = busy.clone();
        let (router, config) = (router.clone(), config.clone());
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            busy.store(true, Ordering::Relaxed);
            let idle = config.idle_timeout;
            let mut req = req.map(|body| axum::body::Body::new(StallLimit::new(body, idle)));
            let client = client_ip(peer_ip, req.headers(), &config);
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(ClientAddr(Some(client)));
            let answer = router.clone().oneshot(req);
            let busy = busy.clone();
            async move {
                let response = answer.await;
                busy.store(false, Ordering::Relaxed);
                response
            }
        });
        let (watcher, http) = (graceful.watcher(), http.clone());
        tokio::spawn(async move {
            let stream = match tls {
                None => Conn::Plain(stream),
                // A client that does not finish its handshake in time holds its place no longer
                // than one that does not finish its request head.
                Some(acceptor) => {
                    match tokio::time::timeout(head_limit, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => Conn::Tls(Box::new(s)),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            let io = HeadClock::new(stream, clock_busy, head_limit);
            // Errors here are the client's doing (it went away, or timed out): nothing to log.
            let _ = watcher
                .watch(http.serve_connection(TokioIo::new(io), service))
                .await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// An accept that failed: a client that left is nothing; anything else (out of descriptors)
/// is logged and waited out briefly, so the loop does not spin.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept a connection");
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// The client of a request: the peer, or for a peer that is a trusted proxy the right-most
/// address of `X-Forwarded-For` that is not a trusted proxy itself. An entry that does not
/// parse ends the walk: what lies left of it was not written by anyone trusted, so the hop
/// that passed it on counts as the client.
pub fn client_ip(peer: IpAddr, headers: &http::HeaderMap, config: &EdgeConfig) -> IpAddr {
    if !config.trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop.trim()) else {
            return client;
        };
        client = ip;
        if !config.trusted(ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// What the per-address cap counts by: an IPv4 address, or an IPv6 /64 (one host usually has a
/// whole /64, so counting single IPv6 addresses would give it billions of places).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

/// A request body that fails when no part of it arrives for `limit`: a client that sends its
/// headers and then stalls mid-body would otherwise hold its connection for ever (the header
/// clock has stopped, and a request in progress is never idle). The timer is only set up once
/// the body has to be waited for, so bodies that are already there cost nothing.
struct StallLimit {
    inner: Incoming,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl StallLimit {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: None,
        }
    }
}

impl http_body::Body for StallLimit {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = this.limit;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                        "the request body stalled for {limit:?} (server.idle_timeout)"
                    )
                    .into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Connections open, in all and per address.
#[derive(Default)]
struct Counts {
    inner: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it gives its place back.
struct Permit {
    counts: Arc<Counts>,
    ip: Option<IpAddr>,
}

impl Counts {
    /// A place for a connection from `ip`, if the caps allow one (`per_address`: whether the
    /// per-address cap applies to it).
    fn admit(self: &Arc<Self>, ip: IpAddr, per_address: bool, c: &EdgeConfig) -> Option<Permit> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_ip) = &mut *guard;
        if *total >= c.max_connections {
            return None;
        }
        if per_address {
            let n = by_ip.entry(ip).or_default();
            if *n >= c.max_connections_per_address {
                return None;
            }
            *n += 1;
        }
        *total += 1;
        Some(Permit {
            counts: self.clone(),
            ip: per_address.then_some(ip),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut guard = self.counts.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_ip) = &mut *guard;
        *total -= 1;
        if let Some(ip) = self.ip
            && let Some(n) = by_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&ip);
            }
        }
    }
}

/// A client connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection's socket that fails its reads once a request head has been arriving for longer
/// than `limit`: the clock starts at the first byte read while no request is being served and
/// stops when the service takes the request (`busy`). hyper then closes the connection.
struct HeadClock {
    io: Conn,
    busy: Arc<AtomicBool>,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
    armed: bool,
}

impl HeadClock {
    fn new(io: Conn, busy: Arc<AtomicBool>, limit: Duration) -> Self {
        Self {
            io,
            busy,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
            armed: false,
        }
    }
}

impl AsyncRead for HeadClock {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let busy = this.busy.load(Ordering::Relaxed);
        if busy {
            this.armed = false;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if !busy && !this.armed && buf.filled().len() > before {
                    this.armed = true;
                    let at = Instant::now() + this.limit;
                    this.deadline.as_mut().reset(at);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.armed && this.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request headers not complete within server.header_read_timeout",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for HeadClock {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Raises this process's soft open-file limit to its hard limit (a hub holds a descriptor per
/// connection and a few per room), and returns the limit now in force.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-file limit to its hard limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(trusted: &[&str]) -> EdgeConfig {
        let c = ServerConfig {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            ..Default::default()
        };
        EdgeConfig::new(&c, None)
    }

    fn xff(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let c = config(&["10.0.0.0/8"]);
        let h = xff(&["6.6.6.6, 203.0.113.7"]);
        // An untrusted peer's header is ignored, whatever it says.
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &c), ip("198.51.100.1"));
        // From a trusted proxy: the right-most address it did not add itself.
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &c), ip("203.0.113.7"));
        // Proxies in a chain are skipped; a client's forged entries left of them are not used.
        let chain = xff(&["6.6.6.6", "203.0.113.7, 10.0.0.9"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &chain, &c), ip("203.0.113.7"));
        // Without the header (or with only proxies in it) the last proxy is the client.
        assert_eq!(client_ip(ip("10.0.0.2"), &xff(&[]), &c), ip("10.0.0.2"));
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["10.0.0.3"]), &c),
            ip("10.0.0.3")
        );
        // Garbage ends the walk at the hop that passed it on.
        let junk = xff(&["203.0.113.7, junk, 10.0.0.9"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &junk, &c), ip("10.0.0.9"));
        // Ports and IPv4-mapped peers.
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.2"), &xff(&["[2001:db8::1]:443"]), &c),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["203.0.113.7:5555"]), &c),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(address_key(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2:ffff::9")),
            address_key(ip("2001:db8:1:2::1"))
        );
        assert_ne!(address_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn caps_count_per_address_and_in_total() {
        let mut c = config(&[]);
        c.max_connections = 3;
        c.max_connections_per_address = 2;
        let counts = Arc::new(Counts::default());
        let a = counts.admit(ip("127.0.0.1"), true, &c).unwrap();
        let _b = counts.admit(ip("127.0.0.1"), true, &c).unwrap();
        assert!(counts.admit(ip("127.0.0.1"), true, &c).is_none());
        let _other = counts.admit(ip("127.0.0.2"), true, &c).unwrap();
        assert!(
            counts.admit(ip("127.0.0.3"), false, &c).is_none(),
            "total cap"
        );
        drop(a);
        assert!(counts.admit(ip("127.0.0.1"), true, &c).is_some());
    }
}
