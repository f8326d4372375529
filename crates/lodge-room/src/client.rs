//! The hub's end of one room channel: many concurrent requests multiplexed by id over one framed
//! stream, with progress events routed to the caller that asked and cancellation when a caller
//! gives up. Long-running requests (upstream servers) are [`Relay`]s whose input the caller
//! feeds. It knows nothing of users or policy and never logs payloads; when the channel dies
//! every caller gets [`CallError::Closed`] at once instead of waiting.

use futures::{SinkExt, StreamExt};
use lodge_core::mux::{Pending, Waiter};
use lodge_protocol::{
    AgentMessage, ErrorKind, Hello, HubCodec, HubMessage, MAX_MESSAGE_DEPTH, Op, OpError, OpResult,
    ProtocolError, Stream, check_hello, exceeds_depth,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

/// Something a running request reports before its answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Progress {
        message: String,
        progress: Option<f64>,
        total: Option<f64>,
    },
    Output {
        stream: Stream,
        data: String,
    },
    /// One JSON message an upstream server printed on its stdout.
    Message(serde_json::Value),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The operation ran and failed; the room is fine.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The channel is gone (the room exited, was killed, or broke the protocol).
    #[error("the room stopped: {reason}")]
    Closed { reason: String },
}

/// Requests waiting for the agent's answer, each with where its events go.
type Requests = Pending<Result<OpResult, CallError>, Option<mpsc::UnboundedSender<Event>>>;

struct Inner {
    outbox: mpsc::UnboundedSender<HubMessage>,
    pending: Arc<Requests>,
    closed: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Inner {
    /// Marks the channel dead and fails every waiting caller with `reason` (first reason wins).
    fn close(&self, reason: String) {
        let reason = {
            let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(reason).clone()
        };
        self.closed.cancel();
        self.pending.close(|| {
            Err(CallError::Closed {
                reason: reason.clone(),
            })
        });
    }

    /// Fails the waiting caller of request `id` with `error` (if it still waits).
    fn fail(&self, id: u64, error: OpError) {
        self.pending.complete(id, Err(CallError::Op(error)));
    }

    fn closed_error(&self) -> CallError {
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        CallError::Closed {
            reason: reason.unwrap_or_else(|| "the channel is closed".into()),
        }
    }
}

/// A connected room channel. Cheap to clone; all clones share the channel.
#[derive(Clone)]
pub struct RoomClient {
    inner: Arc<Inner>,
}

impl RoomClient {
    /// Exchanges hellos over `reader`/`writer` (within `timeout`) and starts the channel's
    /// reader and writer tasks. Returns the agent's hello.
    pub async fn connect<R, W>(
        reader: R,
        writer: W,
        timeout: Duration,
    ) -> Result<(RoomClient, Hello), CallError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut frames_in = FramedRead::new(reader, HubCodec::new());
        let mut frames_out = FramedWrite::new(writer, HubCodec::new());
        let closed = |reason: String| CallError::Closed { reason };
        let greet = async {
            frames_out
                .send(HubMessage::Hello(Hello::current(env!("CARGO_PKG_VERSION"))))
                .await
                .map_err(|e| closed(format!("cannot greet the agent: {e}")))?;
            match frames_in.next().await {
                Some(Ok(AgentMessage::Hello(h))) => {
                    check_hello(&h).map_err(|e| closed(e.to_string()))?;
                    Ok(h)
                }
                Some(Ok(_)) => Err(closed("the agent did not greet first".into())),
                Some(Err(e)) => Err(closed(format!("bad greeting from the agent: {e}"))),
                None => Err(closed("the agent exited before greeting".into())),
            }
        };
        let hello = tokio::time::timeout(timeout, greet)
            .await
            .map_err(|_| closed(format!("the agent did not greet within {timeout:?}")))??;

        let (outbox, mut queue) = mpsc::unbounded_channel::<HubMessage>();
        let cancels = outbox.clone();
        let inner = Arc::new(Inner {
            outbox,
            // A caller that gave up cancels its request in the room.
            pending: Pending::new(move |id| {
                let _ = cancels.send(HubMessage::Cancel { id });
            }),
            closed: CancellationToken::new(),
            reason: Mutex::new(None),
        });

