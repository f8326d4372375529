//! End-to-end tests of the agent: `serve` over an in-memory duplex, driven with the hub's codec,
//! on a temporary workspace without confinement (see `confine.rs` for that).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use super::{AgentConfig, AgentError, serve};
use lodge_protocol::{
    AgentMessage, ErrorKind, Hello, HubCodec, HubMessage, Op, OpError, OpResult, PROTOCOL_VERSION,
    ProtocolError,
};

const STEP: Duration = Duration::from_secs(10);

struct Hub {
    io: Framed<DuplexStream, HubCodec>,
    agent: JoinHandle<Result<(), AgentError>>,
    dir: tempfile::TempDir,
}

/// A real agent serving over an in-memory pipe, unconfined, with `ws` and `tmp` in a fresh
/// temporary directory. Returns the hub's end of the pipe.
fn spawn_agent() -> (
    DuplexStream,
    JoinHandle<Result<(), AgentError>>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ws")).unwrap();
    std::fs::create_dir(dir.path().join("tmp")).unwrap();
    let cfg = AgentConfig {
        workspace: dir.path().join("ws"),
        tmp: dir.path().join("tmp"),
        confine: false,
        network: true,
        read_only: Vec::new(),
    };
    let (hub_end, agent_end) = tokio::io::duplex(1 << 20);
    let (reader, writer) = tokio::io::split(agent_end);
    let agent = tokio::spawn(async move { serve(reader, writer, &cfg).await });
    (hub_end, agent, dir)
}

/// Starts an agent and reads its hello; does not send ours.
async fn start_raw() -> Hub {
    let (hub_end, agent, dir) = spawn_agent();
    let mut io = Framed::new(hub_end, HubCodec::new());
    match next(&mut io).await {
        AgentMessage::Hello(hello) => {
            assert_eq!(hello.protocol, PROTOCOL_VERSION);
            assert_eq!(hello.version, env!("CARGO_PKG_VERSION"));
        }
        other => panic!("expected the agent's hello, got {other:?}"),
    }
    Hub { io, agent, dir }
}

async fn start() -> Hub {
    let mut hub = start_raw().await;
    hub.io
        .send(HubMessage::Hello(Hello::current("test")))
        .await
        .unwrap();
    hub
}

async fn next(io: &mut Framed<DuplexStream, HubCodec>) -> AgentMessage {
    tokio::time::timeout(STEP, io.next())
        .await
        .expect("agent silent")
        .expect("channel closed")
        .expect("bad frame")
}

