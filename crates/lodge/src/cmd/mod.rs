//! Command implementations. Each opens what it needs (config, store) through [`Context`], so
//! every command resolves DATA_DIR, the config file and env overrides the same way.

mod accounts;
mod audit;
mod doctor;
mod secrets;
mod serve;

use crate::cli::{Cli, Command, Global, LogFormat};
use anyhow::{Context as _, Result};
use lodge_core::Config;
use lodge_hub::Auditor;
use lodge_store::{SqliteStore, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn init_logging(g: &Global) {
    // An explicit --log-level wins over RUST_LOG, which wins over the default.
    let filter = match &g.log_level {
        Some(level) => tracing_subscriber::EnvFilter::try_new(level).ok(),
        None => tracing_subscriber::EnvFilter::try_from_default_env().ok(),
    }
    .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match g.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolved global state for one command.
pub struct Context {
    pub data_dir: PathBuf,
    pub config: Config,
    pub store: Arc<dyn Store>,
    sqlite: SqliteStore,
}

/// Whether a command may create DATA_DIR: only those that start a deployment (`serve`,
/// `user add`); every other command on a missing one is a mistyped path, said as such.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Create {
    Yes,
    No,
}

impl Context {
    pub async fn open(g: &Global, create: Create) -> Result<Self> {
        let data_dir = g.data_dir.clone();
        let db = data_dir.join("lodge.db");
        if create == Create::No && !db.exists() {
            anyhow::bail!(
                "no Lodge data in {}: check --data-dir / LODGE_DATA_DIR, or start with 'lodge user add NAME'",
                data_dir.display()
            );
        }
        ensure_private_dir(&data_dir)?;
        let config_path = match &g.config {
            Some(p) => Some(p.clone()),
            None => Some(data_dir.join("lodge.toml")).filter(|p| p.exists()),
        };
        let config = Config::load(config_path.as_deref(), std::env::vars())?;
        let sqlite = SqliteStore::open(&db)
            .await
            .with_context(|| format!("opening the store in {}", data_dir.display()))?;
        Ok(Self {
            data_dir,
            config,
            store: Arc::new(sqlite.clone()),
            sqlite,
        })
    }

    /// Flushes the audit writer and closes the database cleanly.
    pub async fn close(self, audit: Option<Auditor>) {
        if let Some(a) = audit {
            a.flush().await;
        }
        self.sqlite.close().await;
    }
}

/// DATA_DIR holds keys and the database: create it owner-only.
fn ensure_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
        }
    }
    Ok(())
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(a) => serve::run(&cli.global, a).await,
        Command::User(c) => accounts::user(&cli.global, c).await,
        Command::Token(c) => accounts::token(&cli.global, c).await,
        Command::McpConfig(a) => accounts::mcp_config(&cli.global, a).await,
        Command::Audit(a) => audit::run(&cli.global, a).await,
        Command::Bench(a) => {
            // The bench runs the hub it measures from this very binary.
            let exe = std::env::current_exe().context("cannot find the lodge executable")?;
            lodge_bench::run(a, &exe).await
        }
        Command::Doctor(a) => doctor::run(&cli.global, a).await,
        Command::Secret(c) => secrets::run(&cli.global, c).await,
        Command::Agent(_) => anyhow::bail!("lodge agent runs before the runtime starts"),
    }
}
