//! sidegate: a Consul service-mesh sidecar and mesh gateway for small ARM hosts.

// No function over 80 lines in src/ (`.clippy.toml` sets the threshold; CI runs clippy with
// `-D warnings`). Crate-level here, so it holds for src/ and its unit tests, not for the
// integration tests' long tables.
#![warn(clippy::too_many_lines)]

pub mod admin;
pub mod cli;
pub mod client_hello;
pub mod config;
pub mod consul;
pub mod lifecycle;
pub mod log;
pub mod mesh;
pub mod metrics;
pub mod names;
pub mod proxy;
pub mod tls;

#[cfg(test)]
mod layers;
