//! Spawner tests against the real kernel: bubblewrap, cgroups, loop mounts and uid switching.
//! They need root (as in CI) and say so instead of skipping. In place of the agent the rooms run
//! `/bin/sh -c SCRIPT`, through the exact same sandbox builder, so that each test decides what
//! runs inside; the agent in a real room is tested end to end in crates/lodge/tests.

use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::*;
use crate::spawner::Limits;
use crate::spawner::cgroup::Version;
use crate::spawner::mountinfo;

const UID_BASE: u32 = 200_000;
const MIB: u64 = 1 << 20;

/// A spawner whose own DATA_DIR is never used: these tests spawn from a full [`RoomSpec`].
fn spawner() -> LocalSpawner {
    LocalSpawner::new("/nonexistent/lodge-data", "/bin/sh")
}

fn assert_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the spawner tests need root (cgroups, loop mounts, per-room uids); run them as root, as CI does"
    );
}

/// A DATA_DIR (0700, root) in a fresh /tmp directory with one user's workspace and state dir.
/// Dropping it kills and removes the user's cgroup and unmounts the workspace, even when the
/// test failed.
struct Fixture {
    _root: tempfile::TempDir,
    data: PathBuf,
    spec: RoomSpec,
}

impl Fixture {
    fn new(tag: &str, user_id: i64) -> Fixture {
        assert_root();
        let root = tempfile::Builder::new()
            .prefix("lodge-spawner-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let data = root.path().join("data");
        fs::create_dir(&data).expect("data dir");
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).expect("chmod data");
        let user = format!("t{tag}{}", std::process::id() % 100_000);
        let spec = RoomSpec {
            user: user.clone(),
            instance: "test".into(),
            user_id,
            workspace: data.join("workspaces").join(&user),
            state_dir: data.join("rooms").join(&user),
            agent_exe: PathBuf::from("/bin/sh"),
            isolation: Isolation::Bubblewrap,
            limits: Limits {
                memory_bytes: None,
                cpus: None,
                pids: None,
                disk_bytes: None,
                tmp_bytes: None,
                open_files: 1024,
                network: Network::None,
            },
            uid_base: UID_BASE,
            stop_grace: Duration::from_secs(1),
            read_only_paths: Vec::new(),
        };
        Fixture {
            _root: root,
            data,
            spec,
        }
    }

    fn room_uid(&self) -> u32 {
        UID_BASE + self.spec.user_id as u32
    }

    async fn spawn(&self, script: &str) -> RoomProcess {
        spawner()
            .with_agent_args(["-c", script])
            .spawn(&self.spec)
            .await
            .unwrap_or_else(|e| panic!("spawn failed: {e}"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(layout) = cgroup::detect() {
            RoomCgroup::for_user(&layout, &self.spec.room_id()).remove_blocking();
        }
        let _ = volume::unmount(&self.spec.workspace);
    }
}

/// Reads stdout and stderr to the end and waits for the room's outer process.
async fn finish(room: &mut RoomProcess) -> (String, String, ExitStatus) {
    let (mut out, mut err) = (String::new(), String::new());
    let read = async {
        let (Some(stdout), Some(stderr)) = (room.stdout.as_mut(), room.stderr.as_mut()) else {
            panic!("stdio taken");
        };
        let (a, b) = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        );
        a.expect("read stdout");
        b.expect("read stderr");
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("room did not finish within 60 s");
    let status = room.wait().await.expect("wait");
    (out, err, status)
}

/// Waits for the first stdout line (the script prints "ready" once it is in place).
async fn first_line(room: &mut RoomProcess) -> String {
    let mut line = String::new();
    let mut reader = BufReader::new(room.stdout.as_mut().expect("stdout"));
    tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
        .await
        .expect("no output within 30 s")
        .expect("read stdout");
    line.trim().to_owned()
}

/// Host pids whose real uid is `uid` (zombies included: `stop` must leave none behind).
fn pids_of_uid(uid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    == Some(uid.to_string().as_str())
            })
        })
        .collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(file).display()))
        .trim()
        .to_owned()
}

