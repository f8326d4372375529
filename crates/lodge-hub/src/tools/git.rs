//! Git tools: real `git` in the caller's room, with the caller's identity and a token from one
//! of their secrets that reaches only the git process needing it (its environment, read by a
//! credential helper; never argv, a file or `.git/config`). The room runs git, never the hub.

use std::sync::Arc;

use lodge_protocol::{Env, Exec, Op, OpResult};
use lodge_vault::Vault;
use rmcp::model::CallToolResult;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::command::mask;
use super::secrets::vault_error;
use super::{Registry, Tool, ToolError, profile_timeout, room_result, structured_with_text};
use crate::caller::Caller;
use crate::rooms::Rooms;

/// Where `git_configure` keeps the name of the user's token secret: their global git config
/// (`/workspace/.gitconfig`, as HOME is the workspace), beside `user.name` and `user.email`.
const TOKEN_SECRET_KEY: &str = "lodge.tokenSecret";
/// The credential helper: answers `get` from the environment of the git process it serves.
/// It names variables only; the token itself is never on a command line.
const CREDENTIAL_HELPER: &str = r#"!f() { test "$1" = get && printf 'username=%s\npassword=%s\n' "$LODGE_GIT_USER" "$LODGE_GIT_TOKEN"; }; f"#;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Set your git identity, and which of your secrets holds your token for HTTPS remotes.
pub struct ConfigureArgs {
    /// Author name for your commits.
    name: String,
    /// Author email for your commits.
    email: String,
    /// One of your secrets (see secret_put) with a field `token` (and optionally `user`),
    /// used for HTTPS remotes. Pass an empty string to stop using one.
    token_secret: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Clone a repository into your workspace.
pub struct CloneArgs {
    /// The remote URL (https://…); put tokens in a secret (git_configure), never in the URL.
    url: String,
    /// Directory to clone into, relative to the workspace (default: from the URL).
    path: Option<String>,
    branch: Option<String>,
    /// Only the last N commits.
    depth: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// A repository in your workspace.
pub struct RepoArgs {
    /// The repository's directory, relative to the workspace.
    path: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Show changes: the working tree against the index, or (staged) the index against HEAD.
pub struct DiffArgs {
    path: String,
    #[serde(default)]
    staged: bool,
    /// Limit the diff to these files (relative to the repository).
    #[serde(default)]
    files: Vec<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Show recent commits.
pub struct LogArgs {
    path: String,
    /// At most this many (default 20).
    limit: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Commit changes.
pub struct CommitArgs {
    path: String,
    message: String,
    /// Files to stage first (relative to the repository); default: every change.
    #[serde(default)]
    files: Vec<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Push or pull a branch.
pub struct RemoteArgs {
    path: String,
    /// Default "origin".
    remote: Option<String>,
    /// Default: the current branch.
    branch: Option<String>,
}

/// What every git tool uses: the rooms git runs in and the vault holding the token.
pub struct Git {
    rooms: Arc<Rooms>,
    vault: Arc<Vault>,
}

/// The credentials of one git process: a user name and the token, zeroized when dropped.
struct Credentials {
    secret: String,
    user: Zeroizing<String>,
    token: Zeroizing<String>,
}

/// What a git run printed.
struct Ran {
    ok: bool,
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

impl Git {
    /// Runs `git ARGS` in the room, in `cwd` (workspace-relative), with `creds` for remotes.
    /// The arguments go to git as they are: no shell sees them.
    async fn git(
        &self,
        caller: &Caller,
        cwd: Option<&str>,
        args: &[&str],
        creds: Option<&Credentials>,
    ) -> Result<Ran, ToolError> {
        let profile = self.rooms.profile(caller);
        let timeout = profile_timeout("git", profile, None)?;
        let mut argv = vec!["git".to_owned()];
        let mut env = Env::new();
        env.insert("GIT_TERMINAL_PROMPT".to_owned(), "0".into());
        if let Some(c) = creds {
            // `credential.helper=` first clears any helper configured elsewhere.
            argv.extend(["-c", "credential.helper=", "-c"].map(str::to_owned));
            argv.push(format!("credential.helper={CREDENTIAL_HELPER}"));
            env.insert("LODGE_GIT_USER".to_owned(), c.user.as_str().into());
            env.insert("LODGE_GIT_TOKEN".to_owned(), c.token.as_str().into());
        }
        argv.extend(args.iter().map(|arg| (*arg).to_owned()));
        let op = Op::Exec(Exec {
            argv,
            cwd: cwd.map(str::to_owned),
            env,
            timeout_ms: timeout.as_millis().max(1) as u64,
            output_cap: profile.output_cap,
        });
        let result = room_result(self.rooms.call(caller, op, None).await)?;
        let OpResult::Command {
            exit_code,
            mut stdout,
            mut stderr,
            timed_out,
            ..
        } = result
        else {
            return Err(ToolError::Failed(
                "the room answered git with something other than a command result".into(),
            ));
        };
        if let Some(c) = creds {
            mask(&mut stdout, &c.token);
            mask(&mut stderr, &c.token);
        }
        Ok(Ran {
            ok: exit_code == Some(0) && !timed_out,
            exit_code,
            stdout,
            stderr,
            timed_out,
        })
    }

