//! TLS: this host's mesh identity and, with the sidecar, the rustls configurations built on it.

pub mod identity;

pub use identity::{Identity, IdentityError};
