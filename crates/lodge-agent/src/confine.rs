//! The agent's second wall, applied to itself before it serves (and so inherited by every
//! command): `no_new_privs`, a Landlock ruleset (filesystem, TCP, signal/socket scopes) and a
//! seccomp filter refusing kernel-level escape hatches. It must run before any thread exists.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    path_beneath_rules,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::AgentConfig;

/// The Landlock ABI whose rights we ask for and have tested; newer kernels are not asked for
/// more until tested, older ones get what they support (best effort).
const LANDLOCK_ABI: ABI = ABI::V7;

/// System trees the room may read and execute from (`/run/lodge` holds the agent binary).
const READ_EXEC: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/etc",
    "/opt",
    "/run/lodge",
];
/// Read-only views of the kernel.
const READ_ONLY: &[&str] = &["/proc", "/sys"];
/// Devices the room may read and write.
const DEVICES_RW: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"];
/// Devices the room may read.
const DEVICES_READ: &[&str] = &["/dev/urandom", "/dev/random"];

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// Syscalls refused with EPERM: mounts and namespaces, kernel modules and images, tracing and
/// other processes' memory, keyrings, raw I/O, io_uring (which bypasses seccomp), and other
/// admin interfaces.
const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_syslog,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_lookup_dcookie,
    libc::SYS_fanotify_init,
];

/// `clone` flags that would create a namespace; `clone` with any of them is refused.
const CLONE_NAMESPACES: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

/// Socket families a room may create: local sockets, IPv4/IPv6 (Landlock and the network
/// namespace decide where they may go) and netlink. Every other family is refused with
/// EAFNOSUPPORT: families such as AF_VSOCK ignore network namespaces (a `network = "none"` room
/// could otherwise talk to the hypervisor), and rarely used ones (AF_ALG, AF_PACKET, bluetooth,
/// XDP, …) are kernel attack surface no room needs.
const SOCKET_FAMILIES: &[libc::c_int] = &[
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];
/// The one netlink protocol a room needs: NETLINK_ROUTE, which glibc's getaddrinfo reads its
/// interface addresses from. Other netlink protocols (audit, netfilter, uevents, …) are refused.
const NETLINK_PROTOCOLS: &[libc::c_int] = &[libc::NETLINK_ROUTE];

/// Why confinement could not be applied. The agent must not serve after any of these.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("cannot apply the Landlock ruleset: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("cannot build the seccomp filter: {0}")]
    SeccompBuild(#[from] seccompiler::BackendError),
    #[error("cannot install the seccomp filter: {0}")]
    Seccomp(#[from] seccompiler::Error),
}

/// What was enforced, for the agent's startup line on stderr.
#[derive(Debug)]
pub struct ConfineReport {
    landlock: RestrictionStatus,
    network_denied: bool,
    seccomp_denied: usize,
}

impl ConfineReport {
    /// Whether Landlock enforced nothing (kernel without Landlock): the room is degraded.
    pub fn landlock_missing(&self) -> bool {
        self.landlock.ruleset == RulesetStatus::NotEnforced
    }
}

impl fmt::Display for ConfineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ruleset = match self.landlock.ruleset {
            RulesetStatus::FullyEnforced => "fully enforced",
            RulesetStatus::PartiallyEnforced => "partially enforced (older kernel)",
            RulesetStatus::NotEnforced => "NOT enforced (kernel without Landlock)",
        };
        let kernel = match self.landlock.landlock {
            LandlockStatus::Available { effective_abi, .. } => format!("ABI {effective_abi}"),
            LandlockStatus::NotEnabled => "not enabled".to_string(),
            LandlockStatus::NotImplemented => "not built in".to_string(),
        };
        let network = if self.network_denied {
            "TCP bind/connect denied"
        } else {
            "network allowed"
        };
        write!(
            f,
            "confinement: landlock {ruleset} (kernel: {kernel}; asked for ABI {LANDLOCK_ABI}, \
             {network}, signal and abstract-socket scopes); seccomp: {} syscalls refused, \
             namespace clones refused, clone3 -> ENOSYS, socket families other than unix, inet, inet6 \
             and netlink route refused; no_new_privs: {}",
            self.seccomp_denied, self.landlock.no_new_privs
        )
    }
}

/// Applies `no_new_privs`, Landlock and seccomp to the calling thread (the whole process when
/// called before any other thread exists). Landlock missing from the kernel is not an error
/// (see [`ConfineReport::landlock_missing`]); everything else is.
pub fn apply(cfg: &AgentConfig) -> Result<ConfineReport, ConfineError> {
    rustix::thread::set_no_new_privs(true)
        .map_err(|e| ConfineError::NoNewPrivs(std::io::Error::from(e)))?;
    let landlock = landlock(cfg)?;
    let filters = seccomp_filters()?;
    for filter in &filters {
        seccompiler::apply_filter(filter)?;
    }
    Ok(ConfineReport {
        landlock,
        network_denied: !cfg.network,
        seccomp_denied: DENIED.len(),
    })
}

