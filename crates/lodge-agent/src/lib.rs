//! `lodge agent`: the process inside a room. It confines itself, then serves the room protocol
//! on stdin/stdout: workspace file operations, commands, notebooks and upstream MCP servers, for
//! one user only. It decides no policy (the hub does) and never logs payloads: file contents,
//! command output, relayed messages, env values. Nothing but the protocol crosses to the hub.

#![deny(unsafe_code)]

mod command;
mod confine;
mod fs;
mod jupyter;
mod reaper;
mod serve;
#[cfg(test)]
mod tests;
mod tree;
mod upstream;
pub mod workspace;
// The only place allowed `unsafe` (and raw libc calls): see its module head.
#[allow(unsafe_code)]
mod sys;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub use command::MAX_OUTPUT_CAP;
pub use serve::serve;

use crate::workspace::WsError;
use lodge_protocol::ProtocolError;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `/workspace` inside bwrap; a host directory with isolation=none.
    pub workspace: PathBuf,
    /// `/tmp` inside bwrap.
    pub tmp: PathBuf,
    /// Apply Landlock + seccomp before serving (true in production).
    pub confine: bool,
    /// false: Landlock also denies TCP bind/connect (kernel ABI >= 4).
    pub network: bool,
    /// Extra directories the room may read and execute from (software of upstream servers:
    /// virtualenvs, node_modules), as `--read-only PATH`. Each must exist when confining.
    pub read_only: Vec<PathBuf>,
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The channel broke: malformed frame, I/O error, or an incompatible hub.
    #[error("room channel: {0}")]
    Channel(#[from] ProtocolError),
    /// The hub did not open with a hello.
    #[error("handshake failed: {0}")]
    Handshake(&'static str),
    #[error("cannot open the workspace: {0}")]
    Workspace(#[from] WsError),
    /// The runtime, the child reaper or the workspace root fd could not be set up.
    #[error("cannot start the agent: {0}")]
    Start(#[from] std::io::Error),
}

/// Exit code when confinement failed (the agent never served).
const EXIT_CONFINE: u8 = 3;
/// How long blocking work (an unfinished file operation) may delay the exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Synchronous entry for `lodge agent`: confines the process first (before any thread exists),
/// becomes a child subreaper (so orphaned command processes are reaped here), then builds a
/// current-thread tokio runtime and serves stdin/stdout. Returns the exit code.
pub fn main(cfg: AgentConfig) -> ExitCode {
    if cfg.confine {
        match confine::apply(&cfg) {
            Ok(report) if report.landlock_missing() => {
                eprintln!("lodge agent: WARNING: degraded sandbox: {report}");
            }
            Ok(report) => eprintln!("lodge agent: {report}"),
            Err(error) => {
                eprintln!("lodge agent: refusing to serve unconfined: {error}");
                return ExitCode::from(EXIT_CONFINE);
            }
        }
    } else {
        eprintln!("lodge agent: WARNING: confinement disabled (no Landlock, no seccomp)");
    }
    let me = rustix::process::getpid();
    if let Err(error) = rustix::process::set_child_subreaper(Some(me)) {
        eprintln!("lodge agent: cannot become a child subreaper ({error}); orphans go to init");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lodge agent: {}", AgentError::Start(error));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (reader, writer) = stdio_channel()?;
        serve(reader, writer, &cfg).await
    });
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lodge agent: {error}");
            ExitCode::FAILURE
        }
    }
}

type Reader = Pin<Box<dyn AsyncRead + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// stdin/stdout as async halves. Pipes and sockets are driven by the reactor directly (no
/// blocking thread per read, which would cost latency on every request); anything else (a tty,
/// a file) goes through `tokio::fs::File`, i.e. the blocking pool.
fn stdio_channel() -> std::io::Result<(Reader, Writer)> {
    let input = std::io::stdin().as_fd().try_clone_to_owned()?;
    let output = std::io::stdout().as_fd().try_clone_to_owned()?;
    let reader: Reader = match kind_of(&input) {
        FdKind::Pipe => Box::pin(tokio::net::unix::pipe::Receiver::from_owned_fd(input)?),
        FdKind::Socket => Box::pin(unix_stream(input)?),
        FdKind::Other => Box::pin(tokio::fs::File::from_std(input.into())),
    };
    let writer: Writer = match kind_of(&output) {
        FdKind::Pipe => Box::pin(tokio::net::unix::pipe::Sender::from_owned_fd(output)?),
        FdKind::Socket => Box::pin(unix_stream(output)?),
        FdKind::Other => Box::pin(tokio::fs::File::from_std(output.into())),
    };
    Ok((reader, writer))
}

enum FdKind {
    Pipe,
    Socket,
    Other,
}

fn kind_of(fd: &OwnedFd) -> FdKind {
    match rustix::fs::fstat(fd).map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode)) {
        Ok(rustix::fs::FileType::Fifo) => FdKind::Pipe,
        Ok(rustix::fs::FileType::Socket) => FdKind::Socket,
        _ => FdKind::Other,
    }
}

fn unix_stream(fd: OwnedFd) -> std::io::Result<tokio::net::UnixStream> {
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}
