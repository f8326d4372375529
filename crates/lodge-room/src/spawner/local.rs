//! The local spawner: builds a room on this machine as a bubblewrap sandbox (or, for
//! development, a plain child process) in its own cgroup, with rlimits and an optional quota
//! volume, and hands back the agent's stdio. It never speaks the room protocol.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use rustix::process::{Pid, Resource, Signal};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::cgroup::{self, Layout, RoomCgroup};
use super::{FilesError, RoomFiles, leftovers, volume};
use super::{
    Isolation, Network, RoomAddress, RoomLife, RoomRequest, RoomSpec, Spawner, StartedRoom,
};
use crate::sys::spawner::{self as sys, Bridge, BridgeEntry, ChildSetup};

/// What to do without bwrap. Users read it too (in "could not start the room"), and only the
/// operator can install it, so it says who.
const BWRAP_FIX: &str = "the hub's operator must install bubblewrap on the host (Debian/Ubuntu: \
     apt-get install bubblewrap, or start the hub with scripts/serve, which installs it; \
     Fedora: dnf install bubblewrap), or set rooms.isolation = \"none\" for development only";

/// Where things are inside a bubblewrap room.
const SANDBOX_EXE: &str = "/run/lodge/lodge";
pub(super) const SANDBOX_WORKSPACE: &str = "/workspace";
const SANDBOX_TMP: &str = "/tmp";
const SANDBOX_ID: u32 = 1000;
/// The tmpfs the child mounts (in its private mount namespace) to hand the unprivileged bwrap
/// paths it could not traverse to. bwrap itself needs /tmp to exist and mounts its own root
/// there on top, so nothing else depends on what the host has at /tmp.
const BRIDGE: &str = "/tmp";
/// Files and directories of the host's /etc that programs in a room need, bound read-only when
/// present. The host /etc as a whole (shadow, ssh keys, the hub's config) stays out.
const ETC_ENTRIES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "crypto-policies",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "host.conf",
    "hosts",
    "resolv.conf",
    "gai.conf",
    "mime.types",
    "protocols",
    "services",
    "networks",
    "os-release",
    "profile",
    "bash.bashrc",
    "inputrc",
];
/// Top-level directories that are symlinks into /usr on merged-/usr systems.
const TOP_LEVEL: &[&str] = &["bin", "sbin", "lib", "lib64", "lib32", "libx32"];
/// Places of a bubblewrap room's own making: a read-only path may not be one of them, lie
/// beneath one or contain one (the bind would hide the sandbox, or be hidden by it; the host's
/// /tmp is not even what bwrap sees when the hub is root).
const SANDBOX_PLACES: &[&str] = &["/proc", "/dev", "/tmp", "/run", "/etc", SANDBOX_WORKSPACE];
/// How long `stop` lets bwrap exit after its sandbox was killed, before killing bwrap too.
const INNER_KILL_GRACE: Duration = Duration::from_millis(500);
/// bwrap and the agent need a few descriptors whatever the profile says.
const MIN_OPEN_FILES: u64 = 64;

/// Why a room could not be started. Each message names what was wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("bubblewrap (bwrap) not found: {fix}")]
    NoBubblewrap { fix: String },
    #[error("invalid room user name {user:?}: it must match ^[a-z][a-z0-9_-]{{0,31}}$")]
    InvalidUser { user: String },
    #[error(
        "room uid for user id {user_id} with uid_base {uid_base} is out of range: choose a uid_base so that uid_base + user id lies in 1000..2147483647 (the kernel refuses larger ids in a user namespace map) and is unused on the host"
    )]
    RoomUid { user_id: i64, uid_base: u32 },
    #[error(
        "workspace {}: {error}; check that DATA_DIR/workspaces is a writable local directory",
        path.display()
    )]
    Workspace { path: PathBuf, error: io::Error },
    #[error(
        "room state directory {}: {error}; check that DATA_DIR/rooms is a writable local directory",
        path.display()
    )]
    StateDir { path: PathBuf, error: io::Error },
    #[error(
        "agent executable {}: {error}; point the hub at the installed lodge binary",
        path.display()
    )]
    AgentExe { path: PathBuf, error: io::Error },
    #[error(
        "cgroup {}: {action}: {error}; check the profile's limits and that the hub owns its cgroup",
        path.display()
    )]
    Cgroup {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },
    #[error(
        "disk quota volume {}: {detail}; check free space in DATA_DIR, or remove the image to recreate it",
        path.display()
    )]
    Volume { path: PathBuf, detail: String },
    #[error(
        "read-only path {}: {reason}; set in [rooms] read_only_paths",
        path.display()
    )]
    ReadOnlyPath { path: PathBuf, reason: String },
    #[error("could not start the room ({} while {stage}): {error}{hint}", program.display())]
    Spawn {
        program: PathBuf,
        stage: &'static str,
        error: io::Error,
        hint: &'static str,
    },
    #[error("{0}")]
    Files(#[from] FilesError),
    #[error("{what} is not supported by the {spawner} spawner")]
    Unsupported {
        what: &'static str,
        spawner: &'static str,
    },
}

