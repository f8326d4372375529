//! Workspace file operations for the agent (behind the hub's `fs_*` tools), confined to one
//! directory. Every path is resolved by the kernel beneath a held root fd (`openat2` with
//! `RESOLVE_BENEATH`); nothing here may open, write, delete or reveal anything outside that root.
//!
//! Policies (chosen deliberately, tested below):
//! - Symlinks: resolution follows symlinks that stay inside the workspace (kernel-checked).
//!   `read`/`list`/`search` starting points may be symlinks to inside. `write`/`edit` refuse a
//!   symlink as the final component (edit the target path instead). `delete`/`rename` act on the
//!   link itself. Walks (`list`, `search`, recursive `delete`) never descend through symlinks.
//! - Hard links: a regular file with more than one link may share its inode with a file outside
//!   the workspace, so it is neither read, written nor edited (`PermissionDenied`).
//! - Non-UTF-8 content: `read` returns lossy UTF-8 with `lossy: true`; `edit` matches bytes, so it
//!   works on any content.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat, fchmod, fstat, mkdirat,
    openat, openat2, renameat_with, statat, unlinkat,
};
use rustix::io::Errno;
use serde::Serialize;

/// Largest page `read` returns.
pub const MAX_READ: u64 = 1024 * 1024;
/// Largest file `edit` will load into memory.
pub const MAX_EDIT: u64 = 16 * 1024 * 1024;
/// Files larger than this are skipped by text search.
pub const MAX_SEARCH_FILE: u64 = 4 * 1024 * 1024;
/// Upper bound on entries/matches a single call returns, whatever limit is asked for.
pub const MAX_RESULTS: usize = 10_000;
const MAX_PATH: usize = 4096;
const MAX_COMPONENT: usize = 255;
/// Recursive delete holds one fd per level; bound it well below typical fd limits.
const MAX_DEPTH: usize = 256;
const TMP_PREFIX: &str = ".lodge-tmp-";
const MAX_LINE_TEXT: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("'{path}' does not exist in the workspace")]
    NotFound { path: String },
    #[error("'{path}' already exists{hint}")]
    AlreadyExists { path: String, hint: String },
    #[error("'{path}': a parent component is not a directory (or the path is not a directory)")]
    NotADirectory { path: String },
    #[error("'{path}' is a directory{hint}")]
    IsADirectory { path: String, hint: String },
    #[error("permission denied for '{path}': {reason}")]
    PermissionDenied { path: String, reason: String },
    #[error(
        "'{path}' resolves outside the workspace (through a symlink, a /proc magic link, or a \
         symlink loop); use a path that stays inside the workspace"
    )]
    Escape { path: String },
    #[error("'{path}' is too large ({size} bytes, limit {max}){hint}")]
    TooLarge {
        path: String,
        size: u64,
        max: u64,
        hint: String,
    },
    #[error(
        "the text to replace was not found in '{path}'; read the file and copy the exact text, \
         including whitespace and indentation"
    )]
    NotFoundText { path: String },
    #[error(
        "the text to replace occurs {count} times in '{path}'; include more surrounding context \
         to make it unique, or pass replace_all=true"
    )]
    Ambiguous { path: String, count: usize },
    #[error("{op} '{path}' failed: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
}

// What a path is and a search hit are the protocol's own types: the agent answers with them
// as they are.
pub use lodge_protocol::{EntryKind, Match};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Relative to the workspace root.
    pub path: String,
    pub kind: EntryKind,
    /// Size in bytes for regular files; `None` otherwise.
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadPage {
    pub content: String,
    /// Offset (bytes) this page starts at.
    pub offset: u64,
    /// Offset to ask for next; a page never ends inside a UTF-8 sequence unless at EOF.
    pub next_offset: u64,
    pub total_size: u64,
    pub eof: bool,
    /// True when invalid UTF-8 was replaced by U+FFFD.
    pub lossy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchResult {
    pub matches: Vec<Match>,
    pub truncated: bool,
    /// Files not searched for text: too large, binary, or hard-linked.
    pub skipped: u64,
}

/// A directory that file operations cannot leave.
#[derive(Debug)]
pub struct Workspace {
    root: OwnedFd,
}

/// A validated, normalised relative path (no `..`, no empty or `.` components).
struct RelPath {
    comps: Vec<String>,
}

impl RelPath {
    fn shown(&self) -> String {
        sanitize(&self.comps.join("/"))
    }
    /// Path string for openat2 relative to the root ("." for the root itself).
    fn as_arg(&self) -> String {
        join_arg(&self.comps)
    }
    fn parent_arg(&self) -> String {
        join_arg(&self.comps[..self.comps.len().saturating_sub(1)])
    }
    fn name(&self) -> &str {
        self.comps.last().map(String::as_str).unwrap_or(".")
    }
}

fn join_arg(comps: &[String]) -> String {
    if comps.is_empty() {
        ".".to_string()
    } else {
        comps.join("/")
    }
}

/// Text echoed back to the model (paths, names): short and free of control characters.
pub(crate) fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(100)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 100 {
        out.push('…');
    }
    out
}

fn invalid(raw: &str, reason: &str) -> WsError {
    WsError::InvalidPath {
        path: sanitize(raw),
        reason: reason.to_string(),
    }
}

/// Validation happens before any syscall, so malformed paths never reach the kernel.
fn parse(raw: &str, allow_root: bool) -> Result<RelPath, WsError> {
    if raw.contains('\0') {
        return Err(invalid(raw, "contains a NUL byte"));
    }
    if raw.len() > MAX_PATH {
        return Err(invalid(raw, "longer than 4096 bytes"));
    }
    if raw.starts_with('/') {
        return Err(invalid(
            raw,
            "absolute paths are not allowed; use a path relative to the workspace",
        ));
    }
    let mut comps = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(invalid(raw, "'..' components are not allowed")),
            c if c.len() > MAX_COMPONENT => {
                return Err(invalid(raw, "a component is longer than 255 bytes"));
            }
            c => comps.push(c.to_string()),
        }
    }
    if comps.is_empty() && !allow_root {
        return Err(invalid(
            raw,
            "names the workspace root, which this operation cannot act on",
        ));
    }
    Ok(RelPath { comps })
}

fn io_err(op: &'static str, path: &str, e: std::io::Error) -> WsError {
    WsError::Io {
        op,
        path: path.to_string(),
        source: e,
    }
}

/// Map an errno to an error naming the relative path only (rustix errors carry no path).
fn map_errno(op: &'static str, path: &str, e: Errno) -> WsError {
    let path = path.to_string();
    match e {
        // EXDEV: RESOLVE_BENEATH refused a step above the root (absolute or `..` symlink).
        // ELOOP: RESOLVE_NO_MAGICLINKS/NO_SYMLINKS/O_NOFOLLOW refused a link, or a real loop.
        Errno::XDEV | Errno::LOOP => WsError::Escape { path },
        Errno::NOENT => WsError::NotFound { path },
        Errno::EXIST => WsError::AlreadyExists {
            path,
            hint: String::new(),
        },
        Errno::NOTDIR => WsError::NotADirectory { path },
        Errno::ISDIR => WsError::IsADirectory {
            path,
            hint: String::new(),
        },
        Errno::ACCESS | Errno::PERM | Errno::ROFS => WsError::PermissionDenied {
            path,
            reason: e.to_string(),
        },
        _ => WsError::Io {
            op,
            path,
            source: e.into(),
        },
    }
}

