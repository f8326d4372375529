//! What reaches a client while its request runs, and the client's answers: progress, an
//! upstream server's notifications, and its questions (sampling, elicitation, roots).
//! Sessionful clients hear them on the request's event stream and answer questions by POSTing
//! responses. 2026-07-28 clients get an input-required result and answer by retrying with its
//! `requestState`, while the request waits here, parked, for at most [`PARK_TIMEOUT`].
//! This module decides how a request is answered (JSON or an event stream); what the request
//! does is dispatch's.

use crate::context::{Ask, ClientCaps, Notice, Progress};
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmcp::model::{ErrorCode, ErrorData, RequestStateCodec, SealOptions};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a 2026-07-28 request waits for its client to come back with the input it needs.
pub const PARK_TIMEOUT: Duration = Duration::from_secs(300);
/// Questions a server asks within this long of each other go to the client in one round.
const ROUND_GRACE: Duration = Duration::from_millis(10);
/// Requests waiting for input, per user and in all (each holds a running upstream call).
const MAX_PARKED_PER_USER: usize = 32;
const MAX_PARKED: usize = 10_000;

/// The methods whose requests may ask the client something on the way (2026-07-28 allows an
/// input-required result on these only).
pub const ASKING_METHODS: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

/// A request's work, running in its own task, and the notices it sends meanwhile. Dropping it
/// aborts the work (which cancels what it asked of the room or an upstream server).
pub struct Running {
    work: JoinHandle<(StatusCode, Value)>,
    notices: mpsc::UnboundedReceiver<Notice>,
    /// The work's notice sender is gone (it finished, or sends nothing more).
    quiet: bool,
}

impl Running {
    pub fn new(
        work: JoinHandle<(StatusCode, Value)>,
        notices: mpsc::UnboundedReceiver<Notice>,
    ) -> Self {
        Self {
            work,
            notices,
            quiet: false,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.work.abort();
    }
}

/// What the relay needs to know of the client's request.
pub struct Exchange {
    pub user_id: i64,
    /// The legacy session the request came in (its answers come back in it).
    pub session: Option<String>,
    pub modern: bool,
    pub client: ClientCaps,
    /// The JSON-RPC id of the client's request.
    pub id: Value,
    /// What a requestState is bound to besides the user: the method and its tool, prompt or
    /// resource.
    pub method: String,
    pub target: String,
    /// The client accepts an event stream as the answer.
    pub streams: bool,
    pub progress_token: Option<Value>,
    /// The least severe log message (`notifications/message`) the client wants, as a rank of
    /// [`LOG_LEVELS`]; None for none.
    pub min_log: Option<usize>,
}

/// Log severities, least severe first, as `notifications/message` names them.
pub const LOG_LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// The rank of a log level's name in [`LOG_LEVELS`].
pub fn log_rank(level: &str) -> Option<usize> {
    LOG_LEVELS.iter().position(|l| *l == level)
}

/// Does a client that wants logs from rank `min` on hear `notification`?
fn hears(min: Option<usize>, notification: &Value) -> bool {
    if notification.get("method").and_then(Value::as_str) != Some("notifications/message") {
        return true;
    }
    let level = notification
        .pointer("/params/level")
        .and_then(Value::as_str)
        .and_then(log_rank);
    match (min, level) {
        (None, _) => false,
        (Some(min), Some(level)) => level >= min,
        // A message of no known level is heard by whoever wants any.
        (Some(_), None) => true,
    }
}

/// A question asked of a 2026-07-28 client and not yet answered.
struct Open {
    request: Value,
    reply: oneshot::Sender<Result<Value, ErrorData>>,
}

/// A 2026-07-28 request waiting for its client to retry with input.
struct Parked {
    user_id: i64,
    running: Running,
    open: BTreeMap<String, Open>,
    expires: Instant,
}

type Replies = HashMap<(String, String), oneshot::Sender<Result<Value, ErrorData>>>;

pub struct Relay {
    codec: RequestStateCodec,
    next: AtomicU64,
    /// Questions sent to sessionful clients on an event stream, by (session, request id).
    asked: Mutex<Replies>,
    parked: Mutex<HashMap<u64, Parked>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a retry with a requestState is refused.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(
        "requestState was not issued by this hub for this request: it was altered, belongs to \
         another user or request, or expired; call again without requestState and inputResponses"
    )]
    Forged,
    #[error(
        "the request this requestState belongs to is gone (it waited over {}s, or the hub \
         restarted): call again without requestState and inputResponses",
        PARK_TIMEOUT.as_secs()
    )]
    Gone,
    #[error("inputResponses must be an object of answers by input request key")]
    Malformed,
}

