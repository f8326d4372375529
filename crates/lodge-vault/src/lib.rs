//! Lodge's secret vault: per-user named secrets with fields (`github` → `token`, `user`),
//! encrypted at rest with envelope encryption.
//!
//! - Each user has a random 32-byte data key; each field value is sealed with it
//!   (XChaCha20-Poly1305, random nonce) with the user id, secret name and field name as
//!   associated data, so a value copied to another user, secret or field does not open.
//! - Data keys are wrapped by the master key, from `LODGE_MASTER_KEY` or `DATA_DIR/master.key`
//!   (created 0600 on first start). The store holds a verifier sealed by the master key, so a
//!   wrong key is refused at start instead of yielding garbage, and a missing one is never
//!   silently replaced.
//! - [`Vault::rotate_master_key`] re-wraps every data key in one store transaction; a crash at
//!   any point loses nothing ([`Vault::open`] finishes or discards an interrupted rotation).
//!
//! This crate owns the crypto and the key files; the store only keeps opaque blobs. It must
//! never log, Debug-print or put into an error message a secret value or key: keys and
//! plaintexts live in `Zeroizing` buffers and their `Debug` is `<redacted>`; errors name the
//! secret, field, user id or key source, never a value.

mod crypto;
mod key;

pub use key::{MasterKey, MasterKeySource};

use crypto::DataKey;
use key::{KEY_FILE, NEW_KEY_FILE};
use lodge_store::{DataKeyRewrap, Store, StoreError};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use zeroize::Zeroizing;

/// A secret's fields and their values.
pub type Fields = BTreeMap<String, Zeroizing<String>>;

/// Largest field value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most fields a secret may hold.
pub const MAX_FIELDS: usize = 32;
/// The secret name in the associated data of [`Vault::seal_internal`] blobs: `@` is outside
/// the secret-name rule, so no user secret can be confused with them.
const INTERNAL_NAME: &str = "@hub";
/// Attempts at a step that another process can make stale (a rotation elsewhere, a user added).
const ATTEMPTS: usize = 5;

/// One secret as listed: names, never values.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SecretInfo {
    pub name: String,
    pub fields: Vec<String>,
    /// RFC 3339 time of the latest change to any of its fields.
    pub updated: String,
}

