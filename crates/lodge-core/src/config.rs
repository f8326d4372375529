//! The hub's configuration: a TOML file whose every key can be overridden by an environment
//! variable `LODGE_<SECTION>_<KEY>`. Unknown keys are errors that name the key, so a typo never
//! silently falls back to a default. Loading only reads; nothing here starts anything.

use crate::duration::serde_human;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Sections that environment variables may override. `LODGE_DATA_DIR`, `LODGE_CONFIG`,
/// `LODGE_MASTER_KEY` and `LODGE_TOKEN` are not sections and are left alone.
pub const SECTIONS: [&str; 7] = [
    "server", "auth", "sessions", "metrics", "rooms", "kernels", "audit",
];

#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub sessions: SessionsConfig,
    pub metrics: MetricsConfig,
    pub rooms: RoomsConfig,
    pub kernels: KernelsConfig,
    pub audit: AuditConfig,
    /// Named resource profiles (`[profiles.NAME]`); users are assigned one. `default` always
    /// exists even when the file does not declare it.
    pub profiles: BTreeMap<String, Profile>,
    /// Upstream MCP servers (`[servers.NAME]`) each user gets a private instance of. Set in
    /// the file only (no environment overrides).
    pub servers: BTreeMap<String, crate::servers::UpstreamConfig>,
}

#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// The URL clients use to reach the hub (for `mcp-config` and when behind a proxy).
    pub public_url: Option<String>,
    /// Extra `Host` header values accepted (DNS-rebinding protection). Loopback names are
    /// always accepted when bound to loopback.
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to call the hub (`scheme://host:port`). Requests with any other
    /// `Origin` header are refused; requests without one (non-browser clients) pass.
    pub allowed_origins: Vec<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Allow binding a non-loopback address without TLS (e.g. behind a TLS-terminating proxy).
    pub insecure_public: bool,
    /// Once a request starts arriving, its headers must be complete within this time, else
    /// the connection is closed (slow-header attacks).
    #[serde(with = "serde_human")]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress (new, or kept alive after a response) is
    /// closed after this long.
    #[serde(with = "serde_human")]
    pub idle_timeout: Duration,
    /// Connections open at once; beyond it new ones are answered 503 and closed.
    pub max_connections: u32,
    /// Connections open at once from one client address (trusted proxies are exempt: their
    /// clients are told apart by `X-Forwarded-For`).
    pub max_connections_per_address: u32,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed: for a request
    /// from one of them, the client address used for limits is the right-most address in that
    /// header that is not itself a trusted proxy.
    pub trusted_proxies: Vec<crate::net::IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8765)),
            public_url: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            insecure_public: false,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 16_384,
            max_connections_per_address: 512,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a verified token is trusted before the store is asked again. Revocation through
    /// the REST API is immediate; through the CLI it takes effect within this time.
    #[serde(with = "serde_human")]
    pub token_cache: Duration,
    /// Failed authentications allowed per client address per minute before it gets 429.
    pub failed_auth_per_minute: u32,
    /// May admins act on other users' MCP endpoints (JupyterHub's `admin_access`)?
    pub admin_access: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_cache: Duration::from_secs(2),
            failed_auth_per_minute: 30,
            admin_access: false,
        }
    }
}

#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// A legacy MCP session unused for this long ends.
    #[serde(with = "serde_human")]
    pub idle_timeout: Duration,
    /// A legacy MCP session ends this long after it began, used or not.
    #[serde(with = "serde_human")]
    pub max_age: Duration,
    /// Live sessions one user may hold.
    pub max_per_user: u32,
    /// How often last-use times are written back to the store.
    #[serde(with = "serde_human")]
    pub flush_interval: Duration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            max_age: Duration::from_secs(24 * 3600),
            max_per_user: 100,
            flush_interval: Duration::from_secs(5),
        }
    }
}