#[tokio::test]
async fn sandbox_identity_and_walls() {
    let mut fx = Fixture::new("id", 11);
    fx.spec.limits.tmp_bytes = Some(8 * MIB);
    let script = format!(
        r#"echo "id=$(id -u):$(id -g) name=$(id -un)"
test -e /etc/shadow && echo shadow=present || echo shadow=absent
echo hello > /workspace/made-inside && echo write=ok
echo "procs=$(ls /proc | grep '^[0-9]' | tr '\n' ,)"
echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ,)"
test -e '{data}' && echo data=visible || echo data=hidden
echo "home=$HOME pwd=$(pwd) host=$(hostname) path=$PATH"
unshare -U true 2>/dev/null && echo userns=allowed || echo userns=denied
echo "nnp=$(grep NoNewPrivs /proc/self/status | tr -d ' \t')"
echo "capeff=$(grep CapEff /proc/self/status | tr -d ' \t')"
touch /etc/x 2>/dev/null && echo etc=writable || echo etc=readonly
touch /tmp/x && echo tmp=writable
echo "tmpsize=$(df -B1 --output=size /tmp | tail -1 | tr -d ' ')"
echo "nofile=$(ulimit -n) core=$(ulimit -c)"
"#,
        data = fx.data.display()
    );
    let mut room = fx.spawn(&script).await;
    let (out, err, status) = finish(&mut room).await;
    assert!(status.success(), "status {status}; stderr: {err}");
    let has = |s: &str| assert!(out.contains(s), "expected {s:?} in:\n{out}\nstderr:\n{err}");
    has("id=1000:1000 name=lodge");
    has("shadow=absent");
    has("write=ok");
    has("ifaces=lo,\n");
    has("data=hidden");
    has(&format!(
        "home=/workspace pwd=/workspace host=lodge-{} path=/usr/local/bin:/usr/bin:/bin",
        fx.spec.user
    ));
    has("userns=denied");
    has("nnp=NoNewPrivs:1");
    has("capeff=CapEff:0000000000000000");
    has("etc=readonly");
    has("tmp=writable");
    has(&format!("tmpsize={}", 8 * MIB));
    has("nofile=1024 core=0");
    // Only the sandbox's own processes are visible (bwrap's init, sh, the pipeline), numbered
    // from 1 in the room's pid namespace.
    let procs = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .expect("procs line");
    let pids: Vec<u32> = procs.split(',').filter_map(|p| p.parse().ok()).collect();
    assert!(
        (2..=8).contains(&pids.len()),
        "saw pids {procs} inside the room"
    );
    assert!(
        pids[0] == 1 && pids.iter().all(|&p| p < 50),
        "not a fresh pid namespace: {procs}"
    );
    // The file landed in the host workspace, owned by the room's host uid.
    let made = fx.spec.workspace.join("made-inside");
    assert_eq!(fs::read_to_string(&made).expect("file on host"), "hello\n");
    assert_eq!(fs::metadata(&made).expect("stat").uid(), fx.room_uid());
    let ws = fs::metadata(&fx.spec.workspace).expect("stat workspace");
    assert_eq!((ws.uid(), ws.mode() & 0o777), (fx.room_uid(), 0o700));
    room.stop(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn cgroup_holds_the_room_with_its_limits_and_goes_away() {
    let mut fx = Fixture::new("cg", 12);
    fx.spec.limits.memory_bytes = Some(64 * MIB);
    fx.spec.limits.cpus = Some(0.5);
    fx.spec.limits.pids = Some(50);
    let mut room = fx.spawn("echo ready; exec sleep 60").await;
    assert_eq!(first_line(&mut room).await, "ready");
    let pid = room.id().expect("pid");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some(fx.room_uid().to_string().as_str()),
        "bwrap runs as the room uid on the host: {uid_line}"
    );
    let cg = room.cgroup().expect("a cgroup (running as root)");
    let dirs = cg.dirs();
    for d in &dirs {
        assert!(
            d.file_name()
                .is_some_and(|n| n == format!("lodge-{}", fx.spec.room_id()).as_str()),
            "{}",
            d.display()
        );
        let procs = read(d, "cgroup.procs");
        assert!(
            procs.lines().any(|p| p == pid.to_string()),
            "{} lacks the room's pid {pid}: {procs}",
            d.display()
        );
    }
    // bwrap, bwrap's init inside the pid namespace, sleep.
    assert!(cg.pids().len() >= 3, "room pids: {:?}", cg.pids());
    match cg.version() {
        Version::V1 => {
            let mem = dirs
                .iter()
                .find(|d| d.join("memory.limit_in_bytes").exists())
                .expect("memory dir");
            assert_eq!(read(mem, "memory.limit_in_bytes"), (64 * MIB).to_string());
            if mem.join("memory.memsw.limit_in_bytes").exists() {
                assert_eq!(
                    read(mem, "memory.memsw.limit_in_bytes"),
                    (64 * MIB).to_string()
                );
            }
            let cpu = dirs
                .iter()
                .find(|d| d.join("cpu.cfs_quota_us").exists())
                .expect("cpu dir");
            assert_eq!(read(cpu, "cpu.cfs_quota_us"), "50000");
            assert_eq!(read(cpu, "cpu.cfs_period_us"), "100000");
            let pids = dirs
                .iter()
                .find(|d| d.join("pids.max").exists())
                .expect("pids dir");
            assert_eq!(read(pids, "pids.max"), "50");
        }
        Version::V2 => {
            let d = &dirs[0];
            assert_eq!(read(d, "memory.max"), (64 * MIB).to_string());
            assert_eq!(read(d, "cpu.max"), "50000 100000");
            assert_eq!(read(d, "pids.max"), "50");
        }
    }
    assert!(room.memory_usage().is_some_and(|m| m > 0));
    assert_eq!(room.oom_kills(), Some(0));
    room.stop(Duration::from_millis(50)).await;
    for d in &dirs {
        assert!(!d.exists(), "{} still exists after stop", d.display());
    }
    eventually("room processes gone", || {
        pids_of_uid(fx.room_uid()).is_empty()
    })
    .await;
}

