//! `exec` and `run_command`: runs a program with its argv (`run_command` is `/bin/sh -c COMMAND`
//! over the same path) in the workspace with a clean environment, captures capped output,
//! reports progress, and on timeout, cancel or exit kills the command's whole process tree. It
//! also builds the clean child (environment, session, cwd) that upstream servers start from.
//! It never logs the command's environment values or output.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reaper::{Exit, Reaper};
use super::tree::{self, Target};
use crate::workspace::{sanitize, utf8_cut};
use lodge_protocol::{AgentMessage, Env, ErrorKind, Exec, OpError, OpResult, RunCommand};

/// The shell `run_command` runs in.
const SHELL: &str = "/bin/sh";
/// The fixed `PATH` of a command (before the request's own env).
const BASE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Largest output kept per stream, whatever the request asks: a response must fit one frame.
pub const MAX_OUTPUT_CAP: u64 = 4 * 1024 * 1024;
/// Longest timeout accepted (longer ones are shortened to this).
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a running command reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// After the tree is gone, how long the output readers get to reach end of file.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// After SIGKILL, how long to wait for the root's exit status.
const REAP_GRACE: Duration = Duration::from_secs(5);
/// Longest cwd accepted.
const MAX_PATH: usize = 4096;

/// What the agent needs to run commands; one per agent, shared by all requests.
pub(crate) struct CommandContext {
    /// `O_PATH` fd of the workspace root: every cwd is resolved beneath it by the kernel.
    root: OwnedFd,
    workspace: PathBuf,
    tmp: PathBuf,
    reaper: Reaper,
    /// `USER` and `LOGNAME` from the agent's own environment, if set.
    identity: Vec<(String, String)>,
}

/// How the wait for the root process ended.
enum Ending {
    Exited(Exit),
    TimedOut,
    Cancelled,
}

/// Output kept from one stream.
#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    truncated: bool,
}

