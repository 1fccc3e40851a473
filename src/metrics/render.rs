//! The counters in Prometheus text exposition format 0.0.4, for `/metrics`. Runs on the admin
//! thread: it reads atomics (and briefly locks the labelled registries, a batch of entries at
//! a time), so the data path never waits for a scrape.
//!
//! The text is written as it is made, through a buffer of [`CHUNK`] bytes: a gateway with tens
//! of thousands of routes has a body of megabytes, and building it whole would cost that much
//! memory at every scrape.

use std::io::{self, BufWriter, Write};

use super::labelled::values;
use super::{
    ConnStats, Counter, Family, HandshakeFailures, HelloOutcome, ListenerCounters, Metrics,
};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The most the exposition holds in memory at once (besides one batch of label values).
pub const CHUNK: usize = 8192;
/// Entries of a labelled family copied out under its lock at a time.
const BATCH: usize = 256;

/// Writes the whole exposition to `to`, in writes of at most [`CHUNK`] bytes.
pub fn render(m: &Metrics, to: impl Write) -> io::Result<()> {
    let mut o = Out(BufWriter::with_capacity(CHUNK, to));
    o.family(
        "sidegate_build_info",
        "gauge",
        "Version and target triple of this binary.",
    )?;
    o.build_info()?;
    o.listeners(m)?;
    o.conn_family("sidegate_listener", "listener", &m.listeners, false)?;
    o.conn_family("sidegate_route", "gateway route", &m.routes, true)?;
    o.conn_family("sidegate_upstream", "sidecar upstream", &m.upstreams, true)?;
    o.conn_family("sidegate_loop", "event loop", &m.loops, false)?;
    o.bytes_and_hellos(m)?;
    o.failures(m)?;
    o.operations(m)?;
    o.0.flush()
}

struct Out<W: Write>(BufWriter<W>);

/// One value of a labelled family's entry.
type Read = fn(&ConnStats) -> u64;
/// One of a role's listener counters.
type Pick = for<'a> fn(&ListenerCounters<'a>) -> &'a Counter;