impl ResumeError {
    pub fn rpc(&self) -> ErrorData {
        ErrorData::new(ErrorCode::INVALID_PARAMS, self.to_string(), None)
    }
}

/// A retried request: asked again for what it still lacks, or running on.
pub enum Resumed {
    Again(Value),
    Go(Running),
}

impl Default for Relay {
    fn default() -> Self {
        Self::new()
    }
}

impl Relay {
    pub fn new() -> Self {
        // A fresh key per process: a parked request lives in this process only, so a state
        // from before a restart is rightly refused.
        let key: [u8; 32] = rand::random();
        Self {
            codec: RequestStateCodec::try_new(key.to_vec()).expect("a 32-byte key is long enough"),
            next: AtomicU64::new(1),
            asked: Mutex::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
        }
    }

    /// Answers the client's request from its running work: as JSON if the work ends before
    /// it says anything the client hears, else as an event stream. Returns once the answer's
    /// form is decided; the stream (if any) is fed by a task of its own.
    pub async fn respond(self: &Arc<Self>, ex: Exchange, running: Running) -> Response {
        let (decided, response) = oneshot::channel();
        tokio::spawn(self.clone().drive(ex, running, decided));
        response.await.unwrap_or_else(|_| {
            let body = super::jsonrpc::error_body(
                Value::Null,
                &super::jsonrpc::internal("the request's work ended without an answer"),
            );
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &body)
        })
    }

    /// A sessionful client's answer to a question the hub sent it; false if none waits.
    pub fn answer(&self, session: &str, id: &Value, outcome: Result<Value, ErrorData>) -> bool {
        let key = (session.to_owned(), id_key(id));
        match lock(&self.asked).remove(&key) {
            Some(reply) => reply.send(outcome).is_ok(),
            None => false,
        }
    }

    /// A 2026-07-28 retry: `params` carries the requestState this hub issued and the
    /// client's inputResponses.
    pub fn resume(
        &self,
        ex: &Exchange,
        state: &str,
        responses: Option<&Value>,
    ) -> Result<Resumed, ResumeError> {
        let bound = binding(ex);
        let opened = self
            .codec
            .open_with(state, bound.as_bytes())
            .map_err(|_| ResumeError::Forged)?;
        let id = u64::from_be_bytes(opened.try_into().map_err(|_| ResumeError::Forged)?);
        let responses = match responses {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(ResumeError::Malformed),
        };
        let mut parked = {
            let mut all = lock(&self.parked);
            sweep(&mut all);
            all.remove(&id).ok_or(ResumeError::Gone)?
        };
        if parked.user_id != ex.user_id {
            // The binding names the user, so this cannot happen; refuse all the same.
            return Err(ResumeError::Forged);
        }
        // Answers to unknown keys are ignored; a key without a usable answer is asked again.
        let keys: Vec<String> = parked.open.keys().cloned().collect();
        for key in keys {
            if let Some(answer) = responses.get(&key).filter(|a| a.is_object())
                && let Some(open) = parked.open.remove(&key)
            {
                let _ = open.reply.send(Ok(answer.clone()));
            }
        }
        if parked.open.is_empty() {
            return Ok(Resumed::Go(parked.running));
        }
        let again = self.input_required(ex, id, &parked.open);
        lock(&self.parked).insert(id, parked);
        Ok(Resumed::Again(again))
    }

    /// Drives one request to its end: passes its notices on, relays its questions, and
    /// decides the answer's form when there is first something to send.
    async fn drive(
        self: Arc<Self>,
        ex: Exchange,
        mut running: Running,
        decided: oneshot::Sender<Response>,
    ) {
        let mut out = Out::Undecided(Some(decided));
        // Questions sent on this stream and not yet answered are forgotten when it ends.
        let mut sent = Sent {
            relay: self.clone(),
            keys: Vec::new(),
        };
        loop {
            let notice = tokio::select! {
                biased;
                notice = running.notices.recv(), if !running.quiet => notice,
                done = &mut running.work => {
                    let (status, mut body) = done.unwrap_or_else(|e| {
                        let e = super::jsonrpc::internal(format!("the request's work failed: {e}"));
                        (StatusCode::INTERNAL_SERVER_ERROR, super::jsonrpc::error_body(Value::Null, &e))
                    });
                    // A resumed request answers under the id of the retry, not the first try.
                    body["id"] = ex.id.clone();
                    out.finish(status, body).await;
                    return;
                }
                () = out.gone() => return,
            };
            let message = match notice {
                None => {
                    running.quiet = true;
                    continue;
                }
                Some(Notice::Progress(p)) => match &ex.progress_token {
                    Some(token) if ex.streams => progress(token, p),
                    _ => continue,
                },
                Some(Notice::Notification(n)) => {
                    if !ex.streams || !hears(ex.min_log, &n) {
                        continue;
                    }
                    n
                }
                Some(Notice::Ask(ask)) => {
                    let Some(ask) = self.check(&ex, ask) else {
                        continue;
                    };
                    if ex.modern {
                        let round = collect_round(ask, &mut running, &ex, &self).await;
                        let body = self.park(&ex, running, round);
                        out.finish(StatusCode::OK, body).await;
                        return;
                    }
                    let rid = format!("lodge-{}", self.next.fetch_add(1, Ordering::Relaxed));
                    if let Some(session) = &ex.session {
                        let key = (session.clone(), rid.clone());
                        lock(&self.asked).insert(key.clone(), ask.reply);
                        sent.keys.push(key);
                    }
                    json!({"jsonrpc": "2.0", "id": rid, "method": ask.method, "params": ask.params})
                }
            };
            if !out.event(&message).await {
                return; // the client left: dropping `running` cancels the work
            }
        }
    }

    /// The question if the client can answer it; else it is declined to the server here.
    fn check(&self, ex: &Exchange, ask: Ask) -> Option<Ask> {
        let refusal = match ex.client.answers(&ask.method, &ask.params) {
            Err(missing) => format!("the client did not declare the {missing} capability"),
            Ok(()) if !ex.modern && (!ex.streams || ex.session.is_none()) => {
                "the client's request does not accept an event stream, which questions travel on"
                    .to_owned()
            }
            Ok(()) => return Some(ask),
        };
        let e = ErrorData::new(ErrorCode(-32021), refusal, None);
        let _ = ask.reply.send(Err(e));
        None
    }

    /// Parks a 2026-07-28 request with its open questions; the input-required result to send.
    fn park(&self, ex: &Exchange, running: Running, round: Vec<Ask>) -> Value {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut open = BTreeMap::new();
        for (n, ask) in round.into_iter().enumerate() {
            let key = ask
                .key
                .clone()
                .unwrap_or_else(|| format!("input_{}", n + 1));
            let request = json!({"method": ask.method, "params": ask.params});
            open.insert(
                key,
                Open {
                    request,
                    reply: ask.reply,
                },
            );
        }
        let result = self.input_required(ex, id, &open);
        {
            let mut all = lock(&self.parked);
            sweep(&mut all);
            let mine = all.values().filter(|p| p.user_id == ex.user_id).count();
            if mine >= MAX_PARKED_PER_USER || all.len() >= MAX_PARKED {
                // Dropping `open` declines the questions: the work ends with the server's error.
                let e = ErrorData::new(
                    ErrorCode(-32000),
                    format!(
                        "too many requests wait for input ({MAX_PARKED_PER_USER} per user): \
                         answer or abandon them first"
                    ),
                    None,
                );
                return super::jsonrpc::error_body(ex.id.clone(), &e);
            }
            all.insert(
                id,
                Parked {
                    user_id: ex.user_id,
                    running,
                    open,
                    expires: Instant::now() + PARK_TIMEOUT,
                },
            );
        }
        super::jsonrpc::result_body(ex.id.clone(), result)
    }

    /// The input-required result asking the `open` questions of parked request `id`.
    fn input_required(&self, ex: &Exchange, id: u64, open: &BTreeMap<String, Open>) -> Value {
        let requests: Map<String, Value> = open
            .iter()
            .map(|(k, o)| (k.clone(), o.request.clone()))
            .collect();
        let state = self.codec.seal_with(
            &id.to_be_bytes(),
            &SealOptions::new()
                .associated_data(binding(ex).as_bytes())
                .ttl(PARK_TIMEOUT),
        );
        json!({
            "resultType": "input_required",
            "inputRequests": requests,
            "requestState": state,
        })
    }
}