#[tokio::test]
async fn pids_limit_stops_a_fork_loop() {
    let mut fx = Fixture::new("pid", 13);
    fx.spec.limits.pids = Some(20);
    let mut room = fx
        .spawn("for i in $(seq 200); do sleep 5 & done; echo done")
        .await;
    let (_, err, _) = finish(&mut room).await;
    assert!(
        err.contains("Cannot fork") || err.contains("Resource temporarily unavailable"),
        "expected fork failures, stderr: {err}"
    );
    room.stop(Duration::ZERO).await;
    eventually("sleepers killed", || pids_of_uid(fx.room_uid()).is_empty()).await;
}

#[tokio::test]
async fn memory_limit_oom_kills_a_hog() {
    let mut fx = Fixture::new("mem", 14);
    fx.spec.limits.memory_bytes = Some(64 * MIB);
    let mut room = fx
        .spawn("head -c 300M /dev/zero | tail > /dev/null; echo rc=$?")
        .await;
    let (out, err, _) = finish(&mut room).await;
    assert!(out.contains("rc=137"), "tail was not killed: {out} / {err}");
    assert!(
        room.oom_kills().is_some_and(|n| n >= 1),
        "oom_kills = {:?}",
        room.oom_kills()
    );
    room.stop(Duration::ZERO).await;
}

#[tokio::test]
async fn disk_quota_limits_the_workspace() {
    let mut fx = Fixture::new("dq", 15);
    fx.spec.limits.disk_bytes = Some(16 * MIB);
    let script = "for i in 1 2 3 4; do head -c 6M /dev/zero > /workspace/f$i || { echo failed=$i; break; }; done";
    let mut room = fx.spawn(script).await;
    assert!(
        room.warnings.iter().all(|w| !w.contains("disk quota")),
        "{:?}",
        room.warnings
    );
    let (out, err, _) = finish(&mut room).await;
    assert!(err.contains("No space left on device"), "stderr: {err}");
    assert!(
        out.contains("failed=3"),
        "12M fit, the third 6M file must not: {out}"
    );

    let ws = fs::canonicalize(&fx.spec.workspace).expect("workspace");
    let mounts = mountinfo::read().expect("mountinfo");
    assert!(
        mountinfo::is_mount_point(&mounts, &ws),
        "workspace is not a mount"
    );
    // Usable space is about the quota: remove the files and measure.
    for i in 1..=4 {
        let _ = fs::remove_file(ws.join(format!("f{i}")));
    }
    let st = rustix::fs::statvfs(&ws).expect("statvfs");
    let usable = st.f_bavail * st.f_frsize;
    assert!(
        usable.abs_diff(16 * MIB) <= MIB,
        "usable {usable} bytes, quota {}",
        16 * MIB
    );
    assert!(!ws.join("lost+found").exists());

    // The volume stays mounted until the room is stopped; a second start mounts it again,
    // with the files still there.
    fs::write(ws.join("kept"), "x").expect("write");
    room.stop(Duration::ZERO).await;
    assert!(
        !mountinfo::is_mount_point(&mountinfo::read().expect("mountinfo"), &ws),
        "a stopped room leaves its volume mounted"
    );
    let mut room = fx.spawn("cat /workspace/kept").await;
    assert!(
        room.warnings.iter().all(|w| !w.contains("disk quota")),
        "{:?}",
        room.warnings
    );
    let (out, _, _) = finish(&mut room).await;
    assert_eq!(out, "x");
    room.stop(Duration::ZERO).await;
    assert!(!mountinfo::is_mount_point(
        &mountinfo::read().expect("mountinfo"),
        &ws
    ));
    eventually("no loop device left", || {
        volume::loop_devices_below(&fx.data).is_empty()
    })
    .await;
}

