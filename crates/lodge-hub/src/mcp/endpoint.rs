//! The HTTP side of the MCP endpoint: authentication, sessions, protocol-version rules, and
//! turning dispatch results into HTTP responses. Its failures are [`ApiError`]s (JSON-RPC
//! bodies, the status each case has); what a method does is dispatch's business.

use super::jsonrpc::{self, Incoming};
use super::relay::{ASKING_METHODS, Exchange, LOG_LEVELS, Resumed, Running};
use super::{dispatch, headers, version};
use crate::Hub;
use crate::caller::{self, Caller};
use crate::context::{ClientCaps, RequestContext};
use crate::error::ApiError;
use crate::http_util::{ClientAddr, authorization};
use crate::sessions::{Session, SessionError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
#[allow(deprecated)] // LoggingLevel: see meta_log_level.
use rmcp::model::LoggingLevel;
use rmcp::model::{ErrorCode, ErrorData, InitializeResult, ProtocolVersion};
use serde_json::Value;
use std::sync::Arc;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPS: &str = "io.modelcontextprotocol/clientCapabilities";
/// A request needs a capability the client did not declare (2026-07-28; HTTP 400).
const MISSING_CLIENT_CAPABILITY: ErrorCode = ErrorCode(-32021);
const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
/// How long a request over its user's budget waits before its 429.
const THROTTLE_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn post_own(
    State(hub): State<Arc<Hub>>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    post(hub, None, ip, headers, body).await
}

pub async fn post_user(
    State(hub): State<Arc<Hub>>,
    Path(name): Path<String>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    post(hub, Some(name), ip, headers, body).await
}

/// A sessionful client's standalone event stream: list changes and updates of the resources
/// it subscribed to. Without a session (2026-07-28 has no such stream) the answer is 405.
pub async fn get(
    State(hub): State<Arc<Hub>>,
    path: Option<Path<String>>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&hub, path.map(|p| p.0), ip, &headers).await?;
    let Some(sid) = header_str(&headers, SESSION_HEADER) else {
        return Err(ApiError::MethodNotAllowed {
            message: "GET opens a session's event stream: send Mcp-Session-Id (2025-11-25 and \
                      earlier); 2026-07-28 has no GET stream, POST JSON-RPC messages"
                .into(),
            allow: "GET, POST, DELETE",
        }
        .mcp());
    };
    hub.sessions
        .touch(sid, caller.user_id)
        .await
        .map_err(|e| session_error(Value::Null, e))?;
    Ok(hub.feeds.open(sid, caller.user_id))
}

/// Ends a legacy session. Only its owner can; anyone else gets the same 404 as for no session.
pub async fn delete(
    State(hub): State<Arc<Hub>>,
    path: Option<Path<String>>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let caller = authenticate(&hub, path.map(|p| p.0), ip, &headers).await?;
    let sid = header_str(&headers, SESSION_HEADER).ok_or_else(|| {
        ApiError::BadRequest("DELETE needs an Mcp-Session-Id header".into()).mcp()
    })?;
    hub.sessions
        .end(sid, Some(caller.user_id))
        .await
        .map_err(|e| match e {
            SessionError::NotFound => session_error(Value::Null, e),
            e => ApiError::Internal(e.to_string()).mcp(),
        })?;
    hub.feeds.end(sid);
    Ok(StatusCode::NO_CONTENT)
}

/// The caller of an MCP request; its failures (401, 403, 429) answered the MCP way.
async fn authenticate(
    hub: &Hub,
    target: Option<String>,
    ip: Option<std::net::IpAddr>,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    // Every refusal names this endpoint's metadata, so a client can find the authorization
    // server (RFC 9728 §5.1).
    let metadata = crate::oauth::resource_metadata_url(hub.base_url(), target.as_deref());
    let refuse = |e: ApiError| e.challenged(metadata.clone()).mcp();
    let principal = hub
        .auth
        .authenticate(authorization(headers), ip)
        .await
        .map_err(refuse)?;
    crate::oauth::check_audience(hub, &principal, target.as_deref(), ip).map_err(refuse)?;
    let caller = caller::resolve(
        &principal,
        target.as_deref(),
        &*hub.store,
        hub.config.auth.admin_access,
    )
    .await
    .map_err(refuse)?;
    crate::signin::fill_groups(hub, caller)
        .await
        .map_err(ApiError::mcp)
}

