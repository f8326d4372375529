//! Text that crosses a trust boundary: [`for_people`] makes untrusted strings safe to print in a
//! terminal or table (one line, no escape sequences), [`without_ansi`] drops the colour codes
//! of another program's log lines, and [`without_values`] strips the input values serde quotes
//! in its error messages. Pure functions; nothing here prints or logs.

use std::borrow::Cow;
use std::fmt::Write;

/// Characters a terminal acts on or that reorder what follows: controls (newline, carriage
/// return, ESC, DEL, C1) and the Unicode bidirectional overrides and isolates.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` as one printable line: control and bidi characters become Rust-style escapes (`\n`,
/// `\r`, `\u{1b}`), and a backslash becomes `\\` so an escape in the output is never ambiguous
/// with the same characters typed literally. Use it for every untrusted string in output meant
/// for people (tables, summaries); JSON output is escaped by its encoder instead.
pub fn for_people(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || needs_escape(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `s` without ANSI escape sequences (colours, cursor moves, titles): CSI (`ESC [ … final`),
/// OSC (`ESC ] … BEL` or `ESC ] … ESC \\`) and two-character escapes. A program's coloured log
/// line copied into another log would otherwise carry them raw, unreadable in files and able
/// to act on the terminal of whoever reads the log.
pub fn without_ansi(s: &str) -> Cow<'_, str> {
    if !s.contains('\u{1b}') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameter and intermediate bytes, then one final byte in @..~.
            Some('[') => {
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            // OSC: ends at BEL or at the string terminator ESC \.
            Some(']') => {
                while let Some(d) = chars.next() {
                    if d == '\u{7}' {
                        break;
                    }
                    if d == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    Cow::Owned(out)
}

/// What kind of JSON value serde's quoted "unexpected" value was, without the value itself.
fn kind_of(unexpected: &str) -> &'static str {
    [
        ("string", "a string"),
        ("integer", "a number"),
        ("floating point", "a number"),
        ("boolean", "a boolean"),
        ("null", "null"),
        ("unit value", "null"),
        ("sequence", "an array"),
        ("map", "an object"),
        ("character", "a character"),
    ]
    .into_iter()
    .find(|(p, _)| unexpected.starts_with(p))
    .map_or("a value", |(_, k)| k)
}

/// Skips a Rust `{:?}`-quoted string at the start of `s` (serde writes `string "…"` that
/// way); returns what follows the closing quote, or None if it is not one.
fn skip_debug_string(s: &str) -> Option<&str> {
    let mut chars = s.strip_prefix('"')?.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '"' => return Some(&s[i + 2..]),
            _ => {}
        }
    }
    None
}

/// Splits serde's `UNEXPECTED, expected WHAT…` into the kind of the unexpected value and the
/// rest from `expected` on. None if the text does not have that shape.
fn split_unexpected(rest: &str) -> Option<(&'static str, &str)> {
    let after = match rest.strip_prefix("string ") {
        Some(quoted) => skip_debug_string(quoted)?,
        // Numbers, booleans, null and container kinds never contain ", expected ".
        None => &rest[rest.find(", expected ")?..],
    };
    let expected = after.strip_prefix(", ")?;
    Some((kind_of(rest), expected))
}

/// A serde (or serde_json, or axum JSON rejection) error message with every quoted input value
/// taken out: `invalid type: string "hunter2", expected a map` becomes `invalid type: a string,
/// expected a map`; unknown fields and variants keep what was expected but not what was given.
/// Input may be a secret, and error messages travel to clients, logs and audit records.
/// Any other double-quoted text (custom errors that quote their input with `{:?}`) becomes
/// `"…"`. Messages of a shape this does not recognise lose everything after the marker.
pub fn without_values(msg: &str) -> String {
    unquoted(&without_marked_values(msg))
}

/// Every `"…"`-quoted (Rust `{:?}` style) run in `s` replaced by `"…"`.
fn unquoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        out.push_str("\"…\"");
        let mut escaped = false;
        for c in chars.by_ref() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => break,
                _ => {}
            }
        }
    }
    out
}

