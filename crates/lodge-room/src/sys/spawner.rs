//! The spawner's side: the child setup that runs between fork and exec (cgroup placement,
//! the mount bridge, rlimits, dropping to the room uid), prepared by the parent. It must not
//! allocate, lock or log in the child, and must not decide policy.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::pipe::PipeFlags;
use rustix::process::{Resource, Rlimit};
use rustix::thread::UnshareFlags;

use super::{mount, unshare};

/// The most files or directories one bridge can carry (the child keeps their fds in an array).
pub(crate) const MAX_BRIDGE_ENTRIES: usize = 8;

/// The child-side step that failed, reported to the parent through a pipe so the error can
/// name it (the errno alone would not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Cgroup = 1,
    Rlimit = 2,
    Signal = 3,
    MountNamespace = 4,
    BridgeSource = 5,
    BridgeMount = 6,
    Credentials = 7,
}

impl Stage {
    fn from_byte(b: u8) -> Option<Stage> {
        Some(match b {
            1 => Stage::Cgroup,
            2 => Stage::Rlimit,
            3 => Stage::Signal,
            4 => Stage::MountNamespace,
            5 => Stage::BridgeSource,
            6 => Stage::BridgeMount,
            7 => Stage::Credentials,
            _ => return None,
        })
    }

    /// What the child was doing, for error messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Stage::Cgroup => "joining the room's cgroup",
            Stage::Rlimit => "setting resource limits",
            Stage::Signal => "ignoring SIGXFSZ",
            Stage::MountNamespace => "creating a private mount namespace",
            Stage::BridgeSource => "opening the workspace, agent or passwd files",
            Stage::BridgeMount => "bind-mounting them into the bridge under /tmp",
            Stage::Credentials => "switching to the room uid",
        }
    }
}

/// A file or directory the child bind-mounts from `source` (opened as root, so an
/// untraversable DATA_DIR is no obstacle) onto `target` inside the bridge tmpfs.
pub(crate) struct BridgeEntry {
    pub source: CString,
    pub target: CString,
    pub dir: bool,
}

/// Paths that the unprivileged bwrap must reach although they sit under a 0700 root directory:
/// in a private mount namespace the child mounts a small tmpfs on `mount_point` and binds each
/// entry into it. (bwrap 0.8 resolves `--bind-fd` sources with `realpath`, which fails for the
/// room uid under a 0700 DATA_DIR, so passing fds alone does not work.)
pub(crate) struct Bridge {
    pub mount_point: CString,
    pub entries: Vec<BridgeEntry>,
}

/// Everything the child does before exec, prepared (allocated, opened) in the parent.
pub(crate) struct ChildSetup {
    /// `cgroup.procs` of the room's cgroups, opened for writing.
    pub cgroup_procs: Vec<OwnedFd>,
    /// (resource, soft = hard limit)
    pub rlimits: Vec<(Resource, u64)>,
    /// Writes past RLIMIT_FSIZE then fail with EFBIG instead of killing the writer.
    pub ignore_sigxfsz: bool,
    pub bridge: Option<Bridge>,
    /// Host (uid, gid) to switch to; supplementary groups are cleared.
    pub credentials: Option<(u32, u32)>,
}

/// Reads which stage failed after a spawn error.
pub(crate) struct StageReader(OwnedFd);

impl StageReader {
    pub(crate) fn failed_stage(&self) -> Option<Stage> {
        let mut b = [0u8; 1];
        match rustix::io::read(&self.0, &mut b) {
            Ok(1) => Stage::from_byte(b[0]),
            _ => None,
        }
    }
}

struct Plan {
    setup: ChildSetup,
    stage_pipe: OwnedFd,
}

/// Registers `setup` to run in the child between fork and exec.
pub(crate) fn install(
    cmd: &mut tokio::process::Command,
    setup: ChildSetup,
) -> io::Result<StageReader> {
    if setup
        .bridge
        .as_ref()
        .is_some_and(|b| b.entries.len() > MAX_BRIDGE_ENTRIES)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many bridge entries",
        ));
    }
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let plan = Plan {
        setup,
        stage_pipe: write,
    };
    // SAFETY: the closure runs in the forked child before exec. It only issues raw syscalls
    // (write, prlimit, signal, unshare, mount, open, mkdir, setgroups/setresgid/setresuid) on
    // data prepared before the fork (fds, CStrings, vectors that are only read), allocates
    // nothing, takes no locks and touches no other thread's state, so it is async-signal-safe
    // as `pre_exec` requires.
    unsafe {
        cmd.pre_exec(move || plan.run());
    }
    Ok(StageReader(read))
}

