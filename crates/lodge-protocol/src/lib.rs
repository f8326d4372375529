//! The room protocol: the framed messages the hub and one `lodge agent` exchange over their
//! private channel (stdio for a local room, an authenticated TCP stream for a pod).
//! It only carries requests and their results: it makes no policy decisions, validates no paths
//! (the agent's workspace module does) and never logs payloads, which may carry secrets.
//!
//! # Wire format
//! Every frame is a 4-byte big-endian length followed by exactly that many bytes of JSON (one
//! message). Frames above a maximum size ([`MAX_FRAME_LEN`] unless configured) are refused on
//! both encode and decode, before anything of that size is allocated.
//!
//! Messages are JSON objects tagged by `"type"`. The first frame each side sends is a
//! [`Hello`] (`{"type":"hello","protocol":1,"version":"0.1.0"}`); each side checks the peer's
//! with [`check_hello`] and closes the channel on [`ProtocolError::Incompatible`]. After that
//! the hub sends [`HubMessage`]s and the agent sends [`AgentMessage`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use lodge_core::secret::{REDACTED, Secret};
use lodge_kernel::ops::{JupyterOp, JupyterResult, KernelSettings};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

/// The protocol revision this build speaks. Bump it on any incompatible change to the messages.
pub const PROTOCOL_VERSION: u32 = 1;

/// The default largest frame body (the JSON after the length prefix), in bytes: 16 MiB.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Length of the big-endian frame length prefix.
const PREFIX_LEN: usize = 4;

/// Largest JSON message an upstream server may write on one stdout line.
pub const MAX_UPSTREAM_MESSAGE: usize = 8 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Errors at the codec boundary
// ---------------------------------------------------------------------------------------------

/// What can go wrong on the channel itself (as opposed to inside one operation, see [`OpError`]).
/// After any of these the channel should be closed: the peers no longer agree on the stream.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A frame's length is above the configured maximum (on decode: announced by the peer).
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    /// A frame that is not valid JSON or not a valid message (or a message that could not be
    /// encoded). The message never quotes string values from the frame.
    #[error("malformed frame ({len} bytes): {message}")]
    Malformed { len: usize, message: String },
    /// The underlying channel failed.
    #[error("room channel I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer speaks another protocol revision.
    #[error(
        "incompatible room protocol: we speak version {ours}, the peer speaks version {theirs}"
    )]
    Incompatible { ours: u32, theirs: u32 },
}

// ---------------------------------------------------------------------------------------------
// Versioning
// ---------------------------------------------------------------------------------------------

/// The first frame each side sends (one `Hello` each way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol revision the sender speaks.
    pub protocol: u32,
    /// The sender's software version, for diagnostics only (never used for compatibility).
    pub version: String,
}

impl Hello {
    /// The hello this build sends, with the given software version.
    pub fn current(version: impl Into<String>) -> Self {
        Self {
            protocol: PROTOCOL_VERSION,
            version: version.into(),
        }
    }
}

/// Checks the peer's hello: accepted only if it speaks exactly [`PROTOCOL_VERSION`].
pub fn check_hello(peer: &Hello) -> Result<(), ProtocolError> {
    if peer.protocol == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::Incompatible {
            ours: PROTOCOL_VERSION,
            theirs: peer.protocol,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// Hub -> agent.
///
/// `Debug` is written by hand (see below): it never prints an `Input`'s message.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HubMessage {
    /// The first frame the hub sends.
    Hello(Hello),
    /// Perform `op`; the agent answers with exactly one [`AgentMessage::Response`] for `id`.
    Request { id: u64, op: Op },
    /// Stop working on request `id` if it still runs (it then answers with `Cancelled`).
    Cancel { id: u64 },
    /// Finish up and exit.
    Shutdown,
    /// One JSON-RPC message for the stdin of the upstream server that request `id` runs.
    Input { id: u64, message: serde_json::Value },
}

/// Hand-written so that `{:?}` of a hub message never shows an upstream server's input (tool
/// arguments may carry secrets, and a JSON value cannot be a zeroizing [`Secret`]); ops redact
/// their secrets themselves.
impl fmt::Debug for HubMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubMessage::Hello(hello) => f.debug_tuple("Hello").field(hello).finish(),
            HubMessage::Request { id, op } => f
                .debug_struct("Request")
                .field("id", id)
                .field("op", op)
                .finish(),
            HubMessage::Cancel { id } => f.debug_struct("Cancel").field("id", id).finish(),
            HubMessage::Shutdown => f.write_str("Shutdown"),
            HubMessage::Input { id, .. } => f
                .debug_struct("Input")
                .field("id", id)
                .field("message", &format_args!("{REDACTED}"))
                .finish(),
        }
    }
}

/// Agent -> hub.
///
/// The derived `Debug` shows file contents and command output: do not log these messages whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// The first frame the agent sends.
    Hello(Hello),
    /// The final answer to request `id`; on the wire `result` is `{"ok": ...}` or `{"err": ...}`.
    Response {
        id: u64,
        #[serde(with = "result_repr")]
        result: Result<OpResult, OpError>,
    },
    /// Progress of a request that is still running.
    Progress {
        id: u64,
        message: String,
        progress: Option<f64>,
        total: Option<f64>,
    },
    /// A chunk of a running command's output.
    Output {
        id: u64,
        stream: Stream,
        data: String,
    },
    /// The agent's own diagnostics.
    Log { level: LogLevel, message: String },
    /// One JSON message the upstream server of request `id` printed on its stdout.
    Message { id: u64, message: serde_json::Value },
}

