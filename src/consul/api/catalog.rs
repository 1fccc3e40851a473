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

/// `GET /v1/internal/ui/services`: the names of the services of kind `mesh-gateway`, sorted
/// — gateways are found by kind, whatever they were registered as. Consul 1.8 ignores the
/// documented `filter=ServiceKind == "mesh-gateway"` on `/v1/catalog/services` (it answers
/// every name, without kinds), while this summary carries each service's `Kind` in every
/// release; a newer agent's filter would only make the list shorter.
pub fn gateway_names(body: &str) -> Result<Vec<String>, serde_json::Error> {
    #[derive(serde::Deserialize, Default)]
    #[serde(default, rename_all = "PascalCase")]
    struct Summary {
        #[serde(deserialize_with = "nullable")]
        kind: String,
        name: String,
    }
    let all: Vec<Summary> = nullable(&mut serde_json::Deserializer::from_str(body))?;
    let mut names: Vec<String> = all
        .into_iter()
        .filter(|s| s.kind == super::service::KIND_MESH_GATEWAY)
        .map(|s| s.name)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// `GET /v1/partitions` (Enterprise): `[{"Name": "default", ...}, ...]`, names sorted.
pub fn partitions(body: &str) -> Result<Vec<String>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Partition {
        #[serde(rename = "Name")]
        name: String,
    }
    let all: Vec<Partition> = nullable(&mut serde_json::Deserializer::from_str(body))?;
    let mut names: Vec<String> = all.into_iter().map(|p| p.name).collect();
    names.sort();
    names.dedup();
    Ok(names)
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
        // As Consul 1.8.7 answers: Kind absent for a plain service.
        let ui = r#"[{"Name":"consul","Tags":null},{"Kind":"mesh-gateway","Name":"edge-gw"},
                     {"Kind":"connect-proxy","Name":"web-sidecar-proxy"},{"Kind":"mesh-gateway","Name":"gw-b"}]"#;
        assert_eq!(gateway_names(ui).unwrap(), ["edge-gw", "gw-b"]);
        assert!(gateway_names("null").unwrap().is_empty());
        let parts = r#"[{"Name":"part2","Description":"","ModifyIndex":20},{"Name":"default","Description":"Builtin Default Partition"}]"#;
        assert_eq!(partitions(parts).unwrap(), ["default", "part2"]);
        assert!(partitions("{}").is_err());
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
