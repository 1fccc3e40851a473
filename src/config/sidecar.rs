//! `[sidecar]`, `[[sidecar.upstreams]]`, `[sidecar.intentions]` and `[config_entries]`, with
//! Consul's names and defaults (Consul's `proxy.upstreams[]`; `config/README.md`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::fields::Fields;
use super::sections::{endpoint_value, name_ok, name_or};
use crate::mesh::config_entries::{target_key, ConfigEntries, ServiceDefaults, UpstreamOverride};
use crate::mesh::intentions::{Action, IntentionRule, Intentions};
use crate::mesh::mode::Mode;
use crate::mesh::place::{DEFAULT_NAMESPACE, DEFAULT_PARTITION};
use crate::mesh::sidecar::{Bind, SidecarSpec, UpstreamSpec};
use crate::mesh::snapshot::Here;
use crate::mesh::Place;

pub fn sidecar(t: &Fields<'_>, here: Option<&Here>) -> Option<SidecarSpec> {
    let service = t
        .required_str("service")
        .filter(|v| name_ok(t, "service", v));
    let public_listener = t.str("public_listener").and_then(|s| {
        let parsed = s.parse::<SocketAddr>().ok();
        if parsed.is_none() {
            t.error(
                "public_listener",
                format!("{s:?} is not an IP address with a port, e.g. 0.0.0.0:21000"),
            );
        }
        parsed
    });
    let local_service_address = endpoint_value(
        t,
        "local_service_address",
        t.str("local_service_address")
            .unwrap_or(SidecarSpec::DEFAULT_LOCAL_SERVICE_ADDRESS),
    );
    let local_connect_timeout = t.millis(
        "local_connect_timeout_ms",
        SidecarSpec::DEFAULT_LOCAL_CONNECT_TIMEOUT_MS,
    );
    let mesh_gateway = mode(t);
    let max_connections = max_connections(t, SidecarSpec::DEFAULT_MAX_CONNECTIONS);
    let intentions = match t.table("intentions") {
        Some(i) => intentions(&i, here),
        None => Some(Intentions {
            default: Action::Allow,
            rules: Vec::new(),
        }),
    };
    let upstreams: Vec<Option<UpstreamSpec>> = t
        .tables("upstreams")
        .iter()
        .map(|u| upstream(u, here))
        .collect();
    t.finish();
    let upstreams: Option<Vec<UpstreamSpec>> = upstreams.into_iter().collect();
    Some(SidecarSpec {
        service: service?.to_owned(),
        public_listener,
        local_service_address: local_service_address?,
        local_connect_timeout,
        mesh_gateway: mesh_gateway?,
        intentions: intentions?,
        upstreams: distinct_binds(t, upstreams?)?,
        authority: None,
        max_connections,
    })
}

fn upstream(u: &Fields<'_>, here: Option<&Here>) -> Option<UpstreamSpec> {
    let name = u
        .required_str("destination_name")
        .filter(|v| name_ok(u, "destination_name", v));
    let (namespace, partition) =
        ns_and_partition(u, "destination_namespace", "destination_partition", here);
    let datacenter = name_or(u, "datacenter", here.map_or("", |h| &h.place.datacenter));
    let bind = bind(u);
    let connect_timeout = u
        .int("connect_timeout_ms", 1, 86_400_000)
        .map(|ms| std::time::Duration::from_millis(ms.unsigned_abs()));
    let mesh_gateway = mode(u);
    let max_connections = max_connections(u, UpstreamSpec::DEFAULT_MAX_CONNECTIONS);
    u.finish();
    Some(UpstreamSpec {
        destination_name: name?.to_owned(),
        destination_namespace: namespace?,
        place: Place::new(&datacenter?, &partition?),
        bind: bind?,
        connect_timeout,
        mesh_gateway: mesh_gateway?,
        max_connections,
        chain: None,
    })
}

/// A listener's connection limit (`max_connections`), as `[gateway]` takes it.
pub fn max_connections(t: &Fields<'_>, default: usize) -> usize {
    t.int("max_connections", 1, 1_000_000)
        .map_or(default, |n| n.unsigned_abs() as usize)
}

