//! Central configuration with Consul's semantics (`proxy-defaults`, `service-defaults`), and
//! the gathering of every mode level for one upstream from it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::chain::{Resolvers, Target};
use super::mode::{Mode, ModeLevels};
use super::place::{DEFAULT_NAMESPACE, DEFAULT_PARTITION};
use super::sidecar::{SidecarSpec, UpstreamSpec};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConfigEntries {
    /// `proxy-defaults/global` `MeshGateway` (this host's partition).
    pub proxy_defaults: Option<Mode>,
    /// `service-defaults`, by service name: a file's (they apply to a target of that name in
    /// any partition), and with Consul the downstream's own.
    pub service_defaults: BTreeMap<String, ServiceDefaults>,
    /// Consul source: the upstream targets' `service-defaults`, each read from the target's
    /// own namespace and partition and kept by `target_key`. Two partitions may each have a
    /// `db` with its own entry, and a target may share the downstream's name; a map by name
    /// would give one of them the other's mode.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub target_service_defaults: BTreeMap<String, ServiceDefaults>,
    /// Whether targets are looked up in `target_service_defaults` (the Consul source) rather
    /// than by name in `service_defaults` (a file).
    #[serde(skip)]
    pub targets_by_place: bool,
    /// `proxy-defaults/global` of other partitions, by partition (Consul source only: a
    /// file has one `proxy_defaults`). Consulted for upstreams into those partitions.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub partition_proxy_defaults: BTreeMap<String, Mode>,
    /// The namespace and partition the downstream's own `service-defaults` entry belongs to:
    /// this host's (`[mesh]` for a file, the sidecar registration's with Consul). Empty
    /// means `default`, as in Consul.
    pub downstream_namespace: String,
    pub downstream_partition: String,
    /// `service-resolver` entries, by `target_key` of their name, namespace and partition.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub service_resolvers: Resolvers,
    /// Whether `service_resolvers` holds every resolver there is (a file). Until the Consul
    /// source takes chains from the agent, its gateways do not know the subsets and pass any
    /// subset label of a known service to the destination, as before.
    #[serde(skip)]
    pub resolvers_known: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceDefaults {
    pub mesh_gateway: Option<Mode>,
    /// `upstream_config.defaults.mesh_gateway`.
    pub upstream_defaults: Option<Mode>,
    /// `upstream_config.overrides[]`, in file order (of two for one upstream, the last wins).
    pub upstream_overrides: Vec<UpstreamOverride>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpstreamOverride {
    pub name: String,
    /// As written. Empty: the enclosing entry's, never "any" (`UpstreamOverride::is_for`).
    pub namespace: String,
    pub partition: String,
    pub mesh_gateway: Option<Mode>,
}

impl UpstreamOverride {
    /// Whether this override, held by an entry of `entry_namespace`/`entry_partition`, is for
    /// `upstream`. Consul gives an override without a namespace or partition those of the
    /// entry holding it (agent/structs/config_entry.go: `ServiceConfigEntry.Normalize` calls
    /// `UpstreamConfig.NormalizeWithName`, which does `EnterpriseMeta.MergeNoWildcard` with
    /// the entry's), then finds it by the upstream's exact service ID, name + namespace +
    /// partition (agent/configentry/resolve.go `ComputeResolvedServiceConfig`). A service ID
    /// has no datacenter, so an override applies in every datacenter.
    fn is_for(
        &self,
        upstream: &UpstreamSpec,
        entry_namespace: &str,
        entry_partition: &str,
    ) -> bool {
        self.name == upstream.destination_name
            && non_empty_or(&self.namespace, entry_namespace) == upstream.destination_namespace
            && non_empty_or(&self.partition, entry_partition) == upstream.place.partition
    }
}

/// `value`, or `default` when it is empty (Consul's `NamespaceOrDefault` and the like).
fn non_empty_or<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() {
        default
    } else {
        value
    }
}

/// The key of a target's entry in `ConfigEntries::target_service_defaults`:
/// `partition/namespace/name` (none of them can hold a `/`), lower case: Consul compares
/// these names without regard to case.
pub fn target_key(name: &str, namespace: &str, partition: &str) -> String {
    let namespace = non_empty_or(namespace, DEFAULT_NAMESPACE);
    let partition = non_empty_or(partition, DEFAULT_PARTITION);
    format!("{partition}/{namespace}/{name}").to_ascii_lowercase()
}

impl ConfigEntries {
    /// A file without `[config_entries]`: no entries, and that is all of them (a file is
    /// the whole truth, so no subset exists that the gateway does not know of).
    pub fn file_default() -> ConfigEntries {
        ConfigEntries {
            targets_by_place: true,
            resolvers_known: true,
            ..ConfigEntries::default()
        }
    }

    /// `mode_levels` for one target of `upstream`'s chain: the levels the upstream and the
    /// downstream set apply to every target (Consul passes them to its compiler as the
    /// override), the target levels are the target's own.
    pub fn target_mode_levels(
        &self,
        sidecar: &SidecarSpec,
        upstream: &UpstreamSpec,
        target: &Target,
    ) -> ModeLevels {
        let mut as_target = upstream.clone();
        as_target.destination_name.clone_from(&target.service);
        as_target
            .destination_namespace
            .clone_from(&target.namespace);
        as_target.place = super::Place::new(&target.datacenter, &target.partition);
        let own = self.mode_levels(sidecar, &as_target);
        ModeLevels {
            target_service_defaults: own.target_service_defaults,
            target_proxy_defaults: own.target_proxy_defaults,
            ..self.mode_levels(sidecar, upstream)
        }
    }

    /// The mode Consul's compiler takes as the chain's override (`OverrideMeshGateway`): the
    /// levels the upstream and the downstream set, which the agent resolves before it asks
    /// for the chain; `None` leaves each target to its own service-defaults and its
    /// partition's proxy-defaults, as the compiler does.
    pub fn chain_override(&self, sidecar: &SidecarSpec, upstream: &UpstreamSpec) -> Option<Mode> {
        let levels = ModeLevels {
            target_service_defaults: None,
            target_proxy_defaults: None,
            ..self.mode_levels(sidecar, upstream)
        };
        match levels.resolve() {
            (_, super::mode::ModeSource::Default) => None,
            (mode, _) => Some(mode),
        }
    }

    /// Every level's setting for `upstream` of `sidecar` (Consul's precedence). With one file
    /// there is one `proxy_defaults`, so the target partition's level stays unset; the agent
    /// source fills `partition_proxy_defaults` for targets in other partitions.
    pub fn mode_levels(&self, sidecar: &SidecarSpec, upstream: &UpstreamSpec) -> ModeLevels {
        let downstream = self.service_defaults.get(&sidecar.service);
        let target = if self.targets_by_place {
            self.target_service_defaults.get(&target_key(
                &upstream.destination_name,
                &upstream.destination_namespace,
                &upstream.place.partition,
            ))
        } else {
            self.service_defaults.get(&upstream.destination_name)
        };
        let namespace = non_empty_or(&self.downstream_namespace, DEFAULT_NAMESPACE);
        let partition = non_empty_or(&self.downstream_partition, DEFAULT_PARTITION);
        ModeLevels {
            upstream: upstream.mesh_gateway,
            // Consul keeps the overrides in a map by service ID (resolve.go), so a later one
            // for the same upstream replaces an earlier one, with its mode even when unset.
            upstream_config_override: downstream
                .and_then(|d| {
                    d.upstream_overrides
                        .iter()
                        .rfind(|o| o.is_for(upstream, namespace, partition))
                })
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
    use crate::mesh::intentions::{Action, Intentions};
    use crate::mesh::mode::Mode::{Local, None as Off, Remote};
    use crate::mesh::sidecar::Bind;
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
            connect_timeout: None,
            mesh_gateway: mode,
            max_connections: 1,
            chain: None,
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

    /// web's entry, in `namespace`/`partition`, with these overrides and nothing else.
    fn web_entry_in(
        namespace: &str,
        partition: &str,
        overrides: Vec<UpstreamOverride>,
    ) -> ConfigEntries {
        let web = ServiceDefaults {
            upstream_overrides: overrides,
            ..ServiceDefaults::default()
        };
        ConfigEntries {
            service_defaults: [("web".to_owned(), web)].into(),
            downstream_namespace: namespace.into(),
            downstream_partition: partition.into(),
            ..ConfigEntries::default()
        }
    }

    /// Consul fills an override's missing namespace or partition with those of the entry
    /// holding it and then wants the upstream's exact service ID: `{ name = "db" }` in an
    /// entry of default/default is for db there, not for db in part2 or in ns2. A namespace
    /// or partition written out is matched exactly.
    #[test]
    fn an_override_without_namespace_or_partition_means_its_entrys() {
        let web = sidecar("web", None);
        // (entry's namespace, partition), (override's), (target's), whether it applies.
        const D: &str = "default";
        let cases = [
            ((D, D), ("", ""), (D, D), true),
            ((D, D), ("", ""), (D, "part2"), false),
            ((D, D), ("", ""), ("ns2", D), false),
            // An entry without a namespace or partition is in default/default.
            (("", ""), ("", ""), (D, D), true),
            (("", ""), ("", ""), (D, "part2"), false),
            (("", ""), ("", ""), ("ns2", D), false),
            // The entry's own, whatever it is.
            (("ns2", "part2"), ("", ""), ("ns2", "part2"), true),
            (("ns2", "part2"), ("", ""), (D, "part2"), false),
            (("ns2", "part2"), ("", ""), ("ns2", D), false),
            (("ns2", "part2"), ("", ""), (D, D), false),
            // One given: the other is the entry's.
            ((D, D), ("", "part2"), (D, "part2"), true),
            ((D, D), ("", "part2"), ("ns2", "part2"), false),
            ((D, D), ("", "part2"), (D, D), false),
            ((D, D), ("ns2", ""), ("ns2", D), true),
            ((D, D), ("ns2", ""), ("ns2", "part2"), false),
            ((D, D), ("ns2", ""), (D, D), false),
            // Both given: exactly those, whatever the entry's.
            ((D, D), ("ns2", "part2"), ("ns2", "part2"), true),
            ((D, D), ("ns2", "part2"), ("ns2", D), false),
            ((D, D), ("ns2", "part2"), (D, "part2"), false),
            (("ns2", "part2"), (D, D), (D, D), true),
            (("ns2", "part2"), (D, D), ("ns2", "part2"), false),
        ];
        for ((entry_ns, entry_ap), (ns, ap), (target_ns, target_ap), applies) in cases {
            let entries = web_entry_in(entry_ns, entry_ap, vec![only("db", ns, ap, Remote)]);
            let levels = entries.mode_levels(&web, &upstream("db", target_ns, target_ap, None));
            assert_eq!(
                levels.upstream_config_override,
                applies.then_some(Remote),
                "override {ns:?}/{ap:?} in an entry of {entry_ns:?}/{entry_ap:?}, for db in {target_ns}/{target_ap}"
            );
        }
    }

    /// Consul keeps the overrides in a map by service ID, so of two for the same upstream the
    /// later replaces the earlier, even one that sets no mode. `{ name = "db" }` in an entry
    /// of default/default has the same ID as db written out in default/default.
    #[test]
    fn of_two_overrides_for_one_upstream_the_last_wins() {
        let web = sidecar("web", None);
        let unset = UpstreamOverride {
            mesh_gateway: None,
            ..only("db", "", "", Off)
        };
        let cases = [
            (
                vec![
                    only("db", "", "", Remote),
                    only("db", "default", "default", Local),
                ],
                Some(Local),
            ),
            (
                vec![
                    only("db", "default", "default", Local),
                    only("db", "", "", Remote),
                ],
                Some(Remote),
            ),
            (vec![only("db", "", "", Remote), unset], None),
            // Another ID in between changes nothing for this one.
            (
                vec![
                    only("db", "", "", Remote),
                    only("db", "", "part2", Local),
                    only("db", "", "", Off),
                    only("db", "", "part2", Remote),
                ],
                Some(Off),
            ),
        ];
        for (overrides, want) in cases {
            let entries = web_entry_in("default", "default", overrides.clone());
            let levels = entries.mode_levels(&web, &upstream("db", "default", "default", None));
            assert_eq!(levels.upstream_config_override, want, "{overrides:?}");
        }
    }

    /// With Consul, a target's service-defaults is the one of its own namespace and
    /// partition: a same-named service elsewhere, or the downstream itself, never lends it
    /// its mode. A file's entries stay by name.
    #[test]
    fn consul_targets_take_their_own_places_service_defaults() {
        let mode = |m| ServiceDefaults {
            mesh_gateway: Some(m),
            ..ServiceDefaults::default()
        };
        let mut entries = ConfigEntries {
            targets_by_place: true,
            ..ConfigEntries::default()
        };
        entries.service_defaults.insert("web".into(), mode(Local));
        entries
            .target_service_defaults
            .insert(target_key("db", "default", "part2"), mode(Remote));
        entries
            .target_service_defaults
            .insert(target_key("db", "", ""), mode(Off));
        let web = sidecar("web", None);
        let target = |entries: &ConfigEntries, name, ns, part| {
            entries
                .mode_levels(&web, &upstream(name, ns, part, None))
                .target_service_defaults
        };
        assert_eq!(target(&entries, "db", "default", "part2"), Some(Remote));
        assert_eq!(
            target(&entries, "db", "default", "default"),
            Some(Off),
            "empty = default"
        );
        assert_eq!(
            target(&entries, "db", "ns3", "default"),
            None,
            "no entry in ns3"
        );
        assert_eq!(
            target(&entries, "web", "default", "part2"),
            None,
            "not the downstream's"
        );
        // The same entries read from a file: by name, whatever the place.
        entries.targets_by_place = false;
        entries.service_defaults.insert("db".into(), mode(Remote));
        assert_eq!(target(&entries, "db", "ns3", "default"), Some(Remote));
        assert_eq!(target(&entries, "web", "default", "part2"), Some(Local));
    }
}
