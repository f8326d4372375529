//! The JSON-RPC 2.0 envelope: classifying incoming messages and shaping replies. Lodge parses the
//! envelope itself so that every malformed input gets the precise error code (parse error,
//! invalid request, method not found, invalid params) rather than a generic failure.

use rmcp::model::{ErrorCode, ErrorData};
use serde_json::{Map, Value, json};

pub enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Option<Value>,
    },
    Notification {
        method: String,
        params: Option<Value>,
    },
    /// A client's reply to a request the hub sent it (an upstream server's question).
    Response {
        id: Value,
        outcome: Result<Value, ErrorData>,
    },
}

/// Classifies one decoded JSON value; `Err` is the error reply to send (with id if known).
pub fn classify(v: Value) -> Result<Incoming, (Value, ErrorData)> {
    let Value::Object(mut o) = v else {
        let msg = if v.is_array() {
            "JSON-RPC batches are not supported (removed in MCP 2025-06-18): send one message per request"
        } else {
            "a JSON-RPC message must be an object"
        };
        return Err((Value::Null, invalid_request(msg)));
    };
    let id = o.remove("id");
    let id_ok = matches!(&id, Some(Value::String(_)))
        || matches!(&id, Some(Value::Number(n)) if n.is_i64() || n.is_u64());
    let reply_id = if id_ok {
        id.clone().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((
            reply_id,
            invalid_request("missing or wrong \"jsonrpc\": it must be \"2.0\""),
        ));
    }
    match o.remove("method") {
        Some(Value::String(method)) => {
            let params = o.remove("params");
            if let Some(p) = &params
                && !p.is_object()
            {
                return Err((reply_id, invalid_params("\"params\" must be an object")));
            }
            match id {
                None => Ok(Incoming::Notification { method, params }),
                Some(_) if id_ok => Ok(Incoming::Request {
                    id: reply_id,
                    method,
                    params,
                }),
                Some(_) => Err((
                    Value::Null,
                    invalid_request("\"id\" must be a string or an integer"),
                )),
            }
        }
        Some(_) => Err((reply_id, invalid_request("\"method\" must be a string"))),
        None if (o.contains_key("result") || o.contains_key("error")) && id.is_some() => {
            let outcome = match (o.remove("result"), o.remove("error")) {
                (Some(result), _) => Ok(result),
                (None, error) => Err(error
                    .and_then(|e| serde_json::from_value(e).ok())
                    .unwrap_or_else(|| internal("the client answered with a malformed error"))),
            };
            Ok(Incoming::Response {
                id: reply_id,
                outcome,
            })
        }
        None => Err((
            reply_id,
            invalid_request("not a request, notification or response"),
        )),
    }
}

pub fn invalid_request(msg: &str) -> ErrorData {
    ErrorData::new(ErrorCode::INVALID_REQUEST, msg.to_owned(), None)
}

pub fn invalid_params(msg: impl Into<String>) -> ErrorData {
    ErrorData::new(ErrorCode::INVALID_PARAMS, msg.into(), None)
}

pub fn parse_error(msg: impl Into<String>) -> ErrorData {
    ErrorData::new(ErrorCode::PARSE_ERROR, msg.into(), None)
}

pub fn method_not_found(method: &str) -> ErrorData {
    let shown: String = method.chars().take(100).collect();
    ErrorData::new(
        ErrorCode::METHOD_NOT_FOUND,
        format!("method not found: {shown}"),
        None,
    )
}

pub fn header_mismatch(msg: impl Into<String>) -> ErrorData {
    ErrorData::new(ErrorCode::HEADER_MISMATCH, msg.into(), None)
}

pub fn unsupported_version(v: &str) -> ErrorData {
    let shown: String = v.chars().take(40).collect();
    ErrorData::new(
        ErrorCode::UNSUPPORTED_PROTOCOL_VERSION,
        format!("unsupported protocol version {shown:?}"),
        Some(json!({ "supported": super::version::SUPPORTED, "requested": shown })),
    )
}

pub fn internal(msg: impl Into<String>) -> ErrorData {
    ErrorData::new(ErrorCode::INTERNAL_ERROR, msg.into(), None)
}

/// The answer to a request its client cancelled (the MCP spec's -32800).
pub fn cancelled() -> ErrorData {
    ErrorData::new(
        ErrorCode(-32800),
        "the request was cancelled by the client",
        None,
    )
}

pub fn error_body(id: Value, e: &ErrorData) -> Value {
    let mut err = Map::new();
    err.insert("code".into(), json!(e.code.0));
    err.insert("message".into(), json!(e.message));
    if let Some(d) = &e.data {
        err.insert("data".into(), d.clone());
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": err })
}

pub fn result_body(id: Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(v: Value) -> i32 {
        match classify(v) {
            Err((_, e)) => e.code.0,
            Ok(_) => 0,
        }
    }

    #[test]
    fn classifies_garbage_precisely() {
        assert_eq!(code(json!([1, 2])), -32600);
        assert_eq!(code(json!("x")), -32600);
        assert_eq!(code(json!({"id": 1, "method": "ping"})), -32600);
        assert_eq!(
            code(json!({"jsonrpc": "1.0", "id": 1, "method": "ping"})),
            -32600
        );
        assert_eq!(
            code(json!({"jsonrpc": "2.0", "id": null, "method": "ping"})),
            -32600
        );
        assert_eq!(
            code(json!({"jsonrpc": "2.0", "id": {}, "method": "ping"})),
            -32600
        );
        assert_eq!(
            code(json!({"jsonrpc": "2.0", "id": 1, "method": 5})),
            -32600
        );
        assert_eq!(
            code(json!({"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]})),
            -32602
        );
        assert_eq!(
            code(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})),
            0
        );
        assert_eq!(
            code(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
            0
        );
        assert_eq!(code(json!({"jsonrpc": "2.0", "id": 1, "result": {}})), 0);
    }
}
