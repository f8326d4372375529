//! User names: the one validation rule (`^[a-z][a-z0-9_-]{0,31}$`) every entry point uses.

use std::fmt;

/// A validated user name. Constructing one is the only way to get past the CLI, REST or store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct UserName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid user name {shown:?}: names start with a lowercase letter and contain only a-z, 0-9, '_' and '-', at most 32 characters"
)]
pub struct NameError {
    shown: String,
}

impl UserName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let bytes = s.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 32
            && bytes[0].is_ascii_lowercase()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            // Never echo unbounded or control-laden input back into messages.
            let shown: String = s.chars().take(40).filter(|c| !c.is_control()).collect();
            Err(NameError { shown })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for UserName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UserName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in [
            "a",
            "alice",
            "bob-2",
            "x_y",
            "a234567890123456789012345678901",
        ] {
            assert!(UserName::parse(n).is_ok(), "{n}");
        }
        assert!(UserName::parse(&format!("a{}", "b".repeat(31))).is_ok());
    }

    #[test]
    fn refuses_invalid_names() {
        let long = format!("a{}", "b".repeat(32));
        for n in [
            "", "Alice", "1abc", "-a", "_a", "a b", "a/b", "..", "a.b", "ä", "a\0", &long,
        ] {
            assert!(UserName::parse(n).is_err(), "{n:?} should be refused");
        }
    }

    #[test]
    fn error_does_not_echo_control_characters() {
        let e = UserName::parse("evil\n\x1b[31m").unwrap_err().to_string();
        assert!(!e.contains('\n') && !e.contains('\x1b'), "{e}");
    }
}
