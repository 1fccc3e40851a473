//! `GET /v1/config/proxy-defaults/global` and `GET /v1/config/service-defaults/:name`: the
//! central-config levels of the mesh-gateway mode (see `mesh::mode`). A 404 means the
//! entry does not exist, which is an answer too.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{nullable, MeshGatewayConfig};
use crate::mesh::config_entries::{ServiceDefaults, UpstreamOverride};
use crate::mesh::mode::{Mode, UnknownMode};

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ProxyDefaultsEntry {
    pub kind: String,
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
    pub partition: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ServiceDefaultsEntry {
    pub kind: String,
    pub name: String,
    pub protocol: String,
    #[serde(deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
    /// Consul 1.10+.
    #[serde(deserialize_with = "nullable")]
    pub upstream_config: UpstreamConfiguration,
    pub partition: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct UpstreamConfiguration {
    #[serde(deserialize_with = "nullable")]
    pub overrides: Vec<UpstreamConfig>,
    #[serde(deserialize_with = "nullable")]
    pub defaults: Option<UpstreamConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct UpstreamConfig {
    pub name: String,
    pub namespace: String,
    pub partition: String,
    pub peer: String,
    pub connect_timeout_ms: i64,
    #[serde(deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
}

/// A config entry whose mesh-gateway mode (its own, or one of its upstreams') is not a mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryModeError {
    /// `proxy-defaults` or `service-defaults`.
    pub kind: &'static str,
    pub name: String,
    pub mode: UnknownMode,
}

impl fmt::Display for EntryModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let EntryModeError { kind, name, mode } = self;
        write!(f, "{kind} {name:?}: mesh gateway mode {mode}")
    }
}

impl std::error::Error for EntryModeError {}

impl ProxyDefaultsEntry {
    pub fn mode(&self) -> Result<Option<Mode>, EntryModeError> {
        self.mesh_gateway.parsed().map_err(|mode| EntryModeError {
            kind: "proxy-defaults",
            name: self.name.clone(),
            mode,
        })
    }
}

impl ServiceDefaultsEntry {
    /// The mesh's view of the entry. Overrides for peers are left out: sidegate does not
    /// serve peered upstreams, and a peer override must not match a same-named service.
    pub fn to_mesh(&self) -> Result<ServiceDefaults, EntryModeError> {
        let at = |mode| EntryModeError {
            kind: "service-defaults",
            name: self.name.clone(),
            mode,
        };
        let uc = &self.upstream_config;
        let mut overrides = Vec::with_capacity(uc.overrides.len());
        for o in uc.overrides.iter().filter(|o| o.peer.is_empty()) {
            overrides.push(UpstreamOverride {
                name: o.name.clone(),
                namespace: o.namespace.clone(),
                partition: o.partition.clone(),
                mesh_gateway: o.mesh_gateway.parsed().map_err(at)?,
            });
        }
        Ok(ServiceDefaults {
            mesh_gateway: self.mesh_gateway.parsed().map_err(at)?,
            upstream_defaults: match &uc.defaults {
                Some(d) => d.mesh_gateway.parsed().map_err(at)?,
                None => None,
            },
            upstream_overrides: overrides,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::example;
    use super::*;

    #[test]
    fn proxy_defaults_example_field_by_field() {
        let e: ProxyDefaultsEntry =
            serde_json::from_str(&example("config-proxy-defaults.json")).unwrap();
        assert_eq!(
            (e.kind.as_str(), e.name.as_str()),
            ("proxy-defaults", "global")
        );
        assert_eq!(
            (e.partition.as_str(), e.namespace.as_str()),
            ("default", "default")
        );
        assert_eq!(e.mode(), Ok(Some(Mode::Local)));
    }

    #[test]
    fn service_defaults_example_field_by_field() {
        let e: ServiceDefaultsEntry =
            serde_json::from_str(&example("config-service-defaults.json")).unwrap();
        assert_eq!(
            (e.kind.as_str(), e.name.as_str()),
            ("service-defaults", "api")
        );
        assert_eq!(e.protocol, "http");
        let o = &e.upstream_config.overrides[0];
        assert_eq!(
            (o.name.as_str(), o.partition.as_str(), o.namespace.as_str()),
            ("billing", "finance", "default")
        );
        assert_eq!(o.connect_timeout_ms, 2000);
        assert_eq!(
            e.upstream_config
                .defaults
                .as_ref()
                .map(|d| d.connect_timeout_ms),
            Some(4000)
        );
        let m = e.to_mesh().unwrap();
        assert_eq!(m.mesh_gateway, Some(Mode::Remote));
        assert_eq!(m.upstream_defaults, None, "Defaults.MeshGateway is {{}}");
        assert_eq!(
            m.upstream_overrides,
            [UpstreamOverride {
                name: "billing".into(),
                namespace: "default".into(),
                partition: "finance".into(),
                mesh_gateway: Some(Mode::Local),
            }]
        );
    }

    #[test]
    fn consul_1_8_entries_and_bad_modes() {
        // 1.8 has no UpstreamConfig; Go may also write null for it.
        let e: ServiceDefaultsEntry = serde_json::from_str(
            r#"{"Kind":"service-defaults","Name":"db","Protocol":"tcp","MeshGateway":{"Mode":"local"},"UpstreamConfig":null}"#,
        )
        .unwrap();
        let m = e.to_mesh().unwrap();
        assert_eq!(m.mesh_gateway, Some(Mode::Local));
        assert!(m.upstream_overrides.is_empty());
        let bad: ServiceDefaultsEntry =
            serde_json::from_str(r#"{"Name":"db","MeshGateway":{"Mode":"bogus"}}"#).unwrap();
        assert!(bad.to_mesh().unwrap_err().to_string().contains("\"db\""));
        assert_eq!(
            bad.to_mesh().unwrap_err().to_string(),
            r#"service-defaults "db": mesh gateway mode "bogus" is not "none", "local" or "remote""#
        );
        let peer: ServiceDefaultsEntry = serde_json::from_str(
            r#"{"Name":"web","UpstreamConfig":{"Overrides":[{"Name":"db","Peer":"p1","MeshGateway":{"Mode":"remote"}}]}}"#,
        )
        .unwrap();
        assert!(peer.to_mesh().unwrap().upstream_overrides.is_empty());
    }

    /// Parsed for completeness; sidegate reads exports only to explain unreadable gateways.
    #[test]
    fn exported_services_examples_parse() {
        let v: serde_json::Value =
            serde_json::from_str(&example("config-exported-services.json")).unwrap();
        assert_eq!(v["Services"][1]["Name"], "mesh-gateway");
        assert_eq!(v["Services"][1]["Consumers"][0]["Partition"], "default");
        let list: serde_json::Value =
            serde_json::from_str(&example("exported-services-list.json")).unwrap();
        assert_eq!(list[1]["Service"], "mesh-gateway");
        assert_eq!(list[1]["Consumers"]["Partitions"][0], "default");
    }
}
