//! The room's running kernels: started from a kernelspec through the agent's reaper (clean
//! environment, own session, IPC sockets in the room's private /tmp with a fresh HMAC key),
//! one execution at a time each, interrupted at a timeout, culled when idle, killed with their
//! whole process tree. It never logs code or outputs.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lodge_core::flight::Flights;
use lodge_kernel::client::{self, Control, KernelClient, ReplyStatus};
use lodge_kernel::ops::{KernelInfo, KernelSettings, Run, RunStatus};
use lodge_kernel::output::Collector;
use lodge_kernel::spec::{InterruptMode, KernelSpec};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::super::command::CommandContext;
use super::super::tree::{self, Target};
use lodge_protocol::{ErrorKind, OpError};

/// How long a kernel gets to stop running after an interrupt before it is declared stuck.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);
/// How long a dead kernel's stderr may take to reach its end.
const STDERR_DRAIN: Duration = Duration::from_millis(250);

/// How much of a kernel's stderr is kept for the message when it dies.
const STDERR_TAIL: usize = 2048;

/// One kernel process and the client talking to it.
pub(crate) struct Kernel {
    pub id: String,
    pub spec: KernelSpec,
    pid: i32,
    pipes: Vec<u64>,
    /// Held for the whole of an execution: a kernel runs one thing at a time.
    client: tokio::sync::Mutex<KernelClient>,
    control: tokio::sync::Mutex<Control>,
    /// Becomes `Some(reason)` when the process has exited.
    exited: watch::Receiver<Option<String>>,
    busy: AtomicBool,
    last_used: Mutex<Instant>,
    execution_count: AtomicI64,
    /// The connection file's directory, removed when the kernel stops.
    dir: PathBuf,
}

/// Where a kernel starts: its id, spec and working directory.
pub(crate) struct Launch<'a> {
    pub id: &'a str,
    pub spec: &'a KernelSpec,
    /// Workspace-relative directory the kernel starts in.
    pub cwd: &'a str,
}

