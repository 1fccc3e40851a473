//! `plan(&Snapshot) -> Plan`: everything the data path reads, computed once per snapshot.
//!
//! Pure: `check --json` prints exactly what `run` serves. Consul naming is called from here
//! and nowhere else on the data path. What only a running process has (counters, the rustls
//! configurations built from the identity) the runtime attaches when it serves the plan
//! (`proxy::Serving`), keyed by the positions and names this plan gives.

use serde::Serialize;

use super::chain::{
    compile, resolver_of, usable, Chain, Compiled, Resolver, Resolvers, Subset, Target,
    DEFAULT_CONNECT_TIMEOUT,
};
use super::config_entries::target_key;
use super::endpoints::EndpointSet;
use super::intentions::{Intentions, SharedAuthority};
use super::mode::{via, Mode, ModeSource, Via};
use super::routes::RouteTable;
use super::sidecar::{Bind, SidecarSpec, UpstreamSpec};
use super::snapshot::{CatalogGateways, CatalogService, GatewaySettings, Snapshot, WanFederation};
use super::Endpoint;
use super::Place;
use crate::names::{gateway_sni, service_sni, SpiffeId};
use crate::tls::Identity;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct Plan {
    /// The sidecar's upstreams; empty without a sidecar, so the JSON shape is stable.
    pub upstreams: Vec<UpstreamPlan>,
    /// The sidecar's public listener, when it has one and an identity to serve it with.
    pub inbound: Option<InboundPlan>,
    pub gateway: Option<GatewayPlan>,
    /// Things that are valid but probably not what the operator meant.
    pub warnings: Vec<String>,
    /// The identity the sidecar's mTLS is built from (by the runtime, not here).
    #[serde(skip)]
    pub identity: Option<Arc<Identity>>,
}

#[derive(Debug, Serialize)]
pub struct GatewayPlan {
    #[serde(flatten)]
    pub settings: GatewaySettings,
    pub routes: RouteTable,
}

/// The inbound (public) listener: mTLS from the mesh, authorized, to the local app.
#[derive(Debug, Serialize)]
pub struct InboundPlan {
    pub listen: SocketAddr,
    pub local_service_address: Endpoint,
    pub intentions: Intentions,
    /// When set, callers are authorized by it instead of `intentions` (Consul source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<SharedAuthority>,
    pub max_connections: usize,
    #[serde(skip)]
    pub local_connect_timeout: Duration,
    #[serde(skip)]
    pub trust_domain: String,
}

/// One upstream as the data path dials it and `check --json` shows it (`config/README.md`).
#[derive(Debug, Serialize)]
pub struct UpstreamPlan {
    pub destination_name: String,
    pub destination_namespace: String,
    pub destination_partition: String,
    pub datacenter: String,
    pub bind: String,
    pub mode: Mode,
    pub mode_source: ModeSource,
    /// Always the final target's, whatever the mode.
    pub sni: String,
    /// The identity the server must prove, exactly.
    pub spiffe_id: String,
    pub dial: EndpointSet,
    #[serde(flatten)]
    pub via: Via,
    pub max_connections: usize,
    /// Where the local app connects.
    #[serde(skip)]
    pub listen: Bind,
    /// The chain's: the resolver's `connect_timeout`, or the upstream's own when it sets one.
    #[serde(
        rename = "connect_timeout_ms",
        serialize_with = "super::snapshot::as_millis"
    )]
    pub connect_timeout: Duration,
    /// The SNI as rustls takes it, built once.
    #[serde(skip)]
    pub server_name: Option<ServerName<'static>>,
    /// The chain's targets in dial order; the fields above describe the first. The data
    /// path dials these.
    pub targets: Vec<TargetPlan>,
}

/// One target of an upstream's chain (`check --json` `targets[]`).
#[derive(Debug, Serialize)]
pub struct TargetPlan {
    pub service: String,
    pub subset: String,
    pub namespace: String,
    pub partition: String,
    pub datacenter: String,
    /// With the subset label.
    pub sni: String,
    /// The target service's; a subset does not change it.
    pub spiffe_id: String,
    pub mode: Mode,
    pub mode_source: ModeSource,
    pub dial: EndpointSet,
    #[serde(skip)]
    pub via: Via,
    #[serde(skip)]
    pub server_name: Option<ServerName<'static>>,
}

