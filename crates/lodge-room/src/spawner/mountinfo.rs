//! Reads `/proc/self/mountinfo`: where cgroup hierarchies are mounted and whether a workspace is
//! already a mount point. It only parses; it never mounts or changes anything.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo, with the fields the spawner uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The mounted filesystem's device, `major:minor` (the same in every namespace).
    pub device: String,
    /// The path inside the mounted filesystem that is mounted here (`/` for a whole fs).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// The mounts of this process's mount namespace.
pub(crate) fn read() -> io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Devices (`major:minor`) mounted at `mount_point` in any mount namespace other than this
/// process's: a live room holds its workspace volume at `/workspace` in its sandbox's
/// namespace even after the host's mount is gone. (Only that path counts: every namespace
/// made while a volume was mounted holds a copy of it at its host path, bwrap's outer one
/// included, for as long as it lives.) Processes that vanish or cannot be read while scanning
/// are skipped.
pub(crate) fn devices_at_in_other_namespaces(
    mount_point: &Path,
) -> io::Result<std::collections::HashSet<String>> {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/self/ns/mnt")?.ino();
    let mut seen = std::collections::HashSet::from([own]);
    let mut devices = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let dir = entry.path();
        let Ok(ns) = std::fs::metadata(dir.join("ns/mnt")) else {
            continue;
        };
        if !seen.insert(ns.ino()) {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("mountinfo")) {
            devices.extend(
                parse(&text)
                    .into_iter()
                    .filter(|m| m.mount_point == mount_point)
                    .map(|m| m.device),
            );
        }
    }
    Ok(devices)
}

/// Parses mountinfo text; malformed lines are skipped.
pub(crate) fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    // id parent major:minor root mount_point options [optional...] - fstype source super_options
    let (head, tail) = line.split_once(" - ")?;
    let mut head = head.split(' ');
    let device = head.nth(2)?;
    let root = head.next()?;
    let mount_point = head.next()?;
    let mut tail = tail.split(' ');
    let fstype = tail.next()?;
    let source = tail.next().unwrap_or("");
    let super_options = tail.next().unwrap_or("");
    Some(Mount {
        device: device.to_owned(),
        root: unescape(root),
        mount_point: unescape(mount_point),
        fstype: fstype.to_owned(),
        source: unescape(source).to_string_lossy().into_owned(),
        super_options: super_options.to_owned(),
    })
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` `\`).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Is `path` (absolute, canonical) a mount point in this namespace?
pub(crate) fn is_mount_point(mounts: &[Mount], path: &Path) -> bool {
    mounts.iter().any(|m| m.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory
36 22 0:31 / /sys/fs/cgroup/cpu,cpuacct rw shared:13 - cgroup cgroup rw,cpu,cpuacct
37 22 0:32 / /sys/fs/cgroup/unified rw shared:14 - cgroup2 cgroup2 rw,nsdelegate
90 22 7:0 / /data/work\\040spaces/a\\134b rw,nosuid,nodev - ext4 /dev/loop0 rw
garbage line
";

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 5);
        assert_eq!(m[1].mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(m[1].fstype, "cgroup");
        assert_eq!(m[1].super_options, "rw,memory");
        assert_eq!(m[3].fstype, "cgroup2");
        assert_eq!(m[4].mount_point, Path::new("/data/work spaces/a\\b"));
        assert_eq!(m[4].source, "/dev/loop0");
        assert_eq!(m[4].device, "7:0");
        assert_eq!(m[0].device, "259:1");
        assert!(is_mount_point(&m, Path::new("/data/work spaces/a\\b")));
        assert!(!is_mount_point(&m, Path::new("/data")));
    }

    #[test]
    fn reads_own_mountinfo() {
        let m = read().expect("read /proc/self/mountinfo");
        assert!(m.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
