//! The JSON-RPC connection to one running upstream server, over its room relay: requests get
//! ids and their answers are matched back, notifications are routed to the calls they concern,
//! and the server's own requests go to the client of a call it is serving. It knows nothing of
//! users, tool names or config.

use crate::context::{Ask, Notice, NoticeSink, Progress};
use lodge_core::mux::Pending;
use lodge_protocol::{OpResult, Stream};
use lodge_room::client::{CallError, Event, Relay, RelayInput};
use rmcp::model::ErrorData;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Stderr kept for error messages: the last lines, at most this many bytes.
const STDERR_TAIL: usize = 2048;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    /// The server answered with a JSON-RPC error.
    #[error("{message}")]
    Rpc {
        code: i64,
        message: String,
        data: Option<Value>,
    },
    /// The instance is gone (exited, killed, broke the protocol, or its room stopped).
    #[error("{0}")]
    Dead(String),
    #[error("no answer to {method} within {after:?}")]
    Timeout { method: String, after: Duration },
}

/// Where one request's notices go: its progress (when its client asked for progress), the
/// server's notifications meanwhile, and the server's questions to the client.
#[derive(Debug, Clone)]
pub struct Listener {
    pub sink: NoticeSink,
    pub progress: bool,
}

/// Requests waiting for the server's answer, each with where its notices go.
type Requests = Pending<Result<Value, ConnError>, Option<Listener>>;

/// The requests a server may send its client, which the hub passes on to the client of one of
/// the calls the server is serving.
const CLIENT_REQUESTS: [&str; 3] = ["sampling/createMessage", "elicitation/create", "roots/list"];