impl Hub {
    fn ws(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    async fn send(&mut self, id: u64, op: Op) {
        self.io.send(HubMessage::Request { id, op }).await.unwrap();
    }

    /// The next response, skipping progress.
    async fn response(&mut self) -> (u64, Result<OpResult, OpError>) {
        loop {
            match next(&mut self.io).await {
                AgentMessage::Response { id, result } => return (id, result),
                AgentMessage::Progress { .. } | AgentMessage::Log { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn call(&mut self, op: Op) -> Result<OpResult, OpError> {
        self.send(1, op).await;
        let (id, result) = self.response().await;
        assert_eq!(id, 1);
        result
    }

    async fn run(&mut self, command: &str, timeout_ms: u64) -> Result<OpResult, OpError> {
        self.call(cmd(command, timeout_ms)).await
    }

    async fn shutdown(mut self) -> Result<(), AgentError> {
        self.io.send(HubMessage::Shutdown).await.unwrap();
        tokio::time::timeout(STEP, self.agent)
            .await
            .expect("agent did not stop")
            .unwrap()
    }
}

fn cmd(command: &str, timeout_ms: u64) -> Op {
    Op::RunCommand(lodge_protocol::RunCommand {
        command: command.into(),
        cwd: None,
        timeout_ms,
        env: BTreeMap::new(),
        output_cap: 64 * 1024,
    })
}

struct Ran {
    exit_code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
    stdout_truncated: bool,
    stderr_truncated: bool,
    timed_out: bool,
    duration_ms: u64,
}

fn ran(result: Result<OpResult, OpError>) -> Ran {
    match result {
        Ok(OpResult::Command {
            exit_code,
            signal,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            timed_out,
            duration_ms,
        }) => Ran {
            exit_code,
            signal,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            timed_out,
            duration_ms,
        },
        other => panic!("expected a command result, got {other:?}"),
    }
}

fn err_kind(result: Result<OpResult, OpError>) -> (ErrorKind, String) {
    match result {
        Err(error) => (error.kind, error.message),
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

/// A process is gone once it no longer exists or is a zombie (dead, waiting for its parent).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            matches!(state, Some("Z" | "X"))
        }
    }
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn hello_exchange_then_ping_then_shutdown() {
    let mut hub = start().await;
    assert_eq!(hub.call(Op::Ping).await, Ok(OpResult::Pong));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_incompatible_hub_is_refused() {
    let mut hub = start_raw().await;
    hub.io
        .send(HubMessage::Hello(Hello {
            protocol: PROTOCOL_VERSION + 1,
            version: "9".into(),
        }))
        .await
        .unwrap();
    let result = tokio::time::timeout(STEP, hub.agent)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            result,
            Err(AgentError::Channel(ProtocolError::Incompatible { .. }))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_request_before_the_hello_is_refused() {
    let mut hub = start_raw().await;
    hub.send(1, Op::Ping).await;
    let result = tokio::time::timeout(STEP, hub.agent)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(result, Err(AgentError::Handshake(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn file_operations_round_trip() {
    let mut hub = start().await;
    let write = Op::FsWrite(lodge_protocol::FsWrite {
        path: "dir/a.txt".into(),
        content: "hello world\n".into(),
        create_dirs: true,
    });
    assert_eq!(hub.call(write).await, Ok(OpResult::Written { bytes: 12 }));
    assert_eq!(
        std::fs::read_to_string(hub.ws().join("dir/a.txt")).unwrap(),
        "hello world\n"
    );
    let read = Op::FsRead(lodge_protocol::FsRead {
        path: "dir/a.txt".into(),
        offset: 6,
        limit: 100,
    });
    assert_eq!(
        hub.call(read).await,
        Ok(OpResult::Read {
            content: "world\n".into(),
            offset: 6,
            next_offset: 12,
            total_size: 12,
            eof: true,
            lossy: false,
        })
    );
    let edit = Op::FsEdit(lodge_protocol::FsEdit {
        path: "dir/a.txt".into(),
        old: "world".into(),
        new: "room".into(),
        replace_all: false,
    });
    assert_eq!(
        hub.call(edit).await,
        Ok(OpResult::Edited { replacements: 1 })
    );
    let search = Op::FsSearch(lodge_protocol::FsSearch {
        path: "".into(),
        glob: None,
        text: Some("room".into()),
        limit: 10,
    });
    match hub.call(search).await {
        Ok(OpResult::Matches { matches, truncated }) => {
            assert!(!truncated);
            assert_eq!(matches.len(), 1);
            assert_eq!(matches[0].path, "dir/a.txt");
            assert_eq!(matches[0].line, Some(1));
        }
        other => panic!("{other:?}"),
    }
    let mkdir = Op::FsMkdir(lodge_protocol::FsMkdir {
        path: "other".into(),
        parents: false,
    });
    assert_eq!(hub.call(mkdir).await, Ok(OpResult::Done));
    let mv = Op::FsMove(lodge_protocol::FsMove {
        from: "dir/a.txt".into(),
        to: "other/b.txt".into(),
        overwrite: false,
    });
    assert_eq!(hub.call(mv).await, Ok(OpResult::Done));
    let list = Op::FsList(lodge_protocol::FsList {
        path: "".into(),
        recursive: true,
        limit: 100,
    });
    match hub.call(list).await {
        Ok(OpResult::Entries { entries, truncated }) => {
            assert!(!truncated);
            let b = entries
                .iter()
                .find(|e| e.path == "other/b.txt")
                .expect("moved file listed");
            assert_eq!(b.kind, lodge_protocol::EntryKind::File);
            assert_eq!(b.size, 11);
        }
        other => panic!("{other:?}"),
    }
    let delete = Op::FsDelete(lodge_protocol::FsDelete {
        path: "other".into(),
        recursive: true,
    });
    assert_eq!(hub.call(delete).await, Ok(OpResult::Done));
    assert!(!hub.ws().join("other").exists());
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bad_path_is_an_error_and_the_channel_survives() {
    let mut hub = start().await;
    for path in ["../escape", "/etc/passwd", "a/../../b"] {
        let read = Op::FsRead(lodge_protocol::FsRead {
            path: path.into(),
            offset: 0,
            limit: 10,
        });
        let (kind, _) = err_kind(hub.call(read).await);
        assert_eq!(kind, ErrorKind::InvalidPath, "{path}");
    }
    std::os::unix::fs::symlink("/etc", hub.ws().join("out")).unwrap();
    let read = Op::FsRead(lodge_protocol::FsRead {
        path: "out/passwd".into(),
        offset: 0,
        limit: 10,
    });
    assert_eq!(err_kind(hub.call(read).await).0, ErrorKind::InvalidPath);
    let missing = Op::FsRead(lodge_protocol::FsRead {
        path: "missing".into(),
        offset: 0,
        limit: 10,
    });
    assert_eq!(err_kind(hub.call(missing).await).0, ErrorKind::NotFound);
    assert_eq!(hub.call(Op::Ping).await, Ok(OpResult::Pong));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_requests_are_answered_by_id() {
    let mut hub = start().await;
    hub.send(10, cmd("sleep 1; echo slow", 10_000)).await;
    hub.send(
        11,
        Op::FsWrite(lodge_protocol::FsWrite {
            path: "f".into(),
            content: "x".into(),
            create_dirs: false,
        }),
    )
    .await;
    hub.send(12, Op::Ping).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let (id, result) = hub.response().await;
        match id {
            10 => assert_eq!(ran(result).stdout, "slow\n"),
            11 => assert_eq!(result, Ok(OpResult::Written { bytes: 1 })),
            12 => assert_eq!(result, Ok(OpResult::Pong)),
            other => panic!("unexpected id {other}"),
        }
        order.push(id);
    }
    assert_eq!(
        order.last(),
        Some(&10),
        "the slow command answers last: {order:?}"
    );
    order.sort_unstable();
    assert_eq!(order, [10, 11, 12], "exactly one response each");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_duplicate_running_id_is_refused() {
    let mut hub = start().await;
    hub.send(5, cmd("sleep 1", 10_000)).await;
    hub.send(5, Op::Ping).await;
    let (id, result) = hub.response().await;
    assert_eq!(id, 5);
    assert_eq!(err_kind(result).0, ErrorKind::InvalidArgument);
    let (id, result) = hub.response().await;
    assert_eq!(id, 5);
    assert_eq!(ran(result).exit_code, Some(0));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn command_exit_code_and_stdout() {
    let mut hub = start().await;
    let r = ran(hub.run("echo hello; exit 3", 10_000).await);
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.signal, None);
    assert_eq!(r.stdout, "hello\n");
    assert_eq!(r.stderr, "");
    assert!(!r.stdout_truncated && !r.stderr_truncated && !r.timed_out);
    assert!(r.duration_ms < 5_000, "{}", r.duration_ms);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn command_stderr_is_separate() {
    let mut hub = start().await;
    let r = ran(hub.run("echo out; echo err >&2; echo out2", 10_000).await);
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.stdout, "out\nout2\n");
    assert_eq!(r.stderr, "err\n");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_command_killed_by_a_signal_reports_it() {
    let mut hub = start().await;
    let r = ran(hub.run("kill -9 $$", 10_000).await);
    assert_eq!(r.exit_code, None);
    assert_eq!(r.signal, Some(9));
    assert!(!r.timed_out);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn commands_lead_their_own_session_and_are_first_for_the_oom_killer() {
    let mut hub = start().await;
    let r = ran(hub
        .run(
            "echo $$; cut -d' ' -f6 /proc/$$/stat; cat /proc/self/oom_score_adj",
            10_000,
        )
        .await);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{:?} {:?}", r.stdout, r.stderr);
    assert_eq!(lines[0], lines[1], "session id is the shell's pid");
    assert_eq!(lines[2], "1000");
    let me = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    assert_ne!(me.trim(), "1000", "the agent keeps its own score");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn output_over_the_cap_is_truncated_but_drained() {
    let mut hub = start().await;
    let op = Op::RunCommand(lodge_protocol::RunCommand {
        command: "yes | head -c 10000000; echo done >&2".into(),
        cwd: None,
        timeout_ms: 20_000,
        env: BTreeMap::new(),
        output_cap: 1000,
    });
    let started = Instant::now();
    let r = ran(hub.call(op).await);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!r.timed_out, "the writer must never block on a full pipe");
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.stdout.len(), 1000);
    assert!(r.stdout.starts_with("y\ny\n"));
    assert!(r.stdout_truncated);
    assert_eq!(r.stderr, "done\n");
    assert!(!r.stderr_truncated);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn cwd_must_stay_inside_the_workspace() {
    let mut hub = start().await;
    std::fs::create_dir(hub.ws().join("sub")).unwrap();
    std::os::unix::fs::symlink("/", hub.ws().join("root-link")).unwrap();
    std::os::unix::fs::symlink("sub", hub.ws().join("sub-link")).unwrap();
    for cwd in [
        "..",
        "../..",
        "/",
        "/tmp",
        "sub/../..",
        "root-link",
        "root-link/etc",
    ] {
        let op = Op::RunCommand(lodge_protocol::RunCommand {
            command: "pwd".into(),
            cwd: Some(cwd.into()),
            timeout_ms: 10_000,
            env: BTreeMap::new(),
            output_cap: 1000,
        });
        let (kind, message) = err_kind(hub.call(op).await);
        assert_eq!(kind, ErrorKind::InvalidPath, "{cwd}: {message}");
    }
    let ws = std::fs::canonicalize(hub.ws()).unwrap();
    for (cwd, want) in [
        (None, ws.clone()),
        (Some("sub"), ws.join("sub")),
        (Some("sub-link/"), ws.join("sub")),
        (Some("."), ws.clone()),
    ] {
        let op = Op::RunCommand(lodge_protocol::RunCommand {
            command: "pwd -P".into(),
            cwd: cwd.map(String::from),
            timeout_ms: 10_000,
            env: BTreeMap::new(),
            output_cap: 1000,
        });
        let r = ran(hub.call(op).await);
        assert_eq!(r.stdout.trim_end(), want.to_str().unwrap(), "{cwd:?}");
    }
    let op = Op::RunCommand(lodge_protocol::RunCommand {
        command: "pwd".into(),
        cwd: Some("missing".into()),
        timeout_ms: 10_000,
        env: BTreeMap::new(),
        output_cap: 1000,
    });
    assert_eq!(err_kind(hub.call(op).await).0, ErrorKind::NotFound);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn environment_is_clean_and_names_are_checked() {
    let mut hub = start().await;
    let op = Op::RunCommand(lodge_protocol::RunCommand {
        command: "echo $FOO; env | cut -d= -f1 | sort | tr '\\n' ' '".into(),
        cwd: None,
        timeout_ms: 10_000,
        env: BTreeMap::from([("FOO".into(), "bar baz".into())]),
        output_cap: 10_000,
    });
    let r = ran(hub.call(op).await);
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("bar baz"));
    let names: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    for name in &names {
        assert!(
            [
                "FOO", "HOME", "LANG", "PATH", "TMPDIR", "USER", "LOGNAME", "PWD", "OLDPWD"
            ]
            .contains(name),
            "unexpected variable {name} in {names:?}"
        );
    }
    for name in ["FOO", "HOME", "LANG", "PATH", "TMPDIR"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let r = ran(hub
        .run("echo $HOME; echo $TMPDIR; echo $PATH", 10_000)
        .await);
    let want = format!(
        "{}\n{}\n/usr/local/bin:/usr/bin:/bin\n",
        hub.ws().display(),
        hub.dir.path().join("tmp").display()
    );
    assert_eq!(r.stdout, want);

    let op = Op::RunCommand(lodge_protocol::RunCommand {
        command: "true".into(),
        cwd: None,
        timeout_ms: 10_000,
        env: BTreeMap::from([("BAD-NAME".into(), "sekrit-value".into())]),
        output_cap: 1000,
    });
    let (kind, message) = err_kind(hub.call(op).await);
    assert_eq!(kind, ErrorKind::InvalidArgument);
    assert!(message.contains("BAD-NAME"), "{message}");
    assert!(!message.contains("sekrit"), "value leaked: {message}");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn timeout_kills_a_command_that_ignores_sigterm() {
    let mut hub = start().await;
    let started = Instant::now();
    let r = ran(hub.run("trap '' TERM; sleep 30", 500).await);
    let took = started.elapsed();
    assert!(r.timed_out);
    assert_eq!(r.exit_code, None);
    assert_eq!(r.signal, Some(9));
    assert!(took < Duration::from_millis(1800), "took {took:?}");
    assert!(r.duration_ms >= 500, "{}", r.duration_ms);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn timeout_kills_a_grandchild_in_its_own_session() {
    let mut hub = start().await;
    // The grandchild leaves the session and the output pipes: only the parent link finds it.
    let command =
        "setsid sh -c 'echo $$ > gc.pid; exec sleep 30' >/dev/null 2>&1 </dev/null & wait";
    let started = Instant::now();
    let r = ran(hub.run(command, 700).await);
    assert!(r.timed_out);
    assert!(started.elapsed() < Duration::from_millis(2000));
    let pid = read_pid(&hub.ws().join("gc.pid"));
    assert!(gone(pid), "grandchild {pid} survived");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reparented_pipe_holder_is_killed() {
    let mut hub = start().await;
    // The subshell exits at once, so the grandchild is orphaned and in a new session: only the
    // output pipe it still holds ties it to the command.
    let command = "(setsid sh -c 'echo $$ > orphan.pid; exec sleep 30' &); \
                   until [ -s orphan.pid ]; do sleep 0.01; done; echo started";
    let started = Instant::now();
    let r = ran(hub.run(command, 10_000).await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!r.timed_out);
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.stdout, "started\n");
    let pid = read_pid(&hub.ws().join("orphan.pid"));
    assert!(gone(pid), "orphan {pid} survived");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn background_jobs_do_not_keep_a_command_open() {
    let mut hub = start().await;
    let started = Instant::now();
    let r = ran(hub
        .run("sleep 100 & echo $! > bg.pid; echo started", 60_000)
        .await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!r.timed_out);
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.stdout, "started\n");
    let pid = read_pid(&hub.ws().join("bg.pid"));
    assert!(gone(pid), "background job {pid} survived");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn long_commands_report_progress() {
    let mut hub = start().await;
    hub.send(3, cmd("sleep 1.3", 10_000)).await;
    let mut progress = Vec::new();
    let result = loop {
        match next(&mut hub.io).await {
            AgentMessage::Progress {
                id,
                message,
                progress: p,
                total,
            } => {
                assert_eq!(id, 3);
                progress.push((message, p, total));
            }
            AgentMessage::Response { id, result } => {
                assert_eq!(id, 3);
                break result;
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(ran(result).exit_code, Some(0));
    let (message, p, total) = progress.first().expect("no progress sent");
    assert_eq!(message, "running for 1s, 0 bytes of output");
    assert_eq!(*p, Some(1.0));
    assert_eq!(*total, Some(10.0));
    hub.shutdown().await.unwrap();
}

fn exec(argv: &[&str], timeout_ms: u64) -> Op {
    Op::Exec(lodge_protocol::Exec {
        argv: argv.iter().map(|arg| arg.to_string()).collect(),
        cwd: None,
        env: BTreeMap::new(),
        timeout_ms,
        output_cap: 64 * 1024,
    })
}

#[tokio::test]
async fn exec_passes_argv_verbatim_without_a_shell() {
    let mut hub = start().await;
    let tricky = [
        "two words",
        "it's \"quoted\"",
        "a; touch pwned",
        "$HOME `id` $(id)",
        "*",
        "",
        "back\\slash\nnewline",
    ];
    let mut argv = vec!["printf", "[%s]\n"];
    argv.extend(tricky);
    let r = ran(hub.call(exec(&argv, 10_000)).await);
    let want: String = tricky.iter().map(|arg| format!("[{arg}]\n")).collect();
    assert_eq!(r.stdout, want);
    assert_eq!(r.exit_code, Some(0));
    assert!(!hub.ws().join("pwned").exists(), "a shell ran the argument");

    // The environment is the clean base plus the request's own, as for run_command.
    let op = Op::Exec(lodge_protocol::Exec {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo \"$TOKEN|$HOME\"".into(),
        ],
        cwd: None,
        env: BTreeMap::from([("TOKEN".into(), "t o k".into())]),
        timeout_ms: 10_000,
        output_cap: 1000,
    });
    let r = ran(hub.call(op).await);
    assert_eq!(r.stdout, format!("t o k|{}\n", hub.ws().display()));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn exec_names_a_missing_program_and_refuses_an_empty_argv() {
    let mut hub = start().await;
    let (kind, message) = err_kind(hub.call(exec(&["no-such-program-x", "arg"], 10_000)).await);
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(message.contains("no-such-program-x"), "{message}");
    let (kind, message) = err_kind(hub.call(exec(&["/no/such/dir/prog"], 10_000)).await);
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(message.contains("/no/such/dir/prog"), "{message}");

    let (kind, message) = err_kind(hub.call(exec(&[], 10_000)).await);
    assert_eq!(kind, ErrorKind::InvalidArgument);
    assert!(message.contains("empty"), "{message}");
    let (kind, _) = err_kind(hub.call(exec(&["echo", "a\0b"], 10_000)).await);
    assert_eq!(kind, ErrorKind::InvalidArgument);
    assert_eq!(hub.call(Op::Ping).await, Ok(OpResult::Pong));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn exec_times_out_and_is_killed() {
    let mut hub = start().await;
    let started = Instant::now();
    let r = ran(hub.call(exec(&["sleep", "30"], 300)).await);
    assert!(r.timed_out);
    assert_eq!(r.exit_code, None);
    assert!(
        r.signal.is_some(),
        "killed, so it has no exit code but a signal"
    );
    assert!(started.elapsed() < Duration::from_millis(1800));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_kills_a_running_command() {
    let mut hub = start().await;
    hub.send(7, cmd("echo $$ > root.pid; exec sleep 30", 60_000))
        .await;
    let pid_file = hub.ws().join("root.pid");
    let waited = Instant::now();
    while !pid_file.exists() || std::fs::read_to_string(&pid_file).unwrap().is_empty() {
        assert!(waited.elapsed() < STEP, "command never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pid = read_pid(&pid_file);
    let started = Instant::now();
    hub.io.send(HubMessage::Cancel { id: 7 }).await.unwrap();
    let (id, result) = hub.response().await;
    assert_eq!(id, 7);
    assert_eq!(err_kind(result).0, ErrorKind::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(gone(pid), "command {pid} survived the cancel");
    // Cancelling something already finished is harmless.
    hub.io.send(HubMessage::Cancel { id: 7 }).await.unwrap();
    assert_eq!(hub.call(Op::Ping).await, Ok(OpResult::Pong));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_cancels_running_commands_and_exits() {
    let mut hub = start().await;
    hub.send(9, cmd("sleep 30", 60_000)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    hub.io.send(HubMessage::Shutdown).await.unwrap();
    let started = Instant::now();
    let (id, result) = hub.response().await;
    assert_eq!(id, 9);
    assert_eq!(err_kind(result).0, ErrorKind::Cancelled);
    // The writer closes the channel once everything is flushed.
    let end = tokio::time::timeout(STEP, hub.io.next()).await.unwrap();
    assert!(end.is_none(), "{end:?}");
    let result = tokio::time::timeout(STEP, hub.agent)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn end_of_input_stops_the_agent_cleanly() {
    let hub = start().await;
    let Hub {
        io,
        agent,
        dir: _dir,
    } = hub;
    let mut stream = io.into_inner();
    stream.shutdown().await.unwrap();
    let result = tokio::time::timeout(STEP, agent).await.unwrap().unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_malformed_frame_stops_the_agent_with_an_error() {
    let hub = start().await;
    let Hub {
        io,
        agent,
        dir: _dir,
    } = hub;
    let mut stream = io.into_inner();
    let body = b"{\"type\":\"launch\"}";
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(body).await.unwrap();
    let result = tokio::time::timeout(STEP, agent).await.unwrap().unwrap();
    assert!(
        matches!(
            result,
            Err(AgentError::Channel(ProtocolError::Malformed { .. }))
        ),
        "{result:?}"
    );
}

/// Set in the re-executed test binary: run `agent::main` on this directory.
const MAIN_ENV: &str = "LODGE_TEST_AGENT_MAIN_DIR";
const MAIN_TEST: &str = "tests::main_serves_stdio_confined_and_reaps_orphans";

/// The production entry end to end, in a child process: confinement, child subreaper (orphans
/// are reaped by the agent itself, not left as zombies), stdio pipes, exit code.
#[test]
fn main_serves_stdio_confined_and_reaps_orphans() {
    if let Some(dir) = std::env::var_os(MAIN_ENV) {
        let dir = PathBuf::from(dir);
        let code = super::main(AgentConfig {
            workspace: dir.join("ws"),
            tmp: dir.join("tmp"),
            confine: true,
            network: false,
            read_only: Vec::new(),
        });
        assert_eq!(code, std::process::ExitCode::SUCCESS);
        return;
    }
    let base = tempfile::tempdir().unwrap();
    for sub in ["ws", "tmp", "outside"] {
        std::fs::create_dir(base.path().join(sub)).unwrap();
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([MAIN_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(MAIN_ENV, base.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let stdin = child.stdin.take().unwrap();
    skip_test_header(&mut stdout);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(drive_main(base.path(), stdout, stdin));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agent process failed: {stderr}");
    assert!(
        stderr.contains("confinement: landlock fully enforced"),
        "{stderr}"
    );
}

/// With one test thread, libtest prints "test NAME ... " on stdout before the test runs; the
/// frames follow.
fn skip_test_header(stdout: &mut std::process::ChildStdout) {
    use std::io::Read;
    let marker = format!("test {MAIN_TEST} ... ");
    let marker = marker.as_bytes();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(marker) {
        assert_eq!(stdout.read(&mut byte).unwrap(), 1, "no test header");
        seen.push(byte[0]);
    }
}

async fn drive_main(
    base: &Path,
    stdout: std::process::ChildStdout,
    stdin: std::process::ChildStdin,
) {
    use tokio::io::AsyncReadExt;
    use tokio::net::unix::pipe;
    use tokio_util::codec::{FramedRead, FramedWrite};

    let reader = pipe::Receiver::from_owned_fd(stdout.into()).unwrap();
    let writer = pipe::Sender::from_owned_fd(stdin.into()).unwrap();
    let mut rx = FramedRead::new(reader, HubCodec::new());
    let mut tx = FramedWrite::new(writer, HubCodec::new());
    let mut recv = async || loop {
        let message = tokio::time::timeout(STEP, rx.next())
            .await
            .expect("agent silent")
            .expect("channel closed")
            .expect("bad frame");
        if !matches!(message, AgentMessage::Progress { .. }) {
            return message;
        }
    };
    assert!(matches!(recv().await, AgentMessage::Hello(_)));
    tx.send(HubMessage::Hello(Hello::current("test")))
        .await
        .unwrap();

    // An orphan in its own session that still holds the output pipe: killed, then reaped by
    // the agent (its subreaper), so it does not even linger as a zombie.
    let command = "(setsid sh -c 'echo $$ > orphan.pid; exec sleep 30' &); \
                   until [ -s orphan.pid ]; do sleep 0.01; done; echo started";
    tx.send(HubMessage::Request {
        id: 1,
        op: cmd(command, 10_000),
    })
    .await
    .unwrap();
    let AgentMessage::Response { id: 1, result } = recv().await else {
        panic!("expected the response")
    };
    assert_eq!(ran(result).stdout, "started\n");
    let pid = read_pid(&base.join("ws/orphan.pid"));
    let waited = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(waited.elapsed() < STEP, "orphan {pid} was not reaped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Commands inherit the confinement.
    let command =
        "echo x > ../outside/f; echo $?; cat ../outside/../ws/orphan.pid >/dev/null; echo $?";
    tx.send(HubMessage::Request {
        id: 2,
        op: cmd(command, 10_000),
    })
    .await
    .unwrap();
    let AgentMessage::Response { id: 2, result } = recv().await else {
        panic!("expected the response")
    };
    let r = ran(result);
    assert_eq!(r.stdout, "2\n0\n", "stderr: {}", r.stderr);
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    assert!(!base.join("outside/f").exists());

    tx.send(HubMessage::Shutdown).await.unwrap();
    // Drain whatever follows (libtest's own report) until the process exits.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, rx.into_inner().read_to_end(&mut rest)).await;
}

// ---------------------------------------------------------------------------------------------
// Upstream servers
// ---------------------------------------------------------------------------------------------

/// Echoes each stdin line back on stdout.
const ECHO: &str = r#"while IFS= read -r l; do printf '%s\n' "$l"; done"#;

fn upstream(server: &str, script: &str, env: &[(&str, &str)]) -> Op {
    Op::Upstream(lodge_protocol::Upstream {
        server: server.into(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect(),
    })
}

/// What an upstream request sent until its answer.
#[derive(Debug, Default)]
struct Relayed {
    messages: Vec<serde_json::Value>,
    stderr: Vec<String>,
}

impl Hub {
    async fn input(&mut self, id: u64, message: serde_json::Value) {
        self.io
            .send(HubMessage::Input { id, message })
            .await
            .unwrap();
    }

    /// Messages and stderr lines of request `id` until its answer.
    async fn relayed(&mut self, want: u64) -> (Relayed, Result<OpResult, OpError>) {
        let mut relayed = Relayed::default();
        loop {
            match next(&mut self.io).await {
                AgentMessage::Message { id, message } if id == want => {
                    relayed.messages.push(message)
                }
                AgentMessage::Output {
                    id,
                    stream: lodge_protocol::Stream::Stderr,
                    data,
                } if id == want => relayed.stderr.push(data),
                AgentMessage::Response { id, result } if id == want => return (relayed, result),
                AgentMessage::Log { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Waits until the server wrote `name` in the workspace, and returns the pid in it.
    async fn pid_file(&self, name: &str) -> i32 {
        let path = self.ws().join(name);
        let waited = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&path)
                && text.ends_with('\n')
            {
                return text.trim().parse().unwrap();
            }
            assert!(waited.elapsed() < STEP, "{name} never written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn upstream_relays_inputs_to_stdin_and_stdout_lines_back_in_order() {
    let mut hub = start().await;
    hub.send(1, upstream("echo", ECHO, &[])).await;
    // Sent right behind the request: the input queue exists before the request task runs.
    let sent: Vec<serde_json::Value> = (0..50)
        .map(|i| serde_json::json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"s":"é \" \\ \n"}}))
        .collect();
    for message in &sent {
        hub.input(1, message.clone()).await;
    }
    // An input for nothing that runs is ignored.
    hub.input(99, serde_json::json!({})).await;
    let mut got = Vec::new();
    while got.len() < sent.len() {
        match next(&mut hub.io).await {
            AgentMessage::Message { id: 1, message } => got.push(message),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, sent);
    // A big message (7 MiB, under the 8 MiB line limit) makes it both ways.
    let big = serde_json::json!({"jsonrpc":"2.0","id":"big","result":"x".repeat(7 << 20)});
    hub.input(1, big.clone()).await;
    match next(&mut hub.io).await {
        AgentMessage::Message { id: 1, message } => assert!(message == big, "big message mangled"),
        other => panic!("unexpected {other:?}"),
    }
    hub.io.send(HubMessage::Cancel { id: 1 }).await.unwrap();
    let (relayed, result) = hub.relayed(1).await;
    assert!(relayed.messages.is_empty(), "{relayed:?}");
    assert_eq!(err_kind(result).0, ErrorKind::Cancelled);
    assert_eq!(hub.call(Op::Ping).await, Ok(OpResult::Pong));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn upstream_gets_the_workspace_its_env_and_a_clean_session() {
    let mut hub = start().await;
    std::fs::create_dir(hub.ws().join("sub")).unwrap();
    let script = r#"cd "$1" && printf '{"cwd":"%s","pwd0":"%s","v":"%s","home":"%s","pid":%s,"sid":%s,"oom":%s,"names":"%s"}\n' \
        "$PWD" "$OLDPWD" "$X" "$HOME" $$ "$(cut -d' ' -f6 /proc/$$/stat)" \
        "$(cat /proc/self/oom_score_adj)" "$(env | cut -d= -f1 | sort | tr '\n' ' ')""#;
    let op = Op::Upstream(lodge_protocol::Upstream {
        server: "probe".into(),
        // A program without '/' is looked up in the room's PATH.
        argv: vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "sh".into(),
            "{workspace}/sub".into(),
        ],
        env: BTreeMap::from([("X".into(), "at {workspace}/x".into())]),
    });
    hub.send(2, op).await;
    let (relayed, result) = hub.relayed(2).await;
    assert_eq!(
        result,
        Ok(OpResult::Exited {
            code: Some(0),
            signal: None
        })
    );
    let [message] = &relayed.messages[..] else {
        panic!("{relayed:?}")
    };
    let ws = hub.ws().display().to_string();
    let ws_real = std::fs::canonicalize(hub.ws())
        .unwrap()
        .display()
        .to_string();
    assert_eq!(message["cwd"], format!("{ws_real}/sub"));
    assert_eq!(message["pwd0"], ws_real, "started in the workspace");
    assert_eq!(message["v"], format!("at {ws}/x"));
    assert_eq!(message["home"], ws);
    assert_eq!(message["pid"], message["sid"], "leads its own session");
    assert_eq!(message["oom"], 1000);
    let names = message["names"].as_str().unwrap();
    for name in names.split_whitespace() {
        assert!(
            [
                "X", "HOME", "LANG", "PATH", "TMPDIR", "USER", "LOGNAME", "PWD", "OLDPWD", "SHLVL",
                "_"
            ]
            .contains(&name),
            "unexpected variable {name} in {names}"
        );
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn upstream_requests_are_checked_before_anything_runs() {
    let mut hub = start().await;
    let empty = Op::Upstream(lodge_protocol::Upstream {
        server: "nothing".into(),
        argv: Vec::new(),
        env: BTreeMap::new(),
    });
    let (kind, message) = err_kind(hub.call(empty).await);
    assert_eq!(kind, ErrorKind::InvalidArgument);
    assert!(message.contains("server nothing"), "{message}");

    let bad_env = upstream("gh", "true", &[("BAD-NAME", "sekrit-value")]);
    let (kind, message) = err_kind(hub.call(bad_env).await);
    assert_eq!(kind, ErrorKind::InvalidArgument);
    assert!(
        message.contains("server gh") && message.contains("BAD-NAME"),
        "{message}"
    );
    assert!(!message.contains("sekrit"), "value leaked: {message}");

    let missing = Op::Upstream(lodge_protocol::Upstream {
        server: "ghost".into(),
        argv: vec!["no-such-mcp-server-binary".into()],
        env: BTreeMap::new(),
    });
    let (kind, message) = err_kind(hub.call(missing).await);
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(
        message.contains("server ghost") && message.contains("no-such-mcp-server-binary"),
        "{message}"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn upstream_printing_non_json_is_stopped_with_a_protocol_error() {
    let mut hub = start().await;
    // A child in the same session, and the root; both must be gone afterwards.
    let script = "sleep 30 & echo $! > child.pid; echo $$ > root.pid; \
                  echo '{\"jsonrpc\":\"2.0\",\"method\":\"ok\"}'; echo 42; \
                  echo 'Server running on stdio'; exec sleep 30";
    hub.send(3, upstream("chatty", script, &[])).await;
    let (relayed, result) = hub.relayed(3).await;
    let (kind, message) = err_kind(result);
    assert_eq!(kind, ErrorKind::Protocol);
    assert!(
        message.starts_with(
            "server chatty printed something that is not JSON-RPC on stdout: «42»; MCP servers \
             must write only JSON-RPC messages to stdout (logs belong on stderr)"
        ),
        "{message}"
    );
    assert_eq!(
        relayed.messages,
        [serde_json::json!({"jsonrpc":"2.0","method":"ok"})]
    );
    for name in ["root.pid", "child.pid"] {
        let pid = hub.pid_file(name).await;
        assert!(gone(pid), "{name} {pid} survived");
    }

    let script = "echo $$ > root.pid; echo 'Listening…'; exec sleep 30";
    std::fs::remove_file(hub.ws().join("root.pid")).unwrap();
    hub.send(4, upstream("chatty", script, &[])).await;
    let (_, result) = hub.relayed(4).await;
    let (kind, message) = err_kind(result);
    assert_eq!(kind, ErrorKind::Protocol);
    assert!(message.contains("«Listening…»"), "{message}");
    let pid = hub.pid_file("root.pid").await;
    assert!(gone(pid), "server {pid} survived");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn upstream_line_over_8_mib_is_too_large_and_the_server_is_stopped() {
    let mut hub = start().await;
    let script = "echo $$ > root.pid; head -c 9000000 /dev/zero | tr '\\0' a; exec sleep 30";
    let started = Instant::now();
    hub.send(5, upstream("flood", script, &[])).await;
    let (relayed, result) = hub.relayed(5).await;
    assert!(relayed.messages.is_empty());
    let (kind, message) = err_kind(result);
    assert_eq!(kind, ErrorKind::TooLarge);
    assert_eq!(
        message,
        "server flood wrote a message of more than 8 MiB on stdout; it was stopped"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid = hub.pid_file("root.pid").await;
    assert!(gone(pid), "server {pid} survived");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn upstream_exit_is_answered_after_its_last_messages() {
    let mut hub = start().await;
    let script = "read -r request; for i in 1 2 3; do echo \"{\\\"n\\\":$i}\"; done; \
                  echo 'Traceback: boom' >&2; exit 3";
    hub.send(6, upstream("crashy", script, &[])).await;
    hub.input(
        6,
        serde_json::json!({"jsonrpc":"2.0","id":1,"method":"initialize"}),
    )
    .await;
    let (relayed, result) = hub.relayed(6).await;
    assert_eq!(
        result,
        Ok(OpResult::Exited {
            code: Some(3),
            signal: None
        })
    );
    let want: Vec<serde_json::Value> = (1..=3).map(|n| serde_json::json!({"n": n})).collect();
    assert_eq!(relayed.messages, want);
    assert_eq!(relayed.stderr, ["Traceback: boom"]);

    hub.send(7, upstream("killed", "kill -9 $$", &[])).await;
    let (_, result) = hub.relayed(7).await;
    assert_eq!(
        result,
        Ok(OpResult::Exited {
            code: None,
            signal: Some(9)
        })
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_kills_an_upstream_server_and_its_children() {
    let mut hub = start().await;
    // The child ignores SIGTERM: only SIGKILL after the grace ends it.
    let script = "sh -c 'trap \"\" TERM; echo $$ > child.pid; exec sleep 30' & \
                  echo $$ > root.pid; wait";
    hub.send(8, upstream("stuck", script, &[])).await;
    let root = hub.pid_file("root.pid").await;
    let child = hub.pid_file("child.pid").await;
    let started = Instant::now();
    hub.io.send(HubMessage::Cancel { id: 8 }).await.unwrap();
    let (_, result) = hub.relayed(8).await;
    let (kind, message) = err_kind(result);
    assert_eq!(kind, ErrorKind::Cancelled);
    assert!(message.contains("server stuck"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(gone(root), "server {root} survived");
    assert!(gone(child), "child {child} survived");
    // Its id is free again and inputs for it are ignored.
    hub.input(8, serde_json::json!({})).await;
    assert_eq!(hub.call(Op::Ping).await, Ok(OpResult::Pong));
    hub.shutdown().await.unwrap();
}

/// A `RoomClient` connected to a real agent over an in-memory pipe.
async fn client() -> (lodge_room::client::RoomClient, tempfile::TempDir) {
    let (hub_end, _agent, dir) = spawn_agent();
    let (reader, writer) = tokio::io::split(hub_end);
    let (client, _) = lodge_room::client::RoomClient::connect(reader, writer, STEP)
        .await
        .unwrap();
    (client, dir)
}

async fn event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<lodge_room::client::Event>,
) -> lodge_room::client::Event {
    tokio::time::timeout(STEP, events.recv())
        .await
        .expect("no event")
        .expect("events closed")
}

#[tokio::test]
async fn a_relay_carries_messages_and_stderr_and_reports_the_exit() {
    use lodge_protocol::Stream;
    use lodge_room::client::Event;

    let (client, _dir) = client().await;
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let script = "echo 'starting up' >&2; read -r l; printf '%s\\n' \"$l\"; echo bye >&2";
    let mut relay = client.open(upstream("once", script, &[]), tx).unwrap();
    assert_eq!(
        event(&mut events).await,
        Event::Output {
            stream: Stream::Stderr,
            data: "starting up".into()
        }
    );
    let ping = serde_json::json!({"jsonrpc":"2.0","id":1,"method":"ping"});
    relay.input().send(ping.clone()).unwrap();
    assert_eq!(event(&mut events).await, Event::Message(ping));
    let done = tokio::time::timeout(STEP, relay.finished()).await.unwrap();
    let exited = OpResult::Exited {
        code: Some(0),
        signal: None,
    };
    assert_eq!(done.unwrap(), exited);
    // Stderr written before the exit arrived before the answer.
    assert_eq!(
        events.try_recv().ok(),
        Some(Event::Output {
            stream: Stream::Stderr,
            data: "bye".into()
        })
    );
    // The answer can be asked for again; input after the end is refused.
    assert_eq!(relay.finished().await.unwrap(), exited);
    assert!(relay.input().send(serde_json::json!({})).is_err());
    assert_eq!(client.in_flight(), 0);
}

#[tokio::test]
async fn dropping_a_relay_kills_its_server() {
    let (client, dir) = client().await;
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let script =
        "sleep 30 & echo $! > child.pid; echo $$ > root.pid; echo '{\"ready\":true}'; wait";
    let mut relay = client.open(upstream("dropped", script, &[]), tx).unwrap();
    assert_eq!(
        event(&mut events).await,
        lodge_room::client::Event::Message(serde_json::json!({"ready": true}))
    );
    // finished() is cancel-safe: give up waiting a few times, then drop the relay.
    for _ in 0..3 {
        tokio::select! {
            r = relay.finished() => panic!("finished early: {r:?}"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let input = relay.input();
    let pids: Vec<i32> = ["root.pid", "child.pid"]
        .iter()
        .map(|name| read_pid(&dir.path().join("ws").join(name)))
        .collect();
    drop(relay);
    assert!(input.send(serde_json::json!({})).is_err());
    let waited = Instant::now();
    while !pids.iter().all(|pid| gone(*pid)) {
        assert!(
            waited.elapsed() < STEP,
            "server processes {pids:?} survived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.call(Op::Ping, None).await.unwrap(), OpResult::Pong);
}

// ---------------------------------------------------------------------------------------------
// Jupyter requests (no real kernel here: the notebook tests of the lodge crate run ipykernel)

fn jupyter(request: lodge_kernel::ops::JupyterOp) -> Op {
    Op::Jupyter(lodge_protocol::Jupyter {
        settings: lodge_kernel::ops::KernelSettings {
            default: "fake".into(),
            ..Default::default()
        },
        request,
    })
}

fn jupyter_result(result: Result<OpResult, OpError>) -> lodge_kernel::ops::JupyterResult {
    match result {
        Ok(OpResult::Jupyter { result }) => result,
        other => panic!("expected a Jupyter result, got {other:?}"),
    }
}

/// A kernelspec in the user's own Jupyter dir whose "kernel" exits at once.
fn fake_kernelspec(ws: &Path) {
    let dir = ws.join(".local/share/jupyter/kernels/fake");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = r#"{"argv": ["/bin/sh", "-c", "echo no kernel here >&2; exit 7", "{connection_file}"],
        "display_name": "Fake", "language": "python"}"#;
    std::fs::write(dir.join("kernel.json"), spec).unwrap();
}

#[tokio::test]
async fn notebook_edits_check_revisions_and_cell_kinds() {
    use lodge_kernel::notebook::{CellRef, CellType};
    use lodge_kernel::ops::{JupyterOp, JupyterResult};
    let mut hub = start().await;
    fake_kernelspec(&hub.ws());
    let created = jupyter_result(
        hub.call(jupyter(JupyterOp::NotebookCreate {
            path: "n.ipynb".into(),
            kernel: None,
            overwrite: false,
        }))
        .await,
    );
    let JupyterResult::Changed { revision, .. } = created else {
        panic!("{created:?}")
    };
    let inserted = jupyter_result(
        hub.call(jupyter(JupyterOp::CellInsert {
            path: "n.ipynb".into(),
            index: None,
            cell_type: CellType::Markdown,
            source: "# notes".into(),
            revision: Some(revision.clone()),
        }))
        .await,
    );
    assert!(matches!(
        inserted,
        JupyterResult::Changed {
            cells: 1,
            index: Some(0),
            ..
        }
    ));

    // The revision of before the insert is stale now.
    let stale = hub
        .call(jupyter(JupyterOp::CellDelete {
            path: "n.ipynb".into(),
            cell: CellRef::Index(0),
            revision: Some(revision),
        }))
        .await;
    let (kind, message) = err_kind(stale);
    assert_eq!(kind, ErrorKind::Conflict, "{message}");
    assert!(message.contains("changed since revision"), "{message}");

    let markdown = hub
        .call(jupyter(JupyterOp::CellExecute {
            path: "n.ipynb".into(),
            cell: CellRef::Index(-1),
            timeout_ms: 1000,
            output_cap: 1000,
            revision: None,
        }))
        .await;
    let (kind, message) = err_kind(markdown);
    assert_eq!(kind, ErrorKind::InvalidArgument, "{message}");
    assert!(message.contains("not a code cell"), "{message}");

    std::fs::write(hub.ws().join("broken.ipynb"), "{\"cells\": [").unwrap();
    let (kind, message) = err_kind(
        hub.call(jupyter(JupyterOp::NotebookRead {
            path: "broken.ipynb".into(),
            compact: None,
            start: None,
            end: None,
        }))
        .await,
    );
    assert_eq!(kind, ErrorKind::InvalidArgument, "{message}");
    assert!(message.contains("broken.ipynb"), "{message}");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn kernels_that_cannot_start_or_do_not_exist_are_named() {
    use lodge_kernel::ops::JupyterOp;
    let mut hub = start().await;
    fake_kernelspec(&hub.ws());
    let code = |kernel: &str, kernel_name: Option<&str>| {
        jupyter(JupyterOp::CodeExecute {
            code: "1".into(),
            kernel: Some(kernel.into()),
            kernel_name: kernel_name.map(str::to_string),
            timeout_ms: 5000,
            output_cap: 1000,
        })
    };
    let (kind, message) = err_kind(hub.call(code("scratch", None)).await);
    assert_eq!(kind, ErrorKind::Kernel, "{message}");
    assert!(message.contains("exited with code 7"), "{message}");
    assert!(
        message.contains("no kernel here"),
        "the stderr tail is missing: {message}"
    );

    let (kind, message) = err_kind(hub.call(code("scratch", Some("nope"))).await);
    assert_eq!(kind, ErrorKind::Kernel, "{message}");
    assert!(
        message.contains("nope") && message.contains("fake"),
        "{message}"
    );

    let (kind, message) = err_kind(hub.call(code("../up", None)).await);
    assert_eq!(kind, ErrorKind::InvalidArgument, "{message}");

    let (kind, message) = err_kind(
        hub.call(jupyter(JupyterOp::KernelInterrupt {
            kernel: "ghost".into(),
        }))
        .await,
    );
    assert_eq!(kind, ErrorKind::NotFound, "{message}");
    assert!(message.contains("ghost"), "{message}");
    // Nothing of the failed starts is left running or on disk.
    let left = std::fs::read_dir(hub.dir.path().join("tmp/lodge-kernels"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "socket dirs left behind");
    hub.shutdown().await.unwrap();
}
