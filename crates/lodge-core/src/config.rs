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

/// Tables nested in a section that environment variables reach as `LODGE_<SECTION>_<SUB>_<KEY>`.
pub const SUBSECTIONS: [(&str, &str); 2] = [("auth", "oidc"), ("auth", "oauth")];

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
    /// TLS certificate chain (PEM). With `tls_key`, the hub serves HTTPS itself and re-reads
    /// both files on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
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
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl ServerConfig {
    /// Does the hub terminate TLS itself?
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// The hub's own base URL, without a trailing slash: `public_url` when set, else the
    /// address it listens on (`bound`, which knows the port chosen for `:0`). Issuer, resource
    /// and redirect URLs are built from this, never from a request's `Host`.
    pub fn base_url(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.tls() { "https" } else { "http" };
                format!("{scheme}://{bound}")
            }
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
    /// Browser sign-in through the organisation's OpenID Connect provider (`[auth.oidc]`).
    /// Absent: people sign in with a Lodge token or a one-time link.
    pub oidc: Option<OidcConfig>,
    /// The hub as an OAuth 2.1 authorization server for MCP clients (`[auth.oauth]`).
    pub oauth: OAuthConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_cache: Duration::from_secs(2),
            failed_auth_per_minute: 30,
            admin_access: false,
            oidc: None,
            oauth: OAuthConfig::default(),
        }
    }
}

/// `[auth.oidc]`: the organisation's OpenID Connect provider, for browser sign-in.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL; its metadata is read from
    /// `ISSUER/.well-known/openid-configuration`. HTTPS, except on a loopback address.
    pub issuer: String,
    pub client_id: String,
    /// The client secret (env `LODGE_AUTH_OIDC_CLIENT_SECRET`), or read from
    /// `client_secret_file`; neither for a public client.
    pub client_secret: Option<crate::Secret<String>>,
    /// A file holding the client secret (trailing newline ignored); read at load.
    pub client_secret_file: Option<PathBuf>,
    /// How the hub authenticates at the token endpoint when it has a secret:
    /// `client_secret_basic` (HTTP Basic, the default) or `client_secret_post` (form fields).
    pub token_endpoint_auth_method: String,
    pub scopes: Vec<String>,
    /// The ID-token claim that names the Lodge user.
    pub username_claim: String,
    /// Lowercase, take an email's local part, and replace other characters with `-`, instead
    /// of refusing a claim value that breaks the user-name rule.
    pub username_normalize: bool,
    /// The claim that lists the user's groups.
    pub groups_claim: String,
    /// Group → profile; the first group (in this table's order) the user is in wins.
    pub profile_for_group: BTreeMap<String, String>,
    /// Only members of these groups may sign in (empty: anyone the provider authenticates).
    pub allowed_groups: Vec<String>,
    /// Members of these groups are admins; others are not (the provider decides).
    pub admin_groups: Vec<String>,
    /// Create a Lodge user at first sign-in (else only existing users may sign in).
    pub auto_create: bool,
    /// How often membership is checked again with the provider's refresh token; a user who
    /// left the allowed groups or was disabled loses sessions, tokens and room.
    #[serde(with = "serde_human")]
    pub recheck: Duration,
    /// Accept the provider's own JWT access tokens as bearer tokens (signature against its
    /// JWKS, `iss`, `aud` = the hub's resource URL, `exp`).
    pub accept_access_tokens: bool,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            client_id: String::new(),
            client_secret: None,
            client_secret_file: None,
            token_endpoint_auth_method: "client_secret_basic".into(),
            scopes: ["openid", "profile", "email"].map(String::from).to_vec(),
            username_claim: "preferred_username".into(),
            username_normalize: false,
            groups_claim: "groups".into(),
            profile_for_group: BTreeMap::new(),
            allowed_groups: Vec::new(),
            admin_groups: Vec::new(),
            auto_create: true,
            recheck: Duration::from_secs(15 * 60),
            accept_access_tokens: false,
        }
    }
}

