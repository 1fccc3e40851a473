//! The counters in Prometheus text exposition format 0.0.4, for `/metrics`. Runs on the admin
//! thread: it reads atomics (and briefly locks the labelled registries), so the data path
//! never waits for a scrape.

use std::fmt::Write;

use super::{
    ConnStats, Counter, Family, HandshakeFailures, HelloOutcome, ListenerCounters, Metrics,
};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The whole exposition.
pub fn render(m: &Metrics) -> String {
    let mut o = Out(String::with_capacity(8192));
    let (g, u, i) = (&m.gateway, &m.upstream, &m.inbound);

    o.family(
        "sidegate_build_info",
        "gauge",
        "Version and target triple of this binary.",
    );
    o.sample(
        "sidegate_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("target", env!("SIDEGATE_TARGET")),
        ],
        1,
    );

    let roles = [
        ("gateway", m.gateway_listener()),
        ("upstream", m.upstream_listener()),
        ("inbound", m.inbound_listener()),
    ];
    let per_role: [(&str, &str, &str, Pick); 4] = [
        (
            "sidegate_connections_accepted_total",
            "counter",
            "Connections accepted by a role's listeners, refused ones included.",
            |c| c.accepted,
        ),
        (
            "sidegate_connections_active",
            "gauge",
            "Connections a role holds open now.",
            |c| c.active,
        ),
        (
            "sidegate_connections_refused_total",
            "counter",
            "Connections closed at accept because the connection limit was reached.",
            |c| c.refused_limit,
        ),
        (
            "sidegate_accept_errors_total",
            "counter",
            "Failed accept() calls (out of file descriptors, aborted handshakes).",
            |c| c.accept_errors,
        ),
    ];
    for (name, kind, help, pick) in per_role {
        o.per_role(
            name,
            kind,
            help,
            roles.each_ref().map(|(r, c)| (*r, pick(c))),
        );
    }
    o.conn_family("sidegate_listener", "listener", &m.listeners, false);
    o.conn_family("sidegate_route", "gateway route", &m.routes, true);
    o.conn_family("sidegate_upstream", "sidecar upstream", &m.upstreams, true);

    o.family(
        "sidegate_bytes_total",
        "counter",
        "Bytes relayed per role; from_client is from the connecting side (TLS client, local app, mesh caller) to the destination.",
    );
    for (role, from, to) in [
        ("gateway", &g.bytes_from_client, &g.bytes_to_client),
        ("upstream", &u.bytes_to_upstream, &u.bytes_from_upstream),
        ("inbound", &i.bytes_from_mesh, &i.bytes_to_mesh),
    ] {
        o.sample(
            "sidegate_bytes_total",
            &[("role", role), ("direction", "from_client")],
            from.get(),
        );
        o.sample(
            "sidegate_bytes_total",
            &[("role", role), ("direction", "to_client")],
            to.get(),
        );
    }

    o.family(
        "sidegate_client_hello_total",
        "counter",
        "Gateway connections by what their ClientHello allowed: routed, or why they were closed.",
    );
    for outcome in HelloOutcome::ALL {
        o.sample(
            "sidegate_client_hello_total",
            &[("outcome", outcome.label())],
            g.hello(outcome).get(),
        );
    }
    o.family(
        "sidegate_gateway_hello_shed_total",
        "counter",
        "Gateway connections closed while still waiting for their ClientHello, to keep those within max_pending_handshakes.",
    );
    o.sample("sidegate_gateway_hello_shed_total", &[], g.hello_shed.get());
    o.per_role(
        "sidegate_connect_failures_total",
        "counter",
        "Failed attempts to connect to one endpoint (inbound: to the local app).",
        [
            ("gateway", &g.dial.connect_failures),
            ("upstream", &u.dial.connect_failures),
            ("inbound", &i.local_connect_failures),
        ],
    );
    o.per_role(
        "sidegate_endpoints_skipped_total",
        "counter",
        "Endpoints tried last because they failed in the last 10 seconds.",
        [
            ("gateway", &g.dial.endpoints_skipped),
            ("upstream", &u.dial.endpoints_skipped),
        ],
    );
    o.per_role(
        "sidegate_no_endpoint_total",
        "counter",
        "Connections closed because no endpoint of their route or upstream answered.",
        [("gateway", &g.no_endpoint), ("upstream", &u.no_endpoint)],
    );
    o.family(
        "sidegate_tls_handshake_failures_total",
        "counter",
        "Failed mTLS handshakes by role and reason.",
    );
    o.handshakes("upstream", &u.handshake_failures);
    o.handshakes("inbound", &i.handshake_failures);
    o.per_role(
        "sidegate_authorization_denials_total",
        "counter",
        "Inbound callers refused by intentions or for lacking a SPIFFE service ID.",
        [("inbound", &i.denied)],
    );
    o.per_role(
        "sidegate_idle_timeouts_total",
        "counter",
        "Relayed connections closed after idle_timeout_ms without traffic.",
        [("gateway", &g.idle_timeouts)],
    );

    o.family(
        "sidegate_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP) by result; a failed one kept the running configuration.",
    );
    o.sample(
        "sidegate_reloads_total",
        &[("result", "ok")],
        m.reloads.ok.get(),
    );
    o.sample(
        "sidegate_reloads_total",
        &[("result", "failed")],
        m.reloads.failed.get(),
    );

    o.family(
        "sidegate_admin_requests_total",
        "counter",
        "Requests to the admin endpoint by status code; code=\"none\": no complete request in time.",
    );
    for code in super::AdminMetrics::CODES {
        let answered = m.admin.answered(code).map_or(0, Counter::get);
        o.sample(
            "sidegate_admin_requests_total",
            &[("code", &code.to_string())],
            answered,
        );
    }
    o.sample(
        "sidegate_admin_requests_total",
        &[("code", "none")],
        m.admin.abandoned.get(),
    );
    o.family(
        "sidegate_admin_connections_refused_total",
        "counter",
        "Admin connections closed at accept: as many as it serves at once were open.",
    );
    o.sample(
        "sidegate_admin_connections_refused_total",
        &[],
        m.admin.refused.get(),
    );

    o.0
}

