//! sidegate: a Consul service-mesh sidecar and mesh gateway for small ARM hosts.

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