        let writer_inner = inner.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = writer_inner.closed.cancelled() => break,
                    msg = queue.recv() => msg,
                };
                let Some(msg) = msg else { break };
                let (id, input) = match &msg {
                    HubMessage::Request { id, .. } => (Some(*id), false),
                    HubMessage::Input { id, .. } => (Some(*id), true),
                    _ => (None, false),
                };
                match (frames_out.send(msg).await, id) {
                    (Ok(()), _) => {}
                    // Nothing of the frame was written (the codec refuses it before): only this
                    // request fails, the channel stays usable.
                    (Err(ProtocolError::FrameTooLarge { len, max }), Some(id)) => {
                        writer_inner.fail(id, too_large(len, max));
                        // The request already runs in the room; its input is now incomplete.
                        if input && let Err(e) = frames_out.send(HubMessage::Cancel { id }).await {
                            writer_inner.close(format!("cannot write to the room: {e}"));
                            break;
                        }
                    }
                    (Err(e), _) => {
                        writer_inner.close(format!("cannot write to the room: {e}"));
                        break;
                    }
                }
            }
        });

        let reader_inner = inner.clone();
        tokio::spawn(async move {
            let reason = loop {
                match frames_in.next().await {
                    Some(Ok(msg)) => route(&reader_inner, msg),
                    Some(Err(e)) => break describe(e),
                    None => break "the room's agent exited".to_owned(),
                }
            };
            reader_inner.close(reason);
        });

        Ok((RoomClient { inner }, hello))
    }

    /// Runs `op` in the room. Progress and output go to `events` if given. Dropping the
    /// returned future before it finishes cancels the request in the room.
    pub async fn call(
        &self,
        op: Op,
        events: Option<mpsc::UnboundedSender<Event>>,
    ) -> Result<OpResult, CallError> {
        self.request(op, events)?.finished().await
    }

    /// Starts `op` as a request whose input the caller feeds (an upstream server). Events
    /// (messages, stderr output) go to `events`. Dropping the `Relay` before it finished
    /// cancels the request in the room (which kills the server).
    pub fn open(&self, op: Op, events: mpsc::UnboundedSender<Event>) -> Result<Relay, CallError> {
        let request = self.request(op, Some(events))?;
        let input = RelayInput {
            inner: self.inner.clone(),
            id: request.id(),
        };
        Ok(Relay { request, input })
    }

    /// Registers a pending request and sends it; the returned handle cancels it when dropped
    /// unanswered.
    fn request(
        &self,
        op: Op,
        events: Option<mpsc::UnboundedSender<Event>>,
    ) -> Result<Request, CallError> {
        if self.inner.closed.is_cancelled() {
            return Err(self.inner.closed_error());
        }
        // From here on, dropping the handle (also on the error below) forgets the request.
        let Some(waiter) = self.inner.pending.register(events) else {
            return Err(self.inner.closed_error());
        };
        let id = waiter.id();
        let request = Request {
            inner: self.inner.clone(),
            waiter,
        };
        if self
            .inner
            .outbox
            .send(HubMessage::Request { id, op })
            .is_err()
        {
            return Err(self.inner.closed_error());
        }
        Ok(request)
    }

    /// Asks the agent to finish and exit (running requests are cancelled there).
    pub fn shutdown(&self) {
        let _ = self.inner.outbox.send(HubMessage::Shutdown);
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inner.pending.len()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Resolves when the channel is gone, with the reason.
    pub async fn closed(&self) -> String {
        self.inner.closed.cancelled().await;
        match self.inner.closed_error() {
            CallError::Closed { reason } => reason,
            CallError::Op(e) => e.to_string(),
        }
    }

    /// Fails every waiting caller with `reason` and stops using the channel (e.g. the room's
    /// process was seen to exit, or was killed for exceeding its memory).
    pub fn close(&self, reason: impl Into<String>) {
        self.inner.close(reason.into());
    }
}

