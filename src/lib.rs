//! sidegate: a Consul service-mesh sidecar and mesh gateway for small ARM hosts.

pub mod mesh;
pub mod sni;
