//! Reaps the agent's children and hands each command its exit status, driven by SIGCHLD.
//! When the agent is a child subreaper (as `lodge agent` makes itself), orphans of commands
//! re-parent to it, so every exited child is reaped with `waitpid(-1)` and unknown pids are
//! discarded. It must not be used next to other child reapers in that mode (std's
//! `Command::output`, `tokio::process`): spawn every child of the agent through [`Reaper::spawn`].

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockWriteGuard, Weak};
use std::time::Duration;

use rustix::process::{Pid, WaitOptions, WaitStatus};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A safety net, while a command is awaited, in case a SIGCHLD was coalesced away or arrived
/// before the stream existed.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A forked child holds copies of all the agent's fds until it execs, including the read ends
/// of other commands' output pipes. A tree scan in that window would take it for a holder of
/// such a pipe and kill another command's fresh child. Spawns hold this for reading across
/// fork and exec; [`no_spawn_in_flight`] holds it for writing while a scan looks at pipes.
static SPAWNING: RwLock<()> = RwLock::new(());

/// Blocks new spawns and waits for those in flight to exec, for as long as the guard lives.
pub(crate) fn no_spawn_in_flight() -> RwLockWriteGuard<'static, ()> {
    SPAWNING.write().unwrap_or_else(PoisonError::into_inner)
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exit {
    /// The exit code, when it exited by itself.
    pub code: Option<i32>,
    /// The signal that ended it, when it was killed.
    pub signal: Option<i32>,
}

impl From<WaitStatus> for Exit {
    fn from(status: WaitStatus) -> Self {
        Exit {
            code: status.exit_status(),
            signal: status.terminating_signal(),
        }
    }
}

/// Pids being waited for, each with the channel its exit status goes to.
struct Waiters {
    map: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
    /// Reap any child (`waitpid(-1)`), not only registered ones.
    reap_all: bool,
}

/// The agent's child reaper. Cloning is cheap; the SIGCHLD task stops when the last clone drops.
#[derive(Clone)]
pub(crate) struct Reaper {
    waiters: Arc<Waiters>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Reaper {
    /// Starts reaping on the current tokio runtime. Reaps every child when this process is a
    /// child subreaper, else only the children spawned through [`Reaper::spawn`].
    pub(crate) fn start() -> std::io::Result<Reaper> {
        let reap_all = matches!(rustix::process::child_subreaper(), Ok(Some(_)));
        Self::start_with(reap_all)
    }

    pub(crate) fn start_with(reap_all: bool) -> std::io::Result<Reaper> {
        let waiters = Arc::new(Waiters {
            map: Mutex::new(HashMap::new()),
            reap_all,
        });
        let mut sigchld = signal(SignalKind::child())?;
        let weak: Weak<Waiters> = Arc::downgrade(&waiters);
        let task = tokio::spawn(async move {
            loop {
                // The poll is a net for commands still awaited; an idle room sleeps until
                // SIGCHLD, so a thousand idle rooms do not wake twice a second each.
                let awaited = weak.upgrade().is_some_and(|w| !w.lock().is_empty());
                if awaited {
                    tokio::select! {
                        _ = sigchld.recv() => {}
                        _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    }
                } else if sigchld.recv().await.is_none() {
                    return; // The runtime is shutting down.
                }
                match weak.upgrade() {
                    Some(waiters) => waiters.reap(),
                    None => return,
                }
            }
        });
        Ok(Reaper {
            waiters,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// Spawns `cmd` and registers its pid before anything can reap it (the registry lock is
    /// held across the spawn). The receiver yields the exit status once the child is reaped.
    pub(crate) fn spawn(
        &self,
        cmd: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<Exit>)> {
        let _spawning = SPAWNING.read().unwrap_or_else(PoisonError::into_inner);
        let mut map = self.waiters.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        map.insert(Pid::from_child(&child).as_raw_pid(), tx);
        Ok((child, rx))
    }

    /// Reaps now instead of at the next SIGCHLD (used after killing a tree).
    pub(crate) fn reap_now(&self) {
        self.waiters.reap();
    }
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, oneshot::Sender<Exit>>> {
        // The map stays consistent even if a holder panicked: entries are inserted or removed
        // whole.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reap(&self) {
        let mut map = self.lock();
        if self.reap_all {
            // Every exited child: registered ones are dispatched, orphans are just discarded.
            while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
                dispatch(&mut map, pid.as_raw_pid(), status);
            }
        } else {
            let pids: Vec<i32> = map.keys().copied().collect();
            for raw in pids {
                let Some(pid) = Pid::from_raw(raw) else {
                    continue;
                };
                match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
                    Ok(Some((_, status))) => dispatch(&mut map, raw, status),
                    Ok(None) => {}
                    // ECHILD: someone else reaped it; nothing will ever come.
                    Err(_) => {
                        map.remove(&raw);
                    }
                }
            }
        }
    }
}

fn dispatch(map: &mut HashMap<i32, oneshot::Sender<Exit>>, pid: i32, status: WaitStatus) {
    if let Some(tx) = map.remove(&pid) {
        // The waiter may have gone (its request was aborted): the status is then unwanted.
        let _ = tx.send(Exit::from(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_codes_and_signals_reach_the_waiter() {
        let reaper = Reaper::start_with(false).unwrap();
        let (_child, rx) = reaper
            .spawn(Command::new("/bin/sh").args(["-c", "exit 7"]))
            .unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            exit,
            Exit {
                code: Some(7),
                signal: None
            }
        );

        let (_child, rx) = reaper
            .spawn(Command::new("/bin/sh").args(["-c", "kill -9 $$"]))
            .unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.code, None);
        assert_eq!(exit.signal, Some(9));
    }
}
