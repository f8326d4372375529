//! The audit trail: auth failures, tool calls and admin actions, written to the store in
//! batches by one background task so the request path never waits on a disk write. Records
//! carry an argument digest, never argument values. Records past `[audit]` retention or row
//! cap are pruned by another task, in batches small enough never to stall the writer.

use lodge_core::time::now_ms;
use lodge_store::{AuditKind, AuditRecord, Store};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Records deleted per statement: a few milliseconds of SQLite's write lock at most.
const PRUNE_BATCH: u32 = 1000;
/// Pause between batches, so the writer and other statements get the lock in between.
const PRUNE_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);
/// How often retention is applied (and once at start).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Applies `[audit]` retention now: deletes records older than `retention` and the oldest
/// beyond `max_rows`, batch by batch, until none is left or `stop` is cancelled. Returns how
/// many records went.
pub async fn prune(
    store: &dyn Store,
    cfg: &lodge_core::config::AuditConfig,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<u64, lodge_store::StoreError> {
    let before = now_ms().saturating_sub(cfg.retention.as_millis().min(i64::MAX as u128) as i64);
    let mut total = 0;
    while !stop.is_cancelled() {
        let n = store.prune_audit(before, cfg.max_rows, PRUNE_BATCH).await?;
        total += n;
        if n < u64::from(PRUNE_BATCH) {
            break;
        }
        tokio::time::sleep(PRUNE_PAUSE).await;
    }
    Ok(total)
}

/// Runs [`prune`] at start and every [`PRUNE_EVERY`] until `stop` is cancelled.
pub async fn prune_periodically(
    store: Arc<dyn Store>,
    cfg: lodge_core::config::AuditConfig,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match prune(&*store, &cfg, &stop).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "audit records past retention pruned"),
            Err(e) => tracing::error!(error = %e, "audit retention failed"),
        }
    }
}

enum Msg {
    Record(Box<AuditRecord>),
    Flush(oneshot::Sender<()>),
}

/// A cheap handle to the audit writer. Clone it freely.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::UnboundedSender<Msg>,
}

/// The outcome of one admin action, for [`Auditor::admin`].
pub struct AdminAction<'a> {
    pub actor: Option<&'a str>,
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
}

impl Auditor {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(512);
            while rx.recv_many(&mut buf, 512).await > 0 {
                let mut records = Vec::with_capacity(buf.len());
                let mut waiters = Vec::new();
                for m in buf.drain(..) {
                    match m {
                        Msg::Record(r) => records.push(*r),
                        Msg::Flush(w) => waiters.push(w),
                    }
                }
                if !records.is_empty()
                    && let Err(e) = store.append_audit(&records).await
                {
                    tracing::error!(error = %e, lost = records.len(), "cannot write audit records");
                }
                for w in waiters {
                    let _ = w.send(());
                }
            }
        });
        Self { tx }
    }

    fn send(&self, r: AuditRecord) {
        let _ = self.tx.send(Msg::Record(Box::new(r)));
    }

    /// Waits until everything sent before this call is in the store.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub fn auth_failure(&self, reason: &str, token_id: Option<&str>, client: Option<IpAddr>) {
        self.send(AuditRecord {
            ts_ms: now_ms(),
            kind: AuditKind::AuthFailure,
            user: None,
            session: None,
            action: reason.to_owned(),
            digest: None,
            outcome: "denied".into(),
            duration_ms: None,
            client: client.map(|c| c.to_string()),
            detail: token_id.map(|t| format!("token id {t}")),
        });
    }

    pub fn tool_call(&self, call: ToolCallRecord<'_>) {
        self.send(AuditRecord {
            ts_ms: now_ms(),
            kind: AuditKind::ToolCall,
            user: Some(call.user.to_owned()),
            session: call.session.map(str::to_owned),
            action: call.tool.to_owned(),
            digest: Some(call.digest),
            outcome: call.outcome.to_owned(),
            duration_ms: Some(call.duration_ms),
            client: None,
            detail: None,
        });
    }

    pub fn admin(&self, a: AdminAction<'_>) {
        self.send(AuditRecord {
            ts_ms: now_ms(),
            kind: AuditKind::Admin,
            user: a.actor.map(str::to_owned),
            session: None,
            action: a.action.to_owned(),
            digest: None,
            outcome: a.outcome.to_owned(),
            duration_ms: None,
            client: None,
            detail: Some(a.target.to_owned()),
        });
    }
}