impl OidcConfig {
    /// Checks the keys and reads `client_secret_file` into `client_secret`.
    fn resolve(&mut self) -> Result<(), String> {
        if self.issuer.is_empty() || self.client_id.is_empty() {
            return Err("auth.oidc needs issuer and client_id".into());
        }
        let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|p| self.issuer.starts_with(p));
        if !self.issuer.starts_with("https://") && !loopback {
            return Err(format!(
                "auth.oidc.issuer {:?} must be an https:// URL (plain http only on loopback)",
                self.issuer
            ));
        }
        if let Some(path) = &self.client_secret_file {
            if self.client_secret.is_some() {
                return Err("auth.oidc: set client_secret or client_secret_file, not both".into());
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "auth.oidc.client_secret_file: cannot read {}: {e}",
                    path.display()
                )
            })?;
            self.client_secret = Some(crate::Secret::new(
                text.trim_end_matches(['\n', '\r']).to_owned(),
            ));
        }
        if !["client_secret_basic", "client_secret_post"]
            .contains(&self.token_endpoint_auth_method.as_str())
        {
            return Err(format!(
                "auth.oidc.token_endpoint_auth_method {:?}: use \"client_secret_basic\" or \"client_secret_post\"",
                self.token_endpoint_auth_method
            ));
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            return Err("auth.oidc.scopes must include \"openid\"".into());
        }
        if self.recheck.is_zero() {
            return Err("auth.oidc.recheck must be longer than 0 (e.g. \"15m\")".into());
        }
        Ok(())
    }
}

/// `[auth.oauth]`: the hub's own OAuth 2.1 authorization server for MCP clients.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    /// Lifetime of the access tokens the hub issues.
    #[serde(with = "serde_human")]
    pub access_token_ttl: Duration,
    /// A refresh token unused for this long expires (each use rotates it).
    #[serde(with = "serde_human")]
    pub refresh_token_ttl: Duration,
    /// Accept RFC 7591 dynamic client registration at `/oauth/register`.
    pub dynamic_registration: bool,
    /// May a client ID metadata document live on a loopback or private address? (For tests and
    /// internal deployments only: it lets anyone who can name a client ID make the hub fetch
    /// from the hub's own network.)
    pub allow_private_client_metadata: bool,
    /// A PEM file of extra CA certificates trusted when fetching client ID metadata documents.
    pub extra_ca_file: Option<PathBuf>,
    /// Pre-registered clients (`[auth.oauth.clients.ID]`).
    pub clients: BTreeMap<String, OAuthClientConfig>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(30 * 86400),
            dynamic_registration: true,
            allow_private_client_metadata: false,
            extra_ca_file: None,
            clients: BTreeMap::new(),
        }
    }
}

