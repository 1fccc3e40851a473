//! `GET /v1/health/connect/:service` (a service's mesh instances: its sidecars' public
//! listeners) and `GET /v1/health/service/:name` (mesh gateways), each instance reduced to
//! the two addresses Consul would dial it on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::nullable;
use super::service::{endpoint, AgentService};
use crate::mesh::Endpoint;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct CheckServiceNode {
    pub node: Node,
    /// The same shape as the agent's own services.
    pub service: AgentService,
    #[serde(deserialize_with = "nullable")]
    pub checks: Vec<Check>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Node {
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub partition: String,
    #[serde(deserialize_with = "nullable")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    pub meta: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Check {
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub status: String,
}

/// One instance as sidegate keeps it: the address used from inside its own (datacenter,
/// partition), the one used from elsewhere, whether its checks pass, and what a resolver's
/// subset filter selects on (the service's tags and meta — a sidecar registration carries
/// its service's — and its node's meta). Empty fields are left out of the saved state, and
/// absent in one saved before they were kept.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
pub struct Instance {
    pub id: String,
    pub node: String,
    pub lan: Endpoint,
    pub wan: Endpoint,
    /// No critical check (Consul's own rule for an endpoint's health).
    pub healthy: bool,
    /// A check in `warning`: a subset with `only_passing` leaves the instance out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
    /// The registration's service name (a sidecar's: `db-sidecar-proxy`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// What a subset filter selects on: the registration's (a sidecar's inherits its
    /// service's tags and meta, and Consul filters these same instances) and its node's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_meta: BTreeMap<String, String>,
}

/// The instances to dial: the healthy ones; when none is healthy, all of them, as Envoy
/// does under Consul (its panic threshold routes to every host once too few are healthy). A
/// whole service flapping to critical — every check of a restarted agent starts critical
/// until it runs — then costs failed attempts, not an outage.
pub fn to_dial(all: &[Instance]) -> (Vec<&Instance>, bool) {
    let healthy: Vec<&Instance> = all.iter().filter(|i| i.healthy).collect();
    if healthy.is_empty() {
        (all.iter().collect(), !all.is_empty())
    } else {
        (healthy, false)
    }
}

impl CheckServiceNode {
    /// Consul's `CheckServiceNode.BestAddress(wan)` (agent/structs/structs.go): from another
    /// place the service's `wan` tagged address (its port if set), else the service address;
    /// an empty address falls back to the node's (`wan` tagged, then plain).
    pub fn best_address(&self, wan: bool) -> (String, u16) {
        let s = &self.service;
        let (mut addr, mut port) = (s.address.clone(), s.port);
        if wan {
            if let Some(w) = s.tagged_addresses.get("wan") {
                addr.clone_from(&w.address);
                if w.port != 0 {
                    port = w.port;
                }
            }
        }
        if addr.is_empty() {
            addr = match self.node.tagged_addresses.get("wan") {
                Some(w) if wan => w.clone(),
                _ => self.node.address.clone(),
            };
        }
        (addr, port)
    }

    fn critical(&self) -> bool {
        self.checks.iter().any(|c| c.status == "critical")
    }

    fn warning(&self) -> bool {
        !self.critical() && self.checks.iter().any(|c| c.status == "warning")
    }
}

/// The instances of an answer that sidegate can dial: of `kind` when given, with usable
/// addresses, each marked healthy or not. Consul's proxies ask without `passing` and filter
/// themselves (Consul's proxycfg asks `/v1/health/connect` without it); so does this. Sorted, so an unchanged catalog gives an
/// unchanged snapshot.
pub fn instances(body: &str, kind: Option<&str>) -> Result<Vec<Instance>, serde_json::Error> {
    let nodes: Vec<CheckServiceNode> = nullable(&mut serde_json::Deserializer::from_str(body))?;
    Ok(from_nodes(&nodes, kind))
}

/// `instances` of nodes already parsed (e.g. one datacenter's list in a larger answer).
pub fn from_nodes(nodes: &[CheckServiceNode], kind: Option<&str>) -> Vec<Instance> {
    let mut out: Vec<Instance> = nodes
        .iter()
        .filter(|n| kind.is_none_or(|k| n.service.kind == k))
        .filter_map(|n| {
            let (lan_host, lan_port) = n.best_address(false);
            let (wan_host, wan_port) = n.best_address(true);
            Some(Instance {
                id: n.service.id.clone(),
                node: n.node.node.clone(),
                lan: endpoint(&lan_host, lan_port)?,
                wan: endpoint(&wan_host, wan_port)?,
                healthy: !n.critical(),
                warning: n.warning(),
                service: n.service.service.clone(),
                meta: n.service.meta.clone(),
                tags: n.service.tags.clone(),
                node_meta: n.node.meta.clone(),
            })
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::super::example;
    use super::*;

    #[test]
    fn health_connect_example_field_by_field() {
        let nodes: Vec<CheckServiceNode> =
            serde_json::from_str(&example("health-connect.json")).unwrap();
        let n = &nodes[0];
        assert_eq!(n.node.node, "node-a");
        assert_eq!(n.node.datacenter, "dc2");
        assert_eq!(n.node.partition, "default");
        assert_eq!(n.node.tagged_addresses["wan"], "10.1.2.7");
        assert_eq!(n.service.kind, "connect-proxy");
        assert_eq!(n.service.id, "api-sidecar-proxy");
        assert_eq!(
            (n.service.namespace.as_str(), n.service.partition.as_str()),
            ("default", "default")
        );
        assert_eq!(n.checks.len(), 3);
        assert_eq!(n.checks[1].check_id, "service:api-sidecar-proxy:1");
        let got = instances(&example("health-connect.json"), None).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].lan.to_string(), "10.1.2.7:21000");
        assert_eq!(
            got[0].wan.to_string(),
            "10.1.2.7:21000",
            "no wan tag: service address"
        );
    }

    #[test]
    fn gateway_lan_and_wan_addresses() {
        let got = instances(
            &example("health-service-mesh-gateway.json"),
            Some("mesh-gateway"),
        )
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "mesh-gateway");
        assert_eq!(got[0].node, "gw-node-1");
        assert_eq!(got[0].lan.to_string(), "10.1.0.5:8443");
        assert_eq!(got[0].wan.to_string(), "203.0.113.10:443");
        // Another kind under that name is not a gateway.
        assert!(instances(
            &example("health-service-mesh-gateway.json"),
            Some("connect-proxy")
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn best_address_falls_back_like_consul() {
        use super::super::service::ServiceAddress;
        let mut n = CheckServiceNode::default();
        n.node.address = "10.0.0.1".into();
        n.node
            .tagged_addresses
            .insert("wan".into(), "198.51.100.1".into());
        n.service.port = 21000;
        assert_eq!(n.best_address(false), ("10.0.0.1".into(), 21000));
        assert_eq!(n.best_address(true), ("198.51.100.1".into(), 21000));
        n.service.address = "10.0.0.2".into();
        assert_eq!(n.best_address(true), ("10.0.0.2".into(), 21000));
        n.service.tagged_addresses.insert(
            "wan".into(),
            ServiceAddress {
                address: "lb.example.com".into(),
                port: 0,
            },
        );
        assert_eq!(n.best_address(true), ("lb.example.com".into(), 21000));
        assert_eq!(n.best_address(false), ("10.0.0.2".into(), 21000));
    }

    #[test]
    fn marks_critical_drops_unusable_and_reads_null() {
        let body = r#"[
          {"Node":{"Node":"a","Address":"10.0.0.1"},"Service":{"ID":"x","Port":1,"Address":""},"Checks":[{"Status":"critical"}]},
          {"Node":{"Node":"b","Address":"10.0.0.2"},"Service":{"ID":"y","Port":0},"Checks":null},
          {"Node":{"Node":"c","Address":"10.0.0.3","TaggedAddresses":null},"Service":{"ID":"z","Port":3,"TaggedAddresses":null},"Checks":[{"Status":"passing"}]}
        ]"#;
        let got = instances(body, None).unwrap();
        let shown: Vec<(String, bool)> =
            got.iter().map(|i| (i.lan.to_string(), i.healthy)).collect();
        assert_eq!(
            shown,
            [("10.0.0.1:1".into(), false), ("10.0.0.3:3".into(), true)]
        );
        let (dial, panic) = to_dial(&got);
        assert_eq!((dial.len(), panic), (1, false), "healthy ones only");
        let (dial, panic) = to_dial(&got[..1]);
        assert_eq!((dial.len(), panic), (1, true), "none healthy: all of them");
        assert_eq!(to_dial(&[]), (Vec::new(), false));
        assert!(instances("null", None).unwrap().is_empty());
        assert!(instances("{\"not\":\"a list\"}", None).is_err());
    }
}
