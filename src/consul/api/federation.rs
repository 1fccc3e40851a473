//! WAN federation through mesh gateways: `GET /v1/internal/federation-states/mesh-gateways`
//! (every federated datacenter's WAN-federation gateways, as the servers replicate them), the
//! `consul` service's instances (this datacenter's servers) and the agent's DNS domain.
//!
//! Why federation states and not the catalog: asking the catalog for another datacenter's
//! gateways (`?dc=dc2`) is forwarded by the servers to dc2 — through the very gateways being
//! looked up. Federation states are held by every datacenter's own servers (the primary keeps
//! them, the secondaries replicate them), so they answer before the WAN path exists.

use std::collections::BTreeMap;

use super::health::{from_nodes, CheckServiceNode, Instance};
use super::nullable;
use super::service::{AgentService, KIND_MESH_GATEWAY};
use crate::mesh::snapshot::{CatalogServer, DEFAULT_DOMAIN};

/// The service meta a mesh gateway is registered with to carry servers' traffic
/// (`consul-wan-federation = "1"`); Consul's gateways route server names only then, and
/// Consul's servers dial only gateways that carry it.
pub const META_WAN_FEDERATION: &str = "consul-wan-federation";

/// Whether a gateway registration asks to carry Consul servers' WAN-federation traffic.
pub fn carries_servers(svc: &AgentService) -> bool {
    svc.kind == KIND_MESH_GATEWAY
        && svc.meta.get(META_WAN_FEDERATION).map(String::as_str) == Some("1")
}

/// The body: datacenter → its mesh gateways (the same shape as `/v1/health/service`).
/// Datacenters without gateways are left out.
pub fn mesh_gateways(body: &str) -> Result<BTreeMap<String, Vec<Instance>>, serde_json::Error> {
    let map: BTreeMap<String, Option<Vec<CheckServiceNode>>> =
        nullable(&mut serde_json::Deserializer::from_str(body))?;
    Ok(map
        .into_iter()
        .map(|(dc, nodes)| {
            let nodes = nodes.unwrap_or_default();
            (dc, from_nodes(&nodes, Some(KIND_MESH_GATEWAY)))
        })
        .filter(|(_, list)| !list.is_empty())
        .collect())
}

/// This datacenter's servers from the `consul` service's instances: the node name the
/// servers address each other by, and the service's address and port, which is the server
/// RPC port (8300 by default; not serf's) — the port that also takes WAN gossip and RPC
/// arriving through gateways, told apart by TLS ALPN. Healthy ones, or all when none is.
pub fn servers(list: &[Instance]) -> Vec<CatalogServer> {
    let (dial, _) = super::health::to_dial(list);
    let mut out: Vec<CatalogServer> = dial
        .into_iter()
        .filter(|i| crate::names::is_label(&i.node))
        .map(|i| CatalogServer {
            node: i.node.clone(),
            address: i.lan.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out.dedup_by(|a, b| a.node == b.node);
    out
}

/// The agent's DNS `domain` as server names use it: no trailing dot, lower case, Consul's
/// default when unset.
pub fn domain(configured: &str) -> String {
    let d = configured.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        DEFAULT_DOMAIN.to_owned()
    } else {
        d
    }
}

#[cfg(test)]
mod tests {
    use super::super::example;
    use super::*;

    #[test]
    fn federation_states_example() {
        let got = mesh_gateways(&example("federation-states-mesh-gateways.json")).unwrap();
        let dc2 = &got["dc2"];
        assert_eq!(dc2.len(), 1);
        assert_eq!(dc2[0].wan.to_string(), "203.0.113.10:443");
        assert_eq!(dc2[0].lan.to_string(), "10.1.0.5:8443");
        assert!(mesh_gateways("null").unwrap().is_empty());
        assert!(mesh_gateways(r#"{"dc3": null}"#).unwrap().is_empty());
        assert!(mesh_gateways("[1]").is_err());
    }

    #[test]
    fn servers_and_domain() {
        let body = r#"[
          {"Node": {"Node": "srv-b", "Address": "10.0.0.2"},
           "Service": {"ID": "consul", "Service": "consul", "Port": 8300},
           "Checks": [{"CheckID": "serfHealth", "Status": "passing"}]},
          {"Node": {"Node": "srv.a", "Address": "10.0.0.1"},
           "Service": {"ID": "consul", "Service": "consul", "Port": 8300}},
          {"Node": {"Node": "srv-c", "Address": "10.0.0.3"},
           "Service": {"ID": "consul", "Service": "consul", "Address": "10.9.9.9", "Port": 8301},
           "Checks": [{"CheckID": "serfHealth", "Status": "critical"}]}
        ]"#;
        let list = super::super::health::instances(body, None).unwrap();
        let got = servers(&list);
        // srv.a cannot be one label of a name; srv-c is critical.
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].node, "srv-b");
        assert_eq!(got[0].address.to_string(), "10.0.0.2:8300");
        assert_eq!(domain("consul."), "consul");
        assert_eq!(domain(""), "consul");
        assert_eq!(domain("Example.Internal."), "example.internal");
    }
}