/// Starts rooms on this machine, with their files under one DATA_DIR.
pub struct LocalSpawner {
    files: RoomFiles,
    /// Tells apart the rooms of different hubs on one machine ([`RoomFiles::instance`]).
    instance: String,
    /// The `lodge` executable to run as the agent.
    agent_exe: PathBuf,
    bwrap: Option<PathBuf>,
    root: bool,
    disable_userns: OnceLock<bool>,
    cgroups: OnceLock<Result<Layout, String>>,
    host: OnceLock<HostLayout>,
    agent_args: Option<Vec<OsString>>,
}

impl LocalSpawner {
    /// A spawner for the rooms of the hub on `data_dir` (canonical, as the hub resolves it:
    /// the hub instance tag is derived from it), running `agent_exe` as the agent. Finds bwrap
    /// (PATH, else /usr/bin/bwrap); its absence only matters for `Isolation::Bubblewrap`,
    /// where `spawn` returns `SpawnError::NoBubblewrap`.
    pub fn new(data_dir: impl Into<PathBuf>, agent_exe: impl Into<PathBuf>) -> Self {
        let files = RoomFiles::new(data_dir);
        LocalSpawner {
            instance: files.instance(),
            files,
            agent_exe: agent_exe.into(),
            bwrap: find_bwrap(),
            root: rustix::process::geteuid().is_root(),
            disable_userns: OnceLock::new(),
            cgroups: OnceLock::new(),
            host: OnceLock::new(),
            agent_args: None,
        }
    }

    pub fn bubblewrap_available(&self) -> bool {
        self.bwrap.is_some()
    }

    /// The room files of this spawner's DATA_DIR.
    pub fn files(&self) -> &RoomFiles {
        &self.files
    }

    /// A request placed on this machine: the hub instance, the user's directories, the agent.
    pub fn spec(&self, request: &RoomRequest) -> RoomSpec {
        RoomSpec {
            user: request.user.clone(),
            user_id: request.user_id,
            instance: self.instance.clone(),
            workspace: self.files.workspace(&request.user),
            state_dir: self.files.state_dir(&request.user),
            agent_exe: self.agent_exe.clone(),
            isolation: request.isolation,
            limits: request.limits.clone(),
            uid_base: request.uid_base,
            stop_grace: request.stop_grace,
            read_only_paths: request.read_only_paths.clone(),
        }
    }

    /// Replaces the arguments after the executable (normally `agent --workspace … --tmp …
    /// [--network]`), keeping everything else about the room. For tests and sandbox probes
    /// (e.g. `lodge doctor` running `/bin/true` in a real room).
    pub fn with_agent_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.agent_args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Builds and starts one room. The returned process's stdin/stdout are the channel.
    pub async fn spawn(&self, spec: &RoomSpec) -> Result<RoomProcess, SpawnError> {
        validate_user(spec)?;
        let mut warnings = Vec::new();
        let ids = if self.root {
            Some(room_ids(spec)?)
        } else {
            None
        };
        check_read_only_paths(spec, ids.is_some())?;
        if spec.isolation == Isolation::Bubblewrap && self.bwrap.is_none() {
            return Err(SpawnError::NoBubblewrap {
                fix: BWRAP_FIX.to_owned(),
            });
        }
        create_private_dir(&spec.state_dir).map_err(|error| SpawnError::StateDir {
            path: spec.state_dir.clone(),
            error,
        })?;
        // Mounted for this room: any failure below drops it, which unmounts the volume again.
        let mut mounted = None;
        if let Some(disk) = spec.limits.disk_bytes {
            match ids {
                Some(owner) => {
                    let image = volume::image_path(&spec.state_dir);
                    match volume::prepare(&spec.workspace, &image, disk, owner).await? {
                        volume::Quota::Mounted(m) => mounted = Some(m),
                        volume::Quota::NotApplied(w) => warnings.push(w),
                    }
                }
                None => warnings.push(
                    "disk quota not applied: the hub is not root (loop mounts need root); the workspace is unlimited".to_owned(),
                ),
            }
        }
        let workspace = prepare_workspace(&spec.workspace, ids)?;
        let exe = fs::canonicalize(&spec.agent_exe)
            .and_then(|p| {
                let meta = fs::metadata(&p)?;
                if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                    Ok(p)
                } else {
                    Err(io::Error::other("not an executable file"))
                }
            })
            .map_err(|error| SpawnError::AgentExe {
                path: spec.agent_exe.clone(),
                error,
            })?;