impl<W: Write> Out<W> {
    fn build_info(&mut self) -> io::Result<()> {
        self.value(
            "sidegate_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("target", env!("SIDEGATE_TARGET")),
            ],
            1,
        )
    }

    fn listeners(&mut self, m: &Metrics) -> io::Result<()> {
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
            self.per_role(
                name,
                kind,
                help,
                roles.each_ref().map(|(r, c)| (*r, pick(c))),
            )?;
        }
        Ok(())
    }

    fn bytes_and_hellos(&mut self, m: &Metrics) -> io::Result<()> {
        let (g, u, i) = (&m.gateway, &m.upstream, &m.inbound);
        self.family(
            "sidegate_bytes_total",
            "counter",
            "Bytes relayed per role; from_client is from the connecting side (TLS client, local app, mesh caller) to the destination.",
        )?;
        for (role, from, to) in [
            ("gateway", &g.bytes_from_client, &g.bytes_to_client),
            ("upstream", &u.bytes_to_upstream, &u.bytes_from_upstream),
            ("inbound", &i.bytes_from_mesh, &i.bytes_to_mesh),
        ] {
            for (direction, c) in [("from_client", from), ("to_client", to)] {
                self.value(
                    "sidegate_bytes_total",
                    &[("role", role), ("direction", direction)],
                    c.get(),
                )?;
            }
        }
        self.family(
            "sidegate_client_hello_total",
            "counter",
            "Gateway connections by what their ClientHello allowed: routed, or why they were closed.",
        )?;
        for outcome in HelloOutcome::ALL {
            self.value(
                "sidegate_client_hello_total",
                &[("outcome", outcome.label())],
                g.hello(outcome).get(),
            )?;
        }
        self.family(
            "sidegate_gateway_hello_shed_total",
            "counter",
            "Gateway connections closed while still waiting for their ClientHello, to keep those within max_pending_handshakes.",
        )?;
        self.value("sidegate_gateway_hello_shed_total", &[], g.hello_shed.get())
    }

    fn failures(&mut self, m: &Metrics) -> io::Result<()> {
        let (g, u, i) = (&m.gateway, &m.upstream, &m.inbound);
        self.per_role(
            "sidegate_connect_failures_total",
            "counter",
            "Failed attempts to connect to one endpoint (inbound: to the local app).",
            [
                ("gateway", &g.dial.connect_failures),
                ("upstream", &u.dial.connect_failures),
                ("inbound", &i.local_connect_failures),
            ],
        )?;
        self.per_role(
            "sidegate_endpoints_skipped_total",
            "counter",
            "Endpoints tried last because they failed in the last 10 seconds.",
            [
                ("gateway", &g.dial.endpoints_skipped),
                ("upstream", &u.dial.endpoints_skipped),
            ],
        )?;
        self.per_role(
            "sidegate_no_endpoint_total",
            "counter",
            "Connections closed because no endpoint of their route or upstream answered.",
            [("gateway", &g.no_endpoint), ("upstream", &u.no_endpoint)],
        )?;
        self.family(
            "sidegate_tls_handshake_failures_total",
            "counter",
            "Failed mTLS handshakes by role and reason.",
        )?;
        self.handshakes("upstream", &u.handshake_failures)?;
        self.handshakes("inbound", &i.handshake_failures)?;
        self.per_role(
            "sidegate_authorization_denials_total",
            "counter",
            "Inbound callers refused by intentions or for lacking a SPIFFE service ID.",
            [("inbound", &i.denied)],
        )?;
        self.per_role(
            "sidegate_idle_timeouts_total",
            "counter",
            "Relayed connections closed after idle_timeout_ms without traffic.",
            [("gateway", &g.idle_timeouts)],
        )
    }

    /// Reloads and the admin endpoint's own requests.
    fn operations(&mut self, m: &Metrics) -> io::Result<()> {
        self.family(
            "sidegate_reloads_total",
            "counter",
            "Configuration reloads (SIGHUP) by result; a failed one kept the running configuration.",
        )?;
        for (result, c) in [("ok", &m.reloads.ok), ("failed", &m.reloads.failed)] {
            self.value("sidegate_reloads_total", &[("result", result)], c.get())?;
        }
        self.family(
            "sidegate_admin_requests_total",
            "counter",
            "Requests to the admin endpoint by status code; code=\"none\": no complete request in time.",
        )?;
        for code in super::AdminMetrics::CODES {
            let answered = m.admin.answered(code).map_or(0, Counter::get);
            let mut digits = [0u8; 3];
            let code = code_text(code, &mut digits);
            self.value("sidegate_admin_requests_total", &[("code", code)], answered)?;
        }
        self.value(
            "sidegate_admin_requests_total",
            &[("code", "none")],
            m.admin.abandoned.get(),
        )?;
        self.family(
            "sidegate_admin_connections_refused_total",
            "counter",
            "Admin connections closed at accept: as many as it serves at once were open.",
        )?;
        self.value(
            "sidegate_admin_connections_refused_total",
            &[],
            m.admin.refused.get(),
        )
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) -> io::Result<()> {
        writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}")
    }

    fn value(&mut self, name: &str, labels: &[(&str, &str)], value: u64) -> io::Result<()> {
        self.labelled(name, labels.iter().copied(), value)
    }

    fn labelled<'l>(
        &mut self,
        name: &str,
        labels: impl IntoIterator<Item = (&'l str, &'l str)>,
        value: u64,
    ) -> io::Result<()> {
        let w = &mut self.0;
        w.write_all(name.as_bytes())?;
        let mut open = false;
        for (key, value) in labels {
            w.write_all(if open { b"," } else { b"{" })?;
            open = true;
            w.write_all(key.as_bytes())?;
            w.write_all(b"=\"")?;
            escape_label(w, value)?;
            w.write_all(b"\"")?;
        }
        if open {
            w.write_all(b"}")?;
        }
        writeln!(w, " {value}")
    }

    fn per_role<const N: usize>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        values: [(&str, &Counter); N],
    ) -> io::Result<()> {
        self.family(name, kind, help)?;
        for (role, c) in values {
            self.value(name, &[("role", role)], c.get())?;
        }
        Ok(())
    }

    /// `<prefix>_connections_opened_total`, `<prefix>_connections_active` and, with
    /// `bytes`, `<prefix>_bytes_total` for every entry of a labelled family.
    fn conn_family(
        &mut self,
        prefix: &str,
        what: &str,
        family: &Family<ConnStats>,
        bytes: bool,
    ) -> io::Result<()> {
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
            self.family(&name, kind, &format!("{help} per {what}."))?;
            family.each_batched(BATCH, |labels, s| {
                let labels = names.iter().copied().zip(values(labels));
                self.labelled(&name, labels, value(s))
            })?;
        }
        if !bytes {
            return Ok(());
        }
        let total = format!("{prefix}_bytes_total");
        let help = format!("Bytes relayed per {what}, by direction.");
        self.family(&total, "counter", &help)?;
        family.each_batched(BATCH, |labels, s| {
            for (dir, c) in [("from_client", &s.from_client), ("to_client", &s.to_client)] {
                let labels = names.iter().copied().zip(values(labels));
                self.labelled(&total, labels.chain([("direction", dir)]), c.get())?;
            }
            Ok(())
        })
    }

    fn handshakes(&mut self, role: &str, f: &HandshakeFailures) -> io::Result<()> {
        for why in super::HandshakeFailure::ALL {
            self.value(
                "sidegate_tls_handshake_failures_total",
                &[("role", role), ("reason", why.label())],
                f.of(why).get(),
            )?;
        }
        Ok(())
    }
}

