//! The tool registry: every MCP tool a user sees comes from a [`ToolSet`]. Built-in sets
//! (session info, files, commands, notebooks and kernels, git, secrets) and per-user upstream
//! servers all plug in here, so the MCP endpoint never needs to know which tools exist.
//!
//! A set answers for the tools it owns; the registry only routes. Tool sets must validate their
//! input and report bad input as a [`ToolError`], never panic.

mod command;
mod files;
mod git;
mod notebooks;
mod secrets;
mod session_info;
mod upstream;

pub use command::CommandTools;
pub use files::FileTools;
pub use git::GitTools;
pub use notebooks::NotebookTools;
pub use secrets::SecretTools;
pub use session_info::SessionInfoTools;
pub use upstream::UpstreamTools;

use crate::caller::Caller;
use async_trait::async_trait;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::sync::Arc;

/// What a tool call knows about its caller and transport.
pub struct CallContext<'a> {
    pub caller: &'a Caller,
    pub session_id: Option<&'a str>,
    pub protocol: &'static str,
    /// Where progress and other notices go when the client asked for progress (a
    /// `progressToken`) and accepts a streamed reply.
    pub progress: Option<NoticeSink>,
}

/// One progress update of a running tool call (`notifications/progress`).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub progress: f64,
    pub total: Option<f64>,
    pub message: Option<String>,
}

/// Something the client hears while its call runs (on the call's streamed reply).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Progress(Progress),
    /// A JSON-RPC notification passed on whole (an upstream server's log message or list
    /// change).
    Notification(serde_json::Value),
}

pub type NoticeSink = tokio::sync::mpsc::UnboundedSender<Notice>;

/// A room's answer as a tool result: operation errors keep the room's message (it names the
/// path and the fix); a dead or unavailable room says so.
pub(crate) fn room_result(
    r: Result<lodge_protocol::OpResult, crate::rooms::RoomError>,
) -> Result<lodge_protocol::OpResult, ToolError> {
    use crate::rooms::RoomError;
    use lodge_room::client::CallError;
    r.map_err(|e| match e {
        RoomError::Call(CallError::Op(op)) => ToolError::Failed(op.message),
        other => ToolError::Failed(other.to_string()),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The arguments did not match the tool's schema; the text says which field and why.
    #[error("invalid arguments for {tool}: {reason}")]
    InvalidArguments { tool: String, reason: String },
    /// The tool ran and failed; the text is shown to the caller.
    #[error("{0}")]
    Failed(String),
    /// A protocol error to answer as a JSON-RPC error (an upstream server's own error).
    #[error("{message}")]
    Rpc {
        code: i32,
        message: String,
        data: Option<serde_json::Value>,
    },
}

impl ToolError {
    /// Arguments of `tool` that parse but make no sense; `reason` names the field and the fix.
    pub fn invalid(tool: &str, reason: impl Into<String>) -> Self {
        ToolError::InvalidArguments {
            tool: tool.to_owned(),
            reason: reason.into(),
        }
    }
}

#[async_trait]
pub trait ToolSet: Send + Sync + 'static {
    /// Every tool this set can answer for.
    fn definitions(&self) -> &[Tool];
    /// The tools this set offers to `caller` (all of them unless a set overrides this).
    async fn tools(&self, _caller: &Caller) -> Vec<Tool> {
        self.definitions().to_vec()
    }
    /// Does this set answer `caller`'s call of `name`? `Ok(false)`: not one of this set's
    /// names; `Err`: one of its names, refused before it reaches a tool (the tool is not
    /// offered to the caller, or whether it is cannot be told now). Derived from the
    /// definitions by default, so the names a set lists and the names it answers for cannot
    /// drift apart. Only names that pass are recorded (metrics, audit), so this is what keeps
    /// caller-chosen names out of them.
    async fn offers(&self, _caller: &Caller, name: &str) -> Result<bool, ToolError> {
        Ok(self.definitions().iter().any(|t| t.name == name))
    }
    async fn call(
        &self,
        name: &str,
        args: JsonObject,
        cx: &CallContext<'_>,
    ) -> Result<CallToolResult, ToolError>;
    /// The arguments as the audit digest may see them. Sets whose arguments carry secret
    /// values override this to leave them out.
    fn audit_view<'a>(&self, _name: &str, args: &'a JsonObject) -> Cow<'a, JsonObject> {
        Cow::Borrowed(args)
    }
}

