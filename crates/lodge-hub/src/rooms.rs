//! Room lifecycle: one room per user, started on the first call that needs it, shared by all
//! of that user's sessions (and stateless requests), culled when idle, replaced when it dies,
//! and stopped with the hub. This module owns which rooms run; it never looks inside one —
//! file and command work is sent over the room's channel — and never touches a room's files
//! (the spawner owns them).

use crate::caller::Caller;
use lodge_core::config::{Isolation, NetworkAccess, Profile, RoomsConfig};
use lodge_core::flight::Flights;
use lodge_core::time::now_ms;
use lodge_protocol::{Op, OpResult};
use lodge_room::client::{CallError, Event, RoomClient};
use lodge_room::spawner::{self, Limits, RoomLife, RoomReader, RoomRequest, Spawner, StartedRoom};
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

/// Where rooms come from: the spawner that builds them and owns their files (the local
/// sandbox in `lodge serve`).
#[derive(Clone)]
pub struct RoomsSetup {
    pub spawner: Arc<dyn Spawner>,
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

pub struct Rooms {
    config: RoomsConfig,
    profiles: lodge_core::Config,
    spawner: Arc<dyn Spawner>,
    /// Rooms by user id: concurrent first calls of a user start one room, not several.
    slots: Flights<i64, Arc<Room>>,
    /// Rooms running or starting, for `max_users_active`.
    running: Arc<Running>,
    closing: CancellationToken,
}

impl Rooms {
    /// Takes over the rooms' files: what rooms of a hub that died without stopping them left
    /// behind is removed first.
    pub fn new(config: &lodge_core::Config, setup: RoomsSetup) -> Self {
        ::metrics::gauge!("lodge_rooms_running").set(0.0);
        setup.spawner.sweep_leftovers();
        Self {
            config: config.rooms.clone(),
            profiles: config.clone(),
            spawner: setup.spawner,
            slots: Flights::new(),
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
        let alive = |room: &Arc<Room>| !room.client.is_closed();
        let start = |dead: Option<Arc<Room>>| async move {
            // It died; its watcher releases the slot count. Start a fresh one.
            if let Some(dead) = dead {
                dead.stop_and_wait().await;
            }
            if !self.running.reserve(self.config.max_users_active as usize) {
                return Err(RoomError::Full(self.config.max_users_active));
            }
            let started = self.start(caller).await;
            if started.is_err() {
                self.running.release();
            }
            started
        };
        self.slots.get_or_start(caller.user_id, alive, start).await
    }

    /// The caller's profile (`default` when theirs is no longer configured).
    pub fn profile(&self, caller: &Caller) -> &Profile {
        self.profiles.profile(&caller.profile)
    }

    /// Whether the user's room runs, and since when (for `session_info`); `None` when it does
    /// not, or is just starting or stopping.
    pub fn status(&self, user_id: i64) -> Option<RoomStatus> {
        let room = self.slots.peek(&user_id)?;
        if room.client.is_closed() {
            return None;
        }
        Some(RoomStatus {
            up_for_s: room.started.elapsed().as_secs(),
            calls_in_flight: room.client.in_flight(),
        })
    }

    /// Rooms running now.
    pub fn running(&self) -> usize {
        self.running.get()
    }

    fn request(&self, caller: &Caller) -> RoomRequest {
        let profile = self.profile(caller);
        RoomRequest {
            user: caller.user.as_str().to_owned(),
            user_id: caller.user_id,
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
            s.enabled_for(caller.user.as_str(), &caller.groups)
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
        let request = self.request(caller);
        if request.isolation == spawner::Isolation::None {
            tracing::warn!(user = %caller.user, "starting a room WITHOUT isolation (rooms.isolation = \"none\"): development only");
        }
        let StartedRoom {
            address,
            reader,
            writer,
            stderr,
            warnings,
            mut life,
        } = self
            .spawner
            .start(&request)
            .await
            .map_err(|e| RoomError::Start(e.to_string()))?;
        for w in &warnings {
            tracing::warn!(user = %caller.user, "room isolation degraded: {w}");
        }
        forward_stderr(caller.user.as_str().to_owned(), stderr);
        let connected = RoomClient::connect(reader, writer, self.config.start_timeout).await;
        let client = match connected {
            Ok((client, _hello)) => client,
            Err(e) => {
                let status = life.try_exited();
                self.spawner.stop(life, self.config.stop_grace).await;
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
        tracing::info!(user = %caller.user, %address, ms = started.elapsed().as_millis() as u64, "room started");
        ::metrics::counter!("lodge_room_starts_total").increment(1);
        ::metrics::histogram!("lodge_room_start_seconds").record(started.elapsed().as_secs_f64());
        self.watch(caller.user.as_str().to_owned(), room.clone(), life);
        Ok(room)
    }

    /// Owns the room's process until it exits or is told to stop; then fails pending callers
    /// with the reason and frees the slot.
    fn watch(&self, user: String, room: Arc<Room>, mut life: Box<dyn RoomLife>) {
        let grace = self.config.stop_grace;
        let running = self.running.clone();
        let spawner = self.spawner.clone();
        tokio::spawn(async move {
            let reason = tokio::select! {
                status = life.wait() => {
                    let oom = life.oom_kills().unwrap_or(0) > 0;
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
            spawner.stop(life, grace).await;
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
        // A slot busy starting or restarting its room is not idle (cull skips it); the stop
        // runs under the slot's lock, so a new call waits for the place it frees.
        let idle = |_: &i64, r: &Arc<Room>| {
            r.client.in_flight() == 0 && r.idle_for_ms(now) >= idle_ms && !r.held(now)
        };
        self.slots
            .cull(idle, |room| async move { room.stop_and_wait().await })
            .await
    }

    /// Stops one user's room if it runs (the user was removed).
    pub async fn stop_user(&self, user_id: i64) {
        self.slots
            .remove(&user_id, |room| async move { room.stop_and_wait().await })
            .await;
    }

    /// Stops every room (hub shutdown). New calls are refused from now on.
    pub async fn stop_all(&self) {
        self.closing.cancel();
        let rooms = self.slots.take_all().await;
        let stops = rooms
            .into_iter()
            .map(|room| async move { room.stop_and_wait().await });
        futures::future::join_all(stops).await;
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
fn forward_stderr(user: String, stderr: Option<RoomReader>) {
    let Some(stderr) = stderr else { return };
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // The agent may colour its lines; the hub log keeps the text alone.
            let line: String = lodge_core::text::without_ansi(&line)
                .chars()
                .take(2000)
                .collect();
            tracing::info!(%user, "room: {line}");
        }
    });
}
