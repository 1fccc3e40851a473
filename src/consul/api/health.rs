//! `GET /v1/health/connect/:service` (a service's mesh instances: its sidecars' public
//! listeners) and `GET /v1/health/service/:name` (mesh gateways), each instance reduced to
//! the two addresses Consul would dial it on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::nullable;
use super::service::{endpoint, ServiceAddress};
use crate::mesh::Endpoint;

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct CheckServiceNode {
    pub node: Node,
    pub service: NodeService,
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
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct NodeService {
    #[serde(deserialize_with = "nullable")]
    pub kind: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub address: String,
    pub port: u16,
    #[serde(deserialize_with = "nullable")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    pub namespace: String,
    pub partition: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Check {
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub status: String,
}

/// One instance as sidegate keeps it: the address used from inside its own (datacenter,
/// partition) and the one used from elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub struct Instance {
    pub id: String,
    pub node: String,
    pub lan: Endpoint,
    pub wan: Endpoint,
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
}

/// The instances of an answer that sidegate can dial: healthy (the query asks for
/// `passing`, this also drops any critical one it gets), of `kind` when given, with usable
/// addresses. Sorted, so an unchanged catalog gives an unchanged snapshot.
pub fn instances(body: &str, kind: Option<&str>) -> Result<Vec<Instance>, serde_json::Error> {
    let nodes: Vec<CheckServiceNode> = nullable(&mut serde_json::Deserializer::from_str(body))?;
    let mut out: Vec<Instance> = nodes
        .iter()
        .filter(|n| !n.critical())
        .filter(|n| kind.is_none_or(|k| n.service.kind == k))
        .filter_map(|n| {
            let (lan_host, lan_port) = n.best_address(false);
            let (wan_host, wan_port) = n.best_address(true);
            Some(Instance {
                id: n.service.id.clone(),
                node: n.node.node.clone(),
                lan: endpoint(&lan_host, lan_port)?,
                wan: endpoint(&wan_host, wan_port)?,
            })
        })
        .collect();
    out.sort();
    Ok(out)
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
    fn drops_critical_and_unusable_and_reads_null() {
        let body = r#"[
          {"Node":{"Node":"a","Address":"10.0.0.1"},"Service":{"ID":"x","Port":1,"Address":""},"Checks":[{"Status":"critical"}]},
          {"Node":{"Node":"b","Address":"10.0.0.2"},"Service":{"ID":"y","Port":0},"Checks":null},
          {"Node":{"Node":"c","Address":"10.0.0.3","TaggedAddresses":null},"Service":{"ID":"z","Port":3,"TaggedAddresses":null},"Checks":[{"Status":"passing"}]}
        ]"#;
        let got = instances(body, None).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].lan.to_string(), "10.0.0.3:3");
        assert!(instances("null", None).unwrap().is_empty());
        assert!(instances("{\"not\":\"a list\"}", None).is_err());
    }
}
