//! The agent's serve loop: hello exchange, then one task per request (exactly one response per
//! request id), cancellation, routing of upstream servers' input, and a single writer task
//! owning the channel's sink. It never logs message payloads (file contents, command output,
//! relayed messages, env values).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, PoisonError};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::command::CommandContext;
use super::jupyter::Jupyter;
use super::reaper::Reaper;
use super::upstream;
use super::{AgentConfig, AgentError, fs};
use crate::workspace::Workspace;
use lodge_protocol::{
    AgentCodec, AgentMessage, ErrorKind, Hello, HubMessage, Jupyter as JupyterRequest, Op, OpError,
    OpResult, ProtocolError, check_hello,
};

/// Messages waiting for the writer; senders wait (responses) or drop (progress) when full.
const OUTBOX: usize = 1024;

/// What every request task shares.
struct Context {
    workspace: Arc<Workspace>,
    commands: CommandContext,
    jupyter: Jupyter,
}

/// A request that has not answered yet.
struct Running {
    cancel: CancellationToken,
    /// The stdin queue of an upstream server (`None` for other requests).
    input: Option<mpsc::UnboundedSender<Value>>,
}

/// The requests that have not answered yet, by id.
type Requests = Arc<Mutex<HashMap<u64, Running>>>;

fn lock(requests: &Requests) -> std::sync::MutexGuard<'_, HashMap<u64, Running>> {
    // Entries are inserted and removed whole, so a panicked holder leaves the map consistent.
    requests.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The serve loop, generic so tests can run it over `tokio::io::duplex`. Returns `Ok` after a
/// `Shutdown` or the end of the input (everything still running is cancelled first), `Err`
/// when the channel broke (malformed frame, I/O error, incompatible hub).
pub async fn serve<R, W>(reader: R, writer: W, cfg: &AgentConfig) -> Result<(), AgentError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let reaper = Reaper::start()?;
    let workspace = Arc::new(Workspace::open(&cfg.workspace)?);
    let ctx = Arc::new(Context {
        jupyter: Jupyter::new(workspace.clone(), &cfg.workspace, &cfg.tmp),
        workspace,
        commands: CommandContext::new(&cfg.workspace, &cfg.tmp, reaper)?,
    });
    let culler = tokio::spawn(cull_kernels(ctx.clone()));
    let mut input = FramedRead::new(reader, AgentCodec::new());
    let mut output = FramedWrite::new(writer, AgentCodec::new());
    handshake(&mut input, &mut output).await?;

    let (tx, rx) = mpsc::channel(OUTBOX);
    let mut writer = tokio::spawn(write_loop(output, rx));
    let requests: Requests = Arc::default();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut writer_done = None;
    let outcome = loop {
        tokio::select! {
            frame = input.next() => match frame {
                None | Some(Ok(HubMessage::Shutdown)) => break Ok(()),
                Some(Ok(HubMessage::Request { id, op })) => {
                    start(&mut tasks, &requests, &ctx, &tx, id, op);
                }
                Some(Ok(HubMessage::Cancel { id })) => {
                    if let Some(running) = lock(&requests).get(&id) {
                        running.cancel.cancel();
                    }
                }
                Some(Ok(HubMessage::Input { id, message })) => {
                    // Never waits: a server that does not read its stdin must not stall the
                    // channel (the queue lives in the room's memory limit).
                    let queued = lock(&requests)
                        .get(&id)
                        .and_then(|running| running.input.as_ref())
                        .is_some_and(|input| input.send(message).is_ok());
                    if !queued {
                        tracing::debug!(id, "input for no running upstream server; ignored");
                    }
                }
                Some(Ok(HubMessage::Hello(_))) => {
                    tracing::warn!("ignoring a second hello from the hub");
                }
                Some(Err(error)) => {
                    tracing::error!(%error, "room channel broken; stopping");
                    break Err(AgentError::Channel(error));
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            done = &mut writer => {
                writer_done = Some(());
                break Err(writer_failure(done));
            }
        }
    };
    // Shutdown, end of input or a broken channel: stop everything still running (command trees
    // are killed), let each answer, then flush.
    for running in lock(&requests).values() {
        running.cancel.cancel();
    }
    while tasks.join_next().await.is_some() {}
    culler.abort();
    ctx.jupyter.stop_all().await;
    drop(tx);
    if writer_done.is_none() {
        match writer.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "could not flush the last messages"),
            Err(error) => tracing::warn!(%error, "the writer task failed"),
        }
    }
    outcome
}

/// Sends our hello at once (so neither side waits for the other), then checks the hub's.
async fn handshake<R, W>(
    input: &mut FramedRead<R, AgentCodec>,
    output: &mut FramedWrite<W, AgentCodec>,
) -> Result<(), AgentError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    output
        .send(AgentMessage::Hello(Hello::current(env!(
            "CARGO_PKG_VERSION"
        ))))
        .await?;
    match input.next().await {
        Some(Ok(HubMessage::Hello(hello))) => Ok(check_hello(&hello)?),
        Some(Ok(_)) => Err(AgentError::Handshake(
            "the hub's first frame was not a hello",
        )),
        Some(Err(error)) => Err(error.into()),
        None => Err(AgentError::Handshake(
            "the channel closed before the hub's hello",
        )),
    }
}