impl CommandContext {
    pub(crate) fn new(workspace: &Path, tmp: &Path, reaper: Reaper) -> std::io::Result<Self> {
        let root = rustix::fs::open(
            workspace,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let identity = ["USER", "LOGNAME"]
            .into_iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .collect();
        Ok(CommandContext {
            root,
            workspace: workspace.to_path_buf(),
            tmp: tmp.to_path_buf(),
            reaper,
            identity,
        })
    }

    /// Runs one shell command line: an [`Exec`] of `/bin/sh -c COMMAND`.
    pub(crate) async fn run_command(
        &self,
        id: u64,
        request: RunCommand,
        progress: &mpsc::Sender<AgentMessage>,
        cancel: &CancellationToken,
    ) -> Result<OpResult, OpError> {
        if request.command.contains('\0') {
            return Err(invalid_argument("the command contains a NUL byte"));
        }
        let RunCommand {
            command,
            cwd,
            timeout_ms,
            env,
            output_cap,
        } = request;
        let exec = Exec {
            argv: vec![SHELL.to_owned(), "-c".to_owned(), command],
            cwd,
            env,
            timeout_ms,
            output_cap,
        };
        self.exec(id, exec, progress, cancel).await
    }

    /// Runs one program to completion (or timeout, or cancellation).
    pub(crate) async fn exec(
        &self,
        id: u64,
        request: Exec,
        progress: &mpsc::Sender<AgentMessage>,
        cancel: &CancellationToken,
    ) -> Result<OpResult, OpError> {
        let (program, args) = validate(&request)?;
        let cwd = open_cwd(&self.root, request.cwd.as_deref())?;
        let mut cmd = self.build(program, args, &request.env, cwd);
        let cap = usize::try_from(request.output_cap.min(MAX_OUTPUT_CAP)).unwrap_or(usize::MAX);
        let timeout = Duration::from_millis(request.timeout_ms).min(MAX_TIMEOUT);

        let started = Instant::now();
        let (mut child, exited) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| spawn_error(program, &e))?;
        drop(cmd); // closes our copy of the cwd fd
        let output = Output::start(&mut child, cap);
        let watch = Watch {
            id,
            started,
            timeout,
            seen: &output.seen,
            progress,
            cancel,
        };
        let (ending, exited) = watch.wait(exited).await;
        // Whatever happened, nothing of the command may outlive the call.
        let target = Target {
            root: child.id() as i32,
            pipes: output.pipes.clone(),
        };
        tree::kill_tree(&target).await;
        let exit = match ending {
            Ending::Exited(exit) => Some(exit),
            Ending::TimedOut | Ending::Cancelled => self.reap_killed(exited).await,
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (out, err) = output.finish().await;
        match ending {
            Ending::Cancelled => Err(OpError::new(
                ErrorKind::Cancelled,
                "the command was cancelled and its processes were killed",
            )),
            Ending::Exited(_) => Ok(command_result(exit, false, out, err, duration_ms)),
            Ending::TimedOut => Ok(command_result(exit, true, out, err, duration_ms)),
        }
    }

    /// The exit status of a root process that was just killed.
    async fn reap_killed(&self, exited: oneshot::Receiver<Exit>) -> Option<Exit> {
        self.reaper.reap_now();
        tokio::time::timeout(REAP_GRACE, exited)
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// The `Command`: program and arguments, clean environment, /dev/null stdin, piped output,
    /// new session.
    fn build(&self, program: &str, args: &[String], env: &Env, cwd: OwnedFd) -> Command {
        let mut cmd = self.child(program, cwd);
        cmd.args(args)
            .envs(exposed(env))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// A child of the agent as every one starts: `program` (looked up in `PATH` unless it has a
    /// `/`) with the clean base environment (`PATH`, `HOME` = the workspace, `LANG`, `TMPDIR`,
    /// and `USER`/`LOGNAME` when the agent has them), leading its own session, first for the OOM
    /// killer, starting in `cwd`. Callers add arguments, their own environment and stdio, and
    /// must spawn it through [`Self::reaper`].
    pub(crate) fn child(&self, program: impl AsRef<OsStr>, cwd: OwnedFd) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", BASE_PATH)
            .env("HOME", &self.workspace)
            .env("LANG", "C.UTF-8")
            .env("TMPDIR", &self.tmp)
            .envs(self.identity.iter().map(|(k, v)| (k, v)));
        crate::sys::set_command_child_setup(&mut cmd, cwd);
        cmd
    }

    /// The workspace root as a child's starting directory (see [`Self::child`]).
    pub(crate) fn workspace_dir(&self) -> Result<OwnedFd, OpError> {
        open_cwd(&self.root, None)
    }

    /// The workspace root directory (for [`open_cwd`]).
    pub(crate) fn root(&self) -> &OwnedFd {
        &self.root
    }

    /// The workspace path as the agent sees it (what `{workspace}` expands to).
    pub(crate) fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// The reaper every child must be spawned through.
    pub(crate) fn reaper(&self) -> &Reaper {
        &self.reaper
    }
}

/// Waits for the root process while sending progress; ends on exit, timeout or cancel.
struct Watch<'a> {
    id: u64,
    started: Instant,
    timeout: Duration,
    seen: &'a AtomicU64,
    progress: &'a mpsc::Sender<AgentMessage>,
    cancel: &'a CancellationToken,
}

impl Watch<'_> {
    async fn wait(&self, mut exited: oneshot::Receiver<Exit>) -> (Ending, oneshot::Receiver<Exit>) {
        let deadline = tokio::time::sleep_until(self.started + self.timeout);
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval_at(self.started + PROGRESS_EVERY, PROGRESS_EVERY);
        let ending = loop {
            tokio::select! {
                status = &mut exited => match status {
                    Ok(exit) => break Ending::Exited(exit),
                    // The reaper is gone (shutting down): treat as a cancellation.
                    Err(_) => break Ending::Cancelled,
                },
                () = &mut deadline => break Ending::TimedOut,
                () = self.cancel.cancelled() => break Ending::Cancelled,
                _ = ticks.tick() => self.report(),
            }
        };
        (ending, exited)
    }

    /// Best effort: progress is dropped rather than delaying the command when the channel is full.
    fn report(&self) {
        let secs = self.started.elapsed().as_secs();
        let bytes = self.seen.load(Ordering::Relaxed);
        let _ = self.progress.try_send(AgentMessage::Progress {
            id: self.id,
            message: format!("running for {secs}s, {bytes} bytes of output"),
            progress: Some(secs as f64),
            total: Some(self.timeout.as_secs_f64()),
        });
    }
}

