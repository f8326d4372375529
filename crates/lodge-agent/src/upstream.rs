//! `upstream`: runs one of the user's upstream MCP servers (an ordinary stdio MCP server) in the
//! room and relays its stdio: `Input`s become stdin lines, each stdout line must be one JSON-RPC
//! message and comes back as a `Message`, stderr lines come back as `Output`. When the server
//! exits, breaks the stdio rules or is cancelled, its whole process tree is killed. It decides
//! no policy (which servers a user gets is the hub's business) and never logs messages, env
//! values or stderr text.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::command::{self, CommandContext, DRAIN_GRACE, split_argv, validate_env};
use super::reaper::Exit;
use super::tree::{self, Target};
use crate::workspace::{sanitize, utf8_cut};
use lodge_protocol::{
    AgentMessage, ErrorKind, MAX_FRAME_LEN, MAX_UPSTREAM_MESSAGE, OpError, OpResult, Stream,
    Upstream, exceeds_depth,
};

/// Replaced by the workspace path in every argument and env value.
const WORKSPACE_VAR: &str = "{workspace}";
/// Longest stderr line relayed; the rest of a longer line is dropped.
const MAX_STDERR_LINE: usize = 4 * 1024;
/// How much of a line that is not JSON-RPC an error quotes, in characters.
const QUOTE_CHARS: usize = 120;
/// Read buffer of each output pipe.
const READ_BUFFER: usize = 64 * 1024;
/// Bytes a `Message` frame adds around the message (type, id), with room to spare.
const FRAME_ENVELOPE: usize = 64;
/// Lines shorter than this always fit a frame once re-encoded (re-encoding grows JSON by at
/// most ~4.5x, e.g. `1e15` -> `1000000000000000.0`); longer ones are measured.
const ALWAYS_FITS: usize = MAX_FRAME_LEN / 8;

/// How the wait for the server ended.
enum Ending {
    Exited(Exit),
    /// It broke the stdio rules (and is killed for it).
    Broken(OpError),
    Cancelled,
}

/// Runs the server until it exits, breaks the rules or `cancel` fires. `input` carries the
/// messages for its stdin; stdout messages and stderr lines go to `tx`.
pub(crate) async fn run(
    ctx: &CommandContext,
    id: u64,
    request: Upstream,
    input: mpsc::UnboundedReceiver<Value>,
    tx: &mpsc::Sender<AgentMessage>,
    cancel: &CancellationToken,
) -> Result<OpResult, OpError> {
    let server = sanitize(&request.server);
    let (program, args, env) = prepare(&request, ctx.workspace().as_os_str(), &server)?;
    let mut cmd = ctx.child(&program, ctx.workspace_dir()?);
    cmd.args(&args)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, mut exited) = ctx
        .reaper()
        .spawn(&mut cmd)
        .map_err(|e| spawn_error(&server, &program, &e))?;
    drop(cmd); // closes our copy of the cwd fd
    let root = child.id() as i32;
    let stdin = child.stdin.take().map(OwnedFd::from);
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    let pipes = [&stdin, &stdout, &stderr]
        .into_iter()
        .flatten()
        .filter_map(|fd| rustix::fs::fstat(fd).ok())
        .map(|st| st.st_ino)
        .collect();
    tracing::debug!(id, server = %server, pid = root, "upstream server started");

    let mut tasks = Tasks::default();
    tasks.spawn(feed(stdin, input));
    let mut stdout = tasks.spawn(relay_stdout(stdout, id, server.clone(), tx.clone()));
    let mut stderr = tasks.spawn(relay_stderr(stderr, id, tx.clone()));
    let mut stdout_open = true;
    let ending = loop {
        tokio::select! {
            status = &mut exited => break match status {
                Ok(exit) => Ending::Exited(exit),
                // The reaper is gone (shutting down): treat as a cancellation.
                Err(_) => Ending::Cancelled,
            },
            () = cancel.cancelled() => break Ending::Cancelled,
            read = &mut stdout, if stdout_open => {
                stdout_open = false;
                if let Ok(Err(error)) = read {
                    break Ending::Broken(error);
                }
                // End of stdout (or the hub is gone): the exit or a cancel follows.
            }
        }
    };
    // Whatever happened, nothing of the server may outlive the request.
    tree::kill_tree(&Target { root, pipes }).await;
    ctx.reaper().reap_now();
    let result = match ending {
        Ending::Exited(exit) => {
            // The tree is gone, so the pipes are closing: what the server wrote last (its final
            // responses, a traceback) is relayed before the answer.
            let deadline = Instant::now() + DRAIN_GRACE;
            let drained = if stdout_open {
                tokio::time::timeout_at(deadline, &mut stdout).await.ok()
            } else {
                None
            };
            let _ = tokio::time::timeout_at(deadline, &mut stderr).await;
            tracing::debug!(
                id,
                server = %server,
                code = ?exit.code,
                signal = ?exit.signal,
                "upstream server exited"
            );
            match drained {
                Some(Ok(Err(error))) => Err(error),
                _ => Ok(OpResult::Exited {
                    code: exit.code,
                    signal: exit.signal,
                }),
            }
        }
        Ending::Broken(error) => {
            tracing::debug!(
                id,
                server = %server,
                kind = %error.kind,
                "upstream server broke the stdio rules; stopped"
            );
            Err(error)
        }
        Ending::Cancelled => {
            tracing::debug!(id, server = %server, "upstream server cancelled; stopped");
            Err(OpError::new(
                ErrorKind::Cancelled,
                format!("server {server} was cancelled and its processes were killed"),
            ))
        }
    };
    drop(tasks);
    result
}

