//! Upstream MCP servers (`[servers.NAME]`): what an operator declares so that each user gets a
//! private instance of an ordinary stdio MCP server. Pure data and validation: nothing here
//! starts a process or reads a secret.

use crate::duration::serde_human;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Longest server name or prefix (it prefixes every tool name as `{prefix}__{tool}`).
const MAX_SERVER_NAME: usize = 32;
/// Longest secret or field name (the vault's rule).
pub const MAX_SECRET_NAME: usize = 64;

/// One `[servers.NAME]` table.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default)]
    pub description: String,
    /// argv of the server, started inside the user's room; `{workspace}` expands to the room's
    /// workspace path.
    pub command: Vec<String>,
    /// Environment of the server: literal values, or `secret:NAME.FIELD` resolved per user.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Profile whose `command_timeout` bounds each request and whose `network = "host"` gives
    /// the rooms of the users it is enabled for the host network. Default: the user's own.
    #[serde(default)]
    pub profile: Option<String>,
    /// An instance with nothing in flight for this long is stopped. Default 10 minutes.
    #[serde(default = "default_idle", with = "serde_human")]
    pub idle_timeout: Duration,
    /// How long an instance may take to start and answer `initialize`. Default 30 seconds.
    #[serde(default = "default_start", with = "serde_human")]
    pub start_timeout: Duration,
    /// Who gets this server: user names, `"group:NAME"` for members of the identity
    /// provider's group NAME (as of their last sign-in or recheck), or `"*"` for everyone (the
    /// default).
    #[serde(default = "everyone")]
    pub enabled_for: Vec<String>,
    #[serde(default)]
    pub tools: ToolFilter,
    /// What the server's tool and prompt names are shown under (`{prefix}__{name}`) and its
    /// resource URIs (`lodge://{prefix}/{uri}`). Default: the server's name. `""` shows them
    /// unchanged; at most one server may have it.
    #[serde(default)]
    pub prefix: Option<String>,
}

fn default_idle() -> Duration {
    Duration::from_secs(10 * 60)
}

fn default_start() -> Duration {
    Duration::from_secs(30)
}

fn everyone() -> Vec<String> {
    vec!["*".to_owned()]
}

/// Which of a server's tools users see: `allow` (when given) keeps only the listed names,
/// `deny` removes names. Entries are exact names or prefixes ending in `*`.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolFilter {
    pub allow: Option<Vec<String>>,
    pub deny: Vec<String>,
}

impl ToolFilter {
    pub fn permits(&self, tool: &str) -> bool {
        let hit = |patterns: &[String]| patterns.iter().any(|p| pattern_matches(p, tool));
        self.allow.as_deref().is_none_or(hit) && !hit(&self.deny)
    }
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// An environment value of a server.
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum EnvValue {
    Literal(String),
    /// `secret:NAME.FIELD`: the field of the user's own secret.
    Secret {
        name: String,
        field: String,
    },
}

impl fmt::Debug for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Literal values may be credentials an operator put in the file: never print them.
        match self {
            EnvValue::Literal(v) => write!(f, "<literal, {} bytes>", v.len()),
            EnvValue::Secret { name, field } => write!(f, "secret:{name}.{field}"),
        }
    }
}

impl TryFrom<String> for EnvValue {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let Some(reference) = s.strip_prefix("secret:") else {
            return Ok(EnvValue::Literal(s));
        };
        let shown: String = reference.chars().take(80).collect();
        let (name, field) = reference.split_once('.').ok_or_else(|| {
            format!(
                "secret reference {shown:?} must be secret:NAME.FIELD (e.g. secret:github.token)"
            )
        })?;
        if !valid_secret_name(name) || !valid_secret_name(field) {
            return Err(format!(
                "secret reference {shown:?}: secret and field names start with a letter and \
                 contain only letters, digits, '_' and '-' (at most {MAX_SECRET_NAME})"
            ));
        }
        Ok(EnvValue::Secret {
            name: name.to_owned(),
            field: field.to_owned(),
        })
    }
}

impl From<EnvValue> for String {
    fn from(v: EnvValue) -> String {
        match v {
            EnvValue::Literal(s) => s,
            EnvValue::Secret { name, field } => format!("secret:{name}.{field}"),
        }
    }
}

/// The vault's rule for secret and field names: `^[A-Za-z][A-Za-z0-9_-]{0,63}$`.
pub fn valid_secret_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= MAX_SECRET_NAME
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A server name: like a user name, without `__` (the separator in `{server}__{tool}`).
pub fn valid_server_name(s: &str) -> bool {
    crate::UserName::parse(s).is_ok() && s.len() <= MAX_SERVER_NAME && !s.contains("__")
}

fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `enabled_for` entries naming a group of the identity provider start with this.
pub const GROUP_PREFIX: &str = "group:";

