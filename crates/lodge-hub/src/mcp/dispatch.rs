//! Method dispatch: one JSON-RPC request in, one MCP result (or error) out.

use super::jsonrpc::{internal, invalid_params, method_not_found};
use super::version;
use crate::Hub;
use crate::audit::ToolCallRecord;
use crate::context::RequestContext;
use rmcp::model::{
    CallToolRequestParams, CustomResult, DiscoverResult, ErrorData, GetPromptRequestParams,
    Implementation, ListToolsResult, ProtocolVersion, ReadResourceRequestParams, ResultType,
    ServerCapabilities, ServerResult,
};
use serde_json::Value;
use std::time::Instant;

pub fn server_info() -> Implementation {
    Implementation::new("lodge", env!("CARGO_PKG_VERSION"))
}

/// What the hub answers, declared always (the lists are empty without upstream servers, but
/// the methods are there): tools, prompts, resources and completions; and for the sessionful
/// revisions logging and resource subscriptions. 2026-07-28 removed both methods (it sets the
/// log level per request, and delivers updates on `subscriptions/listen`, which the hub does
/// not offer: declaring `subscribe` there would claim it).
pub fn capabilities(protocol: &str) -> ServerCapabilities {
    // List changes and resource updates reach sessionful clients on their GET stream and
    // 2026-07-28 clients on subscriptions/listen.
    let mut caps = ServerCapabilities::builder()
        .enable_tools()
        .enable_tool_list_changed()
        .enable_prompts()
        .enable_prompts_list_changed()
        .enable_resources()
        .enable_resources_list_changed()
        .enable_resources_subscribe()
        .enable_completions()
        .build();
    if !version::is_modern(protocol) {
        caps.logging = Some(Default::default());
    }
    caps
}

/// Methods the 2026-07-28 revision removed: under it they are "method not found" (HTTP 404),
/// whatever the sessionful revisions answer.
const REMOVED_IN_MODERN: [&str; 5] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// The longest tool name accepted, in bytes (MCP's own guidance is at most 128 characters).
pub const MAX_TOOL_NAME: usize = 128;

pub const INSTRUCTIONS: &str = "Lodge gives you a private room on a shared hub. Call session_info to see who you are and your limits.";

/// Answers one request. `initialize` is handled by the endpoint because it creates a session.
pub async fn request(
    hub: &Hub,
    cx: &RequestContext,
    method: &str,
    params: Option<Value>,
) -> Result<ServerResult, ErrorData> {
    let modern = version::is_modern(cx.protocol);
    if modern && REMOVED_IN_MODERN.contains(&method) {
        return Err(method_not_found(method));
    }
    let mut result = match method {
        "ping" => ServerResult::empty(()),
        "server/discover" => ServerResult::DiscoverResult(discover()),
        "tools/list" => ServerResult::ListToolsResult(ListToolsResult::with_all_items(
            hub.tools.list(&cx.caller).await,
        )),
        "tools/call" => ServerResult::CallToolResult(call_tool(hub, cx, params).await?),
        "prompts/list" => ServerResult::ListPromptsResult(upstream_list(
            hub.upstreams.prompts(&cx.caller).await,
            "prompts",
        )?),
        "resources/list" => ServerResult::ListResourcesResult(upstream_list(
            hub.upstreams.resources(&cx.caller).await,
            "resources",
        )?),
        "resources/templates/list" => ServerResult::ListResourceTemplatesResult(upstream_list(
            hub.upstreams.resource_templates(&cx.caller).await,
            "resourceTemplates",
        )?),
        "prompts/get" => {
            let p: GetPromptRequestParams = parse_params(method, params)?;
            let result = hub
                .upstreams
                .get_prompt(cx, &p.name, p.arguments.map(Value::Object))
                .await;
            ServerResult::GetPromptResult(upstream_result(result)?)
        }
        "resources/read" => {
            let p: ReadResourceRequestParams = parse_params(method, params)?;
            ServerResult::ReadResourceResult(upstream_result(
                hub.upstreams.read_resource(cx, &p.uri).await,
            )?)
        }
        "completion/complete" => {
            let params = params.unwrap_or_else(|| Value::Object(Default::default()));
            ServerResult::CompleteResult(upstream_result(hub.upstreams.complete(cx, params).await)?)
        }
        "resources/subscribe" | "resources/unsubscribe" => {
            ServerResult::empty(subscribe(hub, cx, method, params).await?)
        }
        _ => return Err(method_not_found(method)),
    };
    if modern {
        mark_complete(&mut result);
        result.fill_missing_cache_hints();
    } else {
        result.strip_result_type_for_legacy_peer();
        result.strip_non_object_output_for_legacy_peer();
    }
    Ok(result)
}

/// Gives a 2026-07-28 result the `resultType` that revision requires on every result:
/// `"complete"` unless it already says otherwise (an input-required result keeps its own).
/// Results passed through from upstream servers, which speak an older revision, arrive
/// without one.
fn mark_complete(result: &mut ServerResult) {
    let result_type = match result {
        ServerResult::CompleteResult(r) => &mut r.result_type,
        ServerResult::GetPromptResult(r) => &mut r.result_type,
        ServerResult::ListPromptsResult(r) => &mut r.result_type,
        ServerResult::ListResourcesResult(r) => &mut r.result_type,
        ServerResult::ListResourceTemplatesResult(r) => &mut r.result_type,
        ServerResult::ReadResourceResult(r) => &mut r.result_type,
        ServerResult::ListToolsResult(r) => &mut r.result_type,
        ServerResult::CallToolResult(r) => &mut r.result_type,
        ServerResult::ListSkillsResult(r) => &mut r.result_type,
        ServerResult::GetSkillResult(r) => &mut r.result_type,
        ServerResult::CustomResult(CustomResult(Value::Object(o))) => {
            o.entry("resultType")
                .or_insert_with(|| Value::from(ResultType::COMPLETE.as_str()));
            return;
        }
        ServerResult::EmptyResult(_) => {
            *result = ServerResult::CustomResult(CustomResult(
                serde_json::json!({ "resultType": ResultType::COMPLETE.as_str() }),
            ));
            return;
        }
        // The rest carry a required `resultType` of their own.
        _ => return,
    };
    result_type.get_or_insert(ResultType::COMPLETE);
}