/// Registers request `id` and starts its task. An upstream server's input queue exists from
/// here on, so `Input`s sent right behind the request are not lost.
fn start(
    tasks: &mut JoinSet<()>,
    requests: &Requests,
    ctx: &Arc<Context>,
    tx: &mpsc::Sender<AgentMessage>,
    id: u64,
    op: Op,
) {
    let token = CancellationToken::new();
    let (input, inbox) = match op {
        Op::Upstream(_) => {
            let (input, inbox) = mpsc::unbounded_channel();
            (Some(input), Some(inbox))
        }
        _ => (None, None),
    };
    let duplicate = match lock(requests).entry(id) {
        Entry::Occupied(_) => true,
        Entry::Vacant(slot) => {
            slot.insert(Running {
                cancel: token.clone(),
                input,
            });
            false
        }
    };
    let (ctx, tx, requests) = (ctx.clone(), tx.clone(), requests.clone());
    tasks.spawn(async move {
        let result = if duplicate {
            Err(OpError::new(
                ErrorKind::InvalidArgument,
                format!("request id {id} is already in use by a running request"),
            ))
        } else {
            let result = handle(&ctx, id, op, inbox, &tx, &token).await;
            // Forget the id before answering, so the hub may reuse it once it has the answer.
            lock(&requests).remove(&id);
            result
        };
        let _ = tx.send(AgentMessage::Response { id, result }).await;
    });
}

fn cancelled() -> OpError {
    OpError::new(ErrorKind::Cancelled, "the request was cancelled")
}

async fn handle(
    ctx: &Context,
    id: u64,
    op: Op,
    inbox: Option<mpsc::UnboundedReceiver<Value>>,
    tx: &mpsc::Sender<AgentMessage>,
    token: &CancellationToken,
) -> Result<OpResult, OpError> {
    match op {
        Op::Ping => Ok(OpResult::Pong),
        Op::RunCommand(request) => ctx.commands.run_command(id, request, tx, token).await,
        Op::Exec(request) => ctx.commands.exec(id, request, tx, token).await,
        Op::Upstream(request) => {
            // `start` made the queue; without one the server would just never get input.
            let inbox = inbox.unwrap_or_else(|| mpsc::unbounded_channel().1);
            upstream::run(&ctx.commands, id, request, inbox, tx, token).await
        }
        Op::Jupyter(JupyterRequest { settings, request }) => ctx
            .jupyter
            .handle(&ctx.commands, settings, request, token)
            .await
            .map(|result| OpResult::Jupyter { result }),
        op => {
            let workspace = ctx.workspace.clone();
            let job = tokio::task::spawn_blocking(move || fs::run(&workspace, op));
            tokio::select! {
                joined = job => joined.ok().flatten().unwrap_or_else(|| {
                    Err(OpError::new(ErrorKind::Io, "the file operation failed inside the agent"))
                }),
                // The blocking call cannot be interrupted; it finishes unobserved.
                () = token.cancelled() => Err(cancelled()),
            }
        }
    }
}

/// Stops idle kernels now and then, for as long as the agent serves.
async fn cull_kernels(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(ctx.jupyter.cull_interval()).await;
        let stopped = ctx.jupyter.cull().await;
        if stopped > 0 {
            tracing::debug!(stopped, "idle kernels shut down");
        }
    }
}

/// Owns the sink: writes messages in order, flushing whenever the queue runs empty.
async fn write_loop<W>(
    mut sink: FramedWrite<W, AgentCodec>,
    mut rx: mpsc::Receiver<AgentMessage>,
) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
{
    while let Some(message) = rx.recv().await {
        feed(&mut sink, message).await?;
        while let Ok(message) = rx.try_recv() {
            feed(&mut sink, message).await?;
        }
        sink.flush().await?;
    }
    sink.close().await
}

/// Queues one message. A response too large for a frame is replaced by a `TooLarge` error for
/// the same id (the channel stays usable); other oversized messages are dropped.
async fn feed<W>(
    sink: &mut FramedWrite<W, AgentCodec>,
    message: AgentMessage,
) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
{
    let id = match &message {
        AgentMessage::Response { id, .. } => Some(*id),
        _ => None,
    };
    match sink.feed(message).await {
        Err(ProtocolError::FrameTooLarge { len, max }) => {
            tracing::warn!(len, max, "a message exceeded the frame limit");
            let Some(id) = id else { return Ok(()) };
            let error = OpError::new(
                ErrorKind::TooLarge,
                format!(
                    "the result is {len} bytes, above the room channel's limit of {max} bytes; \
                     ask for less"
                ),
            );
            sink.feed(AgentMessage::Response {
                id,
                result: Err(error),
            })
            .await
        }
        other => other,
    }
}

fn writer_failure(done: Result<Result<(), ProtocolError>, tokio::task::JoinError>) -> AgentError {
    match done {
        Ok(Err(error)) => AgentError::Channel(error),
        Ok(Ok(())) | Err(_) => AgentError::Channel(ProtocolError::Io(std::io::Error::other(
            "the writer task stopped early",
        ))),
    }
}
