//! `lodge serve`: binds, refuses unsafe public binds (plain HTTP off loopback), serves HTTPS when
//! `[server] tls_cert`/`tls_key` are set (re-reading them on SIGHUP), runs the hub until
//! SIGINT/SIGTERM.

use super::Context;
use crate::cli::{Global, ServeArgs};
use anyhow::{Context as _, Result, bail};
use lodge_core::config::Isolation;
use lodge_hub::Hub;
use lodge_room::spawner::LocalSpawner;
use std::io::Write;
use std::sync::Arc;

pub async fn run(g: &Global, a: ServeArgs) -> Result<()> {
    let ctx = Context::open(g, super::Create::Yes).await?;
    let mut config = ctx.config.clone();
    if let Some(b) = a.bind {
        config.server.bind = b;
    }
    config.server.insecure_public |= a.insecure_public;
    let bind = config.server.bind;
    // A bad certificate or key is an error now, naming the file, not at the first handshake.
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(
            lodge_hub::tls::CertStore::load(cert, key)
                .context("cannot set up TLS (server.tls_cert, server.tls_key)")?,
        ),
        _ => None,
    };
    if !bind.ip().is_loopback() && tls.is_none() {
        if !config.server.insecure_public {
            bail!(
                "refusing to listen on {bind} without TLS: tokens would cross the network in clear. \
                 Bind 127.0.0.1 and put a TLS proxy in front, then pass --insecure-public \
                 (or set server.insecure_public = true)"
            );
        }
        tracing::warn!(
            "!!! listening on non-loopback {bind} WITHOUT TLS: only do this behind a TLS-terminating proxy !!!"
        );
    }
    if ctx.store.list_users().await?.is_empty() {
        eprintln!(
            "lodge: no users yet. Create one:  lodge --data-dir {dir} user add alice --admin && lodge --data-dir {dir} token create alice",
            dir = ctx.data_dir.display()
        );
    }
    let spawner = LocalSpawner::new(
        std::fs::canonicalize(&ctx.data_dir)
            .with_context(|| format!("cannot resolve {}", ctx.data_dir.display()))?,
        std::env::current_exe().context("cannot find the lodge executable to run as room agent")?,
    );
    if config.rooms.isolation == Isolation::Bubblewrap && !spawner.bubblewrap_available() {
        tracing::error!(
            "bubblewrap (bwrap) not found: rooms cannot start. Install it \
             (`apt-get install bubblewrap`, or start the hub with scripts/serve, which \
             installs it) or set rooms.isolation = \"none\" for development"
        );
    }
    let setup = lodge_hub::rooms::RoomsSetup {
        spawner: Arc::new(spawner),
    };
    let vault = super::secrets::open_vault(&ctx).await?;
    let hub = Hub::start(config, ctx.store.clone(), setup, vault).await?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind} (in use? choose another with --bind)"))?;
    let addr = listener.local_addr()?;
    let (server_tls, reloads) = match &tls {
        Some(store) => (
            Some(store.server_config()?),
            Some(reload_on_sighup(store.clone())?),
        ),
        None => (None, None),
    };
    {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "lodge {} listening on {scheme}://{addr}",
            env!("CARGO_PKG_VERSION")
        )?;
        out.flush()?;
    }
    tracing::info!(%addr, data_dir = %ctx.data_dir.display(), tls = tls.is_some(), "hub started");
    hub.serve(listener, server_tls, shutdown_signal()).await?;
    if let Some(r) = reloads {
        r.abort();
    }
    tracing::info!("hub stopped");
    ctx.close(None).await;
    Ok(())
}

/// Re-reads the certificate and key on each SIGHUP; new connections get the new pair, and a
/// pair that does not load is logged and the old one kept. The handler is installed before this
/// returns (so before the ready line), as SIGHUP's default action would end the hub.
#[cfg(unix)]
fn reload_on_sighup(store: Arc<lodge_hub::tls::CertStore>) -> Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match store.reload() {
                Ok(()) => tracing::info!("TLS certificate and key reloaded"),
                Err(e) => tracing::error!(
                    error = %e,
                    "TLS reload failed: still serving the previous certificate"
                ),
            }
        }
    }))
}

#[cfg(not(unix))]
fn reload_on_sighup(_: Arc<lodge_hub::tls::CertStore>) -> Result<tokio::task::JoinHandle<()>> {
    Ok(tokio::spawn(async {}))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: draining requests");
}
