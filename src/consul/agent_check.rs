//! `sidegate check --agent`: asks the agent, before deploying, whether this token and these
//! registrations will work — per role, the registration, each ACL permission the role needs
//! (named as Consul's rules write them), the leaf, and the plan the agent's state gives.
//!
//! Permissions are tested with the agent's `POST /v1/internal/acl/authorize`, which answers
//! for the token that asks (no `acl:read` needed; Consul's UI uses it). Trying the endpoints
//! instead would not tell: Consul filters lists by ACL, so a missing `service:read` on an
//! upstream answers 200 with no instances, not 403.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{segment, Blocking, Client, Request};
use super::errors::ApiError;
use super::preflight::sidecar_id;
use super::{follow, Options, Settings, Status};
use crate::mesh::snapshot::Snapshot;

/// One thing a role needs, and whether it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `sidecar` or `gateway`.
    pub role: &'static str,
    pub ok: bool,
    pub what: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// The agent could not be reached at all.
    pub unreachable: bool,
    /// The state the agent gives, once complete, as `run` would serve it.
    pub snapshot: Option<Snapshot>,
    /// Why there is no snapshot.
    pub incomplete: Option<String>,
    /// A registration or the leaf is missing: the follower could never complete a state.
    core_missing: bool,
}

impl Report {
    pub fn all_ok(&self) -> bool {
        !self.unreachable && self.snapshot.is_some() && self.findings.iter().all(|f| f.ok)
    }

    fn say(&mut self, role: &'static str, ok: bool, what: String) {
        self.findings.push(Finding { role, ok, what });
    }
}

/// One ACL permission: resource, segment (empty for node/agent: any), access.
struct Permission {
    resource: &'static str,
    segment: String,
    access: &'static str,
    why: String,
}

impl Permission {
    fn new(resource: &'static str, segment: &str, access: &'static str, why: &str) -> Self {
        Permission {
            resource,
            segment: segment.to_owned(),
            access,
            why: why.to_owned(),
        }
    }

    fn named(&self) -> String {
        if self.segment.is_empty() {
            format!("{}:{} ({})", self.resource, self.access, self.why)
        } else {
            format!(
                "{}:{} on {:?} ({})",
                self.resource, self.access, self.segment, self.why
            )
        }
    }
}

/// Asks the agent everything, waiting up to `wait` for the complete state.
pub fn check(settings: &Settings, base: &Snapshot, wait: Duration) -> Report {
    let client = Client::new(settings);
    let mut report = Report::default();
    if let Err(e) = client.get(
        &Request::new("/v1/agent/connect/ca/roots".into()),
        &Blocking::No,
    ) {
        report.unreachable = e.is_unreachable();
        report.say("agent", false, format!("roots: {e}"));
        client.shutdown();
        return report;
    }
    let mut resolved = settings.clone();
    if let Some(service) = &settings.sidecar_for {
        match sidecar_id(&client, service) {
            Ok(id) => resolved.sidecar_service_id = Some(id),
            Err(e) => {
                report.core_missing = true;
                report.say("sidecar", false, e.to_string());
            }
        }
    }
    if let Some(id) = &resolved.sidecar_service_id {
        sidecar(&client, id, &settings.mesh_gateway_service, &mut report);
    }
    if let Some(id) = &resolved.gateway_service_id {
        gateway(&client, id, &settings.mesh_gateway_service, &mut report);
    }
    client.shutdown();
    // Without a registration or the leaf the follower would only wait in vain.
    let something = resolved.sidecar_service_id.is_some() || resolved.gateway_service_id.is_some();
    if something && !report.core_missing {
        plan(resolved, base, wait, &mut report);
    } else {
        report.incomplete = Some("not asked: a registration or the leaf is missing".into());
    }
    report
}

/// The registration `id`, if the agent has it with `kind`.
fn registration(
    client: &Client,
    role: &'static str,
    id: &str,
    kind: &str,
    report: &mut Report,
) -> Option<Value> {
    let req = Request::new(format!("/v1/agent/service/{}", segment(id)));
    let found = client.get(&req, &Blocking::No).and_then(|r| {
        if r.status == 404 {
            return Ok(None);
        }
        serde_json::from_str::<Value>(&r.body)
            .map(Some)
            .map_err(|e| ApiError::body(req.shown("GET", &Blocking::No), e))
    });
    match found {
        Ok(Some(reg)) if reg["Kind"] == kind => {
            report.say(role, true, format!("registration {id:?} found ({kind})"));
            Some(reg)
        }
        Ok(Some(reg)) => {
            report.core_missing = true;
            report.say(
                role,
                false,
                format!(
                    "registration {id:?} is of kind {:?}, not {kind}",
                    reg["Kind"]
                ),
            );
            None
        }
        Ok(None) => {
            report.core_missing = true;
            report.say(
                role,
                false,
                format!(
                    "registration {id:?}: not registered on this agent (consul services register)"
                ),
            );
            None
        }
        Err(e) => {
            report.core_missing = true;
            report.say(role, false, format!("registration {id:?}: {e}"));
            None
        }
    }
}

/// A mesh-gateway mode that dials through gateways (`local` or `remote`), at the proxy's
/// level or an upstream's.
fn uses_gateways(reg: &Value) -> bool {
    let mode = |v: &Value| matches!(v["MeshGateway"]["Mode"].as_str(), Some("local" | "remote"));
    mode(&reg["Proxy"])
        || reg["Proxy"]["Upstreams"]
            .as_array()
            .is_some_and(|ups| ups.iter().any(mode))
}

