//! Gauges of the running plan's configured limits and of its leaf certificate's expiry: the
//! other side of every "how close are we" question. A dashboard divides
//! `sidegate_connections_active` by `sidegate_connections_limit`, an alert compares the
//! leaf's expiry with `time()`, without anyone copying configuration into PromQL.
//!
//! Read from the plan `/config` shows, at each scrape, so a reload or a new leaf from Consul
//! changes them with nothing to keep in step. A plan has a handful of upstreams, so this is
//! a few lines of text.
//!
//! The expiry is a timestamp (`..._timestamp_seconds`), as Prometheus' naming guide asks and
//! as cert-manager and the blackbox exporter export theirs, not Consul's "seconds left"
//! (`consul.agent.tls.cert.expiry`): a timestamp is right whenever it is read, and
//! `sidegate_leaf_expiry_timestamp_seconds - time()` gives the seconds left anyway.

use std::fmt::Write;
use std::time::UNIX_EPOCH;

use crate::mesh::Plan;

/// The limit and expiry families of `plan`, appended to the exposition. A family whose role
/// the plan does not have (no gateway, no identity) is left out.
pub fn render_limits(plan: &Plan, out: &mut String) {
    let roles = [
        (
            "gateway",
            plan.gateway.as_ref().map(|g| g.settings.max_connections),
        ),
        ("inbound", plan.inbound.as_ref().map(|i| i.max_connections)),
    ];
    if roles.iter().any(|(_, limit)| limit.is_some()) {
        family(
            out,
            "sidegate_connections_limit",
            "max_connections of a role's listeners: sidegate_connections_active of that role stops there, more are refused.",
        );
        for (role, limit) in roles {
            if let Some(limit) = limit {
                sample(out, "sidegate_connections_limit", &[("role", role)], limit);
            }
        }
    }
    if let Some(g) = &plan.gateway {
        family(
            out,
            "sidegate_gateway_pending_handshakes_limit",
            "max_pending_handshakes: gateway connections waiting for their ClientHello beyond it shed the oldest.",
        );
        let limit = g.settings.max_pending_handshakes;
        sample(out, "sidegate_gateway_pending_handshakes_limit", &[], limit);
    }
    if !plan.upstreams.is_empty() {
        family(
            out,
            "sidegate_upstream_connections_limit",
            "max_connections of a sidecar upstream's listener: sidegate_upstream_connections_active stops there.",
        );
        for u in &plan.upstreams {
            let labels = [("upstream", u.destination_name.as_str()), ("bind", &u.bind)];
            let name = "sidegate_upstream_connections_limit";
            sample(out, name, &labels, u.max_connections);
        }
    }
    if let Some(identity) = &plan.identity {
        let expiry = identity
            .not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        family(
            out,
            "sidegate_leaf_expiry_timestamp_seconds",
            "Unix time at which the leaf certificate served now expires (its notAfter).",
        );
        sample(out, "sidegate_leaf_expiry_timestamp_seconds", &[], expiry);
    }
}

fn family(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    for (n, (key, value)) in labels.iter().enumerate() {
        out.push(if n == 0 { '{' } else { ',' });
        // A bind may be a socket path: escaped like every label value.
        let _ = write!(out, "{key}=\"{}\"", super::render::LabelValue(value));
    }
    if !labels.is_empty() {
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_closed() {
        let mut out = String::new();
        sample(&mut out, "m", &[("a", "x\"y\\z\nw"), ("b", "c")], 3);
        sample(&mut out, "n", &[], 4);
        assert_eq!(out, "m{a=\"x\\\"y\\\\z\\nw\",b=\"c\"} 3\nn 4\n");
    }

    #[test]
    fn an_empty_plan_has_no_limits() {
        let plan = crate::mesh::plan(&crate::mesh::snapshot::Snapshot {
            here: crate::mesh::snapshot::Here {
                place: crate::mesh::Place::new("dc1", ""),
                namespace: "default".into(),
                trust_domain: "td.consul".into(),
            },
            identity: None,
            gateway: None,
            sidecar: None,
            config_entries: Default::default(),
            catalog: Default::default(),
        });
        let mut out = String::new();
        render_limits(&plan, &mut out);
        assert_eq!(out, "");
    }
}
