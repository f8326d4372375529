//! `lodge bench`'s Jupyter section: `code_execute {"code": "1+1"}` through the hub on a user's
//! warm python3 kernel (ipykernel in their room, driven by the room's agent), against the same
//! code on a kernel that PyPI jupyter_client drives directly on this machine, with no hub and no
//! room (jupyter_baseline.py, embedded here, run with the venv's Python); the two rows run back
//! to back in one run. Also the first call, which starts the kernel: with the user's room
//! already running, and for a new user whose room starts too, next to jupyter_client's own cold
//! start (kernel start to first result).

use super::{
    Bars, BenchArgs, Client, ConfigPart, FirstCalls, Overhead, ScriptDir, Stats, clip, cold_rows,
    fmt_us, section_users, sig3, timed_calls, toml_string, tool_body,
};
use anyhow::{Context as _, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// Where scripts/peers installs the venv (as `jupyter/`) when LODGE_TEST_PEERS is unset.
const DEFAULT_PEERS: &str = "/opt/lodge-test-peers";
/// The kernelspec, in the venv's share/jupyter (the hub's `[kernels] default`).
const KERNEL: &str = "python3";
const BASELINE_SOURCE: &str = include_str!("jupyter_baseline.py");
const BASELINE_FILE: &str = "jupyter_baseline.py";
const TOOL: &str = "code_execute";
const CODE: &str = "1+1";
/// What `CODE` evaluates to, in the `Out[N]: …` line of the reply.
const EXPECTED: &str = "2";
/// Users whose room is started (run_command "true") before their first, timed, code_execute:
/// the kernel's start alone. The first of them also carries the warm row.
const ROOM_WARM_USERS: usize = 5;
/// Users whose first call of all is the timed code_execute: their room and the kernel start.
const NEW_USERS: usize = 5;
/// Users the section needs, each with a room (and a kernel) of their own.
pub(super) const USERS: usize = ROOM_WARM_USERS + NEW_USERS;
/// `[kernels] idle_timeout`: the kernels live through the run.
const KERNEL_IDLE_TIMEOUT: &str = "24h";
/// The baseline script's time limit: its cold start, plus this much per call.
const BASELINE_TIMEOUT: Duration = Duration::from_secs(120);
const BASELINE_PER_CALL: Duration = Duration::from_millis(200);
/// Time limit of the venv check (`python -c "import ipykernel, jupyter_client"`).
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of the baseline's stderr kept for error messages.
const STDERR_LINES: usize = 10;
const FIG_DIRECT: &str = "1+1, jupyter_client direct (local kernel)";
const FIG_HUB: &str = "code_execute 1+1 via hub (warm kernel)";
const FIG_OVERHEAD: &str = "hub overhead (difference)";
const FIG_RATIO: &str = "ratio hub / direct";
const FIG_COLD_DIRECT: &str = "cold: jupyter_client (local kernel, no room)";
const FIG_COLD_KERNEL: &str = "cold: code_execute, room warm (kernel start)";
const FIG_COLD_ALL: &str = "cold: code_execute, new user (room + kernel)";

/// Whether and how the section runs.
pub(super) type Setup = super::Setup<Venv>;

/// A usable Jupyter venv, and the baseline script written out for its Python.
pub(super) struct Venv {
    prefix: PathBuf,
    python: PathBuf,
    baseline: ScriptDir,
}

impl Setup {
    pub(super) async fn new(a: &BenchArgs) -> Result<Self> {
        if a.skip_jupyter {
            return Ok(Self::Off);
        }
        let prefix = venv_prefix(a)?;
        let python = prefix.join("bin/python");
        if let Err(why) = check_venv(&prefix, &python).await {
            return Ok(Self::Unavailable(format!(
                "{why}; run scripts/peers or pass --jupyter-venv"
            )));
        }
        Ok(Self::Ready(Venv {
            prefix,
            python,
            baseline: ScriptDir::create("jupyter", BASELINE_FILE, BASELINE_SOURCE)?,
        }))
    }

    /// Bench users to provision for the section.
    pub(super) fn users(&self) -> usize {
        self.users_if_ready(USERS)
    }

    /// The venv for the rooms, and its share/jupyter as a kernel path (the hub accepts only
    /// kernel paths below a read-only path).
    pub(super) fn config(&self) -> Result<ConfigPart> {
        let Self::Ready(venv) = self else {
            return Ok(ConfigPart::default());
        };
        Ok(ConfigPart {
            read_only_paths: vec![venv.prefix.clone()],
            tables: format!(
                "[kernels]\n\
                 paths = [{data}]\n\
                 default = \"{KERNEL}\"\n\
                 idle_timeout = \"{KERNEL_IDLE_TIMEOUT}\"\n",
                data = toml_string(&venv.prefix.join("share/jupyter"))?,
            ),
        })
    }
}

/// --jupyter-venv, else $LODGE_TEST_PEERS/jupyter, else /opt/lodge-test-peers/jupyter; made
/// absolute (without resolving symlinks: the kernelspec names its Python by this path).
fn venv_prefix(a: &BenchArgs) -> Result<PathBuf> {
    let path = match &a.jupyter_venv {
        Some(p) => p.clone(),
        None => match std::env::var_os("LODGE_TEST_PEERS") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("jupyter"),
            _ => Path::new(DEFAULT_PEERS).join("jupyter"),
        },
    };
    std::path::absolute(&path).with_context(|| format!("cannot make {} absolute", path.display()))
}

