//! `lodge bench`: starts a private hub (this same binary, a temporary DATA_DIR, a loopback
//! port) and measures it over real HTTP: sequential latency, session_info throughput and memory
//! per idle session. It must never touch the user's DATA_DIR or another hub, and never report
//! figures built from failed requests: any non-200 or JSON-RPC error aborts the run.

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::task::JoinSet;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Sequential requests per latency row.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Comma-separated concurrency levels for the session_info throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    pub concurrency: Vec<usize>,
    /// Seconds each throughput run lasts.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Idle sessions created for the memory-per-session figure.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Uncounted warm-up requests before each measurement.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Print one JSON object with all figures instead of the table.
    #[arg(long)]
    pub json: bool,
}

const INIT_BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
const CALL_BODY: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"session_info","arguments":{}}}"#;
const STATELESS_BODY: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"session_info","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
const MODERN: &str = "2026-07-28";
const SESSION_HEADER: &str = "mcp-session-id";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// In-flight initializes while filling the hub with idle sessions.
const MEMORY_CONCURRENCY: usize = 16;
/// Time given to the hub after the last session, before RSS is read again.
const SETTLE: Duration = Duration::from_millis(1500);
const TARGET_INIT_P50_US: f64 = 1_000.0;
const TARGET_INIT_P99_US: f64 = 5_000.0;
const TARGET_BYTES_PER_SESSION: f64 = 2_048.0;

pub async fn run(a: BenchArgs) -> Result<()> {
    check_args(&a)?;
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; take figures from `cargo run --release -p lodge -- bench`"
        );
    }
    let exe = std::env::current_exe().context("cannot find the lodge executable")?;
    let dir = DataDir::create()?;
    let tokens = provision(&exe, dir.path()).await?;
    let hub = HubProcess::spawn(&exe, dir).await?;
    let result = measure(&a, &hub, &tokens).await;
    hub.stop().await;
    let report = result?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn check_args(a: &BenchArgs) -> Result<()> {
    ensure!(a.requests > 0, "--requests must be at least 1");
    ensure!(a.seconds > 0, "--seconds must be at least 1");
    ensure!(a.sessions > 0, "--sessions must be at least 1");
    ensure!(
        !a.concurrency.is_empty() && a.concurrency.iter().all(|&c| c > 0),
        "--concurrency needs levels of at least 1, such as 1,16,256"
    );
    Ok(())
}

/// Runs the phases. Memory comes first: later phases leave freed heap in the hub's RSS, which
/// new sessions would reuse unseen. Bulk sessions (memory phase, initialize row) belong to their
/// own user, so the measured user's session_info reply (it lists up to 20 sessions) stays
/// the same size in every row.
async fn measure(a: &BenchArgs, hub: &HubProcess, tokens: &Tokens) -> Result<Report> {
    let max_conc = a.concurrency.iter().copied().max().unwrap_or(1);
    let client = Arc::new(Client::new(&hub.base, &tokens.bench, max_conc)?);
    let bulk = Arc::new(Client::new(&hub.base, &tokens.bulk, MEMORY_CONCURRENCY)?);
    let bars = Bars { hidden: a.json };
    let memory = memory_run(a, &bulk, hub.pid, &bars).await?;
    let latency = latency_rows(a, &client, &bulk, &bars).await?;
    let mut throughput = Vec::new();
    for &c in &a.concurrency {
        throughput.push(throughput_run(a, &client, c, &bars).await?);
    }
    let targets = targets(&latency, memory.as_ref());
    Ok(Report {
        build: build_kind(),
        requests: a.requests,
        warmup: a.warmup,
        throughput_seconds: a.seconds,
        latency,
        throughput,
        memory,
        targets,
        hub_log_lines: hub.log_lines.load(Ordering::Relaxed),
    })
}

fn build_kind() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

// ---------------------------------------------------------------------------------------------
// The hub under test

/// The temporary DATA_DIR; removed when dropped, so errors leave nothing behind.
struct DataDir(PathBuf);

