//! The master key: its encoding, where it comes from, and the files that hold it in DATA_DIR
//! (`master.key`, `master.key.new` during a rotation, `master.key.lock`); and the generation of
//! random 32-byte keys, master or data, which `crypto` uses (this module never uses `crypto`).
//!
//! Key files are written whole or not at all (a `.tmp` sibling, fsync, rename, fsync of the
//! directory) with mode 0600, and refused when group or others can access them. Nothing here
//! logs, formats or returns key material except [`MasterKey::encode`] for the file itself.

use crate::VaultError;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chacha20poly1305::aead::Generate;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The master key's file in DATA_DIR.
pub(crate) const KEY_FILE: &str = "master.key";
/// The next master key while a rotation is under way (or, with `LODGE_MASTER_KEY`, after it).
pub(crate) const NEW_KEY_FILE: &str = "master.key.new";
/// Held (flock) while a process checks, creates or rotates the master key.
const LOCK_FILE: &str = "master.key.lock";
/// A key file is a line of at most 64 characters; anything much larger is not a key.
const MAX_KEY_FILE: u64 = 1024;

/// Standard base64; padding optional.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Where the master key in use came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MasterKeySource {
    /// The `LODGE_MASTER_KEY` environment variable.
    Env,
    /// A file in DATA_DIR (`master.key`, or `master.key.new` when `LODGE_MASTER_KEY` is outdated).
    File(PathBuf),
}

impl fmt::Display for MasterKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MasterKeySource::Env => f.write_str("LODGE_MASTER_KEY"),
            MasterKeySource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// 32 bytes that wrap every user's data key. Zeroed on drop; never printed.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A new random key from the operating system's generator.
    pub(crate) fn generate() -> Result<Self, VaultError> {
        Ok(Self(random_key()?))
    }

    /// Parses a key as stored in `master.key` or `LODGE_MASTER_KEY`: 32 bytes as standard base64
    /// (padding optional) or as 64 hex digits, surrounding whitespace ignored. The error names
    /// `source` and the expected form, never the text.
    pub fn parse(text: &str, source: &MasterKeySource) -> Result<Self, VaultError> {
        let bad = |reason: &str| VaultError::BadMasterKey {
            key_source: source.clone(),
            reason: reason.to_string(),
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode_to_slice(text, &mut key[..]).map_err(|_| bad("it is not valid hex"))?;
            return Ok(Self(key));
        }
        // Room for whatever a too-long text decodes to, so that the length can be reported.
        let mut buf = Zeroizing::new(vec![0u8; text.len()]);
        let n = B64
            .decode_slice(text, &mut buf[..])
            .map_err(|_| bad("it is neither base64 nor 64 hex digits"))?;
        if n != 32 {
            return Err(bad(&format!("it decodes to {n} bytes, not 32")));
        }
        key.copy_from_slice(&buf[..32]);
        Ok(Self(key))
    }

    /// The key as its file holds it: base64 and a newline.
    pub(crate) fn encode(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(46));
        B64.encode_string(&self.0[..], &mut s);
        s.push('\n');
        s
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn same_as(&self, other: &MasterKey) -> bool {
        // Not secret-dependent timing that matters: both keys are the process's own.
        self.0[..] == other.0[..]
    }
}

/// 32 bytes from the operating system's generator: a new master key, or a user's data key.
pub(crate) fn random_key() -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let mut key = Zeroizing::new([0u8; 32]);
    *key = <[u8; 32]>::try_generate().map_err(|e| VaultError::Random(e.to_string()))?;
    Ok(key)
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> VaultError {
    move |source| VaultError::Io { context, source }
}

