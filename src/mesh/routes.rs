//! The gateway's route table: SNI → endpoints, matched the way Consul's Envoy gateway does.
//!
//! Order (as Consul's Envoy mesh gateway matches; `config/README.md`, "How the gateway routes"):
//! the exact SNI of a service in the gateway's own (datacenter, partition), or of one of its
//! resolver's subsets, or a Consul server's WAN-federation name; then the longest
//! `*.<GatewaySNI>` suffix of another place. Case-insensitive, and a lookup allocates nothing.

use std::collections::HashMap;
use std::fmt::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize};

use serde::Serialize;

use super::endpoints::{self, Endpoints};
use super::Endpoint;
use crate::client_hello::{ServerName, MAX_NAME};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// A service of this gateway's own place: its instances, LAN addresses.
    Service,
    /// Another place: its gateways, WAN addresses.
    Gateway,
    /// Consul servers' WAN-federation names (`<node>.server.<dc>.<domain>`): this
    /// datacenter's servers, or another datacenter's gateways.
    Server,
}

/// One route as the table's users see it, borrowed from the table.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Route<'a> {
    /// The exact name, or `*.<suffix>` (lower case).
    #[serde(rename = "match")]
    pub pattern: &'a str,
    pub kind: RouteKind,
    /// The resolver subset this route serves (a service route for `<subset>.<service SNI>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<&'a str>,
    /// For people: what the route leads to.
    pub target: &'a str,
    pub endpoints: Endpoints<'a>,
}

/// How a name matched, for `explain` and debug logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Subset,
    Wildcard,
}

/// A gateway may route tens of thousands of services, and builds its table again at every
/// reload. So the table keeps every route's strings in one buffer and every endpoint in one
/// list, a route being positions in them: a few large allocations, whatever the number of
/// routes, which the allocator hands back whole when the table goes (many small ones, mixed
/// with the configuration's while it is read, would leave the heap fragmented at every
/// reload). The exact-name index is the routes' positions sorted by name, searched by binary
/// search, not a map with a second copy of every name.
#[derive(Debug, Default)]
pub struct RouteTable {
    entries: Vec<Entry>,
    /// Every route's pattern, target and subset.
    names: String,
    endpoints: Vec<Endpoint>,
    /// One failure mark per endpoint (see `Endpoints`).
    failed_at: Vec<AtomicU64>,
    /// Positions in `entries` of the routes matched by exact name (services, their subsets,
    /// Consul servers), sorted by pattern; for equal patterns only the last added.
    exact: Box<[u32]>,
    /// Added since `exact` was last sorted (see `finish`).
    unsorted: bool,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, usize>,
    /// Whether a subset label no route names is passed to the service (the destination
    /// picks the subset) rather than refused. Only while the resolvers are not known (the
    /// Consul source, until it takes them from the agent): Envoy refuses an undefined subset.
    pub pass_any_subset: bool,
}

#[derive(Debug)]
struct Entry {
    pattern: Span,
    target: Span,
    endpoints: Span,
    /// The resolver subset of a service route, in `names`; empty for none (a subset always
    /// has a name). A span, not an `Option<String>`: no allocation of its own per route.
    subset: Span,
    kind: RouteKind,
    /// Matched by exact name (in `exact`), not as a `*.` suffix.
    exact: bool,
    /// Where the next connection starts in the round robin over the endpoints.
    next: AtomicUsize,
}

/// A range of `names` or `endpoints`.
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    /// From where a buffer ended before something was added to where it ends now. Buffers
    /// beyond 4 GiB do not occur (the configuration and the agent's answers are bounded far
    /// below); such a span would read as empty.
    fn since(start: usize, end: usize) -> Span {
        Span {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            len: u32::try_from(end.saturating_sub(start)).unwrap_or(0),
        }
    }

    fn range(self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }
}

/// A route's pattern as written in `names`, and how it is matched.
struct Pattern {
    span: Span,
    exact: bool,
}

impl RouteTable {
    /// A table about to receive `routes` routes with `endpoints` endpoints in all.
    pub fn with_capacity(routes: usize, endpoints: usize) -> Self {
        RouteTable {
            entries: Vec::with_capacity(routes),
            endpoints: Vec::with_capacity(endpoints),
            failed_at: Vec::with_capacity(endpoints),
            ..RouteTable::default()
        }
    }

    /// Adds a service route for an exact SNI (matched in lower case), of one subset or of the
    /// plain name; a later route for the same name replaces an earlier one in lookups.
    pub fn add_exact(
        &mut self,
        sni: &str,
        target: impl fmt::Display,
        endpoints: &[Endpoint],
        subset: Option<&str>,
    ) {
        let pattern = self.add_exact_name(sni);
        let i = self.push(RouteKind::Service, pattern, target, endpoints);
        if let Some(subset) = subset {
            let start = self.names.len();
            self.names.push_str(subset);
            if let Some(e) = self.entries.get_mut(i) {
                e.subset = Span::since(start, self.names.len());
            }
        }
    }