/// A start that fails after the quota volume was mounted unmounts it again: failed starts
/// (a scale test made hundreds) must not leak mounts or loop devices.
#[tokio::test]
async fn a_failed_start_leaves_no_volume_mounted() {
    let mut fx = Fixture::new("dqfail", 25);
    fx.spec.limits.disk_bytes = Some(16 * MIB);
    fx.spec.agent_exe = fx.data.join("no-such-lodge");
    let e = spawner().spawn(&fx.spec).await.err().expect("must fail");
    assert!(matches!(e, SpawnError::AgentExe { .. }), "{e}");
    let ws = fs::canonicalize(&fx.spec.workspace).expect("workspace");
    assert!(
        !mountinfo::is_mount_point(&mountinfo::read().expect("mountinfo"), &ws),
        "the failed start left {} mounted",
        ws.display()
    );
    eventually("no loop device left", || {
        volume::loop_devices_below(&fx.data).is_empty()
    })
    .await;
    // The image stays, so the next start reuses it.
    assert!(volume::image_path(&fx.spec.state_dir).exists());
}

/// A hub holding more descriptors than a room may open (about 4 per live room) still starts
/// rooms: the child lowers RLIMIT_NOFILE only after its last open. Before, every start failed
/// with EMFILE once the hub's lowest free descriptor lay above the profile's open_files.
#[tokio::test]
async fn a_hub_with_more_descriptors_than_a_rooms_limit_still_starts_rooms() {
    let mut fx = Fixture::new("fds", 26);
    fx.spec.limits.open_files = 256;
    let hard = rustix::process::getrlimit(Resource::Nofile).maximum;
    rustix::process::setrlimit(
        Resource::Nofile,
        rustix::process::Rlimit {
            current: hard,
            maximum: hard,
        },
    )
    .expect("raise RLIMIT_NOFILE");
    let null = fs::File::open("/dev/null").expect("/dev/null");
    let held: Vec<std::os::fd::OwnedFd> = (0..600)
        .map(|_| rustix::io::dup(&null).expect("dup"))
        .collect();
    let mut room = fx.spawn("echo started").await;
    let (out, err, status) = finish(&mut room).await;
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), "started");
    room.stop(Duration::ZERO).await;
    drop(held);
}

#[tokio::test]
async fn disk_quota_is_not_mounted_over_an_existing_workspace() {
    let mut fx = Fixture::new("dqold", 16);
    fs::create_dir_all(&fx.spec.workspace).expect("workspace");
    fs::write(fx.spec.workspace.join("old"), "from before").expect("write");
    fx.spec.limits.disk_bytes = Some(16 * MIB);
    let mut room = fx.spawn("cat /workspace/old").await;
    assert!(
        room.warnings
            .iter()
            .any(|w| w.contains("predates the quota")),
        "{:?}",
        room.warnings
    );
    let (out, _, _) = finish(&mut room).await;
    assert_eq!(out, "from before");
    room.stop(Duration::ZERO).await;
    let ws = fs::canonicalize(&fx.spec.workspace).expect("workspace");
    assert!(!mountinfo::is_mount_point(
        &mountinfo::read().expect("mountinfo"),
        &ws
    ));
}

