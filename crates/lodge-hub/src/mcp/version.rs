//! Protocol revisions Lodge speaks, and negotiation between them.

/// The current, stateless revision: no initialize, no sessions, metadata on every request.
pub const MODERN: &str = "2026-07-28";
/// Sessionful revisions still in wide use, newest first.
pub const LEGACY: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
pub const SUPPORTED: [&str; 4] = [MODERN, LEGACY[0], LEGACY[1], LEGACY[2]];

/// The answer to `initialize`: the client's revision if we speak it, else our newest
/// sessionful one (the client then decides whether it can continue).
pub fn negotiate_legacy(requested: &str) -> &'static str {
    LEGACY
        .into_iter()
        .find(|v| *v == requested)
        .unwrap_or(LEGACY[0])
}

/// Maps a stored revision string back to our static copy.
pub fn intern(v: &str) -> &'static str {
    SUPPORTED.into_iter().find(|s| *s == v).unwrap_or(LEGACY[0])
}

pub fn is_supported(v: &str) -> bool {
    SUPPORTED.contains(&v)
}

pub fn is_modern(v: &str) -> bool {
    v >= MODERN
}