impl UpstreamConfig {
    /// The prefix of server `name`'s tool and prompt names and resource URIs: the configured
    /// one, else the name. Empty: shown unchanged.
    pub fn prefix<'a>(&'a self, name: &'a str) -> &'a str {
        self.prefix.as_deref().unwrap_or(name)
    }

    /// Is the server offered to `user`, who is in the provider's `groups`?
    pub fn enabled_for(&self, user: &str, groups: &[String]) -> bool {
        self.enabled_for
            .iter()
            .any(|u| match u.strip_prefix(GROUP_PREFIX) {
                Some(group) => groups.iter().any(|g| g == group),
                None => u == "*" || u == user,
            })
    }

    /// Does `enabled_for` name a group (so a caller's groups must be looked up)?
    pub fn names_groups(&self) -> bool {
        self.enabled_for.iter().any(|u| u.starts_with(GROUP_PREFIX))
    }

    /// The secrets the server's environment needs, as (name, field).
    pub fn secrets(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env.values().filter_map(|v| match v {
            EnvValue::Secret { name, field } => Some((name.as_str(), field.as_str())),
            EnvValue::Literal(_) => None,
        })
    }

    pub(crate) fn validate(
        &self,
        name: &str,
        has_profile: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        let at = format!("servers.{name}");
        if !valid_server_name(name) {
            return Err(format!(
                "server name {name:?} is invalid: use the form of user names (a-z, 0-9, '_', '-', \
                 starting with a letter, at most {MAX_SERVER_NAME}) without \"__\""
            ));
        }
        match self.command.first() {
            None => {
                return Err(format!(
                    "{at}.command is empty: give the server's argv, e.g. [\"uvx\", \"mcp-server-git\"]"
                ));
            }
            Some(exe) if exe.is_empty() => return Err(format!("{at}.command[0] is empty")),
            Some(_) => {}
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(format!("{at}.command contains a NUL byte"));
        }
        for key in self.env.keys() {
            if !valid_env_name(key) {
                return Err(format!(
                    "{at}.env: {key:?} is not a valid environment variable name"
                ));
            }
        }
        if let Some(p) = self.prefix.as_deref()
            && !p.is_empty()
            && !valid_server_name(p)
        {
            return Err(format!(
                "{at}.prefix {p:?} is invalid: use \"\" (names unchanged) or the form of server names \
                 (a-z, 0-9, '_', '-', starting with a letter, at most {MAX_SERVER_NAME}) without \"__\""
            ));
        }
        if let Some(p) = &self.profile
            && !has_profile(p)
        {
            return Err(format!(
                "{at}.profile: no profile named {p:?} (declare [profiles.{p}])"
            ));
        }
        for user in &self.enabled_for {
            let ok = match user.strip_prefix(GROUP_PREFIX) {
                Some(group) => {
                    !group.is_empty() && group.len() <= 256 && !group.chars().any(char::is_control)
                }
                None => user == "*" || crate::UserName::parse(user).is_ok(),
            };
            if !ok {
                return Err(format!(
                    "{at}.enabled_for: {user:?} is neither a user name, \"group:NAME\" nor \"*\""
                ));
            }
        }
        Ok(())
    }
}

