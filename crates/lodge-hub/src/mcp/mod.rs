//! MCP over streamable HTTP at `/mcp` and `/user/{name}/mcp`.
//!
//! Lodge runs its own transport (on rmcp's protocol types) because its sessions are not rmcp's:
//! they belong to a user, live in the store, survive restarts and cost ~100 bytes when idle.
//! Both the stateless 2026-07-28 revision and the sessionful ones reach the same per-user state.
//! This module speaks the protocol; what tools exist is the registry's business.

mod dispatch;
mod endpoint;
pub mod feeds;
mod headers;
pub mod inflight;
pub mod jsonrpc;
pub mod relay;
pub mod version;

pub use endpoint::{delete, get, post_own, post_user};