async fn post(
    hub: Arc<Hub>,
    target: Option<String>,
    ip: Option<std::net::IpAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&hub, target, ip, &headers).await?;
    if let Err(e) = hub.spend_request(&caller) {
        // A loop that ignores Retry-After would make its refusals a flood of their own (they
        // are cheap, but tens of thousands a second still take the hub's CPU): each is held
        // first, so one connection gets at most one a second (connections are capped).
        tokio::time::sleep(THROTTLE_HOLD).await;
        return Err(e.mcp());
    }
    if let Some(e) = duplicate_header(&headers) {
        return Err(rpc_error(StatusCode::BAD_REQUEST, Value::Null, &e));
    }
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "request body over {} bytes (server.max_body_bytes)",
                hub.config.server.max_body_bytes
            ))
        } else {
            ApiError::BadRequest(format!("cannot read body: {rej}"))
        }
        .mcp()
    })?;
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType(
            "MCP messages must be sent with Content-Type: application/json".into(),
        )
        .mcp());
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        let e = jsonrpc::parse_error(format!("invalid JSON: {e}"));
        rpc_error(StatusCode::BAD_REQUEST, Value::Null, &e)
    })?;
    let msg =
        jsonrpc::classify(value).map_err(|(id, e)| rpc_error(StatusCode::BAD_REQUEST, id, &e))?;
    let session_id = header_str(&headers, SESSION_HEADER);
    match msg {
        Incoming::Response { id, outcome } => {
            // A client's answer to an upstream server's question, sent on this session's
            // stream; only the session's owner can answer in it.
            if let Some(sid) = session_id {
                hub.sessions
                    .touch(sid, caller.user_id)
                    .await
                    .map_err(|e| session_error(Value::Null, e))?;
                hub.relay.answer(sid, &id, outcome);
            }
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Incoming::Notification { method, params } => {
            if let Some(sid) = session_id {
                hub.sessions
                    .touch(sid, caller.user_id)
                    .await
                    .map_err(|e| session_error(Value::Null, e))?;
            }
            if method == "notifications/cancelled"
                && let Some(id) = params.as_ref().and_then(|p| p.get("requestId"))
            {
                hub.inflight.cancel(caller.user_id, session_id, id);
            }
            Ok(StatusCode::ACCEPTED.into_response())
        }
        // `initialize` sent the 2026-07-28 way is a request of that revision, which removed
        // the method: it goes the stateless way, to its 404.
        Incoming::Request { id, method, params }
            if method == "initialize" && !declares_modern(&headers, params.as_ref()) =>
        {
            initialize(&hub, &caller, id, params).await
        }
        Incoming::Request { id, method, params } => {
            request(&hub, caller, &headers, session_id, id, method, params).await
        }
    }
}