/// Everything that can go wrong. Messages name what was wrong and the fix, never a value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "the master key from {key_source} does not match this vault (it was created with another \
         key): restore the right DATA_DIR/master.key or LODGE_MASTER_KEY; secrets are NOT reset"
    )]
    WrongMasterKey { key_source: MasterKeySource },
    #[error(
        "the vault's master key is missing: LODGE_MASTER_KEY is not set and {} does not exist. \
         Restore the file from your backup (or set LODGE_MASTER_KEY); a new key is not created \
         for an existing vault, since it could not decrypt the stored secrets",
        path.display()
    )]
    MissingMasterKey { path: PathBuf },
    #[error(
        "the master key in {key_source} is not valid ({reason}): expected 32 random bytes as \
         standard base64 (44 characters) or as 64 hex digits"
    )]
    BadMasterKey {
        key_source: MasterKeySource,
        reason: String,
    },
    #[error(
        "{} can be accessed by group or others (mode {mode:03o}): run `chmod 600 {}` (and make \
         sure only the user running Lodge owns it)",
        path.display(),
        path.display()
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },
    #[error(
        "the vault's key check is missing from the database while data keys are stored: the \
         database was altered; restore it from a backup"
    )]
    MissingVerifier,
    #[error(
        "the master key was changed by a rotation in another process and the new key is in \
         neither {} nor {}: restart Lodge with the new key",
        dir.join(KEY_FILE).display(),
        dir.join(NEW_KEY_FILE).display()
    )]
    KeyChanged { dir: PathBuf },
    #[error(
        "cannot unwrap the data key of user id {user}: it is missing, or was altered or moved; \
         restore the database from a backup, or delete this user's secrets and put them again"
    )]
    CorruptDataKey { user: i64 },
    #[error(
        "cannot decrypt secret {name} field {field} of user id {user}: the stored value was \
         altered or moved; restore it or put it again"
    )]
    Corrupt {
        user: i64,
        name: String,
        field: String,
    },
    #[error("no secret named {name}")]
    NotFound { name: String },
    #[error("secret {name} has no field {field}")]
    FieldNotFound { name: String, field: String },
    /// The name itself is not repeated: a value pasted in the wrong argument must not come
    /// back in an error.
    #[error(
        "invalid {kind} (the {chars} characters given are not shown): it must start with a \
         letter, followed by at most 63 letters, digits, '_' or '-'"
    )]
    InvalidName { kind: &'static str, chars: usize },
    #[error("secret {name} needs at least one field")]
    NoFields { name: String },
    #[error("too large: {what}")]
    TooLarge { what: String },
    #[error("cannot rotate the master key: {reason}")]
    RotationRefused { reason: String },
    #[error("the system's random number generator failed: {0}")]
    Random(String),
    #[error("encryption failed: {0}")]
    Crypto(&'static str),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a secret name (also the rule for field names): `^[A-Za-z][A-Za-z0-9_-]{0,63}$`.
pub fn validate_secret_name(s: &str) -> Result<(), VaultError> {
    check_name("secret name", s)
}

fn validate_field_name(s: &str) -> Result<(), VaultError> {
    check_name("field name", s)
}

fn check_name(kind: &'static str, s: &str) -> Result<(), VaultError> {
    if lodge_core::servers::valid_secret_name(s) {
        return Ok(());
    }
    Err(VaultError::InvalidName {
        kind,
        chars: s.chars().count(),
    })
}

/// The master key in use, with the verifier it opens and where it came from.
struct KeyState {
    key: MasterKey,
    verifier: Vec<u8>,
    source: MasterKeySource,
}

/// The vault: secrets of every user, sealed in the store. Cheap to share (`Arc<Vault>`).
pub struct Vault {
    store: Arc<dyn Store>,
    data_dir: PathBuf,
    env_mode: bool,
    state: RwLock<Arc<KeyState>>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("data_dir", &self.data_dir)
            .field("key_source", &self.key_source())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Loads the master key (`env_key` first, else `DATA_DIR/master.key`) and checks it against
    /// the store's verifier.
    ///
    /// - First start (no verifier and no key anywhere): creates `master.key` (0600, 32 random
    ///   bytes as base64), stores the verifier and logs a warning to back the file up. With a
    ///   key but no verifier (an env key on first start), the vault is set up with that key.
    /// - A verifier but no key: [`VaultError::MissingMasterKey`]; nothing is created.
    /// - A key that does not match: [`VaultError::WrongMasterKey`].
    /// - An interrupted rotation is finished (the DB committed: `master.key.new` is the key) or
    ///   discarded (it did not: the stale `master.key.new` is removed), with a log line.
    pub async fn open(
        store: Arc<dyn Store>,
        data_dir: &Path,
        env_key: Option<&str>,
    ) -> Result<Vault, VaultError> {
        let _lock = key::lock(data_dir).await?;
        key::remove_temp_files(data_dir)?;
        let state = resolve(&*store, data_dir, env_key).await?;
        Ok(Vault {
            store,
            data_dir: data_dir.to_path_buf(),
            env_mode: env_key.is_some(),
            state: RwLock::new(Arc::new(state)),
        })
    }

    /// Where the master key in use came from.
    pub fn key_source(&self) -> MasterKeySource {
        self.current().source.clone()
    }

    /// Stores `fields` into secret `name` of the user: given fields are replaced, others kept.
    pub async fn put(&self, user_id: i64, name: &str, fields: Fields) -> Result<(), VaultError> {
        validate_secret_name(name)?;
        if fields.is_empty() {
            return Err(VaultError::NoFields { name: name.into() });
        }
        for (field, value) in &fields {
            validate_field_name(field)?;
            if value.len() > MAX_VALUE_BYTES {
                return Err(VaultError::TooLarge {
                    what: format!(
                        "field {field} of secret {name} is {} bytes; a value may hold at most \
                         {MAX_VALUE_BYTES}",
                        value.len()
                    ),
                });
            }
        }
        // Checked before writing; two concurrent puts of new fields can pass it together.
        let existing = self.store.list_secrets(user_id).await?;
        let kept = existing
            .iter()
            .filter(|r| r.name == name && !fields.contains_key(&r.field))
            .count();
        if kept + fields.len() > MAX_FIELDS {
            return Err(VaultError::TooLarge {
                what: format!(
                    "secret {name} would have {} fields; a secret may hold at most {MAX_FIELDS}",
                    kept + fields.len()
                ),
            });
        }
        let dk = self
            .data_key(user_id, true)
            .await?
            .ok_or(VaultError::CorruptDataKey { user: user_id })?;
        let mut sealed = Vec::with_capacity(fields.len());
        for (field, value) in &fields {
            let blob = crypto::seal_value(&dk, user_id, name, field, value)?;
            sealed.push((field.clone(), blob));
        }
        drop(fields);
        self.store
            .put_secret_fields(user_id, name, &sealed, lodge_core::time::now_ms())
            .await?;
        Ok(())
    }

    /// Seals a value the hub keeps for the user outside the secrets (the sign-in provider's
    /// refresh token), with the user's data key. The associated data names `purpose` under a
    /// name no secret can have (`@…`), so the blob opens only as this user's `purpose` and
    /// never appears among the user's secrets. The caller stores the blob.
    pub async fn seal_internal(
        &self,
        user_id: i64,
        purpose: &str,
        value: &str,
    ) -> Result<Vec<u8>, VaultError> {
        let dk = self
            .data_key(user_id, true)
            .await?
            .ok_or(VaultError::CorruptDataKey { user: user_id })?;
        crypto::seal_value(&dk, user_id, INTERNAL_NAME, purpose, value)
    }

    /// Opens what [`Vault::seal_internal`] sealed for this user and `purpose`.
    pub async fn open_internal(
        &self,
        user_id: i64,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<String>, VaultError> {
        let dk = self.existing_data_key(user_id).await?;
        open_field(&dk, user_id, INTERNAL_NAME, purpose, sealed)
    }

    /// Every field of secret `name` of the user.
    pub async fn get(&self, user_id: i64, name: &str) -> Result<Fields, VaultError> {
        validate_secret_name(name)?;
        let rows = self.store.secret_fields(user_id, name).await?;
        if rows.is_empty() {
            return Err(VaultError::NotFound { name: name.into() });
        }
        let dk = self.existing_data_key(user_id).await?;
        let mut out = Fields::new();
        for (field, sealed) in rows {
            let value = open_field(&dk, user_id, name, &field, &sealed)?;
            out.insert(field, value);
        }
        Ok(out)
    }

    /// One field of secret `name` of the user.
    pub async fn get_field(
        &self,
        user_id: i64,
        name: &str,
        field: &str,
    ) -> Result<Zeroizing<String>, VaultError> {
        validate_secret_name(name)?;
        validate_field_name(field)?;
        let rows = self.store.secret_fields(user_id, name).await?;
        if rows.is_empty() {
            return Err(VaultError::NotFound { name: name.into() });
        }
        let Some((_, sealed)) = rows.iter().find(|(f, _)| f == field) else {
            return Err(VaultError::FieldNotFound {
                name: name.into(),
                field: field.into(),
            });
        };
        let dk = self.existing_data_key(user_id).await?;
        open_field(&dk, user_id, name, field, sealed)
    }

    /// The user's secrets, by name, with their field names (no values, nothing decrypted).
    pub async fn list(&self, user_id: i64) -> Result<Vec<SecretInfo>, VaultError> {
        let rows = self.store.list_secrets(user_id).await?;
        let mut out: Vec<(SecretInfo, i64)> = Vec::new();
        for r in rows {
            match out.last_mut() {
                Some((info, updated)) if info.name == r.name => {
                    info.fields.push(r.field);
                    *updated = (*updated).max(r.updated_ms);
                }
                _ => out.push((
                    SecretInfo {
                        name: r.name,
                        fields: vec![r.field],
                        updated: String::new(),
                    },
                    r.updated_ms,
                )),
            }
        }
        Ok(out
            .into_iter()
            .map(|(mut info, ms)| {
                info.updated = lodge_core::time::rfc3339(ms);
                info
            })
            .collect())
    }

    /// Deletes secret `name` of the user, or only its `field` (the secret goes when its last
    /// field does). [`VaultError::NotFound`] / [`VaultError::FieldNotFound`] if absent.
    pub async fn delete(
        &self,
        user_id: i64,
        name: &str,
        field: Option<&str>,
    ) -> Result<(), VaultError> {
        validate_secret_name(name)?;
        if let Some(f) = field {
            validate_field_name(f)?;
        }
        if self.store.delete_secret(user_id, name, field).await? > 0 {
            return Ok(());
        }
        match field {
            Some(f) if !self.store.secret_fields(user_id, name).await?.is_empty() => {
                Err(VaultError::FieldNotFound {
                    name: name.into(),
                    field: f.into(),
                })
            }
            _ => Err(VaultError::NotFound { name: name.into() }),
        }
    }

    /// Re-wraps every data key under a new random master key, crash-safe:
    /// 1. the new key is written to `DATA_DIR/master.key.new` (0600, fsynced);
    /// 2. one store transaction re-wraps every data key and replaces the verifier;
    /// 3. `master.key.new` is renamed over `master.key`.
    ///
    /// With the key from `LODGE_MASTER_KEY`, step 3 is skipped: `master.key.new` stays, and the
    /// returned [`MasterKeySource::Env`] tells the caller to have the operator move its content
    /// into `LODGE_MASTER_KEY` and delete the file (until then, [`Vault::open`] uses the file
    /// and warns). Otherwise returns the `master.key` path.
    pub async fn rotate_master_key(&self, data_dir: &Path) -> Result<MasterKeySource, VaultError> {
        let _lock = key::lock(data_dir).await?;
        key::remove_temp_files(data_dir)?;
        let old = self.refreshed().await?;
        if self.env_mode {
            if old.source != MasterKeySource::Env {
                return Err(VaultError::RotationRefused {
                    reason: format!(
                        "the previous rotation is not finished: LODGE_MASTER_KEY holds an old key \
                         and the vault uses {}. Put that file's content into LODGE_MASTER_KEY, \
                         restart, and delete the file first",
                        old.source
                    ),
                });
            }
        } else {
            // Step 2 must not overwrite the only copy of the key in use.
            let primary = data_dir.join(KEY_FILE);
            let holds_it = key::read_key_file(&primary, true)?.is_some_and(|k| k.same_as(&old.key));
            if !holds_it {
                return Err(VaultError::RotationRefused {
                    reason: format!(
                        "{} does not hold the key this process uses; restart, then rotate",
                        primary.display()
                    ),
                });
            }
        }
        let new_key = MasterKey::generate()?;
        let new_path = write_new_key(data_dir, &new_key)?;
        let new_verifier = match rewrap(&*self.store, &old, &new_key).await {
            Ok(v) => v,
            Err(e) => {
                // Discard the new key only when the store surely still uses the old one; in any
                // other case the next open() decides from the verifier.
                if self.store.vault_verifier().await.ok().flatten().as_deref()
                    == Some(old.verifier.as_slice())
                {
                    let _ = key::remove_if_exists(&new_path);
                }
                return Err(e);
            }
        };
        let (source, in_use) = if self.env_mode {
            tracing::warn!(
                path = %new_path.display(),
                "rotated the master key: LODGE_MASTER_KEY now holds an OLD key; put the content \
                 of {} into LODGE_MASTER_KEY and delete the file",
                new_path.display()
            );
            (MasterKeySource::Env, MasterKeySource::File(new_path))
        } else {
            let path = install_new_key(data_dir)?;
            tracing::info!(path = %path.display(), "rotated the master key: back up the new {}", path.display());
            (
                MasterKeySource::File(path.clone()),
                MasterKeySource::File(path),
            )
        };
        self.set_state(KeyState {
            key: new_key,
            verifier: new_verifier,
            source: in_use,
        });
        Ok(source)
    }

    fn current(&self) -> Arc<KeyState> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_state(&self, s: KeyState) -> Arc<KeyState> {
        let s = Arc::new(s);
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = s.clone();
        s
    }

    /// The key state, reloaded first if another process rotated the key since.
    async fn refreshed(&self) -> Result<Arc<KeyState>, VaultError> {
        let cur = self.current();
        Ok(match self.reload(&cur).await? {
            Some(s) => s,
            None => cur,
        })
    }

    /// After a rotation by another process (the stored verifier is no longer `seen`'s), finds
    /// the new key in `master.key` or `master.key.new` and switches to it. None if the verifier
    /// did not change.
    async fn reload(&self, seen: &KeyState) -> Result<Option<Arc<KeyState>>, VaultError> {
        let verifier = self
            .store
            .vault_verifier()
            .await?
            .ok_or(VaultError::MissingVerifier)?;
        if verifier == seen.verifier {
            return Ok(None);
        }
        for name in [KEY_FILE, NEW_KEY_FILE] {
            let path = self.data_dir.join(name);
            if let Some(k) = key::read_key_file(&path, true)?
                && crypto::check_verifier(&k, &verifier)
            {
                tracing::warn!(
                    path = %path.display(),
                    "the master key was rotated by another process; now using {}",
                    path.display()
                );
                return Ok(Some(self.set_state(KeyState {
                    key: k,
                    verifier,
                    source: MasterKeySource::File(path),
                })));
            }
        }
        Err(VaultError::KeyChanged {
            dir: self.data_dir.clone(),
        })
    }

    /// The user's data key for reading: an error if it is missing or does not unwrap.
    async fn existing_data_key(&self, user_id: i64) -> Result<DataKey, VaultError> {
        self.data_key(user_id, false)
            .await?
            .ok_or(VaultError::CorruptDataKey { user: user_id })
    }

    /// The user's data key; with `create`, made on first use (concurrent first uses agree on
    /// one). None if there is none and `create` is false.
    async fn data_key(&self, user_id: i64, create: bool) -> Result<Option<DataKey>, VaultError> {
        for _ in 0..ATTEMPTS {
            let st = self.current();
            let wrapped = match self.store.data_key(user_id).await? {
                Some(w) => w,
                None if !create => return Ok(None),
                None => {
                    let dk = DataKey::generate()?;
                    let w = crypto::wrap_data_key(&st.key, user_id, &dk)?;
                    match self
                        .store
                        .insert_data_key(user_id, &w, &st.verifier)
                        .await?
                    {
                        // Ours, or the one a concurrent first put stored.
                        Some(stored) => stored,
                        None => {
                            // The master key was rotated meanwhile.
                            if self.reload(&st).await?.is_none() {
                                return Err(VaultError::MissingVerifier);
                            }
                            continue;
                        }
                    }
                }
            };
            if let Some(dk) = crypto::unwrap_data_key(&st.key, user_id, &wrapped) {
                return Ok(Some(dk));
            }
            if self.reload(&st).await?.is_none() {
                return Err(VaultError::CorruptDataKey { user: user_id });
            }
        }
        Err(VaultError::KeyChanged {
            dir: self.data_dir.clone(),
        })
    }
}

fn open_field(
    dk: &DataKey,
    user: i64,
    name: &str,
    field: &str,
    sealed: &[u8],
) -> Result<Zeroizing<String>, VaultError> {
    crypto::open_value(dk, user, name, field, sealed).ok_or_else(|| VaultError::Corrupt {
        user,
        name: name.into(),
        field: field.into(),
    })
}

/// Decides the master key at open (see [`Vault::open`]). Runs with the key lock held.
async fn resolve(
    store: &dyn Store,
    data_dir: &Path,
    env_key: Option<&str>,
) -> Result<KeyState, VaultError> {
    let primary_path = data_dir.join(KEY_FILE);
    let new_path = data_dir.join(NEW_KEY_FILE);
    let (primary, source) = match env_key {
        Some(text) => (
            Some(MasterKey::parse(text, &MasterKeySource::Env)?),
            MasterKeySource::Env,
        ),
        None => (
            key::read_key_file(&primary_path, true)?,
            MasterKeySource::File(primary_path.clone()),
        ),
    };
    let verifier = match store.vault_verifier().await? {
        Some(v) => v,
        None => {
            if !store.all_data_keys().await?.is_empty() {
                return Err(VaultError::MissingVerifier);
            }
            let created = primary.is_none();
            let key = match primary {
                Some(k) => k,
                None => {
                    let k = MasterKey::generate()?;
                    key::write_key_file(data_dir, KEY_FILE, &k)?;
                    k
                }
            };
            let verifier = crypto::seal_verifier(&key)?;
            if store.set_vault_verifier(&verifier).await? {
                if created {
                    tracing::warn!(
                        path = %primary_path.display(),
                        "created {}: back it up (without it the secrets cannot be decrypted), \
                         or move its content into LODGE_MASTER_KEY",
                        primary_path.display()
                    );
                } else {
                    tracing::info!(source = %source, "vault initialised with the master key from {source}");
                }
                return Ok(KeyState {
                    key,
                    verifier,
                    source,
                });
            }
            // Another hub sharing this database set it up first: check against its verifier.
            let verifier = store
                .vault_verifier()
                .await?
                .ok_or(VaultError::MissingVerifier)?;
            if crypto::check_verifier(&key, &verifier) {
                return Ok(KeyState {
                    key,
                    verifier,
                    source,
                });
            }
            return Err(VaultError::WrongMasterKey { key_source: source });
        }
    };
    if let Some(k) = primary
        && crypto::check_verifier(&k, &verifier)
    {
        discard_stale_new_key(&new_path, &k, &verifier, &source)?;
        return Ok(KeyState {
            key: k,
            verifier,
            source,
        });
    }
    // The primary key is missing or does not match: a rotation may have committed without
    // finishing.
    if let Ok(Some(k)) = key::read_key_file(&new_path, true)
        && crypto::check_verifier(&k, &verifier)
    {
        if env_key.is_some() {
            tracing::warn!(
                path = %new_path.display(),
                "LODGE_MASTER_KEY holds the master key from before the last rotation; using {} \
                 instead. Put its content into LODGE_MASTER_KEY everywhere Lodge starts, then \
                 delete the file",
                new_path.display()
            );
            return Ok(KeyState {
                key: k,
                verifier,
                source: MasterKeySource::File(new_path),
            });
        }
        let path = install_new_key(data_dir)?;
        tracing::warn!(
            path = %path.display(),
            "finished an interrupted master-key rotation: {} replaced {} (back it up)",
            new_path.display(),
            path.display()
        );
        return Ok(KeyState {
            key: k,
            verifier,
            source: MasterKeySource::File(path),
        });
    }
    match source {
        MasterKeySource::File(path) if !path.exists() => Err(VaultError::MissingMasterKey { path }),
        source => Err(VaultError::WrongMasterKey { key_source: source }),
    }
}

/// With the primary key verified, a `master.key.new` is either the same key (after an env-key
/// rotation, until the operator deletes it) or left by a rotation that never committed: that
/// one is removed.
fn discard_stale_new_key(
    new_path: &Path,
    in_use: &MasterKey,
    verifier: &[u8],
    source: &MasterKeySource,
) -> Result<(), VaultError> {
    if !new_path.exists() {
        return Ok(());
    }
    if let Ok(Some(k)) = key::read_key_file(new_path, false)
        && (k.same_as(in_use) || crypto::check_verifier(&k, verifier))
    {
        tracing::info!(
            path = %new_path.display(),
            "{} holds the master key in use ({source}): delete it once it is no longer needed",
            new_path.display()
        );
        return Ok(());
    }
    key::remove_if_exists(new_path)?;
    tracing::warn!(
        path = %new_path.display(),
        "removed {}: a master-key rotation was interrupted before it committed; the vault still \
         uses the key from {source}",
        new_path.display()
    );
    Ok(())
}

/// Rotation step 1: the new key, durably, in `master.key.new`.
pub(crate) fn write_new_key(data_dir: &Path, key: &MasterKey) -> Result<PathBuf, VaultError> {
    key::write_key_file(data_dir, NEW_KEY_FILE, key)
}

/// Rotation step 2: every data key re-wrapped under `new` and the verifier replaced, in one
/// store transaction (retried if a data key was added or removed meanwhile). Returns the new
/// verifier.
async fn rewrap(store: &dyn Store, old: &KeyState, new: &MasterKey) -> Result<Vec<u8>, VaultError> {
    let new_verifier = crypto::seal_verifier(new)?;
    for _ in 0..ATTEMPTS {
        let rows = store.all_data_keys().await?;
        let mut keys = Vec::with_capacity(rows.len());
        for (user_id, wrapped) in rows {
            let dk = crypto::unwrap_data_key(&old.key, user_id, &wrapped)
                .ok_or(VaultError::CorruptDataKey { user: user_id })?;
            keys.push(DataKeyRewrap {
                user_id,
                new: crypto::wrap_data_key(new, user_id, &dk)?,
                old: wrapped,
            });
        }
        if store
            .rewrap_all(&old.verifier, &new_verifier, &keys)
            .await?
        {
            return Ok(new_verifier);
        }
    }
    Err(VaultError::RotationRefused {
        reason: "the vault kept changing during the rotation (users added or removed, or \
                 another rotation); nothing was changed, try again"
            .into(),
    })
}

/// Rotation step 3: `master.key.new` becomes `master.key`.
pub(crate) fn install_new_key(data_dir: &Path) -> Result<PathBuf, VaultError> {
    key::replace_file(data_dir, NEW_KEY_FILE, KEY_FILE)
}

#[cfg(test)]
mod tests;
