//! Every `unsafe` block and raw `libc` call of lodge-room lives here (the crate root denies
//! `unsafe_code` everywhere else), each with a `// SAFETY:` comment on why it is sound.
//! Only thin wrappers: no policy, and code that runs between fork and exec must not allocate,
//! lock or log (raw syscalls only). `spawner` holds the local spawner's fork-to-exec setup.

use std::ffi::CStr;

use rustix::io::Errno;
use rustix::thread::UnshareFlags;

pub(crate) mod spawner;

/// The errno of the last failed libc call. Reads thread-local `errno` only: no allocation, so it
/// is fine between fork and exec.
fn last_errno() -> Errno {
    let raw = std::io::Error::last_os_error().raw_os_error();
    Errno::from_raw_os_error(raw.unwrap_or(libc::EIO))
}

/// Maps a raw syscall return value (negative on failure, with `errno` set) to a `Result`.
fn check_ret(ret: i64) -> Result<i64, Errno> {
    if ret < 0 { Err(last_errno()) } else { Ok(ret) }
}

/// `unshare(2)` for namespaces. `CLONE_FILES` is refused with EINVAL: it is the one flag that
/// makes `unshare` unsound in a multithreaded process, and nothing here needs it.
fn unshare(flags: UnshareFlags) -> Result<(), Errno> {
    if flags.contains(UnshareFlags::FILES) {
        return Err(Errno::INVAL);
    }
    // SAFETY: `unshare_unsafe` is unsafe only because `CLONE_FILES` could leave other threads
    // observing fds from another table; it was excluded above, and every other flag changes
    // namespaces or fs attributes without invalidating any memory or fd the program holds.
    unsafe { rustix::thread::unshare_unsafe(flags) }
}

/// `mount(2)`; `None` passes NULL (allowed for source, fstype and data).
fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<(), Errno> {
    let ptr = |c: Option<&CStr>| c.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is NULL or points to a NUL-terminated string borrowed for the whole
    // call; mount(2) only reads them during the call and keeps no reference.
    let ret = unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    };
    check_ret(i64::from(ret)).map(|_| ())
}
