//! Vault tests against a real SqliteStore in a temporary DATA_DIR. Tampering goes through a
//! second, raw SQLite connection to the same file.

use super::*;
use lodge_core::UserName;
use lodge_store::{NewUser, SqliteStore};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use std::os::unix::fs::PermissionsExt;

const ALICE_TOKEN: &str = "ghp_alice-7f3a9c-VERY-DISTINCTIVE";
const BOB_TOKEN: &str = "ghp_bob-0c4e21-ALSO-DISTINCTIVE";

struct Env {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    alice: i64,
    bob: i64,
}

impl Env {
    async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("lodge.db"))
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(s);
        let mut ids = Vec::new();
        for n in ["alice", "bob"] {
            let u = store
                .create_user(&NewUser {
                    name: UserName::parse(n).unwrap(),
                    admin: false,
                    profile: "default".into(),
                })
                .await
                .unwrap();
            ids.push(u.id);
        }
        Env {
            dir,
            store,
            alice: ids[0],
            bob: ids[1],
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn key_path(&self) -> PathBuf {
        self.path().join(KEY_FILE)
    }

    fn new_key_path(&self) -> PathBuf {
        self.path().join(NEW_KEY_FILE)
    }

    async fn open(&self) -> Result<Vault, VaultError> {
        Vault::open(self.store.clone(), self.path(), None).await
    }

    async fn open_env(&self, key: &str) -> Result<Vault, VaultError> {
        Vault::open(self.store.clone(), self.path(), Some(key)).await
    }

    async fn raw(&self) -> SqlitePool {
        let opts = SqliteConnectOptions::new().filename(self.path().join("lodge.db"));
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap()
    }

    async fn sealed(&self, user: i64, name: &str, field: &str) -> Vec<u8> {
        sqlx::query("SELECT sealed FROM secrets WHERE user_id = ? AND name = ? AND field = ?")
            .bind(user)
            .bind(name)
            .bind(field)
            .fetch_one(&self.raw().await)
            .await
            .unwrap()
            .get("sealed")
    }

    async fn set_sealed(&self, user: i64, name: &str, field: &str, sealed: &[u8]) {
        let n = sqlx::query(
            "UPDATE secrets SET sealed = ? WHERE user_id = ? AND name = ? AND field = ?",
        )
        .bind(sealed)
        .bind(user)
        .bind(name)
        .bind(field)
        .execute(&self.raw().await)
        .await
        .unwrap()
        .rows_affected();
        assert_eq!(n, 1);
    }
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Zeroizing::new(v.to_string())))
        .collect()
}

fn plain(f: &Fields) -> Vec<(String, String)> {
    f.iter()
        .map(|(k, v)| (k.clone(), v.as_str().to_string()))
        .collect()
}

fn b64_key() -> String {
    MasterKey::generate().unwrap().encode().trim().to_string()
}

async fn put_github(v: &Vault, e: &Env) {
    v.put(
        e.alice,
        "github",
        fields(&[("token", ALICE_TOKEN), ("user", "alice-gh")]),
    )
    .await
    .unwrap();
    v.put(
        e.bob,
        "github",
        fields(&[("token", BOB_TOKEN), ("user", "bob-gh")]),
    )
    .await
    .unwrap();
}

