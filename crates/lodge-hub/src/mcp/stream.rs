//! Streamed replies (SSE on the POST response): `notifications/progress` (and notifications an
//! upstream server sends meanwhile) while a tool call runs,
//! then its JSON-RPC response, then the stream ends. If the client goes away the work is
//! dropped, which cancels it in the room. Only requests that asked for progress stream.

use crate::context::{Notice, NoticeSink, Progress};
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::future::Future;
use tokio::sync::mpsc;

/// Starts `work` in its own task and answers with an event stream of the notices it sends
/// (progress as `token`'s) and then the JSON-RPC message it ends with.
pub(super) fn respond<W, F>(token: Value, work: W) -> Response
where
    W: FnOnce(NoticeSink) -> F + Send + 'static,
    F: Future<Output = Value> + Send,
{
    let (out, events) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<Notice>();
        let run = work(progress_tx);
        tokio::pin!(run);
        let message = |notice| match notice {
            Notice::Progress(p) => notification(&token, p),
            Notice::Notification(n) => n,
        };
        let body = loop {
            tokio::select! {
                biased;
                Some(notice) = progress_rx.recv() => {
                    if out.send(event(&message(notice))).await.is_err() {
                        // The client left: dropping `run` cancels the call in the room.
                        return;
                    }
                }
                done = &mut run => break done,
            }
        };
        // Notices sent just before the answer still go first.
        while let Ok(notice) = progress_rx.try_recv() {
            let _ = out.send(event(&message(notice))).await;
        }
        let _ = out.send(event(&body)).await;
    });
    let stream = futures::stream::unfold(events, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
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

fn notification(token: &Value, p: Progress) -> Value {
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
fn event(msg: &Value) -> Bytes {
    let data = serde_json::to_string(msg).unwrap_or_default();
    Bytes::from(format!("event: message\ndata: {data}\n\n"))
}