fn parse_params<T: serde::de::DeserializeOwned>(
    method: &str,
    params: Option<Value>,
) -> Result<T, ErrorData> {
    let params = params.unwrap_or_else(|| Value::Object(Default::default()));
    serde_json::from_value(params).map_err(|e| {
        let e = lodge_core::text::without_values(&e.to_string());
        invalid_params(format!("{method}: {e}"))
    })
}

/// A list gathered from upstream servers, as the result type of its method.
fn upstream_list<T: serde::de::DeserializeOwned>(
    items: Vec<Value>,
    key: &str,
) -> Result<T, ErrorData> {
    upstream_result(Ok(serde_json::json!({ key: items })))
}

/// An upstream server's answer as a typed result; its failures as JSON-RPC errors that name
/// the server.
fn upstream_result<T: serde::de::DeserializeOwned>(
    result: Result<Value, crate::upstream::UpstreamError>,
) -> Result<T, ErrorData> {
    let value = result.map_err(|e| match e.rpc() {
        Some((code, data)) => ErrorData::new(rmcp::model::ErrorCode(code), e.to_string(), data),
        None => internal(e.to_string()),
    })?;
    serde_json::from_value(value)
        .map_err(|e| internal(format!("an upstream server's answer is malformed: {e}")))
}

/// A sessionful client's (un)subscription to a resource: passed to the server that has it,
/// and remembered for the session so the updates reach its stream. The server stops sending
/// only when none of the user's sessions wants them any more.
async fn subscribe(
    hub: &Hub,
    cx: &RequestContext,
    method: &str,
    params: Option<Value>,
) -> Result<(), ErrorData> {
    let p: rmcp::model::SubscribeRequestParams = parse_params(method, params)?;
    let Some(session) = cx.session_id() else {
        return Err(method_not_found(method));
    };
    let user = cx.caller.user_id;
    if method == "resources/subscribe" {
        upstream_result::<Value>(hub.upstreams.subscribe(cx, &p.uri, true).await)?;
        hub.feeds.subscribe(session, user, &p.uri);
    } else if !hub.feeds.unsubscribe(session, user, &p.uri) {
        upstream_result::<Value>(hub.upstreams.subscribe(cx, &p.uri, false).await)?;
    }
    Ok(())
}

fn discover() -> DiscoverResult {
    let versions = version::SUPPORTED
        .iter()
        .filter_map(|v| serde_json::from_value::<ProtocolVersion>(Value::from(*v)).ok())
        .collect();
    let mut d = DiscoverResult::new(versions, capabilities(version::MODERN))
        .with_server_info(server_info());
    d.instructions = Some(INSTRUCTIONS.to_owned());
    d
}

async fn call_tool(
    hub: &Hub,
    cx: &RequestContext,
    params: Option<Value>,
) -> Result<rmcp::model::CallToolResult, ErrorData> {
    let p: CallToolRequestParams = parse_params("tools/call", params)?;
    let name = p.name.as_ref();
    if name.len() > MAX_TOOL_NAME {
        return Err(invalid_params(format!(
            "tool name of {} bytes: tool names are at most {MAX_TOOL_NAME} bytes (tools/list \
             shows the tools you have)",
            name.len()
        )));
    }
    // Only names the caller really has go further: everything below records the name (metric
    // labels, the audit trail), so a made-up one must not get there.
    let route = match hub.tools.find(&cx.caller, name).await {
        Ok(Some(route)) => route,
        Ok(None) => {
            let shown: String = name.chars().take(100).collect();
            return Err(invalid_params(format!(
                "unknown tool: {shown} (tools/list shows the tools you have)"
            )));
        }
        Err(refused) => return refused.into_result(),
    };
    let args = p.arguments.unwrap_or_default();
    let digest = crate::audit::digest(&route.audit_view(&args));
    let started = Instant::now();
    let result = match route.call(name, args, cx).await {
        Ok(r) => Ok(r),
        Err(e) => e.into_result(),
    };
    let elapsed = started.elapsed();
    // Decide the outcome before recording it, so an empty reply is audited as the failure the
    // caller receives, not as a success.
    let empty = result
        .as_ref()
        .is_ok_and(|r| r.content.is_empty() && r.structured_content.is_none());
    let outcome = match &result {
        Ok(r) if !empty && r.is_error != Some(true) => "ok",
        _ => "error",
    };
    metrics::counter!("lodge_tool_calls_total", "tool" => name.to_owned(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("lodge_tool_call_duration_seconds", "tool" => name.to_owned())
        .record(elapsed.as_secs_f64());
    hub.audit.tool_call(ToolCallRecord {
        user: cx.caller.user.as_str(),
        session: cx.session_id(),
        tool: name,
        digest,
        outcome,
        duration_ms: elapsed.as_millis() as i64,
    });
    if empty {
        return Err(internal(format!("tool {name} returned nothing")));
    }
    result
}
