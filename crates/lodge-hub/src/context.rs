//! What one MCP request carries besides its message: the caller, session, protocol revision,
//! the log level the client asked for, what the client declared it can do, and where its
//! notices go. Dispatch, tools and upstream servers read it; it holds no behaviour, so it
//! depends on nothing but [`Caller`] (and rmcp's types).

use crate::caller::Caller;
use rmcp::model::ErrorData;
#[allow(deprecated)]
use rmcp::model::LoggingLevel;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The context of one MCP request, passed by reference to dispatch and to every tool. It is
/// owned (not borrowed from the HTTP request), so a streamed reply can take it into its task.
#[derive(Debug)]
pub struct RequestContext {
    pub caller: Caller,
    pub session_id: Option<String>,
    /// The protocol revision the request speaks (the session's, or the stateless one).
    pub protocol: &'static str,
    /// What the client declared it answers (its session's, or this request's `_meta`).
    pub client: ClientCaps,
    /// Where the request's notices go (progress, an upstream server's notifications and its
    /// questions to the client): set for the requests that may have any.
    pub notices: Option<NoticeSink>,
    /// The client's `_meta.progressToken`, when it asked for progress.
    pub progress_token: Option<Value>,
    /// `inputResponses` a 2026-07-28 client sent without a requestState of the hub's: passed
    /// to a 2026-07-28 server as they are.
    pub input_responses: Option<Value>,
    /// The least severe log message the client wants: its session's `logging/setLevel`, or
    /// the request's `_meta` `io.modelcontextprotocol/logLevel` (2026-07-28). None: the
    /// revision's default, every message for a session, none for a 2026-07-28 request.
    #[allow(deprecated)] // rmcp marks logging old (SEP-2577); every revision still has it.
    pub log_level: Option<LoggingLevel>,
}

impl RequestContext {
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// Where progress goes: only when the client asked for it.
    pub fn progress(&self) -> Option<&NoticeSink> {
        self.progress_token.as_ref().and(self.notices.as_ref())
    }
}

/// The client capabilities an upstream server's questions need, as bits: an idle session
/// keeps one byte of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCaps(u8);

impl ClientCaps {
    const SAMPLING: u8 = 1;
    const ELICIT_FORM: u8 = 2;
    const ELICIT_URL: u8 = 4;
    const ROOTS: u8 = 8;

    /// From a client's declared `capabilities` object. `elicitation: {}` means form mode (the
    /// revisions before URL mode had only that).
    pub fn from_declared(caps: Option<&Value>) -> Self {
        let has = |k: &str| caps.and_then(|c| c.get(k)).is_some_and(Value::is_object);
        let mut bits = 0;
        if has("sampling") {
            bits |= Self::SAMPLING;
        }
        if has("roots") {
            bits |= Self::ROOTS;
        }
        if let Some(e) = caps
            .and_then(|c| c.get("elicitation"))
            .filter(|e| e.is_object())
        {
            let form = e.get("form").is_some();
            let url = e.get("url").is_some();
            if form || !url {
                bits |= Self::ELICIT_FORM;
            }
            if url {
                bits |= Self::ELICIT_URL;
            }
        }
        Self(bits)
    }

    pub fn from_bits(bits: u8) -> Self {
        Self(bits & 0x0f)
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    /// The capabilities object passed on to servers that read it per request.
    pub fn declared(self) -> Value {
        let mut caps = json!({});
        if self.0 & Self::SAMPLING != 0 {
            caps["sampling"] = json!({});
        }
        if self.0 & Self::ROOTS != 0 {
            caps["roots"] = json!({});
        }
        if self.0 & (Self::ELICIT_FORM | Self::ELICIT_URL) != 0 {
            let mut e = json!({});
            if self.0 & Self::ELICIT_FORM != 0 {
                e["form"] = json!({});
            }
            if self.0 & Self::ELICIT_URL != 0 {
                e["url"] = json!({});
            }
            caps["elicitation"] = e;
        }
        caps
    }

    /// Can the client answer request `method` (with these `params`)? Names the capability
    /// it lacks otherwise.
    pub fn answers(self, method: &str, params: &Value) -> Result<(), &'static str> {
        let (bit, name) = match method {
            "sampling/createMessage" => (Self::SAMPLING, "sampling"),
            "roots/list" => (Self::ROOTS, "roots"),
            "elicitation/create" if params.get("mode").and_then(Value::as_str) == Some("url") => {
                (Self::ELICIT_URL, "elicitation (url mode)")
            }
            "elicitation/create" => (Self::ELICIT_FORM, "elicitation"),
            _ => return Err("(a request clients do not answer)"),
        };
        if self.0 & bit != 0 { Ok(()) } else { Err(name) }
    }
}

/// One progress update of a running tool call (`notifications/progress`).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub progress: f64,
    pub total: Option<f64>,
    pub message: Option<String>,
}

/// A question an upstream server asks the client while one of the client's requests runs
/// (`sampling/createMessage`, `elicitation/create`, `roots/list`). Dropping it unanswered
/// answers the server with an error.
#[derive(Debug)]
pub struct Ask {
    pub method: String,
    pub params: Value,
    /// The name the server gave it (2026-07-28 servers name their input requests).
    pub key: Option<String>,
    pub reply: oneshot::Sender<Result<Value, ErrorData>>,
}

/// Something the client hears while its call runs (on the call's streamed reply).
#[derive(Debug)]
pub enum Notice {
    Progress(Progress),
    /// A JSON-RPC notification passed on whole (an upstream server's log message or list
    /// change).
    Notification(Value),
    Ask(Ask),
}

pub type NoticeSink = tokio::sync::mpsc::UnboundedSender<Notice>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_asked_only_what_it_declared() {
        let form_only = ClientCaps::from_declared(Some(&json!({"elicitation": {}})));
        let params = json!({"mode": "url", "url": "https://example.com/connect"});
        assert!(form_only.answers("elicitation/create", &json!({})).is_ok());
        assert_eq!(
            form_only.answers("elicitation/create", &params),
            Err("elicitation (url mode)"),
            "an empty elicitation object is form mode only"
        );
        let both = ClientCaps::from_declared(Some(&json!({
            "elicitation": {"form": {}, "url": {}}, "sampling": {}, "roots": {"listChanged": true}
        })));
        assert!(both.answers("elicitation/create", &params).is_ok());
        assert!(both.answers("sampling/createMessage", &json!({})).is_ok());
        assert!(both.answers("roots/list", &json!({})).is_ok());
        let url_only = ClientCaps::from_declared(Some(&json!({"elicitation": {"url": {}}})));
        assert_eq!(
            url_only.answers("elicitation/create", &json!({})),
            Err("elicitation")
        );
        let none = ClientCaps::from_declared(None);
        assert_eq!(
            none.answers("sampling/createMessage", &json!({})),
            Err("sampling")
        );
        assert!(none.answers("tools/call", &json!({})).is_err());
        // What a session stores is what it declared, and what a 2026-07-28 server hears.
        assert_eq!(ClientCaps::from_bits(both.bits()), both);
        assert_eq!(ClientCaps::from_declared(Some(&both.declared())), both);
    }
}
