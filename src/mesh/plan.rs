//! `plan(&Snapshot) -> Plan`: everything the data path reads, computed once per snapshot.
//!
//! Pure: `check --json` prints exactly what `run` serves. Consul naming is called from here
//! and nowhere else on the data path. What only a running process has (counters, the rustls
//! configurations built from the identity) the runtime attaches when it serves the plan
//! (`proxy::Serving`), keyed by the positions and names this plan gives.

use serde::Serialize;

use super::endpoints::EndpointSet;
use super::intentions::{Intentions, SharedAuthority};
use super::mode::{via, Mode, ModeSource, Via};
use super::routes::RouteTable;
use super::sidecar::{Bind, SidecarSpec};
use super::snapshot::{CatalogService, GatewaySettings, Snapshot};
use super::Endpoint;
use super::Place;
use crate::names::{gateway_sni, service_sni, SpiffeId};
use crate::tls::Identity;
use rustls::pki_types::ServerName;
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

/// One upstream as the data path dials it and `check --json` shows it (CONFIG.md).
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
    #[serde(skip)]
    pub connect_timeout: Duration,
    /// The SNI as rustls takes it, built once.
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

fn upstreams(s: &Snapshot, sidecar: &SidecarSpec, warnings: &mut Vec<String>) -> Vec<UpstreamPlan> {
    let td = &s.here.trust_domain;
    let mut out = Vec::with_capacity(sidecar.upstreams.len());
    for u in &sidecar.upstreams {
        let (mode, mode_source) = s.config_entries.mode_levels(sidecar, u).resolve();
        let via = via(&s.here.place, &u.place, mode);
        let name = &u.destination_name;
        let (dc, partition, ns) = (
            &u.place.datacenter,
            &u.place.partition,
            &u.destination_namespace,
        );
        let gateways_of = |p: &Place| s.catalog.gateways.iter().find(|g| g.place == *p);
        let dial = match &via {
            Via::Instances => s
                .catalog
                .services
                .iter()
                .find(|c| c.name == *name && c.namespace == *ns && c.place == u.place)
                .map(|c| c.instances.clone()),
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
            warnings.push(format!("upstream {name} ({}, mode {mode:?} from {mode_source:?}) has nothing to dial: add {add}", u.place));
        }
        let sni = service_sni(name, "", ns, partition, dc, td);
        let spiffe_id = SpiffeId::service(td, partition, ns, dc, name);
        out.push(UpstreamPlan {
            destination_name: name.clone(),
            destination_namespace: ns.clone(),
            destination_partition: partition.clone(),
            datacenter: dc.clone(),
            bind: u.bind.to_string(),
            mode,
            mode_source,
            sni: sni.clone(),
            spiffe_id: spiffe_id.to_string(),
            dial: EndpointSet::new(dial),
            via,
            max_connections: u.max_connections,
            listen: u.bind.clone(),
            connect_timeout: u.connect_timeout,
            server_name: ServerName::try_from(sni).ok(),
        });
    }
    out
}

fn gateway_routes(s: &Snapshot, warnings: &mut Vec<String>) -> RouteTable {
    let here = &s.here;
    let td = &here.trust_domain;
    let services: Vec<_> = s
        .catalog
        .services
        .iter()
        .filter(|svc| svc.place == here.place)
        .collect();
    let gateways: Vec<_> = s
        .catalog
        .gateways
        .iter()
        .filter(|gw| gw.place != here.place)
        .collect();
    let endpoints = services
        .iter()
        .map(|svc| svc.instances.len())
        .sum::<usize>()
        + gateways.iter().map(|gw| gw.wan.len()).sum::<usize>();
    let mut routes = RouteTable::with_capacity(services.len() + gateways.len(), endpoints);
    for svc in services {
        let sni = service_sni(
            &svc.name,
            "",
            &svc.namespace,
            &svc.place.partition,
            &svc.place.datacenter,
            td,
        );
        let target = ServiceTarget(svc);
        if svc.instances.is_empty() {
            warnings.push(format!(
                "{target} has no instances: connections for it will be refused"
            ));
        }
        routes.add_exact(&sni, target, &svc.instances);
    }
    for gw in gateways {
        let target = GatewaysTarget(&gw.place);
        if gw.wan.is_empty() {
            warnings.push(format!(
                "{target} have no `wan` addresses: this gateway cannot forward to them"
            ));
            continue;
        }
        let suffix = gateway_sni(&gw.place.datacenter, &gw.place.partition, td);
        routes.add_wildcard(&suffix, target, &gw.wan);
    }
    routes.finish();
    routes
}

/// What a service route leads to, for people (`check`, `explain`, logs).
struct ServiceTarget<'a>(&'a CatalogService);

impl std::fmt::Display for ServiceTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let svc = self.0;
        write!(
            f,
            "service {} in namespace {} ({})",
            svc.name, svc.namespace, svc.place
        )
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
        // 319 at this commit: the route's positions (40), its name and its target, three
        // instances with their failure marks, 4 for the index (before: ~630). A second copy of
        // the names (a map keyed by them, as before), slack from growing the lists, or
        // per-route counters fail it.
        assert!(per_route <= 340, "{per_route} bytes per route");
    }
}
