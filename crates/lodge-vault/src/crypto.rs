//! The sealing primitives: XChaCha20-Poly1305 with a random 24-byte nonce, stored as
//! `nonce || ciphertext || tag`, and the associated data that binds each blob to its place.
//!
//! Every buffer that holds a plaintext or a key is `Zeroizing` and sized up front, so that no
//! reallocation leaves a copy behind.

use crate::VaultError;
use crate::key::{MasterKey, random_key};
use chacha20poly1305::aead::{AeadInOut, Generate, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::fmt;
use zeroize::Zeroizing;

pub(crate) const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

const DATA_KEY_AD: &[u8] = b"lodge-dk-v1\0";
const SECRET_AD: &[u8] = b"lodge-secret-v1\0";
const VERIFIER_AD: &[u8] = b"lodge-verifier-v1";
const VERIFIER_PLAINTEXT: &[u8] = b"lodge vault master key verifier v1";

/// A user's data key: seals that user's secret values. Zeroed on drop; never printed.
pub(crate) struct DataKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    pub(crate) fn generate() -> Result<Self, VaultError> {
        Ok(Self(random_key()?))
    }
}

fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.into())
}

/// Seals `plaintext` under `key` with `ad`: `nonce || ciphertext || tag`.
pub(crate) fn seal(key: &[u8; 32], ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
    let nonce = XNonce::try_generate().map_err(|e| VaultError::Random(e.to_string()))?;
    let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
    buf.extend_from_slice(plaintext);
    cipher(key)
        .encrypt_in_place(&nonce, ad, &mut *buf)
        .map_err(|_| VaultError::Crypto("the value cannot be sealed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Opens a blob from [`seal`]; None if it is not authentic under `key` and `ad`.
pub(crate) fn open(key: &[u8; 32], ad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).ok()?;
    let mut buf = Zeroizing::new(Vec::with_capacity(body.len()));
    buf.extend_from_slice(body);
    cipher(key).decrypt_in_place(&nonce, ad, &mut *buf).ok()?;
    Some(buf)
}

fn data_key_ad(user_id: i64) -> Vec<u8> {
    let mut ad = Vec::with_capacity(DATA_KEY_AD.len() + 8);
    ad.extend_from_slice(DATA_KEY_AD);
    ad.extend_from_slice(&user_id.to_be_bytes());
    ad
}

fn push_len_prefixed(ad: &mut Vec<u8>, s: &str) {
    // Names are at most 64 bytes (validated); u32 keeps the encoding unambiguous regardless.
    ad.extend_from_slice(&(s.len() as u32).to_be_bytes());
    ad.extend_from_slice(s.as_bytes());
}

/// Binds a sealed value to its owner, secret and field: a row moved anywhere else fails to open.
pub(crate) fn secret_ad(user_id: i64, name: &str, field: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(SECRET_AD.len() + 16 + name.len() + field.len());
    ad.extend_from_slice(SECRET_AD);
    ad.extend_from_slice(&user_id.to_be_bytes());
    push_len_prefixed(&mut ad, name);
    push_len_prefixed(&mut ad, field);
    ad
}

pub(crate) fn wrap_data_key(
    master: &MasterKey,
    user_id: i64,
    dk: &DataKey,
) -> Result<Vec<u8>, VaultError> {
    seal(master.bytes(), &data_key_ad(user_id), &dk.0[..])
}

/// None if `wrapped` is not this user's data key under `master`.
pub(crate) fn unwrap_data_key(master: &MasterKey, user_id: i64, wrapped: &[u8]) -> Option<DataKey> {
    let plain = open(master.bytes(), &data_key_ad(user_id), wrapped)?;
    if plain.len() != 32 {
        return None;
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&plain);
    Some(DataKey(key))
}

pub(crate) fn seal_value(
    dk: &DataKey,
    user_id: i64,
    name: &str,
    field: &str,
    value: &str,
) -> Result<Vec<u8>, VaultError> {
    seal(&dk.0, &secret_ad(user_id, name, field), value.as_bytes())
}

/// None if the value is not authentic for this place or is not UTF-8.
pub(crate) fn open_value(
    dk: &DataKey,
    user_id: i64,
    name: &str,
    field: &str,
    sealed: &[u8],
) -> Option<Zeroizing<String>> {
    let mut plain = open(&dk.0, &secret_ad(user_id, name, field), sealed)?;
    // Move the buffer out without copying; on failure the bytes come back and are zeroed.
    match String::from_utf8(std::mem::take(&mut *plain)) {
        Ok(s) => Some(Zeroizing::new(s)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            None
        }
    }
}

pub(crate) fn seal_verifier(master: &MasterKey) -> Result<Vec<u8>, VaultError> {
    seal(master.bytes(), VERIFIER_AD, VERIFIER_PLAINTEXT)
}

/// Whether `master` is the key that sealed `verifier`.
pub(crate) fn check_verifier(master: &MasterKey, verifier: &[u8]) -> bool {
    open(master.bytes(), VERIFIER_AD, verifier).is_some_and(|p| p.as_slice() == VERIFIER_PLAINTEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_are_bound_to_their_place() {
        let dk = DataKey::generate().unwrap();
        let s = seal_value(&dk, 7, "github", "token", "ghp_x").unwrap();
        assert_eq!(s.len(), NONCE_LEN + 5 + TAG_LEN);
        assert_eq!(
            open_value(&dk, 7, "github", "token", &s).unwrap().as_str(),
            "ghp_x"
        );
        assert!(open_value(&dk, 8, "github", "token", &s).is_none());
        assert!(open_value(&dk, 7, "github", "user", &s).is_none());
        assert!(open_value(&dk, 7, "gitlab", "token", &s).is_none());
        // Length prefixes: ("ab", "c") and ("a", "bc") are different places.
        let s = seal_value(&dk, 7, "ab", "c", "v").unwrap();
        assert!(open_value(&dk, 7, "a", "bc", &s).is_none());
        let other = DataKey::generate().unwrap();
        assert!(open_value(&other, 7, "ab", "c", &s).is_none());
        assert!(open_value(&dk, 7, "ab", "c", &s[..10]).is_none());
        assert_eq!(format!("{dk:?}"), "DataKey(<redacted>)");
    }

    #[test]
    fn data_keys_and_verifier() {
        let m = MasterKey::generate().unwrap();
        let other = MasterKey::generate().unwrap();
        let dk = DataKey::generate().unwrap();
        let w = wrap_data_key(&m, 1, &dk).unwrap();
        assert!(unwrap_data_key(&m, 1, &w).is_some_and(|k| k.0[..] == dk.0[..]));
        assert!(unwrap_data_key(&m, 2, &w).is_none());
        assert!(unwrap_data_key(&other, 1, &w).is_none());
        let v = seal_verifier(&m).unwrap();
        assert!(check_verifier(&m, &v));
        assert!(!check_verifier(&other, &v));
        // Two seals of one plaintext differ (random nonces).
        assert_ne!(v, seal_verifier(&m).unwrap());
    }
}
