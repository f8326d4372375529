//! `lodge doctor` (docs/operations.md, "Requirements"): reports which isolation features this
//! machine offers rooms (bubblewrap, user namespaces, cgroups, Landlock, seccomp,
//! no_new_privs), whether rooms get a notebook kernel, and the command that fixes each missing
//! one, and what dead rooms of DATA_DIR's hub left behind. It only reads /proc, /sys and the config and runs throwaway
//! probes; it never changes the machine and creates no DATA_DIR.

use crate::cli::{DoctorArgs, Global};
use anyhow::Result;
use lodge_core::config::KernelsConfig;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cgroup controllers a room's resource limits rely on.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present and usable.
    Ok,
    /// Rooms cannot run with the isolation they need.
    Missing,
    /// Rooms run, with one layer of defence (or one feature, such as notebooks) fewer.
    Degraded,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "MISSING",
            Status::Degraded => "degraded",
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: String) -> Self {
        Self {
            name,
            status: Status::Ok,
            detail,
            fix: None,
        }
    }

    fn not_ok(name: &'static str, status: Status, detail: String, fix: String) -> Self {
        Self {
            name,
            status,
            detail,
            fix: Some(fix),
        }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    checks: &'a [Check],
    ready: bool,
}

pub async fn run(global: &Global, args: DoctorArgs) -> Result<()> {
    // The config only says where rooms find kernelspecs; DATA_DIR need not exist.
    let config_path = match &global.config {
        Some(p) => Some(p.clone()),
        None => Some(global.data_dir.join("lodge.toml")).filter(|p| p.exists()),
    };
    let config = lodge_core::Config::load(config_path.as_deref(), std::env::vars())?;
    let mut checks = all_checks();
    checks.push(check_kernels(&config.kernels));
    checks.push(check_leftovers(&global.data_dir));
    let missing: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == Status::Missing)
        .map(|c| c.name)
        .collect();
    let ready = missing.is_empty();
    if args.json {
        let report = Report {
            checks: &checks,
            ready,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_table(&checks));
        println!("{}", summary(&checks));
    }
    if !ready {
        anyhow::bail!(
            "this machine cannot run rooms: missing {} (see the fix lines of `lodge doctor`)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn all_checks() -> Vec<Check> {
    let bwrap = find_on_path("bwrap");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    vec![
        check_bubblewrap(bwrap.as_deref()),
        check_user_namespaces(bwrap.as_deref()),
        check_cgroups(),
        check_landlock(),
        check_seccomp(&status),
        check_no_new_privs(&status),
        check_quota_volumes(&status),
    ]
}

// ---- disk quota volumes ----

/// Profiles with a `disk` limit (the default) get an ext4 volume, loop-mounted by a root hub;
/// a root hub that cannot make one refuses the room, so missing tools are MISSING there.
fn check_quota_volumes(status: &str) -> Check {
    const NAME: &str = "quota volumes";
    // /proc/self/status: "Uid:\treal\teffective\tsaved\tfs".
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0");
    if !root {
        return Check::not_ok(
            NAME,
            Status::Degraded,
            "not root: workspaces get no disk quota (profile `disk` is not enforced)".into(),
            "run the hub as root, or set disk = \"unlimited\" in the profiles".into(),
        );
    }
    let find = |tool: &str| {
        find_on_path(tool).or_else(|| {
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| is_executable(p))
        })
    };
    let missing: Vec<&str> = ["mkfs.ext4", "dumpe2fs", "mount", "umount"]
        .into_iter()
        .filter(|t| find(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Check::not_ok(
            NAME,
            Status::Missing,
            format!("{} not found", missing.join(", ")),
            "apt-get install e2fsprogs mount (or set disk = \"unlimited\" in the profiles)".into(),
        );
    }
    if !Path::new("/dev/loop-control").exists() {
        return Check::not_ok(
            NAME,
            Status::Missing,
            "/dev/loop-control is missing: loop devices are unavailable".into(),
            "modprobe loop (in a container: give it access to loop devices), or set disk = \"unlimited\"".into(),
        );
    }
    Check::ok(
        NAME,
        "root, mkfs.ext4, mount and loop devices present".into(),
    )
}

// ---- leftovers of dead rooms ----

/// Mounts, loop devices and cgroups that rooms of this DATA_DIR's hub left when the hub died
/// without stopping them (SIGKILL, a crash). The next `lodge serve` removes them; until then
/// they hold loop devices and kernel memory.
fn check_leftovers(data_dir: &Path) -> Check {
    const NAME: &str = "room leftovers";
    let Ok(data_dir) = std::fs::canonicalize(data_dir) else {
        return Check::ok(NAME, "no DATA_DIR yet".into());
    };
    let found = lodge_room::spawner::RoomFiles::new(&data_dir).leftovers();
    if found.is_empty() {
        return Check::ok(NAME, format!("none under {}", data_dir.display()));
    }
    let mut what: Vec<String> = found
        .mounts
        .iter()
        .map(|m| format!("mount {}", m.display()))
        .collect();
    what.extend(
        found
            .loop_devices
            .iter()
            .map(|d| format!("loop device {}", d.display())),
    );
    what.extend(found.cgroups.iter().map(|c| format!("cgroup lodge-{c}")));
    Check::not_ok(
        NAME,
        Status::Degraded,
        format!(
            "dead rooms of a hub that did not stop them left {}",
            what.join(", ")
        ),
        format!(
            "start `lodge --data-dir {} serve` (it removes them before serving), or by hand: umount -l MOUNT; losetup -d DEVICE",
            data_dir.display()
        ),
    )
}

// ---- notebook kernels ----

/// Where rooms look for programs (their PATH).
const ROOM_PATH: [&str; 3] = ["/usr/local/bin", "/usr/bin", "/bin"];

/// Rooms offer the kernelspecs of `[kernels] paths` and `system_paths` (besides each user's
/// own). Without a usable one notebooks fail, and a user in a room without network cannot
/// install one: only the operator can, so doctor says how.
fn check_kernels(kernels: &KernelsConfig) -> Check {
    const NAME: &str = "notebook kernels";
    let fix = "apt-get install python3-ipykernel (scripts/serve does; users in rooms without \
               network cannot install a kernel themselves), or set [kernels] paths to a Jupyter \
               data dir holding a kernelspec"
        .to_string();
    let dirs: Vec<PathBuf> = kernels
        .paths
        .iter()
        .chain(&kernels.system_paths)
        .cloned()
        .collect();
    let shown = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let specs = lodge_kernel::spec::find_specs(&dirs);
    let Ok(spec) = lodge_kernel::spec::choose(&specs, None, &kernels.default, false) else {
        return Check::not_ok(
            NAME,
            Status::Degraded,
            format!("no kernelspec in [{shown}]: notebooks fail unless users bring their own"),
            fix,
        );
    };
    let argv = spec.launch_argv(Path::new("/dev/null"));
    let program = argv.first().map(PathBuf::from).unwrap_or_default();
    let program = if program.is_absolute() {
        Some(program).filter(|p| is_executable(p))
    } else {
        ROOM_PATH
            .iter()
            .map(|d| Path::new(d).join(&program))
            .find(|p| is_executable(p))
    };
    let at = format!("kernelspec {} in {}", spec.name, spec.dir.display());
    let Some(program) = program else {
        return Check::not_ok(
            NAME,
            Status::Degraded,
            format!("{at} runs {:?}, which rooms cannot find", argv.first()),
            fix,
        );
    };
    if argv.iter().any(|a| a == "ipykernel_launcher") {
        return match run_probe(&program, &["-c", "import ipykernel"]) {
            Ok(_) => Check::ok(
                NAME,
                format!("{at}: {} imports ipykernel", program.display()),
            ),
            Err(why) => Check::not_ok(NAME, Status::Degraded, format!("{at}: {why}"), fix),
        };
    }
    Check::ok(NAME, format!("{at} runs {}", program.display()))
}

// ---- rendering ----

fn render_table(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{:<8}  {:<width$}  {}\n",
            c.status.label(),
            c.name,
            // Details quote what the system said (paths, error text): one line each.
            lodge_core::text::for_people(&c.detail)
        ));
        if let Some(fix) = c.fix.as_deref().filter(|_| c.status != Status::Ok) {
            let fix = lodge_core::text::for_people(fix);
            out.push_str(&format!("{:<8}  {:<width$}  fix: {fix}\n", "", ""));
        }
    }
    out
}

