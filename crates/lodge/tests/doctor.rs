//! `lodge doctor` against the real binary: ready on this machine (and CI, which installs
//! bubblewrap), and a clear MISSING with its fix when bwrap cannot be found.

use serde_json::Value;
use std::process::{Command, Output};

fn doctor(path_env: Option<&std::path::Path>, json: bool) -> (Output, tempfile::TempDir) {
    doctor_with(path_env, json, &[])
}

fn doctor_with(
    path_env: Option<&std::path::Path>,
    json: bool,
    env: &[(&str, &str)],
) -> (Output, tempfile::TempDir) {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().join("lodge-data");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lodge"));
    cmd.arg("--data-dir").arg(&data_dir).arg("doctor");
    if json {
        cmd.arg("--json");
    }
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    cmd.env_remove("LODGE_CONFIG").envs(env.iter().copied());
    let out = cmd.output().expect("run lodge doctor");
    assert!(!data_dir.exists(), "doctor must not create DATA_DIR");
    (out, data)
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}

#[test]
fn ready_on_this_machine() {
    let (out, _data) = doctor(None, true);
    let r = report(&out);
    assert!(
        out.status.success(),
        "doctor failed: {r:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["ready"], true, "{r:#}");
    let bwrap = check(&r, "bubblewrap");
    assert_eq!(bwrap["status"], "ok", "{bwrap}");
    let detail = bwrap["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("bubblewrap") && detail.chars().any(|c| c.is_ascii_digit()),
        "no version in {detail:?}"
    );
    assert_eq!(check(&r, "user namespaces")["status"], "ok", "{r:#}");
    assert_eq!(check(&r, "cgroups")["status"], "ok", "{r:#}");
    // Tests and CI run as root with e2fsprogs and loop devices, as quota volumes need.
    assert_eq!(check(&r, "quota volumes")["status"], "ok", "{r:#}");
    for c in r["checks"].as_array().expect("checks") {
        assert!(!c["name"].as_str().unwrap_or("").is_empty(), "{c}");
        assert!(!c["detail"].as_str().unwrap_or("").is_empty(), "{c}");
    }
}

#[test]
fn missing_bwrap_fails_with_its_fix() {
    let empty = tempfile::tempdir().expect("tempdir");
    let (out, _data) = doctor(Some(empty.path()), true);
    assert_eq!(out.status.code(), Some(1));
    let r = report(&out);
    assert_eq!(r["ready"], false);
    let bwrap = check(&r, "bubblewrap");
    assert_eq!(bwrap["status"], "missing", "{bwrap}");
    let fix = bwrap["fix"].as_str().unwrap_or("");
    assert!(fix.contains("apt-get install bubblewrap"), "{fix:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bubblewrap"));

    // The table says the same in words.
    let (out, _data) = doctor(Some(empty.path()), false);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("MISSING"), "{table}");
    assert!(table.contains("fix: apt-get install bubblewrap"), "{table}");
}

/// Issue 12 finding 15: doctor tells the operator when rooms get no notebook kernel, with the
/// apt command (users in rooms without network cannot install one), and says which kernelspec
/// rooms use when there is one that imports ipykernel.
#[test]
fn notebook_kernels_are_checked_with_the_apt_fix() {
    let none = [
        ("LODGE_KERNELS_SYSTEM_PATHS", "[]"),
        ("LODGE_KERNELS_PATHS", "[]"),
    ];
    let (out, _data) = doctor_with(None, true, &none);
    let r = report(&out);
    let kernels = check(&r, "notebook kernels");
    assert_eq!(kernels["status"], "degraded", "{kernels}");
    let fix = kernels["fix"].as_str().unwrap_or("");
    assert!(fix.contains("apt-get install python3-ipykernel"), "{fix:?}");
    // Rooms still run without notebooks: the machine stays ready.
    assert!(out.status.success(), "{r:#}");
    let (out, _data) = doctor_with(None, false, &none);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("fix: apt-get install python3-ipykernel"),
        "{table}"
    );

    let peers = std::env::var("LODGE_TEST_PEERS").unwrap_or("/opt/lodge-test-peers".into());
    let data = format!("[\"{peers}/jupyter/share/jupyter\"]");
    let read_only = format!("[\"{peers}\"]");
    let (out, _data) = doctor_with(
        None,
        true,
        &[
            ("LODGE_KERNELS_SYSTEM_PATHS", "[]"),
            ("LODGE_KERNELS_PATHS", &data),
            ("LODGE_ROOMS_READ_ONLY_PATHS", &read_only),
        ],
    );
    let r = report(&out);
    let kernels = check(&r, "notebook kernels");
    assert_eq!(kernels["status"], "ok", "{kernels} (run scripts/peers)");
    let detail = kernels["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("kernelspec python3") && detail.contains("imports ipykernel"),
        "{detail:?}"
    );
}