fn without_marked_values(msg: &str) -> String {
    let markers = [
        "invalid type: ",
        "invalid value: ",
        "unknown field `",
        "unknown variant `",
    ];
    let Some((at, marker)) = markers
        .iter()
        .filter_map(|m| msg.find(m).map(|i| (i, *m)))
        .min_by_key(|(i, _)| *i)
    else {
        return msg.to_owned();
    };
    let (head, rest) = (&msg[..at], &msg[at + marker.len()..]);
    let tail = match marker {
        "invalid type: " | "invalid value: " => {
            split_unexpected(rest).map(|(kind, expected)| format!("{marker}{kind}, {expected}"))
        }
        _ => {
            // The given name is in backticks and may hold anything, the expected list never
            // holds "`, " followed by these words, so split at the last one.
            let what = marker.trim_end_matches(" `");
            ["`, expected ", "`, there are no "]
                .iter()
                .filter_map(|sep| rest.rfind(sep).map(|i| (i, *sep)))
                .max_by_key(|(i, _)| *i)
                // Past "`, ": what follows is serde's own text about the schema.
                .map(|(i, _)| format!("{what}, {}", &rest[i + 3..]))
        }
    };
    let tail = tail.unwrap_or_else(|| {
        "the value does not match the expected input (its schema says what is expected)".into()
    });
    format!("{head}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_sequences_are_dropped_and_the_text_kept() {
        let coloured = "\u{1b}[2m2026-12-07T10:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
                        \u{1b}[3muser\u{1b}[0m\u{1b}[2m=\u{1b}[0malice room started";
        assert_eq!(
            without_ansi(coloured),
            "2026-12-07T10:00:00Z  INFO user=alice room started"
        );
        assert_eq!(
            without_ansi("a\u{1b}]0;title\u{7}b\u{1b}]8;;x\u{1b}\\c\u{1b}Md"),
            "abcd"
        );
        assert!(matches!(without_ansi("plain ünïcode"), Cow::Borrowed(_)));
        // A sequence cut off at the end of the line takes nothing else with it.
        assert_eq!(without_ansi("done\u{1b}[3"), "done");
    }

    #[test]
    fn printable_text_is_untouched() {
        assert!(matches!(for_people("alice ünïcode"), Cow::Borrowed(_)));
    }

    #[test]
    fn controls_become_visible_escapes_on_one_line() {
        let forged = "run\n2026-01-01 admin bob token.create ok\r\x1b[2K\u{202e}x\\n";
        let shown = for_people(forged);
        assert!(!shown.chars().any(needs_escape), "{shown}");
        assert_eq!(
            shown,
            "run\\n2026-01-01 admin bob token.create ok\\r\\u{1b}[2K\\u{202e}x\\\\n"
        );
    }

    #[test]
    fn serde_values_are_taken_out() {
        let secret = "ghp_s3cr3t\", expected \\\"x";
        let quoted = format!("invalid type: string {secret:?}, expected a map at line 1 column 9");
        let out = without_values(&quoted);
        assert_eq!(
            out,
            "invalid type: a string, expected a map at line 1 column 9"
        );
        assert_eq!(
            without_values("fields: invalid value: integer `1234`, expected a string"),
            "fields: invalid value: a number, expected a string"
        );
        assert_eq!(
            without_values("unknown field `ghp_x`, expected `name` or `fields`"),
            "unknown field, expected `name` or `fields`"
        );
        assert_eq!(
            without_values("unknown variant `ghp_x`, there are no variants"),
            "unknown variant, there are no variants"
        );
        assert_eq!(
            without_values("missing field `name`"),
            "missing field `name`"
        );
        let odd = without_values("invalid type: string \"unterminated");
        assert!(!odd.contains("unterminated"), "{odd}");
        assert_eq!(
            without_values("bad mode \"0o7\\\"77\" for x"),
            "bad mode \"…\" for x"
        );
    }
}