fn own_executable() -> Option<PathBuf> {
    std::env::current_exe().ok()
}

fn landlock(cfg: &AgentConfig) -> Result<RestrictionStatus, landlock::RulesetError> {
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let read_exec = AccessFs::from_read(LANDLOCK_ABI);
    let read_only: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .scope(Scope::from_all(ABI::V6))?;
    if !cfg.network {
        ruleset = ruleset.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?;
    }
    let exe = own_executable();
    let writable: [&Path; 2] = [&cfg.workspace, &cfg.tmp];
    ruleset
        .create()?
        .add_rules(path_beneath_rules(READ_EXEC, read_exec))?
        .add_rules(path_beneath_rules(exe.iter(), read_exec))?
        .add_rules(path_beneath_rules(&cfg.read_only, read_exec))?
        .add_rules(path_beneath_rules(READ_ONLY, read_only))?
        .add_rules(path_beneath_rules(writable, all))?
        .add_rules(path_beneath_rules(DEVICES_RW, all))?
        .add_rules(path_beneath_rules(DEVICES_READ, AccessFs::ReadFile))?
        .restrict_self()
}

/// Three filters (a filter has one match action): EPERM for [`DENIED`] and namespace clones,
/// ENOSYS for `clone3` (its flags live in memory a filter cannot read; ENOSYS makes libc fall
/// back to `clone`, which the first filter can check), and EAFNOSUPPORT for sockets of a family
/// outside [`SOCKET_FAMILIES`] (the errno programs expect for a family the kernel lacks, so
/// they fall back instead of failing hard).
fn seccomp_filters() -> Result<Vec<BpfProgram>, seccompiler::BackendError> {
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    let namespace_rules = CLONE_NAMESPACES
        .iter()
        .map(|flag| {
            let flag = u64::from(flag.unsigned_abs());
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    denied.insert(libc::SYS_clone, namespace_rules);
    let eperm = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )?;
    Ok(vec![
        eperm.try_into()?,
        clone3.try_into()?,
        socket_families()?.try_into()?,
    ])
}

/// `socket` and `socketpair` whose family (argument 0) is none of [`SOCKET_FAMILIES`], and
/// netlink sockets whose protocol (argument 2) is none of [`NETLINK_PROTOCOLS`].
fn socket_families() -> Result<SeccompFilter, seccompiler::BackendError> {
    let dword = |arg: u8, op: SeccompCmpOp, value: libc::c_int| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value as u32 as u64)
    };
    let none_of = |arg: u8, values: &[libc::c_int]| -> Result<Vec<SeccompCondition>, _> {
        values
            .iter()
            .map(|v| dword(arg, SeccompCmpOp::Ne, *v))
            .collect()
    };
    let other_family = SeccompRule::new(none_of(0, SOCKET_FAMILIES)?)?;
    let mut other_netlink = vec![dword(0, SeccompCmpOp::Eq, libc::AF_NETLINK)?];
    other_netlink.extend(none_of(2, NETLINK_PROTOCOLS)?);
    let other_netlink = SeccompRule::new(other_netlink)?;
    SeccompFilter::new(
        BTreeMap::from([
            (libc::SYS_socket, vec![other_family.clone(), other_netlink]),
            (libc::SYS_socketpair, vec![other_family]),
        ]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
        ARCH,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::probe;
    use rustix::io::Errno;
    use std::io::ErrorKind as IoKind;
    use std::process::Command;

    /// Set in the re-executed test binary: the directory to confine to.
    const CHILD_ENV: &str = "LODGE_TEST_CONFINE_DIR";
    /// Printed by the child when every check ran, so the parent knows the filter matched.
    const PASSED: &str = "CONFINE-CHECKS-PASSED";
    const TEST_NAME: &str = "confine::tests::confinement_holds_in_a_child_process";

    #[test]
    fn filters_compile_for_this_arch() {
        let filters = seccomp_filters().unwrap();
        assert_eq!(filters.len(), 3);
        assert!(filters.iter().all(|f| !f.is_empty()));
    }

    #[test]
    fn confinement_holds_in_a_child_process() {
        if let Some(dir) = std::env::var_os(CHILD_ENV) {
            confined_checks(Path::new(&dir));
            println!("{PASSED}");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        for sub in ["ws", "tmp", "outside", "software"] {
            std::fs::create_dir(base.path().join(sub)).unwrap();
        }
        std::fs::write(base.path().join("outside/secret"), "s").unwrap();
        let tool = base.path().join("software/tool");
        std::fs::write(&tool, "#!/bin/sh\necho tool-ran\n").unwrap();
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, base.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
        assert!(
            stdout.contains(PASSED),
            "checks did not run:\n{stdout}\n{stderr}"
        );
    }

    fn confined_checks(base: &Path) {
        let cfg = AgentConfig {
            workspace: base.join("ws"),
            tmp: base.join("tmp"),
            confine: true,
            network: false,
            read_only: vec![base.join("software")],
        };
        let report = apply(&cfg).unwrap();
        assert!(!report.landlock_missing(), "{report}");
        eprintln!("{report}");
        let denied = |r: std::io::Result<()>, what: &str| match r {
            Err(e) => assert_eq!(e.kind(), IoKind::PermissionDenied, "{what}: {e}"),
            Ok(()) => panic!("{what}: allowed"),
        };

        // Files: inside the workspace and tmp yes, outside no (even as root).
        std::fs::write(base.join("ws/inside"), "ok").unwrap();
        assert_eq!(
            std::fs::read_to_string(base.join("ws/inside")).unwrap(),
            "ok"
        );
        std::fs::write(base.join("tmp/scratch"), "ok").unwrap();
        denied(
            std::fs::read(base.join("outside/secret")).map(drop),
            "read outside",
        );
        denied(
            std::fs::write(base.join("outside/new"), "x"),
            "write outside",
        );
        denied(
            std::fs::write(base.join("escape"), "x"),
            "write beside the workspace",
        );
        denied(std::fs::read_dir("/root").map(drop), "list /root");
        // System trees stay usable: commands can run.
        let status = Command::new("/bin/sh")
            .args(["-c", "true"])
            .status()
            .unwrap();
        assert!(status.success());
        // Read-only software trees: readable and executable, not writable.
        let out = Command::new(base.join("software/tool")).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "tool-ran\n");
        denied(
            std::fs::write(base.join("software/new"), "x"),
            "write into a read-only path",
        );

        // Network: TCP bind and connect refused.
        denied(
            std::net::TcpListener::bind("127.0.0.1:0").map(drop),
            "tcp bind",
        );
        denied(
            std::net::TcpStream::connect("127.0.0.1:9").map(drop),
            "tcp connect",
        );

        // Signals cannot leave the domain: the parent test process is out of reach.
        let parent = rustix::process::getppid().unwrap();
        assert_eq!(
            rustix::process::test_kill_process(parent),
            Err(Errno::PERM),
            "signal to the parent"
        );

        // seccomp.
        assert_eq!(probe::unshare_user(), Err(Errno::PERM), "unshare(NEWUSER)");
        assert_eq!(
            probe::mount_tmpfs(c"/nonexistent-lodge-mount-target"),
            Err(Errno::PERM),
            "mount"
        );
        assert_eq!(probe::clone3_empty(), Err(Errno::NOSYS), "clone3");
        assert_eq!(
            probe::clone_newuser_invalid(),
            Err(Errno::PERM),
            "clone(NEWUSER)"
        );

        // Socket families: what rooms use still works; AF_VSOCK (which ignores network
        // namespaces), AF_PACKET, AF_ALG and netlink beyond NETLINK_ROUTE do not.
        use rustix::net::{AddressFamily, SocketFlags, SocketType, netlink, socket, socketpair};
        socket(AddressFamily::UNIX, SocketType::STREAM, None).expect("unix socket");
        socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::empty(),
            None,
        )
        .expect("unix socketpair");
        socket(AddressFamily::INET, SocketType::DGRAM, None).expect("inet socket");
        socket(AddressFamily::INET6, SocketType::STREAM, None).expect("inet6 socket");
        socket(AddressFamily::NETLINK, SocketType::RAW, None).expect("netlink route socket");
        for (family, kind, protocol, what) in [
            (AddressFamily::VSOCK, SocketType::STREAM, None, "vsock"),
            (AddressFamily::VSOCK, SocketType::DGRAM, None, "vsock dgram"),
            (AddressFamily::PACKET, SocketType::RAW, None, "packet"),
            (
                AddressFamily::from_raw(libc::AF_ALG as _),
                SocketType::SEQPACKET,
                None,
                "alg",
            ),
            (
                AddressFamily::NETLINK,
                SocketType::RAW,
                Some(netlink::AUDIT),
                "netlink audit",
            ),
            (
                AddressFamily::NETLINK,
                SocketType::RAW,
                Some(netlink::KOBJECT_UEVENT),
                "netlink uevent",
            ),
        ] {
            assert_eq!(
                socket(family, kind, protocol).map(drop),
                Err(Errno::AFNOSUPPORT),
                "socket({what})"
            );
        }
        assert_eq!(
            socketpair(
                AddressFamily::VSOCK,
                SocketType::STREAM,
                SocketFlags::empty(),
                None
            )
            .map(drop),
            Err(Errno::AFNOSUPPORT),
            "socketpair(vsock)"
        );
    }
}