async fn request(
    hub: &Arc<Hub>,
    caller: Caller,
    headers: &HeaderMap,
    session_id: Option<&str>,
    id: Value,
    method: String,
    params: Option<Value>,
) -> Result<Response, ApiError> {
    let bad_request = |e: ErrorData| rpc_error(StatusCode::BAD_REQUEST, id.clone(), &e);
    let (protocol, client, log_level) = match session_id {
        Some(sid) => {
            let s = hub
                .sessions
                .touch(sid, caller.user_id)
                .await
                .map_err(|e| session_error(id.clone(), e))?;
            if let Some(v) = header_str(headers, VERSION_HEADER)
                && v != s.protocol
            {
                let e = if version::is_supported(v) {
                    jsonrpc::header_mismatch(format!(
                        "MCP-Protocol-Version {v} differs from this session's {}",
                        s.protocol
                    ))
                } else {
                    jsonrpc::unsupported_version(v)
                };
                return Err(bad_request(e));
            }
            if method == "logging/setLevel" {
                return set_level(&s, id, params);
            }
            (s.protocol, s.client, s.log_level())
        }
        None => {
            let protocol =
                stateless_version(headers, &method, params.as_ref()).map_err(bad_request)?;
            if method == "tools/call" {
                check_param_headers(hub, &caller, headers, params.as_ref())
                    .await
                    .map_err(bad_request)?;
            }
            let declared = meta(params.as_ref()).and_then(|m| m.get(META_CAPS));
            let log_level = meta_log_level(params.as_ref()).map_err(bad_request)?;
            (protocol, ClientCaps::from_declared(declared), log_level)
        }
    };
    let progress_token = progress_token(params.as_ref());
    let mut cx = RequestContext {
        caller,
        session_id: session_id.map(str::to_owned),
        protocol,
        client,
        notices: None,
        progress_token,
        // A retry with the hub's requestState is resumed below; answers without one are sent
        // on as they are.
        input_responses: version::is_modern(protocol)
            .then(|| {
                params
                    .as_ref()
                    .and_then(|p| p.get("inputResponses"))
                    .cloned()
            })
            .flatten(),
        log_level,
    };
    if method == "subscriptions/listen" && version::is_modern(protocol) {
        return listen(hub, cx, id, params).await;
    }
    // Only requests that may hear from an upstream server (or report progress) go through the
    // relay; the rest are answered directly.
    if !ASKING_METHODS.contains(&method.as_str()) {
        let (status, body) = answer(hub, &cx, id, &method, params).await;
        return Ok(json_response(status, &body, None));
    }
    let ex = Exchange {
        user_id: cx.caller.user_id,
        session: cx.session_id.clone(),
        modern: version::is_modern(protocol),
        client,
        id: id.clone(),
        target: headers::named_target(&method, params.as_ref())
            .map_or_else(String::new, |(_, v)| v.to_owned()),
        method: method.clone(),
        streams: accepts_event_stream(headers),
        progress_token: cx.progress_token.clone(),
        // Sessionful clients hear every log message until they set a level; 2026-07-28
        // clients none unless the request sets one.
        min_log: match cx.log_level {
            Some(level) => serde_json::to_value(level)
                .ok()
                .and_then(|v| v.as_str().and_then(super::relay::log_rank)),
            None if version::is_modern(protocol) => None,
            None => Some(0),
        },
    };
    if ex.modern
        && let Some(state) = params
            .as_ref()
            .and_then(|p| p.get("requestState"))
            .and_then(Value::as_str)
    {
        let responses = params.as_ref().and_then(|p| p.get("inputResponses"));
        return match hub.relay.resume(&ex, state, responses) {
            Ok(Resumed::Again(result)) => Ok(json_response(
                StatusCode::OK,
                &jsonrpc::result_body(id, result),
                None,
            )),
            Ok(Resumed::Go(running)) => Ok(hub.relay.respond(ex, running).await),
            Err(e) => Err(rpc_error(StatusCode::BAD_REQUEST, id, &e.rpc())),
        };
    }
    let (sink, notices) = tokio::sync::mpsc::unbounded_channel();
    cx.notices = Some(sink);
    let work = {
        let hub = hub.clone();
        tokio::spawn(async move { answer(&hub, &cx, id, &method, params).await })
    };
    Ok(hub.relay.respond(ex, Running::new(work, notices)).await)
}