/// Delivers one agent message to the caller waiting for it.
fn route(inner: &Inner, msg: AgentMessage) {
    let pending = &inner.pending;
    match msg {
        AgentMessage::Response { id, result } => {
            pending.complete(id, result.map_err(CallError::Op));
        }
        AgentMessage::Progress {
            id,
            message,
            progress,
            total,
        } => send_event(
            pending,
            id,
            Event::Progress {
                message,
                progress,
                total,
            },
        ),
        AgentMessage::Output { id, stream, data } => {
            send_event(pending, id, Event::Output { stream, data })
        }
        AgentMessage::Message { id, message } => send_event(pending, id, Event::Message(message)),
        AgentMessage::Log { level, message } => {
            let message = lodge_core::text::without_ansi(&message);
            tracing::debug!(?level, agent_message = %message, "room agent");
        }
        AgentMessage::Hello(_) => tracing::warn!("room agent greeted twice; ignored"),
    }
}

fn send_event(pending: &Requests, id: u64, event: Event) {
    if let Some(tx) = pending.with(id, Option::clone).flatten() {
        let _ = tx.send(event);
    }
}

fn describe(e: ProtocolError) -> String {
    match e {
        ProtocolError::Io(e) => format!("the room channel failed: {e}"),
        other => format!("the room broke the protocol: {other}"),
    }
}

fn too_large(len: usize, max: usize) -> OpError {
    OpError::new(
        ErrorKind::TooLarge,
        format!("the request is {len} bytes, above the room channel's limit of {max} bytes"),
    )
}

/// One sent request until its answer; its waiter sends `Cancel` when dropped before the
/// answer arrived.
struct Request {
    inner: Arc<Inner>,
    waiter: Waiter<Result<OpResult, CallError>, Option<mpsc::UnboundedSender<Event>>>,
}

impl Request {
    fn id(&self) -> u64 {
        self.waiter.id()
    }

    /// The answer; cancel-safe, and repeatable once it arrived.
    async fn finished(&mut self) -> Result<OpResult, CallError> {
        match self.waiter.answer().await {
            Some(result) => result,
            None => Err(self.inner.closed_error()),
        }
    }
}

/// A running long-lived request (an upstream server): feed it with [`Relay::input`], wait for
/// its end with [`Relay::finished`]. Dropping it before it finished cancels it in the room.
pub struct Relay {
    request: Request,
    input: RelayInput,
}

impl Relay {
    /// A handle that queues messages for the server's stdin (clone it freely).
    pub fn input(&self) -> RelayInput {
        self.input.clone()
    }

    /// The request's final answer (cancel-safe: may be polled in select! repeatedly).
    pub async fn finished(&mut self) -> Result<OpResult, CallError> {
        self.request.finished().await
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.request.id())
            .field("finished", &self.request.waiter.is_answered())
            .finish()
    }
}

/// Feeds the stdin of one [`Relay`]'s server.
#[derive(Clone)]
pub struct RelayInput {
    inner: Arc<Inner>,
    id: u64,
}

impl RelayInput {
    /// Queues one message for the server's stdin; fails once the channel is closed (the room
    /// stopped, or the request has finished or was cancelled). A message nested too deeply for
    /// the channel is refused with an `Op` error (`invalid_argument`) and nothing is sent.
    pub fn send(&self, message: serde_json::Value) -> Result<(), CallError> {
        if self.inner.closed.is_cancelled() {
            return Err(self.inner.closed_error());
        }
        if exceeds_depth(&message) {
            return Err(CallError::Op(OpError::new(
                ErrorKind::InvalidArgument,
                format!("the message nests more than {MAX_MESSAGE_DEPTH} levels deep"),
            )));
        }
        if !self.inner.pending.contains(self.id) {
            return Err(CallError::Closed {
                reason: "the upstream server's request has finished".into(),
            });
        }
        self.inner
            .outbox
            .send(HubMessage::Input {
                id: self.id,
                message,
            })
            .map_err(|_| self.inner.closed_error())
    }
}