fn summary(checks: &[Check]) -> String {
    let names = |s: Status| -> Vec<&str> {
        checks
            .iter()
            .filter(|c| c.status == s)
            .map(|c| c.name)
            .collect()
    };
    let (missing, degraded) = (names(Status::Missing), names(Status::Degraded));
    if !missing.is_empty() {
        format!("not ready: rooms need {}", missing.join(", "))
    } else if !degraded.is_empty() {
        format!("ready, degraded: rooms run without {}", degraded.join(", "))
    } else {
        "ready: every isolation layer rooms use is available".to_string()
    }
}

// ---- bubblewrap and user namespaces ----

/// The first executable file called `name` in the directories of PATH.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs a probe; Ok(stdout) when it exits 0, Err(why) otherwise.
fn run_probe(program: &Path, args: &[&str]) -> std::result::Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("").trim();
        Err(format!(
            "{} failed ({}): {first}",
            program.display(),
            out.status
        ))
    }
}

fn check_bubblewrap(bwrap: Option<&Path>) -> Check {
    const NAME: &str = "bubblewrap";
    let fix = "apt-get install bubblewrap".to_string();
    let Some(bwrap) = bwrap else {
        return Check::not_ok(NAME, Status::Missing, "bwrap not found on PATH".into(), fix);
    };
    match run_probe(bwrap, &["--version"]) {
        Ok(version) => Check::ok(NAME, format!("{version} at {}", bwrap.display())),
        Err(why) => Check::not_ok(NAME, Status::Missing, why, fix),
    }
}

