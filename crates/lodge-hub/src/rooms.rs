//! Room lifecycle: one room per user, started on the first call that needs it, shared by all
//! of that user's sessions (and stateless requests), culled when idle, replaced when it dies,
//! and stopped with the hub. This module owns which rooms run; it never looks inside one —
//! file and command work is sent over the room's channel.

use crate::caller::Caller;
use lodge_core::config::{Isolation, NetworkAccess, Profile, RoomsConfig};
use lodge_core::time::now_ms;
use lodge_protocol::{Op, OpResult};
use lodge_room::client::{CallError, Event, RoomClient};
use lodge_room::spawner::{self, Limits, LocalSpawner, RoomProcess, RoomSpec};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error(
        "all {0} room slots are in use (rooms.max_users_active); try again in a few minutes, \
         when idle rooms have been stopped"
    )]
    Full(u32),
    #[error("your room could not start: {0}")]
    Start(String),
    #[error("{0}")]
    Call(#[from] CallError),
    #[error("the hub is shutting down")]
    ShuttingDown,
}

/// Where rooms come from: the data directory and the `lodge` executable to run as agent.
#[derive(Clone, Debug)]
pub struct RoomsSetup {
    pub data_dir: PathBuf,
    pub agent_exe: PathBuf,
}

/// One running room.
pub struct Room {
    pub client: RoomClient,
    pub started: Instant,
    last_used_ms: AtomicI64,
    /// Not culled before this time even when idle: kernels live in it (see [`Rooms::call_held`]).
    held_until_ms: AtomicI64,
    stop: CancellationToken,
    stopped: tokio::sync::Notify,
    done: std::sync::atomic::AtomicBool,
}

impl Room {
    fn touch(&self) {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn idle_for_ms(&self, now: i64) -> i64 {
        now - self.last_used_ms.load(Ordering::Relaxed)
    }

    fn held(&self, now: i64) -> bool {
        now < self.held_until_ms.load(Ordering::Relaxed)
    }

    /// Asks the room's watcher to stop it and waits until it has.
    async fn stop_and_wait(&self) {
        let waiting = self.stopped.notified();
        self.stop.cancel();
        if !self.done.load(Ordering::Acquire) {
            waiting.await;
        }
    }
}

/// What `session_info` shows of a running room.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomStatus {
    pub up_for_s: u64,
    pub calls_in_flight: usize,
}

/// A user's place in the room table: the async lock makes concurrent first calls start one
/// room, not several.
#[derive(Default)]
struct Slot {
    room: tokio::sync::Mutex<Option<Arc<Room>>>,
}

pub struct Rooms {
    config: RoomsConfig,
    /// Short tag of this hub's DATA_DIR, so two hubs on one machine keep apart their rooms.
    instance: String,
    profiles: lodge_core::Config,
    setup: RoomsSetup,
    spawner: LocalSpawner,
    slots: Mutex<HashMap<i64, Arc<Slot>>>,
    /// Rooms running or starting, for `max_users_active`.
    running: Arc<Running>,
    closing: CancellationToken,
}

impl Rooms {
    pub fn new(config: &lodge_core::Config, setup: RoomsSetup) -> Self {
        let spawner = LocalSpawner::new();
        if config.rooms.isolation == Isolation::Bubblewrap && !spawner.bubblewrap_available() {
            tracing::error!(
                "bubblewrap (bwrap) not found: rooms cannot start. Install it \
                 (`apt-get install bubblewrap`, or start the hub with scripts/serve, which \
                 installs it) or set rooms.isolation = \"none\" for development"
            );
        }
        ::metrics::gauge!("lodge_rooms_running").set(0.0);
        let instance = spawner::leftovers::instance_for(&setup.data_dir);
        sweep_leftovers(&setup.data_dir, &instance);
        Self {
            instance,
            config: config.rooms.clone(),
            profiles: config.clone(),
            setup,
            spawner,
            slots: Mutex::new(HashMap::new()),
            running: Arc::new(Running::default()),
            closing: CancellationToken::new(),
        }
    }

