//! Spawners turn (user, limits) into a running room: a sandboxed `lodge agent` whose stdin and
//! stdout are the room's private channel. They build isolation and own the room's files; they
//! never speak the protocol beyond handing the channel over, and never decide who may have a room.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

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

/// What the hub asks of a spawner for one user's room: who, and within which limits. Where the
/// room's files live is the spawner's own business.
#[derive(Debug, Clone)]
pub struct RoomRequest {
    /// The user's validated name (`^[a-z][a-z0-9_-]{0,31}$`).
    pub user: String,
    /// The user's permanent id (never reused): it owns the user's workspace.
    pub user_id: i64,
    pub isolation: Isolation,
    pub limits: Limits,
    /// Host uid of the first room when the hub runs as root; room uid = base + user_id.
    pub uid_base: u32,
    /// How long to wait for a room to stop before killing it.
    pub stop_grace: Duration,
    /// Host directories the room may read and execute from at the same path (see
    /// [`RoomSpec::read_only_paths`]).
    pub read_only_paths: Vec<PathBuf>,
}

/// Everything the local spawner needs to build one user's room: the request, placed on this
/// machine.
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
mod files;
mod leftovers;
mod local;
mod mountinfo;
mod volume;

pub use cgroup::{Layout as CgroupLayout, detect as detect_cgroups};
pub use files::{FilesError, RoomFiles};
pub use leftovers::Leftovers;
pub use local::{LocalSpawner, RoomProcess, SpawnError};

/// The hub end of a room's channel: what the agent writes (its stdout) ...
pub type RoomReader = Box<dyn AsyncRead + Send + Unpin>;
/// ... and what the agent reads (its stdin).
pub type RoomWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// Where a running room is, as the hub records it: enough for the spawner that started it to
/// find it again ([`Spawner::reattach`]) and to tell it apart in [`Spawner::list`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomAddress {
    /// The user whose room it is.
    pub user: String,
    /// Spawner-specific: `local:<instance>-<user>` for a room on this machine.
    pub location: String,
}

impl fmt::Display for RoomAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.location, self.user)
    }
}

/// A room just started (or reattached): its channel, its diagnostics, what isolation it lacks,
/// and its life, which the hub watches and hands back to [`Spawner::stop`].
pub struct StartedRoom {
    pub address: RoomAddress,
    pub reader: RoomReader,
    pub writer: RoomWriter,
    /// Agent diagnostics, for the hub log; `None` when the room has no such stream.
    pub stderr: Option<RoomReader>,
    /// Degraded isolation, e.g. "no cgroup: …", for the caller to log once.
    pub warnings: Vec<String>,
    pub life: Box<dyn RoomLife>,
}

/// The running part of a room: what the hub waits on, and what stopping it takes.
#[async_trait::async_trait]
pub trait RoomLife: Send {
    /// Waits until the room ends by itself.
    async fn wait(&mut self) -> io::Result<ExitStatus>;
    /// Has the room ended? (non-blocking)
    fn try_exited(&mut self) -> Option<ExitStatus>;
    /// How many processes the kernel OOM-killed in the room, where that is known.
    fn oom_kills(&self) -> Option<u64>;
    /// Waits up to `grace` for the room to end by itself (the hub has already asked it to),
    /// then ends it and releases what it held (processes, cgroup, quota volume).
    async fn stop(self: Box<Self>, grace: Duration);
}

/// Builds rooms and owns their files. The hub holds one as `Arc<dyn Spawner>`; the local
/// sandbox ([`LocalSpawner`]) is one, a scale-out or Kubernetes spawner would be another.
#[async_trait::async_trait]
pub trait Spawner: Send + Sync {
    /// Starts `request.user`'s room, after checking that the user's files are theirs (a
    /// removed user's workspace is never handed to a new user of the same name).
    async fn start(&self, request: &RoomRequest) -> Result<StartedRoom, SpawnError>;

    /// Stops a room this spawner started (see [`RoomLife::stop`]). Any failure to start that
    /// comes after [`Self::start`] returned must come here too, so nothing stays mounted.
    async fn stop(&self, room: Box<dyn RoomLife>, grace: Duration);

    /// The live rooms this spawner started or finds running for this hub.
    fn list(&self) -> Vec<RoomAddress>;

    /// Connects again to a running room by its recorded address, for rooms that outlive the
    /// hub. Spawners that cannot answer [`SpawnError::Unsupported`].
    async fn reattach(&self, address: &RoomAddress) -> Result<StartedRoom, SpawnError>;

    /// Deletes a removed user's files (workspace, quota volume, room state), unmounting first.
    fn purge(&self, user: &str) -> Result<(), FilesError>;

    /// Removes what rooms of a hub that died without stopping them left behind; rooms still
    /// running are left alone. Called once, when the hub starts; logs what it did.
    fn sweep_leftovers(&self);
}

impl RoomSpec {
    /// `<instance>-<user>`: unique per room on this machine (cgroups are `lodge-<room_id>`).
    pub fn room_id(&self) -> String {
        format!("{}-{}", self.instance, self.user)
    }
}
