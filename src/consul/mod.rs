//! The Consul source: follow the local agent for this host's identity, its sidecar or
//! gateway registration, central config, catalog, gateways and intentions, and keep serving
//! the last state it saw when it is gone — also across a restart (`state_dir`).
//!
//! ```text
//! [consul] + env ─▶ Settings ─▶ follow() ─┬─ watch threads (ureq, blocking queries) ─▶ Update
//!                                         ├─ assemble: answers ─▶ needed keys, Snapshot
//!                                         ├─ state_dir: last-known-good answers, checked
//!                                         └─ sink(Snapshot) ─▶ event loop ─▶ plan ─▶ apply
//! inbound caller ─▶ mesh::intentions::authorize ─▶ Authorizer (cache, last answer) ─▶ /v1/agent/connect/authorize
//! ```

pub mod agent_check;
pub mod api;
pub mod assemble;
pub mod authorizer;
pub mod blocking;
pub mod client;
pub mod errors;
pub mod fleet;
pub mod follow;
pub mod preflight;
pub mod state_dir;
pub mod status;
pub mod stop;
pub mod unix;
pub mod watch;

pub use crate::config::consul::settings::{self, Settings};
pub use follow::{follow, saved_snapshot, Follower, Options, Sink};
pub use status::Status;