/// A 2026-07-28 client's `subscriptions/listen`: a stream that stays open until the client
/// goes, acknowledged first, then the user's list changes and updates of the resources it
/// named. Those resources are subscribed at their servers for as long as someone wants them.
async fn listen(
    hub: &Arc<Hub>,
    cx: RequestContext,
    id: Value,
    params: Option<Value>,
) -> Result<Response, ApiError> {
    let filter = params
        .as_ref()
        .and_then(|p| p.get("notifications"))
        .unwrap_or(&Value::Null);
    let Some(listen) = super::feeds::Listen::parse(id.clone(), filter) else {
        let e = jsonrpc::invalid_params(
            "subscriptions/listen: notifications must be an object of toolsListChanged, \
             promptsListChanged, resourcesListChanged (booleans) and resourceSubscriptions (URIs)",
        );
        return Err(rpc_error(StatusCode::BAD_REQUEST, id, &e));
    };
    for uri in &listen.uris {
        if let Err(e) = hub.upstreams.subscribe(&cx, uri, true).await {
            tracing::debug!(user = %cx.caller.user, uri, "cannot subscribe: {e}");
        }
    }
    let key = format!("listen:{}", uuid::Uuid::new_v4().simple());
    let uris = listen.uris.clone();
    let user_id = cx.caller.user_id;
    let closed = {
        let (hub, key) = (hub.clone(), key.clone());
        move || {
            hub.feeds.end(&key);
            // Dropped outside a runtime only when the process ends: nothing left to tell.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                for uri in uris {
                    if !hub.feeds.wanted(cx.caller.user_id, &uri) {
                        let _ = hub.upstreams.subscribe(&cx, &uri, false).await;
                    }
                }
            });
        }
    };
    Ok(hub.feeds.listen(&key, user_id, listen, closed))
}

fn meta(params: Option<&Value>) -> Option<&serde_json::Map<String, Value>> {
    params
        .and_then(|p| p.get("_meta"))
        .and_then(Value::as_object)
}

/// Dispatches one request and shapes its JSON-RPC reply (status, body).
async fn answer(
    hub: &Hub,
    cx: &RequestContext,
    id: Value,
    method: &str,
    params: Option<Value>,
) -> (StatusCode, Value) {
    // The client may cancel the request (`notifications/cancelled`): its work is dropped.
    let running = hub
        .inflight
        .register(cx.caller.user_id, cx.session_id(), &id);
    let outcome = tokio::select! {
        outcome = dispatch::request(hub, cx, method, params) => outcome,
        () = running.token.cancelled() => Err(jsonrpc::cancelled()),
    };
    match outcome {
        Ok(result) => match serde_json::to_value(&result) {
            Ok(v) => (StatusCode::OK, jsonrpc::result_body(id, v)),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                jsonrpc::error_body(id, &jsonrpc::internal(e.to_string())),
            ),
        },
        Err(e) => {
            // The stateless revision maps some errors onto HTTP statuses; legacy keeps 200.
            let status = match e.code {
                _ if !version::is_modern(cx.protocol) => StatusCode::OK,
                ErrorCode::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
                MISSING_CLIENT_CAPABILITY => StatusCode::BAD_REQUEST,
                _ => StatusCode::OK,
            };
            (status, jsonrpc::error_body(id, &e))
        }
    }
}

/// The `_meta.progressToken` of a request, if the client asked for progress.
fn progress_token(params: Option<&Value>) -> Option<Value> {
    let token = meta(params)?.get("progressToken")?;
    (token.is_string() || token.is_i64() || token.is_u64()).then(|| token.clone())
}

fn accepts_event_stream(h: &HeaderMap) -> bool {
    header_str(h, header::ACCEPT.as_str()).is_some_and(|a| {
        a.split(',').any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim() == "text/event-stream")
        })
    })
}