/// The capture tasks of a running command's stdout and stderr.
struct Output {
    stdout: JoinHandle<Captured>,
    stderr: JoinHandle<Captured>,
    /// Ends the captures early (see [`DRAIN_GRACE`]).
    stop: CancellationToken,
    /// Bytes received on both streams so far, kept or not.
    seen: Arc<AtomicU64>,
    /// Inodes of the two pipes, to find processes still holding them.
    pipes: Vec<u64>,
}

impl Output {
    fn start(child: &mut Child, cap: usize) -> Output {
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        let pipes = [&stdout, &stderr]
            .into_iter()
            .flatten()
            .filter_map(|fd| rustix::fs::fstat(fd).ok())
            .map(|st| st.st_ino)
            .collect();
        let seen = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        Output {
            stdout: tokio::spawn(capture(stdout, cap, seen.clone(), stop.clone())),
            stderr: tokio::spawn(capture(stderr, cap, seen.clone(), stop.clone())),
            stop,
            seen,
            pipes,
        }
    }

    /// Waits for both captures (the tree is dead, so the pipes are closing); after
    /// [`DRAIN_GRACE`] stops them and keeps what they read.
    async fn finish(self) -> (Captured, Captured) {
        let stop = self.stop.clone();
        let guard = tokio::spawn(async move {
            tokio::time::sleep(DRAIN_GRACE).await;
            stop.cancel();
        });
        let out = self.stdout.await.unwrap_or_default();
        let err = self.stderr.await.unwrap_or_default();
        guard.abort();
        (out, err)
    }
}

/// The result of a command that ran to its end or its timeout (where it was killed, so it has
/// no exit code; `signal` says how it died).
fn command_result(
    exit: Option<Exit>,
    timed_out: bool,
    out: Captured,
    err: Captured,
    duration_ms: u64,
) -> OpResult {
    OpResult::Command {
        exit_code: exit.and_then(|e| e.code).filter(|_| !timed_out),
        signal: exit.and_then(|e| e.signal),
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
        stdout: to_text(out.kept, out.truncated),
        stderr: to_text(err.kept, err.truncated),
        timed_out,
        duration_ms,
    }
}

fn invalid_argument(message: impl Into<String>) -> OpError {
    OpError::new(ErrorKind::InvalidArgument, message)
}

/// Checks the request before anything runs and splits its argv into program and arguments.
/// Messages name variables, never their values.
fn validate(request: &Exec) -> Result<(&str, &[String]), OpError> {
    let argv = split_argv(&request.argv, "the command")?;
    if request.timeout_ms == 0 {
        return Err(invalid_argument("timeout_ms must be above 0"));
    }
    validate_env(&request.env)?;
    Ok(argv)
}

/// `argv` (of `what`, for messages) as program and arguments; refused when it names no program
/// or an argument has a NUL byte (which no `execve` can pass).
pub(crate) fn split_argv<'a>(
    argv: &'a [String],
    what: &str,
) -> Result<(&'a str, &'a [String]), OpError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(invalid_argument(format!(
            "{what} is empty: it needs at least the program to run"
        )));
    };
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err(invalid_argument(format!(
            "an argument of {what} contains a NUL byte"
        )));
    }
    Ok((program, args))
}

/// The error for a program that could not be started, naming it (never its arguments, which
/// may be long or private) with `hint` added when it was not found.
pub(crate) fn spawn_error(program: &str, error: &std::io::Error) -> OpError {
    let kind = match error.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Io,
    };
    OpError::new(
        kind,
        format!("cannot start {:?}: {error}", sanitize(program)),
    )
}

/// An environment's values as the child gets them: the one place they leave their [`Secret`]s.
///
/// [`Secret`]: lodge_core::Secret
pub(crate) fn exposed(env: &Env) -> impl Iterator<Item = (&String, &String)> {
    env.iter().map(|(name, value)| (name, value.expose()))
}