impl DataDir {
    fn create() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("lodge-bench-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot clear stale {}", path.display()))?;
        }
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `lodge --data-dir DIR --log-level warn …`, shielded from the caller's config and log filter.
fn lodge_command(exe: &Path, dir: &Path) -> Command {
    let mut c = Command::new(exe);
    c.arg("--data-dir")
        .arg(dir)
        .args(["--log-level", "warn"])
        .env_remove("LODGE_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

/// Runs one CLI command that must succeed; returns its stdout.
async fn lodge_cli(exe: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let out = lodge_command(exe, dir)
        .args(args)
        .output()
        .await
        .with_context(|| format!("cannot run `lodge {}`", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "`lodge {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).context("lodge printed non-UTF-8 output")
}

/// Tokens of the two bench users: `bench` runs session_info, `bench-bulk` holds bulk sessions.
struct Tokens {
    bench: String,
    bulk: String,
}

async fn provision(exe: &Path, dir: &Path) -> Result<Tokens> {
    Ok(Tokens {
        bench: user_with_token(exe, dir, "bench").await?,
        bulk: user_with_token(exe, dir, "bench-bulk").await?,
    })
}

/// Creates user `name` and returns a fresh token of theirs.
async fn user_with_token(exe: &Path, dir: &Path, name: &str) -> Result<String> {
    lodge_cli(exe, dir, &["user", "add", name]).await?;
    let token = lodge_cli(exe, dir, &["token", "create", name]).await?;
    let token = token.trim().to_owned();
    ensure!(
        !token.is_empty(),
        "`lodge token create {name}` printed no token"
    );
    Ok(token)
}

/// A running `lodge serve`. Field order matters: the child is killed (kill_on_drop) before the
/// directory is removed.
struct HubProcess {
    child: Child,
    pid: u32,
    base: String,
    /// Lines the hub logged (at warn level and above) so far.
    log_lines: Arc<AtomicUsize>,
    _dir: DataDir,
}

impl HubProcess {
    async fn spawn(exe: &Path, dir: DataDir) -> Result<Self> {
        let mut child = lodge_command(exe, dir.path())
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("LODGE_SESSIONS_MAX_PER_USER", "1000000")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start `lodge serve`")?;
        let pid = child.id().context("`lodge serve` exited at once")?;
        let stdout = child.stdout.take().context("no stdout pipe to the hub")?;
        let stderr = child.stderr.take().context("no stderr pipe to the hub")?;
        let log_lines = forward_log(stderr);
        let addr = tokio::time::timeout(READY_TIMEOUT, ready_addr(stdout))
            .await
            .context("the hub did not print its ready line within 30 s")??;
        Ok(Self {
            child,
            pid,
            base: format!("http://{addr}"),
            log_lines,
            _dir: dir,
        })
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Reads the hub's stdout up to `listening on http://ADDR`, then keeps draining it.
async fn ready_addr(stdout: ChildStdout) -> Result<String> {
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .context("reading the hub's stdout")?
    {
        if let Some(rest) = line.split("listening on http://").nth(1) {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(rest.trim().to_owned());
        }
    }
    bail!("the hub exited before it was ready (see its log above)")
}

/// Forwards the hub's log to our stderr and counts its lines, so the report can say whether the
/// hub complained (slow SQLite statements, say) while it was measured.
fn forward_log(stderr: ChildStderr) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            counter.fetch_add(1, Ordering::Relaxed);
            eprintln!("hub: {line}");
        }
    });
    count
}

/// Kilobytes of resident memory of `pid`, from /proc (Linux only).
fn rss_kb(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .with_context(|| format!("no VmRSS line in {path}"))?;
    let kb = line.trim().trim_end_matches("kB").trim();
    kb.parse()
        .with_context(|| format!("cannot parse VmRSS {kb:?} in {path}"))
}

// ---------------------------------------------------------------------------------------------
// HTTP client

struct Client {
    http: reqwest::Client,
    health: reqwest::Url,
    mcp: reqwest::Url,
    auth: String,
}

impl Client {
    fn new(base: &str, token: &str, concurrency: usize) -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(concurrency.max(MEMORY_CONCURRENCY) + 16)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        let url = |p: &str| reqwest::Url::parse(&format!("{base}{p}")).context("bad hub URL");
        Ok(Self {
            http,
            health: url("/api/health")?,
            mcp: url("/mcp")?,
            auth: format!("Bearer {token}"),
        })
    }

    async fn health(&self) -> Result<()> {
        let what = "GET /api/health";
        let r = self.http.get(self.health.clone()).send().await;
        expect_ok(r.context(what)?, what).await.map(drop)
    }

    /// A legacy initialize: creates a persisted session and returns its id.
    async fn initialize(&self) -> Result<String> {
        let what = "MCP initialize";
        let r = self.mcp_post(INIT_BODY).send().await.context(what)?;
        let sid = r
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        expect_result(&expect_ok(r, what).await?, what)?;
        sid.context("initialize answered without an Mcp-Session-Id header")
    }

    /// One session_info call in session `sid`; returns the reply's size in bytes.
    async fn session_info(&self, sid: &str) -> Result<usize> {
        let what = "session_info (session)";
        let req = self.mcp_post(CALL_BODY).header(SESSION_HEADER, sid);
        let r = req.send().await.context(what)?;
        let body = expect_ok(r, what).await?;
        expect_result(&body, what)?;
        Ok(body.len())
    }

    async fn session_info_stateless(&self) -> Result<()> {
        let what = "session_info (stateless)";
        let req = self
            .mcp_post(STATELESS_BODY)
            .header("mcp-protocol-version", MODERN)
            .header("mcp-method", "tools/call");
        let r = req.send().await.context(what)?;
        expect_result(&expect_ok(r, what).await?, what)
    }

    /// Ends a session (DELETE /mcp), so it no longer weighs on session_info.
    async fn end_session(&self, sid: &str) -> Result<()> {
        let req = self.http.delete(self.mcp.clone());
        let req = req
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .header(SESSION_HEADER, sid);
        let r = req.send().await.context("DELETE /mcp")?;
        let status = r.status();
        ensure!(
            status == reqwest::StatusCode::NO_CONTENT,
            "DELETE /mcp: HTTP {status}: {}",
            clip(&r.text().await.unwrap_or_default())
        );
        Ok(())
    }

    fn mcp_post(&self, body: &'static str) -> reqwest::RequestBuilder {
        self.http
            .post(self.mcp.clone())
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .body(body)
    }
}

/// The body of a 200 answer; anything else aborts the bench.
async fn expect_ok(r: reqwest::Response, what: &str) -> Result<String> {
    let status = r.status();
    let body = r
        .text()
        .await
        .with_context(|| format!("{what}: reading the body"))?;
    ensure!(
        status == reqwest::StatusCode::OK,
        "{what}: HTTP {status}: {}",
        clip(&body)
    );
    Ok(body)
}

/// The part of a JSON-RPC reply the bench checks; the rest is skipped without being built, so
/// the client spends little CPU that the hub on the same machine could have used.
#[derive(Deserialize)]
struct Reply {
    result: Option<ReplyResult>,
}

#[derive(Deserialize)]
struct ReplyResult {
    #[serde(default, rename = "isError")]
    is_error: bool,
}

/// A JSON-RPC reply must carry a `result`, and a tool result must not be an error.
fn expect_result(body: &str, what: &str) -> Result<()> {
    let reply: Reply = serde_json::from_str(body)
        .with_context(|| format!("{what}: reply is not JSON-RPC: {}", clip(body)))?;
    let Some(result) = reply.result else {
        bail!("{what}: JSON-RPC error: {}", clip(body));
    };
    ensure!(!result.is_error, "{what}: tool error: {}", clip(body));
    Ok(())
}

fn clip(s: &str) -> String {
    const MAX: usize = 300;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Phases

/// Progress bars on stderr (indicatif hides them when stderr is not a terminal).
struct Bars {
    hidden: bool,
}

impl Bars {
    fn target(&self) -> ProgressDrawTarget {
        if self.hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        }
    }

    fn counted(&self, len: usize, msg: &str) -> ProgressBar {
        let style = ProgressStyle::with_template("{msg:34} [{bar:30}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        ProgressBar::with_draw_target(Some(len as u64), self.target())
            .with_style(style)
            .with_message(msg.to_owned())
    }

    fn timed(&self, msg: String) -> ProgressBar {
        let style = ProgressStyle::with_template("{spinner} {msg:32} {pos} calls {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = ProgressBar::with_draw_target(None, self.target())
            .with_style(style)
            .with_message(msg);
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    }
}

/// The sequential rows. `c`'s user holds one session here; `bulk`'s user takes the initializes.
async fn latency_rows(a: &BenchArgs, c: &Client, bulk: &Client, bars: &Bars) -> Result<Vec<Row>> {
    let health = timed_row(a, bars, "GET /api/health (baseline)", || c.health()).await?;
    let init = timed_row(a, bars, "MCP initialize (persisted)", || async {
        bulk.initialize().await.map(drop)
    })
    .await?;
    let sid = c.initialize().await?;
    let call = timed_row(a, bars, "session_info (session)", || async {
        c.session_info(&sid).await.map(drop)
    })
    .await?;
    c.end_session(&sid).await?;
    let stateless = timed_row(a, bars, "session_info (stateless 2026-07-28)", || {
        c.session_info_stateless()
    })
    .await?;
    let base = health.1.p50_us;
    Ok([health, init, call, stateless]
        .into_iter()
        .map(|(figure, stats)| Row {
            figure,
            ratio_vs_health_p50: stats.p50_us / base,
            stats,
        })
        .collect())
}

/// Warms up, then times `a.requests` sequential calls of `f`.
async fn timed_row<F, Fut>(
    a: &BenchArgs,
    bars: &Bars,
    figure: &'static str,
    mut f: F,
) -> Result<(&'static str, Stats)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    for _ in 0..a.warmup {
        f().await?;
    }
    let bar = bars.counted(a.requests, figure);
    let mut samples = Vec::with_capacity(a.requests);
    for _ in 0..a.requests {
        let t = Instant::now();
        f().await?;
        samples.push(t.elapsed());
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((figure, Stats::of(samples)?))
}

/// session_info at `conc` concurrent clients, each with its own session, for `a.seconds`.
/// The sessions are ended afterwards, so each level runs with exactly `conc` of them.
async fn throughput_run(
    a: &BenchArgs,
    client: &Arc<Client>,
    conc: usize,
    bars: &Bars,
) -> Result<Throughput> {
    let sids = open_sessions(client, conc, a.warmup.div_ceil(conc)).await?;
    let bar = bars.timed(format!("throughput session_info c={conc}"));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.seconds);
    let mut tasks = JoinSet::new();
    for sid in &sids {
        tasks.spawn(call_until(
            client.clone(),
            sid.clone(),
            deadline,
            bar.clone(),
        ));
    }
    let (mut samples, mut bytes) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (s, b) = r.context("a bench client panicked")??;
        samples.extend(s);
        bytes += b;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    for sid in &sids {
        client.end_session(sid).await?;
    }
    Ok(Throughput {
        concurrency: conc,
        calls: samples.len(),
        seconds: elapsed,
        calls_per_s: samples.len() as f64 / elapsed,
        reply_bytes: bytes / samples.len().max(1),
        stats: Stats::of(samples)?,
    })
}

/// `n` clients each initialize their own session and warm it up with `warmup` calls.
async fn open_sessions(client: &Arc<Client>, n: usize, warmup: usize) -> Result<Vec<String>> {
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let c = client.clone();
        tasks.spawn(async move {
            let sid = c.initialize().await?;
            for _ in 0..warmup {
                c.session_info(&sid).await?;
            }
            anyhow::Ok(sid)
        });
    }
    let mut sids = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        sids.push(r.context("a bench client panicked")??);
    }
    Ok(sids)
}

