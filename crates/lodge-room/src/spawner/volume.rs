//! Disk quota for a workspace: an ext4 image in the room's state directory, loop-mounted
//! (nosuid, nodev) on the workspace path. It never mounts over a workspace that already holds
//! files (it warns instead); a quota that should apply but cannot be mounted fails the spawn,
//! so a room never runs unlimited by accident.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::SpawnError;
use super::mountinfo;

/// Sizing passes: mkfs overhead is not linear (journal and inode tables step with size), so the
/// image is made, measured and remade until usable space is close to the quota.
const SIZING_PASSES: usize = 3;
const MIB: u64 = 1 << 20;

/// The image file of a room whose state directory is `state_dir`.
pub(crate) fn image_path(state_dir: &Path) -> PathBuf {
    state_dir.join("workspace.img")
}

/// What [`prepare`] did to a workspace.
#[derive(Debug)]
pub(crate) enum Quota {
    /// The volume is mounted; the guard unmounts it when the room is done with it.
    Mounted(Mounted),
    /// No quota applies (an older workspace holds files): the warning to show.
    NotApplied(String),
}

/// A workspace volume mounted for one room. Dropping it unmounts the volume lazily, so a room
/// that stops, and a start that fails at any later step, leaves no mount or loop device behind
/// (`mount -o loop` sets autoclear: the loop device goes with its last mount).
#[derive(Debug)]
pub(crate) struct Mounted {
    workspace: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.workspace) {
            tracing::warn!(error = %e, "cannot unmount a room's workspace volume");
        }
    }
}

