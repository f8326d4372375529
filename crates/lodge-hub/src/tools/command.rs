//! `run_command`: one shell command in the caller's room, with the profile's timeout
//! and output cap, and progress notifications while it runs. The command runs in the room;
//! this module only validates, applies the profile's bounds and relays progress.

use super::secrets::vault_error;
use super::{Tool, ToolError, files::reply, room_result};
use crate::caller::Caller;
use crate::context::{Notice, NoticeSink, Progress, RequestContext};
use crate::rooms::Rooms;
use async_trait::async_trait;
use lodge_protocol::{self as proto, Env, Op, OpResult};
use lodge_room::client::Event;
use lodge_vault::Vault;
use rmcp::model::CallToolResult;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Run a shell command in your room.
pub struct RunArgs {
    /// The command line, run by `/bin/sh -c` with your workspace as the working directory.
    command: String,
    /// Working directory relative to the workspace root.
    cwd: Option<String>,
    /// Seconds before the command and everything it started are killed (default and maximum
    /// come from your profile; see session_info).
    timeout_s: Option<f64>,
    /// Extra environment variables for this command.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Your secrets to expose to this command only, as environment variables: `NAME` gives
    /// every field as `NAME_FIELD` (upper case, `-` as `_`), `NAME.FIELD` one field. Their
    /// values are replaced by `***` in the output.
    #[serde(default)]
    secrets: Vec<String>,
}

pub struct RunCommand {
    pub rooms: Arc<Rooms>,
    pub vault: Arc<Vault>,
}

/// Secret values given to one command: env name and value, zeroized when dropped.
type Injected = Vec<(String, Zeroizing<String>)>;

/// Values shorter than this are not masked in output: masking `1` or `ab` would garble it
/// without hiding anything worth hiding.
const MIN_MASKED_LEN: usize = 4;

impl RunCommand {
    /// Reads the secrets a call asks for, as environment variables for its one command.
    async fn secret_env(&self, caller: &Caller, wanted: &[String]) -> Result<Injected, ToolError> {
        let mut out = Injected::new();
        for spec in wanted {
            let (name, field) = match spec.split_once('.') {
                Some((n, f)) => (n, Some(f)),
                None => (spec.as_str(), None),
            };
            let fields = match field {
                Some(f) => {
                    let v = self
                        .vault
                        .get_field(caller.user_id, name, f)
                        .await
                        .map_err(vault_error)?;
                    vec![(f.to_owned(), v)]
                }
                None => self
                    .vault
                    .get(caller.user_id, name)
                    .await
                    .map_err(vault_error)?
                    .into_iter()
                    .collect(),
            };
            for (f, v) in fields {
                out.push((env_name(name, &f), v));
            }
        }
        Ok(out)
    }

    fn op(&self, caller: &Caller, a: RunArgs, secrets: &Injected) -> Result<Op, ToolError> {
        let bad = |reason: String| ToolError::invalid(Self::NAME, reason);
        if a.command.trim().is_empty() {
            return Err(bad("command must not be empty".into()));
        }
        let mut env: Env = a.env.into_iter().map(|(k, v)| (k, v.into())).collect();
        for (var, value) in secrets {
            if env.insert(var.clone(), value.to_string().into()).is_some() {
                return Err(bad(format!(
                    "{var} is set both in env and by a secret; drop one of them"
                )));
            }
        }
        let profile = self.rooms.profile(caller);
        let timeout = super::profile_timeout(Self::NAME, profile, a.timeout_s)?;
        Ok(Op::RunCommand(proto::RunCommand {
            command: a.command,
            cwd: a.cwd,
            timeout_ms: timeout.as_millis().max(1) as u64,
            env,
            output_cap: profile.output_cap,
        }))
    }
}

/// `github` + `token` → `GITHUB_TOKEN`.
fn env_name(secret: &str, field: &str) -> String {
    format!("{secret}_{field}")
        .to_ascii_uppercase()
        .replace('-', "_")
}

/// Replaces every occurrence of a secret value in command output by `***`, as CI systems do.
pub(super) fn mask(output: &mut String, value: &str) {
    if value.len() >= MIN_MASKED_LEN && output.contains(value) {
        *output = output.replace(value, "***");
    }
}

/// Relays the room's progress events to the MCP caller's progress sink, if it asked for one.
fn relay(sink: Option<NoticeSink>) -> Option<mpsc::UnboundedSender<Event>> {
    let sink = sink?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if let Event::Progress {
                message,
                progress,
                total,
            } = event
            {
                let update = Progress {
                    progress: progress.unwrap_or(0.0),
                    total,
                    message: Some(message),
                };
                if sink.send(Notice::Progress(update)).is_err() {
                    break;
                }
            }
        }
    });
    Some(tx)
}

#[async_trait]
impl Tool for RunCommand {
    const NAME: &'static str = "run_command";
    const DESCRIPTION: &'static str = "Run a shell command in your private room (no network \
        unless your profile allows it). Returns exit_code, stdout, stderr (each capped, with \
        truncation flags), timed_out and duration_ms.";
    type Args = RunArgs;

    async fn call(&self, args: RunArgs, cx: &RequestContext) -> Result<CallToolResult, ToolError> {
        let secrets = self.secret_env(&cx.caller, &args.secrets).await?;
        let op = self.op(&cx.caller, args, &secrets)?;
        let events = relay(cx.progress().cloned());
        let mut result = room_result(self.rooms.call(&cx.caller, op, events).await)?;
        if let OpResult::Command { stdout, stderr, .. } = &mut result {
            for (_, value) in &secrets {
                mask(stdout, value);
                mask(stderr, value);
            }
        }
        let mut value = reply(&result);
        // SIGKILL that was not the timeout is nearly always the room's OOM killer; `sh -c`
        // reports a killed child as 128 + 9.
        let killed = |signal, exit_code| signal == Some(9) || exit_code == Some(137);
        if let OpResult::Command {
            signal,
            exit_code,
            timed_out: false,
            ..
        } = result
            && killed(signal, exit_code)
            && let Some(o) = value.as_object_mut()
        {
            o.insert(
                "note".into(),
                "killed by SIGKILL: usually the room's memory limit (see session_info)".into(),
            );
        }
        Ok(CallToolResult::structured(value))
    }
}
