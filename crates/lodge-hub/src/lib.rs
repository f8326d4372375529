//! Lodge's control plane: the HTTP server, the MCP endpoint, authentication, sessions, the REST
//! API, metrics and the audit trail. The hub decides who may do what and routes calls to tool
//! sets; it never reads a user's files or runs user code itself (rooms do that).

pub mod accounts;
pub mod audit;
pub mod auth;
pub mod caller;
pub mod context;
pub mod edge;
pub mod error;
mod guard;
mod http_util;
pub mod jwt;
pub mod limit;
pub mod mcp;
pub mod metrics;
pub mod oauth;
mod rest;
pub mod rooms;
pub mod sessions;
pub mod signin;
pub mod tls;
pub mod tools;
pub mod upstream;
pub mod web;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use lodge_core::Config;
use lodge_store::{Store, StoreError};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use audit::Auditor;
use limit::Rate;

/// A profile's MCP request budget as a bucket.
fn request_rate(p: &lodge_core::config::Profile) -> Rate {
    Rate {
        per_second: p.requests_per_second,
        burst: f64::from(p.request_burst),
    }
}

/// Every tool, in the order `tools/list` shows them: session info, files, commands,
/// notebooks, git, secrets, then the upstream servers' tools.
fn tools(
    config: &Config,
    sessions: &Arc<sessions::Sessions>,
    rooms: &Arc<rooms::Rooms>,
    vault: &Arc<lodge_vault::Vault>,
    upstreams: &Arc<upstream::Upstreams>,
) -> tools::Registry {
    let registry = tools::Registry::default().tool(tools::SessionInfo {
        sessions: sessions.clone(),
        limits: config.sessions.clone(),
        rooms: rooms.clone(),
        upstreams: upstreams.clone(),
    });
    let registry = tools::files::register(registry, rooms).tool(tools::RunCommand {
        rooms: rooms.clone(),
        vault: vault.clone(),
    });
    let registry = tools::notebooks::register(registry, rooms, &config.kernels);
    let registry = tools::git::register(registry, rooms, vault);
    let registry = tools::secrets::register(registry, vault);
    let builtin = registry.names();
    registry.dynamic(tools::UpstreamTools::new(upstreams.clone(), builtin))
}

/// Everything a request handler may need, shared behind one `Arc`.
pub struct Hub {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub auth: auth::Authenticator,
    pub sessions: Arc<sessions::Sessions>,
    pub audit: Auditor,
    pub tools: tools::Registry,
    pub rooms: Arc<rooms::Rooms>,
    pub vault: Arc<lodge_vault::Vault>,
    pub upstreams: Arc<upstream::Upstreams>,
    /// Requests being answered, for the clients' `notifications/cancelled`.
    pub inflight: mcp::inflight::Inflight,
    /// What upstream servers ask of clients, on its way, and requests parked for input.
    pub relay: Arc<mcp::relay::Relay>,
    /// Sessionful clients' standalone streams and resource subscriptions.
    pub feeds: Arc<mcp::feeds::Feeds>,
    /// OAuth grants in flight: consent pages and authorization codes.
    pub oauth: oauth::OAuth,
    /// The organisation's OpenID provider (`[auth.oidc]`): discovery, keys, JWT verification.
    pub oidc: Option<Arc<jwt::Provider>>,
    /// Each user's MCP request budget (`[profiles.NAME] requests_per_second`, `request_burst`).
    request_budget: limit::Buckets<i64>,
    /// Provider sign-ins each client address may start (each stores a pending sign-in).
    pub(crate) signin_starts: limit::Buckets<std::net::IpAddr>,
    /// The hub's base URL (`server.base_url` of the address it serves on), set once the
    /// router is built: issuer, resource and redirect URLs come from it, never from `Host`.
    base_url: std::sync::OnceLock<String>,
}

