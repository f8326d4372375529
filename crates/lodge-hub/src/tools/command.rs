//! `run_command` (SPEC §5): one shell command in the caller's room, with the profile's timeout
//! and output cap, and progress notifications while it runs. The command runs in the room;
//! this module only validates, applies the profile's bounds and relays progress.

use super::{
    CallContext, Progress, ToolError, ToolSet, define, files::reply, parse_args, room_result,
};
use crate::caller::Caller;
use crate::rooms::Rooms;
use async_trait::async_trait;
use lodge_room::client::Event;
use lodge_room::protocol::{Op, OpResult};
use rmcp::model::{CallToolResult, JsonObject, Tool};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Run a shell command in your room.
struct RunArgs {
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
    /// Names of your secrets to expose to this command as environment variables.
    #[serde(default)]
    secrets: Vec<String>,
}

pub struct CommandTools {
    rooms: Arc<Rooms>,
    tools: Vec<Tool>,
}

impl CommandTools {
    pub fn new(rooms: Arc<Rooms>) -> Self {
        let tools = vec![define::<RunArgs>(
            "run_command",
            "Run a shell command in your private room (no network unless your profile allows it). \
             Returns exit_code, stdout, stderr (each capped, with truncation flags), timed_out \
             and duration_ms.",
        )];
        Self { rooms, tools }
    }

    fn op(&self, caller: &Caller, a: RunArgs) -> Result<Op, ToolError> {
        let bad = |reason: String| ToolError::InvalidArguments {
            tool: "run_command".into(),
            reason,
        };
        if a.command.trim().is_empty() {
            return Err(bad("command must not be empty".into()));
        }
        if let Some(name) = a.secrets.first() {
            let shown: String = name.chars().take(64).collect();
            return Err(ToolError::Failed(format!(
                "secret {shown:?} is not available: this hub has no secret store yet"
            )));
        }
        let profile = self.rooms.profile(caller);
        let timeout = match a.timeout_s {
            None => profile.command_timeout,
            Some(s) if s.is_finite() && s > 0.0 => {
                let asked = std::time::Duration::from_secs_f64(s.min(1e9));
                if asked > profile.max_command_timeout {
                    return Err(bad(format!(
                        "timeout_s {s} is above your profile's maximum of {} s",
                        profile.max_command_timeout.as_secs()
                    )));
                }
                asked
            }
            Some(s) => return Err(bad(format!("timeout_s must be a positive number, not {s}"))),
        };
        Ok(Op::RunCommand {
            command: a.command,
            cwd: a.cwd,
            timeout_ms: timeout.as_millis().max(1) as u64,
            env: a.env,
            output_cap: profile.output_cap,
        })
    }
}

/// Relays the room's progress events to the MCP caller's progress sink, if it asked for one.
fn relay(sink: Option<super::ProgressSink>) -> Option<mpsc::UnboundedSender<Event>> {
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
                if sink.send(update).is_err() {
                    break;
                }
            }
        }
    });
    Some(tx)
}

#[async_trait]
impl ToolSet for CommandTools {
    fn tools(&self, _caller: &Caller) -> Vec<Tool> {
        self.tools.clone()
    }

    fn owns(&self, name: &str) -> bool {
        name == "run_command"
    }

    async fn call(
        &self,
        name: &str,
        args: JsonObject,
        cx: &CallContext<'_>,
    ) -> Result<CallToolResult, ToolError> {
        let args: RunArgs = parse_args(name, args)?;
        let op = self.op(cx.caller, args)?;
        let events = relay(cx.progress.clone());
        let result = room_result(self.rooms.call(cx.caller, op, events).await)?;
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