/// The relay tasks of one server; all are aborted when this is dropped (at the end of the
/// request, or when the request task itself is dropped).
#[derive(Default)]
struct Tasks(Vec<AbortHandle>);

impl Tasks {
    fn spawn<T: Send + 'static>(
        &mut self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        let handle = tokio::spawn(task);
        self.0.push(handle.abort_handle());
        handle
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

type Prepared = (OsString, Vec<OsString>, Vec<(String, OsString)>);

/// Checks the request and expands `{workspace}`: (program, arguments, extra environment).
/// Messages name the server and variables, never env values.
fn prepare(request: &Upstream, workspace: &OsStr, server: &str) -> Result<Prepared, OpError> {
    let invalid = |message: String| OpError::new(ErrorKind::InvalidArgument, message);
    let (program, args) = split_argv(&request.argv, &format!("the command of server {server}"))?;
    validate_env(&request.env).map_err(|e| invalid(format!("server {server}: {}", e.message)))?;
    let env = request
        .env
        .iter()
        .map(|(name, value)| (name.clone(), expand(value.expose(), workspace)))
        .collect();
    Ok((
        expand(program, workspace),
        args.iter().map(|arg| expand(arg, workspace)).collect(),
        env,
    ))
}

/// `text` with every `{workspace}` replaced by `workspace` (which need not be UTF-8).
fn expand(text: &str, workspace: &OsStr) -> OsString {
    let mut parts = text.split(WORKSPACE_VAR);
    let mut out = OsString::from(parts.next().unwrap_or_default());
    for part in parts {
        out.push(workspace);
        out.push(part);
    }
    out
}

fn spawn_error(server: &str, program: &OsStr, error: &io::Error) -> OpError {
    let program = sanitize(&program.to_string_lossy());
    let hint = match error.kind() {
        io::ErrorKind::NotFound => {
            "; install it in the room's system directories or in one of [rooms] read_only_paths \
             (programs without a '/' are looked up in PATH)"
        }
        _ => "",
    };
    OpError::new(
        command::spawn_error(&program, error).kind,
        format!("cannot start server {server} ({program}): {error}{hint}"),
    )
}

/// Writes each input message as one line on the server's stdin. A write error (the server
/// closed stdin or died) ends the feed: its exit follows.
async fn feed(stdin: Option<OwnedFd>, mut input: mpsc::UnboundedReceiver<Value>) {
    let Some(mut pipe) = stdin.and_then(|fd| pipe::Sender::from_owned_fd(fd).ok()) else {
        return;
    };
    while let Some(message) = input.recv().await {
        let Ok(mut line) = serde_json::to_vec(&message) else {
            continue;
        };
        line.push(b'\n');
        if pipe.write_all(&line).await.is_err() || pipe.flush().await.is_err() {
            return;
        }
    }
}

/// Relays the server's stdout, one JSON-RPC message (object or batch array) per line, waiting
/// for room in the outbox (so backpressure reaches the server's pipe). Ends `Ok` at end of file
/// or when the hub is gone, `Err` when the server broke the rules.
async fn relay_stdout(
    fd: Option<OwnedFd>,
    id: u64,
    server: String,
    tx: mpsc::Sender<AgentMessage>,
) -> Result<(), OpError> {
    let Some(pipe) = fd.and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok()) else {
        return Ok(());
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER, pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut reader, &mut line, MAX_UPSTREAM_MESSAGE, true).await {
            Ok(Line::Eof) | Err(_) => return Ok(()),
            Ok(Line::Long) => {
                return Err(OpError::new(
                    ErrorKind::TooLarge,
                    format!(
                        "server {server} wrote a message of more than {} MiB on stdout; it was \
                         stopped",
                        MAX_UPSTREAM_MESSAGE >> 20
                    ),
                ));
            }
            Ok(Line::Read { .. }) => {}
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let message = parse(&line, &server)?;
        if tx
            .send(AgentMessage::Message { id, message })
            .await
            .is_err()
        {
            return Ok(());
        }
    }
}

