//! The "live rooms" section (`--scale-rooms`, 1,000 by default): a hub of its own, rooms for
//! that many users started 8 at a time, then warm `fs_read` calls from random users at 32
//! concurrent clients. The baseline is the same warm loop, in the same run, while only the
//! first 32 users' rooms run. Figures: cold-start rate, warm p50/p99 and their ratios to the
//! baseline, hub RSS and descriptors per room, memory per room. It runs after the main hub has
//! stopped, so neither section's rooms weigh on the other's figures.

use super::{
    Bars, BenchArgs, Client, ConfigPart, DataDir, HubProcess, PROVISION_CONCURRENCY, RoomMemory,
    RoomUser, Section, Stats, Target, bounded, create_token, fmt_us, lodge_cli, open_sessions_of,
    room_memory, rss_kb, sig3, structured, tool_body, user_with_token, write_config,
};
use anyhow::{Context as _, Result, ensure};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Concurrent clients of the warm runs.
pub(super) const CLIENTS: usize = 32;
/// Rooms starting at once while filling the hub (the scale review's figure).
const FILL_CONCURRENCY: usize = 8;
/// The per-room quota volume: small, so a thousand images fit on a laptop's disk (a 1 GiB
/// volume's journal alone takes 32 MiB of it).
const DISK: &str = "64MiB";
const FILE: &str = "bench/1k.txt";
const FILE_BYTES: usize = 1024;
const TARGET_WARM_P99_US: f64 = 50_000.0;
const TARGET_FDS_PER_ROOM: f64 = 4.0;

#[derive(Serialize)]
pub(super) struct Figures {
    rooms: usize,
    /// Rooms started per second while filling, `FILL_CONCURRENCY` at a time.
    fill_concurrency: usize,
    fill_seconds: f64,
    cold_starts_per_s: f64,
    /// Each user's first call (`fs_write` of 1 KiB), which starts the room.
    cold_first_call: Stats,
    clients: usize,
    calls: usize,
    /// Warm `fs_read` from random users of the first `CLIENTS` rooms, before the fill.
    baseline: Warm,
    /// The same, from random users of all rooms, every room up.
    all_rooms: Warm,
    ratio_p50: f64,
    ratio_p99: f64,
    /// Descriptors of the hub with the baseline rooms up and the clients connected, then with
    /// all rooms up: their difference over the rooms started between is the per-room figure.
    hub_fds_before: usize,
    hub_fds_after: usize,
    hub_fds_per_room: f64,
    hub_rss_kb: u64,
    memory: Option<RoomMemory>,
}

#[derive(Serialize)]
struct Warm {
    rooms: usize,
    calls_per_s: f64,
    #[serde(flatten)]
    stats: Stats,
}

pub(super) type Report = Section<Figures>;

/// Runs the section unless `--scale-rooms 0`.
pub(super) async fn run(a: &BenchArgs, exe: &Path, bars: &Bars) -> Result<Option<Report>> {
    if a.scale_rooms == 0 {
        return Ok(None);
    }
    if a.skip_rooms {
        return Ok(Some(Section::Skipped {
            skipped: "--skip-rooms".into(),
        }));
    }
    let n = a.scale_rooms;
    let dir = DataDir::create()?;
    // The CLI creates DATA_DIR (private); the config goes in once it exists.
    lodge_cli(
        exe,
        dir.path(),
        &["user", "add", "scale-metrics", "--admin"],
    )
    .await?;
    let profile = ConfigPart {
        // The baseline sends some 200 calls a second per user: the request budget stays out
        // of the way, as in the main bench hub (the flood section measures the budget).
        tables: format!(
            "[profiles.default]\ndisk = \"{DISK}\"\nrequests_per_second = 1000000000\n\
             request_burst = 1000000000\n"
        ),
        ..ConfigPart::default()
    };
    write_config(dir.path(), &[profile])?;
    let metrics = create_token(
        exe,
        dir.path(),
        "scale-metrics",
        &["--scopes", "read:metrics"],
    )
    .await?;
    let bar = bars.counted(n, "live-rooms users (user add, token create)");
    let (e, d) = (exe.to_owned(), dir.path().to_owned());
    let tokens = bounded(n, PROVISION_CONCURRENCY, &bar, move |i| {
        let (e, d) = (e.clone(), d.clone());
        async move { user_with_token(&e, &d, &user_name(i), &[]).await }
    })
    .await?;
    bar.finish_and_clear();
    let env = vec![
        ("LODGE_ROOMS_MAX_USERS_ACTIVE", (n + 8).to_string()),
        ("LODGE_ROOMS_IDLE_TIMEOUT", "24h".to_owned()),
        ("LODGE_ROOMS_UID_BASE", super::bench_uid_base(1).to_string()),
    ];
    let hub = HubProcess::spawn(exe, dir, &env).await?;
    let result = measure(a, &hub, &tokens, &metrics, bars).await;
    if result.is_err() {
        hub.log.print_recent_info();
    }
    let bar = bars.spinner("stopping the live-rooms hub and its rooms");
    hub.stop().await;
    bar.finish_and_clear();
    Ok(Some(Section::Measured(result?)))
}

