//! TLS: this host's mesh identity and, with the sidecar, the rustls configurations built on it.

pub mod configs;
pub mod identity;
mod san;
pub mod verify;

pub use identity::{Identity, IdentityError};
