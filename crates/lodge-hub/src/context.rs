//! What one MCP request carries besides its message: the caller, session, protocol revision,
//! the log level the client asked for and where its progress goes. Dispatch, tools and
//! upstream servers read it; it holds no behaviour, so it depends on nothing but [`Caller`]
//! (and rmcp's log level type).

use crate::caller::Caller;
#[allow(deprecated)]
use rmcp::model::LoggingLevel;

/// The context of one MCP request, passed by reference to dispatch and to every tool. It is
/// owned (not borrowed from the HTTP request), so a streamed reply can take it into its task.
#[derive(Debug)]
pub struct RequestContext {
    pub caller: Caller,
    pub session_id: Option<String>,
    /// The protocol revision the request speaks (the session's, or the stateless one).
    pub protocol: &'static str,
    /// Where progress and other notices go: set only when the client asked for progress (a
    /// `progressToken`) and accepts a streamed reply.
    pub progress: Option<NoticeSink>,
    /// The least severe log message the client wants: its session's `logging/setLevel`, or
    /// the request's `_meta` `io.modelcontextprotocol/logLevel` (2026-07-28). None: no log
    /// messages at all.
    #[allow(deprecated)] // rmcp marks logging old (SEP-2577); every revision still has it.
    pub log_level: Option<LoggingLevel>,
}

impl RequestContext {
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }
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