impl Kernel {
    /// Starts the kernel and waits until it answers.
    pub(crate) async fn start(
        ctx: &CommandContext,
        tmp: &Path,
        launch: Launch<'_>,
        settings: &KernelSettings,
    ) -> Result<Arc<Kernel>, OpError> {
        let failed = |why: String| {
            OpError::new(
                ErrorKind::Kernel,
                format!(
                    "cannot start kernel {:?} ({}): {why}",
                    launch.id, launch.spec.name
                ),
            )
        };
        let dir =
            private_dir(tmp).map_err(|e| failed(format!("cannot make its socket dir: {e}")))?;
        let key = random_hex().map_err(|e| failed(format!("no randomness: {e}")))?;
        let prefix = dir.join("kernel");
        let info = client::ipc_connection(&prefix.to_string_lossy(), &key, &launch.spec.name);
        let file = dir.join("connection.json");
        let json = serde_json::to_vec(&info)
            .map_err(|e| failed(format!("cannot encode its connection file: {e}")))?;
        write_private(&file, &json)
            .map_err(|e| failed(format!("cannot write its connection file: {e}")))?;

        let argv = launch.spec.launch_argv(&file);
        let Some((program, args)) = argv.split_first() else {
            return Err(failed("its kernelspec has an empty argv".to_string()));
        };
        let cwd = super::super::command::open_cwd(ctx.root(), Some(launch.cwd))?;
        let mut cmd = ctx.child(program, cwd);
        cmd.args(args)
            .envs(&launch.spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let (mut child, exit) = ctx
            .reaper()
            .spawn(&mut cmd)
            .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
        drop(cmd);
        let pid = child.id() as i32;
        let stderr = child.stderr.take().map(std::os::fd::OwnedFd::from);
        let pipes = stderr
            .as_ref()
            .and_then(|fd| rustix::fs::fstat(fd).ok())
            .map(|st| vec![st.st_ino])
            .unwrap_or_default();
        let tail = Arc::new(Mutex::new(String::new()));
        let drained = stderr
            .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok())
            .map(|stderr| tokio::spawn(keep_tail(stderr, tail.clone())));
        let (tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let status = exit.await;
            // The exit can be seen before the last stderr bytes are read;
            // wait a moment for the pipe's end so the reason quotes them. A
            // grandchild holding the pipe open must not delay the report.
            if let Some(drained) = drained {
                let _ = tokio::time::timeout(STDERR_DRAIN, drained).await;
            }
            let reason = match status {
                Ok(exit) => match (exit.code, exit.signal) {
                    (Some(code), _) => format!("it exited with code {code}"),
                    (_, Some(signal)) => format!("it was killed by signal {signal}"),
                    _ => "it exited".to_string(),
                },
                Err(_) => "the agent stopped".to_string(),
            };
            let tail = lock(&tail).trim().to_string();
            let reason = if tail.is_empty() {
                reason
            } else {
                format!("{reason}; its last stderr: {tail}")
            };
            let _ = tx.send(Some(reason));
        });
        let kill = Target {
            root: pid,
            pipes: pipes.clone(),
        };
        let within = Duration::from_millis(settings.start_timeout_ms);
        let ready = async {
            let (mut client, control) = client::connect(&info).await?;
            client.wait_ready(within).await?;
            Ok::<_, lodge_kernel::KernelError>((client, control))
        };
        let mut dead = exited.clone();
        let outcome = tokio::select! {
            ready = ready => ready.map_err(|e| e.to_string()),
            reason = wait_exit(&mut dead) => Err(reason),
        };
        let (client, control) = match outcome {
            Ok(pair) => pair,
            Err(why) => {
                tree::kill_tree(&kill).await;
                ctx.reaper().reap_now();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(failed(why));
            }
        };
        tracing::debug!(kernel = %launch.id, spec = %launch.spec.name, pid, "kernel started");
        Ok(Arc::new(Kernel {
            id: launch.id.to_string(),
            spec: launch.spec.clone(),
            pid,
            pipes,
            client: tokio::sync::Mutex::new(client),
            control: tokio::sync::Mutex::new(control),
            exited,
            busy: AtomicBool::new(false),
            last_used: Mutex::new(Instant::now()),
            execution_count: AtomicI64::new(0),
            dir,
        }))
    }

    /// Why the process is gone, if it is.
    pub(crate) fn dead(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    pub(crate) fn idle_for(&self) -> Duration {
        lock(&self.last_used).elapsed()
    }

    /// Marks the kernel used now (a call that was just handed it is about to run).
    pub(crate) fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    /// Runs `code`, interrupting the kernel at `timeout` or when `cancel` fires; a kernel that
    /// ignores the interrupt is stopped (it is stuck) and the run says so.
    pub(crate) async fn run(
        &self,
        code: &str,
        timeout: Duration,
        output_cap: usize,
        cancel: &CancellationToken,
    ) -> Run {
        // Another execution may hold the kernel; a caller that gives up while waiting for it
        // runs nothing.
        let mut client = tokio::select! {
            client = self.client.lock() => client,
            () = cancel.cancelled() => return not_started(),
        };
        if let Some(reason) = self.dead() {
            return died_run(&self.id, &reason, Vec::new(), false);
        }
        self.busy.store(true, Ordering::Relaxed);
        self.touch();
        let mut collector = Collector::new(output_cap);
        let mut stopped_by = None;
        let mut dead = self.exited.clone();
        let ended = {
            let execution = client.execute(code, &mut collector);
            tokio::pin!(execution);
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let grace = tokio::time::sleep(Duration::MAX / 4);
            tokio::pin!(grace);
            loop {
                tokio::select! {
                    done = &mut execution => break Ended::Replied(done),
                    () = &mut deadline, if stopped_by.is_none() => {
                        stopped_by = Some(RunStatus::TimedOut);
                        self.interrupt().await;
                        grace.as_mut().reset(Instant::now() + INTERRUPT_GRACE);
                    }
                    () = cancel.cancelled(), if stopped_by.is_none() => {
                        stopped_by = Some(RunStatus::Interrupted);
                        self.interrupt().await;
                        grace.as_mut().reset(Instant::now() + INTERRUPT_GRACE);
                    }
                    () = &mut grace => break Ended::Stuck,
                    reason = wait_exit(&mut dead) => break Ended::Died(reason),
                }
            }
        };
        drop(client);
        self.busy.store(false, Ordering::Relaxed);
        self.touch();
        let count = collector.execution_count;
        let (outputs, truncated) = collector.finish();
        let (status, count) = match ended {
            Ended::Replied(Ok((reply, reply_count))) => {
                let status = stopped_by.unwrap_or(match reply {
                    ReplyStatus::Ok => RunStatus::Ok,
                    ReplyStatus::Error => RunStatus::Error,
                    ReplyStatus::Aborted => RunStatus::Interrupted,
                });
                (status, reply_count.or(count))
            }
            Ended::Replied(Err(error)) => {
                self.kill().await;
                return died_run(&self.id, &error.to_string(), outputs, truncated);
            }
            Ended::Died(reason) => return died_run(&self.id, &reason, outputs, truncated),
            Ended::Stuck => {
                self.kill().await;
                let reason = format!(
                    "it did not stop within {INTERRUPT_GRACE:?} of an interrupt, so it was killed"
                );
                let mut run = died_run(&self.id, &reason, outputs, truncated);
                run.status = stopped_by.unwrap_or(RunStatus::KernelDied);
                return run;
            }
        };
        if let Some(count) = count {
            self.execution_count.store(count, Ordering::Relaxed);
        }
        Run {
            execution_count: count,
            ..Run::new(status, outputs, truncated)
        }
    }

    /// Interrupts what the kernel runs: SIGINT, or a message for kernels that ask for one.
    pub(crate) async fn interrupt(&self) {
        match self.spec.interrupt_mode {
            InterruptMode::Signal => {
                if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
                }
            }
            InterruptMode::Message => {
                if let Err(error) = self.control.lock().await.interrupt().await {
                    tracing::debug!(kernel = %self.id, %error, "interrupt request failed");
                }
            }
        }
    }

    /// Asks the kernel to exit, then kills whatever is left of its process tree.
    pub(crate) async fn stop(&self) {
        if self.dead().is_none() {
            let _ = self.control.lock().await.shutdown().await;
        }
        self.kill().await;
    }

    async fn kill(&self) {
        tree::kill_tree(&Target {
            root: self.pid,
            pipes: self.pipes.clone(),
        })
        .await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    pub(crate) fn info(&self) -> KernelInfo {
        let state = if self.dead().is_some() {
            "dead"
        } else if self.busy.load(Ordering::Relaxed) {
            "busy"
        } else {
            "idle"
        };
        KernelInfo {
            id: self.id.clone(),
            name: self.spec.name.clone(),
            state: state.to_string(),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            pid: u32::try_from(self.pid).ok(),
            memory_bytes: tree_memory(&Target {
                root: self.pid,
                pipes: self.pipes.clone(),
            }),
            idle_seconds: self.idle_for().as_secs(),
        }
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }
}