    /// Runs `op` in the caller's room, starting the room if needed.
    pub async fn call(
        &self,
        caller: &Caller,
        op: Op,
        events: Option<mpsc::UnboundedSender<Event>>,
    ) -> Result<OpResult, RoomError> {
        let room = self.room_for(caller).await?;
        room.touch();
        let result = room.client.call(op, events).await;
        room.touch();
        Ok(result?)
    }

    /// Like [`Self::call`], and keeps the room from being culled for `hold` after the call:
    /// the op may leave state in the room (a kernel) that lives that long on its own.
    pub async fn call_held(
        &self,
        caller: &Caller,
        op: Op,
        events: Option<mpsc::UnboundedSender<Event>>,
        hold: std::time::Duration,
    ) -> Result<OpResult, RoomError> {
        let room = self.room_for(caller).await?;
        room.touch();
        let result = room.client.call(op, events).await;
        room.touch();
        let until = now_ms().saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX));
        room.held_until_ms.fetch_max(until, Ordering::Relaxed);
        Ok(result?)
    }

    /// The caller's live room, started (or restarted after a death) on demand.
    pub async fn room_for(&self, caller: &Caller) -> Result<Arc<Room>, RoomError> {
        if self.closing.is_cancelled() {
            return Err(RoomError::ShuttingDown);
        }
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(caller.user_id)
            .or_default()
            .clone();
        let mut current = slot.room.lock().await;
        if let Some(room) = current.as_ref() {
            if !room.client.is_closed() {
                return Ok(room.clone());
            }
            // It died; its watcher releases the slot count. Start a fresh one.
            let dead = current.take();
            if let Some(dead) = dead {
                dead.stop_and_wait().await;
            }
        }
        if !self.running.reserve(self.config.max_users_active as usize) {
            return Err(RoomError::Full(self.config.max_users_active));
        }
        match self.start(caller).await {
            Ok(room) => {
                *current = Some(room.clone());
                Ok(room)
            }
            Err(e) => {
                self.running.release();
                Err(e)
            }
        }
    }

    /// The caller's profile (`default` when theirs is no longer configured).
    pub fn profile(&self, caller: &Caller) -> &Profile {
        self.profiles.profile(&caller.profile)
    }

    /// Whether the user's room runs, and since when (for `session_info`); `None` when it does
    /// not, or is just starting or stopping.
    pub fn status(&self, user_id: i64) -> Option<RoomStatus> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user_id)
            .cloned()?;
        let current = slot.room.try_lock().ok()?;
        let room = current.as_ref().filter(|r| !r.client.is_closed())?;
        Some(RoomStatus {
            up_for_s: room.started.elapsed().as_secs(),
            calls_in_flight: room.client.in_flight(),
        })
    }

    /// Rooms running now.
    pub fn running(&self) -> usize {
        self.running.get()
    }

    fn spec(&self, caller: &Caller) -> RoomSpec {
        let profile = self.profile(caller);
        let name = caller.user.as_str();
        RoomSpec {
            user: name.to_owned(),
            user_id: caller.user_id,
            instance: self.instance.clone(),
            workspace: self.setup.data_dir.join("workspaces").join(name),
            state_dir: self.setup.data_dir.join("rooms").join(name),
            agent_exe: self.setup.agent_exe.clone(),
            isolation: match self.config.isolation {
                Isolation::Bubblewrap => spawner::Isolation::Bubblewrap,
                Isolation::None => spawner::Isolation::None,
            },
            limits: self.limits(caller, profile),
            read_only_paths: self.config.read_only_paths.clone(),
            uid_base: self.config.uid_base,
            stop_grace: self.config.stop_grace,
        }
    }

    /// Does `caller`'s room reach the network (so hints may tell them to install from it)?
    pub fn has_network(&self, caller: &Caller) -> bool {
        self.config.isolation == Isolation::None
            || self.limits(caller, self.profile(caller)).network == spawner::Network::Host
    }

    /// The profile's limits, with the host network when an upstream server enabled for the
    /// user needs it (its profile says so): everything in a room shares one network.
    fn limits(&self, caller: &Caller, profile: &Profile) -> Limits {
        let mut l = limits(profile);
        let server_needs_host = self.profiles.servers.values().any(|s| {
            s.enabled_for(caller.user.as_str())
                && s.profile
                    .as_deref()
                    .is_some_and(|p| self.profiles.profile(p).network == NetworkAccess::Host)
        });
        if server_needs_host {
            l.network = spawner::Network::Host;
        }
        l
    }

    async fn start(&self, caller: &Caller) -> Result<Arc<Room>, RoomError> {
        let started = Instant::now();
        let spec = self.spec(caller);
        claim_workspace(&spec).map_err(RoomError::Start)?;
        if spec.isolation == spawner::Isolation::None {
            tracing::warn!(user = %caller.user, "starting a room WITHOUT isolation (rooms.isolation = \"none\"): development only");
        }
        let mut process = self
            .spawner
            .spawn(&spec)
            .await
            .map_err(|e| RoomError::Start(e.to_string()))?;
        for w in &process.warnings {
            tracing::warn!(user = %caller.user, "room isolation degraded: {w}");
        }
        forward_stderr(caller.user.as_str().to_owned(), process.take_stderr());
        let (stdin, stdout) = match process.take_channel() {
            Some(c) => c,
            None => return Err(RoomError::Start("the room has no channel".into())),
        };
        let connected = RoomClient::connect(stdout, stdin, self.config.start_timeout).await;
        let client = match connected {
            Ok((client, _hello)) => client,
            Err(e) => {
                let status = process.try_exited();
                process.stop(self.config.stop_grace).await;
                let why = match status {
                    Some(s) => format!("{e} (the room exited with {s}; see the hub log)"),
                    None => e.to_string(),
                };
                return Err(RoomError::Start(why));
            }
        };
        let room = Arc::new(Room {
            client,
            started,
            last_used_ms: AtomicI64::new(now_ms()),
            held_until_ms: AtomicI64::new(0),
            stop: CancellationToken::new(),
            stopped: tokio::sync::Notify::new(),
            done: std::sync::atomic::AtomicBool::new(false),
        });
        tracing::info!(user = %caller.user, ms = started.elapsed().as_millis() as u64, "room started");
        ::metrics::counter!("lodge_room_starts_total").increment(1);
        ::metrics::histogram!("lodge_room_start_seconds").record(started.elapsed().as_secs_f64());
        self.watch(caller.user.as_str().to_owned(), room.clone(), process);
        Ok(room)
    }

    /// Owns the room's process until it exits or is told to stop; then fails pending callers
    /// with the reason and frees the slot.
    fn watch(&self, user: String, room: Arc<Room>, mut process: RoomProcess) {
        let grace = self.config.stop_grace;
        let running = self.running.clone();
        tokio::spawn(async move {
            let reason = tokio::select! {
                status = process.wait() => {
                    let oom = process.oom_kills().unwrap_or(0) > 0;
                    let why = match status {
                        Ok(s) if oom => format!("the room ran out of memory and was killed ({s}); it starts again on your next call"),
                        Ok(s) => format!("the room exited unexpectedly ({s}); it starts again on your next call"),
                        Err(e) => format!("the room was lost ({e}); it starts again on your next call"),
                    };
                    tracing::warn!(%user, "{why}");
                    why
                }
                _ = room.stop.cancelled() => "the room was stopped".to_owned(),
                _ = room.client.closed() => {
                    tracing::warn!(%user, "room channel closed; stopping the room");
                    "the room's channel closed".to_owned()
                }
            };
            room.client.shutdown();
            room.client.close(reason);
            // Also unmounts the room's quota volume.
            process.stop(grace).await;
            running.release();
            room.done.store(true, Ordering::Release);
            room.stopped.notify_waiters();
            tracing::info!(%user, "room stopped");
        });
    }

    /// Stops rooms idle longer than `rooms.idle_timeout` with nothing in flight.
    pub async fn cull(&self) -> usize {
        let now = now_ms();
        let idle_ms = self.config.idle_timeout.as_millis() as i64;
        let mut culled = 0;
        for slot in self.all_slots() {
            // A slot busy starting or restarting its room is not idle.
            let Ok(mut current) = slot.room.try_lock() else {
                continue;
            };
            let idle = current.as_ref().is_some_and(|r| {
                r.client.in_flight() == 0 && r.idle_for_ms(now) >= idle_ms && !r.held(now)
            });
            if idle && let Some(room) = current.take() {
                room.stop_and_wait().await;
                culled += 1;
            }
        }
        culled
    }

    /// Stops one user's room if it runs (the user was removed).
    pub async fn stop_user(&self, user_id: i64) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&user_id);
        if let Some(slot) = slot
            && let Some(room) = slot.room.lock().await.take()
        {
            room.stop_and_wait().await;
        }
    }

    /// Stops every room (hub shutdown). New calls are refused from now on.
    pub async fn stop_all(&self) {
        self.closing.cancel();
        let mut stops = Vec::new();
        for slot in self.all_slots() {
            if let Some(room) = slot.room.lock().await.take() {
                stops.push(async move { room.stop_and_wait().await });
            }
        }
        futures::future::join_all(stops).await;
    }

    fn all_slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// How many rooms run or are starting; shared with the watchers that free a place.
