//! Central configuration with Consul's semantics (`proxy-defaults`, `service-defaults`), and
//! the gathering of every mode level for one upstream from it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::mode::{Mode, ModeLevels};
use super::sidecar::{SidecarSpec, UpstreamSpec};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConfigEntries {
    /// `proxy-defaults/global` `MeshGateway` (this host's partition).
    pub proxy_defaults: Option<Mode>,
    /// `service-defaults`, by service name.
    pub service_defaults: BTreeMap<String, ServiceDefaults>,
    /// `proxy-defaults/global` of other partitions, by partition (Consul source only: a
    /// file has one `proxy_defaults`). Consulted for upstreams into those partitions.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub partition_proxy_defaults: BTreeMap<String, Mode>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceDefaults {
    pub mesh_gateway: Option<Mode>,
    /// `upstream_config.defaults.mesh_gateway`.
    pub upstream_defaults: Option<Mode>,
    /// `upstream_config.overrides[]`, in file order (the first match wins).
    pub upstream_overrides: Vec<UpstreamOverride>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpstreamOverride {
    pub name: String,
    /// Empty: any namespace / partition.
    pub namespace: String,
    pub partition: String,
    pub mesh_gateway: Option<Mode>,
}

impl ConfigEntries {
    /// Every level's setting for `upstream` of `sidecar` (consul-mesh.md §4.2). With one file
    /// there is one `proxy_defaults`, so the target partition's level stays unset; the agent
    /// source fills `partition_proxy_defaults` for targets in other partitions.
    pub fn mode_levels(&self, sidecar: &SidecarSpec, upstream: &UpstreamSpec) -> ModeLevels {
        let downstream = self.service_defaults.get(&sidecar.service);
        let target = self.service_defaults.get(&upstream.destination_name);
        let matches = |o: &&UpstreamOverride| {
            o.name == upstream.destination_name
                && (o.namespace.is_empty() || o.namespace == upstream.destination_namespace)
                && (o.partition.is_empty() || o.partition == upstream.place.partition)
        };
        ModeLevels {
            upstream: upstream.mesh_gateway,
            upstream_config_override: downstream
                .and_then(|d| d.upstream_overrides.iter().find(matches))
                .and_then(|o| o.mesh_gateway),
            proxy: sidecar.mesh_gateway,
            upstream_config_defaults: downstream.and_then(|d| d.upstream_defaults),
            service_defaults: downstream.and_then(|d| d.mesh_gateway),
            proxy_defaults: self.proxy_defaults,
            target_service_defaults: target.and_then(|t| t.mesh_gateway),
            target_proxy_defaults: self
                .partition_proxy_defaults
                .get(&upstream.place.partition)
                .copied(),
        }
    }
}
