//! The benchmark behind `lodge bench`: starts a private hub (the `lodge` binary it is given, a
//! temporary DATA_DIR, a loopback port) and measures it over real HTTP: sequential latency,
//! session_info throughput, memory per idle session, rooms (warm fs_read and run_command, a new
//! user's cold first call, memory per running room), an upstream MCP server's proxy overhead
//! and cold start (see [`upstream`]), and `code_execute` on a Jupyter kernel against
//! jupyter_client driving one directly (see [`jupyter`]), one user's latency while another
//! floods the hub (see [`flood`]), what verifying each kind of bearer token costs (see
//! [`tokens`]), and then, on a hub of its own, a thousand live rooms (see
//! [`scale`]). It drives the hub only from outside, through its CLI and HTTP, so it links none
//! of the hub's crates. It must never touch the user's DATA_DIR or another hub, and never
//! report figures built from failed requests: any non-200, JSON-RPC error or tool error aborts
//! the run.

mod flood;
mod jupyter;
mod oauth;
mod scale;
mod tokens;
mod upstream;

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Users given a running room for the memory-per-room figure (the warm-room user and the
    /// cold-room users count towards it).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// New users whose first call, which starts their room, is timed.
    #[arg(long, default_value_t = 30)]
    pub cold_rooms: usize,
    /// Skip the room figures (for machines without bubblewrap).
    #[arg(long)]
    pub skip_rooms: bool,
    /// Skip the upstream server figures (proxy overhead over a direct stdio call, and the
    /// first call's cold start); they need /usr/bin/python3 and bubblewrap.
    #[arg(long)]
    pub skip_upstream: bool,
    /// Skip the Jupyter figures (`code_execute "1+1"` through the hub against jupyter_client
    /// driving a kernel directly, and the first call's cold start); they need bubblewrap and a
    /// Jupyter venv.
    #[arg(long)]
    pub skip_jupyter: bool,
    /// The Jupyter venv: a prefix with bin/python (carrying ipykernel and jupyter_client) and
    /// share/jupyter/kernels/python3/kernel.json. Default: $LODGE_TEST_PEERS/jupyter when
    /// LODGE_TEST_PEERS is set, else /opt/lodge-test-peers/jupyter (scripts/peers installs it).
    #[arg(long, value_name = "PATH")]
    pub jupyter_venv: Option<PathBuf>,
    /// Sequential code_execute calls per Jupyter warm row (each takes some 5-10 ms in the
    /// kernel itself).
    #[arg(long, default_value_t = 300)]
    pub jupyter_requests: usize,
    /// Users given a live room in the live-rooms section, on a hub of its own (0 skips it).
    #[arg(long, default_value_t = 1000)]
    pub scale_rooms: usize,
    /// Warm calls per run of the live-rooms section (baseline, then all rooms up).
    #[arg(long, default_value_t = 20_000)]
    pub scale_calls: usize,
    /// Skip the flood figures (one user's session_info latency while another floods the hub).
    #[arg(long)]
    pub skip_flood: bool,
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
const TARGET_FS_READ_P50_US: f64 = 1_000.0;
const TARGET_RUN_TRUE_P50_US: f64 = 5_000.0;
const TARGET_COLD_ROOM_P50_US: f64 = 60_000.0;
/// CLI processes (`user add`, `token create`) in flight while provisioning room users.
const PROVISION_CONCURRENCY: usize = 8;
/// Rooms starting at once while filling the hub with running rooms (not timed).
const ROOM_FILL_CONCURRENCY: usize = 4;
/// Where [`ScriptDir`]s go: world-traversable, and not /tmp, which rooms replace with their own
/// (the hub refuses read-only paths below it).
const SCRIPT_PARENT: &str = "/var/tmp";
/// How long the hub may take to stop its rooms and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The file the warm fs_read row reads, and its size.
const ROOM_FILE: &str = "bench/1k.txt";
const ROOM_FILE_BYTES: usize = 1024;
const FIG_FS_READ: &str = "fs_read 1 KiB (warm room)";
const FIG_RUN_TRUE: &str = "run_command \"true\" (warm room)";
const FIG_COLD: &str = "first call of a new user (cold room)";
/// The hub logs warnings, plus the room lifecycle (for its `room started ms=` lines).
const HUB_LOG_FILTER: &str = "warn,lodge_hub::rooms=info";
/// Info lines of the hub kept for the error report.
const RECENT_INFO_LINES: usize = 20;

/// Runs the benchmark and prints its figures. `exe` is the `lodge` binary to benchmark: it is
/// run as `lodge serve` for the private hubs and as `lodge user`/`lodge token` to provision
/// them (the `lodge bench` command passes itself).
pub async fn run(a: BenchArgs, exe: &Path) -> Result<()> {
    check_args(&a)?;
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; take figures from `cargo run --release -p lodge -- bench`"
        );
    }
    let setups = Setups {
        upstream: upstream::Setup::new(&a)?,
        jupyter: jupyter::Setup::new(&a).await?,
    };
    let dir = DataDir::create()?;
    let bars = Bars { hidden: a.json };
    let tokens = provision(&a, &setups, exe, dir.path(), &bars).await?;
    let issuer = tokens::Issuer::start().await?;
    write_config(
        dir.path(),
        &[
            setups.upstream.config()?,
            setups.jupyter.config()?,
            flood::config(),
            issuer.config(),
        ],
    )?;
    let hub = HubProcess::spawn(exe, dir, &hub_env(&a)).await?;
    let result = measure(&a, &hub, &tokens, &setups, &issuer, &bars).await;
    if result.is_err() {
        hub.log.print_recent_info();
    }
    hub.stop().await;
    let mut report = result?;
    report.scale = scale::run(&a, exe, &bars)
        .await
        .context("live-rooms figures (pass --scale-rooms 0 to leave them out)")?;
    report.targets.extend(scale::targets(report.scale.as_ref()));
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
        a.scale_rooms == 0 || a.scale_calls > 0,
        "--scale-calls must be at least 1"
    );
    ensure!(
        a.skip_jupyter || a.jupyter_requests > 0,
        "--jupyter-requests must be at least 1"
    );
    ensure!(
        !a.concurrency.is_empty() && a.concurrency.iter().all(|&c| c > 0),
        "--concurrency needs levels of at least 1, such as 1,16,256"
    );
    if !a.skip_rooms {
        ensure!(a.cold_rooms > 0, "--cold-rooms must be at least 1");
        ensure!(
            a.rooms > a.cold_rooms,
            "--rooms must exceed --cold-rooms (one more user holds the warm room)"
        );
    }
    Ok(())
}

