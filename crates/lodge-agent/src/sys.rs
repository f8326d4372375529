//! Every `unsafe` block and raw `libc` call of the agent (the crate root denies `unsafe_code`
//! elsewhere), each with a `// SAFETY:` note: the fork-to-exec setup of each command it runs,
//! and (in tests) the raw syscalls that prove its seccomp filter works. No policy, and nothing
//! between fork and exec may allocate, lock or log.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::fs::{Mode, OFlags};

/// Where the kernel takes a process's OOM-killer preference.
const OOM_SCORE_ADJ: &CStr = c"/proc/self/oom_score_adj";
/// The highest value: the OOM killer picks this process first. Raising needs no privilege.
const OOM_SCORE_ADJ_MAX: &[u8] = b"1000";

/// Arranges for the child of `cmd` to start a new session (so it leads its own session and
/// process group), to be the OOM killer's first choice, and to start in the directory `cwd`
/// (an `O_PATH` directory fd, resolved beneath the workspace by the caller). The fd is owned by
/// the hook and closed when `cmd` is dropped; it is `O_CLOEXEC`, so the command never sees it.
pub(crate) fn set_command_child_setup(cmd: &mut Command, cwd: OwnedFd) {
    let hook = move || -> std::io::Result<()> {
        rustix::process::setsid()?;
        // Best effort: without /proc the command simply keeps the agent's score.
        if let Ok(fd) = rustix::fs::open(
            OOM_SCORE_ADJ,
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            let _ = rustix::io::write(&fd, OOM_SCORE_ADJ_MAX);
        }
        rustix::process::fchdir(&cwd)?;
        Ok(())
    };
    // SAFETY: `pre_exec` is unsafe because the hook runs in the forked child, where only
    // async-signal-safe work is allowed (another thread of the parent may have held a lock at
    // fork time). The hook only makes raw syscalls through rustix (setsid, open of a
    // NUL-terminated static path, write of a static buffer, close, fchdir): no allocation, no
    // locks, no std I/O. Converting an `Errno` into `io::Error` stores the raw code without
    // allocating. It touches no memory shared with the parent beyond the captured fd.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Raw syscalls the confinement test needs to prove that seccomp refuses them.
#[cfg(test)]
pub(crate) mod probe {
    use rustix::io::Errno;

    /// A raw syscall's return value (negative on failure, with `errno` set) as a `Result`.
    fn check_ret(ret: i64) -> Result<i64, Errno> {
        if ret < 0 {
            Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
        } else {
            Ok(ret)
        }
    }

    /// `unshare(CLONE_NEWUSER)`.
    pub fn unshare_user() -> Result<(), Errno> {
        // SAFETY: CLONE_NEWUSER changes only this process's namespaces (and in a multithreaded
        // test process the kernel refuses it with EINVAL); no memory or fd is invalidated.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
        check_ret(i64::from(ret)).map(|_| ())
    }

    /// `mount(NULL, target, "tmpfs", 0, NULL)`. Without seccomp this fails on a missing target
    /// with ENOENT; with the agent's filter it fails with EPERM before the kernel looks.
    pub fn mount_tmpfs(target: &std::ffi::CStr) -> Result<(), Errno> {
        // SAFETY: every pointer is NULL or a NUL-terminated string borrowed for the whole
        // call; mount(2) only reads them during the call.
        let ret = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        check_ret(i64::from(ret)).map(|_| ())
    }

    /// Makes `cmd`'s child sleep `ms` between fork and exec, holding copies of all the
    /// parent's fds, as every child does for a moment.
    pub fn slow_exec(cmd: &mut std::process::Command, ms: u64) {
        let pause = rustix::thread::Timespec {
            tv_sec: (ms / 1000) as i64,
            tv_nsec: ((ms % 1000) * 1_000_000) as i64,
        };
        let hook = move || -> std::io::Result<()> {
            let _ = rustix::thread::nanosleep(&pause);
            Ok(())
        };
        // SAFETY: the hook runs in the forked child and only calls nanosleep(2), which is
        // async-signal-safe; it allocates nothing and touches no shared memory.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, hook);
        }
    }

    /// `clone3(NULL, 0)`: EINVAL from the kernel (size too small), ENOSYS under the filter.
    /// No process can be created by it either way.
    pub fn clone3_empty() -> Result<(), Errno> {
        // SAFETY: a NULL args pointer with size 0 is rejected by the kernel before anything is
        // read or created.
        let ret = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
        check_ret(ret).map(|_| ())
    }

    /// `clone(CLONE_NEWUSER | CLONE_FS)`: an invalid combination the kernel refuses with EINVAL
    /// (so no process is created even without the filter); the filter refuses it with EPERM
    /// because of `CLONE_NEWUSER`.
    pub fn clone_newuser_invalid() -> Result<(), Errno> {
        let flags = (libc::CLONE_NEWUSER | libc::CLONE_FS) as libc::c_ulong;
        // SAFETY: the kernel rejects CLONE_NEWUSER together with CLONE_FS before creating a
        // task, so this call cannot fork; the remaining arguments are NULL/0, never read.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags,
                std::ptr::null::<u8>(),
                std::ptr::null::<u8>(),
                std::ptr::null::<u8>(),
                0usize,
            )
        };
        if ret == 0 {
            // Unreachable by the argument above; never continue a duplicate test process.
            // SAFETY: `_exit` is async-signal-safe and ends only this (child) process.
            unsafe { libc::_exit(99) };
        }
        check_ret(ret).map(|_| ())
    }
}