/// Refuses servers whose names could not tell them apart: two with the same prefix (a prefix
/// left out is the server's name), or more than one with the empty prefix. The error names both.
pub fn validate_prefixes(servers: &BTreeMap<String, UpstreamConfig>) -> Result<(), String> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, server) in servers {
        let prefix = server.prefix(name);
        if let Some(other) = seen.insert(prefix, name) {
            return Err(if prefix.is_empty() {
                format!(
                    "servers.{other} and servers.{name} both have prefix = \"\": at most one server's \
                     names can be shown unchanged; give the other a prefix"
                )
            } else {
                format!(
                    "servers.{other} and servers.{name} both show their tools as {prefix}__*: give one \
                     of them another prefix"
                )
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<UpstreamConfig, String> {
        let c: UpstreamConfig = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        c.validate("git", |p| p == "default")?;
        Ok(c)
    }

    #[test]
    fn full_table_parses() {
        let c = parse(
            r#"
            command = ["mcp-server-git", "--repository", "{workspace}"]
            env = { GH = "secret:github.token", MODE = "plain" }
            profile = "default"
            idle_timeout = "2m"
            enabled_for = ["alice"]
            tools = { allow = ["git_*"], deny = ["git_push"] }
            "#,
        )
        .unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.secrets().collect::<Vec<_>>(), vec![("github", "token")]);
        assert_eq!(c.env["MODE"], EnvValue::Literal("plain".into()));
        assert!(c.enabled_for("alice", &[]) && !c.enabled_for("bob", &[]));
        assert!(c.tools.permits("git_status"));
        assert!(!c.tools.permits("git_push"));
        assert!(!c.tools.permits("shell"));
    }

    #[test]
    fn groups_enable_their_members_only() {
        let c = parse(
            r#"command = ["x"]
            enabled_for = ["group:ml team", "carol"]"#,
        )
        .unwrap();
        assert!(c.names_groups());
        let ml = vec!["staff".to_owned(), "ml team".to_owned()];
        assert!(c.enabled_for("alice", &ml));
        assert!(!c.enabled_for("alice", &["staff".to_owned()]));
        assert!(c.enabled_for("carol", &[]));
        // A user named like the group is not its member.
        assert!(!c.enabled_for("group", &[]));
        assert!(!parse(r#"command = ["x"]"#).unwrap().names_groups());
    }

    #[test]
    fn defaults_enable_everyone_and_every_tool() {
        let c = parse(r#"command = ["x"]"#).unwrap();
        assert!(c.enabled_for("anyone", &[]));
        assert!(c.tools.permits("whatever"));
        assert_eq!(c.idle_timeout, Duration::from_secs(600));
    }

    #[test]
    fn bad_tables_name_the_problem() {
        for (text, needle) in [
            (r#"command = []"#, "command is empty"),
            (
                r#"command = ["x"]
                env = { T = "secret:github" }"#,
                "secret:NAME.FIELD",
            ),
            (
                r#"command = ["x"]
                env = { T = "secret:9bad.f" }"#,
                "secret and field names",
            ),
            (
                r#"command = ["x"]
                env = { "1X" = "v" }"#,
                "not a valid environment variable",
            ),
            (
                r#"command = ["x"]
                profile = "gpu""#,
                "no profile named \"gpu\"",
            ),
            (
                r#"command = ["x"]
                enabled_for = ["@admins"]"#,
                "neither a user name, \"group:NAME\"",
            ),
            (
                r#"command = ["x"]
                enabled_for = ["group:"]"#,
                "neither a user name, \"group:NAME\"",
            ),
            (
                r#"command = ["x"]
                bogus = 1"#,
                "bogus",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let c: UpstreamConfig = toml::from_str(r#"command = ["x"]"#).unwrap();
        for bad in ["a__b", "Git", "x".repeat(33).as_str()] {
            assert!(c.validate(bad, |_| true).is_err(), "{bad}");
        }
    }

    fn servers(tables: &[(&str, &str)]) -> Result<BTreeMap<String, UpstreamConfig>, String> {
        let mut all = BTreeMap::new();
        for (name, text) in tables {
            let c: UpstreamConfig = toml::from_str(text).map_err(|e| e.message().to_owned())?;
            c.validate(name, |_| true)?;
            all.insert((*name).to_owned(), c);
        }
        validate_prefixes(&all)?;
        Ok(all)
    }

    #[test]
    fn prefixes_default_to_the_name_and_may_be_empty() {
        let all = servers(&[
            ("git", r#"command = ["x"]"#),
            (
                "fixture",
                r#"command = ["x"]
            prefix = """#,
            ),
            (
                "gh",
                r#"command = ["x"]
            prefix = "github""#,
            ),
        ])
        .unwrap();
        assert_eq!(all["git"].prefix("git"), "git");
        assert_eq!(all["fixture"].prefix("fixture"), "");
        assert_eq!(all["gh"].prefix("gh"), "github");
    }

    #[test]
    fn clashing_prefixes_are_refused_naming_both_servers() {
        for (tables, needles) in [
            (
                vec![
                    ("a", "command = [\"x\"]\nprefix = \"\""),
                    ("b", "command = [\"x\"]\nprefix = \"\""),
                ],
                ["servers.a", "servers.b", "prefix = \"\""],
            ),
            (
                vec![
                    ("a", "command = [\"x\"]\nprefix = \"same\""),
                    ("b", "command = [\"x\"]\nprefix = \"same\""),
                ],
                ["servers.a", "servers.b", "same__*"],
            ),
            // A prefix equal to another server's name clashes with that server's default.
            (
                vec![
                    ("git", "command = [\"x\"]"),
                    ("mine", "command = [\"x\"]\nprefix = \"git\""),
                ],
                ["servers.git", "servers.mine", "git__*"],
            ),
        ] {
            let e = servers(&tables).unwrap_err();
            for needle in needles {
                assert!(e.contains(needle), "{tables:?}: {e}");
            }
        }
        for bad in ["Git", "a__b", "9x", "has space", &"x".repeat(33)] {
            let text = format!("command = [\"x\"]\nprefix = {bad:?}");
            let e = servers(&[("s", &text)]).unwrap_err();
            assert!(
                e.contains("servers.s.prefix") && e.contains("invalid"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn debug_never_shows_literal_values() {
        let v = EnvValue::Literal("hunter2-password".into());
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