        let cgroup = match self.cgroups.get_or_init(cgroup::detect) {
            Ok(layout) => {
                RoomCgroup::create(layout, &spec.room_id(), &spec.limits, &mut warnings).await?
            }
            Err(w) => {
                warnings.push(w.clone());
                None
            }
        };
        let started = self
            .start(spec, &workspace, &exe, ids, cgroup.as_ref(), &mut warnings)
            .await;
        match started {
            Ok((child, stdio)) => {
                let (stdin, stdout, stderr) = stdio;
                // The warnings go back to the caller, which logs them once.
                Ok(RoomProcess {
                    stdin: Some(stdin),
                    stdout: Some(stdout),
                    stderr: Some(stderr),
                    warnings,
                    child,
                    cgroup,
                    volume: mounted,
                    finished: false,
                })
            }
            Err(e) => {
                if let Some(cg) = cgroup {
                    cg.remove().await;
                }
                Err(e)
            }
        }
    }

    async fn start(
        &self,
        spec: &RoomSpec,
        workspace: &Path,
        exe: &Path,
        ids: Option<(u32, u32)>,
        cgroup: Option<&RoomCgroup>,
        warnings: &mut Vec<String>,
    ) -> Result<(Child, (ChildStdin, ChildStdout, ChildStderr)), SpawnError> {
        let network = spec.limits.network == Network::Host;
        let (mut cmd, program, bridge, credentials) = match spec.isolation {
            Isolation::None => {
                warnings.push("isolation = none: the room runs without namespaces".to_owned());
                let tmp = spec.state_dir.join("tmp");
                create_private_dir(&tmp).map_err(|error| SpawnError::StateDir {
                    path: tmp.clone(),
                    error,
                })?;
                let args = self.agent_argv(
                    workspace.as_os_str(),
                    tmp.as_os_str(),
                    &spec.read_only_paths,
                    network,
                );
                let mut cmd = Command::new(exe);
                cmd.args(args)
                    .env_clear()
                    .env("HOME", workspace)
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                    .env("LANG", "C.UTF-8")
                    .env("USER", &spec.user)
                    .env("LOGNAME", &spec.user)
                    .env("TMPDIR", &tmp)
                    .current_dir(workspace);
                pass_log_env(&mut cmd);
                (cmd, exe.to_path_buf(), None, None)
            }
            Isolation::Bubblewrap => {
                let bwrap = self.bwrap.clone().ok_or_else(|| SpawnError::NoBubblewrap {
                    fix: BWRAP_FIX.to_owned(),
                })?;
                let (passwd, group) = write_identity_files(spec)?;
                let (sources, bridge) = if ids.is_some() {
                    let entry = |source: &Path, name: &str, dir: bool| -> Result<_, SpawnError> {
                        Ok(BridgeEntry {
                            source: cstring(source)?,
                            target: cstring(&Path::new(BRIDGE).join(name))?,
                            dir,
                        })
                    };
                    let bridge = Bridge {
                        mount_point: cstring(Path::new(BRIDGE))?,
                        entries: vec![
                            entry(workspace, "workspace", true)?,
                            entry(exe, "lodge", false)?,
                            entry(&passwd, "passwd", false)?,
                            entry(&group, "group", false)?,
                        ],
                    };
                    let b = Path::new(BRIDGE);
                    let sources = SandboxSources {
                        workspace: b.join("workspace"),
                        exe: b.join("lodge"),
                        passwd: b.join("passwd"),
                        group: b.join("group"),
                    };
                    (sources, Some(bridge))
                } else {
                    warnings.push(
                        "rooms share the hub's uid; no per-user uid separation (run the hub as root for per-user uids)".to_owned(),
                    );
                    let sources = SandboxSources {
                        workspace: workspace.to_path_buf(),
                        exe: exe.to_path_buf(),
                        passwd,
                        group,
                    };
                    (sources, None)
                };
                let disable_userns = *self
                    .disable_userns
                    .get_or_init(|| bwrap_supports(&bwrap, "--disable-userns"));
                let host = self.host.get_or_init(HostLayout::probe);
                let argv = self.agent_argv(
                    OsStr::new(SANDBOX_WORKSPACE),
                    OsStr::new(SANDBOX_TMP),
                    &spec.read_only_paths,
                    network,
                );
                let args = bwrap_args(spec, &sources, host, disable_userns, &argv);
                let mut cmd = Command::new(&bwrap);
                cmd.args(args).env_clear().current_dir("/");
                (cmd, bwrap, bridge, ids)
            }
        };

        let cgroup_procs = match cgroup {
            Some(cg) => cg.procs_files()?,
            None => Vec::new(),
        };
        let setup = ChildSetup {
            cgroup_procs,
            rlimits: self.rlimits(spec, credentials.is_some()),
            ignore_sigxfsz: spec.limits.disk_bytes.is_some(),
            bridge,
            credentials,
        };
        let spawn_err = |stage: &'static str, error: io::Error| SpawnError::Spawn {
            program: program.clone(),
            stage,
            error,
            hint: "",
        };
        let stages = sys::install(&mut cmd, setup).map_err(|e| spawn_err("preparing", e))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = match spawn_on_fork_thread(cmd).await {
            Ok(child) => child,
            Err(error) => {
                let stage = stages.failed_stage();
                let hint = match stage {
                    Some(sys::Stage::BridgeSource) => {
                        "; the workspace, agent executable and state files must be reachable by root"
                    }
                    Some(sys::Stage::Rlimit) => "; lower open_files or pids in the profile",
                    _ => "",
                };
                return Err(SpawnError::Spawn {
                    program,
                    stage: stage.map_or("executing", sys::Stage::describe),
                    error,
                    hint,
                });
            }
        };
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.start_kill();
            return Err(spawn_err(
                "taking its stdio",
                io::Error::other("stdio not piped"),
            ));
        };
        Ok((child, (stdin, stdout, stderr)))
    }

    fn agent_argv(
        &self,
        workspace: &OsStr,
        tmp: &OsStr,
        read_only: &[PathBuf],
        network: bool,
    ) -> Vec<OsString> {
        if let Some(args) = &self.agent_args {
            return args.clone();
        }
        let mut argv: Vec<OsString> = vec![
            "agent".into(),
            "--workspace".into(),
            workspace.into(),
            "--tmp".into(),
            tmp.into(),
        ];
        for path in read_only {
            argv.extend(["--read-only".into(), path.into()]);
        }
        if network {
            argv.push("--network".into());
        }
        argv
    }

    fn rlimits(&self, spec: &RoomSpec, own_uid: bool) -> Vec<(Resource, u64)> {
        let limits = &spec.limits;
        let ceiling = if self.root {
            fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(1 << 20)
        } else {
            rustix::process::getrlimit(Resource::Nofile)
                .maximum
                .unwrap_or(u64::MAX)
        };
        let mut out = vec![
            (Resource::Core, 0),
            (
                Resource::Nofile,
                limits
                    .open_files
                    .clamp(MIN_OPEN_FILES, ceiling.max(MIN_OPEN_FILES)),
            ),
        ];
        // RLIMIT_NPROC counts per uid: only meaningful when the room has a uid of its own.
        if let (Some(pids), true) = (limits.pids, own_uid) {
            out.push((Resource::Nproc, pids));
        }
        if let Some(disk) = limits.disk_bytes {
            out.push((Resource::Fsize, disk));
        }
        out
    }
}

