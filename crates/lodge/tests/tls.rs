//! The hub serving HTTPS itself (`[server] tls_cert`, `tls_key`) with a test CA: an MCP call
//! over HTTPS works for a client that trusts the CA (and not for one that does not); after the
//! files are replaced and SIGHUP sent, new connections get the new certificate; a broken file at
//! reload keeps the old one serving; a bad PEM at start is an error naming the file; with TLS a
//! public address may be bound without --insecure-public.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::tls::TestCa;
use common::{BIN, TestHub, init_body, session_info_call};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Certificate files outside the hub's DATA_DIR, as an operator would have them.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(cert_pem: &str, key_pem: &str) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, cert_pem).expect("write cert");
        std::fs::write(&key, key_pem).expect("write key");
        Files {
            _dir: dir,
            cert,
            key,
        }
    }

    fn config(&self) -> String {
        format!(
            "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }

    fn replace(&self, cert_pem: &str, key_pem: &str) {
        std::fs::write(&self.cert, cert_pem).expect("write cert");
        std::fs::write(&self.key, key_pem).expect("write key");
    }
}

/// A fresh client (so a fresh connection and handshake) trusting `ca`.
fn client(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(ca.reqwest_cert())
        .tls_info(true)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// The DER of the first certificate in a PEM text.
fn der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD.decode(b64).expect("PEM base64")
}

/// The certificate a new connection to the hub is shown.
async fn served_cert(hub: &TestHub, ca: &TestCa) -> Vec<u8> {
    let r = client(ca)
        .get(format!("{}/api/health", hub.base))
        .send()
        .await
        .expect("HTTPS request");
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("peer certificate")
        .to_vec()
}

fn sighup(hub: &TestHub) {
    let pid = hub.pid().expect("hub pid");
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_call_over_https_works_with_the_ca_trusted() {
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&["127.0.0.1", "localhost"]);
    let files = Files::new(&cert, &key);
    let hub = TestHub::start_with_config(&files.config(), &[]);
    assert!(hub.base.starts_with("https://127.0.0.1:"), "{}", hub.base);
    hub.add_user("alice");
    let token = hub.token("alice", &[]);
    let http = client(&ca);
    let r = http
        .post(hub.mcp_url())
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(&init_body("2025-11-25"))
        .send()
        .await
        .expect("initialize over HTTPS");
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"]
        .to_str()
        .expect("sid")
        .to_owned();
    let r = http
        .post(hub.mcp_url())
        .bearer_auth(&token)
        .header("mcp-session-id", &sid)
        .header("accept", "application/json, text/event-stream")
        .json(&session_info_call())
        .send()
        .await
        .expect("tools/call over HTTPS");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert!(v["result"].to_string().contains("alice"), "{v}");
    // ALPN says HTTP/1.1, the only protocol the hub speaks.
    assert_eq!(r_version(&http, &hub).await, reqwest::Version::HTTP_11);
    // A client that does not trust the CA refuses the hub's certificate.
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let e = untrusting
        .get(format!("{}/api/health", hub.base))
        .send()
        .await
        .expect_err("an untrusted certificate must fail");
    assert!(
        format!("{e:?}").to_lowercase().contains("certificate"),
        "{e:?}"
    );
    // Plain HTTP on the TLS port gets no answer from the hub's routes.
    let plain = hub.base.replace("https://", "http://");
    let r = common::http()
        .get(format!("{plain}/api/health"))
        .send()
        .await;
    assert!(r.is_err() || !r.expect("response").status().is_success());
}

async fn r_version(http: &reqwest::Client, hub: &TestHub) -> reqwest::Version {
    http.get(format!("{}/api/health", hub.base))
        .send()
        .await
        .expect("health")
        .version()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_certificate_for_new_connections() {
    let ca = TestCa::new();
    let (cert_a, key_a) = ca.issue(&["127.0.0.1"]);
    let files = Files::new(&cert_a, &key_a);
    let hub = TestHub::start_with_config(&files.config(), &[]);
    assert_eq!(served_cert(&hub, &ca).await, der(&cert_a));
    let (cert_b, key_b) = ca.issue(&["127.0.0.1", "localhost"]);
    files.replace(&cert_b, &key_b);
    // Replaced files alone change nothing: the hub reads them on SIGHUP.
    assert_eq!(served_cert(&hub, &ca).await, der(&cert_a));
    sighup(&hub);
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = served_cert(&hub, &ca).await;
        if seen == der(&cert_b) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, der(&cert_b), "the new certificate is not served");
    // The hub is alive and well after the signal.
    assert_eq!(served_cert(&hub, &ca).await, der(&cert_b));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_file_at_reload_keeps_the_old_certificate() {
    let ca = TestCa::new();
    let (cert_a, key_a) = ca.issue(&["127.0.0.1"]);
    let files = Files::new(&cert_a, &key_a);
    let hub = TestHub::start_with_config_logged(&files.config(), &[]);
    assert_eq!(served_cert(&hub, &ca).await, der(&cert_a));
    let log = hub.dir.join("hub.log");
    let failures = |n: usize| {
        for _ in 0..100 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches("TLS reload failed").count() >= n {
                return text;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "no reload failure logged: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    // A truncated certificate.
    files.replace("-----BEGIN CERTIFICATE-----\nnot base64 at all\n", &key_a);
    sighup(&hub);
    let text = failures(1);
    assert!(text.contains("cert.pem"), "the log names the file: {text}");
    assert_eq!(served_cert(&hub, &ca).await, der(&cert_a));
    // A valid certificate with a key that is not its own.
    let (cert_b, _) = ca.issue(&["127.0.0.1"]);
    let (_, other_key) = ca.issue(&["127.0.0.1"]);
    files.replace(&cert_b, &other_key);
    sighup(&hub);
    failures(2);
    assert_eq!(served_cert(&hub, &ca).await, der(&cert_a));
    // A missing key file.
    std::fs::remove_file(&files.key).expect("remove key");
    sighup(&hub);
    failures(3);
    assert_eq!(served_cert(&hub, &ca).await, der(&cert_a));
}

/// Runs `lodge serve` with `config` in a fresh DATA_DIR, bound to `bind`; returns the first
/// stdout line (or None) and stderr, killing the hub after the line.
fn serve_once(config: &str, bind: &str) -> (Option<String>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("lodge.toml"), config).expect("config");
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--bind", bind])
        .env_remove("LODGE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lodge serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let line = BufReader::new(stdout).lines().map_while(Result::ok).next();
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).ok().flatten();
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    (line, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_bad_pem_at_start_is_an_error_naming_the_file() {
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let broken = Files::new("this is not PEM\n", &key);
    let (line, stderr) = serve_once(&broken.config(), "127.0.0.1:0");
    assert!(line.is_none(), "the hub started: {line:?}");
    assert!(stderr.contains(&path_text(&broken.cert)), "{stderr}");
    let no_key = Files::new(
        &cert,
        "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
    );
    let (line, stderr) = serve_once(&no_key.config(), "127.0.0.1:0");
    assert!(line.is_none(), "the hub started: {line:?}");
    assert!(stderr.contains(&path_text(&no_key.key)), "{stderr}");
}

fn path_text(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn with_tls_a_public_address_needs_no_insecure_flag() {
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let files = Files::new(&cert, &key);
    let (line, stderr) = serve_once(&files.config(), "0.0.0.0:0");
    let line = line.unwrap_or_else(|| panic!("the hub did not start: {stderr}"));
    assert!(line.contains("listening on https://0.0.0.0:"), "{line}");
    // Without TLS the same bind is refused.
    let (line, stderr) = serve_once("", "0.0.0.0:0");
    assert!(line.is_none(), "{line:?}");
    assert!(stderr.contains("without TLS"), "{stderr}");
}

/// Reads until the hub closes the connection; false if it is still open after `limit`.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_handshakes_count_against_the_caps_and_time_out() {
    use tokio::io::AsyncWriteExt;
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let files = Files::new(&cert, &key);
    let hub = TestHub::start_with_config(
        &files.config(),
        &[
            ("LODGE_SERVER_HEADER_READ_TIMEOUT", "1s"),
            ("LODGE_SERVER_MAX_CONNECTIONS", "2"),
        ],
    );
    let addr = hub.base.trim_start_matches("https://").to_owned();
    let started = std::time::Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        // The first bytes of a TLS record, and then nothing.
        s.write_all(&[0x16, 0x03, 0x01])
            .await
            .expect("partial hello");
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Both places are taken by handshakes that never finish.
    let refused = client(&ca)
        .get(format!("{}/api/health", hub.base))
        .send()
        .await;
    assert!(refused.is_err(), "served beyond the cap: {refused:?}");
    for s in &mut stalled {
        assert!(
            closed_within(s, Duration::from_secs(4)).await,
            "a stalled handshake is still open after {:?} (header_read_timeout 1s)",
            started.elapsed()
        );
    }
    // Their places are free again.
    let mut served = false;
    for _ in 0..20 {
        if client(&ca)
            .get(format!("{}/api/health", hub.base))
            .send()
            .await
            .is_ok()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "the hub does not serve once the stalled handshakes are gone"
    );
}