pub struct Conn {
    label: String,
    input: RelayInput,
    pending: Arc<Requests>,
    dead: CancellationToken,
    /// Cancelled to stop the instance (idle, hung, its user removed).
    stopping: CancellationToken,
    reason: Mutex<Option<String>>,
    stderr: Mutex<VecDeque<String>>,
    /// Signalled when the server says its tools, prompts or resources changed.
    pub changed: Notify,
    /// Takes what the server says outside any request of a client's (updates of subscribed
    /// resources).
    outside: Box<dyn Fn(Value) + Send + Sync>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    /// Takes over a relay just opened in the room and starts routing its traffic. `label`
    /// names the instance in logs and in the reason given when it dies; `outside` takes the
    /// server's notifications that belong to no request.
    pub fn start(
        label: String,
        relay: Relay,
        events: mpsc::UnboundedReceiver<Event>,
        outside: Box<dyn Fn(Value) + Send + Sync>,
    ) -> Arc<Conn> {
        let input = relay.input();
        let cancels = input.clone();
        let conn = Arc::new(Conn {
            label: label.clone(),
            input,
            // A request nobody waits for any more (the client went away, or it timed out)
            // is cancelled at the server.
            pending: Pending::new(move |id| {
                let _ = cancels.send(json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": id, "reason": "the client went away or the call timed out"},
                }));
            }),
            dead: CancellationToken::new(),
            stopping: CancellationToken::new(),
            reason: Mutex::new(None),
            stderr: Mutex::new(VecDeque::new()),
            changed: Notify::new(),
            outside,
        });
        tokio::spawn(route(conn.clone(), label, relay, events));
        conn
    }

    /// Sends request `method` and waits for its answer, at most `timeout`. Its progress, the
    /// server's notifications and its questions to the client meanwhile go to `listener`.
    /// Dropping the future before the answer tells the server the request was cancelled.
    pub async fn request(
        &self,
        method: &str,
        mut params: Value,
        listener: Option<Listener>,
        timeout: Duration,
    ) -> Result<Value, ConnError> {
        if let Some(reason) = self.dead_reason() {
            return Err(ConnError::Dead(reason));
        }
        let streams = listener.as_ref().is_some_and(|l| l.progress);
        // Dropping the waiter before the answer (also on a timeout) cancels the request.
        let Some(mut waiter) = self.pending.register(listener) else {
            return Err(ConnError::Dead(self.reason_or("the instance stopped")));
        };
        let id = waiter.id();
        if streams && let Some(p) = params.as_object_mut() {
            // Our own token: the server's progress is routed back by it (the client's token
            // is for the hub's reply stream, which maps it back).
            let meta = p.entry("_meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("progressToken".into(), json!(id));
            }
        }
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if self.input.send(message).is_err() {
            return Err(ConnError::Dead(self.reason_or("the room relay closed")));
        }
        match tokio::time::timeout(timeout, waiter.answer()).await {
            Ok(Some(result)) => result,
            Ok(None) => Err(ConnError::Dead(self.reason_or("the instance stopped"))),
            Err(_) => Err(ConnError::Timeout {
                method: method.to_owned(),
                after: timeout,
            }),
        }
    }

    /// Sends a notification (no answer expected).
    pub fn notify(&self, method: &str, params: Value) {
        let _ = self
            .input
            .send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Stops the instance: it is dead from now on (so no new request reaches it), and its
    /// relay is dropped, which kills the server in the room.
    pub fn stop(&self) {
        self.die(format!("server {} was stopped", self.label));
        self.stopping.cancel();
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    pub fn dead_reason(&self) -> Option<String> {
        lock(&self.reason).clone()
    }

    /// Resolves when the instance is gone.
    pub async fn closed(&self) {
        self.dead.cancelled().await
    }

    fn reason_or(&self, fallback: &str) -> String {
        self.dead_reason().unwrap_or_else(|| fallback.to_owned())
    }

    /// Marks the connection dead and fails every waiting request with `reason`.
    fn die(&self, reason: String) {
        lock(&self.reason).get_or_insert(reason.clone());
        self.dead.cancel();
        self.pending.close(|| Err(ConnError::Dead(reason.clone())));
    }

    fn stderr_tail(&self) -> String {
        let lines = lock(&self.stderr);
        lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" | ")
    }

    fn keep_stderr(&self, line: &str) {
        let mut lines = lock(&self.stderr);
        lines.push_back(line.trim_end().chars().take(STDERR_TAIL).collect());
        while lines.iter().map(String::len).sum::<usize>() > STDERR_TAIL && lines.len() > 1 {
            lines.pop_front();
        }
    }

    fn answer(&self, message: &Value) {
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            tracing::debug!("an upstream answer with an id we never used");
            return;
        };
        if !self.pending.contains(id) {
            return; // cancelled or timed out meanwhile
        }
        let result = match (message.get("result"), message.get("error")) {
            (Some(r), _) => Ok(r.clone()),
            (None, Some(e)) => Err(ConnError::Rpc {
                code: e.get("code").and_then(Value::as_i64).unwrap_or(-32603),
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("(no message)")
                    .chars()
                    .take(4000)
                    .collect(),
                data: e.get("data").cloned(),
            }),
            (None, None) => Err(ConnError::Rpc {
                code: -32603,
                message: "the server's answer has neither result nor error".into(),
                data: None,
            }),
        };
        self.pending.complete(id, result);
    }

    /// Sends `notice` to every running request that streams to its client.
    fn broadcast(&self, notice: &Value) {
        self.pending.each(|listener| {
            if let Some(l) = listener {
                let _ = l.sink.send(Notice::Notification(notice.clone()));
            }
        });
    }

    fn notification(&self, label: &str, method: &str, message: &Value) {
        let params = message.get("params").cloned().unwrap_or(Value::Null);
        match method {
            "notifications/progress" => {
                let token = params.get("progressToken").and_then(Value::as_u64);
                let sink = token
                    .and_then(|t| self.pending.with(t, Option::clone).flatten())
                    .filter(|l| l.progress)
                    .map(|l| l.sink);
                if let Some(sink) = sink {
                    let _ = sink.send(Notice::Progress(Progress {
                        progress: params
                            .get("progress")
                            .and_then(Value::as_f64)
                            .unwrap_or(0.0),
                        total: params.get("total").and_then(Value::as_f64),
                        message: params
                            .get("message")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    }));
                }
            }
            // The hub re-reads the lists and then tells clients (their lists are the hub's).
            "notifications/tools/list_changed"
            | "notifications/prompts/list_changed"
            | "notifications/resources/list_changed" => self.changed.notify_one(),
            "notifications/message" => {
                tracing::debug!(server = label, method, "upstream log message");
                self.broadcast(message);
            }
            "notifications/resources/updated" => (self.outside)(message.clone()),
            _ => tracing::debug!(server = label, method, "upstream notification ignored"),
        }
    }

    /// The server asked its client something. `ping` is answered here; sampling, elicitation
    /// and roots go to the client of the newest call the server is serving (the instance is
    /// one user's, so any of its calls is that user's; stdio says nothing of which call a
    /// question belongs to); with no call to ask, the server gets an error.
    fn server_request(&self, method: &str, id: &Value, params: Value) {
        if method == "ping" {
            let _ = self.input.send(reply(id, Ok(json!({}))));
            return;
        }
        if !CLIENT_REQUESTS.contains(&method) {
            let e = ErrorData::new(
                rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                format!("{method} is not a request lodge passes on to clients"),
                None,
            );
            let _ = self.input.send(reply(id, Err(e)));
            return;
        }
        let (answered, replied) = oneshot::channel();
        let ask = Ask {
            method: method.to_owned(),
            params,
            key: None,
            reply: answered,
        };
        // An ask nobody takes is dropped, which answers the server below.
        if let Some(sink) = self.pending.newest(|l| l.as_ref().map(|l| l.sink.clone())) {
            let _ = sink.send(Notice::Ask(ask));
        }
        let (input, id, method) = (self.input.clone(), id.clone(), method.to_owned());
        tokio::spawn(async move {
            let outcome = replied.await.unwrap_or_else(|_| {
                Err(ErrorData::internal_error(
                    format!("no client is waiting on a call of this server to answer {method}"),
                    None,
                ))
            });
            let _ = input.send(reply(&id, outcome));
        });
    }

    fn dispatch(&self, label: &str, message: &Value) {
        if let Value::Array(batch) = message {
            for m in batch {
                self.dispatch(label, m);
            }
            return;
        }
        match (
            message.get("method").and_then(Value::as_str),
            message.get("id"),
        ) {
            (Some(method), Some(id)) => {
                let params = message.get("params").cloned().unwrap_or_else(|| json!({}));
                self.server_request(method, id, params)
            }
            (Some(method), None) => self.notification(label, method, message),
            (None, _) => self.answer(message),
        }
    }
}

