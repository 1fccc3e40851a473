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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mesh::mode::Mode::{Local, None as Off, Remote};
    use crate::mesh::sidecar::{Action, Bind, Intentions};
    use crate::mesh::{Endpoint, Place};

    fn sidecar(service: &str, mesh_gateway: Option<Mode>) -> SidecarSpec {
        SidecarSpec {
            service: service.into(),
            public_listener: None,
            local_service_address: Endpoint::Addr(([127, 0, 0, 1], 8080).into()),
            local_connect_timeout: Duration::from_secs(5),
            mesh_gateway,
            intentions: Intentions {
                default: Action::Allow,
                rules: Vec::new(),
            },
            upstreams: Vec::new(),
            authority: None,
            max_connections: 1,
        }
    }

    fn upstream(name: &str, namespace: &str, partition: &str, mode: Option<Mode>) -> UpstreamSpec {
        UpstreamSpec {
            destination_name: name.into(),
            destination_namespace: namespace.into(),
            place: Place::new("dc1", partition),
            bind: Bind::Tcp(([127, 0, 0, 1], 9191).into()),
            connect_timeout: Duration::from_secs(5),
            mesh_gateway: mode,
            max_connections: 1,
        }
    }

    fn only(name: &str, namespace: &str, partition: &str, mode: Mode) -> UpstreamOverride {
        UpstreamOverride {
            name: name.into(),
            namespace: namespace.into(),
            partition: partition.into(),
            mesh_gateway: Some(mode),
        }
    }

    /// Every level is read from where Consul keeps it: the downstream's service-defaults
    /// (the sidecar's service, never the target's) for the override, the upstream defaults
    /// and its own mode; the target's service-defaults; the target partition's proxy-defaults.
    /// An override applies only to its own name in its own namespace and partition.
    #[test]
    fn gathers_each_level_and_matches_overrides_exactly() {
        let mut entries = ConfigEntries {
            proxy_defaults: Some(Local),
            partition_proxy_defaults: [("part2".to_owned(), Remote)].into(),
            ..ConfigEntries::default()
        };
        entries.service_defaults.insert(
            "web".into(),
            ServiceDefaults {
                mesh_gateway: Some(Remote),
                upstream_defaults: Some(Local),
                upstream_overrides: vec![
                    only("db", "ns2", "default", Remote),
                    only("db", "default", "part9", Local),
                    only("db", "default", "part2", Off),
                ],
            },
        );
        // db's own entry: its mode is the target level; its overrides are for db's upstreams.
        entries.service_defaults.insert(
            "db".into(),
            ServiceDefaults {
                mesh_gateway: Some(Off),
                upstream_defaults: Some(Remote),
                upstream_overrides: vec![only("db", "default", "default", Local)],
            },
        );
        let web = sidecar("web", Some(Remote));
        let levels = |override_, target_service_defaults, target_proxy_defaults| ModeLevels {
            upstream: Some(Local),
            upstream_config_override: override_,
            proxy: Some(Remote),
            upstream_config_defaults: Some(Local),
            service_defaults: Some(Remote),
            proxy_defaults: Some(Local),
            target_service_defaults,
            target_proxy_defaults,
        };
        let cases = [
            // The override for db in part2.
            (
                upstream("db", "default", "part2", Some(Local)),
                levels(Some(Off), Some(Off), Some(Remote)),
            ),
            // The override for namespace ns2 only.
            (
                upstream("db", "ns2", "default", Some(Local)),
                levels(Some(Remote), Some(Off), None),
            ),
            // db in default/default: every override names another namespace or partition.
            (
                upstream("db", "default", "default", Some(Local)),
                levels(None, Some(Off), None),
            ),
            // Another name: no override, no target service-defaults.
            (
                upstream("api", "default", "part2", Some(Local)),
                levels(None, None, Some(Remote)),
            ),
        ];
        for (up, want) in cases {
            assert_eq!(
                entries.mode_levels(&web, &up),
                want,
                "{} in {}/{}",
                up.destination_name,
                up.destination_namespace,
                up.place.partition
            );
        }

        // A sidecar for a service without entries, and no levels of its own.
        let bare = sidecar("cache", None);
        assert_eq!(
            entries.mode_levels(&bare, &upstream("db", "default", "default", None)),
            ModeLevels {
                proxy_defaults: Some(Local),
                target_service_defaults: Some(Off),
                ..ModeLevels::default()
            }
        );
        assert_eq!(
            ConfigEntries::default().mode_levels(&bare, &upstream("db", "default", "part2", None)),
            ModeLevels::default()
        );
    }
}