pub fn plan(snapshot: &Snapshot) -> Plan {
    let mut warnings = Vec::new();
    let gateway = snapshot.gateway.as_ref().map(|settings| GatewayPlan {
        settings: settings.clone(),
        routes: gateway_routes(snapshot, &mut warnings),
    });
    let inbound = snapshot
        .sidecar
        .as_ref()
        .and_then(|sc| inbound(snapshot, sc));
    let upstreams = snapshot
        .sidecar
        .iter()
        .flat_map(|sc| upstreams(snapshot, sc, &mut warnings))
        .collect();
    Plan {
        upstreams,
        inbound,
        gateway,
        warnings,
        identity: snapshot.identity.clone(),
    }
}

/// The public listener needs an identity to present; without one it stays closed.
fn inbound(s: &Snapshot, sidecar: &SidecarSpec) -> Option<InboundPlan> {
    let listen = sidecar.public_listener?;
    s.identity.as_ref()?;
    Some(InboundPlan {
        listen,
        local_service_address: sidecar.local_service_address.clone(),
        intentions: sidecar.intentions.clone(),
        authority: sidecar.authority.clone(),
        max_connections: sidecar.max_connections,
        local_connect_timeout: sidecar.local_connect_timeout,
        trust_domain: s.here.trust_domain.clone(),
    })
}

/// The catalog's services by (name, namespace) in lower case (Consul's names are
/// case-insensitive) and place: a plan looks up each target once, and a linear search per
/// target would make a large mesh's plan quadratic.
type ServiceIndex<'a> = HashMap<(String, String, &'a Place), &'a CatalogService>;

fn service_index(s: &Snapshot) -> ServiceIndex<'_> {
    s.catalog
        .services
        .iter()
        .map(|c| {
            (
                (
                    c.name.to_ascii_lowercase(),
                    c.namespace.to_ascii_lowercase(),
                    &c.place,
                ),
                c,
            )
        })
        .collect()
}

fn upstreams(s: &Snapshot, sidecar: &SidecarSpec, warnings: &mut Vec<String>) -> Vec<UpstreamPlan> {
    let index = service_index(s);
    let mut out = Vec::with_capacity(sidecar.upstreams.len());
    for u in &sidecar.upstreams {
        let name = &u.destination_name;
        let start = Target {
            service: name.clone(),
            subset: String::new(),
            namespace: u.destination_namespace.clone(),
            partition: u.place.partition.clone(),
            datacenter: u.place.datacenter.clone(),
        };
        let compiled = match &u.chain {
            Some(chain) => Ok(chain.clone()),
            None => compile(
                &s.config_entries.service_resolvers,
                start.clone(),
                u.connect_timeout,
            ),
        };
        // `check` refuses such entries; a plan still has to say what it serves.
        let chain = compiled.unwrap_or_else(|e| {
            warnings.push(format!("upstream {name}: {e}; dialling {start} itself"));
            Chain {
                targets: vec![start],
                connect_timeout: u.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                compiled: Vec::new(),
            }
        });
        let targets: Vec<TargetPlan> = chain
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let compiled = chain.compiled.get(i);
                target_plan(s, &index, (sidecar, u), (t, i, compiled), warnings)
            })
            .collect();
        let Some(first) = targets.first() else {
            continue;
        };
        out.push(UpstreamPlan {
            destination_name: name.clone(),
            destination_namespace: u.destination_namespace.clone(),
            destination_partition: u.place.partition.clone(),
            datacenter: u.place.datacenter.clone(),
            bind: u.bind.to_string(),
            mode: first.mode,
            mode_source: first.mode_source,
            sni: first.sni.clone(),
            spiffe_id: first.spiffe_id.clone(),
            dial: EndpointSet::new(first.dial.as_slice().to_vec()),
            via: first.via.clone(),
            max_connections: u.max_connections,
            listen: u.bind.clone(),
            connect_timeout: chain.connect_timeout,
            server_name: first.server_name.clone(),
            targets,
        });
    }
    out
}