#[derive(Default, Clone)]
pub struct Registry {
    sets: Vec<Arc<dyn ToolSet>>,
}

impl Registry {
    pub fn with(mut self, set: impl ToolSet) -> Self {
        self.sets.push(Arc::new(set));
        self
    }

    pub async fn list(&self, caller: &Caller) -> Vec<Tool> {
        let mut all = Vec::new();
        for set in &self.sets {
            all.extend(set.tools(caller).await);
        }
        all
    }

    /// The set that answers `caller`'s call of `name` (see [`ToolSet::offers`]).
    pub async fn find(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Option<&Arc<dyn ToolSet>>, ToolError> {
        for set in &self.sets {
            if set.offers(caller, name).await? {
                return Ok(Some(set));
            }
        }
        Ok(None)
    }
}

/// A tool definition whose input schema is derived from the argument type, so the schema and
/// the validation can never disagree.
pub fn define<T: JsonSchema + 'static>(name: &'static str, description: &'static str) -> Tool {
    Tool::new(
        name,
        description,
        rmcp::handler::server::common::schema_for_type::<T>(),
    )
}

/// A result with `value` as structured content and `text` as its one text block (instead of
/// the JSON dump `CallToolResult::structured` puts there), for tools whose answer reads best
/// as prose.
pub(crate) fn structured_with_text(value: serde_json::Value, text: String) -> CallToolResult {
    let mut result = CallToolResult::structured(value);
    result.content = vec![ContentBlock::text(text)];
    result
}

/// A call's `timeout_s` within the caller's profile: its `command_timeout` when absent, refused
/// above its `max_command_timeout`.
pub(crate) fn profile_timeout(
    tool: &str,
    profile: &lodge_core::config::Profile,
    timeout_s: Option<f64>,
) -> Result<std::time::Duration, ToolError> {
    let bad = |reason: String| ToolError::invalid(tool, reason);
    match timeout_s {
        None => Ok(profile.command_timeout),
        Some(s) if s.is_finite() && s > 0.0 => {
            let asked = std::time::Duration::from_secs_f64(s.min(1e9));
            if asked > profile.max_command_timeout {
                return Err(bad(format!(
                    "timeout_s {s} is above your profile's maximum of {} s",
                    profile.max_command_timeout.as_secs()
                )));
            }
            Ok(asked)
        }
        Some(s) => Err(bad(format!("timeout_s must be a positive number, not {s}"))),
    }
}

/// Parses tool arguments into `T`, naming the tool and the offending field on failure, never
/// the value given: serde quotes it (`invalid type: string "hunter2"`), and it may be a secret.
pub fn parse_args<T: DeserializeOwned>(tool: &str, args: JsonObject) -> Result<T, ToolError> {
    serde_path_to_error::deserialize(serde_json::Value::Object(args)).map_err(|e| {
        let message = e.inner().to_string();
        let reason = lodge_core::text::without_values(&message);
        // An unknown field's name is the last segment of its path: input, so left out.
        let unknown = message.starts_with("unknown field");
        match arg_path(e.path(), unknown) {
            Some(path) => ToolError::invalid(tool, format!("{path}: {reason}")),
            None => ToolError::invalid(tool, reason),
        }
    })
}

/// `fields.token`, `paths[2]`: where in the arguments an error is, for people. Map keys are
/// names the caller chose (a secret's field names), shown escaped and cut short.
fn arg_path(path: &serde_path_to_error::Path, drop_last: bool) -> Option<String> {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let keep = segments.len() - usize::from(drop_last && !segments.is_empty());
    let mut out = String::new();
    for seg in &segments[..keep] {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                let shown: String = lodge_core::text::for_people(key).chars().take(64).collect();
                out.push_str(&shown);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    (!out.is_empty()).then_some(out)
}

impl ToolError {
    /// The error as the tool result the caller sees (`isError: true`), or as the JSON-RPC
    /// error it must be.
    pub fn into_result(self) -> Result<CallToolResult, rmcp::model::ErrorData> {
        match self {
            ToolError::Rpc {
                code,
                message,
                data,
            } => Err(rmcp::model::ErrorData::new(
                rmcp::model::ErrorCode(code),
                message,
                data,
            )),
            other => Ok(CallToolResult::error(vec![ContentBlock::text(
                other.to_string(),
            )])),
        }
    }
}