impl Plan {
    fn run(&self) -> io::Result<()> {
        let s = &self.setup;
        for fd in &s.cgroup_procs {
            // "0" means the writing process: the child joins before it forks anything.
            self.check(Stage::Cgroup, rustix::io::write(fd, b"0"))?;
        }
        if s.ignore_sigxfsz {
            self.check(Stage::Signal, ignore_sigxfsz())?;
        }
        if let Some(bridge) = &s.bridge {
            self.build_bridge(bridge)?;
        }
        // Limits come after every open: until exec the child holds a copy of each of the
        // hub's descriptors (close-on-exec, but open now), so with a busy hub the lowest free
        // descriptor number can lie above the room's RLIMIT_NOFILE and any open would fail
        // with EMFILE. Lowering a limit below descriptors already open is allowed; exec then
        // closes the hub's copies.
        for &(resource, value) in &s.rlimits {
            let limit = Rlimit {
                current: Some(value),
                maximum: Some(value),
            };
            self.check(Stage::Rlimit, rustix::process::setrlimit(resource, limit))?;
        }
        if let Some((uid, gid)) = s.credentials {
            self.check(Stage::Credentials, set_credentials(uid, gid))?;
        }
        Ok(())
    }

    /// On error, tells the parent which stage failed (best effort) and passes the errno on.
    fn check<T, E: Into<io::Error>>(&self, stage: Stage, r: Result<T, E>) -> io::Result<T> {
        r.map_err(|e| {
            let _ = rustix::io::write(&self.stage_pipe, &[stage as u8]);
            e.into()
        })
    }

    fn build_bridge(&self, bridge: &Bridge) -> io::Result<()> {
        // After fork the child is the only thread, so the new namespace is the whole process's.
        self.check(Stage::MountNamespace, unshare(UnshareFlags::NEWNS))?;
        // Nothing mounted from here on may propagate back to the host.
        self.check(
            Stage::MountNamespace,
            mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None),
        )?;
        // Open the sources first (the bridge tmpfs may hide them, e.g. under /tmp), in this
        // namespace (bind mounts refuse sources from another mount namespace).
        let mut fds: [Option<OwnedFd>; MAX_BRIDGE_ENTRIES] = [const { None }; MAX_BRIDGE_ENTRIES];
        for (slot, entry) in fds.iter_mut().zip(&bridge.entries) {
            let mut flags = OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW;
            if entry.dir {
                flags |= OFlags::DIRECTORY;
            }
            let fd = rustix::fs::open(entry.source.as_c_str(), flags, Mode::empty());
            *slot = Some(self.check(Stage::BridgeSource, fd)?);
        }
        self.check(
            Stage::BridgeMount,
            mount(
                Some(c"tmpfs"),
                &bridge.mount_point,
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(c"mode=0755,size=64k,nr_inodes=64"),
            ),
        )?;
        for (fd, entry) in fds.iter().zip(&bridge.entries) {
            let Some(fd) = fd else { continue };
            if entry.dir {
                let r = rustix::fs::mkdir(entry.target.as_c_str(), Mode::from_raw_mode(0o755));
                self.check(Stage::BridgeMount, r)?;
            } else {
                let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC;
                let r =
                    rustix::fs::open(entry.target.as_c_str(), flags, Mode::from_raw_mode(0o644));
                drop(self.check(Stage::BridgeMount, r)?);
            }
            let mut buf = [0u8; 32];
            let source = proc_fd_path(&mut buf, fd.as_raw_fd());
            self.check(
                Stage::BridgeMount,
                mount(Some(source), &entry.target, None, libc::MS_BIND, None),
            )?;
        }
        Ok(())
    }
}

/// Formats `/proc/self/fd/N` into `buf` without allocating.
fn proc_fd_path(buf: &mut [u8; 32], fd: i32) -> &CStr {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let mut n = fd.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    // The buffer holds a NUL at PREFIX.len() + len (at most 14 + 10 < 32), so this cannot fail.
    CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"/proc/self/fd")
}

fn ignore_sigxfsz() -> Result<(), rustix::io::Errno> {
    // SAFETY: installs SIG_IGN, so no handler code ever runs; signal(2) is async-signal-safe and
    // we are the only thread of the child. The ignored disposition survives exec.
    let r = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if r == libc::SIG_ERR {
        Err(super::last_errno())
    } else {
        Ok(())
    }
}

/// Drops to `uid`/`gid` with no supplementary groups. rustix's `set_thread_*` are the raw
/// syscalls and act on the calling thread only (no glibc setxid broadcast); after fork the child
/// has exactly one thread, so the whole process changes.
fn set_credentials(uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (
        rustix::process::Uid::from_raw(uid),
        rustix::process::Gid::from_raw(gid),
    );
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_proc_fd_paths() {
        let mut buf = [0u8; 32];
        assert_eq!(proc_fd_path(&mut buf, 0), c"/proc/self/fd/0");
        assert_eq!(proc_fd_path(&mut buf, 17), c"/proc/self/fd/17");
        assert_eq!(
            proc_fd_path(&mut buf, i32::MAX),
            c"/proc/self/fd/2147483647"
        );
    }

    #[test]
    fn stages_round_trip() {
        for s in [
            Stage::Cgroup,
            Stage::Rlimit,
            Stage::Signal,
            Stage::MountNamespace,
            Stage::BridgeSource,
            Stage::BridgeMount,
            Stage::Credentials,
        ] {
            assert_eq!(Stage::from_byte(s as u8), Some(s));
        }
        assert_eq!(Stage::from_byte(0), None);
    }
}