impl std::fmt::Debug for RelayInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayInput").field("id", &self.id).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_protocol::{AgentCodec, ErrorKind, FsWrite, Upstream};

    /// What the fake agent reads from the hub.
    type AgentIn = FramedRead<tokio::io::ReadHalf<tokio::io::DuplexStream>, AgentCodec>;

    /// A scripted agent on the other end of a duplex pipe.
    async fn fake_agent() -> (
        RoomClient,
        AgentIn,
        FramedWrite<tokio::io::WriteHalf<tokio::io::DuplexStream>, AgentCodec>,
    ) {
        let (hub_side, agent_side) = tokio::io::duplex(1 << 16);
        let (hr, hw) = tokio::io::split(hub_side);
        let (ar, aw) = tokio::io::split(agent_side);
        let mut a_in = FramedRead::new(ar, AgentCodec::new());
        let mut a_out = FramedWrite::new(aw, AgentCodec::new());
        let agent = async {
            let first = a_in.next().await.unwrap().unwrap();
            assert!(matches!(first, HubMessage::Hello(_)));
            a_out
                .send(AgentMessage::Hello(Hello::current("test")))
                .await
                .unwrap();
        };
        let (client, ()) = tokio::join!(
            async {
                RoomClient::connect(hr, hw, Duration::from_secs(5))
                    .await
                    .unwrap()
                    .0
            },
            agent
        );
        (client, a_in, a_out)
    }

    /// The id of the next frame from the hub, which must be a request.
    async fn next_request(a_in: &mut AgentIn) -> u64 {
        match a_in.next().await.unwrap().unwrap() {
            HubMessage::Request { id, .. } => id,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The next frame from the hub must be a `Cancel` of request `id`, within 5 s.
    async fn expect_cancel(a_in: &mut AgentIn, id: u64) {
        let next = tokio::time::timeout(Duration::from_secs(5), a_in.next())
            .await
            .unwrap();
        assert!(
            matches!(next, Some(Ok(HubMessage::Cancel { id: c })) if c == id),
            "{next:?}"
        );
    }

    #[tokio::test]
    async fn answers_reach_their_callers_by_id_and_events_are_routed() {
        let (client, mut a_in, mut a_out) = fake_agent().await;
        let (tx, mut events) = mpsc::unbounded_channel();
        let c1 = client.clone();
        let first = tokio::spawn(async move { c1.call(Op::Ping, Some(tx)).await });
        let c2 = client.clone();
        let second = tokio::spawn(async move { c2.call(Op::Ping, None).await });
        let mut ids = Vec::new();
        for _ in 0..2 {
            match a_in.next().await.unwrap().unwrap() {
                HubMessage::Request { id, .. } => ids.push(id),
                other => panic!("unexpected {other:?}"),
            }
        }
        ids.sort();
        // Progress for the first request, then answer in reverse order.
        for id in &ids {
            a_out
                .send(AgentMessage::Progress {
                    id: *id,
                    message: format!("p{id}"),
                    progress: None,
                    total: None,
                })
                .await
                .unwrap();
        }
        a_out
            .send(AgentMessage::Response {
                id: ids[1],
                result: Err(OpError::new(ErrorKind::NotFound, "nope")),
            })
            .await
            .unwrap();
        a_out
            .send(AgentMessage::Response {
                id: ids[0],
                result: Ok(OpResult::Pong),
            })
            .await
            .unwrap();
        let r1 = first.await.unwrap();
        let r2 = second.await.unwrap();
        // Which spawned call got which id is not fixed; one is Pong, the other NotFound.
        let (pong, err) = if r1.is_ok() { (r1, r2) } else { (r2, r1) };
        assert_eq!(pong.unwrap(), OpResult::Pong);
        assert!(matches!(err, Err(CallError::Op(e)) if e.kind == ErrorKind::NotFound));
        assert_eq!(client.in_flight(), 0);
        // The first call's event sender got exactly one progress event (its own).
        let ev = events.recv().await;
        assert!(matches!(ev, Some(Event::Progress { .. })), "{ev:?}");
    }

    #[tokio::test]
    async fn a_dead_agent_fails_waiting_callers_at_once() {
        let (client, mut a_in, a_out) = fake_agent().await;
        let c = client.clone();
        let call = tokio::spawn(async move { c.call(Op::Ping, None).await });
        assert!(matches!(
            a_in.next().await,
            Some(Ok(HubMessage::Request { .. }))
        ));
        drop(a_out);
        drop(a_in);
        let r = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("caller must not hang")
            .unwrap();
        assert!(matches!(r, Err(CallError::Closed { .. })), "{r:?}");
        assert!(client.is_closed());
        let again = client.call(Op::Ping, None).await;
        assert!(matches!(again, Err(CallError::Closed { .. })));
    }

    #[tokio::test]
    async fn dropping_a_call_cancels_it_in_the_room() {
        let (client, mut a_in, _a_out) = fake_agent().await;
        let c = client.clone();
        let call = tokio::spawn(async move { c.call(Op::Ping, None).await });
        let id = next_request(&mut a_in).await;
        call.abort();
        expect_cancel(&mut a_in, id).await;
        assert_eq!(client.in_flight(), 0);
    }

    #[test]
    fn relays_move_between_tasks() {
        fn send<T: Send>() {}
        fn send_sync_clone<T: Send + Sync + Clone>() {}
        send::<Relay>();
        send_sync_clone::<RelayInput>();
    }

    #[tokio::test]
    async fn an_oversized_request_or_input_fails_alone() {
        let (client, mut a_in, _a_out) = fake_agent().await;
        let huge = "x".repeat(lodge_protocol::MAX_FRAME_LEN);
        let write = Op::FsWrite(FsWrite {
            path: "f".into(),
            content: huge.clone().into(),
            create_dirs: false,
        });
        let r = client.call(write, None).await;
        assert!(
            matches!(&r, Err(CallError::Op(e)) if e.kind == ErrorKind::TooLarge),
            "{r:?}"
        );
        assert!(!client.is_closed());

        let (tx, _events) = mpsc::unbounded_channel();
        let op = Op::Upstream(Upstream {
            server: "s".into(),
            argv: vec!["s".into()],
            env: Default::default(),
        });
        let mut relay = client.open(op, tx).unwrap();
        let id = next_request(&mut a_in).await;
        relay
            .input()
            .send(serde_json::json!({ "s": huge }))
            .unwrap();
        // The oversized input never leaves; the request is cancelled in the room instead.
        expect_cancel(&mut a_in, id).await;
        let r = relay.finished().await;
        assert!(
            matches!(&r, Err(CallError::Op(e)) if e.kind == ErrorKind::TooLarge),
            "{r:?}"
        );
        assert!(relay.input().send(serde_json::json!({})).is_err());
        // Too deep to decode in the room: refused before it is sent.
        let deep = (0..200).fold(serde_json::json!(1), |v, _| serde_json::json!([v]));
        let (tx, _events) = mpsc::unbounded_channel();
        let op = Op::Upstream(Upstream {
            server: "s".into(),
            argv: vec!["s".into()],
            env: Default::default(),
        });
        let relay = client.open(op, tx).unwrap();
        let e = relay.input().send(deep).unwrap_err();
        assert!(
            matches!(&e, CallError::Op(e) if e.kind == ErrorKind::InvalidArgument),
            "{e:?}"
        );
        assert!(!client.is_closed());
    }

    #[tokio::test]
    async fn a_relay_routes_messages_and_sends_inputs_behind_its_request() {
        let (client, mut a_in, mut a_out) = fake_agent().await;
        let (tx, mut events) = mpsc::unbounded_channel();
        let op = Op::Upstream(Upstream {
            server: "s".into(),
            argv: vec!["s".into()],
            env: Default::default(),
        });
        let relay = client.open(op, tx).unwrap();
        let input = relay.input();
        input.send(serde_json::json!({"n": 1})).unwrap();
        let id = next_request(&mut a_in).await;
        assert_eq!(
            a_in.next().await.unwrap().unwrap(),
            HubMessage::Input {
                id,
                message: serde_json::json!({"n": 1})
            }
        );
        a_out
            .send(AgentMessage::Message {
                id,
                message: serde_json::json!({"r": 1}),
            })
            .await
            .unwrap();
        assert_eq!(
            events.recv().await,
            Some(Event::Message(serde_json::json!({"r": 1})))
        );
        drop(relay);
        assert_eq!(
            a_in.next().await.unwrap().unwrap(),
            HubMessage::Cancel { id }
        );
        assert!(input.send(serde_json::json!({})).is_err());
        assert_eq!(client.in_flight(), 0);
    }

    #[tokio::test]
    async fn an_agent_that_never_greets_times_out() {
        let (hub_side, _agent_side) = tokio::io::duplex(1024);
        let (r, w) = tokio::io::split(hub_side);
        let e = RoomClient::connect(r, w, Duration::from_millis(100))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("did not greet"), "{e}");
    }
}
