//! The HTTP side of the MCP endpoint: authentication, sessions, protocol-version rules, and
//! turning dispatch results into HTTP responses.

use super::jsonrpc::{self, Incoming};
use super::{RequestCx, dispatch, version};
use crate::Hub;
use crate::caller::{self, Caller};
use crate::error::ApiError;
use crate::http_util::{ClientAddr, authorization};
use crate::sessions::SessionError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmcp::model::{ErrorCode, ErrorData, InitializeResult, ProtocolVersion};
use serde_json::Value;
use std::sync::Arc;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const METHOD_HEADER: &str = "mcp-method";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPS: &str = "io.modelcontextprotocol/clientCapabilities";
/// How long a request over its user's budget waits before its 429.
const THROTTLE_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn post_own(
    State(hub): State<Arc<Hub>>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    post(hub, None, ip, headers, body).await
}

pub async fn post_user(
    State(hub): State<Arc<Hub>>,
    Path(name): Path<String>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    post(hub, Some(name), ip, headers, body).await
}

/// Lodge offers no server-initiated SSE stream; the transport spec allows 405 here.
pub async fn get(
    State(hub): State<Arc<Hub>>,
    path: Option<Path<String>>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authenticate(&hub, path.map(|p| p.0), ip, &headers).await {
        return e.into_jsonrpc_response();
    }
    let mut r = ApiError::MethodNotAllowed(
        "this endpoint has no GET stream: POST JSON-RPC messages".into(),
    )
    .into_jsonrpc_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
    r
}

/// Ends a legacy session. Only its owner can; anyone else gets the same 404 as for no session.
pub async fn delete(
    State(hub): State<Arc<Hub>>,
    path: Option<Path<String>>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
) -> Response {
    let caller = match authenticate(&hub, path.map(|p| p.0), ip, &headers).await {
        Ok(c) => c,
        Err(e) => return e.into_jsonrpc_response(),
    };
    let Some(sid) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return ApiError::BadRequest("DELETE needs an Mcp-Session-Id header".into())
            .into_jsonrpc_response();
    };
    match hub.sessions.end(sid, Some(caller.user_id)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ SessionError::NotFound) => session_error(Value::Null, e),
        Err(e) => ApiError::Internal(e.to_string()).into_jsonrpc_response(),
    }
}

async fn authenticate(
    hub: &Hub,
    target: Option<String>,
    ip: Option<std::net::IpAddr>,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let principal = hub.auth.authenticate(authorization(headers), ip).await?;
    caller::resolve(
        &principal,
        target.as_deref(),
        &*hub.store,
        hub.config.auth.admin_access,
    )
    .await
}

async fn post(
    hub: Arc<Hub>,
    target: Option<String>,
    ip: Option<std::net::IpAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let caller = match authenticate(&hub, target, ip, &headers).await {
        Ok(c) => c,
        Err(e) => return e.into_jsonrpc_response(),
    };
    if let Err(e) = hub.spend_request(&caller) {
        // A loop that ignores Retry-After would make its refusals a flood of their own (they
        // are cheap, but tens of thousands a second still take the hub's CPU): each is held
        // first, so one connection gets at most one a second (connections are capped).
        tokio::time::sleep(THROTTLE_HOLD).await;
        return e.into_jsonrpc_response();
    }
    if let Some(e) = duplicate_header(&headers) {
        return rpc_error(StatusCode::BAD_REQUEST, Value::Null, &e);
    }
    let body = match body {
        Ok(b) => b,
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::TooLarge(format!(
                "request body over {} bytes (server.max_body_bytes)",
                hub.config.server.max_body_bytes
            ))
            .into_jsonrpc_response();
        }
        Err(rej) => {
            return ApiError::BadRequest(format!("cannot read body: {rej}"))
                .into_jsonrpc_response();
        }
    };
    if !is_json(&headers) {
        return ApiError::UnsupportedMediaType(
            "MCP messages must be sent with Content-Type: application/json".into(),
        )
        .into_jsonrpc_response();
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                &jsonrpc::parse_error(format!("invalid JSON: {e}")),
            );
        }
    };
    let msg = match jsonrpc::classify(value) {
        Ok(m) => m,
        Err((id, e)) => return rpc_error(StatusCode::BAD_REQUEST, id, &e),
    };
    let session_id = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok());
    match msg {
        Incoming::Response => StatusCode::ACCEPTED.into_response(),
        Incoming::Notification { method, params } => {
            if let Some(sid) = session_id
                && let Err(e) = hub.sessions.touch(sid, caller.user_id).await
            {
                return session_error(Value::Null, e);
            }
            if method == "notifications/cancelled"
                && let Some(id) = params.as_ref().and_then(|p| p.get("requestId"))
            {
                hub.inflight.cancel(caller.user_id, session_id, id);
            }
            StatusCode::ACCEPTED.into_response()
        }
        Incoming::Request { id, method, params } if method == "initialize" => {
            initialize(&hub, &caller, id, params).await
        }
        Incoming::Request { id, method, params } => {
            request(&hub, &caller, &headers, session_id, id, &method, params).await
        }
    }
}

