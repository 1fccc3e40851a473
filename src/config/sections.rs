//! The file's sections, read into the mesh's `Snapshot` types with Consul's defaults.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::fields::Fields;
use crate::mesh::place::{DEFAULT_NAMESPACE, DEFAULT_PARTITION};
use crate::mesh::snapshot::{
    CatalogGateways, CatalogServer, CatalogService, GatewaySettings, Health, Here, Instance,
    Splice, WanFederation, DEFAULT_DOMAIN,
};
use crate::mesh::{Endpoint, Place};

/// `[mesh]`. Required for the file source, so a missing section still yields its errors.
pub fn here(root: &Fields<'_>) -> Option<Here> {
    let Some(mesh) = root.table("mesh") else {
        root.error(
            "mesh",
            "is required: say where this host sits (datacenter, trust_domain)",
        );
        return None;
    };
    let datacenter = mesh
        .required_str("datacenter")
        .filter(|v| name_ok(&mesh, "datacenter", v));
    let partition = name_or(&mesh, "partition", DEFAULT_PARTITION);
    let namespace = name_or(&mesh, "namespace", DEFAULT_NAMESPACE);
    let trust_domain = mesh.required_str("trust_domain").filter(|td| {
        let ok = is_trust_domain(td);
        if !ok {
            mesh.error(
                "trust_domain",
                format!(
                    "{td:?} is not a trust domain (expected `<cluster-id>.consul`, lower case)"
                ),
            );
        }
        ok
    });
    mesh.finish();
    Some(Here {
        place: Place::new(datacenter?, &partition?),
        namespace: namespace?,
        trust_domain: trust_domain?.to_owned(),
    })
}

/// `[gateway]`. `listen` may be left out only when the agent provides the addresses.
pub fn gateway(section: &Fields<'_>, listen_required: bool) -> Option<GatewaySettings> {
    let listen = match section.str_list("listen") {
        None if !listen_required => Some(Vec::new()),
        None => {
            section.error(
                "listen",
                "is required: the addresses to accept mesh TLS on, e.g. [\"0.0.0.0:8443\"]",
            );
            None
        }
        Some(list) if list.is_empty() => {
            section.error("listen", "is empty: give at least one address");
            None
        }
        Some(list) => listen_addrs(section, &list),
    };
    let connect_timeout = section.millis(
        "connect_timeout_ms",
        GatewaySettings::DEFAULT_CONNECT_TIMEOUT_MS,
    );
    let handshake_timeout = section.millis(
        "handshake_timeout_ms",
        GatewaySettings::DEFAULT_HANDSHAKE_TIMEOUT_MS,
    );
    let idle_timeout = section.millis("idle_timeout_ms", GatewaySettings::DEFAULT_IDLE_TIMEOUT_MS);
    let max_connections =
        super::sidecar::max_connections(section, GatewaySettings::DEFAULT_MAX_CONNECTIONS);
    let max_pending_handshakes = match section.int("max_pending_handshakes", 1, 1_000_000) {
        Some(n) if n.unsigned_abs() as usize > max_connections => {
            section.error(
                "max_pending_handshakes",
                format!("{n} is more than max_connections ({max_connections}), which counts these connections too"),
            );
            max_connections
        }
        Some(n) => n.unsigned_abs() as usize,
        None => GatewaySettings::default_max_pending_handshakes(max_connections),
    };
    let max_client_hello_bytes = section
        .int("max_client_hello_bytes", 1_024, 1_048_576)
        .map_or(GatewaySettings::DEFAULT_MAX_CLIENT_HELLO_BYTES, |n| {
            n.unsigned_abs() as usize
        });
    let splice = section.str("splice").map_or(Splice::default(), |s| {
        Splice::parse(s).unwrap_or_else(|| {
            section.error(
                "splice",
                format!("{s:?} is not one of \"auto\", \"always\", \"never\""),
            );
            Splice::default()
        })
    });
    section.finish();
    Some(GatewaySettings {
        listen: listen?,
        connect_timeout,
        handshake_timeout,
        idle_timeout,
        max_connections,
        max_pending_handshakes,
        max_client_hello_bytes,
        splice,
        connect_timeout_set: section.has("connect_timeout_ms"),
    })
}

