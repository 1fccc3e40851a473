//! Consul's names for things in the mesh: TLS SNI values and SPIFFE IDs.
//!
//! The one place where these strings are built and parsed, copied from Consul's
//! agent/connect/sni.go and uri*.go (CE build) so that Consul's own Envoy proxies and gateways
//! and ours agree byte for byte. `sni` builds routing names, `spiffe` the certificate
//! identities; both are re-exported here so callers only say `names::...`. Below both `tls` (certificates carry SPIFFE IDs) and
//! `mesh` (routes and plans are built from names), so neither has to import the other for them.

mod sni;
mod spiffe;

pub use sni::{gateway_sni, peered_service_sni, peering_server_san, query_sni, service_sni};
pub use spiffe::{SpiffeError, SpiffeId};

/// Datacenter, partition, namespace and service names become single SNI labels, so they must
/// be one DNS-safe label: no dots, nothing a TLS client would refuse to send. Applies to names
/// from the file and from the agent alike.
pub fn is_label(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !v.starts_with('-')
}