/// The JSON-RPC response to the server's request `id`.
fn reply(id: &Value, outcome: Result<Value, ErrorData>) -> Value {
    match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e}),
    }
}

/// Routes the relay's events until the instance ends, then records why.
async fn route(
    conn: Arc<Conn>,
    label: String,
    mut relay: Relay,
    mut events: mpsc::UnboundedReceiver<Event>,
) {
    let handle = |conn: &Conn, event: Event| match event {
        Event::Message(m) => conn.dispatch(&label, &m),
        Event::Output {
            stream: Stream::Stderr,
            data,
        } => {
            tracing::debug!(server = %label, "upstream stderr: {}", data.trim_end());
            conn.keep_stderr(&data);
        }
        _ => {}
    };
    let finished = loop {
        tokio::select! {
            biased;
            Some(event) = events.recv() => handle(&conn, event),
            done = relay.finished() => break Some(done),
            () = conn.stopping.cancelled() => break None,
        }
    };
    drop(relay);
    // Whatever arrived before the end is still delivered (the last answers come first).
    while let Ok(event) = events.try_recv() {
        handle(&conn, event);
    }
    let mut reason = match finished {
        None => format!("server {label} was stopped"),
        Some(Ok(OpResult::Exited {
            code: Some(code), ..
        })) => format!("server {label} exited with code {code}"),
        Some(Ok(OpResult::Exited {
            signal: Some(sig), ..
        })) => format!("server {label} was killed by signal {sig}"),
        Some(Ok(_)) => format!("server {label} exited"),
        Some(Err(CallError::Op(e))) => e.message,
        Some(Err(CallError::Closed { reason })) => {
            format!("server {label} stopped with its room: {reason}")
        }
    };
    // Logged without stderr, which may hold what the user's secrets made the server print;
    // the user's own caller gets it.
    tracing::info!(server = %label, "upstream instance ended: {reason}");
    let tail = conn.stderr_tail();
    if !tail.is_empty() {
        reason.push_str(&format!(" (its last stderr: {tail})"));
    }
    conn.die(reason);
}
