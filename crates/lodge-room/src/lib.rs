//! A user's room, as seen from both ends: the framed protocol the hub and `lodge agent` speak
//! over one private channel, the agent that serves it inside the room (workspace files and
//! commands), and the spawners that build the sandbox around it. Nothing here decides who a
//! user is or what they may do; the hub does that before a request reaches a room.

#![deny(unsafe_code)]

pub mod agent;
pub mod client;
pub mod protocol;
pub mod spawner;
// The only place allowed `unsafe` (and raw libc calls): see its module head.
#[allow(unsafe_code)]
mod sys;
pub mod workspace;