/// One stdout line as a message: JSON, an object or an array, that fits a frame.
fn parse(line: &[u8], server: &str) -> Result<Value, OpError> {
    let message = match serde_json::from_slice::<Value>(line) {
        Ok(value @ (Value::Object(_) | Value::Array(_))) => value,
        _ => return Err(not_json_rpc(line, server)),
    };
    if exceeds_depth(&message) {
        return Err(OpError::new(
            ErrorKind::Protocol,
            format!(
                "server {server} wrote a message nested too deeply for the room channel; it was \
                 stopped"
            ),
        ));
    }
    if line.len() > ALWAYS_FITS {
        let mut size = Counter(0);
        let _ = serde_json::to_writer(&mut size, &message);
        if size.0 + FRAME_ENVELOPE > MAX_FRAME_LEN {
            return Err(OpError::new(
                ErrorKind::TooLarge,
                format!(
                    "server {server} wrote a message of {} bytes once encoded, above the room \
                     channel's limit of {MAX_FRAME_LEN} bytes; it was stopped",
                    size.0
                ),
            ));
        }
    }
    Ok(message)
}

fn not_json_rpc(line: &[u8], server: &str) -> OpError {
    // At most 4 bytes a character: this slice holds the quote (a cut character is dropped).
    let head = &line[..line.len().min(QUOTE_CHARS * 4 + 8)];
    let head = &head[..utf8_cut(head)];
    let text = String::from_utf8_lossy(head);
    let text = text.trim();
    let mut quote: String = text
        .chars()
        .take(QUOTE_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > QUOTE_CHARS || head.len() < line.len() {
        quote.push('…');
    }
    OpError::new(
        ErrorKind::Protocol,
        format!(
            "server {server} printed something that is not JSON-RPC on stdout: «{quote}»; MCP \
             servers must write only JSON-RPC messages to stdout (logs belong on stderr)"
        ),
    )
}

/// Counts the bytes written to it.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Relays the server's stderr line by line (each cut at [`MAX_STDERR_LINE`], lossy UTF-8). Lines
/// are dropped when the outbox is full (they are diagnostics only); reading goes on regardless,
/// so the server never blocks on stderr.
async fn relay_stderr(fd: Option<OwnedFd>, id: u64, tx: mpsc::Sender<AgentMessage>) {
    let Some(pipe) = fd.and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok()) else {
        return;
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER, pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        let cut = match read_line(&mut reader, &mut line, MAX_STDERR_LINE, false).await {
            Ok(Line::Read { cut }) => cut,
            Ok(Line::Eof | Line::Long) | Err(_) => return,
        };
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if cut {
            line.truncate(utf8_cut(&line));
        }
        let mut data = String::from_utf8_lossy(&line).into_owned();
        if cut {
            data.push('…');
        }
        let _ = tx.try_send(AgentMessage::Output {
            id,
            stream: Stream::Stderr,
            data,
        });
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line (the last one may lack its newline); `cut` when it was longer than the cap.
    Read { cut: bool },
    /// A line longer than the cap, with `stop`: reading ended there.
    Long,
    /// End of file, nothing read.
    Eof,
}

/// Reads the next line into `line` (without its `\n`), keeping at most `cap` bytes of it. A
/// longer line ends the read at once when `stop` (the rest stays unread), else the rest of it
/// is read and dropped.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    cap: usize,
    stop: bool,
) -> io::Result<Line> {
    let mut cut = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() && !cut {
                Line::Eof
            } else {
                Line::Read { cut }
            });
        }
        let newline = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        let room = cap - line.len().min(cap);
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let over = chunk.len() > room;
        let used = newline.map_or(buf.len(), |at| at + 1);
        reader.consume(used);
        if over {
            if stop {
                return Ok(Line::Long);
            }
            cut = true;
        }
        if newline.is_some() {
            return Ok(Line::Read { cut });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], cap: usize, stop: bool) -> Vec<(Line, String)> {
        let mut reader = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            let found = read_line(&mut reader, &mut line, cap, stop).await.unwrap();
            let end = matches!(found, Line::Eof | Line::Long);
            out.push((found, String::from_utf8(line).unwrap()));
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn lines_are_split_and_capped() {
        let read = |cut| Line::Read { cut };
        assert_eq!(
            lines(b"ab\n\ncdefgh\nij", 5, false).await,
            [
                (read(false), "ab".into()),
                (read(false), String::new()),
                (read(true), "cdefg".into()),
                (read(false), "ij".into()),
                (Line::Eof, String::new()),
            ]
        );
        assert_eq!(
            lines(b"abcde\nabcdef\nnext\n", 5, true).await,
            [(read(false), "abcde".into()), (Line::Long, "abcde".into())]
        );
        assert_eq!(lines(b"", 5, true).await, [(Line::Eof, String::new())]);
    }

    #[test]
    fn workspace_expands_everywhere_in_a_value() {
        let ws = OsStr::new("/work space");
        assert_eq!(expand("{workspace}", ws), "/work space");
        assert_eq!(
            expand("--root={workspace}/a:{workspace}", ws),
            "--root=/work space/a:/work space"
        );
        assert_eq!(expand("plain", ws), "plain");
        assert_eq!(expand("{work}", ws), "{work}");
    }

    #[test]
    fn only_objects_and_arrays_are_messages() {
        for good in [&br#"{"jsonrpc":"2.0"}"#[..], b"[]", b" {} \r"] {
            assert!(parse(good, "s").is_ok(), "{good:?}");
        }
        for bad in [&b"42"[..], b"\"text\"", b"null", b"{", b"hello world"] {
            let error = parse(bad, "s").unwrap_err();
            assert_eq!(error.kind, ErrorKind::Protocol, "{bad:?}");
        }
        let long = format!("Starting server {}", "x".repeat(500));
        let error = parse(long.as_bytes(), "gh").unwrap_err();
        assert!(
            error
                .message
                .contains(&format!("«Starting server {}…»", "x".repeat(104))),
            "{}",
            error.message
        );
        let error = parse(b"\x1b[31mred\xff\n", "gh").unwrap_err();
        assert!(
            error.message.contains("«?[31mred\u{FFFD}»"),
            "{}",
            error.message
        );
    }
}
