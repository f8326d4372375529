//! Git tools end to end (issue 7): real `git` in real bubblewrap rooms against a local
//! smart-HTTP server (tests/peers/git_http_server.py: `git http-backend` behind a password per
//! user). Alice pushes with her token; Bob's token is refused on Alice's repository; a wrong
//! token fails clearly; and no token is ever found on disk, in logs or in any process's argv.

mod common;

use common::{Mcp, TestHub, files_containing};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const ALICE_TOKEN: &str = "tok-alice-5e3c7a1d9b";
const BOB_TOKEN: &str = "tok-bob-8f2e6b4c0a";
const WRONG_TOKEN: &str = "tok-wrong-1a2b3c4d5e";

/// The test's git server: repositories under `root`, killed when dropped.
struct GitServer {
    child: Child,
    url: String,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl GitServer {
    fn start() -> GitServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repos");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/peers/git_http_server.py"
        );
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg("--root")
            .arg(&root)
            // From the environment: in argv the tokens would trip the test's own argv search.
            .args(["--users-env", "GIT_TEST_USERS"])
            .env(
                "GIT_TEST_USERS",
                format!("alice={ALICE_TOKEN},bob={BOB_TOKEN}"),
            )
            .args(["--init", "alice/proj", "--init", "shared/common"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the git server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the server's first line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        GitServer {
            child,
            url,
            root,
            _dir: dir,
        }
    }

    /// The subject of the last commit on `branch` of a repository, read on the server side.
    fn last_subject(&self, repo: &str, branch: &str) -> String {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(self.root.join(repo))
            .args(["log", "-1", "--format=%s", branch])
            .output()
            .expect("git log");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hub whose users may reach the host's loopback (the git server), logging at debug level.
fn hub() -> TestHub {
    TestHub::start_with_config_logged(
        "[profiles.net]\nnetwork = \"host\"\n",
        &[("RUST_LOG", "debug")],
    )
}

async fn user_with_token(hub: &TestHub, name: &str, token: &str) -> Mcp {
    let m = hub.user_session(name, &["--profile", "net"]).await;
    m.ok(
        "secret_put",
        json!({"name": "forge", "fields": {"token": token}}),
    )
    .await;
    m.ok(
        "git_configure",
        json!({"name": name, "email": format!("{name}@example.invalid"), "token_secret": "forge"}),
    )
    .await;
    m
}

/// Watches every process's argv (`/proc/*/cmdline`) in a loop while the test runs, so a
/// short-lived git process that carried a token on its command line is caught too.
struct ArgvWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    hits: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ArgvWatch {
    fn start(needles: &[&str]) -> ArgvWatch {
        use std::sync::atomic::Ordering;
        let needles: Vec<String> = needles.iter().map(|n| n.to_string()).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hits = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let thread = std::thread::spawn({
            let (stop, hits) = (stop.clone(), hits.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    for cmdline in all_argv() {
                        if needles.iter().any(|n| cmdline.contains(n.as_str())) {
                            hits.lock().unwrap().insert(cmdline);
                        }
                    }
                }
            }
        });
        ArgvWatch {
            stop,
            hits,
            thread: Some(thread),
        }
    }

    /// Stops watching; returns every argv seen with a token.
    fn finish(mut self) -> std::collections::BTreeSet<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("argv watcher");
        }
        std::mem::take(&mut *self.hits.lock().unwrap())
    }
}

fn all_argv() -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .collect()
}

/// Every token of the tests.
const TOKENS: [&str; 3] = [ALICE_TOKEN, BOB_TOKEN, WRONG_TOKEN];

/// No token in any file of DATA_DIR: database, the hub's debug log, workspace images.
fn assert_no_token_in_files(hub: &TestHub) {
    let files = files_containing(&hub.dir, &TOKENS);
    assert!(files.is_empty(), "a token was found in {files:?}");
}

/// No token in the argv of any process seen since `watch` started.
fn assert_no_token_in_argv(watch: ArgvWatch) {
    let argv = watch.finish();
    assert!(argv.is_empty(), "a token was in the argv of: {argv:?}");
}

