//! The gateway's route table: SNI → endpoints, matched the way Consul's Envoy gateway does.
//!
//! Order (CONFIG.md, consul-mesh.md §5.1): the exact SNI of a service in the gateway's own
//! (datacenter, partition), also with one leading subset label; then the longest
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
}

/// One route as the table's users see it, borrowed from the table.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Route<'a> {
    /// The exact name, or `*.<suffix>` (lower case).
    #[serde(rename = "match")]
    pub pattern: &'a str,
    pub kind: RouteKind,
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
    /// Every route's pattern and target.
    names: String,
    endpoints: Vec<Endpoint>,
    /// One failure mark per endpoint (see `Endpoints`).
    failed_at: Vec<AtomicU64>,
    /// Positions in `entries` of the service routes, sorted by pattern; for equal patterns
    /// only the last added.
    exact: Box<[u32]>,
    /// Added since `exact` was last sorted (see `finish`).
    unsorted: bool,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, usize>,
}

#[derive(Debug)]
struct Entry {
    pattern: Span,
    target: Span,
    endpoints: Span,
    kind: RouteKind,
    /// Where the next connection starts in the round robin over the endpoints.
    next: AtomicUsize,
}

/// A range of `names` or `endpoints`.
#[derive(Clone, Copy, Debug)]
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

    /// Adds a service route for an exact SNI (matched in lower case); a later route for the
    /// same name replaces an earlier one in lookups.
    pub fn add_exact(&mut self, sni: &str, target: impl fmt::Display, endpoints: &[Endpoint]) {
        let start = self.names.len();
        self.names
            .extend(sni.chars().map(|c| c.to_ascii_lowercase()));
        let pattern = Span::since(start, self.names.len());
        self.push(RouteKind::Service, pattern, target, endpoints);
        self.unsorted = true;
    }

    /// Adds a gateway route for every name ending in `.<suffix>` (matched in lower case).
    pub fn add_wildcard(
        &mut self,
        suffix: &str,
        target: impl fmt::Display,
        endpoints: &[Endpoint],
    ) {
        let suffix = suffix.to_ascii_lowercase();
        let start = self.names.len();
        self.names.push_str("*.");
        self.names.push_str(&suffix);
        let pattern = Span::since(start, self.names.len());
        self.wildcard.insert(suffix, self.entries.len());
        self.push(RouteKind::Gateway, pattern, target, endpoints);
    }

    fn push(
        &mut self,
        kind: RouteKind,
        pattern: Span,
        target: impl fmt::Display,
        endpoints: &[Endpoint],
    ) {
        let start = self.names.len();
        let _ = write!(self.names, "{target}");
        let target = Span::since(start, self.names.len());
        let start = self.endpoints.len();
        self.endpoints.extend_from_slice(endpoints);
        self.failed_at
            .extend(endpoints.iter().map(|_| AtomicU64::new(0)));
        self.entries.push(Entry {
            pattern,
            target,
            endpoints: Span::since(start, self.endpoints.len()),
            kind,
            next: AtomicUsize::new(0),
        });
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
            .filter(|&i| self.entries[i].kind == RouteKind::Service)
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
        // `<subset>.<service sni>`: Consul builds one cluster per resolver subset, all on the
        // same instances; the destination sidecar, not the gateway, knows the subsets.
        if let Some(i) = name.split_once('.').and_then(|(_, rest)| self.exact(rest)) {
            return Some((i, MatchKind::Subset));
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
        let mut t = RouteTable::default();
        t.add_exact("db.default.dc1.internal.td.consul", "db", &eps(1));
        t.add_exact("api.default.dc1.internal.td.consul", "api", &eps(2));
        t.add_wildcard("dc2.internal.td.consul", "dc2", &eps(3));
        t.add_wildcard("ap1.dc2.internal-v1.td.consul", "dc2/ap1", &eps(4));
        t.add_exact("db.default.dc1.internal.td.consul", "db again", &eps(5));
        t.add_exact("aaa.default.dc1.internal.td.consul", "aaa", &eps(6));
        t.finish();
        t
    }

    #[test]
    fn matches_in_order() {
        let t = table();
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
        ];
        for (sni, want) in cases {
            let got = t.lookup(sni).map(|(r, k)| (r.target, k));
            assert_eq!(got, *want, "{sni}");
        }
        assert!(t.lookup(&"a".repeat(254)).is_none());
    }
}