impl Hub {
    /// Loads persisted sessions and starts the audit writer. Call inside a Tokio runtime.
    pub async fn start(
        config: Config,
        store: Arc<dyn Store>,
        setup: rooms::RoomsSetup,
        vault: Arc<lodge_vault::Vault>,
    ) -> Result<Arc<Self>, StoreError> {
        metrics::install();
        let audit = Auditor::start(store.clone());
        let sessions = Arc::new(sessions::Sessions::load(store.clone(), &config.sessions).await?);
        let auth = auth::Authenticator::new(
            store.clone(),
            audit.clone(),
            config.auth.token_cache,
            config.auth.failed_auth_per_minute,
        );
        let oidc = config
            .auth
            .oidc
            .as_ref()
            .map(|o| Arc::new(jwt::Provider::new(&o.issuer)));
        let auth = match (&oidc, &config.auth.oidc) {
            (Some(p), Some(o)) if o.accept_access_tokens => {
                auth.accept_provider_tokens(p.clone(), o)
            }
            _ => auth,
        };
        let rooms = Arc::new(rooms::Rooms::new(&config, setup));
        let feeds = Arc::new(mcp::feeds::Feeds::default());
        let (unsolicited, mut heard) = tokio::sync::mpsc::unbounded_channel();
        {
            let feeds = feeds.clone();
            tokio::spawn(async move {
                while let Some((user_id, message)) = heard.recv().await {
                    feeds.deliver(user_id, &message);
                }
            });
        }
        let upstreams = Arc::new(upstream::Upstreams::new(
            &config,
            rooms.clone(),
            vault.clone(),
            unsolicited,
        ));
        let tools = tools(&config, &sessions, &rooms, &vault, &upstreams);
        ::metrics::gauge!("lodge_sessions_active").set(sessions.count() as f64);
        Ok(Arc::new(Self {
            config,
            store,
            auth,
            sessions,
            audit,
            tools,
            rooms,
            vault,
            upstreams,
            inflight: Default::default(),
            relay: Arc::default(),
            feeds,
            oauth: Default::default(),
            oidc,
            request_budget: Default::default(),
            signin_starts: Default::default(),
            base_url: Default::default(),
        }))
    }

    /// The complete HTTP application; `bound` is the listening address (for Host checks).
    pub fn router(self: &Arc<Self>, bound: SocketAddr) -> Router {
        let _ = self.base_url.set(self.config.server.base_url(bound));
        self.auth.set_base_url(self.base_url());
        let guard = Arc::new(guard::HostGuard::new(&self.config.server, bound));
        let mcp_routes = get(mcp::get).post(mcp::post_own).delete(mcp::delete);
        let user_mcp = get(mcp::get).post(mcp::post_user).delete(mcp::delete);
        Router::new()
            .route("/mcp", mcp_routes)
            .route("/user/{name}/mcp", user_mcp)
            .route("/hub/static/lodge.css", get(web::stylesheet))
            .merge(oauth::routes())
            .route("/hub/", get(signin::pages::home))
            .route(
                "/hub/login",
                get(signin::pages::login).post(signin::pages::login_post),
            )
            .route(
                "/hub/login/link/{secret}",
                get(signin::pages::link).post(signin::pages::link_post),
            )
            .route("/hub/logout", axum::routing::post(signin::pages::logout))
            .route("/hub/oauth_callback", get(signin::oidc::callback))
            .route("/api/health", get(rest::health))
            .route("/api/metrics", get(rest::metrics))
            .route("/api/users", get(rest::list_users).post(rest::add_user))
            .route(
                "/api/users/{name}",
                get(rest::get_user).delete(rest::remove_user),
            )
            .route(
                "/api/users/{name}/tokens",
                get(rest::list_tokens).post(rest::create_token),
            )
            .route(
                "/api/users/{name}/tokens/{id}",
                axum::routing::delete(rest::revoke_token),
            )
            .route("/api/users/{name}/secrets", get(rest::list_secrets))
            .route(
                "/api/users/{name}/secrets/{secret}",
                axum::routing::put(rest::put_secret).delete(rest::delete_secret),
            )
            .route("/api/sessions", get(rest::list_sessions))
            .route(
                "/api/sessions/{id}",
                get(rest::get_session).delete(rest::end_session),
            )
            .fallback(|| async { error::ApiError::NotFound("no such endpoint".into()) })
            .layer(DefaultBodyLimit::max(self.config.server.max_body_bytes))
            .layer(axum::middleware::from_fn_with_state(guard, guard::check))
            .layer(axum::middleware::from_fn(metrics::track))
            .with_state(self.clone())
    }

