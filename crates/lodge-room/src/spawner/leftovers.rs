//! What dead rooms of this hub left on the machine (a hub killed with SIGKILL never ran its
//! stop path): workspace mounts, loop devices and room cgroups. It finds them (for `lodge
//! doctor`) and removes them (at hub start). A room whose processes still run is never touched:
//! a volume still mounted at a sandbox's `/workspace`, the volume of a user whose room cgroup
//! has processes, and a cgroup with processes are left alone.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::cgroup::{self, RoomCgroup};
use super::local::SANDBOX_WORKSPACE;
use super::{RoomFiles, mountinfo, volume};

/// Leftovers of dead rooms under one DATA_DIR and hub instance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Workspace volumes still mounted in the hub's namespace, used by no room.
    pub mounts: Vec<PathBuf>,
    /// Loop devices backing this DATA_DIR's volume images, mounted neither in the hub's
    /// namespace nor in a sandbox. Detaching one that another room's namespace still holds a
    /// copy of only marks it: the kernel frees it when that room stops.
    pub loop_devices: Vec<PathBuf>,
    /// Room cgroups (`lodge-<instance>-<user>`) without processes.
    pub cgroups: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.loop_devices.is_empty() && self.cgroups.is_empty()
    }
}

/// Finds what dead rooms of the hub on `files`' DATA_DIR left. Reads /proc and /sys only.
pub fn find(files: &RoomFiles) -> Leftovers {
    let instance = files.instance();
    let in_rooms =
        mountinfo::devices_at_in_other_namespaces(Path::new(SANDBOX_WORKSPACE)).unwrap_or_default();
    let layout = cgroup::detect().ok();
    let live = |user: &str| {
        layout.as_ref().is_some_and(|l| {
            !RoomCgroup::for_user(l, &format!("{instance}-{user}"))
                .pids()
                .is_empty()
        })
    };
    let own = mountinfo::read().unwrap_or_default();
    let workspaces = canonical(&files.workspaces());
    let mounts: Vec<PathBuf> = own
        .iter()
        .filter(|m| m.mount_point.parent() == Some(workspaces.as_path()))
        .filter(|m| !in_rooms.contains(&m.device))
        .filter(|m| {
            let user = m.mount_point.file_name().unwrap_or_default();
            !live(&user.to_string_lossy())
        })
        .map(|m| m.mount_point.clone())
        .collect();
    let mounted: HashSet<&str> = own.iter().map(|m| m.device.as_str()).collect();
    let loop_devices = volume::loop_devices_below(&canonical(&files.state_dirs()))
        .into_iter()
        .filter(|d| !mounted.contains(d.number.as_str()) && !in_rooms.contains(&d.number))
        .map(|d| d.device)
        .collect();
    let cgroups = match &layout {
        Some(layout) => layout
            .rooms_of(&instance)
            .into_iter()
            .filter(|room| RoomCgroup::for_user(layout, room).pids().is_empty())
            .collect(),
        None => Vec::new(),
    };
    Leftovers {
        mounts,
        loop_devices,
        cgroups,
    }
}

/// Removes `found` (from [`find`]); returns what could not be removed, with why.
pub fn remove(found: &Leftovers) -> Vec<String> {
    let mut failed = Vec::new();
    for m in &found.mounts {
        if let Err(e) = volume::unmount(m) {
            failed.push(e.to_string());
        }
    }
    for d in &found.loop_devices {
        if let Err(e) = volume::detach(d) {
            failed.push(e);
        }
    }
    if let Ok(layout) = cgroup::detect() {
        for room in &found.cgroups {
            // rmdir refuses a cgroup that gained a process since `find`: nothing live is lost.
            if !RoomCgroup::for_user(&layout, room).try_rmdir() {
                failed.push(format!("room cgroup lodge-{room} could not be removed"));
            }
        }
    }
    failed
}

fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
