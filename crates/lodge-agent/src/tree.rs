//! Finds and kills everything a command started, from `/proc`: descendants by parent links,
//! members of its session, and holders of its output pipes (which catches processes that
//! re-parented or called `setsid` but kept the output open). It never signals the agent itself.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rustix::process::{Pid, Signal};

/// How long a tree gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_millis(200);
/// How often the tree is re-scanned while waiting.
const SCAN_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on SIGKILL rounds (processes stuck in uninterruptible sleep cannot be waited out).
const MAX_KILL_ROUNDS: usize = 250;

/// What identifies one command's processes.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The command's root process (its session and process group leader).
    pub root: i32,
    /// Inodes of the command's stdout/stderr pipes that may still have writers.
    pub pipes: Vec<u64>,
}

/// One line of `/proc/PID/stat`, the parts we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    pid: i32,
    ppid: i32,
    sid: i32,
    /// A zombie or dead task: holds no fds and can do nothing; its parent reaps it.
    dead: bool,
}

/// Parses `/proc/PID/stat`. `comm` (field 2) may contain spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_stat(pid: i32, text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let _pgrp = fields.next()?;
    let sid = fields.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        ppid,
        sid,
        dead: matches!(state, "Z" | "X" | "x"),
    })
}

fn all_processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(pid, &text)
        })
        .collect()
}

/// Whether `pid` has any of `pipes` open (`/proc/PID/fd/N -> pipe:[INODE]`).
fn holds_pipe(pid: i32, pipes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path()).ok().is_some_and(|link| {
            link.to_str()
                .and_then(|l| {
                    l.strip_prefix("pipe:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
                .is_some_and(|inode| pipes.contains(&inode))
        })
    })
}

/// The live processes belonging to `target`, never including the agent itself.
pub(crate) fn scan(target: &Target) -> Vec<i32> {
    let me = rustix::process::getpid().as_raw_pid();
    // Held for the whole scan: a child between fork and exec would look like a pipe holder.
    let _quiet = (!target.pipes.is_empty()).then(super::reaper::no_spawn_in_flight);
    let procs = all_processes();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut found: HashSet<i32> = HashSet::new();
    let mut queue = vec![target.root];
    for p in procs.iter().filter(|p| !p.dead && p.pid != me) {
        if p.sid == target.root || (!target.pipes.is_empty() && holds_pipe(p.pid, &target.pipes)) {
            queue.push(p.pid);
        }
    }
    // Descendants of every member, by parent links.
    let mut seen: HashSet<i32> = HashSet::new();
    while let Some(pid) = queue.pop() {
        if !seen.insert(pid) {
            continue;
        }
        found.insert(pid);
        queue.extend(children.get(&pid).into_iter().flatten().copied());
    }
    let live: HashSet<i32> = procs.iter().filter(|p| !p.dead).map(|p| p.pid).collect();
    let mut pids: Vec<i32> = found
        .into_iter()
        .filter(|pid| *pid != me && live.contains(pid))
        .collect();
    pids.sort_unstable();
    pids
}

fn signal_all(target: &Target, pids: &[i32], signal: Signal) {
    // The process group first: one atomic call for everything that kept the group. ESRCH just
    // means the group is gone; a pgid cannot be reused while any member lives.
    if let Some(group) = Pid::from_raw(target.root) {
        let _ = rustix::process::kill_process_group(group, signal);
    }
    for pid in pids.iter().filter_map(|raw| Pid::from_raw(*raw)) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

async fn scan_async(target: &Target) -> Vec<i32> {
    let owned = target.clone();
    tokio::task::spawn_blocking(move || scan(&owned))
        .await
        .unwrap_or_default()
}

/// SIGTERM to the whole tree, up to [`TERM_GRACE`] to exit, then SIGKILL and re-scan until
/// nothing is left. Returns how many processes were signalled in the first round (0: nothing
/// was running). Returns at once when the tree is already empty.
pub(crate) async fn kill_tree(target: &Target) -> usize {
    let first = scan_async(target).await;
    if first.is_empty() {
        return 0;
    }
    signal_all(target, &first, Signal::TERM);
    let grace_end = tokio::time::Instant::now() + TERM_GRACE;
    while tokio::time::Instant::now() < grace_end {
        tokio::time::sleep(SCAN_INTERVAL).await;
        if scan_async(target).await.is_empty() {
            return first.len();
        }
    }
    for _ in 0..MAX_KILL_ROUNDS {
        let pids = scan_async(target).await;
        if pids.is_empty() {
            return first.len();
        }
        signal_all(target, &pids, Signal::KILL);
        tokio::time::sleep(SCAN_INTERVAL).await;
    }
    tracing::warn!(
        root = target.root,
        "processes of a command survived SIGKILL"
    );
    first.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_awkward_names_parse() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0";
        assert_eq!(
            parse_stat(1234, line),
            Some(ProcStat {
                pid: 1234,
                ppid: 1,
                sid: 1234,
                dead: false
            })
        );
        let zombie = "77 (sh) Z 5 77 9 0";
        assert!(parse_stat(77, zombie).unwrap().dead);
        assert_eq!(parse_stat(1, "garbage"), None);
    }

    #[test]
    fn the_agent_itself_is_never_part_of_a_tree() {
        let me = rustix::process::getpid().as_raw_pid();
        // From /proc, not getsid(2): in a container our session leader may sit outside the
        // pid namespace, where getsid reports 0 (and rustix's typed Pid panics on it).
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let sid = parse_stat(me, &stat).unwrap().sid;
        // Even when asked for our own session, our pid is left out.
        let found = scan(&Target {
            root: sid,
            pipes: Vec::new(),
        });
        assert!(!found.contains(&me));
        let found = scan(&Target {
            root: me,
            pipes: Vec::new(),
        });
        assert!(!found.contains(&me));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_child_between_fork_and_exec_is_not_a_pipe_holder() {
        use rustix::pipe::{PipeFlags, pipe_with};
        // Another command's output pipe, as the agent holds it: close-on-exec.
        let (read, _write) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        let inode = rustix::fs::fstat(&read).unwrap().st_ino;
        let target = Target {
            root: i32::MAX,
            pipes: vec![inode],
        };
        let reaper = super::super::reaper::Reaper::start_with(false).unwrap();
        let spawner = reaper.clone();
        let spawning = std::thread::spawn(move || {
            let mut cmd = std::process::Command::new("/bin/sleep");
            cmd.arg("5");
            crate::sys::probe::slow_exec(&mut cmd, 400);
            spawner.spawn(&mut cmd).unwrap().0
        });
        // The child now sits between fork and exec with a copy of `read`.
        std::thread::sleep(Duration::from_millis(150));
        let found = scan(&target);
        let mut child = spawning.join().unwrap();
        let pid = child.id() as i32;
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            !found.contains(&pid),
            "a fresh child of another command was taken for a holder of its pipe: {found:?}"
        );
    }
}