/// A namespace and a partition, each defaulting to this host's as Consul does for names
/// given without them.
fn ns_and_partition(
    t: &Fields<'_>,
    ns_key: &'static str,
    partition_key: &'static str,
    here: Option<&Here>,
) -> (Option<String>, Option<String>) {
    let ns = name_or(t, ns_key, here.map_or("default", |h| &h.namespace));
    let partition = name_or(
        t,
        partition_key,
        here.map_or("default", |h| &h.place.partition),
    );
    (ns, partition)
}

/// `local_bind_port` (+ `local_bind_address`, default 127.0.0.1) or `local_bind_socket_path`
/// (+ `local_bind_socket_mode`, an octal string as in Consul): exactly one of the two.
fn bind(u: &Fields<'_>) -> Option<Bind> {
    let port = u.int("local_bind_port", 1, 65_535);
    let address = u.str("local_bind_address");
    let path = u.str("local_bind_socket_path");
    let mode = u.str("local_bind_socket_mode");
    match (port, path) {
        (Some(port), None) => {
            let ip = address.unwrap_or("127.0.0.1");
            let Ok(ip) = ip.parse::<IpAddr>() else {
                u.error("local_bind_address", format!("{ip:?} is not an IP address"));
                return None;
            };
            if mode.is_some() {
                u.error(
                    "local_bind_socket_mode",
                    "applies only with local_bind_socket_path",
                );
            }
            Some(Bind::Tcp(SocketAddr::new(ip, u16::try_from(port).ok()?)))
        }
        (None, Some(path)) if !path.is_empty() => {
            if address.is_some() {
                u.error("local_bind_address", "applies only with local_bind_port");
            }
            let mode = match mode.map(|m| u32::from_str_radix(m, 8).ok().filter(|m| *m <= 0o777)) {
                None => None,
                Some(Some(m)) => Some(m),
                Some(None) => {
                    u.error(
                        "local_bind_socket_mode",
                        format!(
                            "{:?} is not an octal file mode like \"0600\"",
                            mode.unwrap_or_default()
                        ),
                    );
                    return None;
                }
            };
            Some(Bind::Unix {
                path: PathBuf::from(path),
                mode,
            })
        }
        (Some(_), Some(_)) => {
            u.error_here("sets both local_bind_port and local_bind_socket_path; choose one");
            None
        }
        _ => {
            u.error_here("needs local_bind_port (or local_bind_socket_path)");
            None
        }
    }
}

/// Two upstreams on one address would fail at bind time; say so at check time instead.
fn distinct_binds(t: &Fields<'_>, upstreams: Vec<UpstreamSpec>) -> Option<Vec<UpstreamSpec>> {
    let mut ok = true;
    for (i, u) in upstreams.iter().enumerate() {
        if let Some(j) = upstreams[..i].iter().position(|e| e.bind == u.bind) {
            t.error(
                &format!("upstreams[{i}]"),
                format!("binds {} like upstreams[{j}]", u.bind),
            );
            ok = false;
        }
    }
    ok.then_some(upstreams)
}

fn intentions(t: &Fields<'_>, here: Option<&Here>) -> Option<Intentions> {
    let default = action(t, "default").unwrap_or(Some(Action::Allow));
    let rules: Vec<Option<IntentionRule>> = t
        .tables("rules")
        .iter()
        .map(|r| {
            let source = r
                .required_str("source")
                .filter(|v| *v == "*" || name_ok(r, "source", v));
            let (ns, partition) = ns_and_partition(r, "source_namespace", "source_partition", here);
            let act = action(r, "action").or_else(|| {
                r.error("action", "is required: \"allow\" or \"deny\"");
                None
            });
            r.finish();
            Some(IntentionRule {
                source: source?.to_owned(),
                source_namespace: ns?,
                source_partition: partition?,
                action: act??,
            })
        })
        .collect();
    t.finish();
    Some(Intentions {
        default: default?,
        rules: rules.into_iter().collect::<Option<_>>()?,
    })
}

/// `None`: absent; `Some(None)`: present but invalid (already reported).
fn action(t: &Fields<'_>, key: &'static str) -> Option<Option<Action>> {
    let v = t.str(key)?;
    Some(match v {
        "allow" => Some(Action::Allow),
        "deny" => Some(Action::Deny),
        _ => {
            t.error(key, format!("{v:?} is not \"allow\" or \"deny\""));
            None
        }
    })
}