#[derive(Default)]
struct Running(Mutex<usize>);

impl Running {
    /// Takes a place if fewer than `max` are taken.
    fn reserve(&self, max: usize) -> bool {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if *n >= max {
            return false;
        }
        *n += 1;
        ::metrics::gauge!("lodge_rooms_running").set(*n as f64);
        true
    }

    fn release(&self) {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        ::metrics::gauge!("lodge_rooms_running").set(*n as f64);
    }

    fn get(&self) -> usize {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Workspaces are named by user name, but a name can be reused after its user was removed
/// without `--purge`. The room's state directory records the user id that owns the
/// workspace; another id is refused, so a new user never inherits a removed user's files.
/// Removes what rooms of a hub that died without stopping them left behind (mounts, loop
/// devices, cgroups). Rooms still running are left alone.
fn sweep_leftovers(data_dir: &std::path::Path, instance: &str) {
    let found = spawner::leftovers::find(data_dir, instance);
    if found.is_empty() {
        return;
    }
    tracing::warn!(
        mounts = found.mounts.len(),
        loop_devices = found.loop_devices.len(),
        cgroups = found.cgroups.len(),
        "removing what rooms of a hub that stopped without stopping them left behind"
    );
    for why in spawner::leftovers::remove(&found) {
        tracing::warn!("{why}");
    }
}

fn claim_workspace(spec: &RoomSpec) -> Result<(), String> {
    let marker = spec.state_dir.join("owner-id");
    let mine = spec.user_id.to_string();
    match std::fs::read_to_string(&marker) {
        Ok(owner) if owner.trim() == mine => Ok(()),
        Ok(owner) => Err(format!(
            "the workspace of '{user}' belongs to a removed user (id {}) of the same name; an \
             operator must delete or move {} and {} (or use 'lodge user remove {user} --purge' \
             next time) before this user can have a room",
            owner.trim(),
            spec.workspace.display(),
            spec.state_dir.display(),
            user = spec.user,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let write = || -> std::io::Result<()> {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&spec.state_dir)?;
                std::fs::write(&marker, &mine)
            };
            write().map_err(|e| format!("cannot write {}: {e}", marker.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", marker.display())),
    }
}

/// A profile's limits in the spawner's terms.
pub fn limits(p: &Profile) -> Limits {
    Limits {
        memory_bytes: p.memory,
        cpus: p.cpus,
        pids: p.pids,
        disk_bytes: p.disk,
        tmp_bytes: p.tmp,
        open_files: p.open_files,
        network: match p.network {
            NetworkAccess::None => spawner::Network::None,
            NetworkAccess::Host => spawner::Network::Host,
        },
    }
}

/// Copies the agent's stderr into the hub log, one line at a time, tagged with the user.
fn forward_stderr(user: String, stderr: Option<tokio::process::ChildStderr>) {
    let Some(stderr) = stderr else { return };
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line: String = line.chars().take(2000).collect();
            tracing::info!(%user, "room: {line}");
        }
    });
}
