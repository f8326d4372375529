//! A client for one running kernel over the Jupyter messaging protocol: ZeroMQ sockets (IPC in
//! the room's private /tmp), messages signed with the kernel's HMAC key. It starts and kills no
//! processes (the agent does) and keeps no state beyond the sockets.

use std::future::Future;
use std::time::Duration;

use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, ExecutionState, InterruptRequest, JupyterMessage,
    JupyterMessageContent, KernelInfoRequest, ShutdownRequest, Transport,
};
use jupyter_zmq_client::{
    ClientControlConnection, ClientIoPubConnection, ClientShellConnection, RuntimeError,
    create_client_control_connection, create_client_iopub_connection,
    create_client_shell_connection_with_identity, peer_identity_for_session,
};
use serde_json::Value;
use tokio::time::{Instant, timeout};

use crate::output::Collector;

/// Why talking to the kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot connect to the kernel's sockets: {0}")]
    Connect(String),
    #[error("the kernel did not become ready within {0:?}")]
    NotReady(Duration),
    #[error("the kernel's {channel} channel broke: {reason}")]
    Channel {
        channel: &'static str,
        reason: String,
    },
    #[error("the kernel did not answer {request} within {within:?}")]
    NoAnswer {
        request: &'static str,
        within: Duration,
    },
}

/// How an execution ended, as the kernel's `execute_reply` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStatus {
    Ok,
    Error,
    /// Not run (an earlier request in the queue failed) or interrupted before it started.
    Aborted,
}

/// The shell and IOPub sockets, used for one execution at a time.
pub struct KernelClient {
    shell: ClientShellConnection,
    iopub: ClientIoPubConnection,
}

/// The control socket, separate so an interrupt can be sent while an execution holds the
/// client.
pub struct Control {
    control: ClientControlConnection,
}

/// A fresh connection description for a kernel whose sockets are IPC files under `prefix`
/// (ports only number the files), signed with `key`.
pub fn ipc_connection(prefix: &str, key: &str, kernel_name: &str) -> ConnectionInfo {
    ConnectionInfo {
        transport: Transport::IPC,
        ip: prefix.to_string(),
        shell_port: 1,
        iopub_port: 2,
        stdin_port: 3,
        control_port: 4,
        hb_port: 5,
        signature_scheme: "hmac-sha256".to_string(),
        key: key.to_string(),
        kernel_name: Some(kernel_name.to_string()),
    }
}

/// Connects to a kernel's shell, IOPub and control sockets. The kernel may still be starting:
/// ZeroMQ connects when the sockets appear; [`KernelClient::wait_ready`] tells when it answers.
pub async fn connect(info: &ConnectionInfo) -> Result<(KernelClient, Control), KernelError> {
    let session = uuid::Uuid::new_v4().to_string();
    let connect = |e: RuntimeError| KernelError::Connect(e.to_string());
    let identity = peer_identity_for_session(&session).map_err(connect)?;
    let shell = create_client_shell_connection_with_identity(info, &session, identity)
        .await
        .map_err(connect)?;
    let iopub = create_client_iopub_connection(info, "", &session)
        .await
        .map_err(connect)?;
    let control = create_client_control_connection(info, &session)
        .await
        .map_err(connect)?;
    Ok((KernelClient { shell, iopub }, Control { control }))
}

/// How long one `kernel_info` attempt waits before asking again while the kernel starts.
const READY_RETRY: Duration = Duration::from_millis(500);
/// How long to wait for an answer on the control channel.
const CONTROL_WAIT: Duration = Duration::from_secs(3);