/// Makes `workspace` a mounted ext4 volume of about `disk_bytes` usable bytes owned by
/// `owner`. Returns a warning when an older workspace keeps no quota; fails when the volume
/// cannot be made or mounted. Needs root.
pub(crate) async fn prepare(
    workspace: &Path,
    image: &Path,
    disk_bytes: u64,
    owner: (u32, u32),
) -> Result<Quota, SpawnError> {
    let ws_err = |error: io::Error| SpawnError::Workspace {
        path: workspace.to_path_buf(),
        error,
    };
    match fs::symlink_metadata(workspace) {
        Ok(meta) if !meta.is_dir() => {
            return Err(ws_err(io::Error::other("exists and is not a directory")));
        }
        Ok(_) => {
            let canonical = fs::canonicalize(workspace).map_err(ws_err)?;
            if is_mounted(&canonical).map_err(ws_err)? {
                // Left by a hub that died before its sweep ran; this room takes it over.
                return Ok(Quota::Mounted(Mounted {
                    workspace: workspace.to_path_buf(),
                }));
            }
            if fs::read_dir(workspace).map_err(ws_err)?.next().is_some() {
                return Ok(Quota::NotApplied(format!(
                    "disk quota not applied: workspace predates the quota ({} holds files; move them out, delete {} and restart the room to apply it)",
                    workspace.display(),
                    workspace.display()
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(workspace)
                .map_err(ws_err)?;
        }
        Err(e) => return Err(ws_err(e)),
    }

    let volume_err = |detail: String| SpawnError::Volume {
        path: image.to_path_buf(),
        detail: format!(
            "{detail}; set the profile's disk = \"unlimited\" to run rooms without a quota"
        ),
    };
    if image.exists() {
        mount(image, workspace).await.map_err(volume_err)?;
    } else {
        // Size the image by reading each candidate's superblock, so the volume is mounted once
        // (mounting and unmounting to measure raced the kernel's loop-device teardown).
        let mut size = first_guess(disk_bytes);
        for pass in 0..SIZING_PASSES {
            make_image(image, size, owner).await?;
            let usable = image_usable_bytes(image)
                .await
                .map_err(|detail| SpawnError::Volume {
                    path: image.to_path_buf(),
                    detail,
                })?;
            let tolerance = (disk_bytes / 50).max(MIB / 2);
            if usable.abs_diff(disk_bytes) <= tolerance || pass + 1 == SIZING_PASSES {
                break;
            }
            size = next_guess(size, usable, disk_bytes);
        }
        if let Err(why) = mount(image, workspace).await {
            let _ = fs::remove_file(image);
            return Err(volume_err(why));
        }
        // mkfs leaves lost+found; the workspace should start empty.
        let _ = fs::remove_dir(workspace.join("lost+found"));
    }
    // From here on a failure unmounts again.
    let mounted = Mounted {
        workspace: workspace.to_path_buf(),
    };
    // The volume's root is the workspace: the room's uid, nobody else.
    rustix::fs::chown(
        workspace,
        Some(rustix::fs::Uid::from_raw(owner.0)),
        Some(rustix::fs::Gid::from_raw(owner.1)),
    )
    .map_err(|e| ws_err(e.into()))?;
    fs::set_permissions(workspace, fs::Permissions::from_mode(0o700)).map_err(ws_err)?;
    Ok(Quota::Mounted(mounted))
}

fn first_guess(disk: u64) -> u64 {
    round_up(disk + disk / 10 + MIB, MIB)
}

fn next_guess(size: u64, usable: u64, disk: u64) -> u64 {
    let want = size as i128 + disk as i128 - usable as i128;
    round_up(want.max(4 * MIB as i128) as u64, 64 * 1024)
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

async fn make_image(image: &Path, size: u64, owner: (u32, u32)) -> Result<(), SpawnError> {
    let vol_err = |detail: String| SpawnError::Volume {
        path: image.to_path_buf(),
        detail,
    };
    // A sparse file: only written blocks use disk.
    let file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(image)
        .map_err(|e| vol_err(format!("create: {e}")))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| file.set_len(size))
        .map_err(|e| vol_err(format!("size to {size} bytes: {e}")))?;
    drop(file);
    let mkfs = find_tool("mkfs.ext4")
        .ok_or_else(|| vol_err("mkfs.ext4 not found; install e2fsprogs".to_owned()))?;
    let out = tokio::process::Command::new(&mkfs)
        .args(["-q", "-F", "-m", "0", "-E"])
        .arg(format!("root_owner={}:{},nodiscard", owner.0, owner.1))
        .arg(image)
        .env_clear()
        .output()
        .await
        .map_err(|e| vol_err(format!("run {}: {e}", mkfs.display())))?;
    if !out.status.success() {
        let _ = fs::remove_file(image);
        return Err(vol_err(format!(
            "mkfs.ext4 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

async fn mount(image: &Path, workspace: &Path) -> Result<(), String> {
    let options = OsStr::new("-o");
    let flags = OsStr::new("loop,nosuid,nodev");
    run_tool(
        "mount",
        &[options, flags, image.as_os_str(), workspace.as_os_str()],
    )
    .await
}

/// Bytes a fresh ext4 image will offer once mounted (`statvfs` `f_bavail`): its free blocks
/// less the kernel's reserve of min(2 %, 4096) blocks, read from the superblock by dumpe2fs.
async fn image_usable_bytes(image: &Path) -> Result<u64, String> {
    let tool = find_tool("dumpe2fs").ok_or("dumpe2fs not found; install e2fsprogs")?;
    let out = tokio::process::Command::new(&tool)
        .arg("-h")
        .arg(image)
        .env_clear()
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    match (
        field("Block count"),
        field("Free blocks"),
        field("Block size"),
    ) {
        (Some(count), Some(free), Some(block)) => {
            let reserve = (count / 50).min(4096);
            Ok(free.saturating_sub(reserve) * block)
        }
        _ => Err(format!(
            "cannot read the superblock of {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Runs mount(8) or umount(8) with a clean environment; the error quotes its stderr.
async fn run_tool(name: &str, args: &[&OsStr]) -> Result<(), String> {
    let tool = find_tool(name).ok_or_else(|| format!("{name}(8) not found; install mount"))?;
    let out = tokio::process::Command::new(&tool)
        .args(args)
        .env_clear()
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    tool_result(name, args, &out)
}

/// Is `canonical` a mount point in the hub's mount namespace?
fn is_mounted(canonical: &Path) -> io::Result<bool> {
    Ok(mountinfo::is_mount_point(&mountinfo::read()?, canonical))
}

/// Lazily unmounts a workspace volume (for hub shutdown and `user remove --purge`). Returns
/// whether something was mounted there. Rooms using it must be stopped first; a lazy unmount
/// lets the loop device go once the last user is gone.
pub fn unmount(workspace: &Path) -> Result<bool, SpawnError> {
    let ws_err = |error: io::Error| SpawnError::Workspace {
        path: workspace.to_path_buf(),
        error,
    };
    let canonical = match fs::canonicalize(workspace) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ws_err(e)),
    };
    if !is_mounted(&canonical).map_err(ws_err)? {
        return Ok(false);
    }
    run_tool_blocking("umount", &[OsStr::new("-l"), canonical.as_os_str()])
        .map_err(|why| ws_err(io::Error::other(why)))?;
    Ok(true)
}

/// [`run_tool`] for callers without a runtime (Drop, the start-up sweep): the tools it runs
/// (umount -l, losetup -d) return at once.
fn run_tool_blocking(name: &str, args: &[&OsStr]) -> Result<(), String> {
    let tool = find_tool(name).ok_or_else(|| format!("{name}(8) not found; install mount"))?;
    let out = std::process::Command::new(&tool)
        .args(args)
        .env_clear()
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    tool_result(name, args, &out)
}

/// `Ok` when the tool succeeded, else an error quoting its stderr.
fn tool_result(name: &str, args: &[&OsStr], out: &std::process::Output) -> Result<(), String> {
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{name} {} failed: {}",
        args.last()
            .map_or_else(String::new, |a| a.to_string_lossy().into_owned()),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// A loop device and the file behind it, from `/sys/block/loop*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoopDevice {
    pub device: PathBuf,
    /// `major:minor`, as mountinfo names it.
    pub number: String,
    pub backing_file: PathBuf,
}

/// Attached loop devices whose backing file lies below `dir`.
pub(crate) fn loop_devices_below(dir: &Path) -> Vec<LoopDevice> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out: Vec<LoopDevice> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| {
            let sys = e.path();
            let backing = fs::read_to_string(sys.join("loop/backing_file")).ok()?;
            // The kernel appends " (deleted)" when the file is gone.
            let backing = PathBuf::from(backing.trim_end().trim_end_matches(" (deleted)"));
            let number = fs::read_to_string(sys.join("dev")).ok()?.trim().to_owned();
            backing.starts_with(dir).then(|| LoopDevice {
                device: Path::new("/dev").join(e.file_name()),
                number,
                backing_file: backing,
            })
        })
        .collect();
    out.sort_by(|a, b| a.device.cmp(&b.device));
    out
}

/// Detaches a loop device that no mount uses any more (`losetup -d`).
pub(crate) fn detach(device: &Path) -> Result<(), String> {
    run_tool_blocking("losetup", &[OsStr::new("-d"), device.as_os_str()])
}

/// Finds a system tool in PATH or the usual sbin/bin directories (a hub started by systemd or
/// cron may have a PATH without sbin).
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(OsStr::new(name)))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_guesses_converge_towards_the_quota() {
        assert_eq!(first_guess(16 * MIB), 19 * MIB);
        // A pass that came out 2 MiB short grows the image by 2 MiB.
        assert_eq!(next_guess(19 * MIB, 14 * MIB, 16 * MIB), 21 * MIB);
        // One that came out long shrinks it.
        assert_eq!(next_guess(110 * MIB, 104 * MIB, 100 * MIB), 106 * MIB);
        assert_eq!(next_guess(5 * MIB, 100 * MIB, 1), 4 * MIB);
    }

    #[test]
    fn finds_tools() {
        assert!(
            find_tool("mkfs.ext4").is_some(),
            "mkfs.ext4 missing: install e2fsprogs"
        );
        assert!(find_tool("mount").is_some());
        assert!(find_tool("no-such-tool-lodge").is_none());
    }
}