/// A client the operator registered in the config file.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthClientConfig {
    /// The name the consent page and `token list` show.
    pub name: String,
    /// Exact redirect URIs (a loopback one matches on any port).
    pub redirect_uris: Vec<String>,
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
            if let Some((path, key)) = env_key(&var) {
                let mut t = &mut table;
                for part in path {
                    let entry = t
                        .entry(part.to_owned())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    let toml::Value::Table(inner) = entry else {
                        return Err(ConfigError::Invalid {
                            origin: var,
                            message: format!("{part} is not a table in the config file"),
                        });
                    };
                    t = inner;
                }
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
        if let Some(oidc) = &mut cfg.auth.oidc {
            oidc.resolve().map_err(|message| ConfigError::Invalid {
                origin: origin.clone(),
                message,
            })?;
        }
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
        if server.tls_cert.is_some() != server.tls_key.is_some() {
            return Err(
                "server.tls_cert and server.tls_key go together: set both or neither".into(),
            );
        }
        if let Some(u) = &server.public_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(format!(
                "server.public_url {u:?} must start with https:// (or http://)"
            ));
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

/// `LODGE_SESSIONS_IDLE_TIMEOUT` → (`[sessions]`, `idle_timeout`), for known sections only;
/// `LODGE_AUTH_OIDC_CLIENT_SECRET` → (`[auth, oidc]`, `client_secret`): a word after the section
/// that names one of its [`SUBSECTIONS`] descends into it. No key of a section starts with a
/// subsection's name and `_` (a test holds this), so the reading is never ambiguous.
fn env_key(var: &str) -> Option<(Vec<&'static str>, String)> {
    let rest = var.strip_prefix("LODGE_")?;
    let (section, key) = rest.split_once('_')?;
    let section = SECTIONS
        .into_iter()
        .find(|s| s.eq_ignore_ascii_case(section))?;
    let mut path = vec![section];
    let mut key = key.to_ascii_lowercase();
    if let Some((sub, rest)) = key.split_once('_')
        && let Some(&(_, sub)) = SUBSECTIONS
            .iter()
            .find(|(parent, name)| *parent == section && *name == sub)
    {
        path.push(sub);
        key = rest.to_owned();
    }
    (!key.is_empty()).then_some((path, key))
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
    fn nested_auth_sections_come_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "from-file\n").unwrap();
        let p = dir.path().join("lodge.toml");
        std::fs::write(
            &p,
            r#"
            [auth.oidc]
            issuer = "https://idp.example"
            client_id = "lodge"
            admin_groups = ["ops"]
            [auth.oidc.profile_for_group]
            gpu = "big"
            [auth.oauth.clients.cli]
            redirect_uris = ["http://127.0.0.1/callback"]
            "#,
        )
        .unwrap();
        let c = Config::load(
            Some(&p),
            env(&[
                ("LODGE_AUTH_OIDC_CLIENT_SECRET", "s3cret"),
                ("LODGE_AUTH_OIDC_RECHECK", "5m"),
                ("LODGE_AUTH_OAUTH_ACCESS_TOKEN_TTL", "10m"),
                ("LODGE_AUTH_ADMIN_ACCESS", "true"),
            ]),
        )
        .unwrap();
        let oidc = c.auth.oidc.as_ref().unwrap();
        assert_eq!(oidc.client_secret.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(oidc.recheck, Duration::from_secs(300));
        assert_eq!(oidc.admin_groups, ["ops"]);
        assert_eq!(oidc.profile_for_group["gpu"], "big");
        assert_eq!(oidc.scopes, ["openid", "profile", "email"]);
        assert_eq!(c.auth.oauth.access_token_ttl, Duration::from_secs(600));
        assert_eq!(c.auth.oauth.clients["cli"].redirect_uris.len(), 1);
        assert!(c.auth.admin_access);
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the secret leaks into Debug"
        );

        // A whole [auth.oidc] from the environment alone, with the secret from a file.
        let file = secret_file.display().to_string();
        let c = Config::load(
            None,
            env(&[
                ("LODGE_AUTH_OIDC_ISSUER", "http://127.0.0.1:9/"),
                ("LODGE_AUTH_OIDC_CLIENT_ID", "lodge"),
                ("LODGE_AUTH_OIDC_CLIENT_SECRET_FILE", &file),
            ]),
        )
        .unwrap();
        let oidc = c.auth.oidc.unwrap();
        assert_eq!(oidc.client_secret.unwrap().expose(), "from-file");

        // Both forms of the secret, a typo in a nested key, plain http off loopback: refused,
        // each naming the key.
        let e = Config::load(
            Some(&p),
            env(&[
                ("LODGE_AUTH_OIDC_CLIENT_SECRET", "x"),
                ("LODGE_AUTH_OIDC_CLIENT_SECRET_FILE", &file),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        let e = Config::load(Some(&p), env(&[("LODGE_AUTH_OIDC_CLIENT_SECRT", "x")])).unwrap_err();
        assert!(e.to_string().contains("client_secrt"), "{e}");
        let e = Config::load(
            Some(&p),
            env(&[("LODGE_AUTH_OIDC_ISSUER", "http://idp.example")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
        let e = Config::load(
            None,
            env(&[("LODGE_AUTH_OIDC_CLIENT_SECRET_FILE", "/nonexistent/secret")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("issuer"), "{e}");
    }

    /// A key of a section that began with a subsection's name and `_` would be unreachable
    /// from the environment (it would be read as a key of the subsection).
    #[test]
    fn no_section_key_shadows_a_subsection() {
        let c = toml::Value::try_from(Config::default()).unwrap();
        for (section, sub) in SUBSECTIONS {
            let keys = c[section].as_table().unwrap().keys();
            for key in keys {
                assert!(
                    !key.starts_with(&format!("{sub}_")),
                    "[{section}] {key} cannot be told from [{section}.{sub}]"
                );
            }
        }
    }

    #[test]
    fn base_url_prefers_public_url_and_knows_tls() {
        let bound: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let mut s = ServerConfig::default();
        assert_eq!(s.base_url(bound), "http://127.0.0.1:4321");
        s.tls_cert = Some("c.pem".into());
        s.tls_key = Some("k.pem".into());
        assert_eq!(s.base_url(bound), "https://127.0.0.1:4321");
        s.public_url = Some("https://lodge.example/".into());
        assert_eq!(s.base_url(bound), "https://lodge.example");
        let e = Config::load(None, env(&[("LODGE_SERVER_TLS_CERT", "c.pem")])).unwrap_err();
        assert!(e.to_string().contains("tls_key"), "{e}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = Config::load(Some(Path::new("/nonexistent/lodge.toml")), env(&[])).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/lodge.toml"), "{e}");
    }
}