/// Gathers the questions a server asks together with `first` (within [`ROUND_GRACE`] of each
/// other) into one round.
async fn collect_round(
    first: Ask,
    running: &mut Running,
    ex: &Exchange,
    relay: &Relay,
) -> Vec<Ask> {
    let mut round = vec![first];
    while let Ok(Some(notice)) = tokio::time::timeout(ROUND_GRACE, running.notices.recv()).await {
        if let Notice::Ask(ask) = notice
            && let Some(ask) = relay.check(ex, ask)
        {
            round.push(ask);
        }
    }
    round
}

/// What a requestState is bound to: the user, and the request it continues.
fn binding(ex: &Exchange) -> String {
    format!("{}\n{}\n{}", ex.user_id, ex.method, ex.target)
}

fn id_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Drops requests that waited too long for input (their questions are declined).
fn sweep(all: &mut HashMap<u64, Parked>) {
    let now = Instant::now();
    all.retain(|_, p| p.expires > now);
}

/// The questions one stream sent; forgotten when it ends, so a late answer finds nothing.
struct Sent {
    relay: Arc<Relay>,
    keys: Vec<(String, String)>,
}

impl Drop for Sent {
    fn drop(&mut self) {
        let mut asked = lock(&self.relay.asked);
        for k in &self.keys {
            asked.remove(k);
        }
    }
}