/// The version of a session-less request, which only the stateless revision allows.
///
/// The order of the checks is the order of the errors a client sees (the conformance suite
/// judges it): a request that says no version at all is a legacy client without a session
/// (-32600); a 2026-07-28 request missing a `_meta` field is malformed (-32602); header and
/// `_meta` disagreeing is a header mismatch (-32020) even when neither version is ours; a
/// version we do not speak is -32022 with the list we do; then the routing headers
/// (`Mcp-Method`, `Mcp-Name`) must tell the truth (-32020).
fn stateless_version(
    headers: &HeaderMap,
    method: &str,
    params: Option<&Value>,
) -> Result<&'static str, ErrorData> {
    let meta = meta(params);
    let meta_version = meta
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str);
    let header_version = header_str(headers, VERSION_HEADER).map(str::trim);
    let missing_session = || {
        jsonrpc::invalid_request(
            "missing Mcp-Session-Id header: call initialize first (MCP 2025-11-25 and earlier), \
             or use protocol 2026-07-28 with per-request _meta",
        )
    };
    let Some(v) = meta_version.or(header_version) else {
        return if method == "server/discover" {
            Ok(version::MODERN)
        } else {
            Err(missing_session())
        };
    };
    // A sessionful revision named only in the header: a legacy client that lost its session.
    if meta_version.is_none() && version::is_supported(v) && !version::is_modern(v) {
        return Err(missing_session());
    }
    let Some(meta) = meta else {
        return Err(jsonrpc::invalid_params(format!(
            "request params._meta is missing: protocol 2026-07-28 requires it on every request, \
             with {META_VERSION} and {META_CAPS}"
        )));
    };
    for key in [META_VERSION, META_CAPS] {
        if !meta.contains_key(key) {
            return Err(jsonrpc::invalid_params(format!(
                "request _meta is missing {key}, required by protocol 2026-07-28"
            )));
        }
    }
    let Some(meta_version) = meta_version else {
        return Err(jsonrpc::invalid_params(format!(
            "request _meta {META_VERSION} must be a string"
        )));
    };
    if header_version != Some(meta_version) {
        return Err(jsonrpc::header_mismatch(format!(
            "the MCP-Protocol-Version header must be present and equal to _meta \
             {META_VERSION} ({meta_version:?})"
        )));
    }
    if !version::is_supported(meta_version) {
        return Err(jsonrpc::unsupported_version(meta_version));
    }
    if !version::is_modern(meta_version) {
        return Err(missing_session());
    }
    // The stateless revision routes on headers, so they must be present and tell the truth.
    headers::check_routing(headers, method, params)?;
    Ok(version::MODERN)
}

/// The `Mcp-Param-*` headers of a 2026-07-28 `tools/call`, against the arguments its tool's
/// schema marks (a tool the caller does not have is dispatch's to refuse).
async fn check_param_headers(
    hub: &Hub,
    caller: &Caller,
    headers: &HeaderMap,
    params: Option<&Value>,
) -> Result<(), ErrorData> {
    let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
        return Ok(());
    };
    if name.len() > dispatch::MAX_TOOL_NAME {
        return Ok(());
    }
    let Some(schema) = hub.tools.input_schema(caller, name).await else {
        return Ok(());
    };
    headers::check_params(headers, &schema, params.and_then(|p| p.get("arguments")))
}

/// Does this request speak 2026-07-28 (its header or its `_meta` says so)?
fn declares_modern(headers: &HeaderMap, params: Option<&Value>) -> bool {
    let meta_version = meta(params)
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str);
    meta_version
        .or(header_str(headers, VERSION_HEADER).map(str::trim))
        .is_some_and(version::is_modern)
}

/// The log level a 2026-07-28 request asks for in its `_meta` (none: no log messages).
#[allow(deprecated)] // MCP keeps log levels in the 2026-07-28 revision; rmcp marks them old.
fn meta_log_level(params: Option<&Value>) -> Result<Option<LoggingLevel>, ErrorData> {
    let Some(level) = meta(params).and_then(|m| m.get(META_LOG_LEVEL)) else {
        return Ok(None);
    };
    serde_json::from_value(level.clone())
        .map(Some)
        .map_err(|_| {
            jsonrpc::invalid_params(format!(
                "request _meta {META_LOG_LEVEL} must be one of {}",
                LOG_LEVELS.join(", ")
            ))
        })
}

/// `logging/setLevel` of a sessionful client: the level is kept with its session (in memory
/// only: after a hub restart the session hears every level again until it sets one).
#[allow(deprecated)] // as above: rmcp marks logging old, MCP before 2026-07-28 has it.
fn set_level(session: &Session, id: Value, params: Option<Value>) -> Result<Response, ApiError> {
    let level = params
        .as_ref()
        .and_then(|p| p.get("level"))
        .cloned()
        .and_then(|l| serde_json::from_value::<LoggingLevel>(l).ok());
    let Some(level) = level else {
        let e = jsonrpc::invalid_params(format!(
            "logging/setLevel: level must be one of {}",
            LOG_LEVELS.join(", ")
        ));
        return Ok(json_response(
            StatusCode::OK,
            &jsonrpc::error_body(id, &e),
            None,
        ));
    };
    session.set_log_level(level);
    Ok(json_response(
        StatusCode::OK,
        &jsonrpc::result_body(id, serde_json::json!({})),
        None,
    ))
}

