//! Counters as fixed atomics: counting never allocates or locks on the data path.
//! `render` writes them in Prometheus text format for the admin endpoint; `render_limits`
//! adds the running plan's limits and leaf expiry, `render_process` the standard `process_*`.

mod handshake;
mod labelled;
mod limits;
mod process;
mod render;

use std::sync::atomic::{AtomicU64, Ordering};

pub use handshake::{HandshakeFailure, HandshakeFailures};
pub use labelled::{ConnStats, Family, Held, Tally};
pub use limits::render_limits;
pub use process::render_process;
pub use render::{render, LabelValue, CHUNK, CONTENT_TYPE};

/// The counters every accepting listener keeps, whatever its role.
pub struct ListenerCounters<'a> {
    pub accepted: &'a Counter,
    pub active: &'a Counter,
    pub refused_limit: &'a Counter,
    pub accept_errors: &'a Counter,
}

impl Metrics {
    pub fn gateway_listener(&self) -> ListenerCounters<'_> {
        let g = &self.gateway;
        ListenerCounters {
            accepted: &g.accepted,
            active: &g.active,
            refused_limit: &g.refused_limit,
            accept_errors: &g.accept_errors,
        }
    }

    pub fn upstream_listener(&self) -> ListenerCounters<'_> {
        let u = &self.upstream;
        ListenerCounters {
            accepted: &u.accepted,
            active: &u.active,
            refused_limit: &u.refused_limit,
            accept_errors: &u.accept_errors,
        }
    }

    pub fn inbound_listener(&self) -> ListenerCounters<'_> {
        let i = &self.inbound;
        ListenerCounters {
            accepted: &i.accepted,
            active: &i.active,
            refused_limit: &i.refused_limit,
            accept_errors: &i.accept_errors,
        }
    }
}

/// Why a gateway connection ended before it was relayed, or that it was routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloOutcome {
    Routed,
    UnknownSni,
    /// A subset label on a known service that no resolver defines (Envoy has no cluster
    /// for it either).
    UnknownSubset,
    NoSni,
    NotTls,
    TooLarge,
    Timeout,
    /// The client closed before its hello was complete.
    Closed,
}

impl HelloOutcome {
    pub const ALL: [HelloOutcome; 8] = [
        HelloOutcome::Routed,
        HelloOutcome::UnknownSni,
        HelloOutcome::UnknownSubset,
        HelloOutcome::NoSni,
        HelloOutcome::NotTls,
        HelloOutcome::TooLarge,
        HelloOutcome::Timeout,
        HelloOutcome::Closed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HelloOutcome::Routed => "routed",
            HelloOutcome::UnknownSni => "unknown_sni",
            HelloOutcome::UnknownSubset => "unknown_subset",
            HelloOutcome::NoSni => "no_sni",
            HelloOutcome::NotTls => "not_tls",
            HelloOutcome::TooLarge => "too_large",
            HelloOutcome::Timeout => "timeout",
            HelloOutcome::Closed => "closed",
        }
    }
}

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// For gauges that hold a value rather than count (a timestamp).
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

/// Dialing a route's or an upstream's endpoints.
#[derive(Debug, Default)]
pub struct DialMetrics {
    /// One failed attempt to connect to one endpoint (to one of a name's addresses).
    pub connect_failures: Counter,
    /// Endpoints put behind the others for a connection because they failed recently,
    /// whether or not the connection then needed them.
    pub endpoints_skipped: Counter,
}

#[derive(Debug, Default)]
pub struct GatewayMetrics {
    pub accepted: Counter,
    pub active: Counter,
    /// Refused because `max_connections` were open.
    pub refused_limit: Counter,
    pub hello: [Counter; HelloOutcome::ALL.len()],
    /// Closed while still waiting for their ClientHello, to make room within
    /// `max_pending_handshakes` for a newer connection.
    pub hello_shed: Counter,
    pub dial: DialMetrics,
    /// Routed connections closed because no endpoint could be reached.
    pub no_endpoint: Counter,
    pub bytes_from_client: Counter,
    pub bytes_to_client: Counter,
    pub idle_timeouts: Counter,
    pub accept_errors: Counter,
}

