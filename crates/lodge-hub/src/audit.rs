//! The audit trail: auth failures, tool calls and admin actions, written to the store in
//! batches by one background task so the request path never waits on a disk write. Records
//! carry an argument digest, never argument values.

use lodge_core::time::now_ms;
use lodge_store::{AuditKind, AuditRecord, Store};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

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