pub(super) fn user_name(i: usize) -> String {
    format!("scale-{i:04}")
}

async fn measure(
    a: &BenchArgs,
    hub: &HubProcess,
    tokens: &[String],
    metrics: &str,
    bars: &Bars,
) -> Result<Figures> {
    let n = tokens.len();
    let base = Client::new(&hub.base, metrics, CLIENTS)?;
    let users = open_sessions_of(
        &base,
        tokens,
        bars,
        "live-rooms users' sessions (initialize)",
    );
    let users: Arc<Vec<RoomUser>> = Arc::new(users.await?);
    let rss_before = rss_kb(hub.pid)?;

    let first = CLIENTS.min(n);
    let bar = bars.counted(first, "baseline rooms");
    let started = bounded(first, FILL_CONCURRENCY, &bar, first_call(users.clone(), 0)).await?;
    bar.finish_and_clear();
    let baseline = warm_run(a, &users, first, bars, "warm fs_read, baseline rooms").await?;
    // Counted once the clients' connections are open, so only rooms add to it.
    let fds_before = open_fds(hub.pid)?;

    let bar = bars.counted(n - first, "more rooms, 8 at a time (first call)");
    let t = Instant::now();
    let mut cold = bounded(
        n - first,
        FILL_CONCURRENCY,
        &bar,
        first_call(users.clone(), first),
    )
    .await?;
    let fill_seconds = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    cold.extend(started);
    let running = base.gauge("lodge_rooms_running").await?;
    ensure!(
        running as usize == n,
        "lodge_rooms_running is {running} after starting {n} rooms"
    );
    let all_rooms = warm_run(a, &users, n, bars, "warm fs_read, all rooms up").await?;
    let fds_after = open_fds(hub.pid)?;
    let hub_rss_kb = rss_kb(hub.pid)?;
    tokio::time::sleep(super::SETTLE).await;
    let memory = room_memory(hub.pid, n, rss_before).ok();
    Ok(Figures {
        rooms: n,
        fill_concurrency: FILL_CONCURRENCY,
        fill_seconds,
        cold_starts_per_s: (n - first) as f64 / fill_seconds,
        cold_first_call: Stats::of(cold)?,
        clients: CLIENTS,
        calls: a.scale_calls,
        ratio_p50: all_rooms.stats.p50_us / baseline.stats.p50_us,
        ratio_p99: all_rooms.stats.p99_us / baseline.stats.p99_us,
        baseline,
        all_rooms,
        hub_fds_before: fds_before,
        hub_fds_after: fds_after,
        hub_fds_per_room: (fds_after as f64 - fds_before as f64) / (n - first) as f64,
        hub_rss_kb,
        memory,
    })
}

/// For `bounded`: the first call of user `offset + i`, which writes the file the warm runs read
/// (and so starts the room); returns how long it took.
fn first_call(
    users: Arc<Vec<RoomUser>>,
    offset: usize,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = Result<Duration>> + Send>>
+ Send
+ Sync
+ 'static {
    let mut content = "x".repeat(FILE_BYTES - 1);
    content.push('\n');
    let body: Arc<str> = tool_body(
        "fs_write",
        serde_json::json!({"path": FILE, "content": content}),
    )
    .into();
    move |i| {
        let (users, body) = (users.clone(), body.clone());
        Box::pin(async move {
            let u = &users[offset + i];
            let t = Instant::now();
            u.client
                .tool(&u.sid, &body, "fs_write (first call)")
                .await?;
            Ok(t.elapsed())
        })
    }
}