/// One started room: its channel (the agent's stdin/stdout), its diagnostics (stderr), warnings
/// about degraded isolation, and control over its life. The stdio fields are `Option`s so the
/// hub can take them (`take_channel`, `take_stderr`) and keep the process for `stop`.
/// Dropping a `RoomProcess` without `stop` kills every process of the room and unmounts its
/// volume (lazily: the loop device goes once the last process using it is gone).
pub struct RoomProcess {
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    /// Agent diagnostics; the hub logs lines from it.
    pub stderr: Option<ChildStderr>,
    /// Degraded isolation, e.g. "no cgroup: …".
    pub warnings: Vec<String>,
    child: Child,
    cgroup: Option<RoomCgroup>,
    /// The workspace's quota volume, unmounted when the room is stopped or dropped.
    volume: Option<volume::Mounted>,
    finished: bool,
}

impl RoomProcess {
    /// The channel (stdin, stdout), once; `None` if either was taken already.
    pub fn take_channel(&mut self) -> Option<(ChildStdin, ChildStdout)> {
        if self.stdin.is_none() || self.stdout.is_none() {
            return None;
        }
        Some((self.stdin.take()?, self.stdout.take()?))
    }

    /// The agent's stderr, once.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// Host pid of the room's outer process (bwrap, or the agent without isolation).
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Has the room's outer process exited? (non-blocking)
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for it to exit.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Stops the room: waits up to `grace` for it to exit by itself (the hub has already sent
    /// Shutdown or closed stdin), then kills every process of the room (cgroup-wide when there
    /// is a cgroup), reaps, removes the cgroup and unmounts the workspace volume.
    pub async fn stop(mut self, grace: Duration) {
        let exited = matches!(
            tokio::time::timeout(grace, self.child.wait()).await,
            Ok(Ok(_))
        );
        if !exited && let Some(cg) = &self.cgroup {
            // Kill the room's inner processes first: bwrap (the outer process) then reaps its
            // child and exits by itself, leaving no orphaned zombies for the host's init.
            cg.kill_all_except(self.child.id());
            let _ = tokio::time::timeout(INNER_KILL_GRACE, self.child.wait()).await;
        }
        if self.try_exited().is_none() {
            self.kill_group();
            if let Some(cg) = &self.cgroup {
                cg.kill_all();
            }
            let _ = self.child.kill().await;
        }
        if let Some(cg) = self.cgroup.take() {
            // Also catches processes that outlived the outer one (isolation = none).
            cg.remove().await;
        }
        // Every process of the room is gone: nothing holds the volume any more.
        drop(self.volume.take());
        self.finished = true;
    }

    /// Memory the room's cgroup uses now; `None` without a cgroup.
    pub fn memory_usage(&self) -> Option<u64> {
        self.cgroup.as_ref()?.memory_usage()
    }

    /// How many processes the kernel OOM-killed in this room; `None` without a cgroup.
    pub fn oom_kills(&self) -> Option<u64> {
        self.cgroup.as_ref()?.oom_kills()
    }

    /// SIGKILL to the outer process's group, while the outer process is unreaped (so the group
    /// id cannot have been reused).
    fn kill_group(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && let Some(pid) = self.child.id().and_then(|p| Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    }

    #[cfg(test)]
    fn cgroup(&self) -> Option<&RoomCgroup> {
        self.cgroup.as_ref()
    }
}

impl Drop for RoomProcess {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // bwrap runs with --die-with-parent and its sandbox is a pid namespace: killing it
        // ends every process inside. The cgroup kill covers isolation = none.
        self.kill_group();
        let _ = self.child.start_kill();
        if let Some(cg) = self.cgroup.take() {
            cg.kill_all();
            // The outer process is reaped by tokio in the background; rmdir waits for that.
            let _ = std::thread::Builder::new()
                .name("lodge-room-cleanup".into())
                .spawn(move || cg.remove_blocking());
        }
    }
}

#[async_trait::async_trait]
impl RoomLife for RoomProcess {
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        RoomProcess::wait(self).await
    }