fn check_user_namespaces(bwrap: Option<&Path>) -> Check {
    const NAME: &str = "user namespaces";
    let probe = match (bwrap, find_on_path("unshare")) {
        (Some(b), _) => Some((
            b.to_path_buf(),
            vec![
                "--unshare-user",
                "--unshare-pid",
                "--unshare-net",
                "--ro-bind",
                "/",
                "/",
                "true",
            ],
        )),
        (None, Some(u)) => Some((u, vec!["-U", "true"])),
        (None, None) => None,
    };
    let Some((program, args)) = probe else {
        return Check::not_ok(
            NAME,
            Status::Missing,
            format!(
                "cannot probe: neither bwrap nor unshare on PATH; {}",
                userns_sysctls()
            ),
            "apt-get install bubblewrap, then run lodge doctor again".into(),
        );
    };
    match run_probe(&program, &args) {
        Ok(_) => Check::ok(
            NAME,
            format!("a sandbox with new user, pid and net namespaces started ({})", program.display()),
        ),
        Err(why) => Check::not_ok(
            NAME,
            Status::Missing,
            format!("{why}; {}", userns_sysctls()),
            "sysctl -w user.max_user_namespaces=15000 && sysctl -w kernel.unprivileged_userns_clone=1"
                .into(),
        ),
    }
}

fn userns_sysctls() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "absent".to_string())
    };
    format!(
        "user.max_user_namespaces={}, kernel.unprivileged_userns_clone={}",
        read("/proc/sys/user/max_user_namespaces"),
        read("/proc/sys/kernel/unprivileged_userns_clone")
    )
}

// ---- cgroups ----

/// Asks the spawner where it would put room cgroups, so this report and the rooms agree.
fn check_cgroups() -> Check {
    const NAME: &str = "cgroups";
    use lodge_room::spawner::{CgroupLayout, detect_cgroups};
    let v2_dir = Path::new("/sys/fs/cgroup");
    match detect_cgroups() {
        Ok(CgroupLayout::V2 { parent }) => Check::ok(
            NAME,
            format!(
                "rooms use v2 (memory, cpu, pids) under {}",
                parent.display()
            ),
        ),
        Ok(CgroupLayout::V1 { memory, cpu, pids }) => {
            let found = [("memory", memory), ("cpu", cpu), ("pids", pids)];
            let desc: Vec<String> = found
                .iter()
                .map(|(c, dir)| match dir {
                    Some(d) => format!("{c} under {}", d.display()),
                    None => format!("{c} missing"),
                })
                .collect();
            let absent: Vec<&str> = found
                .iter()
                .filter(|(_, dir)| dir.is_none())
                .map(|(c, _)| *c)
                .collect();
            let desc = format!("rooms use v1: {}", desc.join(", "));
            if absent.is_empty() {
                Check::ok(NAME, desc)
            } else {
                Check::not_ok(NAME, Status::Missing, desc, cgroup_fix(v2_dir, &absent))
            }
        }
        Err(why) => Check::not_ok(NAME, Status::Missing, why, cgroup_fix(v2_dir, &CONTROLLERS)),
    }
}

fn cgroup_fix(v2_dir: &Path, absent_v1: &[&str]) -> String {
    let v1_mounts: Vec<String> = absent_v1
        .iter()
        .map(|c| {
            format!(
                "mkdir -p /sys/fs/cgroup/{c} && mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c}"
            )
        })
        .collect();
    format!(
        "v2: echo '+memory +cpu +pids' > {}/cgroup.subtree_control (with systemd: Delegate=yes on the unit); or v1: {}",
        v2_dir.display(),
        v1_mounts.join(" && ")
    )
}

// ---- Landlock ----

