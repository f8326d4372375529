//! `lodge audit`: reads audit records, newest last, as a table for people (every field
//! escaped: tool names and client names come from callers) or as JSON lines for export.

use super::Context;
use crate::cli::{AuditArgs, Global};
use anyhow::{Result, bail};
use lodge_core::text::for_people;
use lodge_core::time::{now_ms, rfc3339};
use lodge_store::{AuditKind, AuditQuery, AuditRecord};

/// `--since`/`--until`: a duration ago or an RFC 3339 time, as Unix milliseconds.
fn parse_time(flag: &str, s: &str) -> Result<i64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        let ms = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        return Ok(ms);
    }
    match lodge_core::duration::parse(s) {
        Ok(d) => Ok(now_ms() - d.as_millis() as i64),
        Err(_) => bail!(
            "invalid {flag} {s:?}: give a duration ago (1h, 7d) or an RFC 3339 time (2026-11-23T09:00:00Z)"
        ),
    }
}

pub async fn run(g: &Global, a: AuditArgs) -> Result<()> {
    let since_ms = a
        .since
        .as_deref()
        .map(|s| parse_time("--since", s))
        .transpose()?;
    let until_ms = a
        .until
        .as_deref()
        .map(|s| parse_time("--until", s))
        .transpose()?;
    let kind = match a.kind.as_deref() {
        None => None,
        Some(k) => Some(AuditKind::parse(k).ok_or_else(|| {
            let kinds: Vec<&str> = AuditKind::ALL.iter().map(|k| k.as_str()).collect();
            anyhow::anyhow!("invalid --kind {k:?}: use one of {}", kinds.join(", "))
        })?),
    };
    if let Some(u) = &a.user {
        lodge_core::UserName::parse(u)?;
    }
    let ctx = Context::open(g, super::Create::No).await?;
    let q = AuditQuery {
        user: a.user,
        since_ms,
        until_ms,
        kind,
        limit: a.limit,
    };
    let records = ctx.store.query_audit(&q).await?;
    if a.json {
        for r in &records {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "{:<25} {:<13} {:<12} {:<28} {:<8} {:>7}  DETAIL",
            "TIME", "KIND", "USER", "ACTION", "OUTCOME", "MS"
        );
        for r in &records {
            println!("{}", table_row(r));
        }
    }
    ctx.close(None).await;
    Ok(())
}

/// One record as one table line. Every text field is escaped: a tool name or client name
/// holding a newline or a terminal escape must not print a second, forged record.
fn table_row(r: &AuditRecord) -> String {
    let text = |s: &str| for_people(s).into_owned();
    format!(
        "{:<25} {:<13} {:<12} {:<28} {:<8} {:>7}  {}",
        rfc3339(r.ts_ms),
        r.kind.as_str(),
        text(r.user.as_deref().unwrap_or("-")),
        text(&r.action),
        text(&r.outcome),
        r.duration_ms
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into()),
        [
            r.client.as_deref(),
            r.session.as_deref(),
            r.detail.as_deref(),
            r.digest.as_deref()
        ]
        .into_iter()
        .flatten()
        .map(text)
        .collect::<Vec<_>>()
        .join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_lines_in_any_field_print_as_one_escaped_line() {
        let forged = "x\n2026-01-01T00:00:00Z      admin         root         token.create";
        let evil = |s: &str| format!("{s}\n{forged}\r\x1b[2K\x1b]0;pwned\x07");
        let r = AuditRecord {
            ts_ms: 0,
            kind: AuditKind::ToolCall,
            user: Some(evil("alice")),
            session: Some(evil("s")),
            action: evil("files__read"),
            digest: Some(evil("d")),
            outcome: evil("ok"),
            duration_ms: Some(3),
            client: Some(evil("client")),
            detail: Some(evil("detail")),
        };
        let line = table_row(&r);
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            !line.chars().any(|c| c.is_control()),
            "a control character reached the terminal: {line:?}"
        );
        assert!(line.contains("files__read\\nx"), "{line}");
        assert!(line.contains("\\u{1b}[2K"), "{line}");
    }
}
