//! A user's room, as seen from both ends: the framed protocol the hub and `lodge agent` speak
//! over one private channel, and the workspace operations the agent performs inside the room.
//! Nothing here decides who a user is; the hub does that before a request reaches a room.

pub mod protocol;
pub mod workspace;