/// One target of an upstream's chain: its names, its mode and what to dial for it.
fn target_plan(
    s: &Snapshot,
    index: &ServiceIndex<'_>,
    (sidecar, u): (&SidecarSpec, &UpstreamSpec),
    (t, position, compiled): (&Target, usize, Option<&Compiled>),
    warnings: &mut Vec<String>,
) -> TargetPlan {
    let td = &s.here.trust_domain;
    let place = Place::new(&t.datacenter, &t.partition);
    let (mode, mode_source) = target_mode(
        s.config_entries.target_mode_levels(sidecar, u, t).resolve(),
        compiled,
        &s.here.place,
        &place,
    );
    let via = via(&s.here.place, &place, mode);
    let gateways_of = |p: &Place| s.catalog.gateways.iter().find(|g| g.place == *p);
    let dial = match &via {
        Via::Instances => match compiled.and_then(|c| c.subset.as_ref()) {
            Some(Err(why)) => {
                warnings.push(format!(
                    "upstream {} target {t}: its subset's filter cannot be evaluated ({why}): no instance of it is dialled",
                    u.destination_name
                ));
                Some(Vec::new())
            }
            Some(Ok(subset)) => instances_in(index, t, &place, Some(subset)),
            None if compiled.is_some() => instances_in(index, t, &place, None),
            None => instances_of(s, index, t, &place),
        },
        Via::LocalGateways(p) => gateways_of(p).map(|g| g.lan.clone()),
        Via::RemoteGateways(p) => gateways_of(p).map(|g| g.wan.clone()),
    }
    .unwrap_or_default();
    if dial.is_empty() {
        let add = match &via {
            // The same words serve both sources: the file's key, or Consul's registration.
            Via::Instances => "its instances ([[catalog.services]], or in Consul an instance with a Connect sidecar)".to_owned(),
            Via::LocalGateways(p) => format!("`lan` addresses for the gateways of {p} ([[catalog.gateways]], or a mesh-gateway registered there)"),
            Via::RemoteGateways(p) => format!("`wan` addresses for the gateways of {p} ([[catalog.gateways]], or a mesh-gateway registered there with a `wan` tagged address)"),
        };
        let which = if position == 0 && t.subset.is_empty() && t.service == u.destination_name {
            format!("upstream {}", u.destination_name)
        } else {
            format!("upstream {} target {t}", u.destination_name)
        };
        warnings.push(format!(
            "{which} ({place}, mode {mode:?} from {mode_source:?}) has nothing to dial: add {add}"
        ));
    }
    let sni = service_sni(
        &t.service,
        &t.subset,
        &t.namespace,
        &t.partition,
        &t.datacenter,
        td,
    );
    let spiffe_id = SpiffeId::service(td, &t.partition, &t.namespace, &t.datacenter, &t.service);
    TargetPlan {
        service: t.service.clone(),
        subset: t.subset.clone(),
        namespace: t.namespace.clone(),
        partition: t.partition.clone(),
        datacenter: t.datacenter.clone(),
        server_name: ServerName::try_from(sni.clone()).ok(),
        sni,
        spiffe_id: spiffe_id.to_string(),
        mode,
        mode_source,
        dial: EndpointSet::new(dial),
        via,
    }
}

/// A target's mode: its levels, unless Consul compiled the chain. Consul's compiler resolved
/// the mode with the target's own service-defaults and its partition's proxy-defaults, which
/// the Consul source reads only for the upstream's destination: where Consul's answer
/// differs, those target levels decided it. In this host's place the mode does not matter
/// (Consul leaves it empty there).
pub fn target_mode(
    levels: (Mode, ModeSource),
    compiled: Option<&Compiled>,
    here: &Place,
    place: &Place,
) -> (Mode, ModeSource) {
    let Some(c) = compiled.filter(|_| here != place) else {
        return levels;
    };
    match c.mesh_gateway {
        Some(m) if m != levels.0 => (m, ModeSource::TargetServiceDefaults),
        None if levels.0 != Mode::None => (Mode::None, ModeSource::Default),
        _ => levels,
    }
}

