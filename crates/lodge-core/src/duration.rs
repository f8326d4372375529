//! Human durations (`30d`, `15m`, `1h 30m`) for config and CLI flags, with one error message.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (examples: 90s, 15m, 12h, 30d)")]
pub struct DurationError {
    input: String,
    reason: String,
}

/// Parses a positive duration such as `30d` or `1h 30m`.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |reason: &str| DurationError {
        input: input.chars().take(40).collect(),
        reason: reason.to_owned(),
    };
    let d = humantime::parse_duration(input.trim()).map_err(|e| err(&e.to_string()))?;
    if d.is_zero() {
        return Err(err("must be greater than zero"));
    }
    Ok(d)
}

/// Like [`parse`], but `never`/`none` mean "no limit".
pub fn parse_optional(input: &str) -> Result<Option<Duration>, DurationError> {
    match input.trim() {
        "never" | "none" => Ok(None),
        s => parse(s).map(Some),
    }
}

/// A duration as [`parse`] reads it back (`1h 59m 58s`).
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Serde adapter so config fields can be written as human durations.
pub mod serde_human {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse("30d").unwrap(), Duration::from_secs(30 * 86400));
        assert_eq!(parse("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_optional("never").unwrap(), None);
    }

    #[test]
    fn refuses_bad_durations() {
        for s in ["", "0s", "abc", "-5m", "10 parsecs", "5"] {
            assert!(parse(s).is_err(), "{s:?}");
        }
    }
}