fn check_landlock() -> Check {
    const NAME: &str = "landlock";
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").ok();
    let listed = lsm
        .as_deref()
        .map(|l| l.trim().split(',').any(|m| m == "landlock"));
    let abi = landlock_abi();
    let lsm_desc = match (&lsm, listed) {
        (Some(l), _) => format!("LSMs: {}", l.trim()),
        (None, _) => "LSM list unreadable (securityfs not mounted)".to_string(),
    };
    let abi_desc = match abi {
        Some(v) if v >= LANDLOCK_MAX_PROBED => format!("ABI {v} or later"),
        Some(v) => format!("ABI {v}"),
        None => "ABI unknown".to_string(),
    };
    if abi.is_some() || listed == Some(true) {
        Check::ok(NAME, format!("enabled, {abi_desc}; {lsm_desc}"))
    } else {
        Check::not_ok(
            NAME,
            Status::Degraded,
            format!("not enabled; {lsm_desc}"),
            "boot a kernel ≥ 5.13 with CONFIG_SECURITY_LANDLOCK=y and lsm=...,landlock on its command line".into(),
        )
    }
}

/// The newest ABI whose rights a ruleset can tell apart; later ABIs only add restrict_self
/// flags, which cannot be probed without confining this process.
const LANDLOCK_MAX_PROBED: i32 = 6;

/// The highest Landlock ABI the kernel accepts a ruleset for. Creating a ruleset (and
/// dropping it) does not restrict this process.
#[cfg(target_os = "linux")]
fn landlock_abi() -> Option<i32> {
    (1..=LANDLOCK_MAX_PROBED)
        .rev()
        .find(|v| landlock_accepts(landlock::ABI::from(*v)).is_ok())
}

#[cfg(target_os = "linux")]
fn landlock_accepts(abi: landlock::ABI) -> std::result::Result<(), landlock::RulesetError> {
    use landlock::{
        Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr, Scope,
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))?;
    if !AccessNet::from_all(abi).is_empty() {
        ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
    }
    if !Scope::from_all(abi).is_empty() {
        ruleset = ruleset.scope(Scope::from_all(abi))?;
    }
    ruleset.create().map(drop)
}

#[cfg(not(target_os = "linux"))]
fn landlock_abi() -> Option<i32> {
    None
}

// ---- seccomp and no_new_privs ----

/// The value of `Key:` in /proc/self/status text.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

fn check_seccomp(status: &str) -> Check {
    const NAME: &str = "seccomp";
    let fix = "use a kernel built with CONFIG_SECCOMP=y and CONFIG_SECCOMP_FILTER=y".to_string();
    let Some(mode) = status_field(status, "Seccomp") else {
        return Check::not_ok(
            NAME,
            Status::Missing,
            "no Seccomp line in /proc/self/status".into(),
            fix,
        );
    };
    match std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail") {
        Ok(actions) => Check::ok(
            NAME,
            format!(
                "filter mode available (this process: mode {mode}); actions: {}",
                actions.trim()
            ),
        ),
        Err(_) => Check::not_ok(
            NAME,
            Status::Missing,
            format!(
                "seccomp mode {mode}, but /proc/sys/kernel/seccomp/actions_avail is absent (no filter support)"
            ),
            fix,
        ),
    }
}

fn check_no_new_privs(status: &str) -> Check {
    const NAME: &str = "no_new_privs";
    match status_field(status, "NoNewPrivs") {
        Some(v) => Check::ok(NAME, format!("supported (this process: NoNewPrivs {v})")),
        None => Check::not_ok(
            NAME,
            Status::Missing,
            "no NoNewPrivs line in /proc/self/status".into(),
            "use a kernel ≥ 4.10 (prctl PR_SET_NO_NEW_PRIVS, shown in /proc/self/status)".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let status = "Name:\tcat\nNoNewPrivs:\t0\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(status_field(status, "Seccomp"), Some("2"));
        assert_eq!(status_field(status, "NoNewPrivs"), Some("0"));
        assert_eq!(status_field(status, "Seccomp_filters"), Some("1"));
        assert_eq!(status_field(status, "Missing"), None);
        assert_eq!(check_no_new_privs("Name:\tx\n").status, Status::Missing);
        assert_eq!(check_seccomp("Name:\tx\n").status, Status::Missing);
    }

    #[test]
    fn summary_names_what_is_missing() {
        let checks = vec![
            Check::ok("a", "fine".into()),
            Check::not_ok("b", Status::Missing, "gone".into(), "fix b".into()),
        ];
        assert_eq!(summary(&checks), "not ready: rooms need b");
        let table = render_table(&checks);
        assert!(table.contains("MISSING"));
        assert!(table.contains("fix: fix b"));
    }
}