/// openat2 beneath `dir`. RESOLVE_BENEATH may fail with EAGAIN when a rename races the lookup;
/// retrying is safe because every attempt is checked by the kernel again.
fn open_beneath(
    dir: BorrowedFd<'_>,
    path: impl AsRef<[u8]>,
    flags: OFlags,
    extra: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | extra;
    let mut tries = 0;
    loop {
        match openat2(
            dir,
            path.as_ref(),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        ) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            r => return r,
        }
    }
}

fn kind_of(st: &Stat) -> EntryKind {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

fn size_of(st: &Stat) -> u64 {
    u64::try_from(st.st_size).unwrap_or(0)
}

/// Names in a directory, sorted, without `.` and `..`.
fn read_names(fd: &OwnedFd) -> Result<Vec<CString>, Errno> {
    let dir = Dir::read_from(fd)?;
    let mut names = Vec::new();
    for ent in dir {
        let ent = ent?;
        let n = ent.file_name();
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            names.push(n.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn hardlink_denied(path: &str) -> WsError {
    WsError::PermissionDenied {
        path: path.to_string(),
        reason: "the file has more than one hard link and may share its contents with a file \
                 outside the workspace; copy it to a new file first if you need it"
            .to_string(),
    }
}

/// Random-enough temp names without a rand dependency: RandomState is seeded from the OS, and
/// O_EXCL makes a collision a retry, never an overwrite.
fn tmp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("{TMP_PREFIX}{:016x}", h.finish())
}

/// Length of `buf` without a trailing partial UTF-8 sequence, so pages and capped output
/// split on character boundaries.
pub(crate) fn utf8_cut(buf: &[u8]) -> usize {
    let n = buf.len();
    for back in 1..=3.min(n) {
        let b = buf[n - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte; keep looking for the lead byte
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if need > back { n - back } else { n };
    }
    n
}

fn count_occurrences(hay: &[u8], needle: &[u8]) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if &hay[i..i + needle.len()] == needle {
            count += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    count
}

fn replace_bytes(hay: &[u8], old: &[u8], new: &[u8], all: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    let mut done = false;
    while i < hay.len() {
        if !done && i + old.len() <= hay.len() && &hay[i..i + old.len()] == old {
            out.extend_from_slice(new);
            i += old.len();
            done = !all;
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

enum Flow {
    Continue,
    Stop,
}

impl Workspace {
    /// Open `root` as the workspace. The fd is O_PATH: it is only ever a base for `*at` calls.
    pub fn open(root: &Path) -> Result<Workspace, WsError> {
        let root = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| map_errno("open workspace root", ".", e))?;
        Ok(Workspace { root })
    }

    /// Resolve a directory (following only symlinks that stay inside) as an O_PATH fd.
    fn dir_fd(&self, arg: &str, shown: &str) -> Result<OwnedFd, WsError> {
        open_beneath(
            self.root.as_fd(),
            arg,
            OFlags::PATH | OFlags::DIRECTORY,
            ResolveFlags::empty(),
        )
        .map_err(|e| map_errno("open directory", shown, e))
    }

    /// Open the parent of `p`, creating missing directories first if asked.
    fn parent_fd(&self, p: &RelPath, create: bool) -> Result<OwnedFd, WsError> {
        let shown = p.shown();
        if create {
            // Each step resolves its parent from the root again: every lookup is kernel-checked,
            // so a concurrent swap can at worst redirect us to another directory inside.
            for i in 0..p.comps.len().saturating_sub(1) {
                let parent = self.dir_fd(&join_arg(&p.comps[..i]), &shown)?;
                match mkdirat(&parent, p.comps[i].as_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(map_errno("create directory", &shown, e)),
                }
            }
        }
        self.dir_fd(&p.parent_arg(), &shown)
    }

    /// Open a regular file for reading with the whole path resolved beneath the root.
    /// O_NONBLOCK keeps a FIFO from hanging the open; it does not affect regular files.
    fn open_regular(&self, p: &RelPath) -> Result<(File, Stat), WsError> {
        let shown = p.shown();
        let fd = open_beneath(
            self.root.as_fd(),
            p.as_arg(),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            ResolveFlags::empty(),
        )
        .map_err(|e| map_errno("open", &shown, e))?;
        let st = fstat(&fd).map_err(|e| map_errno("stat", &shown, e))?;
        match kind_of(&st) {
            EntryKind::File => {}
            EntryKind::Dir => {
                return Err(WsError::IsADirectory {
                    path: shown,
                    hint: "; use list".to_string(),
                });
            }
            _ => {
                return Err(WsError::PermissionDenied {
                    path: shown,
                    reason: "not a regular file".to_string(),
                });
            }
        }
        // Checked on the open fd, so the answer is about the inode we will actually read.
        if st.st_nlink > 1 {
            return Err(hardlink_denied(&shown));
        }
        Ok((File::from(fd), st))
    }

    /// List a directory; `recursive` walks the tree without following symlinks.
    pub fn list(&self, path: &str, recursive: bool, limit: usize) -> Result<Listing, WsError> {
        let p = parse(path, true)?;
        let limit = limit.clamp(1, MAX_RESULTS);
        let mut entries = Vec::new();
        let mut truncated = false;
        self.walk(&p, recursive, |rel, _dir, _name, st| {
            if entries.len() >= limit {
                truncated = true;
                return Ok(Flow::Stop);
            }
            let kind = kind_of(st);
            let size = (kind == EntryKind::File).then(|| size_of(st));
            entries.push(Entry {
                path: join_rel(&p, rel),
                kind,
                size,
            });
            Ok(Flow::Continue)
        })?;
        Ok(Listing { entries, truncated })
    }

    /// Breadth-first walk below `start`. The start may be an inside symlink; below it every
    /// directory is reopened with RESOLVE_NO_SYMLINKS, so a directory swapped for a symlink
    /// mid-walk is skipped rather than followed.
    fn walk<F>(&self, start: &RelPath, recursive: bool, mut f: F) -> Result<(), WsError>
    where
        F: FnMut(&str, BorrowedFd<'_>, &CStr, &Stat) -> Result<Flow, WsError>,
    {
        let shown = start.shown();
        let start_fd = open_beneath(
            self.root.as_fd(),
            start.as_arg(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            ResolveFlags::empty(),
        )
        .map_err(|e| map_errno("open directory", &shown, e))?;
        let mut queue: VecDeque<String> = VecDeque::from([String::new()]);
        while let Some(rel) = queue.pop_front() {
            let fd = if rel.is_empty() {
                match open_beneath(
                    start_fd.as_fd(),
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY,
                    ResolveFlags::empty(),
                ) {
                    Ok(fd) => fd,
                    Err(e) => return Err(map_errno("open directory", &shown, e)),
                }
            } else {
                match open_beneath(
                    start_fd.as_fd(),
                    rel.as_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
                    ResolveFlags::NO_SYMLINKS,
                ) {
                    Ok(fd) => fd,
                    Err(_) => continue, // vanished or swapped for a link since we saw it
                }
            };
            let names = match read_names(&fd) {
                Ok(n) => n,
                Err(e) if rel.is_empty() => return Err(map_errno("read directory", &shown, e)),
                Err(_) => continue,
            };
            for name in names {
                let Ok(st) = statat(&fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) else {
                    continue;
                };
                let name_s = name.to_string_lossy();
                let child = if rel.is_empty() {
                    name_s.to_string()
                } else {
                    format!("{rel}/{name_s}")
                };
                if let Flow::Stop = f(&child, fd.as_fd(), &name, &st)? {
                    return Ok(());
                }
                // Non-UTF-8 names cannot be addressed by &str paths, so they are not descended.
                let utf8 = name.to_str().is_ok();
                if recursive && utf8 && kind_of(&st) == EntryKind::Dir && child.len() < MAX_PATH {
                    queue.push_back(child);
                }
            }
        }
        Ok(())
    }

    /// Read a page of a file. `limit` 0 or above [`MAX_READ`] reads [`MAX_READ`] bytes.
    pub fn read(&self, path: &str, offset: u64, limit: u64) -> Result<ReadPage, WsError> {
        let p = parse(path, true)?;
        let shown = p.shown();
        let (file, st) = self.open_regular(&p)?;
        let total_size = size_of(&st);
        let limit = if limit == 0 {
            MAX_READ
        } else {
            limit.min(MAX_READ)
        };
        let want = usize::try_from(limit.min(total_size.saturating_sub(offset))).unwrap_or(0);
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("read", &shown, e)),
            }
        }
        buf.truncate(got);
        let mut eof = offset + got as u64 >= total_size;
        if !eof {
            let cut = utf8_cut(&buf);
            // Only trim when something remains, so a page always makes progress.
            if cut > 0 {
                buf.truncate(cut);
            }
        }
        let next_offset = offset.min(total_size.max(offset)) + buf.len() as u64;
        eof = eof || next_offset >= total_size;
        let (content, lossy) = match String::from_utf8(buf) {
            Ok(s) => (s, false),
            Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
        };
        Ok(ReadPage {
            content,
            offset,
            next_offset,
            total_size,
            eof,
            lossy,
        })
    }

    /// Check the final component of a write/edit target through its parent fd.
    /// Returns the existing file's stat, if any.
    fn check_target(&self, parent: &OwnedFd, p: &RelPath) -> Result<Option<Stat>, WsError> {
        let shown = p.shown();
        match statat(parent, p.name(), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(map_errno("stat", &shown, e)),
            Ok(st) => match kind_of(&st) {
                EntryKind::File if st.st_nlink > 1 => Err(hardlink_denied(&shown)),
                EntryKind::File => Ok(Some(st)),
                EntryKind::Dir => Err(WsError::IsADirectory {
                    path: shown,
                    hint: String::new(),
                }),
                EntryKind::Symlink => Err(WsError::PermissionDenied {
                    path: shown,
                    reason: "the path is a symlink; write to the file it points to instead"
                        .to_string(),
                }),
                EntryKind::Other => Err(WsError::PermissionDenied {
                    path: shown,
                    reason: "not a regular file".to_string(),
                }),
            },
        }
    }

    /// Write `content` to a fresh temp file beside the target and rename it over the target.
    /// The rename replaces the directory entry, so even if the target were swapped for a
    /// symlink or hard link after our check, no inode outside is ever written.
    fn replace_atomically(
        &self,
        parent: &OwnedFd,
        p: &RelPath,
        content: &[u8],
        old: Option<&Stat>,
    ) -> Result<(), WsError> {
        let shown = p.shown();
        let mut attempts = 0;
        let (tmp, fd) = loop {
            let tmp = tmp_name();
            match openat(
                parent,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(fd) => break (tmp, fd),
                Err(Errno::EXIST) if attempts < 8 => attempts += 1,
                Err(e) => return Err(map_errno("create temp file for", &shown, e)),
            }
        };
        let result = (|| {
            if let Some(st) = old {
                // Keep the permission bits (not setuid/setgid) of the file being replaced.
                fchmod(&fd, Mode::from_raw_mode(st.st_mode & 0o777))
                    .map_err(|e| map_errno("chmod", &shown, e))?;
            }
            let mut file = File::from(fd);
            file.write_all(content)
                .map_err(|e| io_err("write", &shown, e))?;
            file.sync_all().map_err(|e| io_err("fsync", &shown, e))?;
            renameat_with(parent, tmp.as_str(), parent, p.name(), RenameFlags::empty())
                .map_err(|e| map_errno("rename temp file onto", &shown, e))
        })();
        if result.is_err() {
            let _ = unlinkat(parent, tmp.as_str(), AtFlags::empty());
        } else if let Ok(d) = openat(
            parent,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            // Best effort: make the rename itself durable.
            let _ = rustix::fs::fsync(&d);
        }
        result
    }

    /// Atomically create or replace a file.
    pub fn write(&self, path: &str, content: &[u8], create_dirs: bool) -> Result<(), WsError> {
        let p = parse(path, false)?;
        let parent = self.parent_fd(&p, create_dirs)?;
        let old = self.check_target(&parent, &p)?;
        self.replace_atomically(&parent, &p, content, old.as_ref())
    }

    /// Replace exact text (byte-wise) in a file, atomically. Returns the number of replacements.
    pub fn edit(
        &self,
        path: &str,
        old: &str,
        new: &str,
        replace_all: bool,
    ) -> Result<usize, WsError> {
        let p = parse(path, false)?;
        let shown = p.shown();
        if old.is_empty() {
            return Err(WsError::NotFoundText { path: shown });
        }
        let parent = self.parent_fd(&p, false)?;
        if self.check_target(&parent, &p)?.is_none() {
            return Err(WsError::NotFound { path: shown });
        }
        // O_NOFOLLOW: if the name became a symlink since the check, refuse instead of reading
        // through it. nlink is re-checked on the opened inode.
        let fd = openat(
            &parent,
            p.name(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| map_errno("open", &shown, e))?;
        let st = fstat(&fd).map_err(|e| map_errno("stat", &shown, e))?;
        if kind_of(&st) != EntryKind::File {
            return Err(WsError::PermissionDenied {
                path: shown,
                reason: "not a regular file".into(),
            });
        }
        if st.st_nlink > 1 {
            return Err(hardlink_denied(&shown));
        }
        let size = size_of(&st);
        if size > MAX_EDIT {
            return Err(WsError::TooLarge {
                path: shown,
                size,
                max: MAX_EDIT,
                hint: "; use write to replace the whole file".into(),
            });
        }
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut File::from(fd), &mut data)
            .map_err(|e| io_err("read", &shown, e))?;
        let count = count_occurrences(&data, old.as_bytes());
        if count == 0 {
            return Err(WsError::NotFoundText { path: shown });
        }
        if count > 1 && !replace_all {
            return Err(WsError::Ambiguous { path: shown, count });
        }
        let out = replace_bytes(&data, old.as_bytes(), new.as_bytes(), replace_all);
        self.replace_atomically(&parent, &p, &out, Some(&st))?;
        Ok(if replace_all { count } else { 1 })
    }

    /// Delete a file, symlink (the link itself) or, with `recursive`, a directory tree.
    pub fn delete(&self, path: &str, recursive: bool) -> Result<(), WsError> {
        let p = parse(path, false)?;
        let shown = p.shown();
        let parent = self.parent_fd(&p, false)?;
        let st = statat(&parent, p.name(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| map_errno("stat", &shown, e))?;
        if kind_of(&st) != EntryKind::Dir {
            // unlinkat never follows a symlink: a link to a directory outside is removed as a link.
            return unlinkat(&parent, p.name(), AtFlags::empty())
                .map_err(|e| map_errno("delete", &shown, e));
        }
        if !recursive {
            return unlinkat(&parent, p.name(), AtFlags::REMOVEDIR).map_err(|e| match e {
                Errno::NOTEMPTY | Errno::EXIST => WsError::IsADirectory {
                    path: shown.clone(),
                    hint: " and is not empty; pass recursive=true to delete it with its contents"
                        .into(),
                },
                e => map_errno("delete", &shown, e),
            });
        }
        let name = CString::new(p.name()).map_err(|_| invalid(path, "contains a NUL byte"))?;
        remove_tree(parent.as_fd(), &name, 0).map_err(|e| map_errno("delete", &shown, e))
    }

    /// Rename `from` to `to`; the link itself is moved if `from` is a symlink.
    pub fn rename(&self, from: &str, to: &str, overwrite: bool) -> Result<(), WsError> {
        let pf = parse(from, false)?;
        let pt = parse(to, false)?;
        let (sf, st) = (pf.shown(), pt.shown());
        let from_parent = self.parent_fd(&pf, false)?;
        let to_parent = self.parent_fd(&pt, false)?;
        let flags = if overwrite {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        renameat_with(&from_parent, pf.name(), &to_parent, pt.name(), flags).map_err(|e| match e {
            Errno::EXIST | Errno::NOTEMPTY => WsError::AlreadyExists {
                path: st.clone(),
                hint: if overwrite {
                    " and is a non-empty directory".into()
                } else {
                    "; pass overwrite=true to replace it".into()
                },
            },
            Errno::NOENT => WsError::NotFound { path: sf.clone() },
            Errno::INVAL => WsError::InvalidPath {
                path: st.clone(),
                reason: format!("cannot move '{sf}' into itself"),
            },
            e => map_errno("rename", &format!("{sf} -> {st}"), e),
        })
    }

    /// Create a directory; with `parents`, missing parents too and an existing one is fine.
    pub fn mkdir(&self, path: &str, parents: bool) -> Result<(), WsError> {
        let p = parse(path, parents)?;
        if p.comps.is_empty() {
            return Ok(()); // `mkdir -p .`: the root exists
        }
        let shown = p.shown();
        let parent = self.parent_fd(&p, parents)?;
        match mkdirat(&parent, p.name(), Mode::from_raw_mode(0o755)) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) if parents => {
                // Fine only if what exists is a directory (symlinks are not followed here).
                let st = statat(&parent, p.name(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| map_errno("stat", &shown, e))?;
                if kind_of(&st) == EntryKind::Dir {
                    Ok(())
                } else {
                    Err(WsError::AlreadyExists {
                        path: shown,
                        hint: " and is not a directory".into(),
                    })
                }
            }
            Err(e) => Err(map_errno("create directory", &shown, e)),
        }
    }

    /// Find files by glob (relative to `path`) and/or lines containing `text`.
    /// A glob without `/` matches file names at any depth; `**` matches any number of dirs.
    pub fn search(
        &self,
        path: &str,
        glob: Option<&str>,
        text: Option<&str>,
        limit: usize,
    ) -> Result<SearchResult, WsError> {
        let p = parse(path, true)?;
        let limit = limit.clamp(1, MAX_RESULTS);
        let glob = glob.map(Glob::new);
        let text = text.filter(|t| !t.is_empty());
        let mut matches = Vec::new();
        let mut truncated = false;
        let mut skipped = 0u64;
        self.walk(&p, true, |rel, dir, name, st| {
            if kind_of(st) != EntryKind::File {
                return Ok(Flow::Continue);
            }
            if let Some(g) = &glob
                && !g.matches(rel)
            {
                return Ok(Flow::Continue);
            }
            let full = join_rel(&p, rel);
            let Some(needle) = text else {
                if matches.len() >= limit {
                    truncated = true;
                    return Ok(Flow::Stop);
                }
                matches.push(Match {
                    path: full,
                    line: None,
                    text: None,
                });
                return Ok(Flow::Continue);
            };
            let Some(data) = read_for_search(dir, name) else {
                skipped += 1;
                return Ok(Flow::Continue);
            };
            for (i, line) in data.split(|&b| b == b'\n').enumerate() {
                if count_occurrences(line, needle.as_bytes()) == 0 {
                    continue;
                }
                if matches.len() >= limit {
                    truncated = true;
                    return Ok(Flow::Stop);
                }
                let s = String::from_utf8_lossy(line);
                let s: String = s
                    .trim_end_matches('\r')
                    .chars()
                    .take(MAX_LINE_TEXT)
                    .collect();
                matches.push(Match {
                    path: full.clone(),
                    line: Some(i as u64 + 1),
                    text: Some(s),
                });
            }
            Ok(Flow::Continue)
        })?;
        Ok(SearchResult {
            matches,
            truncated,
            skipped,
        })
    }
}

fn join_rel(base: &RelPath, rel: &str) -> String {
    if base.comps.is_empty() {
        rel.to_string()
    } else {
        format!("{}/{}", base.comps.join("/"), rel)
    }
}

/// Contents of a file for text search, or None if it must be skipped (link, too large,
/// hard-linked, binary). The open refuses symlinks, so a swap after the walk saw a file is safe.
fn read_for_search(dir: BorrowedFd<'_>, name: &CStr) -> Option<Vec<u8>> {
    let fd = open_beneath(
        dir,
        name.to_bytes(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY,
        ResolveFlags::NO_SYMLINKS,
    )
    .ok()?;
    let st = fstat(&fd).ok()?;
    if kind_of(&st) != EntryKind::File || st.st_nlink > 1 || size_of(&st) > MAX_SEARCH_FILE {
        return None;
    }
    let mut data = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(File::from(fd), MAX_SEARCH_FILE),
        &mut data,
    )
    .ok()?;
    // Same heuristic as git/grep: a NUL byte in the first 8 KiB means binary.
    if data[..data.len().min(8192)].contains(&0) {
        return None;
    }
    Some(data)
}

/// Remove a directory tree below `parent`. Every directory is opened with O_NOFOLLOW and
/// RESOLVE_NO_SYMLINKS, and entries are unlinked relative to that fd, so a symlink (even one
/// swapped in mid-delete) is only ever unlinked, never descended into.
fn remove_tree(parent: BorrowedFd<'_>, name: &CStr, depth: usize) -> Result<(), Errno> {
    if depth > MAX_DEPTH {
        return Err(Errno::NAMETOOLONG);
    }
    let fd = open_beneath(
        parent,
        name.to_bytes(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        ResolveFlags::NO_SYMLINKS,
    )?;
    for child in read_names(&fd)? {
        let st = statat(&fd, child.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        if kind_of(&st) == EntryKind::Dir {
            remove_tree(fd.as_fd(), &child, depth + 1)?;
        } else {
            unlinkat(&fd, child.as_c_str(), AtFlags::empty())?;
        }
    }
    unlinkat(parent, name, AtFlags::REMOVEDIR)
}

// ---------------------------------------------------------------------------------------------
// A small glob matcher: `*` and `?` (not crossing `/`), `[abc]`, `[a-z]`, `[!x]`/`[^x]`, and
// `**` as a whole component for any number of directories.

#[derive(Debug, Clone)]
enum Tok {
    Star,
    Any,
    Lit(char),
    Class {
        neg: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Tok {
    fn matches(&self, c: char) -> bool {
        match self {
            Tok::Star => true,
            Tok::Any => true,
            Tok::Lit(l) => *l == c,
            Tok::Class { neg, ranges } => ranges.iter().any(|&(a, b)| a <= c && c <= b) != *neg,
        }
    }
}

#[derive(Debug, Clone)]
enum Seg {
    DoubleStar,
    Toks(Vec<Tok>),
}

#[derive(Debug, Clone)]
pub struct Glob {
    segs: Vec<Seg>,
    basename_only: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        let basename_only = !pattern.contains('/');
        let segs = pattern
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s == "**" {
                    Seg::DoubleStar
                } else {
                    Seg::Toks(parse_seg(s))
                }
            })
            .collect();
        Glob {
            segs,
            basename_only,
        }
    }

    /// Match a `/`-separated relative path.
    pub fn matches(&self, path: &str) -> bool {
        let parts: Vec<Vec<char>> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| s.chars().collect())
            .collect();
        if self.basename_only {
            return match (parts.last(), self.segs.first()) {
                (Some(name), Some(Seg::Toks(t))) => match_toks(t, name),
                (Some(_), Some(Seg::DoubleStar)) => true,
                _ => false,
            };
        }
        // dp[i][j]: segs[i..] matches parts[j..]. Polynomial even with many `**`.
        let (n, m) = (self.segs.len(), parts.len());
        let mut dp = vec![vec![false; m + 1]; n + 1];
        dp[n][m] = true;
        for i in (0..n).rev() {
            for j in (0..=m).rev() {
                dp[i][j] = match &self.segs[i] {
                    Seg::DoubleStar => dp[i + 1][j] || (j < m && dp[i][j + 1]),
                    Seg::Toks(t) => j < m && match_toks(t, &parts[j]) && dp[i + 1][j + 1],
                };
            }
        }
        dp[0][0]
    }
}

fn parse_seg(s: &str) -> Vec<Tok> {
    let chars: Vec<char> = s.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                // `a**b` inside a component behaves like a single `*`.
                if !matches!(toks.last(), Some(Tok::Star)) {
                    toks.push(Tok::Star);
                }
                i += 1;
            }
            '?' => {
                toks.push(Tok::Any);
                i += 1;
            }
            '[' => {
                let mut j = i + 1;
                let neg = matches!(chars.get(j), Some('!') | Some('^'));
                if neg {
                    j += 1;
                }
                let start = j;
                let mut ranges = Vec::new();
                // A `]` right after `[` or `[!` is a literal member.
                while j < chars.len() && (chars[j] != ']' || j == start) {
                    if j + 2 < chars.len() && chars[j + 1] == '-' && chars[j + 2] != ']' {
                        ranges.push((chars[j], chars[j + 2]));
                        j += 3;
                    } else {
                        ranges.push((chars[j], chars[j]));
                        j += 1;
                    }
                }
                if j < chars.len() {
                    toks.push(Tok::Class { neg, ranges });
                    i = j + 1;
                } else {
                    toks.push(Tok::Lit('[')); // unclosed: literal
                    i += 1;
                }
            }
            c => {
                toks.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    toks
}

/// Greedy match with single-star backtracking: O(len(toks) * len(s)).
fn match_toks(toks: &[Tok], s: &[char]) -> bool {
    let (mut t, mut c) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while c < s.len() {
        if t < toks.len() && !matches!(toks[t], Tok::Star) && toks[t].matches(s[c]) {
            t += 1;
            c += 1;
        } else if t < toks.len() && matches!(toks[t], Tok::Star) {
            star = Some((t, c));
            t += 1;
        } else if let Some((st, sc)) = star {
            t = st + 1;
            c = sc + 1;
            star = Some((st, sc + 1));
        } else {
            return false;
        }
    }
    toks[t..].iter().all(|x| matches!(x, Tok::Star))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    const SECRET: &[u8] = b"TOP SECRET outside content\n";

    struct Fx {
        _tmp: tempfile::TempDir,
        ws_dir: PathBuf,
        out: PathBuf,
        ws: Workspace,
    }

    impl Fx {
        fn new() -> Fx {
            let tmp = tempfile::tempdir().unwrap();
            let ws_dir = tmp.path().join("ws");
            let out = tmp.path().join("outside");
            fs::create_dir(&ws_dir).unwrap();
            fs::create_dir(&out).unwrap();
            fs::write(out.join("secret"), SECRET).unwrap();
            fs::write(out.join("file"), SECRET).unwrap();
            let ws = Workspace::open(&ws_dir).unwrap();
            Fx {
                _tmp: tmp,
                ws_dir,
                out,
                ws,
            }
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.ws_dir.join(rel)
        }
        /// The outside directory holds exactly the two original files, unchanged.
        fn assert_outside_intact(&self) {
            assert_eq!(fs::read(self.out.join("secret")).unwrap(), SECRET);
            assert_eq!(fs::read(self.out.join("file")).unwrap(), SECRET);
            let mut names: Vec<_> = fs::read_dir(&self.out)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, vec!["file".to_string(), "secret".to_string()]);
        }
        fn assert_no_tmp(&self) {
            for e in walk_host(&self.ws_dir) {
                assert!(!e.contains(TMP_PREFIX), "temp file left behind: {e}");
            }
        }
    }

    fn walk_host(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                out.extend(walk_host(&e.path()));
            }
        }
        out
    }

    fn is_escape_or_notfound(r: &Result<impl std::fmt::Debug, WsError>) -> bool {
        matches!(
            r,
            Err(WsError::Escape { .. }) | Err(WsError::NotFound { .. })
        )
    }

    #[test]
    fn workspace_invalid_paths_rejected() {
        let fx = Fx::new();
        let long_comp = "a".repeat(256);
        let long_path = "ab/".repeat(1667); // 5001 bytes
        // Read-only probes of a real host file: a regression must not be able to damage it.
        for r in [
            fx.ws.read("/etc/passwd", 0, 0).map(|_| ()),
            fx.ws.list("/etc", false, 1).map(|_| ()),
        ] {
            assert!(matches!(r, Err(WsError::InvalidPath { .. })), "{r:?}");
        }
        let abs_out = fx.out.join("secret").to_string_lossy().into_owned();
        for bad in [
            "..",
            "a/../../outside/secret",
            &abs_out,
            "a\0b",
            &long_comp,
            &long_path,
        ] {
            for r in [
                fx.ws.read(bad, 0, 0).map(|_| ()),
                fx.ws.write(bad, b"x", true),
                fx.ws.edit(bad, "TOP", "x", true).map(|_| ()),
                fx.ws.list(bad, false, 10).map(|_| ()),
                fx.ws.delete(bad, true),
                fx.ws.mkdir(bad, true),
                fx.ws.rename("x", bad, true),
            ] {
                assert!(
                    matches!(r, Err(WsError::InvalidPath { .. })),
                    "{bad:?}: {r:?}"
                );
            }
        }
        // Echoed paths are truncated and free of control characters.
        let msg = fx
            .ws
            .read(&format!("/\n{long_path}"), 0, 0)
            .unwrap_err()
            .to_string();
        assert!(msg.len() < 400 && !msg.contains('\n'), "{msg}");
        fx.assert_outside_intact();
    }

    #[test]
    fn workspace_root_is_not_destroyable() {
        let fx = Fx::new();
        fs::write(fx.p("keep"), b"k").unwrap();
        for root in ["", ".", "./", "/"] {
            assert!(
                matches!(fx.ws.delete(root, true), Err(WsError::InvalidPath { .. })),
                "{root:?}"
            );
            assert!(matches!(
                fx.ws.rename(root, "x", true),
                Err(WsError::InvalidPath { .. })
            ));
            assert!(matches!(
                fx.ws.write(root, b"x", false),
                Err(WsError::InvalidPath { .. })
            ));
        }
        assert!(fx.p("keep").exists());
    }

    #[test]
    fn workspace_symlinks_pointing_outside_fail() {
        let fx = Fx::new();
        symlink("/etc", fx.p("abs")).unwrap();
        symlink("../outside", fx.p("rel")).unwrap();
        symlink(fx.out.join("secret"), fx.p("abs_secret")).unwrap();
        symlink("../outside/secret", fx.p("rel_secret")).unwrap();
        fs::create_dir(fx.p("sub")).unwrap();
        symlink("../../outside", fx.p("sub/up")).unwrap();
        // Real host paths (/etc) are only ever read in these tests, so a regression cannot
        // damage the machine running them; destructive attacks target the temp "outside" dir.
        symlink(&fx.out, fx.p("absout")).unwrap();
        let r = fx.ws.read("abs/passwd", 0, 0);
        assert!(is_escape_or_notfound(&r), "read abs/passwd: {r:?}");
        for f in [
            "absout/secret",
            "rel/secret",
            "abs_secret",
            "rel_secret",
            "sub/up/secret",
        ] {
            let r = fx.ws.read(f, 0, 0);
            assert!(is_escape_or_notfound(&r), "read {f}: {r:?}");
            let r = fx.ws.edit(f, "TOP", "PWNED", true);
            assert!(r.is_err(), "edit {f}: {r:?}");
            let r = fx.ws.write(f, b"PWNED", false);
            assert!(r.is_err(), "write {f}: {r:?}");
        }
        // Intermediate outside symlinks: all ops fail with Escape.
        for f in ["rel/secret", "rel/new", "absout/file", "sub/up/file"] {
            assert!(
                matches!(fx.ws.write(f, b"PWNED", true), Err(WsError::Escape { .. })),
                "{f}"
            );
            assert!(
                matches!(fx.ws.edit(f, "TOP", "X", true), Err(WsError::Escape { .. })),
                "{f}"
            );
            assert!(
                matches!(fx.ws.delete(f, true), Err(WsError::Escape { .. })),
                "{f}"
            );
            assert!(
                matches!(fx.ws.mkdir(f, true), Err(WsError::Escape { .. })),
                "{f}"
            );
            assert!(
                matches!(fx.ws.rename("sub", f, true), Err(WsError::Escape { .. })),
                "{f}"
            );
        }
        for d in ["rel", "abs", "absout", "sub/up"] {
            assert!(
                matches!(fx.ws.list(d, true, 100), Err(WsError::Escape { .. })),
                "{d}"
            );
            assert!(matches!(
                fx.ws.search(d, None, Some("TOP"), 100),
                Err(WsError::Escape { .. })
            ));
        }
        // A final-component symlink is refused for write, even if it points outside.
        let r = fx.ws.write("rel_secret", b"PWNED", false);
        assert!(matches!(r, Err(WsError::PermissionDenied { .. })), "{r:?}");
        // Walking the root lists the links but never follows them.
        let l = fx.ws.list("", true, 1000).unwrap();
        assert!(
            l.entries
                .iter()
                .all(|e| !e.path.contains("secret/") && !e.path.starts_with("rel/"))
        );
        let s = fx.ws.search("", None, Some("TOP SECRET"), 100).unwrap();
        assert!(s.matches.is_empty(), "{s:?}");
        fx.assert_outside_intact();
    }

    #[test]
    fn workspace_proc_self_root_fails() {
        let fx = Fx::new();
        symlink("/proc/self/root", fx.p("pr")).unwrap();
        symlink("/proc", fx.p("proc")).unwrap();
        for f in [
            "pr/etc/passwd",
            "proc/self/root/etc/passwd",
            "proc/self/cwd",
            "pr",
        ] {
            let r = fx.ws.read(f, 0, 0);
            assert!(is_escape_or_notfound(&r), "{f}: {r:?}");
            assert!(fx.ws.list(f, false, 10).is_err(), "{f}");
        }
        fx.assert_outside_intact();
    }

    #[test]
    fn workspace_symlink_swapped_between_calls() {
        let fx = Fx::new();
        fx.ws.write("dir/file", b"inside", true).unwrap();
        assert_eq!(fx.ws.read("dir/file", 0, 0).unwrap().content, "inside");
        fs::rename(fx.p("dir"), fx.p("dir_old")).unwrap();
        symlink(&fx.out, fx.p("dir")).unwrap();
        let r = fx.ws.write("dir/file", b"PWNED", false);
        assert!(matches!(r, Err(WsError::Escape { .. })), "{r:?}");
        let r = fx.ws.edit("dir/file", "TOP", "PWNED", false);
        assert!(matches!(r, Err(WsError::Escape { .. })), "{r:?}");
        assert!(is_escape_or_notfound(&fx.ws.read("dir/file", 0, 0)));
        fx.assert_outside_intact();
    }

    #[test]
    fn workspace_symlink_swapped_concurrently() {
        let fx = Fx::new();
        fx.ws.write("dir/file", b"inside", true).unwrap();
        symlink(&fx.out, fx.p("alt")).unwrap();
        let ws_dir = fx.ws_dir.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let swapper = std::thread::spawn(move || {
            let root =
                rustix::fs::open(&ws_dir, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
            let mut swaps = 0u32;
            while !stop2.load(Ordering::Relaxed) && swaps < 200_000 {
                // Atomically exchange the real directory and the outside symlink.
                renameat_with(&root, "dir", &root, "alt", RenameFlags::EXCHANGE).unwrap();
                swaps += 1;
            }
            swaps
        });
        let (mut ok, mut refused) = (0, 0);
        for i in 0..3000 {
            let content = format!("v{i}");
            match fx.ws.write("dir/file", content.as_bytes(), false) {
                Ok(()) => ok += 1,
                Err(_) => refused += 1,
            }
            let _ = fx.ws.edit("dir/file", "v", "w", true);
            let _ = fx.ws.delete("dir/file2", false);
            let _ = fx
                .ws
                .read("dir/secret", 0, 0)
                .map(|p| assert!(!p.content.contains("SECRET")));
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert!(swaps > 0 && ok + refused == 3000);
        fx.assert_outside_intact();
    }

    #[test]
    fn workspace_hard_link_refused() {
        let fx = Fx::new();
        fs::hard_link(fx.out.join("secret"), fx.p("hl")).unwrap();
        let r = fx.ws.write("hl", b"PWNED", false);
        assert!(
            matches!(&r, Err(WsError::PermissionDenied { reason, .. }) if reason.contains("hard link")),
            "{r:?}"
        );
        let r = fx.ws.edit("hl", "TOP", "PWNED", false);
        assert!(matches!(r, Err(WsError::PermissionDenied { .. })), "{r:?}");
        // Policy: reading is refused too (the inode may be a file from outside).
        let r = fx.ws.read("hl", 0, 0);
        assert!(matches!(r, Err(WsError::PermissionDenied { .. })), "{r:?}");
        let s = fx.ws.search("", None, Some("TOP"), 10).unwrap();
        assert!(s.matches.is_empty() && s.skipped == 1, "{s:?}");
        // The link itself can be deleted; the outside file survives.
        fx.ws.delete("hl", false).unwrap();
        fx.assert_outside_intact();
    }

    #[test]
    fn workspace_inside_symlinks_work() {
        let fx = Fx::new();
        fx.ws.write("sub/file", b"hello", true).unwrap();
        symlink("sub/file", fx.p("link")).unwrap();
        symlink("sub", fx.p("dlink")).unwrap();
        fs::create_dir(fx.p("other")).unwrap();
        symlink("../sub/file", fx.p("other/up")).unwrap();
        assert_eq!(fx.ws.read("link", 0, 0).unwrap().content, "hello");
        assert_eq!(fx.ws.read("dlink/file", 0, 0).unwrap().content, "hello");
        assert_eq!(fx.ws.read("other/up", 0, 0).unwrap().content, "hello");
        let l = fx.ws.list("dlink", false, 10).unwrap();
        assert_eq!(
            l.entries,
            vec![Entry {
                path: "dlink/file".into(),
                kind: EntryKind::File,
                size: Some(5)
            }]
        );
        // Writing through an intermediate inside symlink is fine; as the final component it is not.
        fx.ws.write("dlink/file", b"bye", false).unwrap();
        assert_eq!(fs::read(fx.p("sub/file")).unwrap(), b"bye");
        assert!(matches!(
            fx.ws.write("link", b"x", false),
            Err(WsError::PermissionDenied { .. })
        ));
    }

    #[test]
    fn workspace_delete_semantics() {
        let fx = Fx::new();
        symlink(&fx.out, fx.p("outlink")).unwrap();
        fx.ws.delete("outlink", false).unwrap();
        assert!(fs::symlink_metadata(fx.p("outlink")).is_err());
        // Recursive delete of a tree containing an outside link removes only the link.
        fx.ws.write("t/a/b.txt", b"b", true).unwrap();
        symlink(&fx.out, fx.p("t/a/escape")).unwrap();
        symlink("../outside", fx.p("t/rel")).unwrap();
        let r = fx.ws.delete("t", false);
        assert!(matches!(r, Err(WsError::IsADirectory { .. })), "{r:?}");
        fx.ws.delete("t", true).unwrap();
        assert!(!fx.p("t").exists());
        assert!(matches!(
            fx.ws.delete("missing", false),
            Err(WsError::NotFound { .. })
        ));
        fx.assert_outside_intact();
    }

    #[test]
    fn workspace_write_atomic_no_temp_left() {
        let fx = Fx::new();
        fx.ws.write("a.txt", b"one two two", false).unwrap();
        fs::set_permissions(
            fx.p("a.txt"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        fx.ws.write("a.txt", b"one two two three", false).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(fx.p("a.txt")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "mode preserved");
        fx.assert_no_tmp();
        assert!(fx.ws.edit("a.txt", "four", "4", false).is_err());
        assert!(fx.ws.edit("a.txt", "two", "2", false).is_err());
        assert_eq!(fs::read(fx.p("a.txt")).unwrap(), b"one two two three");
        fx.assert_no_tmp();
        // Missing parents without create_dirs: NotFound, nothing created.
        assert!(matches!(
            fx.ws.write("x/y/z", b"1", false),
            Err(WsError::NotFound { .. })
        ));
        fx.ws.write("x/y/z", b"1", true).unwrap();
        assert!(matches!(
            fx.ws.write("x/y", b"1", false),
            Err(WsError::IsADirectory { .. })
        ));
        assert!(matches!(
            fx.ws.write("x/y/z/w", b"1", true),
            Err(WsError::NotADirectory { .. })
        ));
        fx.assert_no_tmp();
    }

    #[test]
    fn workspace_edit_cases() {
        let fx = Fx::new();
        fx.ws.write("e.txt", b"a b a b a", false).unwrap();
        assert!(matches!(
            fx.ws.edit("e.txt", "zzz", "y", false),
            Err(WsError::NotFoundText { .. })
        ));
        assert!(matches!(
            fx.ws.edit("e.txt", "a", "y", false),
            Err(WsError::Ambiguous { count: 3, .. })
        ));
        let msg = fx
            .ws
            .edit("e.txt", "a b", "X", false)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("2 times") && msg.contains("replace_all"),
            "{msg}"
        );
        assert_eq!(fx.ws.edit("e.txt", "a", "yy", true).unwrap(), 3);
        assert_eq!(fs::read(fx.p("e.txt")).unwrap(), b"yy b yy b yy");
        assert_eq!(fx.ws.edit("e.txt", "b yy b", "-", false).unwrap(), 1);
        assert_eq!(fs::read(fx.p("e.txt")).unwrap(), b"yy - yy");
        assert!(matches!(
            fx.ws.edit("nope", "a", "b", false),
            Err(WsError::NotFound { .. })
        ));
        // Byte-wise edit works on non-UTF-8 content.
        fs::write(fx.p("bin"), b"\xff\xfeabc\xff").unwrap();
        assert_eq!(fx.ws.edit("bin", "abc", "Z", false).unwrap(), 1);
        assert_eq!(fs::read(fx.p("bin")).unwrap(), b"\xff\xfeZ\xff");
        fx.assert_no_tmp();
    }

    #[test]
    fn workspace_read_paging() {
        let fx = Fx::new();
        // 3 MiB with multi-byte characters straddling page boundaries.
        let mut data = Vec::new();
        let mut i = 0u32;
        while data.len() < 3 * 1024 * 1024 {
            data.extend_from_slice(format!("line {i} é€😀\n").as_bytes());
            i += 1;
        }
        fs::write(fx.p("big"), &data).unwrap();
        let (mut off, mut out, mut pages) = (0u64, String::new(), 0);
        loop {
            let p = fx.ws.read("big", off, 10 * 1024 * 1024).unwrap();
            assert!(!p.lossy);
            assert_eq!(p.total_size, data.len() as u64);
            assert!(p.next_offset - p.offset <= MAX_READ);
            out.push_str(&p.content);
            off = p.next_offset;
            pages += 1;
            assert_eq!(p.eof, off >= data.len() as u64);
            if p.eof {
                break;
            }
        }
        assert!(pages >= 3);
        assert_eq!(out.as_bytes(), &data[..]);
        let p = fx.ws.read("big", data.len() as u64 + 10, 5).unwrap();
        assert!(p.eof && p.content.is_empty());
        fs::write(fx.p("bad"), b"ok\xffok").unwrap();
        let p = fx.ws.read("bad", 0, 0).unwrap();
        assert!(p.lossy && p.eof && p.content == "ok\u{fffd}ok");
        assert!(matches!(
            fx.ws.read("", 0, 0),
            Err(WsError::IsADirectory { .. })
        ));
    }

    #[test]
    fn workspace_search() {
        let fx = Fx::new();
        fx.ws.write("a.txt", b"alpha\nneedle one\n", false).unwrap();
        fx.ws.write("d/b.txt", b"x\ny\nneedle two\n", true).unwrap();
        fx.ws.write("d/e/c.rs", b"needle three\n", true).unwrap();
        fs::write(fx.p("d/bin.txt"), b"needle\0binary").unwrap();
        fs::write(fx.p("d/big.txt"), vec![b'n'; MAX_SEARCH_FILE as usize + 1]).unwrap();
        symlink("d", fx.p("dl")).unwrap();
        let g = fx.ws.search("", Some("**/*.txt"), None, 100).unwrap();
        let paths: Vec<_> = g.matches.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths, vec!["a.txt", "d/b.txt", "d/big.txt", "d/bin.txt"]);
        let g = fx.ws.search("d", Some("e/*.rs"), None, 100).unwrap();
        assert_eq!(g.matches[0].path, "d/e/c.rs");
        let t = fx
            .ws
            .search("", Some("*.txt"), Some("needle"), 100)
            .unwrap();
        assert_eq!(
            t.matches,
            vec![
                Match {
                    path: "a.txt".into(),
                    line: Some(2),
                    text: Some("needle one".into())
                },
                Match {
                    path: "d/b.txt".into(),
                    line: Some(3),
                    text: Some("needle two".into())
                },
            ]
        );
        assert_eq!(t.skipped, 2, "binary and oversized skipped");
        let t = fx.ws.search("", None, Some("needle"), 2).unwrap();
        assert!(t.truncated && t.matches.len() == 2);
        let t = fx.ws.search("", None, Some("needle"), 100).unwrap();
        assert_eq!(
            t.matches.len(),
            3,
            "symlinked dir not searched twice: {t:?}"
        );
    }

    #[test]
    fn workspace_list() {
        let fx = Fx::new();
        for f in ["a/1", "a/2", "a/b/3", "c"] {
            fx.ws.write(f, b"xyz", true).unwrap();
        }
        symlink("a", fx.p("alink")).unwrap();
        let l = fx.ws.list("", true, 100).unwrap();
        let paths: Vec<_> = l
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("a", EntryKind::Dir),
                ("alink", EntryKind::Symlink),
                ("c", EntryKind::File),
                ("a/1", EntryKind::File),
                ("a/2", EntryKind::File),
                ("a/b", EntryKind::Dir),
                ("a/b/3", EntryKind::File),
            ]
        );
        assert!(!l.truncated);
        let l = fx.ws.list("", true, 4).unwrap();
        assert!(l.truncated && l.entries.len() == 4);
        let l = fx.ws.list("a", false, 100).unwrap();
        assert_eq!(l.entries.len(), 3);
        assert_eq!(
            l.entries[0],
            Entry {
                path: "a/1".into(),
                kind: EntryKind::File,
                size: Some(3)
            }
        );
        assert!(matches!(
            fx.ws.list("c", false, 10),
            Err(WsError::NotADirectory { .. })
        ));
    }

    #[test]
    fn workspace_rename_and_mkdir() {
        let fx = Fx::new();
        fx.ws.write("f", b"1", false).unwrap();
        fx.ws.write("g", b"2", false).unwrap();
        assert!(matches!(
            fx.ws.rename("f", "g", false),
            Err(WsError::AlreadyExists { .. })
        ));
        fx.ws.rename("f", "g", true).unwrap();
        assert_eq!(fs::read(fx.p("g")).unwrap(), b"1");
        assert!(matches!(
            fx.ws.rename("nope", "h", false),
            Err(WsError::NotFound { .. })
        ));
        fx.ws.mkdir("m/n/o", true).unwrap();
        fx.ws.mkdir("m/n/o", true).unwrap();
        assert!(matches!(
            fx.ws.mkdir("m/n/o", false),
            Err(WsError::AlreadyExists { .. })
        ));
        assert!(matches!(
            fx.ws.mkdir("p/q", false),
            Err(WsError::NotFound { .. })
        ));
        assert!(matches!(
            fx.ws.mkdir("g", true),
            Err(WsError::AlreadyExists { .. })
        ));
        assert!(matches!(
            fx.ws.rename("m", "m/n/x", false),
            Err(WsError::InvalidPath { .. })
        ));
        // Moving an outside symlink moves the link only.
        symlink(&fx.out, fx.p("ol")).unwrap();
        fx.ws.rename("ol", "ol2", false).unwrap();
        assert!(matches!(
            fx.ws.read("ol2/secret", 0, 0),
            Err(WsError::Escape { .. })
        ));
        fx.assert_outside_intact();
    }

    #[test]
    fn workspace_glob_matcher() {
        let g = Glob::new("**/*.rs");
        assert!(g.matches("a.rs") && g.matches("x/y/a.rs") && !g.matches("a.rs.txt"));
        let g = Glob::new("src/**/mod.rs");
        assert!(g.matches("src/mod.rs") && g.matches("src/a/b/mod.rs") && !g.matches("lib/mod.rs"));
        let g = Glob::new("src/*.rs");
        assert!(g.matches("src/a.rs") && !g.matches("src/a/b.rs"));
        let g = Glob::new("*.txt");
        assert!(g.matches("deep/dir/x.txt") && !g.matches("x.txt/y"));
        let g = Glob::new("f?le[0-9][!a].[ch]");
        assert!(
            g.matches("file1b.c")
                && g.matches("fXle9z.h")
                && !g.matches("file1a.c")
                && !g.matches("file12.rs")
        );
        assert!(Glob::new("a*b*c").matches("aXXbYYc") && !Glob::new("a*b*c").matches("aXXbYY"));
        assert!(Glob::new("[]x]").matches("]") && Glob::new("[abc").matches("[abc"));
        // Pathological pattern stays fast.
        let p = "*a*a*a*a*a*a*a*a*b";
        assert!(!Glob::new(p).matches(&"a".repeat(200)));
        let deep = "**/".repeat(30) + "z";
        assert!(!Glob::new(&deep).matches(&"a/".repeat(100)));
    }
}
