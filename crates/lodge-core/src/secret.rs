//! [`Secret`]: a value that must never be printed (an env value carrying a user's token, file
//! contents, notebook code). It owns only the redaction: `Debug` and `Display` print
//! `<redacted>`, serde sees the bare value, and the memory is wiped when it is dropped.
//! Reading the value takes an explicit [`Secret::expose`], so every use is visible in the code.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

/// What `Debug` and `Display` print instead of a secret value (no length: the length of a
/// token or password already says too much).
pub const REDACTED: &str = "<redacted>";

/// A value that prints as `<redacted>`, serializes as the bare value (so the wire format does
/// not change when a field becomes secret) and is zeroized on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The value itself. Callers must not print or log it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret<String> {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: Zeroize> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: Zeroize + Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Zeroize + Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("hunter2".to_owned());
        for shown in [
            format!("{secret:?}"),
            format!("{secret:#?}"),
            format!("{secret}"),
            format!("{:?}", Some(&secret)),
            format!("{:?}", BTreeMap::from([("PASSWORD", secret.clone())])),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
            assert!(!shown.contains('7'), "the length leaked: {shown}");
        }
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn serde_sees_the_bare_value() {
        let env = BTreeMap::from([("K".to_owned(), Secret::from("v"))]);
        let json = serde_json::to_string(&env).expect("json");
        assert_eq!(json, r#"{"K":"v"}"#);
        let back: BTreeMap<String, Secret<String>> = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, env);
        let bad = serde_json::from_str::<Secret<String>>("1");
        assert!(bad.is_err());
    }
}