/// How long audit records are kept. The hub prunes older records, and the oldest beyond the
/// row cap, in small batches in the background.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Records older than this are deleted.
    #[serde(with = "serde_human")]
    pub retention: Duration,
    /// At most this many records are kept; the oldest beyond it are deleted.
    pub max_rows: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(90 * 86400),
            max_rows: 10_000_000,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/api/metrics` without a token (for a Prometheus on a trusted network).
    pub public: bool,
}

/// How rooms are walled off from the host and from each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// bubblewrap namespaces, a cgroup and rlimits, with Landlock and seccomp inside.
    Bubblewrap,
    /// No sandbox (development only): the hub logs a warning on every room start.
    None,
}

/// Network access from inside a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkAccess {
    /// A private loopback only.
    None,
    /// The host's network.
    Host,
}

#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// `bubblewrap` (default) or `none` (development only; every room start logs a warning).
    pub isolation: Isolation,
    /// A room with no call in flight for this long is stopped; the next call starts it again.
    #[serde(with = "serde_human")]
    pub idle_timeout: Duration,
    /// Rooms running at once; a user beyond it gets a clear error until one is culled.
    pub max_users_active: u32,
    /// How long a room may take to start and greet the hub.
    #[serde(with = "serde_human")]
    pub start_timeout: Duration,
    /// How long a stopping room may take to exit before it is killed.
    #[serde(with = "serde_human")]
    pub stop_grace: Duration,
    /// When the hub runs as root, room processes run as host uid `uid_base + user id`.
    pub uid_base: u32,
    /// Host directories bind-mounted read-only at the same path into every room, for software
    /// that upstream servers and commands run (virtualenvs, node_modules) outside `/usr`.
    pub read_only_paths: Vec<PathBuf>,
    /// Upstream server instances one user may run at once.
    pub max_servers_per_user: u32,
    /// Upstream server instances running at once on this hub.
    pub max_servers_total: u32,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            isolation: Isolation::Bubblewrap,
            idle_timeout: Duration::from_secs(15 * 60),
            max_users_active: 1000,
            start_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(3),
            uid_base: 1_500_000_000,
            read_only_paths: Vec::new(),
            max_servers_per_user: 8,
            max_servers_total: 1000,
        }
    }
}

/// Jupyter kernels in rooms (`[kernels]`).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KernelsConfig {
    /// Jupyter data directories (each holding `kernels/NAME/kernel.json`) searched after the
    /// user's own `/workspace/.local/share/jupyter` and before `system_paths`. Each must lie
    /// under `/usr` or one of `rooms.read_only_paths`, so that rooms can see it.
    pub paths: Vec<PathBuf>,
    /// The host's Jupyter data directories, searched last (where Debian's python3-ipykernel
    /// puts its `python3` kernelspec). `[]` offers rooms only the user's and `paths` specs.
    pub system_paths: Vec<PathBuf>,
    /// The kernelspec for notebooks and calls that name none.
    pub default: String,
    /// A kernel with nothing running for this long is shut down (its variables are lost). A
    /// room stays up at least this long after its last notebook call.
    #[serde(with = "serde_human")]
    pub idle_timeout: Duration,
    /// How long a kernel may take to start answering.
    #[serde(with = "serde_human")]
    pub start_timeout: Duration,
    /// Kernels one user may run at once.
    pub max_per_user: u32,
}

impl Default for KernelsConfig {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            system_paths: vec![
                PathBuf::from("/usr/local/share/jupyter"),
                PathBuf::from("/usr/share/jupyter"),
            ],
            default: "python3".to_owned(),
            idle_timeout: Duration::from_secs(30 * 60),
            start_timeout: Duration::from_secs(60),
            max_per_user: 4,
        }
    }
}

impl KernelsConfig {
    fn validate(&self, read_only: &[PathBuf]) -> Result<(), String> {
        if self.max_per_user == 0 {
            return Err("kernels.max_per_user must be at least 1".into());
        }
        if self.default.is_empty() {
            return Err("kernels.default must name a kernelspec (e.g. \"python3\")".into());
        }
        for (key, paths) in [("paths", &self.paths), ("system_paths", &self.system_paths)] {
            for path in paths {
                let visible = path.is_absolute()
                    && (path.starts_with("/usr") || read_only.iter().any(|r| path.starts_with(r)));
                if !visible {
                    return Err(format!(
                        "kernels.{key} entry {} is not visible in rooms: use an absolute path \
                         under /usr or under one of rooms.read_only_paths (add its prefix there)",
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A resource profile (`[profiles.NAME]`); each user is assigned one. Sizes are written like
/// `512MiB`; `"unlimited"` lifts a limit.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    pub description: String,
    /// Memory of the whole room (commands, kernels, servers); beyond it the kernel OOM-kills
    /// inside the room only.
    #[serde(with = "crate::size::serde_limit")]
    pub memory: Option<u64>,
    /// CPU time, in cores (`0.5`, `2`).
    pub cpus: Option<f64>,
    /// Processes and threads in the room.
    pub pids: Option<u64>,
    /// Workspace size (a quota-limited volume when the hub runs as root).
    #[serde(with = "crate::size::serde_limit")]
    pub disk: Option<u64>,
    /// Size of the room's private `/tmp` (memory-backed, counted in `memory`).
    #[serde(with = "crate::size::serde_limit")]
    pub tmp: Option<u64>,
    pub network: NetworkAccess,
    /// `run_command`'s timeout when the call gives none.
    #[serde(with = "serde_human")]
    pub command_timeout: Duration,
    /// The longest `timeout_s` a call may ask for.
    #[serde(with = "serde_human")]
    pub max_command_timeout: Duration,
    /// Bytes of stdout and of stderr a command returns; the rest is dropped and flagged.
    #[serde(with = "crate::size::serde_size")]
    pub output_cap: u64,
    /// Open files per process.
    pub open_files: u64,
    /// MCP requests a user may send per second, sustained (a token bucket); beyond it the hub
    /// answers 429 with `Retry-After`.
    pub requests_per_second: f64,
    /// MCP requests a user may send at once above the sustained rate (the bucket's size).
    pub request_burst: u32,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            description: String::new(),
            memory: Some(1 << 30),
            cpus: Some(1.0),
            pids: Some(512),
            disk: Some(1 << 30),
            tmp: Some(256 << 20),
            network: NetworkAccess::None,
            command_timeout: Duration::from_secs(60),
            max_command_timeout: Duration::from_secs(30 * 60),
            output_cap: 1 << 20,
            open_files: 1024,
            requests_per_second: 50.0,
            request_burst: 200,
        }
    }
}

impl Profile {
    fn validate(&self, name: &str) -> Result<(), String> {
        if let Some(c) = self.cpus
            && !(c.is_finite() && c >= 0.01)
        {
            return Err(format!(
                "profiles.{name}.cpus must be at least 0.01 (cores)"
            ));
        }
        if self.pids == Some(0) {
            return Err(format!("profiles.{name}.pids must be at least 1"));
        }
        if self.command_timeout > self.max_command_timeout {
            return Err(format!(
                "profiles.{name}.command_timeout is longer than max_command_timeout"
            ));
        }
        if self.open_files < 16 {
            return Err(format!("profiles.{name}.open_files must be at least 16"));
        }
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            return Err(format!(
                "profiles.{name}.requests_per_second must be a positive number (requests per \
                 second, e.g. 50)"
            ));
        }
        if self.request_burst == 0 {
            return Err(format!("profiles.{name}.request_burst must be at least 1"));
        }
        Ok(())
    }
}

static DEFAULT_PROFILE: std::sync::LazyLock<Profile> = std::sync::LazyLock::new(Profile::default);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid TOML in {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid configuration ({origin}): {message}")]
    Invalid { origin: String, message: String },
}

impl Config {
    /// Reads `path` (if any), applies `LODGE_<SECTION>_<KEY>` overrides from `env`, validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: p.to_owned(),
                        message: e.message().to_owned(),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut overridden = Vec::new();
        for (var, value) in env {
            if let Some((section, key)) = env_key(&var) {
                let entry = table
                    .entry(section.to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(t) = entry else {
                    return Err(ConfigError::Invalid {
                        origin: var,
                        message: format!("[{section}] is not a table in the config file"),
                    });
                };
                t.insert(key, env_value(&value));
                overridden.push(var);
            }
        }
        let origin = match (path, overridden.is_empty()) {
            (Some(p), true) => p.display().to_string(),
            (Some(p), false) => format!("{} with {}", p.display(), overridden.join(", ")),
            (None, true) => "defaults".to_owned(),
            (None, false) => format!("environment {}", overridden.join(", ")),
        };
        let mut cfg: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: origin.clone(),
                    message: e.message().to_owned(),
                })?;
        cfg.profiles.entry("default".to_owned()).or_default();
        cfg.validate()
            .map_err(|message| ConfigError::Invalid { origin, message })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.server.max_body_bytes < 1024 {
            return Err("server.max_body_bytes must be at least 1024".into());
        }
        let server = &self.server;
        if server.header_read_timeout.is_zero() || server.idle_timeout.is_zero() {
            return Err(
                "server.header_read_timeout and server.idle_timeout must be longer than 0 \
                 (e.g. \"10s\" and \"60s\")"
                    .into(),
            );
        }
        if server.max_connections == 0 || server.max_connections_per_address == 0 {
            return Err(
                "server.max_connections and server.max_connections_per_address must be at \
                 least 1"
                    .into(),
            );
        }
        if self.sessions.max_per_user == 0 {
            return Err("sessions.max_per_user must be at least 1".into());
        }
        if self.audit.max_rows < 1000 {
            return Err("audit.max_rows must be at least 1000".into());
        }
        self.kernels.validate(&self.rooms.read_only_paths)?;
        for (name, profile) in &self.profiles {
            if crate::UserName::parse(name).is_err() {
                return Err(format!(
                    "profile name {name:?} is invalid: use the same form as user names"
                ));
            }
            profile.validate(name)?;
        }
        if !(1000..i32::MAX as u32).contains(&self.rooms.uid_base) {
            return Err(
                "rooms.uid_base must lie in 1000..2147483647 (room uids above 2^31 cannot be \
                 mapped into a user namespace)"
                    .into(),
            );
        }
        if self.rooms.max_users_active == 0 {
            return Err("rooms.max_users_active must be at least 1".into());
        }
        if self.rooms.max_servers_per_user == 0 || self.rooms.max_servers_total == 0 {
            return Err(
                "rooms.max_servers_per_user and max_servers_total must be at least 1".into(),
            );
        }
        if let Some(p) = self.rooms.read_only_paths.iter().find(|p| !p.is_absolute()) {
            return Err(format!(
                "rooms.read_only_paths: {} is not an absolute path",
                p.display()
            ));
        }
        for (name, server) in &self.servers {
            server.validate(name, |p| self.has_profile(p))?;
        }
        crate::servers::validate_prefixes(&self.servers)
    }

    pub fn has_profile(&self, name: &str) -> bool {
        self.profiles.contains_key(name)
    }

    /// The named profile, or `default` for a name the config no longer declares (a user keeps
    /// working, with default limits, after their profile is removed from the file).
    pub fn profile(&self, name: &str) -> &Profile {
        self.profiles
            .get(name)
            .or_else(|| self.profiles.get("default"))
            .unwrap_or(&DEFAULT_PROFILE)
    }
}

/// `LODGE_SESSIONS_IDLE_TIMEOUT` → (`sessions`, `idle_timeout`), for known sections only.
fn env_key(var: &str) -> Option<(&'static str, String)> {
    let rest = var.strip_prefix("LODGE_")?;
    let (section, key) = rest.split_once('_')?;
    let section = SECTIONS
        .into_iter()
        .find(|s| s.eq_ignore_ascii_case(section))?;
    (!key.is_empty()).then(|| (section, key.to_ascii_lowercase()))
}

/// Env values are TOML literals when they parse as one (`5`, `true`, `["a"]`), else strings.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_loopback_and_have_default_profile() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.server.bind.to_string(), "127.0.0.1:8765");
        assert!(c.has_profile("default"));
        assert_eq!(c.sessions.idle_timeout, Duration::from_secs(1800));
    }

    #[test]
    fn audit_retention_defaults_and_comes_from_the_environment() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.audit.retention, Duration::from_secs(90 * 86400));
        assert_eq!(c.audit.max_rows, 10_000_000);
        let c = Config::load(
            None,
            env(&[
                ("LODGE_AUDIT_RETENTION", "30d"),
                ("LODGE_AUDIT_MAX_ROWS", "50000"),
            ]),
        )
        .unwrap();
        assert_eq!(c.audit.retention, Duration::from_secs(30 * 86400));
        assert_eq!(c.audit.max_rows, 50_000);
        let e = Config::load(None, env(&[("LODGE_AUDIT_MAX_ROWS", "5")])).unwrap_err();
        assert!(e.to_string().contains("audit.max_rows"), "{e}");
    }

    #[test]
    fn file_and_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lodge.toml");
        std::fs::write(
            &p,
            "[sessions]\nidle_timeout = \"10m\"\nmax_per_user = 3\n[profiles.gpu]\ndescription = \"big\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&p),
            env(&[
                ("LODGE_SESSIONS_MAX_PER_USER", "7"),
                ("LODGE_SERVER_BIND", "127.0.0.1:0"),
                ("LODGE_SERVER_ALLOWED_HOSTS", "[\"hub.example\"]"),
                ("LODGE_TOKEN", "not-config"),
                ("LODGE_DATA_DIR", "/x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.sessions.idle_timeout, Duration::from_secs(600));
        assert_eq!(c.sessions.max_per_user, 7);
        assert_eq!(c.server.bind.port(), 0);
        assert_eq!(c.server.allowed_hosts, vec!["hub.example"]);
        assert!(c.has_profile("gpu") && c.has_profile("default"));
    }

    #[test]
    fn kernel_paths_must_be_visible_in_rooms() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lodge.toml");
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Config::load(Some(&p), env(&[]))
        };
        let c = load(
            "[rooms]\nread_only_paths = [\"/opt/jupyter\"]\n[kernels]\npaths = [\"/opt/jupyter/share/jupyter\", \"/usr/lib/x\"]\nidle_timeout = \"5m\"\n",
        )
        .unwrap();
        assert_eq!(c.kernels.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.kernels.default, "python3");
        let e = load("[kernels]\npaths = [\"/opt/elsewhere/share/jupyter\"]\n").unwrap_err();
        assert!(
            e.to_string().contains("/opt/elsewhere/share/jupyter"),
            "{e}"
        );
        assert!(e.to_string().contains("rooms.read_only_paths"), "{e}");
        let e = load("[kernels]\nmax_per_user = 0\n").unwrap_err();
        assert!(e.to_string().contains("kernels.max_per_user"), "{e}");
        let e = load("[kernels]\nidle = \"5m\"\n").unwrap_err();
        assert!(e.to_string().contains("idle"), "{e}");
    }

    /// The host's Jupyter dirs are searched by default, can be emptied (from the environment
    /// too) and obey the same visibility rule as `paths`.
    #[test]
    fn kernel_system_paths_default_env_and_visibility() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(
            c.kernels.system_paths,
            [
                PathBuf::from("/usr/local/share/jupyter"),
                PathBuf::from("/usr/share/jupyter")
            ]
        );
        let c = Config::load(None, env(&[("LODGE_KERNELS_SYSTEM_PATHS", "[]")])).unwrap();
        assert!(c.kernels.system_paths.is_empty());
        let e = Config::load(
            None,
            env(&[("LODGE_KERNELS_SYSTEM_PATHS", "[\"/srv/jupyter\"]")]),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("kernels.system_paths entry /srv/jupyter"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_culprit() {
        let e = Config::load(None, env(&[("LODGE_SERVER_BINDD", "x")])).unwrap_err();
        assert!(e.to_string().contains("bindd"), "{e}");
        assert!(e.to_string().contains("LODGE_SERVER_BINDD"), "{e}");
        let e = Config::load(None, env(&[("LODGE_SESSIONS_IDLE_TIMEOUT", "soon")])).unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
        let e = Config::load(None, env(&[("LODGE_SESSIONS_MAX_PER_USER", "0")])).unwrap_err();
        assert!(e.to_string().contains("max_per_user"), "{e}");
    }

    #[test]
    fn profiles_take_sizes_and_unlimited() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lodge.toml");
        std::fs::write(
            &p,
            "[profiles.big]\nmemory = \"4GiB\"\ncpus = 2\ndisk = \"unlimited\"\nnetwork = \"host\"\n[rooms]\nisolation = \"none\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&p), env(&[("LODGE_ROOMS_IDLE_TIMEOUT", "5m")])).unwrap();
        let big = c.profile("big");
        assert_eq!(big.memory, Some(4 << 30));
        assert_eq!(big.cpus, Some(2.0));
        assert_eq!(big.disk, None);
        assert_eq!(big.network, NetworkAccess::Host);
        assert_eq!(c.rooms.isolation, Isolation::None);
        assert_eq!(c.rooms.idle_timeout, Duration::from_secs(300));
        // An unknown profile name falls back to the default limits.
        assert_eq!(c.profile("gone").memory, Some(1 << 30));
        std::fs::write(&p, "[profiles.bad]\nmemory = \"lots\"\n").unwrap();
        let e = Config::load(Some(&p), env(&[])).unwrap_err();
        assert!(e.to_string().contains("lots"), "{e}");
        std::fs::write(&p, "[profiles.bad]\ncpus = 0\n").unwrap();
        let e = Config::load(Some(&p), env(&[])).unwrap_err();
        assert!(e.to_string().contains("profiles.bad.cpus"), "{e}");
    }

    #[test]
    fn edge_keys_and_request_budgets_come_from_env_and_file() {
        let c = Config::load(
            None,
            env(&[
                ("LODGE_SERVER_HEADER_READ_TIMEOUT", "3s"),
                ("LODGE_SERVER_IDLE_TIMEOUT", "2m"),
                ("LODGE_SERVER_MAX_CONNECTIONS", "100"),
                ("LODGE_SERVER_MAX_CONNECTIONS_PER_ADDRESS", "10"),
                ("LODGE_SERVER_TRUSTED_PROXIES", r#"["10.0.0.0/8", "::1"]"#),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(3));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.server.max_connections, 100);
        assert_eq!(c.server.max_connections_per_address, 10);
        let ip = |s: &str| s.parse().unwrap();
        assert!(c.server.trusted_proxies[0].contains(ip("10.9.8.7")));
        assert!(c.server.trusted_proxies[1].contains(ip("::1")));
        assert_eq!(c.profile("default").requests_per_second, 50.0);
        let e = Config::load(
            None,
            env(&[("LODGE_SERVER_TRUSTED_PROXIES", r#"["10.0.0.0/40"]"#)]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/40"), "{e}");
        let e = Config::load(None, env(&[("LODGE_SERVER_MAX_CONNECTIONS", "0")])).unwrap_err();
        assert!(e.to_string().contains("server.max_connections"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lodge.toml");
        std::fs::write(&p, "[profiles.bot]\nrequests_per_second = 0\n").unwrap();
        let e = Config::load(Some(&p), env(&[])).unwrap_err();
        assert!(
            e.to_string().contains("profiles.bot.requests_per_second"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = Config::load(Some(Path::new("/nonexistent/lodge.toml")), env(&[])).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/lodge.toml"), "{e}");
    }
}