    /// The credentials named by the repository's (or the user's) `lodge.tokenSecret`, if any.
    async fn credentials(
        &self,
        caller: &Caller,
        cwd: Option<&str>,
    ) -> Result<Option<Credentials>, ToolError> {
        let ran = self
            .git(caller, cwd, &["config", "--get", TOKEN_SECRET_KEY], None)
            .await?;
        let secret = ran.stdout.trim().to_owned();
        if !ran.ok || secret.is_empty() {
            return Ok(None);
        }
        let fields = self.vault.get(caller.user_id, &secret).await.map_err(|e| {
            ToolError::Failed(format!(
                "the git token secret {secret:?} (set by git_configure): {e}"
            ))
        })?;
        let token = fields.get("token").cloned().ok_or_else(|| {
            ToolError::Failed(format!(
                "your secret {secret:?} has no field `token`; store it with secret_put {{\"name\": \"{secret}\", \"fields\": {{\"token\": \"…\"}}}}"
            ))
        })?;
        let user = fields
            .get("user")
            .cloned()
            .unwrap_or_else(|| Zeroizing::new(caller.user.as_str().to_owned()));
        Ok(Some(Credentials {
            secret,
            user,
            token,
        }))
    }

    async fn configure(
        &self,
        caller: &Caller,
        a: ConfigureArgs,
    ) -> Result<CallToolResult, ToolError> {
        for (what, value) in [("name", &a.name), ("email", &a.email)] {
            if value.trim().is_empty() || value.contains('\n') {
                return Err(ToolError::invalid(
                    GitConfigure::NAME,
                    format!("{what} must be one non-empty line"),
                ));
            }
        }
        let secret = a.token_secret.filter(|s| !s.is_empty());
        if let Some(s) = &secret {
            let fields = self
                .vault
                .get(caller.user_id, s)
                .await
                .map_err(vault_error)?;
            if !fields.contains_key("token") {
                return Err(ToolError::Failed(format!(
                    "your secret {s:?} has no field `token`; add one with secret_put"
                )));
            }
        }
        let steps: Vec<Vec<&str>> = vec![
            vec!["config", "--global", "user.name", &a.name],
            vec!["config", "--global", "user.email", &a.email],
        ];
        for step in &steps {
            self.checked(caller, None, step, None).await?;
        }
        match &secret {
            Some(s) => {
                self.checked(
                    caller,
                    None,
                    &["config", "--global", TOKEN_SECRET_KEY, s],
                    None,
                )
                .await?;
            }
            None => {
                // Exit 5: the key was not set, which is what we want.
                let _ = self
                    .git(
                        caller,
                        None,
                        &["config", "--global", "--unset", TOKEN_SECRET_KEY],
                        None,
                    )
                    .await?;
            }
        }
        let text = match &secret {
            Some(s) => format!(
                "git identity: {} <{}>; HTTPS token from your secret {s:?}",
                a.name, a.email
            ),
            None => format!("git identity: {} <{}>; no token secret", a.name, a.email),
        };
        Ok(structured_with_text(
            json!({"name": a.name, "email": a.email, "token_secret": secret}),
            text,
        ))
    }