fn sidecar(client: &Client, id: &str, gateways: &str, report: &mut Report) {
    let role = "sidecar";
    let Some(reg) = registration(client, role, id, "connect-proxy", report) else {
        return;
    };
    let service = reg["Proxy"]["DestinationServiceName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let proxy_name = reg["Service"].as_str().unwrap_or(id).to_owned();
    let mut needs = vec![
        Permission::new("service", &proxy_name, "read", "its registration"),
        Permission::new(
            "service",
            &service,
            "write",
            "its leaf certificate and intentions",
        ),
    ];
    let upstreams = reg["Proxy"]["Upstreams"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for u in &upstreams {
        if let Some(name) = u["DestinationName"].as_str() {
            needs.push(Permission::new(
                "service",
                name,
                "read",
                &format!("upstream {name}: its instances and service-defaults"),
            ));
        }
    }
    if !upstreams.is_empty() {
        needs.push(Permission::new(
            "node",
            "",
            "read",
            "the upstreams' instances",
        ));
    }
    if uses_gateways(&reg) {
        needs.push(Permission::new(
            "service",
            gateways,
            "read",
            "the mesh gateways its upstreams' modes dial through",
        ));
    }
    permissions(client, role, &needs, report);
    leaf(client, role, &service, report);
}

fn gateway(client: &Client, id: &str, gateways: &str, report: &mut Report) {
    let role = "gateway";
    let Some(reg) = registration(client, role, id, "mesh-gateway", report) else {
        return;
    };
    let name = reg["Service"].as_str().unwrap_or(id).to_owned();
    let mut needs = vec![
        Permission::new("service", &name, "read", "its registration"),
        Permission::new(
            "service",
            gateways,
            "read",
            "the gateways of other datacenters",
        ),
        Permission::new(
            "service",
            "",
            "read",
            "every service it routes to (service_prefix \"\")",
        ),
        Permission::new("node", "", "read", "the instances it routes to"),
    ];
    // Consul before 1.9 leaves the datacenter out of registrations: the agent's own
    // configuration names it.
    if reg["Datacenter"].as_str().is_none_or(str::is_empty) {
        needs.push(Permission::new(
            "agent",
            "",
            "read",
            "the agent's datacenter",
        ));
    }
    permissions(client, role, &needs, report);
}

/// Asks the agent which of `needs` the token has.
fn permissions(client: &Client, role: &'static str, needs: &[Permission], report: &mut Report) {
    let body: Vec<Value> = needs
        .iter()
        .map(|p| json!({"Resource": p.resource, "Segment": p.segment, "Access": p.access}))
        .collect();
    let req = Request::new("/v1/internal/acl/authorize".into());
    let answer = client.post(&req, &Value::Array(body).to_string());
    let allowed: Vec<bool> = match answer {
        Ok(r) if r.status == 200 => serde_json::from_str::<Vec<Value>>(&r.body)
            .unwrap_or_default()
            .iter()
            .map(|a| a["Allow"] == true)
            .collect(),
        Ok(_) => {
            report.say(
                role,
                false,
                "this agent cannot say which permissions the token has (no /v1/internal/acl/authorize)".into(),
            );
            return;
        }
        Err(e) => {
            report.say(role, false, format!("permissions: {e}"));
            return;
        }
    };
    for (i, p) in needs.iter().enumerate() {
        let ok = allowed.get(i).copied().unwrap_or(false);
        let state = if ok { "has" } else { "missing" };
        report.say(role, ok, format!("{state} {}", p.named()));
    }
}

fn leaf(client: &Client, role: &'static str, service: &str, report: &mut Report) {
    let req = Request::new(format!("/v1/agent/connect/ca/leaf/{}", segment(service)));
    let (ok, what) = match client.get(&req, &Blocking::No) {
        Ok(r) if r.status == 200 => (true, format!("leaf for {service:?} issued")),
        Ok(r) => (false, format!("leaf for {service:?}: HTTP {}", r.status)),
        Err(e) => (false, format!("leaf for {service:?}: {e}")),
    };
    report.core_missing |= !ok;
    report.say(role, ok, what);
}

/// The follower once, as `run` starts it but without a state directory (nothing saved, no
/// saved state served): its first complete snapshot, or why none came within `wait`.
fn plan(mut settings: Settings, base: &Snapshot, wait: Duration, report: &mut Report) {
    settings.state_dir = None;
    let (tx, rx) = mpsc::sync_channel(1);
    let status = Arc::new(Status::default());
    let sink = Box::new(move |snap: Snapshot| tx.try_send(snap).is_ok());
    let options = Options {
        startup_grace: wait,
        ..Options::default()
    };
    match follow(settings, base.clone(), options, status.clone(), sink) {
        Ok(follower) => {
            report.snapshot = rx.recv_timeout(wait).ok();
            follower.stop();
            if report.snapshot.is_none() {
                report.incomplete = Some(status.last_error().unwrap_or_else(|| {
                    format!(
                        "the agent gave no complete state within {} s",
                        wait.as_secs()
                    )
                }));
            }
        }
        Err(e) => report.incomplete = Some(format!("cannot follow the agent: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_modes_that_need_the_gateways() {
        let reg = |proxy: Value| json!({"Kind": "connect-proxy", "Proxy": proxy});
        assert!(!uses_gateways(&reg(
            json!({"Upstreams": [{"DestinationName": "db"}]})
        )));
        assert!(uses_gateways(&reg(
            json!({"MeshGateway": {"Mode": "local"}})
        )));
        assert!(uses_gateways(&reg(json!({"Upstreams": [
            {"DestinationName": "db", "MeshGateway": {"Mode": "remote"}}
        ]}))));
        assert!(!uses_gateways(&reg(
            json!({"MeshGateway": {"Mode": "none"}})
        )));
    }
}
