//! The 2026-07-28 routing headers checked against the body they repeat: `Mcp-Method`,
//! `Mcp-Name` (a tool or prompt name, a resource URI, a task id) and a tool's `Mcp-Param-*`
//! (arguments its input schema marks with `x-mcp-header`). Proxies route on these headers
//! without reading the body, so a header that lies is refused (-32020, HTTP 400) before the
//! hub acts on the body. Pure functions of headers, body and schema; nothing here looks up a
//! tool or answers a request.

use super::jsonrpc;
use axum::http::HeaderMap;
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use rmcp::model::{ErrorData, JsonObject};
use serde_json::Value;

pub const METHOD_HEADER: &str = "mcp-method";
pub const NAME_HEADER: &str = "mcp-name";
const PARAM_HEADER_PREFIX: &str = "mcp-param-";
/// A header value that is not plain visible ASCII travels Base64-wrapped as `=?base64?…?=`.
const BASE64_PREFIX: &str = "=?base64?";
const BASE64_SUFFIX: &str = "?=";
/// How deep `x-mcp-header` annotations are looked for in nested `properties`.
const MAX_DEPTH: usize = 8;

/// Checks `Mcp-Method` and `Mcp-Name` against the body's method and params.
pub fn check_routing(
    headers: &HeaderMap,
    method: &str,
    params: Option<&Value>,
) -> Result<(), ErrorData> {
    if single(headers, METHOD_HEADER).map(str::trim) != Some(method) {
        return Err(jsonrpc::header_mismatch(
            "the Mcp-Method header must be present and equal to the body's method",
        ));
    }
    let Some((field, body_name)) = named_target(method, params) else {
        return Ok(());
    };
    let header_name = single(headers, NAME_HEADER).and_then(decode);
    if header_name.as_deref() != Some(body_name) {
        return Err(jsonrpc::header_mismatch(format!(
            "the Mcp-Name header must be present and equal to the body's params.{field} for \
             {method}"
        )));
    }
    Ok(())
}

/// The body field `Mcp-Name` repeats for `method`, and its value: the methods the 2026-07-28
/// transport names (others carry no `Mcp-Name`). It is also what a request works on (the
/// relay binds a requestState to it).
pub fn named_target<'a>(
    method: &str,
    params: Option<&'a Value>,
) -> Option<(&'static str, &'a str)> {
    let field = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        "tasks/get" | "tasks/update" | "tasks/cancel" => "taskId",
        _ => return None,
    };
    params?.get(field)?.as_str().map(|v| (field, v))
}

/// Checks a `tools/call`'s `Mcp-Param-*` headers against its arguments, for each argument
/// `schema` marks with `x-mcp-header`: present in the body means the header must be there and
/// equal (a string, number or boolean, as text); absent means the header must be too.
pub fn check_params(
    headers: &HeaderMap,
    schema: &JsonObject,
    arguments: Option<&Value>,
) -> Result<(), ErrorData> {
    let mut marked = Vec::new();
    annotations(schema.get("properties"), &mut Vec::new(), &mut marked);
    for (path, suffix) in marked {
        let header = format!("{PARAM_HEADER_PREFIX}{}", suffix.to_ascii_lowercase());
        let shown = format!("Mcp-Param-{suffix}");
        let prop = path.join(".");
        let body = arguments
            .and_then(|a| path.iter().try_fold(a, |v, k| v.get(*k)))
            .and_then(as_text);
        let sent = headers.get_all(header.as_str()).iter().count();
        if sent > 1 {
            return Err(jsonrpc::header_mismatch(format!(
                "the {shown} header is sent {sent} times: send it once"
            )));
        }
        let value = single(headers, &header);
        match (value, body) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(jsonrpc::header_mismatch(format!(
                    "the {shown} header is sent but argument {prop} is not"
                )));
            }
            (None, Some(_)) => {
                return Err(jsonrpc::header_mismatch(format!(
                    "argument {prop} needs the {shown} header (its schema says x-mcp-header)"
                )));
            }
            (Some(raw), Some(expected)) => match decode(raw) {
                None => {
                    return Err(jsonrpc::header_mismatch(format!(
                        "the {shown} header is not valid Base64 inside {BASE64_PREFIX}…{BASE64_SUFFIX}"
                    )));
                }
                Some(v) if v != expected => {
                    return Err(jsonrpc::header_mismatch(format!(
                        "the {shown} header differs from argument {prop}"
                    )));
                }
                Some(_) => {}
            },
        }
    }
    Ok(())
}

/// Every `(path, header suffix)` an input schema marks with `x-mcp-header`, following
/// `properties` only.
fn annotations<'a>(
    properties: Option<&'a Value>,
    path: &mut Vec<&'a str>,
    out: &mut Vec<(Vec<&'a str>, &'a str)>,
) {
    let Some(props) = properties.and_then(Value::as_object) else {
        return;
    };
    if path.len() >= MAX_DEPTH {
        return;
    }
    for (name, prop) in props {
        path.push(name);
        if let Some(suffix) = prop.get("x-mcp-header").and_then(Value::as_str)
            && !suffix.is_empty()
            && suffix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            out.push((path.clone(), suffix));
        }
        annotations(prop.get("properties"), path, out);
        path.pop();
    }
}

