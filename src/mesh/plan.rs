//! `plan(&Snapshot) -> Plan`: everything the data path reads, computed once per snapshot.
//!
//! Pure: `check --json` prints exactly what `run` serves. Consul naming is called from here
//! and nowhere else on the data path.

use serde::Serialize;

use super::endpoints::EndpointSet;
use super::names::{gateway_sni, service_sni};
use super::routes::RouteTable;
use super::snapshot::{GatewaySettings, Snapshot};

#[derive(Debug, Serialize)]
pub struct Plan {
    /// Filled by the sidecar role; always present so the JSON shape is stable.
    pub upstreams: Vec<()>,
    pub gateway: Option<GatewayPlan>,
    /// Things that are valid but probably not what the operator meant.
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct GatewayPlan {
    #[serde(flatten)]
    pub settings: GatewaySettings,
    pub routes: RouteTable,
}

pub fn plan(snapshot: &Snapshot) -> Plan {
    let mut warnings = Vec::new();
    let gateway = snapshot.gateway.as_ref().map(|settings| GatewayPlan {
        settings: settings.clone(),
        routes: gateway_routes(snapshot, &mut warnings),
    });
    Plan {
        upstreams: Vec::new(),
        gateway,
        warnings,
    }
}

fn gateway_routes(s: &Snapshot, warnings: &mut Vec<String>) -> RouteTable {
    let here = &s.here;
    let td = &here.trust_domain;
    let mut routes = RouteTable::default();
    for svc in s
        .catalog
        .services
        .iter()
        .filter(|svc| svc.place == here.place)
    {
        let sni = service_sni(
            &svc.name,
            "",
            &svc.namespace,
            &svc.place.partition,
            &svc.place.datacenter,
            td,
        );
        let target = format!(
            "service {} in namespace {} ({})",
            svc.name, svc.namespace, svc.place
        );
        if svc.instances.is_empty() {
            warnings.push(format!(
                "{target} has no instances: connections for it will be refused"
            ));
        }
        routes.add_exact(
            sni.to_ascii_lowercase(),
            target,
            EndpointSet::new(svc.instances.clone()),
        );
    }
    for gw in s
        .catalog
        .gateways
        .iter()
        .filter(|gw| gw.place != here.place)
    {
        let target = format!("mesh gateways of {}", gw.place);
        if gw.wan.is_empty() {
            warnings.push(format!(
                "{target} have no `wan` addresses: this gateway cannot forward to them"
            ));
            continue;
        }
        let suffix = gateway_sni(&gw.place.datacenter, &gw.place.partition, td);
        routes.add_wildcard(
            suffix.to_ascii_lowercase(),
            target,
            EndpointSet::new(gw.wan.clone()),
        );
    }
    routes
}

/// The plan as text for `sidegate check`: one line per listener and route.
pub fn describe(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(gw) = &plan.gateway {
        for addr in &gw.settings.listen {
            let _ = writeln!(out, "gateway listen {addr}");
        }
        for r in gw.routes.routes() {
            let eps: Vec<String> = r
                .endpoints
                .as_slice()
                .iter()
                .map(ToString::to_string)
                .collect();
            let _ = writeln!(
                out,
                "  {:<60} {:?} -> {} ({})",
                r.pattern,
                r.kind,
                eps.join(", "),
                r.target
            );
        }
    }
    out
}