/// Why the venv at `prefix` cannot serve the section, if it cannot.
async fn check_venv(prefix: &Path, python: &Path) -> Result<(), String> {
    if !prefix.is_dir() {
        return Err(format!("no Jupyter venv at {}", prefix.display()));
    }
    let spec = prefix.join(format!("share/jupyter/kernels/{KERNEL}/kernel.json"));
    for needed in [python, spec.as_path()] {
        if !needed.exists() {
            return Err(format!(
                "the Jupyter venv at {} has no {}",
                prefix.display(),
                needed.display()
            ));
        }
    }
    let check = Command::new(python)
        .args(["-c", "import ipykernel, jupyter_client"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("cannot run {}: {e}", python.display())),
        Err(_) => {
            return Err(format!(
                "{} did not import ipykernel and jupyter_client within {} s",
                python.display(),
                CHECK_TIMEOUT.as_secs()
            ));
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(format!(
            "{} cannot import ipykernel and jupyter_client: {}",
            python.display(),
            last.unwrap_or("(no message)").trim()
        ));
    }
    Ok(())
}

/// `bench-jupyter-NN`, for NN in 0..[`USERS`].
pub(super) fn user_name(i: usize) -> String {
    format!("bench-jupyter-{i:02}")
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// The section in the report: its figures, or why it did not run.
pub(super) type Section = super::Section<Figures>;

#[derive(Serialize)]
pub(super) struct Figures {
    /// The kernelspec and the venv it comes from.
    kernel: String,
    code: &'static str,
    /// Timed calls per warm row (after `warmup` uncounted ones).
    calls: usize,
    warmup: usize,
    /// jupyter_client's blocking client on a kernel it started itself, outside any room: from
    /// execute_request to the execute_reply, the execute_result and the idle status.
    direct: Stats,
    /// code_execute through the hub on the warm scratch kernel of a user's room.
    via_hub: Stats,
    overhead: Overhead,
    /// jupyter_client's one cold start: start_kernel to the first result of `code`.
    cold_start_direct_us: f64,
    /// First code_execute of a user whose room was already running: the kernel's start.
    cold_start_room_warm: Stats,
    /// First code_execute of a new user: the room's start and the kernel's.
    cold_start_new_user: Stats,
    /// Users timed for each hub cold figure.
    cold_users: usize,
}

/// Runs the section (with the tokens of its [`user_name`]s); `None` with --skip-jupyter. Cold
/// starts come first, one user after the other; the baseline and the warm row then run back to
/// back, so both meet the machine in the same state.
pub(super) async fn run(
    a: &BenchArgs,
    setup: &Setup,
    base: &Client,
    tokens: &[String],
    bars: &Bars,
) -> Result<Option<Section>> {
    let venv = match setup.ready() {
        Ok(venv) => venv,
        Err(report) => return Ok(report),
    };
    let users = section_users(base, tokens, USERS, "Jupyter").await?;
    let (room_warm, new) = users.split_at(ROOM_WARM_USERS);
    let execute = tool_body(TOOL, json!({"code": CODE}));
    let calls = FirstCalls {
        tool: TOOL,
        body: &execute,
        check: &check_result,
        room_warm: FIG_COLD_KERNEL,
        new_user: FIG_COLD_ALL,
    };
    let (cold_kernel, cold_all) = cold_rows(room_warm, new, &calls, bars).await?;

    let (cold_direct_us, direct) = baseline(a, venv, bars).await?;
    let u = &room_warm[0];
    let (_, via_hub) = timed_calls(a.warmup, a.jupyter_requests, bars, FIG_HUB, || async {
        u.client.tool(&u.sid, &execute, TOOL).await.map(drop)
    })
    .await?;
    // The timed replies were checked as results only; check one's content too.
    check_result(&u.client.tool(&u.sid, &execute, TOOL).await?)?;

    Ok(Some(Section::Measured(Figures {
        kernel: format!("{KERNEL} from {}", venv.prefix.display()),
        code: CODE,
        calls: a.jupyter_requests,
        warmup: a.warmup,
        overhead: Overhead::between(&direct, &via_hub),
        direct,
        via_hub,
        cold_start_direct_us: cold_direct_us,
        cold_start_room_warm: cold_kernel,
        cold_start_new_user: cold_all,
        cold_users: ROOM_WARM_USERS.min(NEW_USERS),
    })))
}

/// A code_execute reply must hold the line `Out[N]: 2` in its text content, and no tool error.
fn check_result(reply: &str) -> Result<()> {
    let v: Value = serde_json::from_str(reply)
        .with_context(|| format!("{TOOL}: reply is not JSON: {}", clip(reply)))?;
    let blocks = v.pointer("/result/content").and_then(Value::as_array);
    let texts = blocks
        .into_iter()
        .flatten()
        .filter_map(|b| b["text"].as_str());
    let out = texts.flat_map(str::lines).any(|line| {
        line.strip_prefix("Out[")
            .and_then(|rest| rest.split_once("]: "))
            .is_some_and(|(n, value)| n.parse::<u64>().is_ok() && value.trim() == EXPECTED)
    });
    ensure!(
        out && v.pointer("/result/isError") != Some(&Value::Bool(true)),
        "{TOOL} {CODE:?}: expected an Out[N]: {EXPECTED} line: {}",
        clip(reply)
    );
    Ok(())
}

/// One line of jupyter_baseline.py's stdout.
#[derive(Deserialize)]
struct BaselineReport {
    cold_ms: f64,
    samples_us: Vec<u64>,
}

/// The baseline: jupyter_baseline.py with the venv's Python, `a.warmup` uncounted and
/// `a.jupyter_requests` timed round trips, like the hub row; returns its cold start in µs and
/// the timed calls' figures.
async fn baseline(a: &BenchArgs, venv: &Venv, bars: &Bars) -> Result<(f64, Stats)> {
    let (n, warmup) = (a.jupyter_requests, a.warmup);
    let script = &venv.baseline.script;
    let shown = format!(
        "{} {} --iterations {n} --warmup {warmup}",
        venv.python.display(),
        script.display()
    );
    let calls = u32::try_from(n + warmup).unwrap_or(u32::MAX);
    let limit = BASELINE_TIMEOUT.saturating_add(BASELINE_PER_CALL.saturating_mul(calls));
    let run = Command::new(&venv.python)
        .arg(script)
        .args(["--iterations", &n.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let bar = bars.spinner(&format!(
        "{FIG_DIRECT}: {warmup} warm-up + {n} calls (jupyter_baseline.py)"
    ));
    let out = tokio::time::timeout(limit, run).await;
    bar.finish_and_clear();
    let out = match out {
        Ok(r) => r.with_context(|| format!("cannot run `{shown}`"))?,
        Err(_) => bail!(
            "the jupyter_client baseline `{shown}` did not finish within {} s",
            limit.as_secs()
        ),
    };
    let stderr = stderr_tail(&out.stderr);
    ensure!(
        out.status.success(),
        "the jupyter_client baseline `{shown}` failed ({}){stderr}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
    let line = line.unwrap_or_default();
    let report: BaselineReport = serde_json::from_str(line).with_context(|| {
        format!(
            "the jupyter_client baseline `{shown}` printed no result line (got {:?}){stderr}",
            clip(line)
        )
    })?;
    ensure!(
        report.samples_us.len() == n,
        "the jupyter_client baseline `{shown}` returned {} samples, not {n}",
        report.samples_us.len()
    );
    ensure!(
        report.cold_ms.is_finite() && report.cold_ms > 0.0,
        "the jupyter_client baseline `{shown}` returned a cold start of {} ms",
        report.cold_ms
    );
    let samples = report
        .samples_us
        .iter()
        .map(|&us| Duration::from_micros(us));
    Ok((report.cold_ms * 1e3, Stats::of(samples.collect())?))
}

/// The last [`STDERR_LINES`] non-empty lines of `stderr`, for an error message.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(STDERR_LINES)..];
    format!("; its stderr ends: {}", tail.join(" | "))
}

// ---------------------------------------------------------------------------------------------
// Reporting

pub(super) fn print(section: &Section) {
    let Some(f) = section.measured_or_print_skipped("Jupyter") else {
        return;
    };
    println!(
        "Jupyter kernel {}, code {:?}, {} sequential calls per warm row ({} warm-up)",
        f.kernel, f.code, f.calls, f.warmup
    );
    println!(
        "{:<48} {:>10} {:>10} {:>10}",
        "figure", "p50", "p99", "mean"
    );
    let row = |figure: &str, s: &Stats| {
        println!(
            "{figure:<48} {:>10} {:>10} {:>10}",
            fmt_us(s.p50_us),
            fmt_us(s.p99_us),
            fmt_us(s.mean_us)
        );
    };
    row(FIG_DIRECT, &f.direct);
    row(FIG_HUB, &f.via_hub);
    let signed = |us: f64| {
        let s = fmt_us(us);
        if us >= 0.0 { format!("+{s}") } else { s }
    };
    let o = &f.overhead;
    println!(
        "{FIG_OVERHEAD:<48} {:>10} {:>10} {:>10}",
        signed(o.p50_us),
        signed(o.p99_us),
        signed(o.mean_us)
    );
    let ratio = |r: f64| format!("{}x", sig3(r));
    println!(
        "{FIG_RATIO:<48} {:>10} {:>10} {:>10}",
        ratio(o.ratio_p50),
        ratio(o.ratio_p99),
        ratio(o.ratio_mean)
    );
    println!(
        "{FIG_COLD_DIRECT:<48} {:>10}   (one start)",
        fmt_us(f.cold_start_direct_us)
    );
    row(FIG_COLD_KERNEL, &f.cold_start_room_warm);
    row(FIG_COLD_ALL, &f.cold_start_new_user);
    println!(
        "  (direct: jupyter_client's blocking client on a kernel it starts itself, outside any \
         room; cold: kernel start to first result, once for jupyter_client, the first {TOOL} \
         of {} users each through the hub, \"room warm\" after run_command \"true\" started \
         their room)",
        f.cold_users
    );
}

#[cfg(test)]
mod tests {
    use super::super::{upstream, write_config};
    use super::*;

    #[test]
    fn the_sections_share_one_rooms_table_the_hub_accepts() {
        let data = tempfile::tempdir().expect("tempdir");
        let probe = ScriptDir::create("test-probe", "probe_server.py", "").expect("probe dir");
        let probe_dir = probe.dir.clone();
        let upstream = upstream::Setup::Ready(probe);
        let prefix = PathBuf::from("/opt/some peers/jupyter");
        let jupyter = Setup::Ready(Venv {
            python: prefix.join("bin/python"),
            prefix: prefix.clone(),
            baseline: ScriptDir::create("test-jupyter", BASELINE_FILE, BASELINE_SOURCE)
                .expect("baseline dir"),
        });
        let parts = [
            upstream.config().expect("upstream part"),
            jupyter.config().expect("jupyter part"),
        ];
        write_config(data.path(), &parts).expect("write");
        let file = data.path().join("lodge.toml");
        let c = lodge_core::config::Config::load(Some(&file), []).expect("the hub's loader");
        assert_eq!(c.rooms.read_only_paths, [probe_dir, prefix.clone()]);
        assert_eq!(c.kernels.paths, [prefix.join("share/jupyter")]);
        assert_eq!(c.kernels.idle_timeout, Duration::from_secs(24 * 3600));
        assert!(c.servers.contains_key("probe"));

        let off = tempfile::tempdir().expect("tempdir");
        write_config(
            off.path(),
            &[ConfigPart::default(), Setup::Off.config().expect("off")],
        )
        .expect("write nothing");
        assert!(!off.path().join("lodge.toml").exists());
    }

    #[test]
    fn a_result_needs_its_out_line() {
        let reply = |text: &str, error: bool| {
            json!({"jsonrpc": "2.0", "id": 3, "result": {
                "content": [{"type": "text", "text": text}], "isError": error}})
            .to_string()
        };
        assert!(check_result(&reply("Out[7]: 2", false)).is_ok());
        assert!(check_result(&reply("stdout\nOut[12]: 2\n", false)).is_ok());
        assert!(check_result(&reply("Out[7]: 2", true)).is_err());
        assert!(check_result(&reply("Out[7]: 22", false)).is_err());
        assert!(check_result(&reply("2", false)).is_err());
        assert!(check_result("not json").is_err());
    }
}
