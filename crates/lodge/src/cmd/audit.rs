//! `lodge audit`: reads audit records, newest last.

use super::Context;
use crate::cli::{AuditArgs, Global};
use anyhow::{Result, bail};
use lodge_core::time::{now_ms, rfc3339};
use lodge_store::{AuditKind, AuditQuery};

fn parse_since(s: &str) -> Result<i64> {
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
            "invalid --since {s:?}: give a duration ago (1h, 7d) or an RFC 3339 time (2026-11-23T09:00:00Z)"
        ),
    }
}

pub async fn run(g: &Global, a: AuditArgs) -> Result<()> {
    let since_ms = a.since.as_deref().map(parse_since).transpose()?;
    let kind = match a.kind.as_deref() {
        None => None,
        Some(k) => Some(AuditKind::parse(k).ok_or_else(|| {
            anyhow::anyhow!("invalid --kind {k:?}: use auth_failure, tool_call or admin")
        })?),
    };
    if let Some(u) = &a.user {
        lodge_core::UserName::parse(u)?;
    }
    let ctx = Context::open(g, super::Create::No).await?;
    let q = AuditQuery {
        user: a.user,
        since_ms,
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
            println!(
                "{:<25} {:<13} {:<12} {:<28} {:<8} {:>7}  {}",
                rfc3339(r.ts_ms),
                r.kind.as_str(),
                r.user.as_deref().unwrap_or("-"),
                r.action,
                r.outcome,
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
                .collect::<Vec<_>>()
                .join(" ")
            );
        }
    }
    ctx.close(None).await;
    Ok(())
}
