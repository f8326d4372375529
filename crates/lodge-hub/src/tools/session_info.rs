//! `session_info`: who the caller is, which session and profile they use, their limits and
//! their own live sessions. It reads only the caller's own records.

use super::{Tool, ToolError};
use crate::context::RequestContext;
use crate::rooms::Rooms;
use crate::sessions::Sessions;
use crate::upstream::Upstreams;
use async_trait::async_trait;
use lodge_core::config::SessionsConfig;
use lodge_core::size;
use lodge_core::time::rfc3339;
use rmcp::model::CallToolResult;
use serde_json::json;
use std::sync::Arc;

/// How many of the caller's sessions `session_info` lists (newest first); `usage.sessions`
/// still counts them all.
const SHOWN_SESSIONS: usize = 20;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
/// session_info takes no arguments.
pub struct NoArgs {}

pub struct SessionInfo {
    pub sessions: Arc<Sessions>,
    pub limits: SessionsConfig,
    pub rooms: Arc<Rooms>,
    pub upstreams: Arc<Upstreams>,
}

#[async_trait]
impl Tool for SessionInfo {
    const NAME: &'static str = "session_info";
    const DESCRIPTION: &'static str = "Who you are on this Lodge hub: user, current session, \
        profile, limits, your live sessions and the upstream servers you can use (and the \
        secrets they need).";
    type Args = NoArgs;

    async fn call(&self, _: NoArgs, cx: &RequestContext) -> Result<CallToolResult, ToolError> {
        // The newest few sessions only, from the user's sessions kept in last-use order: neither
        // the reply nor the work grows with the user's session count.
        let (total, newest) = self.sessions.newest(cx.caller.user_id, SHOWN_SESSIONS);
        let shown: Vec<_> = newest
            .into_iter()
            .map(|(id, s, seen)| {
                json!({
                    "id": id,
                    "protocol": s.protocol,
                    "created": rfc3339(s.created_ms),
                    "last_seen": rfc3339(seen),
                })
            })
            .collect();
        let p = self.rooms.profile(&cx.caller);
        let limit = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), size::format);
        let info = json!({
            "user": cx.caller.user,
            "admin": cx.caller.admin,
            "acting_via": cx.caller.actor,
            "session_id": cx.session_id(),
            "protocol_version": cx.protocol,
            "profile": cx.caller.profile,
            "limits": {
                "max_sessions_per_user": self.limits.max_per_user,
                "session_idle_timeout_s": self.limits.idle_timeout.as_secs(),
                "session_max_age_s": self.limits.max_age.as_secs(),
                "memory": limit(p.memory),
                "cpus": p.cpus,
                "pids": p.pids,
                "disk": limit(p.disk),
                "tmp": limit(p.tmp),
                "network": p.network,
                "command_timeout_s": p.command_timeout.as_secs(),
                "max_command_timeout_s": p.max_command_timeout.as_secs(),
                "output_cap_bytes": p.output_cap,
            },
            "usage": { "sessions": total },
            "room": self.rooms.status(cx.caller.user_id),
            "servers": self.upstreams.status(&cx.caller),
            "sessions": shown,
        });
        Ok(CallToolResult::structured(info))
    }
}
