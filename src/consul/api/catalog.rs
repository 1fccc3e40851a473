//! `GET /v1/catalog/services` (every service name of a partition: the gateway's routes) and
//! `GET /v1/catalog/datacenters` (the other datacenters a gateway forwards to).

use std::collections::BTreeMap;

use super::nullable;

/// Service names, sorted. Consul's own per-name "services" (`consul`) carry no mesh
/// instances and are left out.
pub fn service_names(body: &str) -> Result<Vec<String>, serde_json::Error> {
    let map: BTreeMap<String, serde_json::Value> =
        nullable(&mut serde_json::Deserializer::from_str(body))?;
    Ok(map.into_keys().filter(|n| n != "consul").collect())
}

pub fn datacenters(body: &str) -> Result<Vec<String>, serde_json::Error> {
    let mut dcs: Vec<String> = nullable(&mut serde_json::Deserializer::from_str(body))?;
    dcs.sort();
    dcs.dedup();
    Ok(dcs)
}

#[cfg(test)]
mod tests {
    use super::super::example;
    use super::*;
    use serde_json::Value;

    #[test]
    fn names_and_datacenters() {
        assert_eq!(
            service_names(&example("catalog-services-kind-filter.json")).unwrap(),
            ["mesh-gateway"]
        );
        assert_eq!(
            service_names(r#"{"consul":[],"web":["v1"],"db":null}"#).unwrap(),
            ["db", "web"]
        );
        assert_eq!(
            datacenters(r#"["dc2","dc1","dc2"]"#).unwrap(),
            ["dc1", "dc2"]
        );
        assert!(datacenters("null").unwrap().is_empty());
        assert!(datacenters("{}").is_err());
    }

    /// Endpoints sidegate does not call (it reads gateways through the health endpoint and
    /// resolves modes itself); their examples are read here so a change of shape in the
    /// reference is noticed, and to record why each is not needed.
    #[test]
    fn unused_endpoint_examples_parse() {
        let v = |name: &str| -> Value { serde_json::from_str(&example(name)).unwrap() };
        // The flat catalog form of a gateway: the same tagged addresses health gives us.
        let c = v("catalog-service-mesh-gateway.json");
        assert_eq!(c[0]["ServiceKind"], "mesh-gateway");
        assert_eq!(c[0]["ServiceTaggedAddresses"]["wan"]["Port"], 443);
        assert_eq!(c[0]["Partition"], "default");
        // Federation states: WAN-federation via gateways, default partition only.
        let f = v("federation-states-mesh-gateways.json");
        assert_eq!(
            f["dc2"][0]["Service"]["TaggedAddresses"]["wan"]["Address"],
            "203.0.113.10"
        );
        assert_eq!(f["dc3"].as_array().map(Vec::len), Some(0));
        // The discovery chain: its target SNI is what `names` builds.
        let d = v("discovery-chain.json");
        let target = &d["Chain"]["Targets"]["api.default.default.dc2"];
        assert_eq!(
            target["SNI"].as_str(),
            Some(
                crate::names::service_sni(
                    "api",
                    "",
                    "default",
                    "default",
                    "dc2",
                    "a1499528-fbf6-df7b-05e5-ae81e1873fc4.consul"
                )
                .as_str()
            )
        );
        assert_eq!(target["MeshGateway"]["Mode"], "remote");
    }
}