/// A primitive argument as header text (objects, arrays and null have none).
fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A header's text without surrounding whitespace (never part of a field value), unwrapped
/// from `=?base64?…?=` when it is wrapped; None when the wrapped text is not strict Base64 of
/// UTF-8. A value merely starting or ending like the wrapper is taken literally.
fn decode(raw: &str) -> Option<String> {
    let raw = raw.trim();
    match raw
        .strip_prefix(BASE64_PREFIX)
        .and_then(|inner| inner.strip_suffix(BASE64_SUFFIX))
    {
        Some(inner) => String::from_utf8(BASE64_STANDARD.decode(inner).ok()?).ok(),
        None => Some(raw.to_owned()),
    }
}

/// The one value of header `name` as text (None when absent or not visible ASCII).
fn single<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn schema() -> JsonObject {
        json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "count": {"type": "integer", "x-mcp-header": "Count"},
            "plain": {"type": "string"},
            "nested": {"type": "object", "properties": {
                "flag": {"type": "boolean", "x-mcp-header": "Flag"}}},
        }})
        .as_object()
        .unwrap()
        .clone()
    }

    fn code(r: Result<(), ErrorData>) -> i32 {
        r.err().map_or(0, |e| e.code.0)
    }

    #[test]
    fn param_headers_must_repeat_the_marked_arguments() {
        let s = schema();
        let args = json!({"region": "Hello", "count": 3, "plain": "x", "nested": {"flag": true}});
        let all = [
            ("mcp-param-region", "Hello"),
            ("Mcp-Param-Count", "3"),
            ("mcp-param-flag", " true "),
        ];
        assert_eq!(code(check_params(&headers(&all), &s, Some(&args))), 0);
        // Base64, strict: a valid wrapper decodes; bad padding or characters are refused.
        let wrapped = [
            ("mcp-param-region", "=?base64?SGVsbG8=?="),
            ("mcp-param-count", "3"),
            ("mcp-param-flag", "true"),
        ];
        assert_eq!(code(check_params(&headers(&wrapped), &s, Some(&args))), 0);
        for bad in [
            "=?base64?SGVsbG8?=",
            "=?base64?SGVs!!!bG8=?=",
            "hello",
            "Hello2",
        ] {
            let h = [
                ("mcp-param-region", bad),
                ("mcp-param-count", "3"),
                ("mcp-param-flag", "true"),
            ];
            assert_eq!(
                code(check_params(&headers(&h), &s, Some(&args))),
                -32020,
                "{bad}"
            );
        }
        // A value only looking half like the wrapper is literal.
        let literal = json!({"region": "=?base64?SGVsbG8="});
        let h = [("mcp-param-region", "=?base64?SGVsbG8=")];
        assert_eq!(code(check_params(&headers(&h), &s, Some(&literal))), 0);
        // Missing header for a present argument; a header for an absent one; sent twice.
        let h = [("mcp-param-count", "3"), ("mcp-param-flag", "true")];
        assert_eq!(code(check_params(&headers(&h), &s, Some(&args))), -32020);
        let h = [("mcp-param-region", "Hello")];
        assert_eq!(
            code(check_params(&headers(&h), &s, Some(&json!({})))),
            -32020
        );
        let twice = [
            ("mcp-param-region", "Hello"),
            ("mcp-param-region", "Hello"),
            ("mcp-param-count", "3"),
            ("mcp-param-flag", "true"),
        ];
        assert_eq!(
            code(check_params(&headers(&twice), &s, Some(&args))),
            -32020
        );
        // No marked arguments, no headers needed.
        assert_eq!(code(check_params(&headers(&[]), &s, None)), 0);
    }

    #[test]
    fn method_and_name_headers_must_repeat_the_body() {
        let call = json!({"name": "echo"});
        let ok = [("mcp-method", "tools/call"), ("mcp-name", "echo")];
        assert_eq!(
            code(check_routing(&headers(&ok), "tools/call", Some(&call))),
            0
        );
        let b64 = [
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?ZWNobw==?="),
        ];
        assert_eq!(
            code(check_routing(&headers(&b64), "tools/call", Some(&call))),
            0
        );
        for h in [
            vec![("mcp-method", "tools/call")],
            vec![("mcp-method", "tools/call"), ("mcp-name", "other")],
            vec![("mcp-method", "TOOLS/CALL"), ("mcp-name", "echo")],
            vec![("mcp-name", "echo")],
        ] {
            assert_eq!(
                code(check_routing(&headers(&h), "tools/call", Some(&call))),
                -32020,
                "{h:?}"
            );
        }
        let read = json!({"uri": "test://x"});
        let h = [("mcp-method", "resources/read"), ("mcp-name", "test://y")];
        assert_eq!(
            code(check_routing(&headers(&h), "resources/read", Some(&read))),
            -32020
        );
        let h = [("mcp-method", "tools/list")];
        assert_eq!(code(check_routing(&headers(&h), "tools/list", None)), 0);
    }
}