impl GatewayMetrics {
    pub fn hello(&self, outcome: HelloOutcome) -> &Counter {
        &self.hello[outcome as usize]
    }
}

/// The sidecar's upstream listeners, all upstreams together.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    pub accepted: Counter,
    pub active: Counter,
    pub dial: DialMetrics,
    /// Closed because no endpoint answered.
    pub no_endpoint: Counter,
    /// The mTLS handshake with the upstream failed (including a wrong server identity).
    pub handshake_failures: HandshakeFailures,
    pub bytes_to_upstream: Counter,
    pub bytes_from_upstream: Counter,
    pub accept_errors: Counter,
    /// Refused because the connection limit was reached (no limit is configured yet).
    pub refused_limit: Counter,
}

/// The sidecar's inbound (public) listener.
#[derive(Debug, Default)]
pub struct InboundMetrics {
    pub accepted: Counter,
    pub active: Counter,
    /// Refused because the connection limit was reached.
    pub refused_limit: Counter,
    /// The caller's mTLS handshake failed (no or untrusted client certificate, timeout).
    pub handshake_failures: HandshakeFailures,
    /// Refused by intentions.
    pub denied: Counter,
    /// The local app did not accept the connection.
    pub local_connect_failures: Counter,
    pub bytes_from_mesh: Counter,
    pub bytes_to_mesh: Counter,
    pub accept_errors: Counter,
}

#[derive(Debug)]
pub struct Metrics {
    pub gateway: GatewayMetrics,
    pub upstream: UpstreamMetrics,
    pub inbound: InboundMetrics,
    /// Per listener: `role` and `listener` (its bound address or socket path).
    pub listeners: Family<ConnStats>,
    /// Per gateway route: `route` is its match, as `check --json` shows it.
    pub routes: Family<ConnStats>,
    /// Per sidecar upstream: `upstream` (destination name) and `bind`.
    pub upstreams: Family<ConnStats>,
    /// Per event loop (`[runtime] threads`): `loop` is its index, 0 the one that accepts.
    pub loops: Family<ConnStats>,
    pub reloads: ReloadMetrics,
    pub admin: AdminMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            gateway: GatewayMetrics::default(),
            upstream: UpstreamMetrics::default(),
            inbound: InboundMetrics::default(),
            listeners: Family::new(&["role", "listener"]),
            routes: Family::new(&["route"]),
            upstreams: Family::new(&["upstream", "bind"]),
            loops: Family::new(&["loop"]),
            reloads: ReloadMetrics::default(),
            admin: AdminMetrics::default(),
        }
    }
}

impl Metrics {
    /// Drops labelled counters of routes, upstreams and listeners that are gone.
    pub fn prune(&self) {
        self.listeners.prune();
        self.routes.prune();
        self.upstreams.prune();
        self.loops.prune();
    }
}

/// Swaps of the running plan (SIGHUP, new Consul state).
#[derive(Debug, Default)]
pub struct ReloadMetrics {
    pub ok: Counter,
    /// The file was unreadable or invalid, or a new listener could not be bound; the running
    /// configuration was kept.
    pub failed: Counter,
}

/// The admin endpoint's own requests: scrapes, and whatever else reaches it.
#[derive(Debug, Default)]
pub struct AdminMetrics {
    answered: [Counter; AdminMetrics::CODES.len()],
    /// Connections that sent no complete request in time, or went away.
    pub abandoned: Counter,
    /// Connections closed at accept: as many as the endpoint serves at once were open.
    pub refused: Counter,
}

impl AdminMetrics {
    /// Every status the endpoint answers with.
    pub const CODES: [u16; 7] = [200, 400, 404, 405, 431, 500, 503];

    pub fn answered(&self, code: u16) -> Option<&Counter> {
        let i = Self::CODES.iter().position(|&c| c == code)?;
        self.answered.get(i)
    }
}
