//! `lodge bench`'s upstream section: the same `echo` call on the project's probe server
//! (tests/peers/probe_server.py, embedded here), direct over stdio from this process and
//! through the hub to the user's warm instance in their room; the difference of the two is the
//! hub's proxy overhead. Also the first call, which starts the instance: with the user's room
//! already running, and for a new user whose room starts too.

use super::{
    Bars, BenchArgs, Client, ConfigPart, FirstCalls, Overhead, REQUEST_TIMEOUT, ScriptDir, Stats,
    Target, clip, cold_rows, fmt_us, section_users, sig3, timed_row, toml_string, tool_body,
};
use anyhow::{Context as _, Result, bail, ensure};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The interpreter of the probe, on the host and in rooms (which see the host's /usr).
const PYTHON: &str = "/usr/bin/python3";
const PROBE_SOURCE: &str = include_str!("../../../tests/peers/probe_server.py");
const PROBE_FILE: &str = "probe_server.py";
const SERVER: &str = "probe";
const TOOL: &str = "probe__echo";
const ECHO_TEXT: &str = "lodge bench";
/// Users whose room is started (run_command "true") before their first, timed, echo: the
/// instance's start alone. The first of them also carries the warm rows.
const ROOM_WARM_USERS: usize = 5;
/// Users whose first call of all is the timed echo: their room and the instance start.
const NEW_USERS: usize = 5;
/// Users the section needs, each with a room of their own.
pub(super) const USERS: usize = ROOM_WARM_USERS + NEW_USERS;
const TARGET_OVERHEAD_P50_US: f64 = 300.0;
const FIG_DIRECT: &str = "upstream echo, direct stdio";
const FIG_HUB: &str = "upstream echo, via hub (warm)";
const FIG_OVERHEAD: &str = "proxy overhead (p50 difference)";
const FIG_COLD_INSTANCE: &str = "upstream cold start (room warm)";
const FIG_COLD_ALL: &str = "upstream cold start (new user, room + instance)";
/// How long the direct probe may take to exit once its stdin is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Lines of the direct probe's stderr kept for error messages.
const STDERR_LINES: usize = 10;

/// Whether and how the section runs.
pub(super) type Setup = super::Setup<ScriptDir>;

impl Setup {
    pub(super) fn new(a: &BenchArgs) -> Result<Self> {
        if a.skip_upstream {
            return Ok(Self::Off);
        }
        if !Path::new(PYTHON).exists() {
            return Ok(Self::Unavailable(format!("{PYTHON} not found")));
        }
        Ok(Self::Ready(ScriptDir::create(
            "probe",
            PROBE_FILE,
            PROBE_SOURCE,
        )?))
    }

    /// Bench users to provision for the section.
    pub(super) fn users(&self) -> usize {
        self.users_if_ready(USERS)
    }

    /// The probe's directory for the rooms, and the probe server's declaration.
    pub(super) fn config(&self) -> Result<ConfigPart> {
        let Self::Ready(probe) = self else {
            return Ok(ConfigPart::default());
        };
        Ok(ConfigPart {
            read_only_paths: vec![probe.dir.clone()],
            tables: format!(
                "[servers.{SERVER}]\n\
                 description = \"lodge bench: the project's probe server\"\n\
                 command = [{python}, {script}]\n",
                python = toml_string(Path::new(PYTHON))?,
                script = toml_string(&probe.script)?,
            ),
        })
    }
}

/// `bench-upstream-NN`, for NN in 0..[`USERS`].
pub(super) fn user_name(i: usize) -> String {
    format!("bench-upstream-{i:02}")
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// The section in the report: its figures, or why it did not run.
pub(super) type Section = super::Section<Figures>;

#[derive(Serialize)]
pub(super) struct Figures {
    server: String,
    /// Timed calls per warm row (after the bench's warm-up calls).
    calls: usize,
    direct: Stats,
    via_hub: Stats,
    overhead: Overhead,
    /// First call of a user whose room was already running: the instance's start.
    cold_start_room_warm: Stats,
    /// First call of a new user: the room's start and the instance's.
    cold_start_new_user: Stats,
    /// Users timed for each cold figure.
    cold_users: usize,
}

/// Runs the section (with the tokens of its [`user_name`]s); `None` with --skip-upstream. Cold
/// starts come first, while no instance runs; the direct and the warm row then run back to
/// back, so both meet the machine in the same state.
pub(super) async fn run(
    a: &BenchArgs,
    setup: &Setup,
    base: &Client,
    tokens: &[String],
    bars: &Bars,
) -> Result<Option<Section>> {
    let probe = match setup.ready() {
        Ok(probe) => probe,
        Err(report) => return Ok(report),
    };
    let users = section_users(base, tokens, USERS, "upstream").await?;
    let (room_warm, new) = users.split_at(ROOM_WARM_USERS);
    let echo = tool_body(TOOL, json!({"text": ECHO_TEXT}));
    let check = |reply: &str| check_echo(reply, TOOL);
    let calls = FirstCalls {
        tool: TOOL,
        body: &echo,
        check: &check,
        room_warm: FIG_COLD_INSTANCE,
        new_user: FIG_COLD_ALL,
    };
    let (cold_instance, cold_all) = cold_rows(room_warm, new, &calls, bars).await?;

    let direct = direct_row(a, &probe.script, bars).await?;
    let u = &room_warm[0];
    let (_, via_hub) = timed_row(a, bars, FIG_HUB, || async {
        u.client.tool(&u.sid, &echo, TOOL).await.map(drop)
    })
    .await?;
    // The timed replies were checked as results only; check one's content too.
    check_echo(&u.client.tool(&u.sid, &echo, TOOL).await?, TOOL)?;

    Ok(Some(Section::Measured(Figures {
        server: format!("{SERVER}: {PYTHON} {PROBE_FILE}, tool echo"),
        calls: a.requests,
        overhead: Overhead::between(&direct, &via_hub),
        direct,
        via_hub,
        cold_start_room_warm: cold_instance,
        cold_start_new_user: cold_all,
        cold_users: ROOM_WARM_USERS.min(NEW_USERS),
    })))
}

/// A tools/call reply (JSON-RPC, from the hub or the probe) must carry the echoed text.
fn check_echo(reply: &str, what: &str) -> Result<()> {
    let v: Value = serde_json::from_str(reply)
        .with_context(|| format!("{what}: reply is not JSON: {}", clip(reply)))?;
    let text = v.pointer("/result/content/0/text").and_then(Value::as_str);
    ensure!(
        text == Some(ECHO_TEXT) && v.pointer("/result/isError") != Some(&Value::Bool(true)),
        "{what}: expected the text {ECHO_TEXT:?} back: {}",
        clip(reply)
    );
    Ok(())
}

/// The baseline: the same calls on a probe this process runs itself, warmed up and timed like
/// the bench's other rows.
async fn direct_row(a: &BenchArgs, script: &Path, bars: &Bars) -> Result<Stats> {
    let mut probe = Direct::start(script).await?;
    let result = async {
        for _ in 0..a.warmup {
            probe.echo().await?;
        }
        let bar = bars.counted(a.requests, FIG_DIRECT);
        let mut samples = Vec::with_capacity(a.requests);
        for _ in 0..a.requests {
            samples.push(probe.echo().await?);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Stats::of(samples)
    }
    .await;
    probe.stop().await;
    result
}

/// The probe as a child of this process, spoken to over its stdio (newline-delimited JSON-RPC).
struct Direct {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    line: String,
    id: u64,
}

impl Direct {
    /// Starts the probe and initializes it.
    async fn start(script: &Path) -> Result<Self> {
        let mut child = Command::new(PYTHON)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {PYTHON} {}", script.display()))?;
        let stdin = child.stdin.take().context("no stdin pipe to the probe")?;
        let stdout = child
            .stdout
            .take()
            .context("no stdout pipe from the probe")?;
        let stderr = child
            .stderr
            .take()
            .context("no stderr pipe from the probe")?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        tokio::spawn({
            let tail = tail.clone();
            async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if t.len() == STDERR_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        });
        let mut probe = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr: tail,
            line: String::new(),
            id: 0,
        };
        let init = probe.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "lodge-bench", "version": "1"}}),
        );
        probe.round_trip(&init, "initialize").await?;
        let v: Value = serde_json::from_str(&probe.line).unwrap_or_default();
        ensure!(
            v.get("result").is_some(),
            "the probe refused initialize: {}",
            clip(&probe.line)
        );
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        probe.send(&format!("{initialized}\n")).await?;
        Ok(probe)
    }

    /// The next request line (with a fresh id).
    fn request(&mut self, method: &str, params: Value) -> String {
        self.id += 1;
        let msg = json!({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params});
        format!("{msg}\n")
    }

    async fn send(&mut self, line: &str) -> Result<()> {
        match self.stdin.write_all(line.as_bytes()).await {
            Ok(()) => Ok(()),
            Err(e) => bail!("writing to the probe: {e}{}", self.stderr_tail()),
        }
    }

    /// Writes `line` and reads the reply line into `self.line`; returns the time between the
    /// two. The reply must answer the last request id.
    async fn round_trip(&mut self, line: &str, what: &str) -> Result<Duration> {
        let t = Instant::now();
        self.send(line).await?;
        self.line.clear();
        let read = tokio::time::timeout(REQUEST_TIMEOUT, self.stdout.read_line(&mut self.line));
        let n = match read.await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => bail!("{what}: reading from the probe: {e}{}", self.stderr_tail()),
            Err(_) => bail!(
                "{what}: the probe did not answer within {} s{}",
                REQUEST_TIMEOUT.as_secs(),
                self.stderr_tail()
            ),
        };
        let took = t.elapsed();
        ensure!(n > 0, "{what}: the probe exited{}", self.stderr_tail());
        let id = serde_json::from_str::<Value>(&self.line)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_u64));
        ensure!(
            id == Some(self.id),
            "{what}: the probe's reply does not answer request {}: {}",
            self.id,
            clip(&self.line)
        );
        Ok(took)
    }

    /// One timed echo call; its reply is checked outside the timing.
    async fn echo(&mut self) -> Result<Duration> {
        let call = self.request(
            "tools/call",
            json!({"name": "echo", "arguments": {"text": ECHO_TEXT}}),
        );
        let took = self.round_trip(&call, "echo (direct)").await?;
        check_echo(&self.line, "echo (direct)")?;
        Ok(took)
    }

    /// The probe's last stderr lines, for an error message.
    fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        if tail.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
            format!("; its stderr: {}", lines.join(" | "))
        }
    }

    /// Closes the probe's stdin, which ends it; kills it if it lingers.
    async fn stop(self) {
        let Self {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        if tokio::time::timeout(EXIT_GRACE, child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting

/// The proxy-overhead target, when the section was measured.
pub(super) fn target(section: Option<&Section>) -> Option<Target> {
    let Some(Section::Measured(f)) = section else {
        return None;
    };
    Some(Target::new(
        "proxy overhead p50",
        f.overhead.p50_us,
        TARGET_OVERHEAD_P50_US,
        "us",
    ))
}

pub(super) fn print(section: &Section) {
    let Some(f) = section.measured_or_print_skipped("upstream server") else {
        return;
    };
    println!(
        "upstream server {}, {} sequential calls per warm row",
        f.server, f.calls
    );
    println!(
        "{:<48} {:>10} {:>10} {:>10} {:>22}",
        "figure", "p50", "p99", "mean", "ratio vs direct p50"
    );
    let row = |figure: &str, s: &Stats, ratio: Option<f64>| {
        println!(
            "{figure:<48} {:>10} {:>10} {:>10} {:>22}",
            fmt_us(s.p50_us),
            fmt_us(s.p99_us),
            fmt_us(s.mean_us),
            ratio.map_or(String::new(), |r| format!("{}x", sig3(r)))
        );
    };
    row(FIG_DIRECT, &f.direct, Some(1.0));
    row(FIG_HUB, &f.via_hub, Some(f.overhead.ratio_p50));
    let signed = |us: f64| {
        let s = fmt_us(us);
        if us >= 0.0 { format!("+{s}") } else { s }
    };
    println!(
        "{FIG_OVERHEAD:<48} {:>10} {:>10} {:>10} {:>22}",
        signed(f.overhead.p50_us),
        signed(f.overhead.p99_us),
        signed(f.overhead.mean_us),
        format!("{}x", sig3(f.overhead.ratio_p50))
    );
    row(FIG_COLD_INSTANCE, &f.cold_start_room_warm, None);
    row(FIG_COLD_ALL, &f.cold_start_new_user, None);
    println!(
        "  (overhead target <= {}; cold starts: the first {TOOL} of {} users each, \"room warm\" \
         after run_command \"true\" started their room)",
        fmt_us(TARGET_OVERHEAD_P50_US),
        f.cold_users
    );
}