/// Reads a key file; None if it does not exist. With `check_mode`, a file that group or others
/// can access is refused.
pub(crate) fn read_key_file(
    path: &Path,
    check_mode: bool,
) -> Result<Option<MasterKey>, VaultError> {
    let source = MasterKeySource::File(path.to_path_buf());
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("cannot open {}", path.display()))(e)),
    };
    let meta = file
        .metadata()
        .map_err(io_err(format!("cannot stat {}", path.display())))?;
    if !meta.is_file() {
        return Err(VaultError::BadMasterKey {
            key_source: source.clone(),
            reason: "it is not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if check_mode && mode & 0o077 != 0 {
        return Err(VaultError::InsecureKeyFile {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE as usize + 1));
    (&mut file)
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(format!("cannot read {}", path.display())))?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(VaultError::BadMasterKey {
            key_source: source.clone(),
            reason: "the file is far larger than a key".into(),
        });
    }
    let text = std::str::from_utf8(&buf).map_err(|_| VaultError::BadMasterKey {
        key_source: source.clone(),
        reason: "it is not text".into(),
    })?;
    MasterKey::parse(text, &source).map(Some)
}

fn sync_dir(dir: &Path) -> Result<(), VaultError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("cannot sync directory {}", dir.display())))
}

/// Writes `key` to `dir/name` atomically and durably, mode 0600, replacing any file there.
pub(crate) fn write_key_file(
    dir: &Path,
    name: &str,
    key: &MasterKey,
) -> Result<PathBuf, VaultError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    remove_if_exists(&tmp)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(format!("cannot create {}", tmp.display())))?;
    f.write_all(key.encode().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("cannot write {}", tmp.display())))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io_err(format!(
        "cannot rename {} to {}",
        tmp.display(),
        path.display()
    )))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Renames `dir/from` over `dir/to` durably.
pub(crate) fn replace_file(dir: &Path, from: &str, to: &str) -> Result<PathBuf, VaultError> {
    let (src, dst) = (dir.join(from), dir.join(to));
    std::fs::rename(&src, &dst).map_err(io_err(format!(
        "cannot rename {} to {}",
        src.display(),
        dst.display()
    )))?;
    sync_dir(dir)?;
    Ok(dst)
}

/// Removes a file durably; false if there was none.
pub(crate) fn remove_if_exists(path: &Path) -> Result<bool, VaultError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(format!("cannot remove {}", path.display()))(e)),
    }
}

/// Removes what an interrupted [`write_key_file`] left behind. Call with the lock held.
pub(crate) fn remove_temp_files(dir: &Path) -> Result<(), VaultError> {
    for name in [KEY_FILE, NEW_KEY_FILE] {
        remove_if_exists(&dir.join(format!("{name}.tmp")))?;
    }
    Ok(())
}

/// An exclusive lock on `DATA_DIR/master.key.lock`, released on drop (or when the process dies).
pub(crate) struct KeyLock(#[allow(dead_code)] File);

/// Waits for the key lock of `dir`: one process at a time checks, creates, recovers or rotates
/// the master key.
pub(crate) async fn lock(dir: &Path) -> Result<KeyLock, VaultError> {
    let path = dir.join(LOCK_FILE);
    let task = tokio::task::spawn_blocking(move || {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(format!("cannot open {}", path.display())))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(format!("cannot lock {}", path.display()))(e.into()))?;
        Ok(KeyLock(file))
    });
    task.await.map_err(|e| VaultError::Io {
        context: "the key-lock task failed".into(),
        source: std::io::Error::other(e.to_string()),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base64_and_hex_and_refuses_the_rest() {
        let src = MasterKeySource::Env;
        let b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let k = MasterKey::parse(b64, &src).unwrap();
        assert_eq!(k.bytes()[31], 31);
        assert_eq!(k.encode().as_str(), format!("{b64}\n"));
        let unpadded = MasterKey::parse(&b64[..43], &src).unwrap();
        assert!(k.same_as(&unpadded));
        let hex: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
        assert!(k.same_as(&MasterKey::parse(&format!("  {hex}\n"), &src).unwrap()));
        for bad in ["", "not a key", "AAAA", &hex[..63], &format!("{b64}AAAA")] {
            let e = MasterKey::parse(bad, &src).unwrap_err().to_string();
            assert!(
                e.contains("LODGE_MASTER_KEY") && e.contains("base64"),
                "{e}"
            );
            if bad.len() > 4 {
                assert!(!e.contains(bad), "the error quotes the key: {e}");
            }
        }
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
    }
}