    /// Adds a Consul server route: the exact `name`, or with `wildcard` every name ending in
    /// `.<name>` (another datacenter's servers, any node); matched in lower case. Never
    /// matched with a subset label.
    pub fn add_server(
        &mut self,
        name: &str,
        wildcard: bool,
        target: impl fmt::Display,
        endpoints: &[Endpoint],
    ) {
        if wildcard {
            let pattern = self.add_wildcard_name(name);
            self.push(RouteKind::Server, pattern, target, endpoints);
        } else {
            let pattern = self.add_exact_name(name);
            self.push(RouteKind::Server, pattern, target, endpoints);
        }
    }

    /// Writes an exact pattern for the route about to be pushed, and marks the index stale.
    fn add_exact_name(&mut self, name: &str) -> Pattern {
        let start = self.names.len();
        self.names
            .extend(name.chars().map(|c| c.to_ascii_lowercase()));
        self.unsorted = true;
        Pattern {
            span: Span::since(start, self.names.len()),
            exact: true,
        }
    }

    /// Writes `*.<suffix>` for the route about to be pushed, and indexes it by the suffix.
    fn add_wildcard_name(&mut self, suffix: &str) -> Pattern {
        let suffix = suffix.to_ascii_lowercase();
        let start = self.names.len();
        self.names.push_str("*.");
        self.names.push_str(&suffix);
        self.wildcard.insert(suffix, self.entries.len());
        Pattern {
            span: Span::since(start, self.names.len()),
            exact: false,
        }
    }

    /// Adds a gateway route for every name ending in `.<suffix>` (matched in lower case).
    pub fn add_wildcard(
        &mut self,
        suffix: &str,
        target: impl fmt::Display,
        endpoints: &[Endpoint],
    ) {
        let pattern = self.add_wildcard_name(suffix);
        self.push(RouteKind::Gateway, pattern, target, endpoints);
    }

    /// Adds a route whose pattern is already written; its position in `entries`.
    fn push(
        &mut self,
        kind: RouteKind,
        pattern: Pattern,
        target: impl fmt::Display,
        endpoints: &[Endpoint],
    ) -> usize {
        let start = self.names.len();
        let _ = write!(self.names, "{target}");
        let target = Span::since(start, self.names.len());
        let start = self.endpoints.len();
        self.endpoints.extend_from_slice(endpoints);
        self.failed_at
            .extend(endpoints.iter().map(|_| AtomicU64::new(0)));
        self.entries.push(Entry {
            pattern: pattern.span,
            target,
            endpoints: Span::since(start, self.endpoints.len()),
            subset: Span::default(),
            kind,
            exact: pattern.exact,
            next: AtomicUsize::new(0),
        });
        self.entries.len() - 1
    }

    /// Builds the exact-name index and gives back unused capacity; called once all routes are
    /// in (lookups before that see only the wildcard routes and the index as last built).
    pub fn finish(&mut self) {
        self.names.shrink_to_fit();
        self.endpoints.shrink_to_fit();
        self.failed_at.shrink_to_fit();
        self.entries.shrink_to_fit();
        if !self.unsorted {
            return;
        }
        let mut exact: Vec<u32> = (0..self.entries.len())
            .filter(|&i| self.entries[i].exact)
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        // Stable, so among equal patterns the last added is last; keep only that one.
        exact.sort_by(|&a, &b| self.pattern(a as usize).cmp(self.pattern(b as usize)));
        exact.reverse();
        exact.dedup_by(|a, b| self.pattern(*a as usize) == self.pattern(*b as usize));
        exact.reverse();
        self.exact = exact.into_boxed_slice();
        self.unsorted = false;
    }

    fn pattern(&self, i: usize) -> &str {
        self.entries
            .get(i)
            .and_then(|e| self.names.get(e.pattern.range()))
            .unwrap_or_default()
    }