    fn try_exited(&mut self) -> Option<ExitStatus> {
        RoomProcess::try_exited(self)
    }

    fn oom_kills(&self) -> Option<u64> {
        RoomProcess::oom_kills(self)
    }

    async fn stop(self: Box<Self>, grace: Duration) {
        RoomProcess::stop(*self, grace).await
    }
}

#[async_trait::async_trait]
impl Spawner for LocalSpawner {
    async fn start(&self, request: &RoomRequest) -> Result<StartedRoom, SpawnError> {
        self.files.claim(&request.user, request.user_id)?;
        let spec = self.spec(request);
        let mut process = self.spawn(&spec).await?;
        let (Some((stdin, stdout)), stderr) = (process.take_channel(), process.take_stderr())
        else {
            return Err(SpawnError::Spawn {
                program: spec.agent_exe,
                stage: "taking its stdio",
                error: io::Error::other("the room has no channel"),
                hint: "",
            });
        };
        Ok(StartedRoom {
            address: RoomAddress {
                user: spec.user.clone(),
                location: format!("local:{}", spec.room_id()),
            },
            reader: Box::new(stdout),
            writer: Box::new(stdin),
            stderr: stderr.map(|e| Box::new(e) as super::RoomReader),
            warnings: std::mem::take(&mut process.warnings),
            life: Box::new(process),
        })
    }

    async fn stop(&self, room: Box<dyn RoomLife>, grace: Duration) {
        room.stop(grace).await
    }