impl KernelClient {
    /// Waits until the kernel answers `kernel_info` and IOPub delivers (a SUB socket misses
    /// what is published before its subscription arrives, so both must be seen).
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), KernelError> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let request: JupyterMessage = KernelInfoRequest {}.into();
            let id = request.header.msg_id.clone();
            self.send(request).await?;
            let attempt = Instant::now() + READY_RETRY.min(deadline - Instant::now());
            let mut replied = false;
            let mut published = false;
            while !(replied && published) {
                let left = attempt.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::select! {
                    reply = timeout(left, self.shell.read()) => match reply {
                        Ok(Ok(msg)) => replied |= parent_id(&msg) == Some(&id),
                        Ok(Err(error)) => channel_error("shell", &error)?,
                        Err(_) => break,
                    },
                    msg = timeout(left, self.iopub.read()) => match msg {
                        Ok(Ok(_)) => published = true,
                        Ok(Err(error)) => channel_error("iopub", &error)?,
                        Err(_) => break,
                    },
                }
            }
            if replied && published {
                // Drain what the kernel published for our kernel_info requests.
                while let Ok(Ok(_)) = timeout(Duration::from_millis(5), self.iopub.read()).await {}
                return Ok(());
            }
        }
        Err(KernelError::NotReady(within))
    }

    /// Runs `code` and feeds its IOPub output to `collector` until the kernel has replied and
    /// gone idle for it. Messages of other requests (a timed-out earlier one) are skipped, so
    /// dropping this future loses nothing the next execution needs.
    pub async fn execute(
        &mut self,
        code: &str,
        collector: &mut Collector,
    ) -> Result<(ReplyStatus, Option<i64>), KernelError> {
        let request: JupyterMessage = ExecuteRequest::new(code.to_string()).into();
        let id = request.header.msg_id.clone();
        self.send(request).await?;
        let mut reply = None;
        let mut idle = false;
        while reply.is_none() || !idle {
            tokio::select! {
                msg = self.shell.read(), if reply.is_none() => match msg {
                    Ok(msg) if parent_id(&msg) == Some(&id) => reply = Some(execute_reply(&msg)),
                    Ok(_) => {}
                    Err(error) => channel_error("shell", &error)?,
                },
                msg = self.iopub.read(), if !idle => match msg {
                    Ok(msg) if parent_id(&msg) == Some(&id) => {
                        if let JupyterMessageContent::Status(status) = &msg.content {
                            idle = status.execution_state == ExecutionState::Idle;
                        } else {
                            collector.push(msg.message_type(), &content(&msg));
                        }
                    }
                    Ok(_) => {}
                    Err(error) => channel_error("iopub", &error)?,
                },
            }
        }
        Ok(reply.unwrap_or((ReplyStatus::Aborted, None)))
    }

    async fn send(&mut self, message: JupyterMessage) -> Result<(), KernelError> {
        self.shell
            .send(message)
            .await
            .map_err(|e| KernelError::Channel {
                channel: "shell",
                reason: e.to_string(),
            })
    }
}

impl Control {
    /// Asks the kernel to interrupt what it runs (for kernels whose interrupt mode is
    /// `message`; others get SIGINT from the agent).
    pub async fn interrupt(&mut self) -> Result<(), KernelError> {
        self.ask(InterruptRequest {}.into(), "interrupt_request")
            .await
    }

    /// Asks the kernel to exit; the agent kills it if it does not.
    pub async fn shutdown(&mut self) -> Result<(), KernelError> {
        let request = ShutdownRequest { restart: false };
        self.ask(request.into(), "shutdown_request").await
    }

    async fn ask(
        &mut self,
        request: JupyterMessage,
        name: &'static str,
    ) -> Result<(), KernelError> {
        let id = request.header.msg_id.clone();
        let broken = |e: RuntimeError| KernelError::Channel {
            channel: "control",
            reason: e.to_string(),
        };
        self.control.send(request).await.map_err(broken)?;
        let answered = async {
            loop {
                match self.control.read().await {
                    Ok(msg) if parent_id(&msg) == Some(&id) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => channel_error("control", &error)?,
                }
            }
        };
        with_timeout(CONTROL_WAIT, name, answered).await
    }
}

async fn with_timeout<T>(
    within: Duration,
    request: &'static str,
    work: impl Future<Output = Result<T, KernelError>>,
) -> Result<T, KernelError> {
    timeout(within, work)
        .await
        .unwrap_or(Err(KernelError::NoAnswer { request, within }))
}

fn parent_id(msg: &JupyterMessage) -> Option<&String> {
    msg.parent_header.as_ref().map(|h| &h.msg_id)
}

/// A message's content as JSON (what nbformat outputs are made of).
fn content(msg: &JupyterMessage) -> Value {
    serde_json::to_value(&msg.content).unwrap_or(Value::Null)
}

fn execute_reply(msg: &JupyterMessage) -> (ReplyStatus, Option<i64>) {
    let content = content(msg);
    let status = match content.get("status").and_then(Value::as_str) {
        Some("ok") => ReplyStatus::Ok,
        Some("error") => ReplyStatus::Error,
        _ => ReplyStatus::Aborted,
    };
    (
        status,
        content.get("execution_count").and_then(Value::as_i64),
    )
}

/// A socket error ends the connection; a message that is merely malformed or badly signed is
/// skipped (a kernel must not be able to stop its own client with one odd message).
fn channel_error(channel: &'static str, error: &RuntimeError) -> Result<(), KernelError> {
    match error {
        RuntimeError::ZmqError(_) | RuntimeError::IoError(_) => Err(KernelError::Channel {
            channel,
            reason: error.to_string(),
        }),
        other => {
            tracing::warn!(channel, error = %other, "skipping a malformed kernel message");
            Ok(())
        }
    }
}
