//! The hub's side of a room: the client that speaks the room protocol to one agent, and the
//! spawners that build the sandbox around it and own the room's files under DATA_DIR. Nothing
//! here decides who a user is or what they may do (the hub does), and nothing here runs inside
//! a room (`lodge-agent` does); only the protocol (`lodge-protocol`) crosses between them.

#![deny(unsafe_code)]

pub mod client;
pub mod spawner;
// The only place allowed `unsafe` (and raw libc calls): see its module head.
#[allow(unsafe_code)]
mod sys;
