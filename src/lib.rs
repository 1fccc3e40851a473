//! sidegate: a Consul service-mesh sidecar and mesh gateway for small ARM hosts.

pub mod cli;
pub mod config;
pub mod lifecycle;
pub mod log;
pub mod mesh;
pub mod metrics;
pub mod proxy;
pub mod sni;
pub mod tls;