/// Calls session_info until `deadline`; returns the latencies and the reply bytes received.
async fn call_until(
    client: Arc<Client>,
    sid: String,
    deadline: Instant,
    bar: ProgressBar,
) -> Result<(Vec<Duration>, usize)> {
    let (mut samples, mut bytes) = (Vec::with_capacity(4096), 0);
    while Instant::now() < deadline {
        let t = Instant::now();
        bytes += client.session_info(&sid).await?;
        samples.push(t.elapsed());
        bar.inc(1);
    }
    Ok((samples, bytes))
}

/// Hub RSS before and after creating `a.sessions` idle sessions. None where /proc is missing.
async fn memory_run(
    a: &BenchArgs,
    client: &Arc<Client>,
    pid: u32,
    bars: &Bars,
) -> Result<Option<Memory>> {
    if !Path::new("/proc/self/status").exists() {
        eprintln!("note: no /proc here, so no memory-per-session figure");
        return Ok(None);
    }
    for _ in 0..a.warmup {
        client.initialize().await?;
    }
    let before = rss_kb(pid)?;
    let bar = bars.counted(a.sessions, "idle sessions (initialize)");
    let created = create_sessions(client, a.sessions, &bar).await?;
    bar.finish_and_clear();
    tokio::time::sleep(SETTLE).await;
    let after = rss_kb(pid)?;
    let grown = after as f64 - before as f64;
    Ok(Some(Memory {
        sessions: created,
        rss_before_kb: before,
        rss_after_kb: after,
        bytes_per_session: grown * 1024.0 / created as f64,
    }))
}