async fn initialize(
    hub: &Hub,
    caller: &Caller,
    id: Value,
    params: Option<Value>,
) -> Result<Response, ApiError> {
    let params = params.unwrap_or(Value::Null);
    let Some(requested) = params.get("protocolVersion").and_then(Value::as_str) else {
        let e = jsonrpc::invalid_params("initialize: protocolVersion (string) is required");
        return Err(rpc_error(StatusCode::OK, id, &e));
    };
    let protocol = version::negotiate_legacy(requested);
    let info = params.get("clientInfo");
    let field = |k: &str| {
        info.and_then(|i| i.get(k))
            .and_then(Value::as_str)
            .unwrap_or("?")
    };
    let client = format!("{} {}", field("name"), field("version"));
    let created = hub
        .sessions
        .create(
            caller.user_id,
            protocol,
            &client,
            ClientCaps::from_declared(params.get("capabilities")),
        )
        .await
        .map_err(|e| internal(id.clone(), e.to_string()))?;
    // Sessions ended for this one (sessions.max_per_user) go as a DELETE would take them.
    for ended in &created.ended {
        hub.feeds.end(ended);
    }
    let sid = created.id;
    let mut result = InitializeResult::default();
    result.protocol_version = serde_json::from_value::<ProtocolVersion>(Value::from(protocol))
        .unwrap_or(ProtocolVersion::V_2025_11_25);
    result.capabilities = dispatch::capabilities(protocol);
    result.server_info = dispatch::server_info();
    result.instructions = Some(dispatch::INSTRUCTIONS.to_owned());
    let v = serde_json::to_value(&result).map_err(|e| internal(id.clone(), e.to_string()))?;
    Ok(json_response(
        StatusCode::OK,
        &jsonrpc::result_body(id, v),
        Some(&sid),
    ))
}

/// A session that is not there (404), or the store failing (500).
fn session_error(id: Value, e: SessionError) -> ApiError {
    match e {
        SessionError::NotFound => {
            let err = ErrorData::new(ErrorCode(-32001), e.to_string(), None);
            rpc_error(StatusCode::NOT_FOUND, id, &err)
        }
        other => internal(id, other.to_string()),
    }
}

fn internal(id: Value, message: String) -> ApiError {
    rpc_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        id,
        &jsonrpc::internal(message),
    )
}

/// The MCP headers a request may carry once, as the spec spells them: with two, which one
/// counts would be a guess (and a proxy may have checked the other).
const SINGLE_HEADERS: [(&str, &str); 4] = [
    (SESSION_HEADER, "Mcp-Session-Id"),
    (VERSION_HEADER, "MCP-Protocol-Version"),
    (headers::METHOD_HEADER, "Mcp-Method"),
    (headers::NAME_HEADER, "Mcp-Name"),
];

/// The error for an MCP header sent more than once, if one is.
fn duplicate_header(h: &HeaderMap) -> Option<ErrorData> {
    SINGLE_HEADERS.iter().find_map(|(name, shown)| {
        let n = h.get_all(*name).iter().count();
        (n > 1).then(|| {
            jsonrpc::header_mismatch(format!(
                "the {shown} header is sent {n} times: send it once"
            ))
        })
    })
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn is_json(h: &HeaderMap) -> bool {
    header_str(h, header::CONTENT_TYPE.as_str())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|ct| ct.trim().eq_ignore_ascii_case("application/json"))
}

/// A JSON-RPC error answered with `status`.
fn rpc_error(status: StatusCode, id: Value, e: &ErrorData) -> ApiError {
    ApiError::JsonRpc {
        status,
        body: jsonrpc::error_body(id, e),
    }
}

fn json_response(status: StatusCode, body: &Value, session: Option<&str>) -> Response {
    let mut r = super::relay::json_response(status, body);
    if let Some(sid) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        r.headers_mut().insert(SESSION_HEADER, sid);
    }
    r
}