/// A three-digit status code as text, without allocating.
fn code_text(code: u16, digits: &mut [u8; 3]) -> &str {
    for (i, d) in digits.iter_mut().enumerate() {
        let place = 10u16.pow(2 - i as u32);
        *d = b'0' + ((code / place) % 10) as u8;
    }
    std::str::from_utf8(digits).unwrap_or("000")
}

/// Label values escape backslash, double quote and line feed (exposition format 0.0.4).
fn escape_label(out: &mut impl Write, value: &str) -> io::Result<()> {
    write!(out, "{}", LabelValue(value))
}

/// A label value as the text format (0.0.4) writes it: backslash, double quote and line feed
/// escaped. Names, paths and addresses come from configuration and Consul: any of them may
/// hold one. The one escaper for every part of `/metrics`.
pub struct LabelValue<'a>(pub &'a str);

impl std::fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['\\', '"', '\n']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut out = Vec::new();
        render(m, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_label_values() {
        let mut o = Out(BufWriter::new(Vec::new()));
        o.value("m", &[("a", "x\"y\\z\nw")], 3).unwrap();
        let out = o.0.into_inner().unwrap();
        assert_eq!(out, b"m{a=\"x\\\"y\\\\z\\nw\"} 3\n");
    }

    #[test]
    fn every_family_is_declared_once_before_its_samples() {
        let m = Metrics::default();
        let held = m.routes.get(&["db.default.dc1.internal.td.consul"]);
        let _conn = held.hold();
        let text = text(&m);
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
        assert!(text.contains("sidegate_admin_requests_total{code=\"431\"} 0\n"));
    }

    /// Counts what reaches the socket: every write, and the largest.
    #[derive(Default)]
    struct Socket {
        total: usize,
        largest: usize,
        lines: usize,
    }

    impl Write for Socket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.total += buf.len();
            self.largest = self.largest.max(buf.len());
            self.lines += buf.iter().filter(|&&b| b == b'\n').count();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Tens of thousands of routes make a body of megabytes; it must leave in chunks of the
    /// buffer's size, never be built whole.
    #[test]
    fn a_large_exposition_is_written_in_bounded_chunks() {
        let m = Metrics::default();
        let held: Vec<_> = (0..20_000)
            .map(|i| {
                m.routes
                    .get(&[&format!("svc{i}.default.dc1.internal.td.consul")])
            })
            .collect();
        let mut socket = Socket::default();
        render(&m, &mut socket).unwrap();
        assert!(socket.total > 20_000 * 4 * 50, "{} bytes", socket.total);
        assert!(
            socket.largest <= CHUNK,
            "a write of {} bytes",
            socket.largest
        );
        assert!(socket.lines > held.len() * 4, "{} lines", socket.lines);
    }

    #[test]
    fn status_codes_as_text() {
        let mut d = [0u8; 3];
        for code in super::super::AdminMetrics::CODES {
            assert_eq!(code_text(code, &mut d), code.to_string());
        }
    }
}