/// Which output stream of a command a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Severity of an [`AgentMessage::Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// An operation the agent performs in the room: one named request struct per operation, so a
/// handler can take its request whole. Paths are relative to the workspace and are not
/// validated here. Secret values (env values, file contents, notebook code) are [`Secret`]s,
/// so the derived `Debug` never prints them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Ping,
    FsList(FsList),
    FsRead(FsRead),
    FsWrite(FsWrite),
    FsEdit(FsEdit),
    FsDelete(FsDelete),
    FsMove(FsMove),
    FsMkdir(FsMkdir),
    FsSearch(FsSearch),
    RunCommand(RunCommand),
    Exec(Exec),
    Upstream(Upstream),
    Jupyter(Jupyter),
}

/// The extra environment of one child process. Secrets reach a room only this way, so the
/// values are secret: never print or log them.
pub type Env = BTreeMap<String, Secret<String>>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsList {
    pub path: String,
    pub recursive: bool,
    pub limit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRead {
    pub path: String,
    pub offset: u64,
    pub limit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsWrite {
    pub path: String,
    /// May hold secrets (a `.env` file).
    pub content: Secret<String>,
    pub create_dirs: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsEdit {
    pub path: String,
    pub old: Secret<String>,
    pub new: Secret<String>,
    pub replace_all: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsDelete {
    pub path: String,
    pub recursive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsMove {
    pub from: String,
    pub to: String,
    pub overwrite: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsMkdir {
    pub path: String,
    pub parents: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsSearch {
    pub path: String,
    pub glob: Option<String>,
    pub text: Option<String>,
    pub limit: u64,
}

/// `/bin/sh -c command`: an [`Exec`] of the shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCommand {
    pub command: String,
    pub cwd: Option<String>,
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: Env,
    pub output_cap: u64,
}

/// Runs `argv[0]` (looked up in `PATH` unless it has a `/`) with `argv[1..]` as its arguments,
/// verbatim: no shell parses them. Answered with [`OpResult::Command`], like `RunCommand`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: Env,
    pub timeout_ms: u64,
    pub output_cap: u64,
}

/// Runs an upstream MCP server until it exits or the request is cancelled; its stdout lines
/// come back as `Message`s, its stderr as `Output { stream: Stderr }` (one line each, without
/// the newline), and `Input`s go to its stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The server's name, for messages only.
    pub server: String,
    /// Program and arguments; `{workspace}` expands to the workspace path.
    pub argv: Vec<String>,
    /// `{workspace}` expands in values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: Env,
}

/// A notebook or kernel request (see `lodge_kernel::ops`), with the operator's kernel settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Jupyter {
    pub settings: KernelSettings,
    pub request: JupyterOp,
}

/// `From<FsRead> for Op` and so on, so a request can be sent as `op.into()`.
macro_rules! op_from {
    ($($variant:ident),* $(,)?) => {
        $(impl From<$variant> for Op {
            fn from(request: $variant) -> Op {
                Op::$variant(request)
            }
        })*
    };
}

op_from!(
    FsList, FsRead, FsWrite, FsEdit, FsDelete, FsMove, FsMkdir, FsSearch, RunCommand, Exec,
    Upstream, Jupyter,
);

/// The successful result of an [`Op`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpResult {
    /// For `Ping`.
    Pong,
    /// For `FsList`; `truncated` when `limit` cut the listing short.
    Entries {
        entries: Vec<Entry>,
        truncated: bool,
    },
    /// For `FsRead`: `content` starts at byte `offset` of a file of `total_size` bytes; the next
    /// page starts at `next_offset` (a page never ends inside a UTF-8 sequence). `lossy` when
    /// invalid UTF-8 was replaced, so `content` is not byte-exact.
    Read {
        content: String,
        offset: u64,
        next_offset: u64,
        total_size: u64,
        eof: bool,
        lossy: bool,
    },
    /// For `FsWrite`.
    Written { bytes: u64 },
    /// For `FsEdit`.
    Edited { replacements: u32 },
    /// For `FsDelete`, `FsMove`, `FsMkdir`.
    Done,
    /// For `FsSearch`; `truncated` when `limit` cut the matches short.
    Matches {
        matches: Vec<Match>,
        truncated: bool,
    },
    /// For `RunCommand` and `Exec`. Output beyond `output_cap` is dropped and flagged as truncated.
    Command {
        exit_code: Option<i32>,
        signal: Option<i32>,
        stdout: String,
        stderr: String,
        stdout_truncated: bool,
        stderr_truncated: bool,
        timed_out: bool,
        duration_ms: u64,
    },
    /// An upstream server exited by itself.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// For `Jupyter`.
    Jupyter { result: JupyterResult },
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
}

/// What a listed path is (symlinks are reported, not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One search hit: a file (by name or glob) or a line within it (by text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    pub path: String,
    /// 1-based line number for text matches; `None` for glob-only matches.
    pub line: Option<u64>,
    pub text: Option<String>,
}

/// Why an operation failed. The channel stays usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct OpError {
    pub kind: ErrorKind,
    pub message: String,
}

impl OpError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The class of an [`OpError`], for the hub to map onto its own errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidPath,
    NotFound,
    AlreadyExists,
    NotADirectory,
    IsADirectory,
    PermissionDenied,
    TooLarge,
    InvalidArgument,
    Cancelled,
    TimedOut,
    Io,
    Unsupported,
    /// An upstream server broke the stdio rules (e.g. wrote something other than JSON-RPC on
    /// stdout).
    Protocol,
    /// A notebook changed since the revision the client read (edited outside Lodge).
    Conflict,
    /// A kernel could not start, died, or has no kernelspec.
    Kernel,
}