    /// The rooms of this hub whose cgroup has processes. Without cgroups (a hub that is not
    /// root and has no delegated cgroup) there is nothing to find them by, and it lists none.
    fn list(&self) -> Vec<RoomAddress> {
        let Ok(layout) = cgroup::detect() else {
            return Vec::new();
        };
        let prefix = format!("{}-", self.instance);
        layout
            .rooms_of(&self.instance)
            .into_iter()
            .filter(|room| !RoomCgroup::for_user(&layout, room).pids().is_empty())
            .filter_map(|room| {
                let user = room.strip_prefix(&prefix)?.to_owned();
                Some(RoomAddress {
                    user,
                    location: format!("local:{room}"),
                })
            })
            .collect()
    }

    /// Unsupported: a local room's channel is the stdio of the process that started it, which
    /// went with the hub that owned it. Such rooms are leftovers, removed at the next start.
    async fn reattach(&self, _address: &RoomAddress) -> Result<StartedRoom, SpawnError> {
        Err(SpawnError::Unsupported {
            what: "reattaching to a running room (its channel went with the hub that started it)",
            spawner: "local",
        })
    }

    fn purge(&self, user: &str) -> Result<(), FilesError> {
        self.files.purge(user)
    }

    fn sweep_leftovers(&self) {
        let found = self.files.leftovers();
        if found.is_empty() {
            return;
        }
        tracing::warn!(
            mounts = found.mounts.len(),
            loop_devices = found.loop_devices.len(),
            cgroups = found.cgroups.len(),
            "removing what rooms of a hub that stopped without stopping them left behind"
        );
        for why in leftovers::remove(&found) {
            tracing::warn!("{why}");
        }
    }
}

/// Paths bwrap binds from (the bridge when the hub is root, the real paths otherwise).
struct SandboxSources {
    workspace: PathBuf,
    exe: PathBuf,
    passwd: PathBuf,
    group: PathBuf,
}

/// What the host's root looks like, probed once.
#[derive(Debug, Clone, Default)]
struct HostLayout {
    /// (name, Some(symlink target) | None for a real directory)
    top_level: Vec<(String, Option<PathBuf>)>,
    /// /etc entries present on the host (static list plus python3*).
    etc: Vec<String>,
}

impl HostLayout {
    fn probe() -> HostLayout {
        let mut top_level = Vec::new();
        for name in TOP_LEVEL {
            let path = Path::new("/").join(name);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = fs::read_link(&path) {
                        top_level.push((name.to_string(), Some(target)));
                    }
                }
                Ok(m) if m.is_dir() => top_level.push((name.to_string(), None)),
                _ => {}
            }
        }
        let mut etc: Vec<String> = ETC_ENTRIES
            .iter()
            .filter(|e| Path::new("/etc").join(e).exists())
            .map(|e| e.to_string())
            .collect();
        if let Ok(dir) = fs::read_dir("/etc") {
            let mut py: Vec<String> = dir
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("python3"))
                .collect();
            py.sort();
            etc.extend(py);
        }
        HostLayout { top_level, etc }
    }
}