async fn assert_github_readable(v: &Vault, e: &Env) {
    assert_eq!(
        v.get_field(e.alice, "github", "token")
            .await
            .unwrap()
            .as_str(),
        ALICE_TOKEN
    );
    assert_eq!(
        v.get_field(e.bob, "github", "token")
            .await
            .unwrap()
            .as_str(),
        BOB_TOKEN
    );
    assert_eq!(
        v.get_field(e.bob, "github", "user").await.unwrap().as_str(),
        "bob-gh"
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn put_get_list_delete_round_trip() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    put_github(&v, &e).await;
    v.put(e.alice, "imap", fields(&[("password", "hunter2")]))
        .await
        .unwrap();
    assert_eq!(
        plain(&v.get(e.alice, "github").await.unwrap()),
        vec![
            ("token".into(), ALICE_TOKEN.into()),
            ("user".into(), "alice-gh".into())
        ]
    );
    let list = v.list(e.alice).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].name, "github");
    assert_eq!(list[0].fields, vec!["token", "user"]);
    assert!(list[0].updated.ends_with('Z'), "{}", list[0].updated);
    assert_eq!(list[1].name, "imap");
    let json = serde_json::to_string(&list).unwrap_or_default();
    assert!(!json.contains(ALICE_TOKEN) && !json.contains("hunter2"));
    // Users see only their own.
    assert_eq!(v.list(e.bob).await.unwrap().len(), 1);
    assert!(matches!(
        v.get(e.bob, "imap").await,
        Err(VaultError::NotFound { .. })
    ));

    assert!(matches!(
        v.get_field(e.alice, "github", "nope").await,
        Err(VaultError::FieldNotFound { .. })
    ));
    assert!(matches!(
        v.delete(e.alice, "github", Some("nope")).await,
        Err(VaultError::FieldNotFound { .. })
    ));
    v.delete(e.alice, "github", Some("user")).await.unwrap();
    assert_eq!(
        plain(&v.get(e.alice, "github").await.unwrap()),
        vec![("token".into(), ALICE_TOKEN.into())]
    );
    v.delete(e.alice, "github", None).await.unwrap();
    assert!(matches!(
        v.get(e.alice, "github").await,
        Err(VaultError::NotFound { .. })
    ));
    assert!(matches!(
        v.delete(e.alice, "github", None).await,
        Err(VaultError::NotFound { .. })
    ));
    assert!(matches!(
        v.delete(e.alice, "github", Some("token")).await,
        Err(VaultError::NotFound { .. })
    ));
    // Deleting the last field removes the secret.
    v.delete(e.alice, "imap", Some("password")).await.unwrap();
    assert!(v.list(e.alice).await.unwrap().is_empty());
    // Bob's secret is untouched by all of that.
    assert_github_readable_bob(&v, &e).await;
}

async fn assert_github_readable_bob(v: &Vault, e: &Env) {
    assert_eq!(
        v.get_field(e.bob, "github", "token")
            .await
            .unwrap()
            .as_str(),
        BOB_TOKEN
    );
}

#[tokio::test]
async fn put_merges_fields() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    v.put(
        e.alice,
        "github",
        fields(&[("token", "t1"), ("user", "u1")]),
    )
    .await
    .unwrap();
    v.put(e.alice, "github", fields(&[("token", "t2"), ("host", "h")]))
        .await
        .unwrap();
    assert_eq!(
        plain(&v.get(e.alice, "github").await.unwrap()),
        vec![
            ("host".into(), "h".into()),
            ("token".into(), "t2".into()),
            ("user".into(), "u1".into())
        ]
    );
}