fn listen_addrs(section: &Fields<'_>, list: &[(String, &str)]) -> Option<Vec<SocketAddr>> {
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for (path, s) in list {
        match s.parse::<SocketAddr>() {
            Ok(a) if out.contains(&a) => {
                section.error_at(path, format!("{s:?} is listed twice"));
                ok = false;
            }
            Ok(a) => out.push(a),
            Err(_) => {
                section.error_at(
                    path,
                    format!("{s:?} is not an IP address with a port, e.g. 0.0.0.0:8443"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// `[[catalog.services]]`, defaults from `[mesh]`.
pub fn services(catalog: &Fields<'_>, here: Option<&Here>) -> Vec<CatalogService> {
    let mut out: Vec<CatalogService> = Vec::new();
    let mut seen = HashSet::new();
    for svc in catalog.tables("services") {
        let name = svc
            .required_str("name")
            .filter(|v| name_ok(&svc, "name", v));
        let namespace = name_or(
            &svc,
            "namespace",
            here.map_or(DEFAULT_NAMESPACE, |h| &h.namespace),
        );
        let place = place_of(&svc, here);
        let instances = instances(&svc);
        svc.finish();
        if let (Some(name), Some(namespace), Some(place), Some(instances)) =
            (name, namespace, place, instances)
        {
            // Consul's names are case-insensitive: `db` and `DB` are one service.
            let key = (
                name.to_ascii_lowercase(),
                namespace.to_ascii_lowercase(),
                place.clone(),
            );
            if !seen.insert(key) {
                svc.error_here(format!(
                    "service {name:?} in namespace {namespace} ({place}) is listed twice (names are compared without regard to case)"
                ));
                continue;
            }
            out.push(CatalogService {
                name: name.to_owned(),
                namespace,
                place,
                instances,
            });
        }
    }
    out
}

/// `[[catalog.gateways]]`: at most one entry per (datacenter, partition).
pub fn gateways(catalog: &Fields<'_>, here: Option<&Here>) -> Vec<CatalogGateways> {
    let mut out: Vec<CatalogGateways> = Vec::new();
    for gw in catalog.tables("gateways") {
        let place = place_of(&gw, here);
        let lan = endpoints(&gw, "lan");
        let wan = endpoints(&gw, "wan");
        if matches!((&lan, &wan), (Some(l), Some(w)) if l.is_empty() && w.is_empty()) {
            gw.error_here("has neither `lan` nor `wan` addresses");
        }
        gw.finish();
        if let (Some(place), Some(lan), Some(wan)) = (place, lan, wan) {
            if out.iter().any(|g| g.place == place) {
                gw.error_here(format!(
                    "gateways of {place} are listed twice; put all addresses in one entry"
                ));
                continue;
            }
            out.push(CatalogGateways { place, lan, wan });
        }
    }
    out
}

/// `[catalog.wan_federation]`: this gateway carries Consul servers' WAN-federation traffic
/// (what `consul-wan-federation = "1"` says of a registered one): `domain`, the agents' DNS
/// domain, and `[[catalog.wan_federation.servers]]`, this datacenter's servers (`node`, and
/// `address` at the server RPC port). Other datacenters' servers are reached through their
/// `[[catalog.gateways]]` `wan` addresses.
pub fn wan_federation(catalog: &Fields<'_>) -> Option<WanFederation> {
    let wf = catalog.table("wan_federation")?;
    let domain = match wf.str("domain") {
        Some(d) if is_domain(d.trim_end_matches('.')) => {
            Some(d.trim_end_matches('.').to_ascii_lowercase())
        }
        Some(d) => {
            wf.error(
                "domain",
                format!("{d:?} is not a DNS domain (dot-separated labels, e.g. \"consul\")"),
            );
            None
        }
        None => Some(DEFAULT_DOMAIN.to_owned()),
    };
    let mut servers: Vec<CatalogServer> = Vec::new();
    for srv in wf.tables("servers") {
        let node = srv
            .required_str("node")
            .filter(|v| name_ok(&srv, "node", v));
        let address = srv
            .required_str("address")
            .and_then(|a| endpoint_value(&srv, "address", a));
        srv.finish();
        if let (Some(node), Some(address)) = (node, address) {
            if servers.iter().any(|s| s.node.eq_ignore_ascii_case(node)) {
                srv.error_here(format!("server {node:?} is listed twice"));
                continue;
            }
            servers.push(CatalogServer {
                node: node.to_owned(),
                address,
            });
        }
    }
    wf.finish();
    Some(WanFederation {
        domain: domain?,
        servers,
    })
}

fn is_domain(d: &str) -> bool {
    d.len() <= 253 && d.split('.').all(crate::names::is_label)
}

/// `instances`: each `"host:port"` (passing, nothing to filter on) or a table with
/// `address` and what subset filters select on (`id`, `node`, `meta`, `node_meta`, `tags`,
/// `health`).
fn instances(svc: &Fields<'_>) -> Option<Vec<Instance>> {
    let Some(list) = svc.list("instances") else {
        if !svc.has("instances") {
            svc.error(
                "instances",
                "is required: the addresses of the service's instances (host:port)",
            );
        }
        return None;
    };
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for (path, value) in list {
        let instance = match value {
            toml::Value::String(s) => match s.parse::<Endpoint>() {
                Ok(e) => Some(Instance::at(e)),
                Err(err) => {
                    svc.error_at(&path, format!("{s:?} {err}"));
                    None
                }
            },
            toml::Value::Table(t) => instance_table(&svc.table_at(path, t)),
            other => {
                svc.error_at(
                    &path,
                    format!(
                        "expected \"host:port\" or a table with `address`, found {}",
                        other.type_str()
                    ),
                );
                None
            }
        };
        match instance {
            Some(i) => out.push(i),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn instance_table(t: &Fields<'_>) -> Option<Instance> {
    let address = t
        .required_str("address")
        .and_then(|a| endpoint_value(t, "address", a));
    let id = t.str("id").unwrap_or_default().to_owned();
    let node = t.str("node").unwrap_or_default().to_owned();
    let meta = t.str_map("meta").unwrap_or_default();
    let node_meta = t.str_map("node_meta").unwrap_or_default();
    let tags = t
        .str_list("tags")
        .map(|l| l.into_iter().map(|(_, s)| s.to_owned()).collect())
        .unwrap_or_default();
    let health = match t.str("health") {
        None | Some("passing") => Some(Health::Passing),
        Some("warning") => Some(Health::Warning),
        Some("critical") => Some(Health::Critical),
        Some(other) => {
            t.error(
                "health",
                format!("{other:?} is not \"passing\", \"warning\" or \"critical\""),
            );
            None
        }
    };
    t.finish();
    Some(Instance {
        address: address?,
        service: String::new(),
        id,
        node,
        meta,
        node_meta,
        tags,
        health: health?,
    })
}

fn place_of(t: &Fields<'_>, here: Option<&Here>) -> Option<Place> {
    let dc = match (t.str("datacenter"), here) {
        (Some(dc), _) => name_ok(t, "datacenter", dc).then(|| dc.to_owned()),
        (None, Some(h)) => Some(h.place.datacenter.clone()),
        (None, None) => None,
    };
    let partition = name_or(
        t,
        "partition",
        here.map_or(DEFAULT_PARTITION, |h| &h.place.partition),
    );
    Some(Place::new(&dc?, &partition?))
}

/// A list of `host:port` endpoints; every bad element is reported.
fn endpoints(t: &Fields<'_>, key: &'static str) -> Option<Vec<Endpoint>> {
    let Some(list) = t.str_list(key) else {
        return (!t.has(key)).then(Vec::new);
    };
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for (path, s) in list {
        match s.parse::<Endpoint>() {
            Ok(e) => out.push(e),
            Err(err) => {
                t.error_at(&path, format!("{s:?} {err}"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// One `host:port` value at `key`, reported there when invalid.
pub(super) fn endpoint_value(t: &Fields<'_>, key: &str, s: &str) -> Option<Endpoint> {
    s.parse::<Endpoint>()
        .map_err(|err| t.error(key, format!("{s:?} {err}")))
        .ok()
}

/// An optional Consul name, defaulted. `None` only when the value present is invalid.
pub(super) fn name_or(t: &Fields<'_>, key: &'static str, default: &str) -> Option<String> {
    match t.str(key) {
        Some(v) => name_ok(t, key, v).then(|| v.to_owned()),
        None => Some(default.to_owned()),
    }
}

/// A name that becomes one SNI label (`names::is_label`), reported at `key` if not.
pub(super) fn name_ok(t: &Fields<'_>, key: &str, v: &str) -> bool {
    let ok = crate::names::is_label(v);
    if !ok {
        t.error(
            key,
            format!("{v:?} is not a valid name (1 to 63 letters, digits, '-' or '_'; it becomes one SNI label)"),
        );
    }
    ok
}

/// `<cluster-id>.consul` as Consul writes it: lower case, dot-separated DNS labels.
fn is_trust_domain(td: &str) -> bool {
    td.len() <= 253
        && td.contains('.')
        && td.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}