fn bwrap_args(
    spec: &RoomSpec,
    src: &SandboxSources,
    host: &HostLayout,
    disable_userns: bool,
    agent_argv: &[OsString],
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::with_capacity(96);
    let mut push = |items: &[&OsStr]| a.extend(items.iter().map(|s| s.to_os_string()));
    let s = |x: &'static str| OsStr::new(x);
    push(&[
        s("--unshare-user"),
        s("--unshare-ipc"),
        s("--unshare-pid"),
        s("--unshare-uts"),
        s("--unshare-cgroup-try"),
    ]);
    if spec.limits.network != Network::Host {
        push(&[s("--unshare-net")]);
    }
    let id = SANDBOX_ID.to_string();
    let hostname = format!("lodge-{}", spec.user);
    push(&[
        s("--uid"),
        id.as_ref(),
        s("--gid"),
        id.as_ref(),
        s("--hostname"),
        hostname.as_ref(),
        s("--die-with-parent"),
        s("--new-session"),
        s("--cap-drop"),
        s("ALL"),
    ]);
    if disable_userns {
        push(&[s("--disable-userns")]);
    }
    push(&[s("--ro-bind"), s("/usr"), s("/usr")]);
    for (name, target) in &host.top_level {
        let dest = format!("/{name}");
        match target {
            Some(t) => push(&[s("--symlink"), t.as_os_str(), dest.as_ref()]),
            None => push(&[s("--ro-bind-try"), dest.as_ref(), dest.as_ref()]),
        }
    }
    push(&[s("--proc"), s("/proc"), s("--dev"), s("/dev")]);
    if let Some(size) = spec.limits.tmp_bytes.filter(|&b| b > 0) {
        let size = size.to_string();
        push(&[s("--size"), size.as_ref()]);
    }
    push(&[s("--tmpfs"), s("/tmp"), s("--tmpfs"), s("/run")]);
    for name in &host.etc {
        let path = format!("/etc/{name}");
        push(&[s("--ro-bind-try"), path.as_ref(), path.as_ref()]);
    }
    for path in &spec.read_only_paths {
        push(&[s("--ro-bind"), path.as_os_str(), path.as_os_str()]);
    }
    push(&[
        s("--symlink"),
        s("../proc/self/mounts"),
        s("/etc/mtab"),
        s("--ro-bind"),
        src.passwd.as_os_str(),
        s("/etc/passwd"),
        s("--ro-bind"),
        src.group.as_os_str(),
        s("/etc/group"),
        s("--ro-bind"),
        src.exe.as_os_str(),
        s(SANDBOX_EXE),
        s("--bind"),
        src.workspace.as_os_str(),
        s(SANDBOX_WORKSPACE),
        // The sandbox's own root tmpfs (where /etc entries and mount points were created)
        // becomes read-only; /tmp, /run and /workspace stay writable.
        s("--remount-ro"),
        s("/"),
        s("--chdir"),
        s(SANDBOX_WORKSPACE),
        s("--clearenv"),
        s("--setenv"),
        s("HOME"),
        s(SANDBOX_WORKSPACE),
        s("--setenv"),
        s("PATH"),
        s("/usr/local/bin:/usr/bin:/bin"),
        s("--setenv"),
        s("LANG"),
        s("C.UTF-8"),
        s("--setenv"),
        s("USER"),
        spec.user.as_ref(),
        s("--setenv"),
        s("LOGNAME"),
        spec.user.as_ref(),
    ]);
    if let Some(log) = std::env::var_os("RUST_LOG") {
        push(&[s("--setenv"), s("RUST_LOG"), log.as_os_str()]);
    }
    push(&[s("--"), s(SANDBOX_EXE)]);
    a.extend(agent_argv.iter().cloned());
    a
}

fn pass_log_env(cmd: &mut Command) {
    if let Some(log) = std::env::var_os("RUST_LOG") {
        cmd.env("RUST_LOG", log);
    }
}

/// The user name must be a valid Lodge user name (it becomes a cgroup and host name) and the
/// instance a short `[a-z0-9]` tag; the hub guarantees both, this is the spawner's own check.
fn validate_user(spec: &RoomSpec) -> Result<(), SpawnError> {
    let instance_ok = (1..=16).contains(&spec.instance.len())
        && spec
            .instance
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if lodge_core::UserName::parse(&spec.user).is_ok() && instance_ok {
        Ok(())
    } else {
        Err(SpawnError::InvalidUser {
            user: format!("{} (instance {:?})", spec.user, spec.instance),
        })
    }
}

/// Each read-only path must be a clean absolute path to an existing directory; in a bubblewrap
/// room it must also keep clear of the sandbox's own places and, when rooms get their own uid,
/// be open to other users (bwrap binds it as the room uid).
fn check_read_only_paths(spec: &RoomSpec, own_uid: bool) -> Result<(), SpawnError> {
    use std::path::Component;
    let bwrap = spec.isolation == Isolation::Bubblewrap;
    for path in &spec.read_only_paths {
        let refuse = |reason: &str| SpawnError::ReadOnlyPath {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        if !path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        {
            return Err(refuse(
                "not an absolute path without '.' or '..' components",
            ));
        }
        if bwrap
            && SANDBOX_PLACES
                .iter()
                .any(|place| path.starts_with(place) || Path::new(place).starts_with(path))
        {
            return Err(refuse(
                "overlaps the room's own /, /proc, /dev, /tmp, /run, /etc or /workspace",
            ));
        }
        match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(refuse("not a directory")),
            Err(e) => return Err(refuse(&e.to_string())),
        }
        if bwrap && own_uid && !open_to_others(path) {
            return Err(refuse(
                "room users cannot reach it (it needs o+rx, and every directory above it o+x)",
            ));
        }
    }
    Ok(())
}

