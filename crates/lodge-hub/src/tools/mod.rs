//! The MCP tools. Each built-in tool is one type implementing [`Tool`] (in its family's module:
//! files, commands, notebooks, git, secrets, session info); upstream servers' tools come in as
//! one [`DynamicTools`] set. What they share lives here: errors, argument parsing, limits.

/// Defines a built-in tool: its type (with the fields it holds), name, description, and the
/// body of its [`Tool::call`] over `this` (the tool), its parsed arguments and the request
/// context. For tools with no other behaviour; others implement [`Tool`] by hand.
macro_rules! tool {
    (
        $(#[$meta:meta])*
        $tool:ident { $($field:ident: $ty:ty),* $(,)? },
        $name:literal,
        $description:expr,
        |$this:ident, $args:pat_param, $cx:ident: $args_ty:ty| $body:expr
    ) => {
        $(#[$meta])*
        pub struct $tool {
            $($field: $ty),*
        }

        #[async_trait::async_trait]
        impl $crate::tools::Tool for $tool {
            const NAME: &'static str = $name;
            const DESCRIPTION: &'static str = $description;
            type Args = $args_ty;

            async fn call(
                &self,
                $args: $args_ty,
                $cx: &$crate::context::RequestContext,
            ) -> Result<rmcp::model::CallToolResult, $crate::tools::ToolError> {
                let $this = self;
                $body
            }
        }
    };
}

mod command;
pub mod files;
pub mod git;
pub mod notebooks;
mod registry;
pub mod secrets;
mod session_info;
mod upstream;

pub use command::RunCommand;
pub use registry::{Definition, DynamicTools, Registry, Route, Tool};
pub use session_info::SessionInfo;
pub use upstream::UpstreamTools;

use rmcp::model::{CallToolResult, ContentBlock, JsonObject};
use serde::de::DeserializeOwned;

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