async fn request(
    hub: &Arc<Hub>,
    caller: &Caller,
    headers: &HeaderMap,
    session_id: Option<&str>,
    id: Value,
    method: &str,
    params: Option<Value>,
) -> Response {
    let protocol = match session_id {
        Some(sid) => match hub.sessions.touch(sid, caller.user_id).await {
            Ok(s) => {
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
                    return rpc_error(StatusCode::BAD_REQUEST, id, &e);
                }
                s.protocol
            }
            Err(e) => return session_error(id, e),
        },
        None => match stateless_version(headers, method, params.as_ref()) {
            Ok(v) => v,
            Err(e) => return rpc_error(StatusCode::BAD_REQUEST, id, &e),
        },
    };
    if let Some(token) = progress_token(method, params.as_ref())
        && accepts_event_stream(headers)
    {
        let work = OwnedRequest {
            hub: hub.clone(),
            caller: caller.clone(),
            session_id: session_id.map(str::to_owned),
            protocol,
            id,
            method: method.to_owned(),
            params,
        };
        return super::stream::respond(work, token);
    }
    let cx = RequestCx {
        caller,
        session_id,
        protocol,
        progress: None,
    };
    let (status, body) = answer(hub, &cx, id, method, params).await;
    json_response(status, &body, None)
}

/// A request whose answer streams: everything it needs, owned, so it can run in its own task.
pub(super) struct OwnedRequest {
    pub hub: Arc<Hub>,
    pub caller: Caller,
    pub session_id: Option<String>,
    pub protocol: &'static str,
    pub id: Value,
    pub method: String,
    pub params: Option<Value>,
}

impl OwnedRequest {
    /// Runs the request, sending progress to `progress`; returns the HTTP status and body.
    pub async fn run(self, progress: crate::tools::NoticeSink) -> (StatusCode, Value) {
        let cx = RequestCx {
            caller: &self.caller,
            session_id: self.session_id.as_deref(),
            protocol: self.protocol,
            progress: Some(progress),
        };
        answer(&self.hub, &cx, self.id, &self.method, self.params).await
    }
}

/// Dispatches one request and shapes its JSON-RPC reply (status, body).
async fn answer(
    hub: &Hub,
    cx: &RequestCx<'_>,
    id: Value,
    method: &str,
    params: Option<Value>,
) -> (StatusCode, Value) {
    // The client may cancel the request (`notifications/cancelled`): its work is dropped.
    let running = hub.inflight.register(cx.caller.user_id, cx.session_id, &id);
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
            let status = if version::is_modern(cx.protocol) && e.code == ErrorCode::METHOD_NOT_FOUND
            {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            (status, jsonrpc::error_body(id, &e))
        }
    }
}