    /// Serves until `shutdown` resolves, then drains requests and flushes pending writes.
    /// With `tls`, it serves HTTPS, presenting whatever certificate its resolver holds at each
    /// handshake (see [`tls::CertStore`]).
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let bound = listener.local_addr()?;
        // Half the descriptors are the connections'; rooms, upstreams and the store use the rest.
        let fd_budget = edge::raise_open_files_limit().map(|n| n / 2);
        let mut edge_config = edge::EdgeConfig::new(&self.config.server, fd_budget);
        edge_config.tls = tls;
        let stop = CancellationToken::new();
        let maintenance = tokio::spawn(self.clone().maintain(stop.clone()));
        let signin = tokio::spawn(signin::recheck::run(self.clone(), stop.clone()));
        let pruning = tokio::spawn(audit::prune_periodically(
            self.store.clone(),
            self.config.audit.clone(),
            stop.clone(),
        ));
        let app = self.router(bound);
        // Rooms stop as soon as shutdown begins, so calls running in them end at once (with
        // "the room stopped") instead of holding the drain for up to a command timeout. If
        // serving fails instead, the dropped sender starts the same stop.
        let (begin_stop, stop_requested) = tokio::sync::oneshot::channel::<()>();
        let (rooms, feeds) = (self.rooms.clone(), self.feeds.clone());
        let rooms_stopped = tokio::spawn(async move {
            let _ = stop_requested.await;
            // Standalone streams never end by themselves: closed, so the drain can finish
            // (their clients reconnect to the next hub).
            feeds.close_all();
            rooms.stop_all().await;
        });
        let shutdown = async move {
            shutdown.await;
            let _ = begin_stop.send(());
        };
        let served = edge::serve(listener, app, edge_config, shutdown).await;
        stop.cancel();
        let _ = maintenance.await;
        let _ = pruning.await;
        let _ = signin.await;
        // Wait for every room to be stopped and cleaned up (cgroups, volumes) before exiting.
        let _ = rooms_stopped.await;
        self.flush().await;
        served
    }

    /// The hub's base URL without a trailing slash (`server.public_url`, else the address it
    /// serves on). Empty before [`Hub::router`] has run.
    pub fn base_url(&self) -> &str {
        self.base_url.get().map(String::as_str).unwrap_or("")
    }

    /// Spends one of the caller's MCP requests: 429 (with `Retry-After`) when their profile's
    /// budget is used up, so one user's loop cannot take the hub from everyone else.
    pub fn spend_request(&self, caller: &caller::Caller) -> Result<(), error::ApiError> {
        let profile = self.config.profile(&caller.profile);
        let rate = request_rate(profile);
        let wait = match self
            .request_budget
            .take(caller.user_id, rate, std::time::Instant::now())
        {
            Ok(()) => return Ok(()),
            Err(wait) => wait,
        };
        ::metrics::counter!("lodge_requests_throttled_total").increment(1);
        let retry_after_s = limit::retry_after_s(wait);
        Err(error::ApiError::TooManyRequests {
            message: format!(
                "user {} sent more MCP requests than their profile allows ({} per second, bursts \
                 of {}: profiles.{}.requests_per_second and request_burst); retry after \
                 {retry_after_s}s",
                caller.user,
                profile.requests_per_second,
                profile.request_burst,
                if self.config.has_profile(&caller.profile) {
                    caller.profile.as_str()
                } else {
                    "default"
                },
            ),
            retry_after_s,
        })
    }

    /// Writes batched state (last-use times, audit records) to the store.
    pub async fn flush(&self) {
        if let Err(e) = self.sessions.flush().await {
            tracing::error!(error = %e, "cannot write session last-use times");
        }
        let uses = self.auth.take_dirty_uses();
        if !uses.is_empty()
            && let Err(e) = self.store.touch_tokens(&uses).await
        {
            tracing::error!(error = %e, "cannot write token last-use times");
        }
        self.audit.flush().await;
    }

    /// Periodic work: write-behind flushes, session expiry, cache sweeps, idle-room culling.
    async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        let period = self
            .config
            .sessions
            .flush_interval
            .max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.sessions.reap().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(ended = n, "expired sessions ended"),
                Err(e) => tracing::error!(error = %e, "session expiry failed"),
            }
            self.flush().await;
            self.auth.sweep();
            self.oauth.sweep();
            self.request_budget.sweep(std::time::Instant::now());
            self.signin_starts.sweep(std::time::Instant::now());
            let stopped = self.upstreams.cull().await;
            if stopped > 0 {
                tracing::info!(stopped, "idle upstream server instances stopped");
            }
            let culled = self.rooms.cull().await;
            if culled > 0 {
                tracing::info!(culled, "idle rooms stopped");
            }
        }
    }
}