#[tokio::test]
async fn alice_clones_commits_and_pushes_with_her_token_and_bob_cannot() {
    let server = GitServer::start();
    let hub = hub();
    let watch = ArgvWatch::start(&TOKENS);
    let a = user_with_token(&hub, "alice", ALICE_TOKEN).await;
    let b = user_with_token(&hub, "bob", BOB_TOKEN).await;
    let proj = format!("{}/alice/proj.git", server.url);

    let cloned = a
        .call("git_clone", json!({"url": proj, "path": "proj"}))
        .await;
    assert!(!cloned.is_error, "{}", cloned.text);
    assert_no_token_in_files(&hub);
    a.ok(
        "fs_write",
        json!({"path": "proj/notes.md", "content": "alice was here\n"}),
    )
    .await;
    let status = a.call("git_status", json!({"path": "proj"})).await;
    assert!(status.text.contains("notes.md"), "{}", status.text);
    let diff = a.call("git_diff", json!({"path": "proj"})).await;
    assert!(!diff.is_error, "{}", diff.text);
    let committed = a
        .call(
            "git_commit",
            json!({"path": "proj", "message": "add notes"}),
        )
        .await;
    assert!(!committed.is_error, "{}", committed.text);
    let log = a.call("git_log", json!({"path": "proj"})).await;
    assert!(
        log.text.contains("add notes") && log.text.contains("alice@example.invalid"),
        "{}",
        log.text
    );
    let pushed = a.call("git_push", json!({"path": "proj"})).await;
    assert!(!pushed.is_error, "{}", pushed.text);
    assert_eq!(server.last_subject("alice/proj.git", "main"), "add notes");
    assert_no_token_in_files(&hub);

    // Nothing more to commit.
    let nothing = a
        .call("git_commit", json!({"path": "proj", "message": "again"}))
        .await;
    assert!(
        nothing.is_error && nothing.text.contains("nothing to commit"),
        "{}",
        nothing.text
    );

    // Bob's token is refused on Alice's repository.
    let refused = b
        .call("git_clone", json!({"url": proj, "path": "stolen"}))
        .await;
    assert!(refused.is_error, "{}", refused.text);
    assert!(
        refused.text.contains("refused your credentials"),
        "{}",
        refused.text
    );

    // A wrong token fails clearly.
    b.ok(
        "secret_put",
        json!({"name": "forge", "fields": {"token": WRONG_TOKEN}}),
    )
    .await;
    let wrong = b
        .call(
            "git_clone",
            json!({"url": format!("{}/shared/common.git", server.url)}),
        )
        .await;
    assert!(
        wrong.is_error && wrong.text.contains("refused your credentials"),
        "{}",
        wrong.text
    );
    assert_no_token_in_files(&hub);
    assert_no_token_in_argv(watch);
    // The .git/config Alice's clone wrote has the plain URL only.
    let config = a.ok("fs_read", json!({"path": "proj/.git/config"})).await;
    let config = config["content"].as_str().unwrap_or_default();
    assert!(
        config.contains(&proj) && !config.contains("tok-"),
        "{config}"
    );
}

#[tokio::test]
async fn push_rejections_conflicts_and_detached_heads_are_explained() {
    let server = GitServer::start();
    let hub = hub();
    let watch = ArgvWatch::start(&TOKENS);
    let a = user_with_token(&hub, "alice", ALICE_TOKEN).await;
    let proj = format!("{}/alice/proj.git", server.url);
    a.ok("git_clone", json!({"url": proj, "path": "one"})).await;
    a.ok("git_clone", json!({"url": proj, "path": "two"})).await;

    a.ok(
        "fs_write",
        json!({"path": "one/README.md", "content": "from one\n"}),
    )
    .await;
    a.ok("git_commit", json!({"path": "one", "message": "one"}))
        .await;
    a.ok("git_push", json!({"path": "one"})).await;

    a.ok(
        "fs_write",
        json!({"path": "two/README.md", "content": "from two\n"}),
    )
    .await;
    a.ok("git_commit", json!({"path": "two", "message": "two"}))
        .await;
    let rejected = a.call("git_push", json!({"path": "two"})).await;
    assert!(
        rejected.is_error && rejected.text.contains("push rejected"),
        "{}",
        rejected.text
    );
    let conflict = a.call("git_pull", json!({"path": "two"})).await;
    assert!(
        conflict.is_error && conflict.text.contains("merge conflict in README.md"),
        "{}",
        conflict.text
    );

    a.sh("cd one && git checkout -q --detach HEAD").await;
    a.ok("fs_write", json!({"path": "one/x.txt", "content": "x"}))
        .await;
    let detached = a
        .call("git_commit", json!({"path": "one", "message": "lost"}))
        .await;
    assert!(
        detached.is_error && detached.text.contains("detached HEAD"),
        "{}",
        detached.text
    );

    let not_repo = a.call("git_status", json!({"path": "."})).await;
    assert!(
        not_repo.is_error && not_repo.text.contains("not a git repository"),
        "{}",
        not_repo.text
    );
    let creds_in_url = a
        .call(
            "git_clone",
            json!({"url": format!("http://alice:{ALICE_TOKEN}@127.0.0.1:1/x.git")}),
        )
        .await;
    assert!(
        creds_in_url.is_error && creds_in_url.text.contains("secret"),
        "{}",
        creds_in_url.text
    );
    assert_no_token_in_files(&hub);
    assert_no_token_in_argv(watch);
}

#[tokio::test]
async fn rooms_without_network_say_so_and_two_users_clone_at_once() {
    let server = GitServer::start();
    let hub = hub();
    let watch = ArgvWatch::start(&TOKENS);
    // Carol's default profile has no network: the remote is not reachable, and the error says
    // how a profile allows it.
    let c = hub.user_session("carol", &[]).await;
    let offline = c
        .call(
            "git_clone",
            json!({"url": format!("{}/shared/common.git", server.url)}),
        )
        .await;
    assert!(
        offline.is_error && offline.text.contains("network"),
        "{}",
        offline.text
    );

    let a = user_with_token(&hub, "alice", ALICE_TOKEN).await;
    let b = user_with_token(&hub, "bob", BOB_TOKEN).await;
    let common_url = format!("{}/shared/common.git", server.url);
    let (ra, rb) = tokio::join!(
        a.call("git_clone", json!({"url": common_url, "path": "common"})),
        b.call("git_clone", json!({"url": common_url, "path": "common"})),
    );
    assert!(!ra.is_error, "{}", ra.text);
    assert!(!rb.is_error, "{}", rb.text);
    for (m, who) in [(&a, "alice"), (&b, "bob")] {
        m.ok(
            "fs_write",
            json!({"path": "common/mine.txt", "content": who}),
        )
        .await;
        let status = m.call("git_status", json!({"path": "common"})).await;
        assert!(status.text.contains("mine.txt"), "{}", status.text);
        let mine = m.ok("fs_read", json!({"path": "common/mine.txt"})).await;
        assert_eq!(mine["content"], who);
    }
    assert_no_token_in_files(&hub);
    assert_no_token_in_argv(watch);
}
