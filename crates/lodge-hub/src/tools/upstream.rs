//! The tools of configured upstream MCP servers, `{prefix}__{tool}` (or unchanged, for a server
//! with `prefix = ""`), as one dynamic set. Which tools exist depends on the caller and on the
//! servers, so this set has no fixed definitions; the instances themselves, and which server a
//! name routes to, are [`crate::upstream::Upstreams`]' business. Built-in names are never ours.

use super::{Definition, DynamicTools, ToolError};
use crate::caller::Caller;
use crate::context::RequestContext;
use crate::upstream::{UpstreamError, Upstreams};
use async_trait::async_trait;
use rmcp::model::{CallToolResult, JsonObject};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;

pub struct UpstreamTools {
    upstreams: Arc<Upstreams>,
    /// The built-in tools' names: an unprefixed server's tool of such a name is not offered.
    builtin: HashSet<&'static str>,
}

impl UpstreamTools {
    pub fn new(upstreams: Arc<Upstreams>, builtin: HashSet<&'static str>) -> Self {
        Self { upstreams, builtin }
    }
}

#[async_trait]
impl DynamicTools for UpstreamTools {
    async fn tools(&self, caller: &Caller) -> Vec<Definition> {
        self.upstreams
            .tools(caller, &|name| self.builtin.contains(name))
            .await
            .into_iter()
            .filter_map(|t| match serde_json::from_value::<Definition>(t) {
                Ok(tool) => Some(tool),
                Err(e) => {
                    tracing::warn!(error = %e, "an upstream tool definition is malformed; left out");
                    None
                }
            })
            .collect()
    }

    async fn offers(&self, caller: &Caller, name: &str) -> Result<bool, ToolError> {
        if self.builtin.contains(name) || !self.upstreams.may_route(name) {
            return Ok(false);
        }
        self.upstreams
            .check_tool(caller, name)
            .await
            .map(|()| true)
            .map_err(tool_error)
    }

    async fn input_schema(&self, caller: &Caller, name: &str) -> Option<Arc<JsonObject>> {
        let schema = self.upstreams.tool_schema(caller, name).await?;
        serde_json::from_value(schema).ok().map(Arc::new)
    }

    async fn call(
        &self,
        name: &str,
        args: JsonObject,
        cx: &RequestContext,
    ) -> Result<CallToolResult, ToolError> {
        let result = self
            .upstreams
            .call_tool(cx, name, Value::Object(args))
            .await
            .map_err(tool_error)?;
        serde_json::from_value(result).map_err(|e| {
            ToolError::Failed(format!(
                "the server of tool {name} answered tools/call with something that is not a tool \
                 result: {e}"
            ))
        })
    }
}

/// Upstream failures as tool errors; the server's own JSON-RPC errors (and unknown names) stay
/// JSON-RPC errors, with the server's name in front.
pub(crate) fn tool_error(e: UpstreamError) -> ToolError {
    match e.rpc() {
        Some((code, data)) => ToolError::Rpc {
            code,
            message: e.to_string(),
            data,
        },
        None => ToolError::Failed(e.to_string()),
    }
}