    /// Runs git and turns a failure into an error that says what happened and what to do.
    async fn checked(
        &self,
        caller: &Caller,
        cwd: Option<&str>,
        args: &[&str],
        creds: Option<&Credentials>,
    ) -> Result<Ran, ToolError> {
        let ran = self.git(caller, cwd, args, creds).await?;
        if ran.ok {
            return Ok(ran);
        }
        Err(ToolError::Failed(explain(&ran, cwd, creds)))
    }

    /// Runs git in the repository at `path` with the credentials it names (push, pull).
    async fn with_remote(
        &self,
        caller: &Caller,
        path: &str,
        argv: &[&str],
    ) -> Result<CallToolResult, ToolError> {
        let creds = self.credentials(caller, Some(path)).await?;
        let ran = self
            .checked(caller, Some(path), argv, creds.as_ref())
            .await?;
        Ok(output(ran))
    }
}

/// Adds the git tools, in the order `tools/list` shows them.
pub fn register(registry: Registry, rooms: &Arc<Rooms>, vault: &Arc<Vault>) -> Registry {
    let git = Arc::new(Git {
        rooms: rooms.clone(),
        vault: vault.clone(),
    });
    registry
        .tool(GitConfigure { git: git.clone() })
        .tool(GitClone { git: git.clone() })
        .tool(GitStatus { git: git.clone() })
        .tool(GitDiff { git: git.clone() })
        .tool(GitLog { git: git.clone() })
        .tool(GitCommit { git: git.clone() })
        .tool(GitPush { git: git.clone() })
        .tool(GitPull { git })
}

tool!(
    GitConfigure { git: Arc<Git> },
    "git_configure",
    "Set your git identity (name, email) and the secret holding your token for HTTPS remotes. The token stays in your vault; git gets it only for the one command that needs it.",
    |this, a, cx: ConfigureArgs| this.git.configure(&cx.caller, a).await
);

tool!(
    GitClone { git: Arc<Git> },
    "git_clone",
    "Clone a repository into your workspace, with your token for HTTPS remotes.",
    |this, a, cx: CloneArgs| {
        let (git, caller) = (&this.git, &cx.caller);
        check_url(&a.url)?;
        let depth = a.depth.map(|d| d.to_string());
        let mut argv = vec!["clone"];
        if let Some(b) = &a.branch {
            argv.extend(["--branch", b]);
        }
        if let Some(d) = &depth {
            argv.extend(["--depth", d]);
        }
        argv.extend(["--", &a.url]);
        if let Some(p) = &a.path {
            argv.push(p);
        }
        let creds = git.credentials(caller, None).await?;
        let ran = git.checked(caller, None, &argv, creds.as_ref()).await?;
        Ok(structured_with_text(
            json!({"url": a.url, "path": a.path}),
            format!("cloned {}\n{}", a.url, ran.stderr.trim()),
        ))
    }
);

tool!(
    GitStatus { git: Arc<Git> },
    "git_status",
    "Show the branch and changed files of a repository in your workspace.",
    |this, a, cx: RepoArgs| {
        let argv = ["status", "--branch", "--porcelain=v1"];
        let ran = this.git.checked(&cx.caller, Some(&a.path), &argv, None).await?;
        Ok(output(ran))
    }
);

tool!(
    GitDiff { git: Arc<Git> },
    "git_diff",
    "Show the changes of a repository (working tree, or staged).",
    |this, a, cx: DiffArgs| {
        let mut argv = vec!["diff"];
        if a.staged {
            argv.push("--cached");
        }
        argv.push("--");
        argv.extend(a.files.iter().map(String::as_str));
        let ran = this.git.checked(&cx.caller, Some(&a.path), &argv, None).await?;
        Ok(output(ran))
    }
);

tool!(
    GitLog { git: Arc<Git> },
    "git_log",
    "Show recent commits of a repository.",
    |this, a, cx: LogArgs| {
        let limit = a.limit.unwrap_or(20).clamp(1, 1000).to_string();
        let argv = [
            "log",
            "-n",
            &limit,
            "--date=iso",
            "--pretty=format:%h %ad %an <%ae>%n    %s",
        ];
        let ran = this.git.checked(&cx.caller, Some(&a.path), &argv, None).await?;
        Ok(output(ran))
    }
);

tool!(
    GitCommit { git: Arc<Git> },
    "git_commit",
    "Stage changes (all, or the files given) and commit them with your identity.",
    |this, a, cx: CommitArgs| {
        let (git, caller) = (&this.git, &cx.caller);
        if a.message.trim().is_empty() {
            return Err(ToolError::invalid(Self::NAME, "message must not be empty"));
        }
        let head = git
            .git(caller, Some(&a.path), &["symbolic-ref", "-q", "HEAD"], None)
            .await?;
        if head.exit_code == Some(1) {
            return Err(ToolError::Failed(format!(
                "{} is on a detached HEAD (no branch), so a commit would be lost; create a branch first: run_command {{\"command\": \"git switch -c NAME\", \"cwd\": \"{}\"}}",
                a.path, a.path
            )));
        }
        let mut add = vec!["add"];
        if a.files.is_empty() {
            add.push("-A");
        } else {
            add.push("--");
            add.extend(a.files.iter().map(String::as_str));
        }
        git.checked(caller, Some(&a.path), &add, None).await?;
        let ran = git
            .checked(caller, Some(&a.path), &["commit", "-m", &a.message], None)
            .await?;
        Ok(output(ran))
    }
);

tool!(
    GitPush { git: Arc<Git> },
    "git_push",
    "Push a branch to its remote with your token.",
    |this, a, cx: RemoteArgs| {
        let remote = a.remote.as_deref().unwrap_or("origin");
        let branch = a.branch.as_deref().unwrap_or("HEAD");
        let argv = ["push", "--porcelain", remote, branch];
        this.git.with_remote(&cx.caller, &a.path, &argv).await
    }
);

tool!(
    GitPull { git: Arc<Git> },
    "git_pull",
    "Pull (fetch and merge) a branch from its remote with your token.",
    |this, a, cx: RemoteArgs| {
        let remote = a.remote.as_deref().unwrap_or("origin");
        let mut argv = vec!["pull", "--no-rebase", "--no-edit", remote];
        argv.extend(a.branch.as_deref());
        this.git.with_remote(&cx.caller, &a.path, &argv).await
    }
);

/// A URL git may fetch: no credentials inside it (they would land in `.git/config`), and no
/// transport that runs commands.
fn check_url(url: &str) -> Result<(), ToolError> {
    let lower = url.to_ascii_lowercase();
    if let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    {
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err(ToolError::invalid(
                "git_clone",
                "the URL carries credentials; they would be stored in .git/config. Put the token in a secret and name it with git_configure token_secret",
            ));
        }
    }
    if lower.starts_with("ext::") || lower.starts_with("fd::") || url.starts_with('-') {
        return Err(ToolError::invalid(
            "git_clone",
            format!("unsupported URL {url:?}: use https://, ssh:// or a path"),
        ));
    }
    Ok(())
}

/// What went wrong, in words a user can act on, from git's own messages.
fn explain(ran: &Ran, cwd: Option<&str>, creds: Option<&Credentials>) -> String {
    let err = ran.stderr.trim();
    let out = ran.stdout.trim();
    let all = format!("{err}\n{out}");
    let lower = all.to_ascii_lowercase();
    let repo = cwd.unwrap_or(".");
    let why = if ran.timed_out {
        "git did not finish within your profile's command_timeout".to_owned()
    } else if lower.contains("authentication failed")
        || lower.contains("could not read username")
        || lower.contains("could not read password")
        || lower.contains("the requested url returned error: 403")
        || lower.contains("the requested url returned error: 401")
    {
        match creds {
            Some(c) => format!(
                "the remote refused your credentials (the token in your secret {:?}): check it is right and allowed on this repository, then store it again with secret_put",
                c.secret
            ),
            None => "the remote asks for credentials and you have none configured: store a token with secret_put and name it with git_configure token_secret".to_owned(),
        }
    } else if lower.contains("[rejected]")
        || lower.contains("non-fast-forward")
        || lower.contains("fetch first")
    {
        "push rejected: the remote has commits you do not have. Run git_pull, resolve any conflict, then git_push again".to_owned()
    } else if lower.contains("conflict") && lower.contains("automatic merge failed") {
        let files: Vec<&str> = all
            .lines()
            .filter_map(|l| l.split_once("Merge conflict in ").map(|(_, f)| f.trim()))
            .collect();
        format!(
            "merge conflict in {}: edit the files to resolve the <<<<<<< markers (fs_read, fs_edit), then git_commit",
            if files.is_empty() {
                "some files".to_owned()
            } else {
                files.join(", ")
            }
        )
    } else if lower.contains("nothing to commit") || lower.contains("no changes added to commit") {
        "nothing to commit: the working tree has no changes".to_owned()
    } else if lower.contains("not currently on a branch") || lower.contains("detached head") {
        format!("{repo} is on a detached HEAD; switch to a branch first (git switch NAME)")
    } else if lower.contains("could not resolve host")
        || lower.contains("failed to connect")
        || lower.contains("couldn't connect")
        || lower.contains("connection refused")
        || lower.contains("network is unreachable")
    {
        "the remote is not reachable from your room. Rooms have no network unless your profile has network = \"host\" (ask the operator; see docs/configuration.md)".to_owned()
    } else if lower.contains("repository not found")
        || lower.contains("the requested url returned error: 404")
        || lower.contains("does not appear to be a git repository")
    {
        "the remote has no repository at that URL: check the URL (a host may also answer this way for a private repository your token cannot see)".to_owned()
    } else if lower.contains("already exists and is not an empty directory") {
        "the clone's target directory already exists and is not empty: pass another path, or remove it with fs_delete".to_owned()
    } else if lower.contains("not a git repository") {
        format!("{repo} is not a git repository: clone one with git_clone, or run_command git init")
    } else {
        format!("git failed (exit code {:?})", ran.exit_code)
    };
    let tail: String = err
        .lines()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    if tail.is_empty() {
        why
    } else {
        format!("{why}\ngit said:\n{tail}")
    }
}

fn output(ran: Ran) -> CallToolResult {
    let text = if ran.stdout.trim().is_empty() {
        ran.stderr.trim().to_owned()
    } else {
        ran.stdout.clone()
    };
    structured_with_text(
        json!({"exit_code": ran.exit_code, "stdout": ran.stdout, "stderr": ran.stderr}),
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_credentials_or_command_transports_are_refused() {
        assert!(check_url("https://github.com/a/b.git").is_ok());
        assert!(check_url("https://user:tok@github.com/a/b.git").is_err());
        assert!(check_url("https://tok@github.com/a/b.git").is_err());
        assert!(check_url("ext::sh -c touch% /tmp/x").is_err());
        assert!(check_url("--upload-pack=touch /tmp/x").is_err());
        assert!(check_url("https://github.com/a/b@c.git").is_ok());
    }

    #[test]
    fn errors_users_meet_are_named_with_the_fix() {
        let failed = |stderr: &str| Ran {
            ok: false,
            exit_code: Some(128),
            stdout: String::new(),
            stderr: stderr.to_owned(),
            timed_out: false,
        };
        let cases = [
            (
                "remote: Repository not found.\nfatal: repository 'https://h/a/b.git/' not found",
                "no repository at that URL",
            ),
            (
                "fatal: unable to access 'http://h/x/': The requested URL returned error: 404",
                "no repository at that URL",
            ),
            (
                "fatal: destination path 'b' already exists and is not an empty directory.",
                "already exists and is not empty",
            ),
            (
                "fatal: unable to access 'https://h/': Could not resolve host: h",
                "network = \"host\"",
            ),
            (
                "fatal: not a git repository (or any of the parent directories): .git",
                "is not a git repository",
            ),
            ("something new", "git failed (exit code Some(128))"),
        ];
        for (stderr, expected) in cases {
            let text = explain(&failed(stderr), Some("b"), None);
            assert!(text.contains(expected), "{stderr:?} gave {text:?}");
            assert!(text.ends_with(stderr.lines().last().unwrap_or_default()));
        }
    }

    #[test]
    fn the_helper_names_variables_only() {
        assert!(CREDENTIAL_HELPER.contains("$LODGE_GIT_TOKEN"));
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{} get", CREDENTIAL_HELPER.trim_start_matches('!')))
            .env("LODGE_GIT_USER", "u")
            .env("LODGE_GIT_TOKEN", "t0k")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "username=u\npassword=t0k\n"
        );
    }
}
