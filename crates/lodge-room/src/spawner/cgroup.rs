//! Per-room cgroups: a `lodge-<instance>-<user>` group under the hub's own cgroup for memory, cpu and pids
//! (v2 when the unified hierarchy has those controllers, else v1), limits written at creation, a
//! room-wide kill and removal. It never moves the hub itself, and never fails a spawn merely
//! because cgroups are unavailable: it reports a warning instead.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, PidfdFlags, Signal};

use super::mountinfo::{self, Mount};
use super::{Limits, SpawnError};

const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
const CPU_PERIOD_US: u64 = 100_000;
/// How long removal keeps killing and retrying rmdir before giving up (the next spawn of the
/// same user cleans a leftover up).
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where room cgroups go on this host: the hub's own cgroup in each hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V2 {
        parent: PathBuf,
    },
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
}

/// Finds where room cgroups can go. `Err` is the warning to show when there is no usable
/// hierarchy at all. `lodge doctor` reports exactly this, so it never disagrees with rooms.
pub fn detect() -> Result<Layout, String> {
    let mounts = mountinfo::read().map_err(|e| {
        format!("no cgroup: cannot read /proc/self/mountinfo ({e}): limits not enforced")
    })?;
    let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| {
        format!("no cgroup: cannot read /proc/self/cgroup ({e}): limits not enforced")
    })?;
    let v2_problem = match v2_own_dir(&mounts, &own) {
        Some((mount_point, dir)) => match v2_parent(&mount_point, &dir) {
            Ok(parent) => return Ok(Layout::V2 { parent }),
            Err(why) => Some(why),
        },
        None => None,
    };
    let v1 = v1_dirs(&mounts, &own);
    match v1 {
        Layout::V1 {
            memory: None,
            cpu: None,
            pids: None,
        } => Err(match v2_problem {
            Some(why) => format!("no cgroup: {why}; and no v1 memory/cpu/pids hierarchy: limits not enforced"),
            None => "no cgroup: neither a cgroup v2 hierarchy with memory, cpu and pids nor v1 hierarchies are mounted: limits not enforced".to_owned(),
        }),
        v1 => Ok(v1),
    }
}

/// The hub's own path in each hierarchy, from /proc/self/cgroup: (hierarchy id, controllers, path).
fn own_paths(own: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    own.lines().filter_map(|l| {
        let mut it = l.splitn(3, ':');
        Some((it.next()?, it.next()?, it.next()?))
    })
}

/// `mount_point` + the hub's cgroup path relative to the mount's root.
fn join_cgroup_path(mount: &Mount, path: &str) -> PathBuf {
    let p = Path::new(path);
    let rel = p
        .strip_prefix(&mount.root)
        .or_else(|_| p.strip_prefix("/"))
        .unwrap_or(p);
    mount.mount_point.join(rel)
}

/// The cgroup2 mount that has memory, cpu and pids, and the hub's own directory in it.
fn v2_own_dir(mounts: &[Mount], own: &str) -> Option<(PathBuf, PathBuf)> {
    let (_, _, path) = own_paths(own).find(|(id, ctl, _)| *id == "0" && ctl.is_empty())?;
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .find(|m| {
            let listed =
                fs::read_to_string(m.mount_point.join("cgroup.controllers")).unwrap_or_default();
            has_all(&listed)
        })
        .map(|m| (m.mount_point.clone(), join_cgroup_path(m, path)))
}

fn has_all(list: &str) -> bool {
    let set: BTreeSet<&str> = list.split_whitespace().collect();
    CONTROLLERS.iter().all(|c| set.contains(c))
}

/// Where v2 room cgroups go: the hub's own cgroup when the controllers can be enabled in its
/// subtree_control; else its parent when the controllers are already enabled there (the hub runs
/// in a leaf of a delegated subtree, e.g. systemd `Delegate=yes` + `DelegateSubgroup=`).
fn v2_parent(mount_point: &Path, own: &Path) -> Result<PathBuf, String> {
    let read = |d: &Path, f: &str| fs::read_to_string(d.join(f)).unwrap_or_default();
    if has_all(&read(own, "cgroup.controllers")) {
        if has_all(&read(own, "cgroup.subtree_control")) {
            return Ok(own.to_path_buf());
        }
        match fs::write(own.join("cgroup.subtree_control"), "+memory +cpu +pids") {
            Ok(()) => return Ok(own.to_path_buf()),
            Err(e) => {
                if let Some(parent) = own.parent().filter(|_| own != mount_point)
                    && has_all(&read(parent, "cgroup.subtree_control"))
                {
                    return Ok(parent.to_path_buf());
                }
                return Err(format!(
                    "cgroup v2: cannot enable memory, cpu and pids in {} ({e}); run the hub in a delegated cgroup (systemd: Delegate=yes and DelegateSubgroup=hub)",
                    own.join("cgroup.subtree_control").display()
                ));
            }
        }
    }
    Err(format!(
        "cgroup v2: {} does not offer memory, cpu and pids",
        own.display()
    ))
}

