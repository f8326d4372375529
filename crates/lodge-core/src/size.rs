//! Byte sizes (`512MiB`, `1G`, `64k`) and limits that may be `unlimited`, for config, with one
//! error message. Binary and decimal suffixes are both accepted; a bare number is bytes.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid size {input:?}: {reason} (examples: 512MiB, 1GiB, 64k, 1000000)")]
pub struct SizeError {
    input: String,
    reason: &'static str,
}

/// Parses a size such as `512MiB`, `1.5G` or `4096`.
pub fn parse(input: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: input.chars().take(40).collect(),
        reason,
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| err("no number"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let scale: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" | "ki" => 1 << 10,
        "m" | "mi" => 1 << 20,
        "g" | "gi" => 1 << 30,
        "t" | "ti" => 1 << 40,
        _ => return Err(err("unknown unit (use k, M, G or T, optionally with iB)")),
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(err("must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// Like [`parse`], but `unlimited`/`none` mean "no limit".
pub fn parse_limit(input: &str) -> Result<Option<u64>, SizeError> {
    match input.trim() {
        "unlimited" | "none" => Ok(None),
        s => parse(s).map(Some),
    }
}

/// Renders bytes the way they are usually written in config (`1GiB`, `512MiB`, `1000`).
pub fn format(bytes: u64) -> String {
    for (unit, scale) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    bytes.to_string()
}

/// Serde adapter for `Option<u64>` limits written as sizes or `unlimited`. Numbers are bytes.
pub mod serde_limit {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Number(0) => Err(serde::de::Error::custom(
                "a size of 0 bytes allows nothing; write \"unlimited\" for no limit",
            )),
            Raw::Number(n) => Ok(Some(n)),
            Raw::Text(s) => super::parse_limit(&s).map_err(serde::de::Error::custom),
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&super::format(*b)),
            None => s.serialize_str("unlimited"),
        }
    }
}

/// Serde adapter for a plain size (never unlimited).
pub mod serde_size {
    use serde::{Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        super::serde_limit::deserialize(d)?
            .ok_or_else(|| serde::de::Error::custom("this size cannot be unlimited"))
    }

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse("1G").unwrap(), 1 << 30);
        assert_eq!(parse("64k").unwrap(), 64 << 10);
        assert_eq!(parse("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse("4096").unwrap(), 4096);
        assert_eq!(parse_limit("unlimited").unwrap(), None);
        assert_eq!(format(1 << 30), "1GiB");
        assert_eq!(format(1000), "1000");
    }

    #[test]
    fn refuses_bad_sizes() {
        for s in ["", "0", "MiB", "12 parsecs", "-5M", "1e999G"] {
            assert!(parse(s).is_err(), "{s:?}");
        }
    }
}