/// The `_meta.progressToken` of a `tools/call`, if the client asked for progress.
fn progress_token(method: &str, params: Option<&Value>) -> Option<Value> {
    if method != "tools/call" {
        return None;
    }
    let token = params?.get("_meta")?.get("progressToken")?;
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
fn stateless_version(
    headers: &HeaderMap,
    method: &str,
    params: Option<&Value>,
) -> Result<&'static str, ErrorData> {
    let meta = params
        .and_then(|p| p.get("_meta"))
        .and_then(Value::as_object);
    let meta_version = meta
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str);
    let header_version = header_str(headers, VERSION_HEADER);
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
    if !version::is_supported(v) {
        return Err(jsonrpc::unsupported_version(v));
    }
    if !version::is_modern(v) {
        return Err(missing_session());
    }
    if header_version != meta_version {
        return Err(jsonrpc::header_mismatch(
            "MCP-Protocol-Version header must be present and equal to _meta protocolVersion",
        ));
    }
    // The stateless revision routes on headers, so they must be present and tell the truth.
    if headers.get(METHOD_HEADER).map(|h| h.as_bytes()) != Some(method.as_bytes()) {
        return Err(jsonrpc::header_mismatch(
            "Mcp-Method header must be present and equal to the body's method",
        ));
    }
    if !meta.is_some_and(|m| m.contains_key(META_CAPS)) {
        return Err(jsonrpc::invalid_params(format!(
            "request _meta is missing {META_CAPS}, required by protocol 2026-07-28"
        )));
    }
    Ok(version::MODERN)
}

async fn initialize(hub: &Hub, caller: &Caller, id: Value, params: Option<Value>) -> Response {
    let params = params.unwrap_or(Value::Null);
    let Some(requested) = params.get("protocolVersion").and_then(Value::as_str) else {
        return rpc_error(
            StatusCode::OK,
            id,
            &jsonrpc::invalid_params("initialize: protocolVersion (string) is required"),
        );
    };
    let protocol = version::negotiate_legacy(requested);
    let info = params.get("clientInfo");
    let field = |k: &str| {
        info.and_then(|i| i.get(k))
            .and_then(Value::as_str)
            .unwrap_or("?")
    };
    let client = format!("{} {}", field("name"), field("version"));
    let sid = match hub.sessions.create(caller.user_id, protocol, &client).await {
        Ok(sid) => sid,
        Err(e @ SessionError::TooMany(_)) => {
            let err = ErrorData::new(ErrorCode(-32000), e.to_string(), None);
            return rpc_error(StatusCode::TOO_MANY_REQUESTS, id, &err);
        }
        Err(e) => {
            return rpc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                id,
                &jsonrpc::internal(e.to_string()),
            );
        }
    };
    let mut result = InitializeResult::default();
    result.protocol_version = serde_json::from_value::<ProtocolVersion>(Value::from(protocol))
        .unwrap_or(ProtocolVersion::V_2025_11_25);
    result.capabilities = dispatch::capabilities(hub);
    result.server_info = dispatch::server_info();
    result.instructions = Some(dispatch::INSTRUCTIONS.to_owned());
    match serde_json::to_value(&result) {
        Ok(v) => json_response(StatusCode::OK, &jsonrpc::result_body(id, v), Some(&sid)),
        Err(e) => rpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            id,
            &jsonrpc::internal(e.to_string()),
        ),
    }
}

fn session_error(id: Value, e: SessionError) -> Response {
    match e {
        SessionError::NotFound => {
            let err = ErrorData::new(ErrorCode(-32001), e.to_string(), None);
            rpc_error(StatusCode::NOT_FOUND, id, &err)
        }
        other => rpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            id,
            &jsonrpc::internal(other.to_string()),
        ),
    }
}

/// The MCP headers a request may carry once, as the spec spells them: with two, which one
/// counts would be a guess (and a proxy may have checked the other).
const SINGLE_HEADERS: [(&str, &str); 3] = [
    (SESSION_HEADER, "Mcp-Session-Id"),
    (VERSION_HEADER, "MCP-Protocol-Version"),
    (METHOD_HEADER, "Mcp-Method"),
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

fn rpc_error(status: StatusCode, id: Value, e: &ErrorData) -> Response {
    json_response(status, &jsonrpc::error_body(id, e), None)
}

fn json_response(status: StatusCode, body: &Value, session: Option<&str>) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
    if let Some(sid) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        r.headers_mut().insert(SESSION_HEADER, sid);
    }
    r
}