// --- sign-in ---
/// One sign-in event: a sign-in (action: the method), a refusal, a sign-out, a deprovision.
pub struct SigninEvent<'a> {
    pub kind: AuditKind,
    /// The Lodge user, when known.
    pub user: Option<&'a str>,
    /// `oidc`, `token`, `link`, or `recheck` for a deprovision.
    pub method: &'a str,
    pub outcome: &'a str,
    pub client: Option<IpAddr>,
    /// Why it was refused or taken away, in words for the auditor.
    pub detail: Option<String>,
}

impl Auditor {
    pub fn signin(&self, e: SigninEvent<'_>) {
        self.send(AuditRecord {
            ts_ms: now_ms(),
            kind: e.kind,
            user: e.user.map(str::to_owned),
            session: None,
            action: e.method.to_owned(),
            digest: None,
            outcome: e.outcome.to_owned(),
            duration_ms: None,
            client: e.client.map(|c| c.to_string()),
            detail: e.detail,
        });
    }
}

// --- oauth ---
/// One OAuth event, for [`Auditor::oauth`].
pub struct OAuthEvent<'a> {
    /// The person the grant is for, when known.
    pub user: Option<&'a str>,
    /// `oauth.register`, `oauth.consent`, `oauth.grant`, `oauth.code_reuse`,
    /// `oauth.refresh_reuse`, `oauth.revoke`.
    pub action: &'a str,
    /// The client (id and name) and what else identifies the event.
    pub target: &'a str,
    pub outcome: &'a str,
}

impl Auditor {
    pub fn oauth(&self, e: OAuthEvent<'_>) {
        self.send(AuditRecord {
            ts_ms: now_ms(),
            kind: AuditKind::OAuth,
            user: e.user.map(str::to_owned),
            session: None,
            action: e.action.to_owned(),
            digest: None,
            outcome: e.outcome.to_owned(),
            duration_ms: None,
            client: None,
            detail: Some(e.target.to_owned()),
        });
    }
}

pub struct ToolCallRecord<'a> {
    pub user: &'a str,
    pub session: Option<&'a str>,
    pub tool: &'a str,
    pub digest: String,
    pub outcome: &'a str,
    pub duration_ms: i64,
}

/// A short, stable digest of tool arguments: equal arguments give equal digests.
pub fn digest(args: &serde_json::Map<String, serde_json::Value>) -> String {
    let h = Sha256::digest(serde_json::to_vec(args).unwrap_or_default());
    hex::encode(&h[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_core::config::AuditConfig;
    use lodge_store::{AuditQuery, SqliteStore};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    fn at(ts_ms: i64) -> AuditRecord {
        AuditRecord {
            ts_ms,
            kind: AuditKind::Admin,
            user: None,
            session: None,
            action: "user.add".into(),
            digest: None,
            outcome: "ok".into(),
            duration_ms: None,
            client: None,
            detail: None,
        }
    }

    #[tokio::test]
    async fn prune_applies_retention_and_the_cap_until_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("lodge.db"))
            .await
            .unwrap();
        let now = now_ms();
        let day = 86_400_000;
        // 2,500 records 100 days old (more than two batches), 3,000 from today.
        let old: Vec<AuditRecord> = (0..2500).map(|i| at(now - 100 * day + i)).collect();
        let new: Vec<AuditRecord> = (0..3000).map(|i| at(now - 1000 + i / 10)).collect();
        store.append_audit(&old).await.unwrap();
        store.append_audit(&new).await.unwrap();
        let cfg = AuditConfig {
            retention: Duration::from_secs(90 * 86400),
            max_rows: 2000,
        };
        let stop = CancellationToken::new();
        assert_eq!(prune(&store, &cfg, &stop).await.unwrap(), 3500);
        let q = AuditQuery {
            limit: u32::MAX,
            ..Default::default()
        };
        let left = store.query_audit(&q).await.unwrap();
        assert_eq!(left.len(), 2000);
        assert!(left.iter().all(|r| r.ts_ms > now - day));
        assert_eq!(prune(&store, &cfg, &stop).await.unwrap(), 0);
    }
}
