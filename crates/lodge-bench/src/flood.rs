//! `lodge bench`'s flood section: user B's sequential session_info latency alone, then while
//! user A floods the hub from many concurrent clients that ignore `Retry-After` (A has the
//! default request budget, so most of A's requests get 429), then while user C floods the same
//! way with a budget too large to matter. B alone against B beside A shows what the per-user
//! budget keeps; B beside C shows what a flood costs without it.

use super::{
    Bars, BenchArgs, Client, ConfigPart, HubProcess, Stats, fmt_us, sig3, timed_calls,
    user_with_token,
};
use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// The profile of the flooding user A: the default request budget.
const PROFILE: &str = "bench-flood";
/// Concurrent clients of the flooding user.
const FLOOD_CLIENTS: usize = 64;
/// How long the flood runs before B is measured, so A's burst is spent and the flood steady.
const FLOOD_LEAD: Duration = Duration::from_millis(500);
const FIG_ALONE: &str = "B alone";
const FIG_THROTTLED: &str = "B while A floods (default budget)";
const FIG_UNTHROTTLED: &str = "B while C floods (no budget)";

/// The bench hub's request budgets: the other sections measure the hub, not the budget, so
/// `default` gets one that never runs out; user A's profile keeps the shipped default.
pub(super) fn config() -> ConfigPart {
    ConfigPart {
        read_only_paths: Vec::new(),
        tables: format!(
            "[profiles.default]\nrequests_per_second = 1000000000\nrequest_burst = 1000000000\n\n\
             [profiles.{PROFILE}]\ndescription = \"lodge bench: the default request budget\"\n"
        ),
    }
}

#[derive(Serialize)]
pub(super) struct Figures {
    flood_clients: usize,
    alone: Stats,
    throttled: Flood,
    unthrottled: Flood,
}

/// B's latency during one flood, and what the flooding user got.
#[derive(Serialize)]
struct Flood {
    b: Stats,
    p99_vs_alone: f64,
    answered_200: usize,
    answered_429: usize,
    flood_requests_per_s: f64,
}

pub(super) async fn run(a: &BenchArgs, hub: &HubProcess, bars: &Bars) -> Result<Option<Figures>> {
    if a.skip_flood {
        return Ok(None);
    }
    let (exe, dir) = (&hub.exe, hub._dir.path());
    let flooder = user_with_token(exe, dir, "bench-flood-a", &["--profile", PROFILE]).await?;
    let unlimited = user_with_token(exe, dir, "bench-flood-c", &[]).await?;
    let b = Client::new(
        &hub.base,
        &user_with_token(exe, dir, "bench-flood-b", &[]).await?,
        1,
    )?;
    let sid = b.initialize().await?;
    let measure_b = |warmup, figure| {
        let (b, sid) = (&b, &sid);
        timed_calls(warmup, a.requests, bars, figure, move || async move {
            b.session_info(sid).await.map(drop)
        })
    };
    let (_, alone) = measure_b(a.warmup, FIG_ALONE).await?;
    let throttled = with_flood(hub, &flooder, measure_b(0, FIG_THROTTLED)).await?;
    let unthrottled = with_flood(hub, &unlimited, measure_b(0, FIG_UNTHROTTLED)).await?;
    b.end_session(&sid).await?;
    let flood = |(b, counts): (Stats, Counts)| Flood {
        b,
        p99_vs_alone: b.p99_us / alone.p99_us,
        answered_200: counts.ok,
        answered_429: counts.refused,
        flood_requests_per_s: (counts.ok + counts.refused) as f64 / counts.seconds,
    };
    let (throttled, unthrottled) = (flood(throttled), flood(unthrottled));
    if throttled.answered_429 == 0 {
        bail!("user A's flood got no 429: the request budget did not apply");
    }
    Ok(Some(Figures {
        flood_clients: FLOOD_CLIENTS,
        alone,
        throttled,
        unthrottled,
    }))
}

struct Counts {
    ok: usize,
    refused: usize,
    seconds: f64,
}

/// Runs `measure` while [`FLOOD_CLIENTS`] clients of `token` send stateless session_info calls
/// back to back, retrying 429s at once; returns its figures and what the flood got.
async fn with_flood<F>(hub: &HubProcess, token: &str, measure: F) -> Result<(Stats, Counts)>
where
    F: Future<Output = Result<(&'static str, Stats)>>,
{
    let client = Arc::new(Client::new(&hub.base, token, FLOOD_CLIENTS)?);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for _ in 0..FLOOD_CLIENTS {
        let (c, stop, ok, refused) = (client.clone(), stop.clone(), ok.clone(), refused.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .stateless_session_info()
                    .send()
                    .await
                    .context("a flood request")?;
                let status = r.status();
                r.bytes().await.context("a flood reply")?;
                match status.as_u16() {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    429 => refused.fetch_add(1, Ordering::Relaxed),
                    s => bail!("a flood request got HTTP {s}"),
                };
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep(FLOOD_LEAD).await;
    let measured = measure.await;
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        r.context("a flood client panicked")??;
    }
    let (_, stats) = measured?;
    Ok((
        stats,
        Counts {
            ok: ok.load(Ordering::Relaxed),
            refused: refused.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}

pub(super) fn print(f: &Figures) {
    println!(
        "flood: user B's session_info, sequential, while another user floods with {} clients",
        f.flood_clients
    );
    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>24}",
        "figure", "p50", "p99", "p99 / alone", "flood: 200s / 429s, req/s"
    );
    println!(
        "{:<38} {:>10} {:>10}",
        FIG_ALONE,
        fmt_us(f.alone.p50_us),
        fmt_us(f.alone.p99_us)
    );
    for (figure, fl) in [
        (FIG_THROTTLED, &f.throttled),
        (FIG_UNTHROTTLED, &f.unthrottled),
    ] {
        println!(
            "{:<38} {:>10} {:>10} {:>10}x {:>24}",
            figure,
            fmt_us(fl.b.p50_us),
            fmt_us(fl.b.p99_us),
            sig3(fl.p99_vs_alone),
            format!(
                "{} / {}, {:.0}",
                fl.answered_200, fl.answered_429, fl.flood_requests_per_s
            )
        );
    }
}
