//! API tokens: `lodge_` + 8-character public id + 32 secret characters.
//!
//! The id is a non-secret lookup key (shown by `token list`, used by `token revoke`); only the
//! SHA-256 of the whole token is stored, and verification compares hashes in constant time.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "lodge_";
const ID_LEN: usize = 8;
const SECRET_LEN: usize = 32;

/// SHA-256 of a whole token; the only form in which tokens are kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Constant-time equality: the stored hash never leaks through timing.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        other.len() == 32 && bool::from(self.0.as_slice().ct_eq(other))
    }
}

/// A freshly minted token: `secret` is shown once to the user and then dropped.
pub struct NewToken {
    pub id: String,
    pub secret: String,
    pub hash: TokenHash,
}

impl NewToken {
    pub fn generate() -> Self {
        let mut raw = [0u8; 30];
        rand::rng().fill_bytes(&mut raw);
        // URL-safe base64 of 30 bytes is exactly 40 characters: 8 id + 32 secret.
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let secret = format!("{PREFIX}{body}");
        let id = body[..ID_LEN].to_owned();
        let hash = TokenHash::of(&secret);
        Self { id, secret, hash }
    }
}

/// Splits a presented token into its public id and hash, or `None` if it is not shaped like
/// a Lodge token (wrong prefix, wrong length, or characters outside URL-safe base64).
pub fn parse(presented: &str) -> Option<(&str, TokenHash)> {
    let body = presented.strip_prefix(PREFIX)?;
    let ok_len = body.len() == ID_LEN + SECRET_LEN;
    let ok_chars = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (ok_len && ok_chars).then(|| (&body[..ID_LEN], TokenHash::of(presented)))
}

/// Is `s` shaped like a token id as printed by `token list`?
pub fn is_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back_to_their_id_and_hash() {
        let t = NewToken::generate();
        assert!(t.secret.starts_with("lodge_"));
        assert_eq!(t.secret.len(), 6 + 40);
        let (id, hash) = parse(&t.secret).unwrap();
        assert_eq!(id, t.id);
        assert!(hash.ct_eq(&t.hash.0));
        assert!(is_id(&t.id));
    }

    #[test]
    fn tokens_are_unique() {
        assert_ne!(NewToken::generate().secret, NewToken::generate().secret);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let t = NewToken::generate().secret;
        assert!(parse(&t[1..]).is_none());
        assert!(parse(&format!("{t}x")).is_none());
        assert!(
            parse(&t.replace('_', "/").replacen("lodge/", "lodge_", 1)).is_none()
                || !t[6..].contains('_')
        );
        assert!(parse("lodge_").is_none());
        assert!(parse("").is_none());
    }

    #[test]
    fn ct_eq_rejects_other_lengths_and_values() {
        let h = TokenHash::of("a");
        assert!(!h.ct_eq(&[0u8; 31]));
        assert!(!h.ct_eq(&TokenHash::of("b").0));
        assert!(h.ct_eq(&TokenHash::of("a").0));
    }
}
