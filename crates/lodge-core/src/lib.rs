//! Lodge's shared vocabulary: user names, scopes, API tokens, durations, redacted secret values
//! and the hub's configuration, plus two concurrency primitives the hub and the room share (a
//! keyed single-flight, a request multiplexer). Everything here is pure (no I/O beyond reading
//! the config file) so that the store, the hub and the CLI agree on one definition of each rule.

pub mod config;
pub mod duration;
pub mod flight;
pub mod mux;
pub mod name;
pub mod net;
pub mod scope;
pub mod secret;
pub mod servers;
pub mod size;
pub mod text;
pub mod time;
pub mod token;

pub use config::{Config, ConfigError};
pub use name::{NameError, UserName};
pub use scope::{Scope, ScopeError, ScopeKind, Scopes};
pub use secret::Secret;
pub use token::{NewToken, TokenHash};
