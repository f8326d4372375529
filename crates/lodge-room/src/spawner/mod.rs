//! Spawners turn (user, limits) into a running room: a sandboxed `lodge agent` whose stdin and
//! stdout are the room's private channel. They build isolation; they never speak the protocol
//! beyond handing the channel over, and they never decide who may have a room.

use std::path::PathBuf;
use std::time::Duration;

/// Which wall a local room is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// bubblewrap namespaces + cgroup + rlimits, with Landlock and seccomp inside (the default).
    Bubblewrap,
    /// A plain child process of the hub (development only; the hub warns on every start).
    /// The agent still applies Landlock and seccomp.
    None,
}

/// Network access from inside a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Only a private loopback (the default).
    None,
    /// The host's network.
    Host,
}

/// Resource limits of one room, from the user's profile. `None` means "not limited".
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub tmp_bytes: Option<u64>,
    pub open_files: u64,
    pub network: Network,
}

/// Everything a spawner needs to build one user's room.
#[derive(Debug, Clone)]
pub struct RoomSpec {
    /// The user's validated name (`^[a-z][a-z0-9_-]{0,31}$`), used for cgroup and host names.
    pub user: String,
    /// The user's permanent id (never reused); local rooms derive their host uid from it.
    pub user_id: i64,
    /// Tells apart the rooms of different hubs on one machine (`[a-z0-9]{1,16}`; cgroup names
    /// are `lodge-<instance>-<user>`), so one hub never mistakes another's room for a leftover.
    pub instance: String,
    /// Host directory holding the workspace (`DATA_DIR/workspaces/NAME`).
    pub workspace: PathBuf,
    /// Host directory the spawner may use for this room's own files (`DATA_DIR/rooms/NAME`).
    pub state_dir: PathBuf,
    /// The `lodge` executable to run as the agent.
    pub agent_exe: PathBuf,
    pub isolation: Isolation,
    pub limits: Limits,
    /// Host uid of the first room when the hub runs as root; room uid = base + user_id.
    pub uid_base: u32,
    /// How long to wait for a room to stop before killing it.
    pub stop_grace: Duration,
    /// Host directories (absolute, existing) the room may read and execute from at the same
    /// path: software of upstream servers installed outside `/usr` (virtualenvs, node_modules).
    /// Bound read-only into a bubblewrap room; with isolation none only opened to Landlock.
    pub read_only_paths: Vec<PathBuf>,
}

mod cgroup;
pub mod leftovers;
mod local;
mod mountinfo;
mod volume;

pub use cgroup::{Layout as CgroupLayout, detect as detect_cgroups};
pub use local::{LocalSpawner, RoomProcess, SpawnError};
pub use volume::unmount;

impl RoomSpec {
    /// `<instance>-<user>`: unique per room on this machine (cgroups are `lodge-<room_id>`).
    pub fn room_id(&self) -> String {
        format!("{}-{}", self.instance, self.user)
    }
}