impl ErrorKind {
    /// The wire name (snake_case).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidPath => "invalid_path",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::NotADirectory => "not_a_directory",
            ErrorKind::IsADirectory => "is_a_directory",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::TimedOut => "timed_out",
            ErrorKind::Io => "io",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Kernel => "kernel",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Protocol => "protocol",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Result<OpResult, OpError>` on the wire as `{"ok": ...}` or `{"err": ...}`.
mod result_repr {
    use super::{OpError, OpResult};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Borrowed<'a> {
        Ok(&'a OpResult),
        Err(&'a OpError),
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Owned {
        Ok(OpResult),
        Err(OpError),
    }

    pub fn serialize<S: Serializer>(
        result: &Result<OpResult, OpError>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match result {
            Ok(value) => Borrowed::Ok(value),
            Err(error) => Borrowed::Err(error),
        }
        .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Result<OpResult, OpError>, D::Error> {
        Ok(match Owned::deserialize(deserializer)? {
            Owned::Ok(value) => Ok(value),
            Owned::Err(error) => Err(error),
        })
    }
}

/// How deeply a relayed JSON message (`Input`, `Message`) may nest. serde_json refuses to
/// decode more than 128 levels and the frame adds its own around the message, so a deeper
/// message would break the whole channel instead of failing alone.
pub const MAX_MESSAGE_DEPTH: usize = 100;

/// Whether `value` nests arrays and objects more than [`MAX_MESSAGE_DEPTH`] levels deep.
pub fn exceeds_depth(value: &serde_json::Value) -> bool {
    fn deeper(value: &serde_json::Value, left: usize) -> bool {
        match value {
            serde_json::Value::Array(items) => {
                left == 0 || items.iter().any(|v| deeper(v, left - 1))
            }
            serde_json::Value::Object(map) => {
                left == 0 || map.values().any(|v| deeper(v, left - 1))
            }
            _ => false,
        }
    }
    deeper(value, MAX_MESSAGE_DEPTH)
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// Length-prefixed JSON frames: decodes `In`, encodes `Out`. Use [`HubCodec`] on the hub and
/// [`AgentCodec`] in the agent, e.g. `Framed::new(stream, HubCodec::new())`.
pub struct FrameCodec<In, Out> {
    max_frame_len: usize,
    _types: PhantomData<fn(Out) -> In>,
}

/// The hub's end: reads agent messages, writes hub messages.
pub type HubCodec = FrameCodec<AgentMessage, HubMessage>;
/// The agent's end: reads hub messages, writes agent messages.
pub type AgentCodec = FrameCodec<HubMessage, AgentMessage>;

impl<In, Out> FrameCodec<In, Out> {
    /// A codec with the default limit, [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }

    /// A codec refusing frame bodies above `max` bytes (capped at what the prefix can express).
    pub fn with_max_frame_len(max: usize) -> Self {
        Self {
            max_frame_len: max.min(u32::MAX as usize),
            _types: PhantomData,
        }
    }

    /// The largest frame body this codec accepts, in bytes.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In, Out> Clone for FrameCodec<In, Out> {
    fn clone(&self) -> Self {
        Self::with_max_frame_len(self.max_frame_len)
    }
}

impl<In, Out> fmt::Debug for FrameCodec<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameCodec")
            .field("max_frame_len", &self.max_frame_len)
            .finish()
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        if src.len() < PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&src[..PREFIX_LEN]);
        let len = u32::from_be_bytes(prefix) as usize;
        // Checked before reserving anything: a hostile prefix must not cause a huge allocation.
        if len > self.max_frame_len {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let total = PREFIX_LEN + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        let frame = src.split_to(len);
        serde_json::from_slice(&frame)
            .map(Some)
            .map_err(|error| ProtocolError::Malformed {
                len,
                message: describe_json_error(&error),
            })
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = ProtocolError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32(0); // placeholder, patched below
        let written = serde_json::to_writer((&mut *dst).writer(), &item);
        let len = dst.len() - start - PREFIX_LEN;
        if let Err(error) = written {
            dst.truncate(start);
            return Err(ProtocolError::Malformed {
                len,
                message: format!("cannot encode message: {}", describe_json_error(&error)),
            });
        }
        if len > self.max_frame_len {
            dst.truncate(start);
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        // `len <= max_frame_len <= u32::MAX`, so this conversion cannot fail.
        let prefix = u32::try_from(len).map_err(|_| ProtocolError::FrameTooLarge {
            len,
            max: self.max_frame_len,
        })?;
        dst[start..start + PREFIX_LEN].copy_from_slice(&prefix.to_be_bytes());
        Ok(())
    }
}

/// serde_json's error text without the values it quotes (`invalid type: string "…", expected
/// u64` would otherwise copy payload, perhaps a secret, into logs). Positions, field names and
/// expectations are kept.
fn describe_json_error(error: &serde_json::Error) -> String {
    lodge_core::text::without_values(&error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use serde_json::json;
    use tokio_util::codec::Framed;

    fn all_ops() -> Vec<Op> {
        vec![
            Op::Ping,
            Op::FsList(FsList {
                path: "src".into(),
                recursive: true,
                limit: 100,
            }),
            Op::FsRead(FsRead {
                path: "a.txt".into(),
                offset: 10,
                limit: 4096,
            }),
            Op::FsWrite(FsWrite {
                path: "dir/b.txt".into(),
                content: "héllo\nworld\u{0}".into(),
                create_dirs: true,
            }),
            Op::FsEdit(FsEdit {
                path: "b.txt".into(),
                old: "world".into(),
                new: "there".into(),
                replace_all: false,
            }),
            Op::FsDelete(FsDelete {
                path: "old".into(),
                recursive: true,
            }),
            Op::FsMove(FsMove {
                from: "a".into(),
                to: "b".into(),
                overwrite: false,
            }),
            Op::FsMkdir(FsMkdir {
                path: "x/y".into(),
                parents: true,
            }),
            Op::FsSearch(FsSearch {
                path: ".".into(),
                glob: Some("*.rs".into()),
                text: None,
                limit: 50,
            }),
            Op::RunCommand(RunCommand {
                command: "echo $GREETING".into(),
                cwd: Some("sub".into()),
                timeout_ms: 30_000,
                env: BTreeMap::from([("GREETING".into(), "hi".into())]),
                output_cap: 65_536,
            }),
            Op::RunCommand(RunCommand {
                command: "true".into(),
                cwd: None,
                timeout_ms: 1,
                env: BTreeMap::new(),
                output_cap: 0,
            }),
            Op::Exec(Exec {
                argv: vec![
                    "git".into(),
                    "commit".into(),
                    "-m".into(),
                    "it's; $(done)".into(),
                ],
                cwd: Some("repo".into()),
                env: BTreeMap::from([("GIT_TERMINAL_PROMPT".into(), "0".into())]),
                timeout_ms: 60_000,
                output_cap: 1024,
            }),
            Op::Upstream(Upstream {
                server: "github".into(),
                argv: vec!["npx".into(), "-y".into(), "{workspace}/server.js".into()],
                env: BTreeMap::from([("GITHUB_TOKEN".into(), "ghp_x".into())]),
            }),
            Op::Upstream(Upstream {
                server: "fs".into(),
                argv: vec!["/usr/bin/mcp-fs".into()],
                env: BTreeMap::new(),
            }),
        ]
    }

    fn all_hub_messages() -> Vec<HubMessage> {
        let mut messages = vec![HubMessage::Hello(Hello::current("0.1.0"))];
        messages.extend(
            all_ops()
                .into_iter()
                .enumerate()
                .map(|(i, op)| HubMessage::Request { id: i as u64, op }),
        );
        messages.push(HubMessage::Input {
            id: 3,
            message: json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"é":[1,2.5,null]}}),
        });
        messages.push(HubMessage::Input {
            id: 3,
            message: json!([{"jsonrpc":"2.0","method":"notifications/initialized"}]),
        });
        messages.push(HubMessage::Cancel { id: u64::MAX });
        messages.push(HubMessage::Shutdown);
        messages
    }

    fn all_results() -> Vec<OpResult> {
        vec![
            OpResult::Pong,
            OpResult::Entries {
                entries: vec![
                    Entry {
                        path: "a".into(),
                        kind: EntryKind::File,
                        size: 3,
                    },
                    Entry {
                        path: "d".into(),
                        kind: EntryKind::Dir,
                        size: 0,
                    },
                    Entry {
                        path: "l".into(),
                        kind: EntryKind::Symlink,
                        size: 1,
                    },
                    Entry {
                        path: "p".into(),
                        kind: EntryKind::Other,
                        size: 0,
                    },
                ],
                truncated: true,
            },
            OpResult::Read {
                content: "abc".into(),
                offset: 2,
                next_offset: 5,
                total_size: 5,
                eof: true,
                lossy: false,
            },
            OpResult::Written { bytes: 12 },
            OpResult::Edited { replacements: 2 },
            OpResult::Done,
            OpResult::Matches {
                matches: vec![
                    Match {
                        path: "x.rs".into(),
                        line: Some(4),
                        text: Some("fn main()".into()),
                    },
                    Match {
                        path: "y.rs".into(),
                        line: None,
                        text: None,
                    },
                ],
                truncated: false,
            },
            OpResult::Command {
                exit_code: Some(0),
                signal: None,
                stdout: "hi\n".into(),
                stderr: String::new(),
                stdout_truncated: false,
                stderr_truncated: true,
                timed_out: false,
                duration_ms: 3,
            },
            OpResult::Command {
                exit_code: None,
                signal: Some(9),
                stdout: String::new(),
                stderr: String::new(),
                stdout_truncated: false,
                stderr_truncated: false,
                timed_out: true,
                duration_ms: 1000,
            },
            OpResult::Exited {
                code: Some(3),
                signal: None,
            },
            OpResult::Exited {
                code: None,
                signal: Some(9),
            },
        ]
    }

    fn all_agent_messages() -> Vec<AgentMessage> {
        let mut messages = vec![AgentMessage::Hello(Hello::current("0.1.0-agent"))];
        messages.extend(all_results().into_iter().enumerate().map(|(i, r)| {
            AgentMessage::Response {
                id: i as u64,
                result: Ok(r),
            }
        }));
        for (i, kind) in [
            ErrorKind::InvalidPath,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::NotADirectory,
            ErrorKind::IsADirectory,
            ErrorKind::PermissionDenied,
            ErrorKind::TooLarge,
            ErrorKind::InvalidArgument,
            ErrorKind::Cancelled,
            ErrorKind::TimedOut,
            ErrorKind::Io,
            ErrorKind::Unsupported,
            ErrorKind::Protocol,
        ]
        .into_iter()
        .enumerate()
        {
            messages.push(AgentMessage::Response {
                id: 100 + i as u64,
                result: Err(OpError::new(kind, format!("failed: {kind}"))),
            });
        }
        messages.extend([
            AgentMessage::Progress {
                id: 3,
                message: "copying".into(),
                progress: Some(0.5),
                total: Some(2.0),
            },
            AgentMessage::Progress {
                id: 3,
                message: String::new(),
                progress: None,
                total: None,
            },
            AgentMessage::Output {
                id: 4,
                stream: Stream::Stdout,
                data: "out".into(),
            },
            AgentMessage::Output {
                id: 4,
                stream: Stream::Stderr,
                data: "err".into(),
            },
            AgentMessage::Message {
                id: 5,
                message: json!({"jsonrpc":"2.0","id":1,"result":{"tools":[],"big":18446744073709551615u64,"neg":-1}}),
            },
            AgentMessage::Message {
                id: 5,
                message: json!([]),
            },
        ]);
        for level in [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ] {
            messages.push(AgentMessage::Log {
                level,
                message: "agent started".into(),
            });
        }
        messages
    }

    #[tokio::test]
    async fn every_message_round_trips_over_a_real_pipe() {
        let (hub_end, agent_end) = tokio::io::duplex(64);
        let mut hub = Framed::new(hub_end, HubCodec::new());
        let mut agent = Framed::new(agent_end, AgentCodec::new());

        let hub_messages = all_hub_messages();
        let agent_messages = all_agent_messages();

        // Both directions at once: the pipe buffer is small, so writes must interleave with reads.
        let to_agent = hub_messages.clone();
        let hub_task = tokio::spawn(async move {
            for message in to_agent {
                hub.send(message).await.expect("hub send");
            }
            let mut received = Vec::new();
            while let Some(message) = hub.next().await {
                received.push(message.expect("hub decode"));
            }
            received
        });
        let to_hub = agent_messages.clone();
        let agent_task = tokio::spawn(async move {
            let mut received = Vec::new();
            for _ in 0..hub_messages.len() {
                let message = agent.next().await.expect("agent stream ended early");
                received.push(message.expect("agent decode"));
            }
            for message in to_hub {
                agent.send(message).await.expect("agent send");
            }
            // Dropping `agent` closes the pipe so the hub's stream ends.
            received
        });
        let at_agent = agent_task.await.expect("agent task");
        let at_hub = hub_task.await.expect("hub task");
        assert_eq!(at_agent, all_hub_messages());
        assert_eq!(at_hub, agent_messages);
    }

    fn encode_all<T: Serialize + Clone>(messages: &[T]) -> BytesMut {
        let mut codec = FrameCodec::<T, T>::new();
        let mut buf = BytesMut::new();
        for message in messages {
            codec.encode(message.clone(), &mut buf).expect("encode");
        }
        buf
    }

    #[test]
    fn back_to_back_frames_decode_in_order_whatever_the_split() {
        let messages = all_agent_messages();
        let wire = encode_all(&messages);
        for chunk in [1, 2, 3, 5, 7, 64, wire.len()] {
            let mut codec = HubCodec::new();
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(message) = codec.decode(&mut buf).expect("decode") {
                    decoded.push(message);
                }
            }
            assert!(buf.is_empty(), "chunk {chunk}: bytes left over");
            assert_eq!(decoded, messages, "chunk size {chunk}");
        }
    }

    #[test]
    fn oversized_length_prefix_is_refused_without_allocating() {
        let mut codec = AgentCodec::new();
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF, b'{'][..]);
        match codec.decode(&mut buf) {
            Err(ProtocolError::FrameTooLarge { len, max }) => {
                assert_eq!(len, 0xFFFF_FFFF);
                assert_eq!(max, MAX_FRAME_LEN);
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(buf.capacity() < 1024, "capacity grew to {}", buf.capacity());

        // Just over a custom limit: refused too, while exactly the limit is fine.
        let frame = br#"{"type":"shutdown"}"#;
        let mut tight = AgentCodec::with_max_frame_len(frame.len() - 1);
        let mut buf = BytesMut::new();
        buf.put_u32(frame.len() as u32);
        assert!(matches!(
            tight.decode(&mut buf),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        let mut exact = AgentCodec::with_max_frame_len(frame.len());
        buf.extend_from_slice(frame);
        assert_eq!(
            exact.decode(&mut buf).expect("decode"),
            Some(HubMessage::Shutdown)
        );
    }

    #[test]
    fn oversized_encode_is_refused_and_leaves_the_buffer_as_it_was() {
        let mut codec = HubCodec::with_max_frame_len(64);
        let mut buf = BytesMut::new();
        codec
            .encode(HubMessage::Shutdown, &mut buf)
            .expect("small frame");
        let before = buf.clone();
        let big = HubMessage::Request {
            id: 1,
            op: Op::FsWrite(FsWrite {
                path: "f".into(),
                content: "x".repeat(1000).into(),
                create_dirs: false,
            }),
        };
        match codec.encode(big, &mut buf) {
            Err(ProtocolError::FrameTooLarge { len, max }) => {
                assert!(len > 1000, "len {len}");
                assert_eq!(max, 64);
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert_eq!(buf, before);
    }

    fn frame(body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.extend_from_slice(body);
        buf
    }

    fn malformed(body: &[u8]) -> (usize, String) {
        let mut buf = frame(body);
        match AgentCodec::new().decode(&mut buf) {
            Err(error @ ProtocolError::Malformed { .. }) => {
                let shown = error.to_string();
                let ProtocolError::Malformed { len, message } = error else {
                    unreachable!()
                };
                assert!(
                    shown.contains(&format!("({} bytes)", body.len())),
                    "{shown}"
                );
                (len, message)
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn malformed_json_is_reported_with_its_length() {
        let (len, message) = malformed(b"{not json");
        assert_eq!(len, 9);
        assert!(message.contains("line 1 column"), "{message}");

        let (len, message) = malformed(b"");
        assert_eq!(len, 0);
        assert!(message.contains("EOF"), "{message}");
    }

    #[test]
    fn wrong_shape_is_malformed_and_quotes_no_values() {
        let (_, message) = malformed(br#"{"type":"launch_missiles"}"#);
        assert!(message.contains("unknown variant"), "{message}");
        assert!(!message.contains("missiles"), "value leaked: {message}");

        let (_, message) = malformed(br#"{"type":"cancel"}"#);
        assert!(message.contains("missing field `id`"), "{message}");

        let body = br#"{"type":"cancel","id":"sk-SECRET-123"}"#;
        let (_, message) = malformed(body);
        assert!(message.contains("expected u64"), "{message}");
        assert!(!message.contains("SECRET"), "value leaked: {message}");

        let (_, message) = malformed(br#"[1,2]"#);
        assert!(!message.is_empty());
    }

    #[test]
    fn truncated_frame_waits_for_more_bytes() {
        let mut codec = AgentCodec::new();
        let whole = frame(br#"{"type":"cancel","id":5}"#);
        let mut buf = BytesMut::from(&whole[..2]);
        assert_eq!(codec.decode(&mut buf).expect("partial prefix"), None);
        buf.extend_from_slice(&whole[2..10]);
        assert_eq!(codec.decode(&mut buf).expect("partial body"), None);
        assert_eq!(buf.len(), 10, "nothing consumed while waiting");
        buf.extend_from_slice(&whole[10..]);
        assert_eq!(
            codec.decode(&mut buf).expect("whole"),
            Some(HubMessage::Cancel { id: 5 })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn version_check_accepts_ours_and_refuses_others() {
        assert!(check_hello(&Hello::current("whatever")).is_ok());
        for theirs in [0, PROTOCOL_VERSION + 1, u32::MAX] {
            let error = check_hello(&Hello {
                protocol: theirs,
                version: "9.9.9".into(),
            })
            .expect_err("must refuse");
            match &error {
                ProtocolError::Incompatible { ours, theirs: t } => {
                    assert_eq!(*ours, PROTOCOL_VERSION);
                    assert_eq!(*t, theirs);
                }
                other => panic!("expected Incompatible, got {other:?}"),
            }
            assert!(error.to_string().contains(&theirs.to_string()));
        }
    }

    #[test]
    fn debug_of_an_op_never_shows_secret_values() {
        let op = Op::RunCommand(RunCommand {
            command: "deploy".into(),
            cwd: None,
            timeout_ms: 1000,
            env: BTreeMap::from([
                ("API_TOKEN".into(), "tok-s3cr3t-value".into()),
                ("OTHER".into(), "hunter2".into()),
            ]),
            output_cap: 10,
        });
        for shown in [format!("{op:?}"), format!("{op:#?}")] {
            assert!(!shown.contains("tok-s3cr3t-value"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("API_TOKEN"), "{shown}");
            assert!(shown.contains("OTHER"), "{shown}");
            assert!(shown.contains("deploy"), "{shown}");
        }
        let request = HubMessage::Request { id: 1, op };
        assert!(!format!("{request:?}").contains("hunter2"));

        let write = Op::FsWrite(FsWrite {
            path: ".env".into(),
            content: "PASSWORD=hunter2".into(),
            create_dirs: false,
        });
        let shown = format!("{write:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let edit = Op::FsEdit(FsEdit {
            path: ".env".into(),
            old: "PASSWORD=hunter2".into(),
            new: "PASSWORD=tr0ub4dor".into(),
            replace_all: false,
        });
        let shown = format!("{edit:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tr0ub4dor"),
            "{shown}"
        );
        let exec = Op::Exec(Exec {
            argv: vec!["git".into(), "push".into()],
            cwd: None,
            env: BTreeMap::from([("LODGE_GIT_TOKEN".into(), "ghp_s3cr3t".into())]),
            timeout_ms: 1,
            output_cap: 1,
        });
        let shown = format!("{exec:?}");
        assert!(!shown.contains("ghp_s3cr3t"), "{shown}");
        assert!(
            shown.contains("LODGE_GIT_TOKEN") && shown.contains("push"),
            "{shown}"
        );

        let upstream = Op::Upstream(Upstream {
            server: "github".into(),
            argv: vec!["github-mcp".into(), "stdio".into()],
            env: BTreeMap::from([("GITHUB_TOKEN".into(), "ghp_s3cr3t".into())]),
        });
        for shown in [format!("{upstream:?}"), format!("{upstream:#?}")] {
            assert!(!shown.contains("ghp_s3cr3t"), "{shown}");
            assert!(shown.contains("GITHUB_TOKEN"), "{shown}");
            assert!(shown.contains("github-mcp"), "{shown}");
            assert!(shown.contains("\"github\""), "{shown}");
        }
        let jupyter = Op::Jupyter(Jupyter {
            settings: lodge_kernel::ops::KernelSettings::default(),
            request: lodge_kernel::ops::JupyterOp::CodeExecute {
                code: "token = 'hunter2'".into(),
                kernel: None,
                kernel_name: None,
                timeout_ms: 1,
                output_cap: 1,
            },
        });
        let shown = format!("{jupyter:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("CodeExecute"), "{shown}");
        let input = HubMessage::Input {
            id: 4,
            message: json!({"params":{"arguments":{"password":"hunter2"}}}),
        };
        let shown = format!("{input:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("Input") && shown.contains('4'), "{shown}");
    }

    #[test]
    fn wire_format_is_pinned() {
        // The exact bytes of one frame, prefix included.
        let mut buf = BytesMut::new();
        HubCodec::new()
            .encode(HubMessage::Cancel { id: 42 }, &mut buf)
            .expect("encode");
        let body = br#"{"type":"cancel","id":42}"#;
        assert_eq!(&buf[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(&buf[4..], &body[..]);

        let cases: Vec<(serde_json::Value, serde_json::Value)> = vec![
            (
                serde_json::to_value(AgentMessage::Progress {
                    id: 42,
                    message: "indexing".into(),
                    progress: Some(3.0),
                    total: Some(10.0),
                })
                .expect("json"),
                json!({"type":"progress","id":42,"message":"indexing","progress":3.0,"total":10.0}),
            ),
            (
                serde_json::to_value(HubMessage::Hello(Hello::current("0.1.0"))).expect("json"),
                json!({"type":"hello","protocol":1,"version":"0.1.0"}),
            ),
            (
                serde_json::to_value(HubMessage::Request {
                    id: 7,
                    op: Op::FsRead(FsRead {
                        path: "a.txt".into(),
                        offset: 0,
                        limit: 100,
                    }),
                })
                .expect("json"),
                json!({"type":"request","id":7,"op":{"op":"fs_read","path":"a.txt","offset":0,"limit":100}}),
            ),
            (
                serde_json::to_value(HubMessage::Request {
                    id: 8,
                    op: Op::RunCommand(RunCommand {
                        command: "ls".into(),
                        cwd: None,
                        timeout_ms: 5,
                        env: BTreeMap::from([("K".into(), "v".into())]),
                        output_cap: 9,
                    }),
                })
                .expect("json"),
                json!({"type":"request","id":8,"op":{"op":"run_command","command":"ls","cwd":null,
                       "timeout_ms":5,"env":{"K":"v"},"output_cap":9}}),
            ),
            (
                serde_json::to_value(HubMessage::Shutdown).expect("json"),
                json!({"type":"shutdown"}),
            ),
            (
                serde_json::to_value(HubMessage::Request {
                    id: 9,
                    op: Op::Upstream(Upstream {
                        server: "gh".into(),
                        argv: vec!["gh-mcp".into(), "{workspace}".into()],
                        env: BTreeMap::from([("T".into(), "v".into())]),
                    }),
                })
                .expect("json"),
                json!({"type":"request","id":9,"op":{"op":"upstream","server":"gh",
                       "argv":["gh-mcp","{workspace}"],"env":{"T":"v"}}}),
            ),
            (
                serde_json::to_value(HubMessage::Input {
                    id: 9,
                    message: json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
                })
                .expect("json"),
                json!({"type":"input","id":9,"message":{"jsonrpc":"2.0","id":1,"method":"ping"}}),
            ),
            (
                serde_json::to_value(AgentMessage::Message {
                    id: 9,
                    message: json!({"jsonrpc":"2.0","id":1,"result":{}}),
                })
                .expect("json"),
                json!({"type":"message","id":9,"message":{"jsonrpc":"2.0","id":1,"result":{}}}),
            ),
            (
                serde_json::to_value(AgentMessage::Response {
                    id: 9,
                    result: Ok(OpResult::Exited {
                        code: Some(0),
                        signal: None,
                    }),
                })
                .expect("json"),
                json!({"type":"response","id":9,"result":{"ok":{"type":"exited","code":0,"signal":null}}}),
            ),
            (
                serde_json::to_value(AgentMessage::Response {
                    id: 9,
                    result: Err(OpError::new(ErrorKind::Protocol, "not JSON")),
                })
                .expect("json"),
                json!({"type":"response","id":9,"result":{"err":{"kind":"protocol","message":"not JSON"}}}),
            ),
            (
                serde_json::to_value(AgentMessage::Response {
                    id: 7,
                    result: Ok(OpResult::Written { bytes: 3 }),
                })
                .expect("json"),
                json!({"type":"response","id":7,"result":{"ok":{"type":"written","bytes":3}}}),
            ),
            (
                serde_json::to_value(AgentMessage::Response {
                    id: 7,
                    result: Err(OpError::new(ErrorKind::NotFound, "no such file")),
                })
                .expect("json"),
                json!({"type":"response","id":7,"result":{"err":{"kind":"not_found","message":"no such file"}}}),
            ),
            (
                serde_json::to_value(AgentMessage::Output {
                    id: 8,
                    stream: Stream::Stderr,
                    data: "oops".into(),
                })
                .expect("json"),
                json!({"type":"output","id":8,"stream":"stderr","data":"oops"}),
            ),
            (
                serde_json::to_value(AgentMessage::Log {
                    level: LogLevel::Warn,
                    message: "slow disk".into(),
                })
                .expect("json"),
                json!({"type":"log","level":"warn","message":"slow disk"}),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }

        // Ops as exact bytes: field order and spelling are the wire format, secrets included.
        let ops = [
            (
                Op::FsWrite(FsWrite {
                    path: "a".into(),
                    content: "k=v".into(),
                    create_dirs: true,
                }),
                r#"{"op":"fs_write","path":"a","content":"k=v","create_dirs":true}"#,
            ),
            (
                Op::FsEdit(FsEdit {
                    path: "a".into(),
                    old: "x".into(),
                    new: "y".into(),
                    replace_all: false,
                }),
                r#"{"op":"fs_edit","path":"a","old":"x","new":"y","replace_all":false}"#,
            ),
            (
                Op::RunCommand(RunCommand {
                    command: "ls".into(),
                    cwd: Some("d".into()),
                    timeout_ms: 5,
                    env: BTreeMap::from([("K".into(), "v".into())]),
                    output_cap: 9,
                }),
                r#"{"op":"run_command","command":"ls","cwd":"d","timeout_ms":5,"env":{"K":"v"},"output_cap":9}"#,
            ),
            (
                Op::Exec(Exec {
                    argv: vec!["git".into(), "a b;'c'".into()],
                    cwd: None,
                    env: BTreeMap::from([("T".into(), "v".into())]),
                    timeout_ms: 5,
                    output_cap: 9,
                }),
                r#"{"op":"exec","argv":["git","a b;'c'"],"cwd":null,"env":{"T":"v"},"timeout_ms":5,"output_cap":9}"#,
            ),
            (Op::Ping, r#"{"op":"ping"}"#),
            (
                Op::Jupyter(Jupyter {
                    settings: KernelSettings::default(),
                    request: JupyterOp::CodeExecute {
                        code: "1+1".into(),
                        kernel: None,
                        kernel_name: None,
                        timeout_ms: 1,
                        output_cap: 2,
                    },
                }),
                concat!(
                    r#"{"op":"jupyter","settings":{"paths":[],"default":"python3","#,
                    r#""idle_timeout_ms":1800000,"start_timeout_ms":60000,"max_kernels":4,"#,
                    r#""system_paths":["/usr/local/share/jupyter","/usr/share/jupyter"],"#,
                    r#""room_network":false},"request":{"op":"code_execute","code":"1+1","#,
                    r#""kernel":null,"kernel_name":null,"timeout_ms":1,"output_cap":2}}"#
                ),
            ),
        ];
        for (op, want) in ops {
            assert_eq!(serde_json::to_string(&op).expect("json"), want);
            assert_eq!(serde_json::from_str::<Op>(want).expect("decode"), op);
        }

        // A run_command without env decodes with an empty env.
        let op: Op = serde_json::from_value(json!({"op":"run_command","command":"true",
            "cwd":null,"timeout_ms":1,"output_cap":1}))
        .expect("decode");
        assert!(matches!(op, Op::RunCommand(RunCommand { env, .. }) if env.is_empty()));
        // So does an upstream without env; an empty env is left out of the frame.
        let op: Op = serde_json::from_value(json!({"op":"upstream","server":"s","argv":["x"]}))
            .expect("decode");
        assert!(matches!(&op, Op::Upstream(Upstream { env, .. }) if env.is_empty()));
        assert_eq!(
            serde_json::to_value(&op).expect("json"),
            json!({"op":"upstream","server":"s","argv":["x"]})
        );

        // A message is nested JSON, not a string: its frame is about as large as its line.
        // (Keys in sorted order: without serde_json's `preserve_order` objects are re-sorted.)
        let line =
            br#"{"id":7,"jsonrpc":"2.0","result":{"content":[{"text":"a\"b\nc","type":"text"}]}}"#;
        let message: serde_json::Value = serde_json::from_slice(line).expect("line");
        let mut buf = BytesMut::new();
        AgentCodec::new()
            .encode(AgentMessage::Message { id: 7, message }, &mut buf)
            .expect("encode");
        let body = &buf[PREFIX_LEN..];
        let mut want = br#"{"type":"message","id":7,"message":"#.to_vec();
        want.extend_from_slice(line);
        want.push(b'}');
        assert_eq!(body, &want[..], "{}", String::from_utf8_lossy(body));
    }

    fn nested(depth: usize) -> serde_json::Value {
        (0..depth).fold(json!(1), |inner, _| json!([inner]))
    }

    #[test]
    fn messages_nested_within_the_limit_fit_a_frame_and_deeper_ones_are_caught() {
        assert!(!exceeds_depth(&json!(1)));
        assert!(!exceeds_depth(&nested(MAX_MESSAGE_DEPTH)));
        assert!(exceeds_depth(&nested(MAX_MESSAGE_DEPTH + 1)));
        assert!(exceeds_depth(&json!({"a": nested(MAX_MESSAGE_DEPTH)})));
        // The limit leaves room for the frame: the deepest allowed message decodes.
        for (depth, fits) in [(MAX_MESSAGE_DEPTH, true), (128, false)] {
            let mut buf = BytesMut::new();
            HubCodec::new()
                .encode(
                    HubMessage::Input {
                        id: 1,
                        message: nested(depth),
                    },
                    &mut buf,
                )
                .expect("encode");
            let decoded = AgentCodec::new().decode(&mut buf);
            assert_eq!(decoded.is_ok(), fits, "depth {depth}: {decoded:?}");
        }
    }

    #[test]
    fn op_error_display_names_the_kind() {
        let error = OpError::new(ErrorKind::PermissionDenied, "read-only");
        assert_eq!(error.to_string(), "permission_denied: read-only");
        for kind in [
            ErrorKind::InvalidPath,
            ErrorKind::NotADirectory,
            ErrorKind::Io,
            ErrorKind::Protocol,
        ] {
            let wire = serde_json::to_value(kind).expect("json");
            assert_eq!(wire, json!(kind.as_str()));
        }
    }
}