/// The hub's own directory in the v1 memory, cpu and pids hierarchies that are mounted.
fn v1_dirs(mounts: &[Mount], own: &str) -> Layout {
    let find = |name: &str| -> Option<PathBuf> {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == name))?;
        let (_, _, path) = own_paths(own).find(|(_, ctl, _)| ctl.split(',').any(|c| c == name))?;
        Some(join_cgroup_path(mount, path))
    };
    Layout::V1 {
        memory: find("memory"),
        cpu: find("cpu"),
        pids: find("pids"),
    }
}

impl Layout {
    /// The room ids (`<instance>-<user>`) of the room cgroups of `instance` that exist now.
    pub(crate) fn rooms_of(&self, instance: &str) -> Vec<String> {
        let parents: Vec<&PathBuf> = match self {
            Layout::V2 { parent } => vec![parent],
            Layout::V1 { memory, cpu, pids } => [memory, cpu, pids].into_iter().flatten().collect(),
        };
        let prefix = format!("lodge-{instance}-");
        let mut rooms = BTreeSet::new();
        for parent in parents {
            let Ok(dir) = fs::read_dir(parent) else {
                continue;
            };
            rooms.extend(dir.flatten().filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.starts_with(&prefix)
                    .then(|| name["lodge-".len()..].to_owned())
            }));
        }
        rooms.into_iter().collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// One room's cgroup (one directory per v1 hierarchy, or one v2 directory).
#[derive(Debug, Clone)]
pub(crate) struct RoomCgroup {
    version: Version,
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    pids: Option<PathBuf>,
}

impl RoomCgroup {
    /// The (possibly not yet existing) cgroup of `room` (`<instance>-<user>`) in `layout`.
    pub(crate) fn for_user(layout: &Layout, room: &str) -> RoomCgroup {
        let name = format!("lodge-{room}");
        match layout {
            Layout::V2 { parent } => {
                let dir = parent.join(&name);
                RoomCgroup {
                    version: Version::V2,
                    memory: Some(dir.clone()),
                    cpu: Some(dir.clone()),
                    pids: Some(dir),
                }
            }
            Layout::V1 { memory, cpu, pids } => RoomCgroup {
                version: Version::V1,
                memory: memory.as_ref().map(|p| p.join(&name)),
                cpu: cpu.as_ref().map(|p| p.join(&name)),
                pids: pids.as_ref().map(|p| p.join(&name)),
            },
        }
    }