#[tokio::test]
async fn stop_kills_a_room_that_ignores_sigterm() {
    let fx = Fixture::new("term", 17);
    let mut room = fx
        .spawn("trap '' TERM; echo ready; while :; do sleep 1; done")
        .await;
    assert_eq!(first_line(&mut room).await, "ready");
    let dirs = room.cgroup().expect("cgroup").dirs();
    let started = Instant::now();
    room.stop(Duration::from_millis(200)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(
        pids_of_uid(fx.room_uid()).is_empty(),
        "room processes survived stop"
    );
    assert!(dirs.iter().all(|d| !d.exists()), "cgroup left behind");
}

#[tokio::test]
async fn dropping_the_room_kills_it() {
    let fx = Fixture::new("drop", 18);
    let mut room = fx.spawn("echo ready; sleep 60").await;
    assert_eq!(first_line(&mut room).await, "ready");
    let dirs = room.cgroup().expect("cgroup").dirs();
    assert!(!pids_of_uid(fx.room_uid()).is_empty());
    drop(room);
    eventually("room processes gone after drop", || {
        pids_of_uid(fx.room_uid()).is_empty()
    })
    .await;
    eventually("cgroup removed after drop", || {
        dirs.iter().all(|d| !d.exists())
    })
    .await;
}

#[tokio::test]
async fn read_only_paths_are_visible_read_only_in_a_bubblewrap_room() {
    let mut fx = Fixture::new("ro", 24);
    // Outside /tmp: when the hub is root, bwrap sees the bridge there, not the host's /tmp.
    let software = tempfile::Builder::new()
        .prefix("lodge-ro-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    fs::set_permissions(software.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let tool = software.path().join("tool");
    fs::write(&tool, "#!/bin/sh\necho tool-ran\n").expect("write tool");
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).expect("chmod tool");
    let dir = software.path().display().to_string();
    fx.spec.read_only_paths = vec![software.path().to_path_buf()];
    let script = format!(
        r#"{dir}/tool
touch {dir}/new 2>/dev/null && echo ro=writable || echo ro=readonly
test -e {data} && echo data=visible || echo data=hidden
"#,
        data = fx.data.display()
    );
    let mut room = fx.spawn(&script).await;
    let (out, err, status) = finish(&mut room).await;
    assert!(status.success(), "status {status}; stderr: {err}");
    for want in ["tool-ran", "ro=readonly", "data=hidden"] {
        assert!(
            out.contains(want),
            "expected {want:?} in:\n{out}\nstderr:\n{err}"
        );
    }
    assert!(!software.path().join("new").exists());
    room.stop(Duration::ZERO).await;

    // A missing path is refused before anything starts, naming it and the setting.
    let missing = software.path().join("missing");
    fx.spec.read_only_paths = vec![missing.clone()];
    let e = spawner()
        .with_agent_args(["-c", "true"])
        .spawn(&fx.spec)
        .await
        .err()
        .expect("must fail");
    let shown = e.to_string();
    assert!(matches!(e, SpawnError::ReadOnlyPath { .. }), "{shown}");
    assert!(shown.contains(&missing.display().to_string()), "{shown}");
    assert!(shown.contains("set in [rooms] read_only_paths"), "{shown}");

    // Room users must be able to reach it.
    fs::set_permissions(software.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
    fx.spec.read_only_paths = vec![software.path().to_path_buf()];
    let e = spawner()
        .with_agent_args(["-c", "true"])
        .spawn(&fx.spec)
        .await
        .err()
        .expect("must fail");
    assert!(e.to_string().contains("o+rx"), "{e}");
}

#[tokio::test]
async fn host_network_shares_the_hub_namespace() {
    let mut fx = Fixture::new("net", 23);
    fx.spec.limits.network = Network::Host;
    let host_ns = fs::read_link("/proc/self/ns/net").expect("own net ns");
    let mut room = fx.spawn("readlink /proc/self/ns/net").await;
    let (out, err, _) = finish(&mut room).await;
    assert_eq!(out.trim(), host_ns.to_string_lossy(), "{err}");
    room.stop(Duration::ZERO).await;

    fx.spec.limits.network = Network::None;
    let mut room = fx.spawn("readlink /proc/self/ns/net").await;
    let (out, _, _) = finish(&mut room).await;
    assert_ne!(out.trim(), host_ns.to_string_lossy());
    room.stop(Duration::ZERO).await;
}

#[tokio::test]
async fn isolation_none_runs_the_exe_directly() {
    let mut fx = Fixture::new("none", 19);
    fx.spec.isolation = Isolation::None;
    let mut room = fx
        .spawn(r#"echo "home=$HOME pwd=$(pwd) uid=$(id -u) tmp=$TMPDIR"; cat /proc/self/cgroup"#)
        .await;
    assert!(
        room.warnings.iter().any(|w| w.contains("isolation = none")),
        "{:?}",
        room.warnings
    );
    let (out, err, status) = finish(&mut room).await;
    assert!(status.success(), "{err}");
    assert!(room.take_stderr().is_some() && room.take_stderr().is_none());
    assert!(room.take_channel().is_some() && room.take_channel().is_none());
    let ws = fs::canonicalize(&fx.spec.workspace).expect("workspace");
    let tmp = fx.spec.state_dir.join("tmp");
    assert!(
        out.contains(&format!(
            "home={} pwd={} uid=0 tmp={}",
            ws.display(),
            ws.display(),
            tmp.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("lodge-{}", fx.spec.room_id())),
        "not in the room cgroup: {out}"
    );
    room.stop(Duration::ZERO).await;
}

#[tokio::test]
async fn a_leftover_cgroup_is_killed_and_reused() {
    let fx = Fixture::new("left", 20);
    let layout = cgroup::detect().expect("cgroups");
    let leftover = RoomCgroup::for_user(&layout, &fx.spec.room_id());
    let mut stray = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    for d in leftover.dirs() {
        fs::create_dir(&d).expect("mkdir leftover");
        fs::write(d.join("cgroup.procs"), stray.id().to_string()).expect("move stray");
    }
    let mut room = fx.spawn("echo ok").await;
    let (out, _, _) = finish(&mut room).await;
    assert_eq!(out, "ok\n");
    let status = stray.wait().expect("wait stray");
    assert!(!status.success(), "the leftover's process was not killed");
    room.stop(Duration::ZERO).await;
}

#[tokio::test]
async fn errors_name_the_problem() {
    let fx = Fixture::new("err", 21);
    let mut no_bwrap = spawner();
    no_bwrap.bwrap = None;
    assert!(!no_bwrap.bubblewrap_available());
    let e = no_bwrap.spawn(&fx.spec).await.err().expect("must fail");
    assert!(matches!(e, SpawnError::NoBubblewrap { .. }), "{e}");
    assert!(e.to_string().contains("apt-get install bubblewrap"), "{e}");
    assert!(e.to_string().contains("operator must install"), "{e}");

    let mut spec = fx.spec.clone();
    spec.agent_exe = fx.data.join("no-such-lodge");
    let e = spawner().spawn(&spec).await.err().expect("must fail");
    assert!(matches!(e, SpawnError::AgentExe { .. }), "{e}");

    let mut spec = fx.spec.clone();
    spec.user = "../etc".into();
    let e = spawner().spawn(&spec).await.err().expect("must fail");
    assert!(matches!(e, SpawnError::InvalidUser { .. }), "{e}");

    let mut spec = fx.spec.clone();
    spec.uid_base = 0;
    spec.user_id = 5;
    let e = spawner().spawn(&spec).await.err().expect("must fail");
    assert!(matches!(e, SpawnError::RoomUid { .. }), "{e}");
}

#[tokio::test]
async fn empty_room_spawn_time() {
    let fx = Fixture::new("time", 22);
    let spawner = spawner().with_agent_args(["-c", "true"]);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let mut room = spawner.spawn(&fx.spec).await.expect("spawn");
        let spawned = t0.elapsed();
        let (_, err, status) = finish(&mut room).await;
        assert!(status.success(), "{err}");
        times.push((spawned, t0.elapsed()));
        room.stop(Duration::ZERO).await;
    }
    eprintln!("empty bwrap room (spawn returned, `true` exited): {times:?}");
}

fn test_spec() -> RoomSpec {
    RoomSpec {
        user: "alice".into(),
        instance: "test".into(),
        user_id: 7,
        workspace: "/data/workspaces/alice".into(),
        state_dir: "/data/rooms/alice".into(),
        agent_exe: "/usr/bin/lodge".into(),
        isolation: Isolation::Bubblewrap,
        limits: Limits {
            memory_bytes: None,
            cpus: None,
            pids: None,
            disk_bytes: None,
            tmp_bytes: Some(8 * MIB),
            open_files: 1024,
            network: Network::None,
        },
        uid_base: 100_000,
        stop_grace: Duration::from_secs(1),
        read_only_paths: Vec::new(),
    }
}

fn has_seq(args: &[OsString], seq: &[&str]) -> bool {
    args.windows(seq.len())
        .any(|w| w.iter().zip(seq).all(|(a, b)| a == OsStr::new(b)))
}

#[test]
fn bwrap_arguments() {
    let mut spec = test_spec();
    spec.read_only_paths = vec!["/opt/venvs".into(), "/srv/node_modules".into()];
    let src = SandboxSources {
        workspace: "/tmp/workspace".into(),
        exe: "/tmp/lodge".into(),
        passwd: "/tmp/passwd".into(),
        group: "/tmp/group".into(),
    };
    let host = HostLayout {
        top_level: vec![
            ("bin".into(), Some("usr/bin".into())),
            ("lib64".into(), None),
        ],
        etc: vec!["ssl".into(), "python3.11".into()],
    };
    let argv = spawner().agent_argv(
        OsStr::new("/workspace"),
        OsStr::new("/tmp"),
        &spec.read_only_paths,
        false,
    );
    let args = bwrap_args(&spec, &src, &host, true, &argv);
    for seq in [
        &[
            "--unshare-user",
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--unshare-net",
        ][..],
        &[
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--hostname",
            "lodge-alice",
        ],
        &[
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--disable-userns",
        ],
        &["--ro-bind", "/usr", "/usr"],
        &["--symlink", "usr/bin", "/bin"],
        &["--ro-bind-try", "/lib64", "/lib64"],
        &["--size", "8388608", "--tmpfs", "/tmp"],
        &["--ro-bind-try", "/etc/python3.11", "/etc/python3.11"],
        &["--ro-bind", "/tmp/passwd", "/etc/passwd"],
        &["--ro-bind", "/tmp/group", "/etc/group"],
        &["--ro-bind", "/tmp/lodge", "/run/lodge/lodge"],
        &["--bind", "/tmp/workspace", "/workspace"],
        &["--chdir", "/workspace", "--clearenv"],
        &["--setenv", "HOME", "/workspace"],
        &["--setenv", "USER", "alice", "--setenv", "LOGNAME", "alice"],
        &[
            "--",
            "/run/lodge/lodge",
            "agent",
            "--workspace",
            "/workspace",
            "--tmp",
            "/tmp",
            "--read-only",
            "/opt/venvs",
            "--read-only",
            "/srv/node_modules",
        ],
        &["--ro-bind", "/opt/venvs", "/opt/venvs"],
        &["--ro-bind", "/srv/node_modules", "/srv/node_modules"],
    ] {
        assert!(has_seq(&args, seq), "missing {seq:?} in {args:?}");
    }
    assert!(
        !has_seq(&args, &["/etc", "/etc"]),
        "host /etc must not be bound whole"
    );
    assert_eq!(
        args.last().map(|a| a.as_os_str()),
        Some(OsStr::new("/srv/node_modules"))
    );
    // /run must be mounted before the agent is bound under it; read-only paths are bound
    // after the tmpfs mounts and before the root turns read-only.
    let pos = |s: &str| args.iter().position(|a| a == s).expect(s);
    assert!(pos("/run") < pos("/run/lodge/lodge"));
    assert!(pos("/run") < pos("/opt/venvs") && pos("/opt/venvs") < pos("--remount-ro"));

    let mut host_net = spec.clone();
    host_net.limits.network = Network::Host;
    host_net.limits.tmp_bytes = None;
    host_net.read_only_paths.clear();
    let argv = spawner().agent_argv(
        OsStr::new("/workspace"),
        OsStr::new("/tmp"),
        &host_net.read_only_paths,
        true,
    );
    let args = bwrap_args(&host_net, &src, &host, false, &argv);
    assert!(!has_seq(&args, &["--unshare-net"]));
    assert!(!has_seq(&args, &["--disable-userns"]));
    assert!(!has_seq(&args, &["--size"]));
    assert_eq!(
        args.last().map(|a| a.as_os_str()),
        Some(OsStr::new("--network"))
    );
    assert!(!has_seq(&args, &["--read-only"]));
}

#[test]
fn read_only_paths_must_be_clean_existing_directories_clear_of_the_sandbox() {
    // Outside /tmp, which a bubblewrap room may not bind from.
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let file = dir.path().join("file");
    fs::write(&file, "x").expect("write");
    let with = |paths: &[&Path], isolation: Isolation| {
        let mut spec = test_spec();
        spec.isolation = isolation;
        spec.read_only_paths = paths.iter().map(|p| p.to_path_buf()).collect();
        check_read_only_paths(&spec, false)
    };
    assert!(with(&[Path::new("/usr/lib"), dir.path()], Isolation::Bubblewrap).is_ok());
    let missing = dir.path().join("missing");
    for (bad, why) in [
        (Path::new("relative/dir"), "absolute"),
        (Path::new("/usr/../etc"), "'..'"),
        (missing.as_path(), "No such file"),
        (file.as_path(), "not a directory"),
        (Path::new("/"), "overlaps"),
        (Path::new("/etc"), "overlaps"),
        (Path::new("/proc/self"), "overlaps"),
        (Path::new("/tmp"), "overlaps"),
    ] {
        let e = with(&[Path::new("/usr"), bad], Isolation::Bubblewrap)
            .expect_err(&bad.display().to_string());
        let shown = e.to_string();
        assert!(matches!(e, SpawnError::ReadOnlyPath { .. }), "{shown}");
        assert!(shown.contains(&bad.display().to_string()), "{shown}");
        assert!(shown.contains(why), "{shown}");
        assert!(shown.contains("set in [rooms] read_only_paths"), "{shown}");
    }
    // Without bubblewrap nothing is bound: only existence matters.
    assert!(with(&[Path::new("/etc")], Isolation::None).is_ok());
    assert!(with(&[missing.as_path()], Isolation::None).is_err());
}

#[test]
fn user_names_and_room_uids() {
    let with = |user: &str, instance: &str| {
        let mut spec = test_spec();
        spec.user = user.into();
        spec.instance = instance.into();
        validate_user(&spec)
    };
    for ok in ["a", "alice", "a-b_c9", &"a".repeat(32)] {
        assert!(with(ok, "0a1b").is_ok(), "{ok}");
    }
    for bad in ["", "Alice", "9a", "a/b", "a.b", "../x", &"a".repeat(33)] {
        assert!(with(bad, "0a1b").is_err(), "{bad}");
    }
    for bad in ["", "A", "a-b", "../x", &"a".repeat(17)] {
        assert!(with("alice", bad).is_err(), "instance {bad:?}");
    }
    let mut spec = test_spec();
    assert_eq!(room_ids(&spec).ok(), Some((100_007, 100_007)));
    spec.uid_base = 0;
    assert!(room_ids(&spec).is_err());
    spec.uid_base = 1 << 31;
    assert!(
        room_ids(&spec).is_err(),
        "uids of 2^31 and above cannot be mapped"
    );
    spec.uid_base = u32::MAX - 3;
    assert!(room_ids(&spec).is_err());
    spec.uid_base = 100_000;
    spec.user_id = -1;
    assert_eq!(room_ids(&spec).ok(), Some((99_999, 99_999)));
}

#[test]
fn rlimits_follow_the_profile() {
    let mut spec = test_spec();
    spec.limits.pids = Some(20);
    spec.limits.disk_bytes = Some(16 * MIB);
    spec.limits.open_files = 4;
    let spawner = spawner();
    let with_uid = spawner.rlimits(&spec, true);
    assert!(with_uid.contains(&(Resource::Core, 0)));
    assert!(with_uid.contains(&(Resource::Nofile, MIN_OPEN_FILES)));
    assert!(with_uid.contains(&(Resource::Nproc, 20)));
    assert!(with_uid.contains(&(Resource::Fsize, 16 * MIB)));
    let shared_uid = spawner.rlimits(&spec, false);
    assert!(!shared_uid.iter().any(|(r, _)| *r == Resource::Nproc));
}

#[tokio::test]
async fn the_spawner_places_requests_in_its_data_dir_and_cannot_reattach() {
    let spawner = LocalSpawner::new("/data", "/usr/bin/lodge");
    let request = RoomRequest {
        user: "alice".into(),
        user_id: 7,
        isolation: Isolation::None,
        limits: test_spec().limits,
        uid_base: 100_000,
        stop_grace: Duration::from_secs(1),
        read_only_paths: Vec::new(),
    };
    let spec = spawner.spec(&request);
    assert_eq!(spec.workspace, Path::new("/data/workspaces/alice"));
    assert_eq!(spec.state_dir, Path::new("/data/rooms/alice"));
    assert_eq!(spec.instance, RoomFiles::new("/data").instance());
    assert_eq!(spec.agent_exe, Path::new("/usr/bin/lodge"));
    let address = RoomAddress {
        user: "alice".into(),
        location: format!("local:{}", spec.room_id()),
    };
    let e = match spawner.reattach(&address).await {
        Ok(_) => panic!("a local room was reattached"),
        Err(e) => e,
    };
    assert!(matches!(e, SpawnError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("not supported"), "{e}");
}