/// Creates `n` sessions with [`MEMORY_CONCURRENCY`] initializes in flight; returns the count.
async fn create_sessions(client: &Arc<Client>, n: usize, bar: &ProgressBar) -> Result<usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..MEMORY_CONCURRENCY.min(n) {
        let (c, next, bar) = (client.clone(), next.clone(), bar.clone());
        tasks.spawn(async move {
            let mut made = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < n {
                c.initialize().await?;
                made += 1;
                bar.inc(1);
            }
            anyhow::Ok(made)
        });
    }
    let mut created = 0;
    while let Some(r) = tasks.join_next().await {
        created += r.context("a bench client panicked")??;
    }
    Ok(created)
}

// ---------------------------------------------------------------------------------------------
// Figures

#[derive(Serialize, Clone, Copy)]
struct Stats {
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Result<Self> {
        ensure!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let total: Duration = samples.iter().sum();
        Ok(Self {
            p50_us: us(percentile(&samples, 0.50)),
            p99_us: us(percentile(&samples, 0.99)),
            mean_us: us(total) / samples.len() as f64,
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Serialize)]
struct Row {
    figure: &'static str,
    #[serde(flatten)]
    stats: Stats,
    ratio_vs_health_p50: f64,
}

#[derive(Serialize)]
struct Throughput {
    concurrency: usize,
    calls: usize,
    seconds: f64,
    calls_per_s: f64,
    /// Mean session_info reply size: it lists all the caller's sessions, so it grows with them.
    reply_bytes: usize,
    #[serde(flatten)]
    stats: Stats,
}

#[derive(Serialize)]
struct Memory {
    sessions: usize,
    rss_before_kb: u64,
    rss_after_kb: u64,
    bytes_per_session: f64,
}

#[derive(Serialize)]
struct Target {
    name: &'static str,
    value: f64,
    limit: f64,
    unit: &'static str,
    met: bool,
}

#[derive(Serialize)]
struct Report {
    build: &'static str,
    requests: usize,
    warmup: usize,
    throughput_seconds: u64,
    latency: Vec<Row>,
    throughput: Vec<Throughput>,
    memory: Option<Memory>,
    targets: Vec<Target>,
    hub_log_lines: usize,
}

fn targets(latency: &[Row], memory: Option<&Memory>) -> Vec<Target> {
    let target = |name, value: f64, limit, unit| Target {
        name,
        value,
        limit,
        unit,
        met: value <= limit,
    };
    let mut out = Vec::new();
    if let Some(init) = latency
        .iter()
        .find(|r| r.figure.starts_with("MCP initialize"))
    {
        out.push(target(
            "initialize p50",
            init.stats.p50_us,
            TARGET_INIT_P50_US,
            "us",
        ));
        out.push(target(
            "initialize p99",
            init.stats.p99_us,
            TARGET_INIT_P99_US,
            "us",
        ));
    }
    if let Some(m) = memory {
        let limit = TARGET_BYTES_PER_SESSION;
        out.push(target("memory", m.bytes_per_session, limit, "B/session"));
    }
    out
}

/// Three significant digits in µs, ms or s.
fn fmt_us(us: f64) -> String {
    let (v, unit) = if us >= 1e6 {
        (us / 1e6, "s")
    } else if us >= 1e3 {
        (us / 1e3, "ms")
    } else {
        (us, "µs")
    };
    format!("{} {unit}", sig3(v))
}

fn sig3(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_target(t: &Target) -> String {
    let verdict = if t.met { "MET" } else { "MISSED" };
    match t.unit {
        "us" => format!(
            "{} <= {}: {verdict} ({})",
            t.name,
            fmt_us(t.limit),
            fmt_us(t.value)
        ),
        unit => format!(
            "{} <= {:.0} {unit}: {verdict} ({:.0} {unit})",
            t.name, t.limit, t.value
        ),
    }
}

fn print_table(r: &Report) {
    print_latency(r);
    println!();
    print_throughput(r);
    println!();
    print_summary(r);
}

fn print_latency(r: &Report) {
    println!(
        "lodge bench — {} sequential requests per row ({} warm-up), hub = {} build",
        r.requests, r.warmup, r.build
    );
    if r.build == "debug" {
        println!("(debug figures are not representative: cargo run --release -p lodge -- bench)");
    }
    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>22}",
        "figure", "p50", "p99", "mean", "ratio vs health p50"
    );
    for row in &r.latency {
        println!(
            "{:<38} {:>10} {:>10} {:>10} {:>21}x",
            row.figure,
            fmt_us(row.stats.p50_us),
            fmt_us(row.stats.p99_us),
            fmt_us(row.stats.mean_us),
            sig3(row.ratio_vs_health_p50)
        );
    }
}

fn print_throughput(r: &Report) {
    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>12}",
        format!("throughput session_info, {} s each", r.throughput_seconds),
        "calls/s",
        "p50",
        "p99",
        "reply bytes"
    );
    for t in &r.throughput {
        println!(
            "{:<38} {:>10.0} {:>10} {:>10} {:>12}",
            format!("  c={} ({} calls)", t.concurrency, t.calls),
            t.calls_per_s,
            fmt_us(t.stats.p50_us),
            fmt_us(t.stats.p99_us),
            t.reply_bytes
        );
    }
    println!("  (c=N runs with N sessions of one user; session_info lists at most 20)");
}

fn print_summary(r: &Report) {
    if let Some(m) = &r.memory {
        println!(
            "hub memory per idle session: {:.0} bytes over {} sessions (RSS {} kB -> {} kB)",
            m.bytes_per_session, m.sessions, m.rss_before_kb, m.rss_after_kb
        );
    }
    let verdicts: Vec<String> = r.targets.iter().map(fmt_target).collect();
    println!("targets: {}", verdicts.join("; "));
    if r.hub_log_lines > 0 {
        println!(
            "the hub logged {} warning/error lines during the run (on stderr, prefixed 'hub:')",
            r.hub_log_lines
        );
    }
}