/// The dialable instances of `t`: its subset's (filter and `only_passing`), never a critical
/// one. `None` when the catalog does not list the service.
fn instances_of(
    s: &Snapshot,
    index: &ServiceIndex<'_>,
    t: &Target,
    place: &Place,
) -> Option<Vec<Endpoint>> {
    let subset =
        resolver_of(&s.config_entries.service_resolvers, t).and_then(|r| r.subsets.get(&t.subset));
    instances_in(index, t, place, subset)
}

/// `t`'s instances in `subset` (a chain compiled by Consul carries the subset itself).
fn instances_in(
    index: &ServiceIndex<'_>,
    t: &Target,
    place: &Place,
    subset: Option<&Subset>,
) -> Option<Vec<Endpoint>> {
    let key = (
        t.service.to_ascii_lowercase(),
        t.namespace.to_ascii_lowercase(),
        place,
    );
    let svc = index.get(&key)?;
    Some(select(svc, subset))
}

/// The addresses of `svc`'s instances in `subset` (all usable ones without a subset).
fn select(svc: &CatalogService, subset: Option<&Subset>) -> Vec<Endpoint> {
    svc.instances
        .iter()
        .filter(|i| match subset {
            Some(sub) => sub.admits(&svc.name, i),
            None => usable(i, false),
        })
        .map(|i| i.address.clone())
        .collect()
}

fn gateway_routes(s: &Snapshot, warnings: &mut Vec<String>) -> RouteTable {
    let here = &s.here.place;
    let resolvers = &s.config_entries.service_resolvers;
    let services: Vec<LocalService> = s
        .catalog
        .services
        .iter()
        .filter(|svc| svc.place == *here)
        .map(|svc| (svc, resolver_for(resolvers, svc)))
        .collect();
    let gateways: Vec<&CatalogGateways> = s
        .catalog
        .gateways
        .iter()
        .filter(|gw| gw.place != *here)
        .collect();
    let wan_federation = s.catalog.wan_federation.as_ref();
    let (n, endpoints) = capacity(&services, &gateways, wan_federation);
    let mut routes = RouteTable::with_capacity(n, endpoints);
    routes.pass_any_subset = !s.config_entries.resolvers_known;
    service_routes(s, &services, &mut routes, warnings);
    gateway_place_routes(s, &gateways, &mut routes, warnings);
    if let Some(wf) = wan_federation {
        server_routes(s, wf, &mut routes, warnings);
    }
    routes.finish();
    routes
}

/// A service of the gateway's own place, with its resolver if it has one.
type LocalService<'a> = (&'a CatalogService, Option<&'a Resolver>);

/// `svc`'s resolver, as `resolver_of` finds a target's, without building a target: one
/// lookup per service of a large mesh at every reload.
fn resolver_for<'a>(resolvers: &'a Resolvers, svc: &CatalogService) -> Option<&'a Resolver> {
    if resolvers.is_empty() {
        return None;
    }
    resolvers.get(&target_key(&svc.name, &svc.namespace, &svc.place.partition))
}