/// Settings for the hub under test: room slots for every bench room, no culling during the
/// run, and room uids of its own (RLIMIT_NPROC counts per uid, so rooms of another hub on this
/// machine must not share them).
fn hub_env(a: &BenchArgs) -> Vec<(&'static str, String)> {
    vec![
        ("LODGE_SESSIONS_MAX_PER_USER", "1000000".to_owned()),
        (
            "LODGE_ROOMS_MAX_USERS_ACTIVE",
            (a.rooms + 8 + upstream::USERS + jupyter::USERS)
                .max(200)
                .to_string(),
        ),
        ("LODGE_ROOMS_IDLE_TIMEOUT", "24h".to_owned()),
        ("LODGE_ROOMS_UID_BASE", bench_uid_base(0).to_string()),
    ]
}

/// Room uids for the bench's hub number `hub` (0 or 1) of this process: 10,000 per hub, below
/// 2^31 (bwrap cannot map larger uids), apart from the default (1.5e9) and the tests'.
fn bench_uid_base(hub: u32) -> u32 {
    1_600_000_000 + ((std::process::id() % 25_000) * 2 + hub) * 10_000
}

/// Runs the phases, one at a time. Memory comes first: later phases leave freed heap in the
/// hub's RSS, which new sessions would reuse unseen. Rooms come next for the same reason (their
/// figure includes the hub's RSS growth); once started they sit idle through the later phases.
/// Bulk sessions (memory phase, initialize row) belong to their own user, so the measured
/// user's session_info reply (it lists up to 20 sessions) stays the same size in every row.
/// The upstream and Jupyter sections follow the rooms (whose running-room count they would
/// change); their rooms, instances and kernels then idle too.
async fn measure(
    a: &BenchArgs,
    hub: &HubProcess,
    tokens: &Tokens,
    setups: &Setups,
    issuer: &tokens::Issuer,
    bars: &Bars,
) -> Result<Report> {
    let max_conc = a.concurrency.iter().copied().max().unwrap_or(1);
    let client = Arc::new(Client::new(&hub.base, &tokens.bench, max_conc)?);
    let bulk = Arc::new(Client::new(&hub.base, &tokens.bulk, MEMORY_CONCURRENCY)?);
    let memory = memory_run(a, &bulk, hub.pid, bars).await?;
    let rooms = match &tokens.rooms {
        Some(t) => Some(
            rooms_run(a, hub, &bulk, t, bars)
                .await
                .context("room figures (pass --skip-rooms to leave them out)")?,
        ),
        None => None,
    };
    let upstream = upstream::run(a, &setups.upstream, &bulk, &tokens.upstream, bars)
        .await
        .context("upstream server figures (pass --skip-upstream to leave them out)")?;
    let jupyter = jupyter::run(a, &setups.jupyter, &bulk, &tokens.jupyter, bars)
        .await
        .context("Jupyter figures (pass --skip-jupyter to leave them out)")?;
    let mut latency = latency_rows(a, &client, &bulk, bars).await?;
    if let Some(r) = &rooms {
        let base = latency.first().map_or(f64::NAN, |h| h.stats.p50_us);
        latency.extend(r.rows.iter().map(|&(figure, stats)| Row {
            figure,
            ratio_vs_health_p50: stats.p50_us / base,
            stats,
        }));
    }
    let verification = tokens::run(a, issuer, hub, &client, bars)
        .await
        .context("token verification figures")?;
    let mut throughput = Vec::new();
    for &c in &a.concurrency {
        throughput.push(throughput_run(a, &client, c, bars).await?);
    }
    let flood = flood::run(a, hub, bars)
        .await
        .context("flood figures (pass --skip-flood to leave them out)")?;
    let mut targets = targets(&latency, memory.as_ref());
    targets.extend(upstream::target(upstream.as_ref()));
    Ok(Report {
        build: build_kind(),
        requests: a.requests,
        warmup: a.warmup,
        throughput_seconds: a.seconds,
        latency,
        throughput,
        memory,
        rooms: rooms.map(|r| r.report),
        upstream,
        jupyter,
        scale: None,
        flood,
        verification,
        targets,
        hub_log_lines: hub.log.warnings.load(Ordering::Relaxed),
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

/// Whether and how the upstream and Jupyter sections run.
struct Setups {
    upstream: upstream::Setup,
    jupyter: jupyter::Setup,
}

/// A section's part of the bench hub's config file, DATA_DIR/lodge.toml (the hub is otherwise
/// configured by environment, which cannot declare servers or kernel paths).
#[derive(Default)]
struct ConfigPart {
    /// Its entries of `[rooms] read_only_paths`: [`write_config`] writes the one `[rooms]`
    /// table of all sections (TOML allows no second).
    read_only_paths: Vec<PathBuf>,
    /// Tables of its own, as TOML text.
    tables: String,
}

/// Writes DATA_DIR/lodge.toml from the sections' parts; no file when they add nothing.
fn write_config(data_dir: &Path, parts: &[ConfigPart]) -> Result<()> {
    let paths = parts
        .iter()
        .flat_map(|p| &p.read_only_paths)
        .map(|p| toml_string(p))
        .collect::<Result<Vec<_>>>()?;
    if paths.is_empty() && parts.iter().all(|p| p.tables.is_empty()) {
        return Ok(());
    }
    let mut text = "# Written by lodge bench.\n".to_owned();
    if !paths.is_empty() {
        text += &format!("[rooms]\nread_only_paths = [{}]\n", paths.join(", "));
    }
    for part in parts.iter().filter(|p| !p.tables.is_empty()) {
        text.push('\n');
        text += &part.tables;
    }
    let path = data_dir.join("lodge.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `path` as a TOML basic string (JSON's string escapes are valid TOML ones).
fn toml_string(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    Ok(serde_json::to_string(s)?)
}

/// A world-readable directory holding one script embedded in the binary; removed when dropped.
/// It lies in [`SCRIPT_PARENT`], so rooms (which run as other uids) can be given it read-only.
struct ScriptDir {
    dir: PathBuf,
    script: PathBuf,
}

impl ScriptDir {
    /// `SCRIPT_PARENT/lodge-bench-TAG-PID/FILE`, holding `source`.
    fn create(tag: &str, file: &str, source: &str) -> Result<Self> {
        let dir =
            Path::new(SCRIPT_PARENT).join(format!("lodge-bench-{tag}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot clear stale {}", dir.display()))?;
        }
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let made = Self {
            script: dir.join(file),
            dir,
        };
        // Explicit modes: the umask must not close them to the rooms' uids.
        std::fs::set_permissions(&made.dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot open {} to rooms", made.dir.display()))?;
        std::fs::write(&made.script, source)
            .with_context(|| format!("cannot write {}", made.script.display()))?;
        std::fs::set_permissions(&made.script, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot open {} to rooms", made.script.display()))?;
        Ok(made)
    }
}

impl Drop for ScriptDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
        // A hub that did not stop cleanly leaves its rooms' workspace volumes mounted here:
        // unmount them first, so removal never walks into (or trips over) a mounted volume.
        unmount_below(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lazily unmounts everything mounted below `dir` (quota volumes of rooms).
fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    for line in info.lines() {
        // Field 5 is the mount point, with spaces and the like escaped as octal (\040).
        if let Some(mount_point) = line.split(' ').nth(4)
            && Path::new(mount_point).starts_with(&dir)
            && Path::new(mount_point) != dir
        {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(mount_point)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `lodge --data-dir DIR --log-level FILTER …`, shielded from the caller's config, `LODGE_*`
/// overrides and log filter.
fn lodge_command(exe: &Path, dir: &Path, log_filter: &str) -> Command {
    let mut c = Command::new(exe);
    c.arg("--data-dir")
        .arg(dir)
        .args(["--log-level", log_filter])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LODGE_") {
            c.env_remove(key);
        }
    }
    c
}

/// Runs one CLI command that must succeed; returns its stdout.
async fn lodge_cli(exe: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let out = lodge_command(exe, dir, "warn")
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

/// Tokens of the bench users: `bench` runs session_info, `bench-bulk` holds bulk sessions,
/// (unless --skip-rooms) one user per room plus a metrics reader, and the upstream and Jupyter
/// sections' users (none for a section that does not run).
struct Tokens {
    bench: String,
    bulk: String,
    rooms: Option<RoomTokens>,
    upstream: Vec<String>,
    jupyter: Vec<String>,
}

struct RoomTokens {
    /// `bench-metrics`, an admin whose token has scope read:metrics only.
    metrics: String,
    /// `bench-room-NNN` for NNN in 0..--rooms: 0 holds the warm room, 1..=--cold-rooms are
    /// timed cold, the rest only fill the hub with rooms.
    users: Vec<String>,
}

/// Creates the users through the CLI before the hub starts, so provisioning never overlaps a
/// measurement.
async fn provision(
    a: &BenchArgs,
    setups: &Setups,
    exe: &Path,
    dir: &Path,
    bars: &Bars,
) -> Result<Tokens> {
    let bench = user_with_token(exe, dir, "bench", &[]).await?;
    let bulk = user_with_token(exe, dir, "bench-bulk", &[]).await?;
    let rooms = if a.skip_rooms {
        None
    } else {
        lodge_cli(exe, dir, &["user", "add", "bench-metrics", "--admin"]).await?;
        let metrics =
            create_token(exe, dir, "bench-metrics", &["--scopes", "read:metrics"]).await?;
        let bar = bars.counted(a.rooms, "room users (user add, token create)");
        let (exe, dir) = (exe.to_owned(), dir.to_owned());
        let users = bounded(a.rooms, PROVISION_CONCURRENCY, &bar, move |i| {
            let (exe, dir) = (exe.clone(), dir.clone());
            async move { user_with_token(&exe, &dir, &room_user(i), &[]).await }
        })
        .await?;
        bar.finish_and_clear();
        Some(RoomTokens { metrics, users })
    };
    let upstream = provision_section(
        exe,
        dir,
        bars,
        setups.upstream.users(),
        upstream::user_name,
        "upstream users (user add, token create)",
    )
    .await?;
    let jupyter = provision_section(
        exe,
        dir,
        bars,
        setups.jupyter.users(),
        jupyter::user_name,
        "Jupyter users (user add, token create)",
    )
    .await?;
    Ok(Tokens {
        bench,
        bulk,
        rooms,
        upstream,
        jupyter,
    })
}

/// Creates a section's `n` users, `name(0)` to `name(n - 1)` (no secrets: the sections need
/// none); returns their tokens.
async fn provision_section(
    exe: &Path,
    dir: &Path,
    bars: &Bars,
    n: usize,
    name: fn(usize) -> String,
    msg: &str,
) -> Result<Vec<String>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let bar = bars.counted(n, msg);
    let (exe, dir) = (exe.to_owned(), dir.to_owned());
    let tokens = bounded(n, PROVISION_CONCURRENCY, &bar, move |i| {
        let (exe, dir) = (exe.clone(), dir.clone());
        async move { user_with_token(&exe, &dir, &name(i), &[]).await }
    })
    .await?;
    bar.finish_and_clear();
    Ok(tokens)
}

fn room_user(i: usize) -> String {
    format!("bench-room-{i:03}")
}

/// Creates user `name` (with `extra` flags) and returns a fresh token of theirs.
async fn user_with_token(exe: &Path, dir: &Path, name: &str, extra: &[&str]) -> Result<String> {
    let mut args = vec!["user", "add", name];
    args.extend_from_slice(extra);
    lodge_cli(exe, dir, &args).await?;
    create_token(exe, dir, name, &[]).await
}

/// A fresh token of user `name`, created with `extra` flags.
async fn create_token(exe: &Path, dir: &Path, name: &str, extra: &[&str]) -> Result<String> {
    let mut args = vec!["token", "create", name];
    args.extend_from_slice(extra);
    let token = lodge_cli(exe, dir, &args).await?;
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
    log: HubLog,
    /// The binary it runs, so that a section adding users to this hub runs the same one.
    exe: PathBuf,
    _dir: DataDir,
}

impl HubProcess {
    async fn spawn(exe: &Path, dir: DataDir, env: &[(&str, String)]) -> Result<Self> {
        let mut child = lodge_command(exe, dir.path(), HUB_LOG_FILTER)
            .args(["serve", "--bind", "127.0.0.1:0"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start `lodge serve`")?;
        let pid = child.id().context("`lodge serve` exited at once")?;
        let stdout = child.stdout.take().context("no stdout pipe to the hub")?;
        let stderr = child.stderr.take().context("no stderr pipe to the hub")?;
        let log = forward_log(stderr);
        let addr = tokio::time::timeout(READY_TIMEOUT, ready_addr(stdout))
            .await
            .context("the hub did not print its ready line within 30 s")??;
        Ok(Self {
            child,
            pid,
            base: format!("http://{addr}"),
            log,
            exe: exe.to_owned(),
            _dir: dir,
        })
    }

    /// Stops the hub gracefully (SIGTERM), so it stops its rooms, removes their cgroups and
    /// unmounts their volumes; kills it if it takes longer than [`STOP_TIMEOUT`].
    async fn stop(mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
                .await
                .is_err()
            {
                eprintln!("note: the hub did not stop within 30 s of SIGTERM; killing it");
            }
        }
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

/// What the bench takes from the hub's log.
#[derive(Clone, Default)]
struct HubLog {
    /// Warning and error lines so far (forwarded to our stderr).
    warnings: Arc<AtomicUsize>,
    /// `ms=` of every `room started` line so far, in order: the hub's own room start time
    /// (spawn to the agent's hello).
    room_starts_ms: Arc<Mutex<Vec<u64>>>,
    /// The last info lines (room lifecycle and the agents' diagnostics), shown when the run
    /// fails: a room that cannot start says why only there.
    recent_info: Arc<Mutex<VecDeque<String>>>,
}

impl HubLog {
    fn room_starts(&self) -> Vec<u64> {
        self.room_starts_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn print_recent_info(&self) {
        let recent = self.recent_info.lock().unwrap_or_else(|p| p.into_inner());
        if !recent.is_empty() {
            eprintln!("the hub's last info lines:");
            for line in recent.iter() {
                eprintln!("hub: {line}");
            }
        }
    }
}

/// Forwards the hub's warnings and errors to our stderr and counts them, so the report can say
/// whether the hub complained (slow SQLite statements, say) while it was measured. Info lines
/// (the room lifecycle) are only read for their `room started … ms=N`.
fn forward_log(stderr: ChildStderr) -> HubLog {
    let log = HubLog::default();
    let out = log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let plain = lodge_core::text::without_ansi(&line).into_owned();
            if plain.split_whitespace().nth(1) == Some("INFO") {
                if let Some(ms) = room_started_ms(&plain) {
                    out.room_starts_ms
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(ms);
                }
                let mut recent = out.recent_info.lock().unwrap_or_else(|p| p.into_inner());
                if recent.len() == RECENT_INFO_LINES {
                    recent.pop_front();
                }
                recent.push_back(plain);
                continue;
            }
            out.warnings.fetch_add(1, Ordering::Relaxed);
            eprintln!("hub: {plain}");
        }
    });
    log
}

/// `N` of a `… room started user=… ms=N` log line.
fn room_started_ms(line: &str) -> Option<u64> {
    let (_, fields) = line.split_once("room started")?;
    let rest = fields.split(" ms=").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
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

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    health: reqwest::Url,
    mcp: reqwest::Url,
    metrics: reqwest::Url,
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
            metrics: url("/api/metrics")?,
            auth: format!("Bearer {token}"),
        })
    }

    /// The same hub and connection pool, acting for another token.
    fn for_token(&self, token: &str) -> Self {
        Self {
            http: self.http.clone(),
            health: self.health.clone(),
            mcp: self.mcp.clone(),
            metrics: self.metrics.clone(),
            auth: format!("Bearer {token}"),
        }
    }

    /// One `tools/call` (a body from [`tool_body`]) in session `sid`; returns the reply, which
    /// must be a result that is not a tool error.
    async fn tool(&self, sid: &str, body: &str, what: &str) -> Result<String> {
        let req = self.mcp_post(body.to_owned()).header(SESSION_HEADER, sid);
        let r = req.send().await.with_context(|| what.to_owned())?;
        let body = expect_ok(r, what).await?;
        expect_result(&body, what)?;
        Ok(body)
    }

    /// Gauge `name` (no labels) from /api/metrics.
    async fn gauge(&self, name: &str) -> Result<f64> {
        let what = "GET /api/metrics";
        let req = self.http.get(self.metrics.clone());
        let r = req.header(reqwest::header::AUTHORIZATION, &self.auth);
        let text = expect_ok(r.send().await.context(what)?, what).await?;
        text.lines()
            .find_map(|l| {
                let value = l.strip_prefix(name)?.strip_prefix(' ')?;
                value.trim().parse().ok()
            })
            .with_context(|| format!("{what}: no gauge {name}"))
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
        let r = self.stateless_session_info().send().await.context(what)?;
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

    /// A 2026-07-28 `tools/call` of session_info, with the headers that revision wants.
    fn stateless_session_info(&self) -> reqwest::RequestBuilder {
        self.mcp_post(STATELESS_BODY)
            .header("mcp-protocol-version", MODERN)
            .header("mcp-method", "tools/call")
            .header("mcp-name", "session_info")
    }

    fn mcp_post(&self, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
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

/// The `structuredContent` of a tool reply (Null when absent or unreadable).
fn structured(body: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|mut v| {
            v.pointer_mut("/result/structuredContent")
                .map(serde_json::Value::take)
        })
        .unwrap_or(serde_json::Value::Null)
}

/// A `tools/call` request body.
fn tool_body(name: &str, arguments: serde_json::Value) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": name, "arguments": arguments}})
    .to_string()
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

    /// A spinner for one step that counts nothing, with its elapsed time.
    fn spinner(&self, msg: &str) -> ProgressBar {
        let style = ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = ProgressBar::with_draw_target(None, self.target())
            .with_style(style)
            .with_message(msg.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
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
    f: F,
) -> Result<(&'static str, Stats)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    timed_calls(a.warmup, a.requests, bars, figure, f).await
}

/// Makes `warmup` uncounted calls of `f`, then times `n` sequential ones.
async fn timed_calls<F, Fut>(
    warmup: usize,
    n: usize,
    bars: &Bars,
    figure: &'static str,
    mut f: F,
) -> Result<(&'static str, Stats)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    for _ in 0..warmup {
        f().await?;
    }
    let bar = bars.counted(n, figure);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
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

/// Runs `f(i)` for every `i` in `0..n`, at most `conc` at once, ticking `bar` for each;
/// returns the results in index order. The first error aborts.
async fn bounded<T, F, Fut>(n: usize, conc: usize, bar: &ProgressBar, f: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..conc.clamp(1, n.max(1)) {
        let (f, next, bar) = (f.clone(), next.clone(), bar.clone());
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                done.push((i, f(i).await?));
                bar.inc(1);
            }
            anyhow::Ok(done)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.context("a bench task panicked")??);
    }
    all.sort_unstable_by_key(|&(i, _)| i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// One room user of the bench, with an open session.
struct RoomUser {
    client: Client,
    sid: String,
}

/// Whether and how a section (upstream, Jupyter) runs.
pub(crate) enum Setup<T> {
    /// Skipped by its flag.
    Off,
    /// It cannot run on this machine; the report says why instead of giving figures.
    Unavailable(String),
    Ready(T),
}

impl<T> Setup<T> {
    /// Users to provision: `n` when the section runs.
    fn users_if_ready(&self, n: usize) -> usize {
        match self {
            Self::Ready(_) => n,
            Self::Off | Self::Unavailable(_) => 0,
        }
    }

    /// What the section works with, or what the report says instead (nothing when skipped).
    fn ready<F>(&self) -> Result<&T, Option<Section<F>>> {
        match self {
            Self::Off => Err(None),
            Self::Unavailable(why) => Err(Some(Section::Skipped {
                skipped: why.clone(),
            })),
            Self::Ready(t) => Ok(t),
        }
    }
}

/// A section in the report: its figures, or why it did not run.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Section<F> {
    Skipped { skipped: String },
    Measured(F),
}

impl<F> Section<F> {
    /// The figures to print; None once the line `NAME: skipped: WHY` is printed instead.
    fn measured_or_print_skipped(&self, name: &str) -> Option<&F> {
        match self {
            Self::Skipped { skipped } => {
                println!("{name}: skipped: {skipped}");
                None
            }
            Self::Measured(f) => Some(f),
        }
    }
}

/// Via the hub minus direct, per statistic, and via the hub over direct.
#[derive(Serialize)]
struct Overhead {
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    ratio_p50: f64,
    ratio_p99: f64,
    ratio_mean: f64,
}

impl Overhead {
    fn between(direct: &Stats, via_hub: &Stats) -> Overhead {
        Overhead {
            p50_us: via_hub.p50_us - direct.p50_us,
            p99_us: via_hub.p99_us - direct.p99_us,
            mean_us: via_hub.mean_us - direct.mean_us,
            ratio_p50: via_hub.p50_us / direct.p50_us,
            ratio_p99: via_hub.p99_us / direct.p99_us,
            ratio_mean: via_hub.mean_us / direct.mean_us,
        }
    }
}

/// What a section's first calls are: `body` on tool `tool`, with `check` judging each reply
/// (outside the timing), and the labels of the two cold rows.
struct FirstCalls<'a> {
    tool: &'static str,
    body: &'a str,
    check: &'a dyn Fn(&str) -> Result<()>,
    room_warm: &'static str,
    new_user: &'static str,
}

/// A section's users with a session each (`tokens` must number `expected`).
async fn section_users(
    base: &Client,
    tokens: &[String],
    expected: usize,
    what: &str,
) -> Result<Vec<RoomUser>> {
    ensure!(
        tokens.len() == expected,
        "{} {what} users were provisioned, not {expected}",
        tokens.len()
    );
    let mut users = Vec::with_capacity(tokens.len());
    for t in tokens {
        let client = base.for_token(t);
        let sid = client.initialize().await?;
        users.push(RoomUser { client, sid });
    }
    Ok(users)
}

/// The two cold figures of a section: the first call of each of `room_warm` (whose room is
/// started first with `run_command "true"`), then the first call of all of each of `new`.
async fn cold_rows(
    room_warm: &[RoomUser],
    new: &[RoomUser],
    calls: &FirstCalls<'_>,
    bars: &Bars,
) -> Result<(Stats, Stats)> {
    let run_true = tool_body("run_command", serde_json::json!({"command": "true"}));
    let bar = bars.counted(room_warm.len(), calls.room_warm);
    let mut samples = Vec::with_capacity(room_warm.len());
    for u in room_warm {
        check_exit_0(&u.run_true(&run_true).await?)?;
        samples.push(first_call(u, calls).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let warm = Stats::of(samples)?;
    let bar = bars.counted(new.len(), calls.new_user);
    let mut samples = Vec::with_capacity(new.len());
    for u in new {
        samples.push(first_call(u, calls).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((warm, Stats::of(samples)?))
}

/// Times `u`'s first call of the section (which starts what it needs); checks the reply after.
async fn first_call(u: &RoomUser, calls: &FirstCalls<'_>) -> Result<Duration> {
    let t = Instant::now();
    let reply = u.client.tool(&u.sid, calls.body, calls.tool).await?;
    let took = t.elapsed();
    (calls.check)(&reply)?;
    Ok(took)
}

impl RoomUser {
    /// `run_command "true"`; [`check_exit_0`] checks the reply, outside any timing.
    async fn run_true(&self, body: &str) -> Result<String> {
        self.client
            .tool(&self.sid, body, "run_command \"true\"")
            .await
    }
}

fn check_exit_0(reply: &str) -> Result<()> {
    let code = structured(reply)["exit_code"].as_i64();
    ensure!(
        code == Some(0),
        "run_command \"true\" did not exit 0: {}",
        clip(reply)
    );
    Ok(())
}

/// What the room phase measured: latency rows (for the table) and the rest of the report.
struct RoomFigures {
    rows: Vec<(&'static str, Stats)>,
    report: RoomsReport,
}

/// The room phase, each step alone on the hub: sessions for every room user; the warm rows on
/// the first user's room (the only one running); the cold first calls, one user after the
/// other; then more rooms up to `--rooms`, and their memory once they all idle.
async fn rooms_run(
    a: &BenchArgs,
    hub: &HubProcess,
    base: &Client,
    tokens: &RoomTokens,
    bars: &Bars,
) -> Result<RoomFigures> {
    let users = open_sessions_of(
        base,
        &tokens.users,
        bars,
        "room users' sessions (initialize)",
    )
    .await?;
    let users: Vec<Arc<RoomUser>> = users.into_iter().map(Arc::new).collect();
    let (warm, rest) = users
        .split_first()
        .context("no room users were provisioned")?;
    let (cold, fill) = rest.split_at(a.cold_rooms.min(rest.len()));
    let proc_ok = Path::new("/proc/self/smaps_rollup").exists();
    let rss_before = if proc_ok {
        Some(rss_kb(hub.pid)?)
    } else {
        None
    };

    let mut rows = warm_rows(a, warm, bars).await?;

    let run_true = tool_body("run_command", serde_json::json!({"command": "true"}));
    let starts_before = hub.log.room_starts().len();
    let bar = bars.counted(cold.len(), FIG_COLD);
    let mut samples = Vec::with_capacity(cold.len());
    for u in cold {
        let t = Instant::now();
        let reply = u.run_true(&run_true).await?;
        samples.push(t.elapsed());
        check_exit_0(&reply)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    rows.push((FIG_COLD, Stats::of(samples)?));
    let hub_starts = cold_starts_logged(&hub.log, starts_before, cold.len()).await;

    let bar = bars.counted(fill.len(), "more rooms (run_command \"true\")");
    let fill: Arc<Vec<Arc<RoomUser>>> = Arc::new(fill.to_vec());
    bounded(fill.len(), ROOM_FILL_CONCURRENCY, &bar, {
        let (fill, run_true) = (fill.clone(), run_true.clone());
        move |i| {
            let (u, body) = (fill[i].clone(), run_true.clone());
            async move { check_exit_0(&u.run_true(&body).await?) }
        }
    })
    .await?;
    bar.finish_and_clear();

    let metrics = base.for_token(&tokens.metrics);
    let running = metrics.gauge("lodge_rooms_running").await?;
    ensure!(
        running as usize == users.len(),
        "lodge_rooms_running is {running} after starting {} rooms",
        users.len()
    );
    let memory = match rss_before {
        Some(before) => {
            tokio::time::sleep(SETTLE).await;
            Some(room_memory(hub.pid, users.len(), before)?)
        }
        None => {
            eprintln!("note: no /proc/PID/smaps_rollup here, so no memory-per-room figure");
            None
        }
    };
    Ok(RoomFigures {
        rows,
        report: RoomsReport {
            rooms: users.len(),
            cold_users: cold.len(),
            hub_room_start: hub_starts,
            memory,
        },
    })
}

/// A [`RoomUser`] for each token, their sessions opened [`MEMORY_CONCURRENCY`] at a time.
async fn open_sessions_of(
    base: &Client,
    tokens: &[String],
    bars: &Bars,
    msg: &str,
) -> Result<Vec<RoomUser>> {
    let bar = bars.counted(tokens.len(), msg);
    let clients: Arc<Vec<Client>> = Arc::new(tokens.iter().map(|t| base.for_token(t)).collect());
    let sids = bounded(clients.len(), MEMORY_CONCURRENCY, &bar, {
        let clients = clients.clone();
        move |i| {
            let clients = clients.clone();
            async move { clients[i].initialize().await }
        }
    })
    .await?;
    bar.finish_and_clear();
    Ok(sids
        .into_iter()
        .zip(tokens)
        .map(|(sid, t)| RoomUser {
            client: base.for_token(t),
            sid,
        })
        .collect())
}

/// The warm rows, on `u`'s room: writing the file starts the room (untimed), then fs_read and
/// run_command are warmed up and timed like the other rows.
async fn warm_rows(a: &BenchArgs, u: &RoomUser, bars: &Bars) -> Result<Vec<(&'static str, Stats)>> {
    let mut content = "x".repeat(ROOM_FILE_BYTES - 1);
    content.push('\n');
    let write = tool_body(
        "fs_write",
        serde_json::json!({"path": ROOM_FILE, "content": content}),
    );
    u.client.tool(&u.sid, &write, "fs_write").await?;
    let read = tool_body("fs_read", serde_json::json!({"path": ROOM_FILE}));
    let first = u.client.tool(&u.sid, &read, "fs_read").await?;
    let got = structured(&first)["content"].as_str().map_or(0, str::len);
    ensure!(
        got == ROOM_FILE_BYTES,
        "fs_read returned {got} bytes of {ROOM_FILE}, not {ROOM_FILE_BYTES}: {}",
        clip(&first)
    );
    let fs_read = timed_row(a, bars, FIG_FS_READ, || async {
        u.client.tool(&u.sid, &read, "fs_read").await.map(drop)
    })
    .await?;
    let run_true = tool_body("run_command", serde_json::json!({"command": "true"}));
    check_exit_0(&u.run_true(&run_true).await?)?;
    let run = timed_row(a, bars, FIG_RUN_TRUE, || async {
        u.run_true(&run_true).await.map(drop)
    })
    .await?;
    Ok(vec![fs_read, run])
}

/// The hub's own start times of the `n` rooms started after the first `before` (from its
/// `room started ms=` lines, which may reach us a little after the replies). `None` when the
/// lines did not all arrive.
async fn cold_starts_logged(log: &HubLog, before: usize, n: usize) -> Option<Stats> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let starts = log.room_starts();
        if starts.len() >= before + n {
            let ms = starts.get(before..before + n)?;
            let samples = ms.iter().map(|&m| Duration::from_millis(m)).collect();
            return Stats::of(samples).ok();
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Memory of the hub's `rooms` running rooms: PSS of every process below the hub, the rooms'
/// cgroups, and the hub's own RSS growth since `rss_before`.
fn room_memory(hub: u32, rooms: usize, rss_before: u64) -> Result<RoomMemory> {
    let procs = descendants(hub)?;
    let mut pss = 0;
    for &pid in &procs {
        pss += pss_kb(pid)?;
    }
    let rss_after = rss_kb(hub)?;
    let cgroups = room_cgroups(hub, &procs.iter().copied().collect());
    let per_room = |kb: f64| kb / rooms as f64;
    Ok(RoomMemory {
        rooms,
        processes: procs.len(),
        pss_kb: pss,
        pss_kb_per_room: per_room(pss as f64),
        cgroups: cgroups.as_ref().map_or(0, |c| c.groups),
        cgroup_usage_kb_per_room: cgroups.as_ref().map(|c| per_room(c.usage_kb as f64)),
        cgroup_cache_kb_per_room: cgroups
            .as_ref()
            .and_then(|c| c.cache_kb)
            .map(|k| per_room(k as f64)),
        hub_rss_before_kb: rss_before,
        hub_rss_after_kb: rss_after,
        hub_rss_kb_per_room: per_room(rss_after as f64 - rss_before as f64),
    })
}

/// Every live descendant of `root` (not `root` itself), from the ppid in /proc/*/stat.
fn descendants(root: u32) -> Result<Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Gone since the listing: not ours to count.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            queue.push(c);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Proportional set size of `pid` in kB (0 for a process gone or without memory, a zombie).
fn pss_kb(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) if e.raw_os_error() == Some(3) => return Ok(0), // ESRCH: exited meanwhile
        Err(e) => return Err(e).with_context(|| format!("cannot read {path}")),
    };
    let Some(line) = text.lines().find_map(|l| l.strip_prefix("Pss:")) else {
        return Ok(0);
    };
    let kb = line.trim().trim_end_matches("kB").trim();
    kb.parse()
        .with_context(|| format!("cannot parse Pss {kb:?} in {path}"))
}

/// The memory use of the rooms' cgroups (`lodge-*` below the hub's memory cgroup, v1 or v2),
/// counting only those holding one of `ours` (other hubs may keep rooms beside them).
struct CgroupUsage {
    groups: usize,
    usage_kb: u64,
    /// Page cache included in `usage_kb` (v1 `total_cache`, v2 `file`).
    cache_kb: Option<u64>,
}

fn room_cgroups(hub: u32, ours: &HashSet<u32>) -> Option<CgroupUsage> {
    let own = std::fs::read_to_string(format!("/proc/{hub}/cgroup")).ok()?;
    let mut v1 = None;
    let mut v2 = None;
    for line in own.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(ctl), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if ctl.split(',').any(|c| c == "memory") {
            v1 = Some(Path::new("/sys/fs/cgroup/memory").join(path));
        } else if id == "0" && ctl.is_empty() {
            v2 = Some(Path::new("/sys/fs/cgroup").join(path));
        }
    }
    let (dirs, usage_file, cache_key) = match (v1, v2) {
        (Some(d), _) => (vec![d], "memory.usage_in_bytes", "total_cache"),
        // v2 rooms go below the hub's cgroup, or below its parent when the hub sits in a leaf.
        (None, Some(d)) => {
            let parent = d.parent().map(Path::to_path_buf);
            (
                std::iter::once(d).chain(parent).collect(),
                "memory.current",
                "file",
            )
        }
        (None, None) => return None,
    };
    let mut found = CgroupUsage {
        groups: 0,
        usage_kb: 0,
        cache_kb: Some(0),
    };
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("lodge-") {
                continue;
            }
            let cg = entry.path();
            let read = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap_or_default();
            let mine = read("cgroup.procs")
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .any(|p| ours.contains(&p));
            let Ok(usage) = read(usage_file).trim().parse::<u64>() else {
                continue;
            };
            if !mine {
                continue;
            }
            found.groups += 1;
            found.usage_kb += usage / 1024;
            let cache = read("memory.stat").lines().find_map(|l| {
                let value = l.strip_prefix(cache_key)?.strip_prefix(' ')?;
                value.trim().parse::<u64>().ok()
            });
            found.cache_kb = match (found.cache_kb, cache) {
                (Some(sum), Some(c)) => Some(sum + c / 1024),
                _ => None,
            };
        }
        if found.groups > 0 {
            break;
        }
    }
    (found.groups > 0).then_some(found)
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
struct RoomsReport {
    /// Rooms running at the end of the phase.
    rooms: usize,
    /// Users whose first call was timed (the cold row).
    cold_users: usize,
    /// The hub's own start time of those cold rooms (its `room started ms=` log lines).
    hub_room_start: Option<Stats>,
    memory: Option<RoomMemory>,
}

#[derive(Serialize)]
struct RoomMemory {
    rooms: usize,
    /// Processes below the hub (per room: bwrap, the sandbox's init, the agent).
    processes: usize,
    pss_kb: u64,
    pss_kb_per_room: f64,
    cgroups: usize,
    /// The rooms' cgroup memory use, page cache included.
    cgroup_usage_kb_per_room: Option<f64>,
    cgroup_cache_kb_per_room: Option<f64>,
    hub_rss_before_kb: u64,
    hub_rss_after_kb: u64,
    hub_rss_kb_per_room: f64,
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
    rooms: Option<RoomsReport>,
    upstream: Option<upstream::Section>,
    jupyter: Option<jupyter::Section>,
    scale: Option<scale::Report>,
    flood: Option<flood::Figures>,
    verification: tokens::Section,
    targets: Vec<Target>,
    hub_log_lines: usize,
}

impl Target {
    fn new(name: &'static str, value: f64, limit: f64, unit: &'static str) -> Self {
        Target {
            name,
            value,
            limit,
            unit,
            met: value <= limit,
        }
    }
}

fn targets(latency: &[Row], memory: Option<&Memory>) -> Vec<Target> {
    let target = Target::new;
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
    let p50 = |figure: &str| {
        latency
            .iter()
            .find(|r| r.figure == figure)
            .map(|r| r.stats.p50_us)
    };
    for (figure, name, limit) in [
        (FIG_FS_READ, "fs_read p50", TARGET_FS_READ_P50_US),
        (FIG_RUN_TRUE, "run_command p50", TARGET_RUN_TRUE_P50_US),
        (FIG_COLD, "cold room p50", TARGET_COLD_ROOM_P50_US),
    ] {
        if let Some(v) = p50(figure) {
            out.push(target(name, v, limit, "us"));
        }
    }
    out
}

/// Three significant digits in µs, ms or s (a difference may be negative).
fn fmt_us(us: f64) -> String {
    let sign = if us < 0.0 { "-" } else { "" };
    let us = us.abs();
    let (v, unit) = if us >= 1e6 {
        (us / 1e6, "s")
    } else if us >= 1e3 {
        (us / 1e3, "ms")
    } else {
        (us, "µs")
    };
    format!("{sign}{} {unit}", sig3(v))
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
    tokens::print(&r.verification);
    println!();
    if let Some(u) = &r.upstream {
        upstream::print(u);
        println!();
    }
    if let Some(j) = &r.jupyter {
        jupyter::print(j);
        println!();
    }
    print_throughput(r);
    println!();
    if let Some(f) = &r.flood {
        flood::print(f);
        println!();
    }
    if let Some(s) = &r.scale {
        scale::print(s);
        println!();
    }
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
    if let Some(rooms) = &r.rooms {
        println!(
            "  (cold room: one first call each of {} new users, run_command \"true\")",
            rooms.cold_users
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

fn print_rooms(r: &RoomsReport) {
    match &r.hub_room_start {
        Some(s) => println!(
            "cold room start inside the hub (spawn to agent hello, its 'room started ms=' log): p50 {}, p99 {}, mean {}",
            fmt_us(s.p50_us),
            fmt_us(s.p99_us),
            fmt_us(s.mean_us)
        ),
        None => println!("cold room start inside the hub: the hub did not log every room start"),
    }
    let Some(m) = &r.memory else { return };
    let cgroup = match (m.cgroup_usage_kb_per_room, m.cgroup_cache_kb_per_room) {
        (Some(u), Some(c)) => format!(
            "cgroup usage {u:.0} KiB incl. {c:.0} KiB page cache ({} cgroups)",
            m.cgroups
        ),
        (Some(u), None) => format!(
            "cgroup usage {u:.0} KiB incl. page cache ({} cgroups)",
            m.cgroups
        ),
        _ => "no room cgroups found".to_owned(),
    };
    println!(
        "memory per running room: {:.0} KiB PSS over {} rooms ({} processes, {:.1} per room), {cgroup}",
        m.pss_kb_per_room,
        m.rooms,
        m.processes,
        m.processes as f64 / m.rooms as f64
    );
    println!(
        "  plus hub RSS {:+.0} KiB per room (RSS {} kB -> {} kB)",
        m.hub_rss_kb_per_room, m.hub_rss_before_kb, m.hub_rss_after_kb
    );
}

fn print_summary(r: &Report) {
    if let Some(m) = &r.memory {
        println!(
            "hub memory per idle session: {:.0} bytes over {} sessions (RSS {} kB -> {} kB)",
            m.bytes_per_session, m.sessions, m.rss_before_kb, m.rss_after_kb
        );
    }
    if let Some(rooms) = &r.rooms {
        print_rooms(rooms);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_room_start_times_from_the_hub_log() {
        let coloured = "\u{1b}[2m2026-11-23T11:56:27.465207Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mlodge_hub::rooms\u{1b}[0m\u{1b}[2m:\u{1b}[0m room started \u{1b}[3muser\u{1b}[0m\u{1b}[2m=\u{1b}[0mbench-room-004 \u{1b}[3mms\u{1b}[0m\u{1b}[2m=\u{1b}[0m68";
        let plain = lodge_core::text::without_ansi(coloured);
        assert_eq!(plain.split_whitespace().nth(1), Some("INFO"));
        assert_eq!(room_started_ms(&plain), Some(68));
        assert_eq!(
            room_started_ms("2026-11-23T11:56:27Z  INFO lodge_hub::rooms: room stopped user=a"),
            None
        );
    }
}