#[tokio::test]
async fn names_and_limits_are_checked() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    for bad in ["", "1abc", "-a", "a b", "a.b", "é", &"a".repeat(65)] {
        let r = v.put(e.alice, bad, fields(&[("f", "v")])).await;
        assert!(
            matches!(
                r,
                Err(VaultError::InvalidName {
                    kind: "secret name",
                    ..
                })
            ),
            "{bad:?}: {r:?}"
        );
        let r = v.put(e.alice, "ok", fields(&[(bad, "v")])).await;
        assert!(
            matches!(
                r,
                Err(VaultError::InvalidName {
                    kind: "field name",
                    ..
                })
            ),
            "{bad:?}: {r:?}"
        );
    }
    validate_secret_name(&format!("a{}", "b-_9".repeat(15) + "xyz")).unwrap();
    assert!(matches!(
        v.put(e.alice, "ok", Fields::new()).await,
        Err(VaultError::NoFields { .. })
    ));
    let big = "x".repeat(MAX_VALUE_BYTES);
    v.put(e.alice, "big", fields(&[("v", &big)])).await.unwrap();
    let too_big = "x".repeat(MAX_VALUE_BYTES + 1);
    let err = v
        .put(e.alice, "big", fields(&[("v", &too_big)]))
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::TooLarge { .. }));
    assert!(!err.to_string().contains("xxxx"), "{err}");
    // 32 fields at once pass; a 33rd by merging does not.
    let names: Vec<String> = (0..MAX_FIELDS).map(|i| format!("f{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    v.put(e.alice, "many", fields(&many)).await.unwrap();
    v.put(e.alice, "many", fields(&[("f0", "again")]))
        .await
        .unwrap();
    assert!(matches!(
        v.put(e.alice, "many", fields(&[("extra", "v")])).await,
        Err(VaultError::TooLarge { .. })
    ));
    let names: Vec<String> = (0..=MAX_FIELDS).map(|i| format!("f{i}")).collect();
    let too_many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    assert!(matches!(
        v.put(e.alice, "other", fields(&too_many)).await,
        Err(VaultError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn first_open_creates_a_private_key_file_and_the_next_open_uses_it() {
    let e = Env::new().await;
    assert!(!e.key_path().exists());
    let v = e.open().await.unwrap();
    assert_eq!(v.key_source(), MasterKeySource::File(e.key_path()));
    assert_eq!(mode(&e.key_path()), 0o600);
    let text = std::fs::read_to_string(e.key_path()).unwrap();
    assert_eq!(text.len(), 45, "44 base64 characters and a newline");
    MasterKey::parse(&text, &MasterKeySource::Env).unwrap();
    put_github(&v, &e).await;
    drop(v);
    let v = e.open().await.unwrap();
    assert_github_readable(&v, &e).await;
    assert_eq!(std::fs::read_to_string(e.key_path()).unwrap(), text);
    // The key is not in Debug output.
    let dbg = format!("{v:?}");
    assert!(!dbg.contains(text.trim()), "{dbg}");
}

#[tokio::test]
async fn an_env_key_on_first_start_creates_no_file() {
    let e = Env::new().await;
    let key = b64_key();
    let v = e.open_env(&key).await.unwrap();
    assert_eq!(v.key_source(), MasterKeySource::Env);
    assert!(!e.key_path().exists());
    put_github(&v, &e).await;
    drop(v);
    let v = e.open_env(&format!("{key}\n")).await.unwrap();
    assert_github_readable(&v, &e).await;
    // The same key as hex works too.
    let hex: String = MasterKey::parse(&key, &MasterKeySource::Env)
        .unwrap()
        .bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_github_readable(&e.open_env(&hex).await.unwrap(), &e).await;
    // Without the env key there is no key at all: refused, nothing created.
    assert!(matches!(
        e.open().await,
        Err(VaultError::MissingMasterKey { .. })
    ));
    assert!(!e.key_path().exists());
}

#[tokio::test]
async fn a_missing_key_after_setup_is_refused_and_not_recreated() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    put_github(&v, &e).await;
    drop(v);
    let backup = e.path().join("backup.key");
    std::fs::rename(e.key_path(), &backup).unwrap();
    let err = e.open().await.unwrap_err();
    assert!(matches!(err, VaultError::MissingMasterKey { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("master.key") && msg.contains("backup"),
        "{msg}"
    );
    assert!(!e.key_path().exists());
    std::fs::rename(&backup, e.key_path()).unwrap();
    assert_github_readable(&e.open().await.unwrap(), &e).await;
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_nothing_is_reset() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    put_github(&v, &e).await;
    drop(v);
    let original = std::fs::read(e.key_path()).unwrap();

    let err = e.open_env(&b64_key()).await.unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::WrongMasterKey {
                key_source: MasterKeySource::Env
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("does not match")
            && msg.contains("LODGE_MASTER_KEY")
            && msg.contains("NOT reset"),
        "{msg}"
    );

    let other = MasterKey::generate().unwrap();
    std::fs::write(e.key_path(), other.encode().as_bytes()).unwrap();
    let err = e.open().await.unwrap_err();
    assert!(
        matches!(&err, VaultError::WrongMasterKey { key_source: MasterKeySource::File(p) } if *p == e.key_path()),
        "{err}"
    );

    std::fs::write(e.key_path(), &original).unwrap();
    let v = e.open().await.unwrap();
    assert_github_readable(&v, &e).await;
    assert_eq!(v.list(e.alice).await.unwrap().len(), 1);
}

#[tokio::test]
async fn badly_encoded_keys_are_refused_with_their_source() {
    let e = Env::new().await;
    drop(e.open().await.unwrap());
    for bad in ["not a key", "", "AAAA", &"ab".repeat(31)] {
        let err = e.open_env(bad).await.unwrap_err();
        assert!(
            matches!(
                err,
                VaultError::BadMasterKey {
                    key_source: MasterKeySource::Env,
                    ..
                }
            ),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains("LODGE_MASTER_KEY"), "{err}");
    }
    std::fs::write(e.key_path(), "garbage-garbage\n").unwrap();
    let err = e.open().await.unwrap_err();
    assert!(
        matches!(
            &err,
            VaultError::BadMasterKey {
                key_source: MasterKeySource::File(_),
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("master.key") && !msg.contains("garbage"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_key_file_readable_by_others_is_refused() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    put_github(&v, &e).await;
    drop(v);
    for m in [0o640, 0o604, 0o660] {
        std::fs::set_permissions(e.key_path(), std::fs::Permissions::from_mode(m)).unwrap();
        let err = e.open().await.unwrap_err();
        assert!(matches!(err, VaultError::InsecureKeyFile { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    std::fs::set_permissions(e.key_path(), std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_github_readable(&e.open().await.unwrap(), &e).await;
}

#[tokio::test]
async fn a_tampered_value_fails_with_a_clear_error() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    put_github(&v, &e).await;
    let mut blob = e.sealed(e.alice, "github", "token").await;
    let last = blob.len() - 1;
    blob[last] ^= 1;
    e.set_sealed(e.alice, "github", "token", &blob).await;
    let err = v.get_field(e.alice, "github", "token").await.unwrap_err();
    assert!(
        matches!(&err, VaultError::Corrupt { user, name, field } if *user == e.alice && name == "github" && field == "token"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("github") && msg.contains("token") && msg.contains("altered or moved"),
        "{msg}"
    );
    assert!(!msg.contains(ALICE_TOKEN));
    assert!(matches!(
        v.get(e.alice, "github").await,
        Err(VaultError::Corrupt { .. })
    ));
    // The untouched field still opens, and so does a value put again.
    assert_eq!(
        v.get_field(e.alice, "github", "user")
            .await
            .unwrap()
            .as_str(),
        "alice-gh"
    );
    v.put(e.alice, "github", fields(&[("token", "fresh")]))
        .await
        .unwrap();
    assert_eq!(
        v.get_field(e.alice, "github", "token")
            .await
            .unwrap()
            .as_str(),
        "fresh"
    );
    // A truncated blob too.
    e.set_sealed(e.alice, "github", "user", b"short").await;
    assert!(matches!(
        v.get_field(e.alice, "github", "user").await,
        Err(VaultError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn rows_moved_between_users_secrets_or_fields_fail() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    put_github(&v, &e).await;
    v.put(e.alice, "gitlab", fields(&[("token", "alice-gitlab")]))
        .await
        .unwrap();

    // Bob's ciphertext copied into Alice's row.
    let bobs = e.sealed(e.bob, "github", "token").await;
    e.set_sealed(e.alice, "github", "token", &bobs).await;
    let err = v.get_field(e.alice, "github", "token").await.unwrap_err();
    assert!(matches!(err, VaultError::Corrupt { .. }), "{err}");
    assert!(!err.to_string().contains(BOB_TOKEN));

    // Two fields of one secret swapped.
    let token = e.sealed(e.bob, "github", "token").await;
    let user = e.sealed(e.bob, "github", "user").await;
    e.set_sealed(e.bob, "github", "token", &user).await;
    e.set_sealed(e.bob, "github", "user", &token).await;
    assert!(matches!(
        v.get_field(e.bob, "github", "token").await,
        Err(VaultError::Corrupt { .. })
    ));
    assert!(matches!(
        v.get_field(e.bob, "github", "user").await,
        Err(VaultError::Corrupt { .. })
    ));

    // One secret's value moved to another secret of the same user.
    let gitlab = e.sealed(e.alice, "gitlab", "token").await;
    e.set_sealed(e.alice, "github", "user", &gitlab).await;
    assert!(matches!(
        v.get_field(e.alice, "github", "user").await,
        Err(VaultError::Corrupt { .. })
    ));
    assert_eq!(
        v.get_field(e.alice, "gitlab", "token")
            .await
            .unwrap()
            .as_str(),
        "alice-gitlab"
    );

    // A data key moved from one user to another.
    let raw = e.raw().await;
    sqlx::query(
        "UPDATE vault_keys SET wrapped = (SELECT wrapped FROM vault_keys WHERE user_id = ?) \
         WHERE user_id = ?",
    )
    .bind(e.bob)
    .bind(e.alice)
    .execute(&raw)
    .await
    .unwrap();
    let err = v.get_field(e.alice, "gitlab", "token").await.unwrap_err();
    assert!(matches!(err, VaultError::CorruptDataKey { .. }), "{err}");
}

fn find_in_dir(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            hits.extend(find_in_dir(&p, needle));
        } else {
            let bytes = std::fs::read(&p).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(p);
            }
        }
    }
    hits
}

#[tokio::test]
async fn no_plaintext_value_reaches_the_disk() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    put_github(&v, &e).await;
    v.put(
        e.alice,
        "github",
        fields(&[("user", "alice-merged-9d8e7f")]),
    )
    .await
    .unwrap();
    // The search works: a name is stored in clear and is found.
    assert!(!find_in_dir(e.path(), b"github").is_empty());
    for value in [ALICE_TOKEN, BOB_TOKEN, "alice-merged-9d8e7f"] {
        let hits = find_in_dir(e.path(), value.as_bytes());
        assert!(hits.is_empty(), "{value} found in {hits:?}");
    }
    // Rotation rewrites keys, not values; still nothing.
    v.rotate_master_key(e.path()).await.unwrap();
    assert!(find_in_dir(e.path(), ALICE_TOKEN.as_bytes()).is_empty());
}

#[tokio::test]
async fn rotation_rewraps_every_key_and_retires_the_old_one() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    put_github(&v, &e).await;
    let before = std::fs::read_to_string(e.key_path()).unwrap();
    let wrapped_before = e.store.all_data_keys().await.unwrap();
    let source = v.rotate_master_key(e.path()).await.unwrap();
    assert_eq!(source, MasterKeySource::File(e.key_path()));
    let after = std::fs::read_to_string(e.key_path()).unwrap();
    assert_ne!(before, after);
    assert_eq!(mode(&e.key_path()), 0o600);
    assert!(!e.new_key_path().exists());
    let wrapped_after = e.store.all_data_keys().await.unwrap();
    assert_eq!(wrapped_before.len(), 2);
    assert_eq!(wrapped_after.len(), 2);
    for (b, a) in wrapped_before.iter().zip(&wrapped_after) {
        assert_eq!(b.0, a.0);
        assert_ne!(b.1, a.1);
    }
    // The same vault keeps working, new users included.
    assert_github_readable(&v, &e).await;
    drop(v);
    let v = e.open().await.unwrap();
    assert_github_readable(&v, &e).await;
    // The old key no longer opens the vault.
    assert!(matches!(
        e.open_env(before.trim()).await,
        Err(VaultError::WrongMasterKey { .. })
    ));
    // Twice in a row is fine.
    v.rotate_master_key(e.path()).await.unwrap();
    assert_github_readable(&e.open().await.unwrap(), &e).await;
}

#[tokio::test]
async fn crash_after_writing_the_new_key_keeps_the_old_one() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    put_github(&v, &e).await;
    drop(v);
    let before = std::fs::read(e.key_path()).unwrap();
    // Step 1 done, the store untouched, then the process died.
    write_new_key(e.path(), &MasterKey::generate().unwrap()).unwrap();
    assert!(e.new_key_path().exists());
    let v = e.open().await.unwrap();
    assert!(
        !e.new_key_path().exists(),
        "the stale new key was not removed"
    );
    assert_eq!(std::fs::read(e.key_path()).unwrap(), before);
    assert_github_readable(&v, &e).await;
    // A half-written temporary file goes too.
    std::fs::write(e.path().join("master.key.new.tmp"), "half").unwrap();
    drop(e.open().await.unwrap());
    assert!(!e.path().join("master.key.new.tmp").exists());
}

#[tokio::test]
async fn crash_after_the_commit_finishes_the_rotation_at_open() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    put_github(&v, &e).await;
    let before = std::fs::read(e.key_path()).unwrap();
    // Steps 1 and 2 done, the rename not: the store already uses the new key.
    let new = MasterKey::generate().unwrap();
    let new_text = new.encode().to_string();
    write_new_key(e.path(), &new).unwrap();
    let st = v.current();
    rewrap(&*e.store, &st, &new).await.unwrap();
    drop(v);
    assert_eq!(std::fs::read(e.key_path()).unwrap(), before);
    let v = e.open().await.unwrap();
    assert_eq!(std::fs::read_to_string(e.key_path()).unwrap(), new_text);
    assert!(!e.new_key_path().exists());
    assert_eq!(mode(&e.key_path()), 0o600);
    assert_eq!(v.key_source(), MasterKeySource::File(e.key_path()));
    assert_github_readable(&v, &e).await;
    drop(v);
    assert_github_readable(&e.open().await.unwrap(), &e).await;
}

#[tokio::test]
async fn rotation_with_an_env_key_keeps_the_new_key_in_a_file() {
    let e = Env::new().await;
    let old = b64_key();
    let v = e.open_env(&old).await.unwrap();
    put_github(&v, &e).await;
    let source = v.rotate_master_key(e.path()).await.unwrap();
    assert_eq!(source, MasterKeySource::Env);
    assert!(!e.key_path().exists(), "an env-key vault got a master.key");
    assert_eq!(mode(&e.new_key_path()), 0o600);
    let new = std::fs::read_to_string(e.new_key_path()).unwrap();
    assert_github_readable(&v, &e).await;
    // A second rotation before the operator moved the key is refused.
    let err = v.rotate_master_key(e.path()).await.unwrap_err();
    assert!(matches!(err, VaultError::RotationRefused { .. }), "{err}");
    drop(v);

    // Started again with the outdated env key: the file's key is used.
    let v = e.open_env(&old).await.unwrap();
    assert_eq!(v.key_source(), MasterKeySource::File(e.new_key_path()));
    assert_github_readable(&v, &e).await;
    assert!(matches!(
        v.rotate_master_key(e.path()).await,
        Err(VaultError::RotationRefused { .. })
    ));
    drop(v);

    // The operator moved it into the env: works, and the file (same key) is left alone.
    let v = e.open_env(new.trim()).await.unwrap();
    assert_eq!(v.key_source(), MasterKeySource::Env);
    assert!(e.new_key_path().exists());
    assert_github_readable(&v, &e).await;
    // Then deleted the file: still fine, and the next rotation works again.
    std::fs::remove_file(e.new_key_path()).unwrap();
    drop(v);
    let v = e.open_env(new.trim()).await.unwrap();
    assert_eq!(
        v.rotate_master_key(e.path()).await.unwrap(),
        MasterKeySource::Env
    );
    assert_github_readable(&v, &e).await;
    // The old env key, with the new file gone, is refused.
    std::fs::remove_file(e.new_key_path()).unwrap();
    assert!(matches!(
        e.open_env(&old).await,
        Err(VaultError::WrongMasterKey { .. })
    ));
}

#[tokio::test]
async fn env_key_crash_after_writing_the_new_key_keeps_the_old_one() {
    let e = Env::new().await;
    let key = b64_key();
    let v = e.open_env(&key).await.unwrap();
    put_github(&v, &e).await;
    drop(v);
    write_new_key(e.path(), &MasterKey::generate().unwrap()).unwrap();
    let v = e.open_env(&key).await.unwrap();
    assert_eq!(v.key_source(), MasterKeySource::Env);
    assert!(!e.new_key_path().exists());
    assert_github_readable(&v, &e).await;
}

#[tokio::test]
async fn a_running_vault_follows_a_rotation_by_another_process() {
    let e = Env::new().await;
    let hub = e.open().await.unwrap();
    put_github(&hub, &e).await;
    let cli = e.open().await.unwrap();
    cli.rotate_master_key(e.path()).await.unwrap();
    // The hub still holds the old key: it reloads instead of failing.
    assert_github_readable(&hub, &e).await;
    // A data key made by the hub after the rotation is wrapped with the new key.
    let carol = e
        .store
        .create_user(&NewUser {
            name: UserName::parse("carol").unwrap(),
            admin: false,
            profile: "default".into(),
        })
        .await
        .unwrap()
        .id;
    let hub2 = e.open().await.unwrap();
    cli.rotate_master_key(e.path()).await.unwrap();
    hub2.put(carol, "k", fields(&[("v", "carol-value")]))
        .await
        .unwrap();
    let fresh = e.open().await.unwrap();
    assert_eq!(
        fresh.get_field(carol, "k", "v").await.unwrap().as_str(),
        "carol-value"
    );
    assert_github_readable(&fresh, &e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_puts_agree_on_one_data_key() {
    let e = Env::new().await;
    let v1 = Arc::new(e.open().await.unwrap());
    let v2 = Arc::new(e.open().await.unwrap());
    for i in 0..20 {
        let user = e
            .store
            .create_user(&NewUser {
                name: UserName::parse(&format!("u{i}")).unwrap(),
                admin: false,
                profile: "default".into(),
            })
            .await
            .unwrap()
            .id;
        let (a, b) = (v1.clone(), v2.clone());
        let t1 = tokio::spawn(async move { a.put(user, "one", fields(&[("v", "value-1")])).await });
        let t2 = tokio::spawn(async move { b.put(user, "two", fields(&[("v", "value-2")])).await });
        t1.await.unwrap().unwrap();
        t2.await.unwrap().unwrap();
        let n: i64 = sqlx::query("SELECT count(*) AS n FROM vault_keys WHERE user_id = ?")
            .bind(user)
            .fetch_one(&e.raw().await)
            .await
            .unwrap()
            .get("n");
        assert_eq!(n, 1);
        assert_eq!(
            v1.get_field(user, "two", "v").await.unwrap().as_str(),
            "value-2"
        );
        assert_eq!(
            v2.get_field(user, "one", "v").await.unwrap().as_str(),
            "value-1"
        );
    }
}

#[tokio::test]
async fn removing_a_user_removes_their_secrets() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    put_github(&v, &e).await;
    assert!(
        e.store
            .remove_user(&UserName::parse("alice").unwrap())
            .await
            .unwrap()
    );
    assert!(v.list(e.alice).await.unwrap().is_empty());
    assert_eq!(e.store.data_key(e.alice).await.unwrap(), None);
    assert_github_readable_bob(&v, &e).await;
    // And rotation copes with the smaller set.
    v.rotate_master_key(e.path()).await.unwrap();
    assert_github_readable_bob(&e.open().await.unwrap(), &e).await;
}

#[tokio::test]
async fn a_deleted_verifier_with_data_keys_is_not_silently_reset() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    put_github(&v, &e).await;
    drop(v);
    std::fs::remove_file(e.key_path()).unwrap();
    sqlx::query("DELETE FROM vault_meta")
        .execute(&e.raw().await)
        .await
        .unwrap();
    assert!(matches!(e.open().await, Err(VaultError::MissingVerifier)));
    assert!(!e.key_path().exists());
}

#[tokio::test]
async fn internal_values_open_only_as_their_user_and_purpose_and_are_not_secrets() {
    let e = Env::new().await;
    let v = e.open().await.unwrap();
    let sealed = v
        .seal_internal(e.alice, "oidc-refresh", "refresh-token-value")
        .await
        .unwrap();
    assert!(!sealed.windows(7).any(|w| w == b"refresh"), "not in clear");
    assert_eq!(
        v.open_internal(e.alice, "oidc-refresh", &sealed)
            .await
            .unwrap()
            .as_str(),
        "refresh-token-value"
    );
    assert!(v.open_internal(e.alice, "other", &sealed).await.is_err());
    v.put(e.bob, "x", fields(&[("f", "v")])).await.unwrap();
    assert!(
        v.open_internal(e.bob, "oidc-refresh", &sealed)
            .await
            .is_err()
    );
    assert!(v.list(e.alice).await.unwrap().is_empty(), "never listed");
}