/// At most how many routes and endpoints the gateway's table receives, so that its lists are
/// allocated once rather than grown by doubling (`RouteTable::finish` gives back the rest).
fn capacity(
    services: &[LocalService<'_>],
    gateways: &[&CatalogGateways],
    wf: Option<&WanFederation>,
) -> (usize, usize) {
    let (mut routes, mut endpoints) = (0, 0);
    for (svc, resolver) in services {
        let names = 1 + resolver.map_or(0, |r| r.subsets.len());
        routes += names;
        endpoints += names * svc.instances.len();
    }
    let wan: usize = gateways.iter().map(|gw| gw.wan.len()).sum();
    routes += gateways.len();
    endpoints += wan;
    if let Some(wf) = wf {
        // Each server, all of them, and two names per other datacenter's gateways.
        routes += wf.servers.len() + 1 + 2 * gateways.len();
        endpoints += 2 * wf.servers.len() + 2 * wan;
    }
    (routes, endpoints)
}

/// This place's services by exact name: the plain name (its default subset's instances when
/// the resolver names one), and one name per subset of its resolver.
fn service_routes(
    s: &Snapshot,
    services: &[LocalService<'_>],
    routes: &mut RouteTable,
    warnings: &mut Vec<String>,
) {
    let td = &s.here.trust_domain;
    for &(svc, resolver) in services {
        let (ns, partition, dc) = (&svc.namespace, &svc.place.partition, &svc.place.datacenter);
        // The plain name serves the default subset's instances when there is one.
        let default = resolver.and_then(|r| r.subsets.get(&r.default_subset));
        let plain = select(svc, default);
        let target = ServiceTarget(svc, None);
        if plain.is_empty() {
            warnings.push(format!(
                "{target} has no instances: connections for it will be refused"
            ));
        }
        let sni = service_sni(&svc.name, "", ns, partition, dc, td);
        routes.add_exact(&sni, target, &plain, None);
        for (name, subset) in resolver.iter().flat_map(|r| &r.subsets) {
            let endpoints = select(svc, Some(subset));
            let target = ServiceTarget(svc, Some(name));
            if endpoints.is_empty() {
                warnings.push(format!(
                    "{target} has no instances: connections for it will be refused"
                ));
            }
            let sni = service_sni(&svc.name, name, ns, partition, dc, td);
            routes.add_exact(&sni, target, &endpoints, Some(name));
        }
    }
}

/// Every other place's mesh gateways by wildcard, where Consul would route to them.
fn gateway_place_routes(
    s: &Snapshot,
    gateways: &[&CatalogGateways],
    routes: &mut RouteTable,
    warnings: &mut Vec<String>,
) {
    let here = &s.here;
    let td = &here.trust_domain;
    for gw in gateways {
        let target = GatewaysTarget(&gw.place);
        // WAN federation joins the default partitions of datacenters: Consul builds no
        // route between a partition of one datacenter and another datacenter.
        if gw.place.datacenter != here.place.datacenter
            && !(gw.place.is_default_partition() && here.place.is_default_partition())
        {
            warnings.push(format!(
                "{target}: no route, WAN federation joins only the default partitions of datacenters"
            ));
            continue;
        }
        if gw.wan.is_empty() {
            warnings.push(format!(
                "{target} have no `wan` addresses: this gateway cannot forward to them"
            ));
            continue;
        }
        let suffix = gateway_sni(&gw.place.datacenter, &gw.place.partition, td);
        routes.add_wildcard(&suffix, target, &gw.wan);
    }
}

/// Consul's WAN federation through mesh gateways, as its gateways route it: this
/// datacenter's servers by exact name (`<node>.server.<dc>.<domain>` one server,
/// `server.<dc>.<domain>` any of them; an unknown node is closed), and every name of another
/// datacenter's servers (`*.server.<dc>.<domain>`, and the bare `server.<dc>.<domain>`) to
/// that datacenter's gateways, still encrypted. Default partition only, as in Consul.
fn server_routes(
    s: &Snapshot,
    wf: &WanFederation,
    routes: &mut RouteTable,
    warnings: &mut Vec<String>,
) {
    let here = &s.here;
    if !here.place.is_default_partition() {
        warnings.push(format!(
            "WAN federation runs through the default partition's gateways; this one is in partition {}: no server routes",
            here.place.partition
        ));
        return;
    }
    let domain = wf.domain.to_ascii_lowercase();
    let local = format!("server.{}.{domain}", here.place.datacenter).to_ascii_lowercase();
    if wf.servers.is_empty() {
        warnings.push(format!(
            "no Consul servers of {} are known: other datacenters' servers cannot reach them through this gateway",
            here.place.datacenter
        ));
    }
    for srv in &wf.servers {
        routes.add_server(
            &format!("{}.{local}", srv.node),
            false,
            format_args!("Consul server {} of {}", srv.node, here.place.datacenter),
            std::slice::from_ref(&srv.address),
        );
    }
    let mut all: Vec<Endpoint> = Vec::with_capacity(wf.servers.len());
    for srv in &wf.servers {
        if !all.contains(&srv.address) {
            all.push(srv.address.clone());
        }
    }
    routes.add_server(
        &local,
        false,
        format_args!("any Consul server of {}", here.place.datacenter),
        &all,
    );
    for gw in s.catalog.gateways.iter().filter(|gw| {
        gw.place.is_default_partition()
            && gw.place.datacenter != here.place.datacenter
            && !gw.wan.is_empty()
    }) {
        let dc = &gw.place.datacenter;
        let name = format!("server.{dc}.{domain}");
        let target = format_args!("Consul servers of {dc}, through its mesh gateways");
        routes.add_server(&name, true, target, &gw.wan);
        routes.add_server(&name, false, target, &gw.wan);
    }
}

/// What a service route leads to, for people (`check`, `explain`, logs): the service, or one
/// subset of it.
struct ServiceTarget<'a>(&'a CatalogService, Option<&'a str>);

impl std::fmt::Display for ServiceTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let svc = self.0;
        write!(
            f,
            "service {} in namespace {} ({})",
            svc.name, svc.namespace, svc.place
        )?;
        match self.1 {
            Some(subset) => write!(f, ", subset {subset}"),
            None => Ok(()),
        }
    }
}