/// `mesh_gateway = { mode = "..." }`. Outer `None`: invalid (reported); inner `None`: unset
/// or `""`, which in Consul means "inherit".
fn mode(t: &Fields<'_>) -> Option<Option<Mode>> {
    let Some(mg) = t.table("mesh_gateway") else {
        return Some(None);
    };
    let parsed = match Mode::level(mg.str("mode").unwrap_or_default()) {
        Ok(level) => Some(level),
        Err(e) => {
            mg.error("mode", e.to_string());
            None
        }
    };
    mg.finish();
    parsed
}

/// `[config_entries]`: `proxy_defaults`, `service_defaults.<name>`, `service_resolvers.<name>`.
/// Each entry belongs to one namespace and partition — `[mesh]`'s unless it says otherwise
/// with `namespace` / `partition` — and applies only to the service of its name there.
pub fn config_entries(t: &Fields<'_>, here: Option<&Here>) -> Option<ConfigEntries> {
    let here_ns = here.map_or(DEFAULT_NAMESPACE, |h| &h.namespace);
    let here_ap = here.map_or(DEFAULT_PARTITION, |h| &h.place.partition);
    let proxy_defaults = match t.table("proxy_defaults") {
        Some(p) => {
            let m = mode(&p);
            protocol(&p);
            p.finish();
            m
        }
        None => Some(None),
    };
    let mut service_defaults = BTreeMap::new();
    let mut target_service_defaults = BTreeMap::new();
    let mut ok = true;
    if let Some(all) = t.table("service_defaults") {
        let mut seen = BTreeMap::new();
        for (key, sd) in all.each_table() {
            let Some((name, ns, ap)) = entry_place(&sd, &key, here_ns, here_ap) else {
                ok = false;
                continue;
            };
            let Some(entry) = service_defaults_entry(&sd) else {
                ok = false;
                continue;
            };
            let id = target_key(&name, &ns, &ap);
            if let Some(first) = seen.insert(id, key.clone()) {
                all.error(&key, format!("is the same entry as service_defaults.{first} (service {name:?} in namespace {ns}, partition {ap}; names are compared without regard to case)"));
                ok = false;
                continue;
            }
            // The downstream's own entry is the one in this host's namespace and partition.
            if ns.eq_ignore_ascii_case(here_ns) && ap.eq_ignore_ascii_case(here_ap) {
                service_defaults.insert(name.clone(), entry.clone());
            }
            target_service_defaults.insert(target_key(&name, &ns, &ap), entry);
        }
    }
    let mut service_resolvers = BTreeMap::new();
    if let Some(all) = t.table("service_resolvers") {
        let mut seen = BTreeMap::new();
        for (key, r) in all.each_table() {
            let Some(entry) = super::resolvers::resolver(&r, &key, here_ns, here_ap) else {
                ok = false;
                continue;
            };
            let id = target_key(&entry.name, &entry.namespace, &entry.partition);
            if let Some(first) = seen.insert(id.clone(), key.clone()) {
                all.error(&key, format!("is the same entry as service_resolvers.{first} (service {:?} in namespace {}, partition {}; names are compared without regard to case)", entry.name, entry.namespace, entry.partition));
                ok = false;
                continue;
            }
            service_resolvers.insert(id, entry);
        }
    }
    // Splitters and routers act on HTTP requests; at L4 there is nothing to split or route.
    for (kind, word) in [
        ("service_splitters", "splitter"),
        ("service_routers", "router"),
    ] {
        if let Some(all) = t.table(kind) {
            for (name, _) in all.each_table() {
                all.warn(&name, format!("service-{word} {name:?} is ignored: it acts on HTTP requests and sidegate carries TCP (only service-resolver applies)"));
            }
        }
    }
    t.finish();
    ok.then_some(())?;
    Some(ConfigEntries {
        proxy_defaults: proxy_defaults?,
        service_defaults,
        partition_proxy_defaults: BTreeMap::new(),
        target_service_defaults,
        targets_by_place: true,
        downstream_namespace: here_ns.to_owned(),
        downstream_partition: here_ap.to_owned(),
        service_resolvers,
        resolvers_known: true,
    })
}