/// Whether users other than the owner may list `dir` and traverse every directory above it.
fn open_to_others(dir: &Path) -> bool {
    let mode = |p: &Path| fs::metadata(p).map_or(0, |m| m.permissions().mode());
    mode(dir) & 0o005 == 0o005 && dir.ancestors().skip(1).all(|p| mode(p) & 0o001 != 0)
}

/// Host (uid, gid) of a room when the hub is root.
fn room_ids(spec: &RoomSpec) -> Result<(u32, u32), SpawnError> {
    let id = i128::from(spec.uid_base) + i128::from(spec.user_id);
    match u32::try_from(id) {
        // Ids of 2^31 and above cannot be mapped into a user namespace (bwrap: "setting up
        // uid map: Invalid argument").
        Ok(uid) if (1000..=i32::MAX as u32).contains(&uid) && uid != 65534 => Ok((uid, uid)),
        _ => Err(SpawnError::RoomUid {
            user_id: spec.user_id,
            uid_base: spec.uid_base,
        }),
    }
}

fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Creates the workspace if missing (0700) and, when the hub is root, gives it to the room uid.
/// Returns its canonical path.
fn prepare_workspace(path: &Path, ids: Option<(u32, u32)>) -> Result<PathBuf, SpawnError> {
    let err = |error: io::Error| SpawnError::Workspace {
        path: path.to_path_buf(),
        error,
    };
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(err(io::Error::other("exists and is not a directory"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_private_dir(path).map_err(err)?,
        Err(e) => return Err(err(e)),
    }
    if let Some((uid, gid)) = ids {
        rustix::fs::chown(
            path,
            Some(rustix::process::Uid::from_raw(uid)),
            Some(rustix::process::Gid::from_raw(gid)),
        )
        .map_err(|e| err(e.into()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    fs::canonicalize(path).map_err(err)
}

/// Writes the room's synthetic /etc/passwd and /etc/group into its state directory.
fn write_identity_files(spec: &RoomSpec) -> Result<(PathBuf, PathBuf), SpawnError> {
    let passwd = spec.state_dir.join("passwd");
    let group = spec.state_dir.join("group");
    let passwd_text = format!(
        "root:x:0:0::/:/usr/sbin/nologin\n\
         lodge:x:{SANDBOX_ID}:{SANDBOX_ID}:{}:{SANDBOX_WORKSPACE}:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        spec.user
    );
    let group_text = format!("root:x:0:\nlodge:x:{SANDBOX_ID}:\nnogroup:x:65534:\n");
    for (path, text) in [(&passwd, passwd_text), (&group, group_text)] {
        fs::write(path, text)
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o644)))
            .map_err(|error| SpawnError::StateDir {
                path: path.clone(),
                error,
            })?;
    }
    Ok((passwd, group))
}

fn cstring(path: &Path) -> Result<CString, SpawnError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SpawnError::Workspace {
        path: path.to_path_buf(),
        error: io::Error::other("path contains a NUL byte"),
    })
}

fn find_bwrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("bwrap"))
        .chain(std::iter::once(PathBuf::from("/usr/bin/bwrap")))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn bwrap_supports(bwrap: &Path, flag: &str) -> bool {
    std::process::Command::new(bwrap)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

struct ForkJob {
    cmd: Command,
    handle: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<io::Result<Child>>,
}

/// Rooms are forked from one long-lived thread. bwrap's --die-with-parent uses
/// PR_SET_PDEATHSIG, which fires when the *thread* that forked it exits, not the process: a
/// room forked from a tokio blocking-pool thread would be killed when that thread retires.
async fn spawn_on_fork_thread(mut cmd: Command) -> io::Result<Child> {
    static FORKER: OnceLock<Option<mpsc::Sender<ForkJob>>> = OnceLock::new();
    let sender = FORKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<ForkJob>();
        std::thread::Builder::new()
            .name("lodge-room-fork".into())
            .spawn(move || {
                for ForkJob {
                    mut cmd,
                    handle,
                    reply,
                } in rx
                {
                    let result = {
                        let _runtime = handle.enter();
                        cmd.spawn()
                    };
                    // Closes the parent's copies of the child's setup fds.
                    drop(cmd);
                    let _ = reply.send(result);
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(tx) = sender else {
        return cmd.spawn();
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = ForkJob {
        cmd,
        handle: tokio::runtime::Handle::current(),
        reply,
    };
    if let Err(mpsc::SendError(job)) = tx.send(job) {
        cmd = job.cmd;
        return cmd.spawn();
    }
    answer
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the room fork thread is gone")))
}

#[cfg(test)]
mod tests;