    /// The route at a position of `routes()`.
    pub fn route(&self, i: usize) -> Option<Route<'_>> {
        self.entries.get(i).map(|e| self.view(e))
    }

    /// Every route, in the order added.
    pub fn routes(&self) -> impl ExactSizeIterator<Item = Route<'_>> + '_ {
        self.entries.iter().map(|e| self.view(e))
    }

    fn view<'a>(&'a self, e: &'a Entry) -> Route<'a> {
        let name = |span: Span| self.names.get(span.range()).unwrap_or_default();
        let range = e.endpoints.range();
        Route {
            pattern: name(e.pattern),
            kind: e.kind,
            subset: Some(name(e.subset)).filter(|s| !s.is_empty()),
            target: name(e.target),
            endpoints: Endpoints::new(
                self.endpoints.get(range.clone()).unwrap_or_default(),
                self.failed_at.get(range).unwrap_or_default(),
                &e.next,
            ),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the table holds on the heap, counted from its parts' capacities (the allocator's
    /// own overhead aside): a bound tests keep per-route state to.
    pub fn heap_bytes(&self) -> usize {
        let wildcard: usize = self
            .wildcard
            .keys()
            .map(|k| k.capacity() + std::mem::size_of::<(String, usize)>())
            .sum();
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.names.capacity()
            + endpoints::heap_bytes(&self.endpoints)
            + (self.endpoints.capacity() - self.endpoints.len()) * std::mem::size_of::<Endpoint>()
            + self.failed_at.capacity() * std::mem::size_of::<AtomicU64>()
            + std::mem::size_of_val(&*self.exact)
            + wildcard
    }

    fn exact(&self, name: &str) -> Option<usize> {
        let at = self
            .exact
            .binary_search_by(|&i| self.pattern(i as usize).cmp(name))
            .ok()?;
        self.exact.get(at).map(|&i| i as usize)
    }

    /// Whether `sni` is a subset label on a service this gateway routes, of a subset no
    /// route serves: refused, and counted apart from names that are not ours at all.
    pub fn is_unknown_subset(&self, sni: &str) -> bool {
        let Some(name) = lowercase(sni) else {
            return false;
        };
        !self.pass_any_subset
            && self.exact(name.as_str()).is_none()
            && name.split_once('.').is_some_and(|(_, rest)| {
                self.exact(rest)
                    .and_then(|i| self.entries.get(i))
                    .is_some_and(|e| e.kind == RouteKind::Service && e.subset.len == 0)
            })
    }

    pub fn lookup(&self, sni: &str) -> Option<(Route<'_>, MatchKind)> {
        let (i, how) = self.find(sni)?;
        Some((self.route(i)?, how))
    }

    /// The matching route's position in `routes()` (the runtime keeps per-route state by it).
    pub fn find(&self, sni: &str) -> Option<(usize, MatchKind)> {
        let name = lowercase(sni)?;
        let name = name.as_str();
        if let Some(i) = self.exact(name) {
            return Some((i, MatchKind::Exact));
        }
        // `<subset>.<service sni>` of a subset no resolver defines: refused, as Envoy has no
        // cluster for it (`unknown_subset`), unless the subsets are not known. Only services
        // have subsets: `<unknown node>.server.<dc>.<domain>` must not reach the exact
        // `server.<dc>.<domain>` route of all servers (Consul closes it).
        if let Some(i) = name
            .split_once('.')
            .and_then(|(_, rest)| self.exact(rest))
            .filter(|&i| {
                self.entries
                    .get(i)
                    .is_some_and(|e| e.kind == RouteKind::Service)
            })
        {
            return self.pass_any_subset.then_some((i, MatchKind::Subset));
        }
        // The first dot from the left leaves the longest suffix, so the most specific
        // wildcard wins, as in Envoy's server-name matching.
        name.match_indices('.')
            .filter(|&(at, _)| at > 0)
            .find_map(|(at, _)| self.wildcard.get(&name[at + 1..]))
            .map(|&i| (i, MatchKind::Wildcard))
    }
}

fn lowercase(sni: &str) -> Option<ServerName> {
    if sni.len() > MAX_NAME {
        return None;
    }
    let mut out = ServerName::new();
    for c in sni.chars() {
        out.push(c.to_ascii_lowercase()).ok()?;
    }
    Some(out)
}

impl Serialize for RouteTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.routes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(port: u16) -> Vec<Endpoint> {
        vec![Endpoint::Addr(([127, 0, 0, 1], port).into())]
    }

    fn table() -> RouteTable {
        let mut t = RouteTable {
            pass_any_subset: true,
            ..RouteTable::default()
        };
        t.add_exact("db.default.dc1.internal.td.consul", "db", &eps(1), None);
        t.add_exact("api.default.dc1.internal.td.consul", "api", &eps(2), None);
        t.add_wildcard("dc2.internal.td.consul", "dc2", &eps(3));
        t.add_wildcard("ap1.dc2.internal-v1.td.consul", "dc2/ap1", &eps(4));
        t.add_server("node1.server.dc1.consul", false, "node1", &eps(5));
        t.add_server("server.dc1.consul", false, "dc1 servers", &eps(5));
        t.add_server("server.dc2.consul", true, "dc2 servers", &eps(3));
        t.add_exact("aaa.default.dc1.internal.td.consul", "aaa", &eps(6), None);
        t.finish();
        t
    }

    #[test]
    fn matches_in_order() {
        let mut t = table();
        // A later route for the same name replaces the earlier one, also added after the
        // index was first built.
        t.add_exact(
            "db.default.dc1.internal.td.consul",
            "db again",
            &eps(5),
            None,
        );
        t.finish();
        let cases: &[(&str, Option<(&str, MatchKind)>)] = &[
            (
                "db.default.dc1.internal.td.consul",
                Some(("db again", MatchKind::Exact)),
            ),
            (
                "DB.Default.DC1.internal.TD.consul",
                Some(("db again", MatchKind::Exact)),
            ),
            (
                "v2.db.default.dc1.internal.td.consul",
                Some(("db again", MatchKind::Subset)),
            ),
            (
                "api.default.dc1.internal.td.consul",
                Some(("api", MatchKind::Exact)),
            ),
            (
                "aaa.default.dc1.internal.td.consul",
                Some(("aaa", MatchKind::Exact)),
            ),
            ("ab.default.dc1.internal.td.consul", None),
            ("x.v2.db.default.dc1.internal.td.consul", None),
            (
                "web.default.dc2.internal.td.consul",
                Some(("dc2", MatchKind::Wildcard)),
            ),
            (
                "v1.web.default.dc2.internal.td.consul",
                Some(("dc2", MatchKind::Wildcard)),
            ),
            (
                "web.default.ap1.dc2.internal-v1.td.consul",
                Some(("dc2/ap1", MatchKind::Wildcard)),
            ),
            ("dc2.internal.td.consul", None),
            (".dc2.internal.td.consul", None),
            ("web.default.dc1.internal.td.consul", None),
            ("web.default.dc3.internal.td.consul", None),
            ("db.default.dc1.internal.other.consul", None),
            ("", None),
            ("NODE1.server.dc1.consul", Some(("node1", MatchKind::Exact))),
            ("server.dc1.consul", Some(("dc1 servers", MatchKind::Exact))),
            // An unknown node of this datacenter is closed, not sent to any server.
            ("node2.server.dc1.consul", None),
            (
                "node9.server.dc2.consul",
                Some(("dc2 servers", MatchKind::Wildcard)),
            ),
            ("server.dc2.consul", None),
            ("node1.server.dc3.consul", None),
        ];
        for (sni, want) in cases {
            let got = t.lookup(sni).map(|(r, k)| (r.target, k));
            assert_eq!(got, *want, "{sni}");
        }
        assert!(t.lookup(&"a".repeat(254)).is_none());
    }

    /// With the resolvers known, only a defined subset routes; any other label on a known
    /// service is refused as an unknown subset, a foreign name as unknown.
    #[test]
    fn with_resolvers_known_only_defined_subsets_route() {
        let mut t = table();
        t.pass_any_subset = false;
        t.add_exact(
            "v1.db.default.dc1.internal.td.consul",
            "db v1",
            &eps(5),
            Some("v1"),
        );
        t.finish();
        type Case<'a> = (&'a str, Option<(&'a str, MatchKind)>, bool);
        let cases: &[Case] = &[
            (
                "v1.db.default.dc1.internal.td.consul",
                Some(("db v1", MatchKind::Exact)),
                false,
            ),
            (
                "V1.DB.default.dc1.internal.td.consul",
                Some(("db v1", MatchKind::Exact)),
                false,
            ),
            (
                "db.default.dc1.internal.td.consul",
                Some(("db", MatchKind::Exact)),
                false,
            ),
            ("v2.db.default.dc1.internal.td.consul", None, true),
            ("bogus.api.default.dc1.internal.td.consul", None, true),
            ("x.v1.db.default.dc1.internal.td.consul", None, false),
            ("web.default.dc3.internal.td.consul", None, false),
            (
                "v1.web.default.dc2.internal.td.consul",
                Some(("dc2", MatchKind::Wildcard)),
                false,
            ),
            // A server name is not a service: an unknown node is not an unknown subset.
            ("node2.server.dc1.consul", None, false),
        ];
        for (sni, want, unknown_subset) in cases {
            let got = t.lookup(sni).map(|(r, k)| (r.target, k));
            assert_eq!(got, *want, "{sni}");
            assert_eq!(t.is_unknown_subset(sni), *unknown_subset, "{sni}");
        }
        // The subset is the route's own, kept as given; the plain name has none.
        let subset_of = |sni| t.lookup(sni).and_then(|(r, _)| r.subset);
        assert_eq!(
            subset_of("v1.db.default.dc1.internal.td.consul"),
            Some("v1")
        );
        assert_eq!(subset_of("db.default.dc1.internal.td.consul"), None);
        assert_eq!(subset_of("node1.server.dc1.consul"), None);
    }
}
