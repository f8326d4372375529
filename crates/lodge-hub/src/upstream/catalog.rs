//! What an upstream server offers (tools, prompts, resource templates) and how its names are
//! shown to users: `{server}__{name}` for tools and prompts, `lodge://{server}/{uri}` for
//! resources. Plain data and name mapping; no I/O.

use serde_json::{Value, json};

/// Separator between a server's name and its tool or prompt name.
pub const SEPARATOR: &str = "__";
/// Prefix of resource URIs that name the server they come from.
const RESOURCE_SCHEME: &str = "lodge://";

/// One server's lists as its instance gave them (names unprefixed, fields kept whole).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tools: Vec<Value>,
    pub prompts: Vec<Value>,
    pub resource_templates: Vec<Value>,
    /// The server said it has resources (so `resources/list` asks it).
    pub has_resources: bool,
}

/// `{server}__{name}`.
pub fn qualify(server: &str, name: &str) -> String {
    format!("{server}{SEPARATOR}{name}")
}

/// Splits `{server}__{name}` (server names never contain `__`).
pub fn split(qualified: &str) -> Option<(&str, &str)> {
    qualified
        .split_once(SEPARATOR)
        .filter(|(s, n)| !s.is_empty() && !n.is_empty())
}

/// `lodge://{server}/{uri}`.
pub fn qualify_uri(server: &str, uri: &str) -> String {
    format!("{RESOURCE_SCHEME}{server}/{uri}")
}

/// Splits `lodge://{server}/{uri}` into the server and its own URI.
pub fn split_uri(uri: &str) -> Option<(&str, &str)> {
    uri.strip_prefix(RESOURCE_SCHEME)?
        .split_once('/')
        .filter(|(s, u)| !s.is_empty() && !u.is_empty())
}

/// A copy of a list entry with its `field` rewritten by `f` (entries without it are dropped:
/// a tool without a name cannot be called).
pub fn renamed(entry: &Value, field: &str, f: impl Fn(&str) -> String) -> Option<Value> {
    let name = entry.get(field)?.as_str()?;
    let mut out = entry.clone();
    out[field] = json!(f(name));
    Some(out)
}

/// Rewrites every `uri` in a `resources/read` result to its qualified form.
pub fn qualify_contents(server: &str, result: &mut Value) {
    if let Some(contents) = result.get_mut("contents").and_then(Value::as_array_mut) {
        for c in contents {
            if let Some(uri) = c.get("uri").and_then(Value::as_str) {
                c["uri"] = json!(qualify_uri(server, uri));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(
            split(&qualify("git", "git_status")),
            Some(("git", "git_status"))
        );
        assert_eq!(
            split("everything__get-sum"),
            Some(("everything", "get-sum"))
        );
        // A tool whose own name has the separator keeps it.
        assert_eq!(split("srv__a__b"), Some(("srv", "a__b")));
        for bad in ["plain", "__x", "x__"] {
            assert_eq!(split(bad), None, "{bad}");
        }
        let uri = qualify_uri("probe", "probe://echo/{text}");
        assert_eq!(uri, "lodge://probe/probe://echo/{text}");
        assert_eq!(split_uri(&uri), Some(("probe", "probe://echo/{text}")));
        assert_eq!(split_uri("file:///etc/passwd"), None);
        assert_eq!(split_uri("lodge://probe"), None);
    }

    #[test]
    fn renaming_keeps_other_fields() {
        let t = json!({"name": "echo", "inputSchema": {"type": "object"}, "annotations": {"x": 1}});
        let r = renamed(&t, "name", |n| qualify("probe", n)).unwrap();
        assert_eq!(r["name"], "probe__echo");
        assert_eq!(r["annotations"]["x"], 1);
        assert!(renamed(&json!({"title": "nameless"}), "name", str::to_owned).is_none());
        let mut read = json!({"contents": [{"uri": "probe://hello", "text": "hi"}]});
        qualify_contents("probe", &mut read);
        assert_eq!(read["contents"][0]["uri"], "lodge://probe/probe://hello");
    }
}