/// The answer to the client: not yet decided, or an event stream under way.
enum Out {
    Undecided(Option<oneshot::Sender<Response>>),
    Streaming(mpsc::Sender<Bytes>),
}

impl Out {
    /// Sends one event, starting the stream if needed; false when the client has left.
    async fn event(&mut self, message: &Value) -> bool {
        if let Out::Undecided(decided) = self {
            let (tx, rx) = mpsc::channel::<Bytes>(16);
            let sent = decided
                .take()
                .is_some_and(|d| d.send(stream_response(rx)).is_ok());
            if !sent {
                return false;
            }
            *self = Out::Streaming(tx);
        }
        match self {
            Out::Streaming(tx) => tx.send(event(message)).await.is_ok(),
            Out::Undecided(_) => false,
        }
    }

    /// Sends the request's final message: as the JSON answer, or as the stream's last event.
    async fn finish(self, status: StatusCode, body: Value) {
        match self {
            Out::Undecided(Some(decided)) => {
                let _ = decided.send(json_response(status, &body));
            }
            Out::Undecided(None) => {}
            Out::Streaming(tx) => {
                let _ = tx.send(event(&body)).await;
            }
        }
    }

    /// Resolves when the client is gone (before the answer was decided, or mid-stream).
    async fn gone(&mut self) {
        match self {
            Out::Undecided(Some(decided)) => decided.closed().await,
            Out::Streaming(tx) => tx.closed().await,
            Out::Undecided(None) => std::future::pending().await,
        }
    }
}

pub(super) fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    stream_response_keeping(rx, ())
}

/// An event stream of what `rx` receives; `keep` lives as long as the stream (its `Drop` says
/// when the client is gone).
pub(super) fn stream_response_keeping<K: Send + 'static>(
    rx: mpsc::Receiver<Bytes>,
    keep: K,
) -> Response {
    let stream = futures::stream::unfold((rx, keep), |(mut rx, keep)| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(b), (rx, keep)))
    });
    let mut r = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn progress(token: &Value, p: Progress) -> Value {
    let mut params = json!({ "progressToken": token, "progress": p.progress });
    if let Some(total) = p.total {
        params["total"] = json!(total);
    }
    if let Some(message) = p.message {
        params["message"] = json!(message);
    }
    json!({ "jsonrpc": "2.0", "method": "notifications/progress", "params": params })
}

/// One SSE `message` event carrying a JSON-RPC message.
pub(super) fn event(msg: &Value) -> Bytes {
    let data = serde_json::to_string(msg).unwrap_or_default();
    Bytes::from(format!("event: message\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(level: &str) -> Value {
        json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": level, "data": "x"}})
    }

    #[test]
    fn log_messages_are_heard_from_the_level_asked_for() {
        let warning = log_rank("warning");
        assert!(hears(warning, &log("error")));
        assert!(hears(warning, &log("warning")));
        assert!(!hears(warning, &log("info")));
        assert!(!hears(None, &log("emergency")), "no level, no logs");
        assert!(hears(Some(0), &log("debug")));
        assert!(
            hears(warning, &log("loud")),
            "an unknown level is not dropped"
        );
        let other = json!({"jsonrpc": "2.0", "method": "notifications/resources/updated"});
        assert!(hears(None, &other), "only log messages are filtered");
    }
}