struct Out(String);

/// One value of a labelled family's entry.
type Read = fn(&ConnStats) -> u64;
/// One of a role's listener counters.
type Pick = for<'a> fn(&ListenerCounters<'a>) -> &'a Counter;

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (n, (key, value)) in labels.iter().enumerate() {
                if n > 0 {
                    self.0.push(',');
                }
                self.0.push_str(key);
                self.0.push_str("=\"");
                escape_label(&mut self.0, value);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A sample of a registry family: its label names and values, plus fixed extra labels.
    fn labelled(
        &mut self,
        name: &str,
        names: &[&str],
        values: &[String],
        extra: &[(&str, &str)],
        value: u64,
    ) {
        let mut labels: Vec<(&str, &str)> = names
            .iter()
            .copied()
            .zip(values.iter().map(String::as_str))
            .collect();
        labels.extend_from_slice(extra);
        self.sample(name, &labels, value);
    }

    fn per_role<const N: usize>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        values: [(&str, &Counter); N],
    ) {
        self.family(name, kind, help);
        for (role, c) in values {
            self.sample(name, &[("role", role)], c.get());
        }
    }

    /// `<prefix>_connections_opened_total`, `<prefix>_connections_active` and, with
    /// `bytes`, `<prefix>_bytes_total` for every entry of a labelled family.
    fn conn_family(&mut self, prefix: &str, what: &str, family: &Family<ConnStats>, bytes: bool) {
        let entries = family.entries();
        let names = family.label_names();
        let gauges: [(&str, &str, &str, Read); 2] = [
            (
                "connections_opened_total",
                "counter",
                "Connections served",
                |s| s.opened.get(),
            ),
            ("connections_active", "gauge", "Connections open now", |s| {
                s.active.get()
            }),
        ];
        for (suffix, kind, help, value) in gauges {
            let name = format!("{prefix}_{suffix}");
            self.family(&name, kind, &format!("{help} per {what}."));
            for (labels, s) in &entries {
                self.labelled(&name, names, labels, &[], value(s));
            }
        }
        if bytes {
            let total = format!("{prefix}_bytes_total");
            self.family(
                &total,
                "counter",
                &format!("Bytes relayed per {what}, by direction."),
            );
            for (labels, s) in &entries {
                for (dir, c) in [("from_client", &s.from_client), ("to_client", &s.to_client)] {
                    self.labelled(&total, names, labels, &[("direction", dir)], c.get());
                }
            }
        }
    }

    fn handshakes(&mut self, role: &str, f: &HandshakeFailures) {
        for why in super::HandshakeFailure::ALL {
            self.sample(
                "sidegate_tls_handshake_failures_total",
                &[("role", role), ("reason", why.label())],
                f.of(why).get(),
            );
        }
    }
}

/// Label values escape backslash, double quote and line feed (exposition format 0.0.4).
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let mut o = Out(String::new());
        o.sample("m", &[("a", "x\"y\\z\nw")], 3);
        assert_eq!(o.0, "m{a=\"x\\\"y\\\\z\\nw\"} 3\n");
    }

    #[test]
    fn every_family_is_declared_once_before_its_samples() {
        let m = Metrics::default();
        let held = m.routes.get(&["db.default.dc1.internal.td.consul"]);
        let _conn = held.hold();
        let text = render(&m);
        let mut declared = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(declared.insert(name.clone()), "{name} declared twice");
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "{line}");
            }
        }
        assert!(text.contains(
            "sidegate_route_connections_active{route=\"db.default.dc1.internal.td.consul\"} 1\n"
        ));
    }
}