    /// Creates the room's cgroup with `limits`. A leftover group of the same name (a killed
    /// hub) has its processes killed and is recreated. `Ok(None)` plus a warning when cgroups
    /// cannot be created here; `Err` when one was created but a limit could not be written.
    pub(crate) async fn create(
        layout: &Layout,
        user: &str,
        limits: &Limits,
        warnings: &mut Vec<String>,
    ) -> Result<Option<RoomCgroup>, SpawnError> {
        let cg = RoomCgroup::for_user(layout, user);
        if cg.dirs().iter().any(|d| d.exists()) {
            tracing::warn!(user, "removing a leftover room cgroup");
            // If it cannot be removed (a process we cannot kill), it is reused below.
            let _ = cg.remove_leftover().await;
        }
        for dir in cg.dirs() {
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    cg.try_rmdir();
                    warnings.push(format!(
                        "no cgroup: cannot create {} ({e}): memory, cpu and pids limits not enforced (the hub needs root or a delegated cgroup)",
                        dir.display()
                    ));
                    return Ok(None);
                }
            }
        }
        if let Err(e) = cg.apply(limits, warnings) {
            cg.remove().await;
            return Err(e);
        }
        Ok(Some(cg))
    }

    #[cfg(test)]
    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// The distinct directories of this cgroup.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for d in [&self.memory, &self.cpu, &self.pids].into_iter().flatten() {
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
        out
    }

    fn apply(&self, limits: &Limits, warnings: &mut Vec<String>) -> Result<(), SpawnError> {
        let missing = |what: &str, set: bool, dir: &Option<PathBuf>, warnings: &mut Vec<String>| {
            if set && dir.is_none() {
                warnings.push(format!(
                    "cgroup v1: no {what} hierarchy mounted: {what} limit not enforced"
                ));
            }
        };
        match self.version {
            Version::V2 => {
                let Some(dir) = &self.memory else {
                    return Ok(());
                };
                let mem = limits
                    .memory_bytes
                    .map_or("max".to_owned(), |m| m.to_string());
                write_limit(dir, "memory.max", &mem)?;
                if dir.join("memory.swap.max").exists() {
                    let swap = if limits.memory_bytes.is_some() {
                        "0"
                    } else {
                        "max"
                    };
                    write_limit(dir, "memory.swap.max", swap)?;
                }
                let cpu = match limits.cpus {
                    Some(c) => format!("{} {CPU_PERIOD_US}", cpu_quota(c)),
                    None => format!("max {CPU_PERIOD_US}"),
                };
                write_limit(dir, "cpu.max", &cpu)?;
                let pids = limits.pids.map_or("max".to_owned(), |p| p.to_string());
                write_limit(dir, "pids.max", &pids)?;
            }
            Version::V1 => {
                missing(
                    "memory",
                    limits.memory_bytes.is_some(),
                    &self.memory,
                    warnings,
                );
                missing("cpu", limits.cpus.is_some(), &self.cpu, warnings);
                missing("pids", limits.pids.is_some(), &self.pids, warnings);
                if let Some(dir) = &self.memory {
                    set_v1_memory(dir, limits.memory_bytes)?;
                }
                if let Some(dir) = &self.cpu {
                    write_limit(dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    let quota = limits
                        .cpus
                        .map_or("-1".to_owned(), |c| cpu_quota(c).to_string());
                    write_limit(dir, "cpu.cfs_quota_us", &quota)?;
                }
                if let Some(dir) = &self.pids {
                    let pids = limits.pids.map_or("max".to_owned(), |p| p.to_string());
                    write_limit(dir, "pids.max", &pids)?;
                }
            }
        }
        Ok(())
    }

    /// Opens each directory's `cgroup.procs` for the child to join before exec.
    pub(crate) fn procs_files(&self) -> Result<Vec<OwnedFd>, SpawnError> {
        self.dirs()
            .into_iter()
            .map(|d| {
                let path = d.join("cgroup.procs");
                rustix::fs::open(&path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()).map_err(
                    |e| SpawnError::Cgroup {
                        path,
                        action: "open for the room to join",
                        error: e.into(),
                    },
                )
            })
            .collect()
    }

    /// The pids in the cgroup (all hierarchies).
    pub(crate) fn pids(&self) -> Vec<i32> {
        let mut set = BTreeSet::new();
        for d in self.dirs() {
            if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
                set.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
        set.into_iter().collect()
    }

    /// Sends SIGKILL to every process of the room; returns how many were found.
    pub(crate) fn kill_all(&self) -> usize {
        self.kill_all_except(None)
    }

    /// Sends SIGKILL to every process of the room but `spared`; returns how many were found
    /// (including `spared`).
    pub(crate) fn kill_all_except(&self, spared: Option<u32>) -> usize {
        let pids = self.pids();
        if pids.is_empty() {
            return 0;
        }
        if spared.is_none()
            && self.version == Version::V2
            && let Some(dir) = &self.memory
            && fs::write(dir.join("cgroup.kill"), "1").is_ok()
        {
            return pids.len();
        }
        // Hold a pidfd first, then check the pid is still in the cgroup, so a pid that exited
        // and was reused by an unrelated process is never signalled.
        let held: Vec<(i32, OwnedFd)> = pids
            .iter()
            .filter(|&&p| spared.is_none_or(|s| i64::from(s) != i64::from(p)))
            .filter_map(|&p| {
                let pid = Pid::from_raw(p)?;
                Some((
                    p,
                    rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok()?,
                ))
            })
            .collect();
        let still = self.pids();
        for (p, fd) in &held {
            if still.binary_search(p).is_ok() {
                let _ = rustix::process::pidfd_send_signal(fd, Signal::KILL);
            }
        }
        pids.len()
    }

    /// Removes every directory that is gone-able; true when none is left.
    pub(crate) fn try_rmdir(&self) -> bool {
        let mut all = true;
        for d in self.dirs() {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => all = false,
            }
        }
        all
    }

    /// Kills every process and removes the directories, retrying for a few seconds.
    pub(crate) async fn remove(&self) {
        if !self.remove_leftover().await {
            tracing::warn!(dirs = ?self.dirs(), "room cgroup not removed: processes would not die");
        }
    }

    /// The retry loop of [`RoomCgroup::remove_blocking`], on the blocking pool.
    async fn remove_leftover(&self) -> bool {
        let cg = self.clone();
        tokio::task::spawn_blocking(move || cg.remove_blocking())
            .await
            .unwrap_or(false)
    }

    /// Kills and removes, retrying until [`REMOVE_TIMEOUT`]; usable without a runtime (Drop,
    /// test guards). Returns whether the directories are gone.
    pub(crate) fn remove_blocking(&self) -> bool {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        loop {
            let found = self.kill_all();
            if found == 0 && self.try_rmdir() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Bytes the room uses now (v1 memory.usage_in_bytes, v2 memory.current).
    pub(crate) fn memory_usage(&self) -> Option<u64> {
        let dir = self.memory.as_ref()?;
        let file = match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    }

    /// How many processes the kernel OOM-killed in the room.
    pub(crate) fn oom_kills(&self) -> Option<u64> {
        let dir = self.memory.as_ref()?;
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = fs::read_to_string(dir.join(file)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
    }
}

fn cpu_quota(cpus: f64) -> u64 {
    // The kernel's minimum quota is 1 ms.
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

fn write_limit(dir: &Path, file: &str, value: &str) -> Result<(), SpawnError> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|error| SpawnError::Cgroup {
        path,
        action: "write limit",
        error,
    })
}

/// v1 needs memory.limit_in_bytes <= memory.memsw.limit_in_bytes at every step, so the order of
/// the two writes depends on whether the limit goes up or down; try one order, then the other.
fn set_v1_memory(dir: &Path, bytes: Option<u64>) -> Result<(), SpawnError> {
    let value = bytes.map_or("-1".to_owned(), |b| b.to_string());
    if !dir.join("memory.memsw.limit_in_bytes").exists() {
        return write_limit(dir, "memory.limit_in_bytes", &value);
    }
    let pair = |first: &str, second: &str| {
        write_limit(dir, first, &value)?;
        write_limit(dir, second, &value)
    };
    pair("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
        .or_else(|_| pair("memory.memsw.limit_in_bytes", "memory.limit_in_bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
22 1 259:1 / / rw - ext4 /dev/vda rw
35 22 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 22 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
37 22 0:33 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
38 22 0:32 /hub.scope /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
    const OWN: &str = "\
9:pids:/
4:memory:/process_api/abc
3:cpuset:/x
1:cpu,cpuacct:/svc
0::/hub.scope/inner
";

    #[test]
    fn v1_dirs_follow_own_paths_and_mounts() {
        let mounts = mountinfo::parse(MOUNTS);
        assert_eq!(
            v1_dirs(&mounts, OWN),
            Layout::V1 {
                memory: Some("/sys/fs/cgroup/memory/process_api/abc".into()),
                cpu: Some("/sys/fs/cgroup/cpu,cpuacct/svc".into()),
                pids: None,
            }
        );
        let m = &mounts[4];
        assert_eq!(
            join_cgroup_path(m, "/hub.scope/inner"),
            Path::new("/sys/fs/cgroup/unified/inner")
        );
    }

    #[test]
    fn room_cgroup_names_and_quota() {
        let layout = Layout::V1 {
            memory: Some("/m".into()),
            cpu: None,
            pids: Some("/p".into()),
        };
        let cg = RoomCgroup::for_user(&layout, "alice");
        assert_eq!(
            cg.dirs(),
            vec![
                PathBuf::from("/m/lodge-alice"),
                PathBuf::from("/p/lodge-alice")
            ]
        );
        let v2 = RoomCgroup::for_user(
            &Layout::V2 {
                parent: "/u".into(),
            },
            "bob",
        );
        assert_eq!(v2.dirs(), vec![PathBuf::from("/u/lodge-bob")]);
        assert_eq!(cpu_quota(0.5), 50_000);
        assert_eq!(cpu_quota(2.0), 200_000);
        assert_eq!(cpu_quota(0.0001), 1000);
    }

    #[test]
    fn detects_this_host() {
        // This machine (and CI) has v1 memory, cpu and pids hierarchies and a v2 hierarchy
        // without controllers, so the layout must be v1 with all three.
        match detect() {
            Ok(Layout::V1 { memory, cpu, pids }) => {
                assert!(memory.is_some() && cpu.is_some() && pids.is_some());
            }
            Ok(Layout::V2 { parent }) => assert!(parent.exists()),
            Err(w) => panic!("no cgroup layout detected: {w}"),
        }
    }
}