/// What a gateway route leads to.
struct GatewaysTarget<'a>(&'a Place);

impl std::fmt::Display for GatewaysTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mesh gateways of {}", self.0)
    }
}

/// The plan as text for `sidegate check`: one line per listener and route.
pub fn describe(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for u in &plan.upstreams {
        let _ = writeln!(
            out,
            "upstream {} -> {} mode {} ({}) dial {}",
            u.bind,
            u.sni,
            label(&u.mode),
            label(&u.mode_source),
            list(u.dial.as_slice())
        );
        // The failover targets, in the order the upstream tries them.
        for t in u.targets.iter().skip(1) {
            let _ = writeln!(
                out,
                "  then {} mode {} ({}) dial {}",
                t.sni,
                label(&t.mode),
                label(&t.mode_source),
                list(t.dial.as_slice())
            );
        }
    }
    if let Some(inb) = &plan.inbound {
        let _ = writeln!(
            out,
            "inbound listen {} -> {}, intentions: default {}, {} rules",
            inb.listen,
            inb.local_service_address,
            label(&inb.intentions.default),
            inb.intentions.rules.len()
        );
    }
    if let Some(gw) = &plan.gateway {
        for addr in &gw.settings.listen {
            let _ = writeln!(out, "gateway listen {addr}");
        }
        for r in gw.routes.routes() {
            let _ = writeln!(
                out,
                "  {:<60} {:?} -> {} ({})",
                r.pattern,
                r.kind,
                list(r.endpoints.as_slice()),
                r.target
            );
        }
    }
    out
}

fn list(endpoints: &[Endpoint]) -> String {
    let eps: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    eps.join(", ")
}

/// A value's name as `check --json` spells it, so text and JSON say the same.
fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway of a large mesh holds one route per service, rebuilt at every reload: what a
    /// route costs is what the process holds per service. Names as long as real ones (a
    /// 36-character trust domain), three instances each.
    #[test]
    fn a_route_stays_small() {
        let n = 10_000;
        let names: Vec<String> = (0..n).map(|i| format!("service-{i:05}")).collect();
        let td = "11111111-2222-3333-4444-555555555555.consul";
        let snapshot = crate::mesh::snapshot::testing::gateway(td, &names, 3);
        let plan = plan(&snapshot);
        let routes = &plan.gateway.as_ref().unwrap().routes;
        assert_eq!(routes.len(), n);
        let per_route = routes.heap_bytes() / n;
        // 327 at this commit: the route's positions (48, the span of its subset's name
        // among them: 319 before subset routes), its name and its target, three instances
        // with their failure marks, 4 for the index (before: ~630). A second copy of the names
        // (a map keyed by them, as before), slack from growing the lists, or per-route
        // counters or strings fail it.
        assert!(per_route <= 340, "{per_route} bytes per route");
    }
}