enum Ended {
    Replied(Result<(ReplyStatus, Option<i64>), lodge_kernel::KernelError>),
    Died(String),
    Stuck,
}

/// A run cancelled before it started.
fn not_started() -> Run {
    Run::new(RunStatus::Interrupted, Vec::new(), false)
}

fn died_run(id: &str, reason: &str, outputs: Vec<lodge_kernel::Output>, truncated: bool) -> Run {
    let mut outputs = outputs;
    outputs.push(lodge_kernel::Output::Stream {
        name: "stderr".to_string(),
        text: format!(
            "\n[lodge: kernel {id:?} died: {reason}. Its state is lost; kernel_restart starts a \
             fresh one]\n"
        ),
    });
    Run::new(RunStatus::KernelDied, outputs, truncated)
}

/// Resolves when the process has exited, with the reason.
async fn wait_exit(exited: &mut watch::Receiver<Option<String>>) -> String {
    let reason = match exited.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone(),
        Err(_) => None,
    };
    match reason {
        Some(reason) => reason,
        // The watcher task is gone: the agent is stopping.
        None => std::future::pending().await,
    }
}

/// Keeps the last [`STDERR_TAIL`] bytes of what the kernel writes to stderr.
async fn keep_tail(mut stderr: pipe::Receiver, tail: Arc<Mutex<String>>) {
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut tail = lock(&tail);
        tail.push_str(&String::from_utf8_lossy(&buf[..n]));
        if tail.len() > STDERR_TAIL {
            let cut = tail.len() - STDERR_TAIL;
            let cut = (cut..tail.len())
                .find(|&i| tail.is_char_boundary(i))
                .unwrap_or(0);
            tail.drain(..cut);
        }
    }
}