/// `--scale-calls` warm `fs_read`s by [`CLIENTS`] workers, each picking a random user among
/// the first `rooms` for every call.
async fn warm_run(
    a: &BenchArgs,
    users: &Arc<Vec<RoomUser>>,
    rooms: usize,
    bars: &Bars,
    msg: &str,
) -> Result<Warm> {
    let body: Arc<str> = tool_body("fs_read", serde_json::json!({"path": FILE})).into();
    let bar = bars.counted(a.scale_calls, msg);
    let next = Arc::new(AtomicUsize::new(0));
    let total = a.scale_calls;
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..CLIENTS {
        let (users, body, next, bar) = (users.clone(), body.clone(), next.clone(), bar.clone());
        tasks.spawn(async move {
            let mut rng = SplitMix(0x9e37_79b9 ^ worker as u64);
            let mut samples = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let u = &users[(rng.next() % rooms as u64) as usize];
                let t = Instant::now();
                let reply = u.client.tool(&u.sid, &body, "fs_read (warm)").await?;
                samples.push(t.elapsed());
                let got = structured(&reply)["content"].as_str().map_or(0, str::len);
                ensure!(
                    got == FILE_BYTES,
                    "fs_read returned {got} bytes, not {FILE_BYTES}"
                );
                bar.inc(1);
            }
            anyhow::Ok(samples)
        });
    }
    let mut samples = Vec::with_capacity(total);
    while let Some(r) = tasks.join_next().await {
        samples.extend(r.context("a bench client panicked")??);
    }
    let seconds = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(Warm {
        rooms,
        calls_per_s: samples.len() as f64 / seconds,
        stats: Stats::of(samples)?,
    })
}

/// A small, seeded generator: each worker's sequence of users is the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Descriptors the process holds now.
fn open_fds(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {dir}"))?
        .count())
}

pub(super) fn targets(section: Option<&Report>) -> Vec<Target> {
    let Some(Section::Measured(f)) = section else {
        return Vec::new();
    };
    vec![
        Target::new(
            "live rooms: warm p99 with all up",
            f.all_rooms.stats.p99_us,
            TARGET_WARM_P99_US,
            "us",
        ),
        Target::new(
            "live rooms: hub descriptors per room",
            f.hub_fds_per_room,
            TARGET_FDS_PER_ROOM,
            "fds",
        ),
    ]
}

pub(super) fn print(section: &Report) {
    let f = match section {
        Section::Skipped { skipped } => {
            println!("live rooms: skipped ({skipped})");
            return;
        }
        Section::Measured(f) => f,
    };
    println!(
        "live rooms — {} rooms ({DISK} quota volume each), filled {} at a time",
        f.rooms, f.fill_concurrency
    );
    println!(
        "  cold starts: {:.1} rooms/s ({:.1} s); first call p50 {} p99 {}",
        f.cold_starts_per_s,
        f.fill_seconds,
        fmt_us(f.cold_first_call.p50_us),
        fmt_us(f.cold_first_call.p99_us)
    );
    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>10}",
        format!("warm fs_read, {} clients, random users", f.clients),
        "rooms",
        "calls/s",
        "p50",
        "p99"
    );
    for (label, w) in [
        ("  baseline", &f.baseline),
        ("  all rooms up", &f.all_rooms),
    ] {
        println!(
            "{:<38} {:>10} {:>10.0} {:>10} {:>10}",
            label,
            w.rooms,
            w.calls_per_s,
            fmt_us(w.stats.p50_us),
            fmt_us(w.stats.p99_us)
        );
    }
    println!(
        "  all rooms vs baseline: p50 {}x, p99 {}x",
        sig3(f.ratio_p50),
        sig3(f.ratio_p99)
    );
    println!(
        "  hub: {} descriptors with the baseline rooms, {} with all ({:.2} per room); RSS {} MiB",
        f.hub_fds_before,
        f.hub_fds_after,
        f.hub_fds_per_room,
        f.hub_rss_kb / 1024
    );
    if let Some(m) = &f.memory {
        println!(
            "  memory per room: PSS {:.0} KiB, cgroup {} KiB, hub RSS growth {:.1} KiB ({} processes)",
            m.pss_kb_per_room,
            m.cgroup_usage_kb_per_room
                .map_or_else(|| "-".to_owned(), |k| format!("{k:.0}")),
            m.hub_rss_kb_per_room,
            m.processes
        );
    }
}