/// Checks the names (and NUL-freedom of the values) of a child's extra environment. Messages
/// name variables, never their values.
pub(crate) fn validate_env(env: &Env) -> Result<(), OpError> {
    for (name, value) in env {
        let value = value.expose();
        if !valid_env_name(name) {
            return Err(invalid_argument(format!(
                "invalid environment variable name {:?}: names must match ^[A-Za-z_][A-Za-z0-9_]*$",
                sanitize(name)
            )));
        }
        if value.contains('\0') {
            return Err(invalid_argument(format!(
                "the value of environment variable {name} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`
pub(crate) fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Resolves the command's working directory beneath the workspace root (the kernel refuses any
/// step outside, through `..`, absolute symlinks or magic links) and returns it as an `O_PATH`
/// fd; the child `fchdir`s to it, so nothing can swap the path in between.
pub(crate) fn open_cwd(root: &OwnedFd, cwd: Option<&str>) -> Result<OwnedFd, OpError> {
    let raw = cwd.unwrap_or("");
    let bad = |reason: &str| {
        OpError::new(
            ErrorKind::InvalidPath,
            format!("invalid cwd {:?}: {reason}", sanitize(raw)),
        )
    };
    if raw.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if raw.len() > MAX_PATH {
        return Err(bad("longer than 4096 bytes"));
    }
    if raw.starts_with('/') {
        return Err(bad("must be relative to the workspace"));
    }
    if raw.split('/').any(|c| c == "..") {
        return Err(bad("'..' components are not allowed"));
    }
    let arg = if raw.split('/').all(|c| c.is_empty() || c == ".") {
        "."
    } else {
        raw
    };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut tries = 0;
    let result = loop {
        match rustix::fs::openat2(root.as_fd(), arg, flags, Mode::empty(), resolve) {
            // A concurrent rename can make RESOLVE_BENEATH ask for a retry.
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            other => break other,
        }
    };
    result.map_err(|errno| {
        let kind = match errno {
            Errno::XDEV | Errno::LOOP => return bad("resolves outside the workspace"),
            Errno::NOENT => ErrorKind::NotFound,
            Errno::NOTDIR => ErrorKind::NotADirectory,
            Errno::ACCESS | Errno::PERM => ErrorKind::PermissionDenied,
            _ => ErrorKind::Io,
        };
        OpError::new(kind, format!("cwd {:?}: {errno}", sanitize(raw)))
    })
}

/// Reads one output stream to its end, keeping at most `cap` bytes but draining the rest so the
/// writer never blocks on a full pipe. Stops early when `stop` fires.
async fn capture(
    fd: Option<OwnedFd>,
    cap: usize,
    seen: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Captured {
    let mut captured = Captured::default();
    let Some(mut reader) = fd.and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok()) else {
        return captured;
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            biased;
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            () = stop.cancelled() => break,
        };
        seen.fetch_add(n as u64, Ordering::Relaxed);
        let room = cap.saturating_sub(captured.kept.len());
        captured.kept.extend_from_slice(&buf[..n.min(room)]);
        if n > room {
            captured.truncated = true;
        }
    }
    captured
}

/// Lossy UTF-8; when the output was cut, a character split by the cut is dropped whole.
fn to_text(mut kept: Vec<u8>, truncated: bool) -> String {
    if truncated {
        kept.truncate(utf8_cut(&kept));
    }
    match String::from_utf8(kept) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_shell_rule() {
        for good in ["A", "_", "PATH", "a_b9", "_X1"] {
            assert!(valid_env_name(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "É", "A\0"] {
            assert!(!valid_env_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn cut_output_never_splits_a_character() {
        let text = "aé€😀".as_bytes().to_vec(); // 1 + 2 + 3 + 4 bytes
        let cuts = [
            (1, "a"),
            (2, "a"),
            (3, "aé"),
            (5, "aé"),
            (6, "aé€"),
            (9, "aé€"),
        ];
        for (len, want) in cuts {
            assert_eq!(to_text(text[..len].to_vec(), true), want, "cut at {len}");
        }
        assert_eq!(to_text(text.clone(), true), "aé€😀");
        assert_eq!(to_text(vec![b'a', 0xFF, b'b'], false), "a\u{FFFD}b");
    }
}