/// Resident memory of a process tree in bytes, from `/proc/PID/statm`.
fn tree_memory(target: &Target) -> Option<u64> {
    let page = rustix::param::page_size() as u64;
    let pids = tree::scan(target);
    let pages: u64 = pids
        .iter()
        .chain(std::iter::once(&target.root))
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/statm")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    (pages > 0).then_some(pages * page)
}

/// A fresh directory only the room user can enter, under the room's /tmp.
fn private_dir(tmp: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = tmp.join("lodge-kernels");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&base)?;
    let dir = base.join(random_hex()?.get(..16).unwrap_or("kernel"));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

/// 32 random bytes as hex: a kernel's HMAC key.
fn random_hex() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The room's kernels by id, each started at most once at a time.
#[derive(Default)]
pub(crate) struct Kernels {
    flights: Flights<String, Arc<Kernel>>,
}

impl Kernels {
    /// The kernel `id`: the current one if `reuse` keeps it (called under the id's lock, so a
    /// use it marks is seen by the culler), else a fresh one from `start`, given the one it
    /// replaces. A failed start leaves no kernel.
    pub(crate) async fn get_or_start<Fut>(
        &self,
        id: &str,
        reuse: impl FnOnce(&Arc<Kernel>) -> bool,
        start: impl FnOnce(Option<Arc<Kernel>>) -> Fut,
    ) -> Result<Arc<Kernel>, OpError>
    where
        Fut: Future<Output = Result<Arc<Kernel>, OpError>>,
    {
        self.flights
            .get_or_start(id.to_string(), reuse, start)
            .await
    }

    /// The kernel with this id, if one was started (it may be dead).
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Kernel>> {
        self.flights.peek(id)
    }

    /// Every started kernel.
    pub(crate) fn all(&self) -> Vec<Arc<Kernel>> {
        self.flights.values()
    }

    /// Live kernels (for the per-room limit).
    pub(crate) fn live(&self) -> usize {
        self.all().iter().filter(|k| k.dead().is_none()).count()
    }

    /// Stops kernel `id` and forgets it; false if there is none.
    pub(crate) async fn shutdown(&self, id: &str) -> bool {
        self.flights
            .remove(id, |kernel| async move { kernel.stop().await })
            .await
    }

    /// Stops kernels idle longer than `idle`, and forgets dead ones idle as long. A kernel
    /// being started or handed to a call is skipped: the call touches it under that lock, so
    /// a kernel is never culled between pick and run.
    pub(crate) async fn cull(&self, idle: Duration) -> usize {
        let idle =
            |_: &String, kernel: &Arc<Kernel>| !kernel.is_busy() && kernel.idle_for() >= idle;
        self.flights
            .cull(idle, |kernel| async move { kernel.stop().await })
            .await
    }

    pub(crate) async fn stop_all(&self) {
        for kernel in self.flights.take_all().await {
            kernel.kill().await;
        }
    }
}
