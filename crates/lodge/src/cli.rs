//! The command-line surface, documented for operators in docs/configuration.md ("Global flags",
//! "Commands"). Help texts here are the user's reference.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "lodge",
    version,
    about = "Lodge: a multi-tenant MCP hub. Each user gets a private room of MCP tools."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Where Lodge keeps its database, keys and workspaces.
    #[arg(
        long,
        global = true,
        env = "LODGE_DATA_DIR",
        default_value = "./lodge-data"
    )]
    pub data_dir: PathBuf,
    /// Config file (TOML). Default: DATA_DIR/lodge.toml when it exists.
    #[arg(long, global = true, env = "LODGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (e.g. info, debug, lodge_hub=debug). Default: RUST_LOG, else info.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the hub.
    Serve(ServeArgs),
    /// Add, list and remove users.
    #[command(subcommand)]
    User(UserCmd),
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Print a ready .mcp.json for MCP clients such as Claude Code.
    McpConfig(McpConfigArgs),
    /// Show audit records: auth failures, tool calls and admin actions.
    Audit(AuditArgs),
    /// Benchmark a hub over loopback HTTP and print p50/p99 figures.
    Bench(lodge_bench::BenchArgs),
    /// Report what isolation this machine supports for rooms, and how to fix what is missing.
    Doctor(DoctorArgs),
    /// Store, read, list and delete users' secrets; rotate the master key.
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Internal: the process inside a room. The hub starts it in the sandbox and speaks the room
    /// protocol over its stdin/stdout; there is no reason to run it by hand.
    #[command(hide = true)]
    Agent(AgentArgs),
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The workspace every file operation and command is confined to.
    #[arg(long)]
    pub workspace: PathBuf,
    /// The room's private temporary directory.
    #[arg(long, default_value = "/tmp")]
    pub tmp: PathBuf,
    /// The room may use the network (otherwise Landlock also refuses TCP).
    #[arg(long)]
    pub network: bool,
    /// A directory the room may read and execute from (repeatable).
    #[arg(long = "read-only")]
    pub read_only: Vec<PathBuf>,
    /// Skip Landlock and seccomp (tests of the agent protocol only).
    #[arg(long, hide = true)]
    pub no_confine: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (overrides server.bind).
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Allow a non-loopback address without TLS (e.g. behind a TLS-terminating proxy).
    #[arg(long)]
    pub insecure_public: bool,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user (names: ^[a-z][a-z0-9_-]{0,31}$).
    Add {
        name: String,
        /// Make the user an admin (holds every scope).
        #[arg(long)]
        admin: bool,
        /// Resource profile from [profiles.NAME] in the config.
        #[arg(long)]
        profile: Option<String>,
    },
    /// List users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print a one-time browser sign-in link for a user (BASE/hub/login/link/SECRET; BASE is
    /// server.public_url, else the configured bind address). It works once, until it expires.
    LoginUrl {
        name: String,
        /// How long the link stays valid (at most 24h).
        #[arg(long, default_value = "10m")]
        expires: String,
    },
    /// Remove a user, their tokens and sessions.
    Remove {
        name: String,
        /// Also delete the user's workspace and secrets.
        #[arg(long)]
        purge: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token; prints the token alone on stdout (it is shown only once).
    Create {
        name: String,
        /// Comma-separated scopes (default: mcp). 'inherit' gives all the user's role holds.
        #[arg(long)]
        scopes: Option<String>,
        /// Lifetime such as 30d or 12h (default: never expires).
        #[arg(long)]
        expires: Option<String>,
        /// A note to recognise the token by.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List a user's tokens (ids, scopes, expiry, last use; never secrets).
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke {
        /// The id `token list` shows. Ids may begin with '-' (they are URL-safe base64).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Store fields of a secret. Values are read from a prompt (no echo) when stdin is a
    /// terminal, else from stdin: the whole input for a single --field, or FIELD=VALUE lines.
    /// They are never taken from the command line.
    Put {
        user: String,
        name: String,
        /// Field to set (repeatable). Without it, stdin must hold FIELD=VALUE lines.
        #[arg(long = "field")]
        fields: Vec<String>,
    },
    /// Print a secret: one field's value alone, or FIELD=VALUE lines.
    Get {
        user: String,
        name: String,
        field: Option<String>,
    },
    /// List a user's secrets: names and field names, never values.
    List {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret, or one field of it.
    Delete {
        user: String,
        name: String,
        #[arg(long)]
        field: Option<String>,
    },
    /// Re-wrap every user's data key under a new master key (crash-safe; stop the hub first).
    RotateMasterKey,
}

#[derive(Args, Debug)]
pub struct McpConfigArgs {
    pub name: String,
    /// Hub URL (default: server.public_url, else http://BIND).
    #[arg(long)]
    pub url: Option<String>,
    /// Environment variable the client reads the token from.
    #[arg(long, default_value = "LODGE_TOKEN")]
    pub token_env: String,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only records about this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only records since this long ago (e.g. 1h) or since an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only records before this long ago (e.g. 80d) or before an RFC 3339 time: with --json,
    /// exports the records `[audit] retention` will prune next.
    #[arg(long)]
    pub until: Option<String>,
    /// Only one kind: auth_failure, tool_call, admin, sign_in, sign_in_refused, sign_out,
    /// deprovision or oauth.
    #[arg(long)]
    pub kind: Option<String>,
    /// At most this many records (the newest).
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Print {"checks": [...], "ready": bool} as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Token ids are URL-safe base64, so one in 32 begins with '-'; revoking it must not need
    /// `--` (a CI run once drew `-v7Nlfri` and clap took it for a flag).
    #[test]
    fn a_token_id_beginning_with_a_hyphen_can_be_revoked() {
        let cli = Cli::try_parse_from(["lodge", "token", "revoke", "-v7Nlfri"])
            .unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{cli:?}");
        assert!(shown.contains("-v7Nlfri"), "{shown}");
    }
}