/// An entry's `name` (default: its table key), `namespace` and `partition` (default: this
/// host's), each a valid name.
pub(super) fn entry_place(
    t: &Fields<'_>,
    key: &str,
    namespace: &str,
    partition: &str,
) -> Option<(String, String, String)> {
    let name = match t.str("name") {
        Some(n) => name_ok(t, "name", n).then(|| n.to_owned()),
        None => {
            let ok = crate::names::is_label(key);
            if !ok {
                t.error_here(format!("{key:?} is not a valid service name (1 to 63 letters, digits, '-' or '_'); set `name`"));
            }
            ok.then(|| key.to_owned())
        }
    };
    let ns = name_or(t, "namespace", namespace);
    let ap = name_or(t, "partition", partition);
    Some((name?, ns?, ap?))
}

/// `protocol`: accepted as Consul's words; anything but `tcp` is carried as TCP all the same.
fn protocol(t: &Fields<'_>) {
    match t.str("protocol") {
        None | Some("tcp") => {}
        Some(p @ ("http" | "http2" | "grpc")) => t.warn(
            "protocol",
            format!("{p:?} is carried as TCP: sidegate proxies at L4 (no HTTP routing, retries or L7 metrics)"),
        ),
        Some(other) => t.error(
            "protocol",
            format!("{other:?} is not one of Consul's protocols: \"tcp\", \"http\", \"http2\" or \"grpc\""),
        ),
    }
}

fn service_defaults_entry(sd: &Fields<'_>) -> Option<ServiceDefaults> {
    let mesh_gateway = mode(sd);
    protocol(sd);
    let (defaults, overrides) = match sd.table("upstream_config") {
        Some(uc) => {
            let defaults = match uc.table("defaults") {
                Some(d) => {
                    let m = mode(&d);
                    d.finish();
                    m
                }
                None => Some(None),
            };
            let overrides: Vec<Option<UpstreamOverride>> = uc
                .tables("overrides")
                .iter()
                .map(|o| {
                    let name = o.required_str("name").filter(|v| name_ok(o, "name", v));
                    let namespace = o.str("namespace").unwrap_or_default().to_owned();
                    let partition = o.str("partition").unwrap_or_default().to_owned();
                    let m = mode(o);
                    o.finish();
                    Some(UpstreamOverride {
                        name: name?.to_owned(),
                        namespace,
                        partition,
                        mesh_gateway: m?,
                    })
                })
                .collect();
            uc.finish();
            (defaults, overrides.into_iter().collect::<Option<Vec<_>>>())
        }
        None => (Some(None), Some(Vec::new())),
    };
    sd.finish();
    Some(ServiceDefaults {
        mesh_gateway: mesh_gateway?,
        upstream_defaults: defaults?,
        upstream_overrides: overrides?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fields::Errors;
    use super::*;

    /// A file's entries are `[mesh]`'s: they carry this host's namespace and partition, which
    /// an override naming neither means; the override itself is kept as written.
    #[test]
    fn config_entries_are_in_this_hosts_namespace_and_partition() {
        let table: toml::Table = r#"
[service_defaults.web]
upstream_config = { overrides = [ { name = "db", mesh_gateway = { mode = "remote" } } ] }
"#
        .parse()
        .unwrap();
        let here = Here {
            place: Place::new("dc1", "part2"),
            namespace: "ns2".into(),
            trust_domain: String::new(),
        };
        for (here, namespace, partition) in
            [(Some(&here), "ns2", "part2"), (None, "default", "default")]
        {
            let errs = Errors::default();
            let entries = config_entries(&Fields::root(&table, &errs), here).unwrap();
            assert!(errs.is_empty());
            assert_eq!(
                (
                    entries.downstream_namespace.as_str(),
                    entries.downstream_partition.as_str()
                ),
                (namespace, partition)
            );
            let o = &entries.service_defaults["web"].upstream_overrides[0];
            assert_eq!((o.namespace.as_str(), o.partition.as_str()), ("", ""));
        }
    }
}
