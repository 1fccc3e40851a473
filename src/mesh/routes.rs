//! The gateway's route table: SNI → endpoints, matched the way Consul's Envoy gateway does.
//!
//! Order (CONFIG.md, consul-mesh.md §5.1): the exact SNI of a service in the gateway's own
//! (datacenter, partition), also with one leading subset label; then the longest
//! `*.<GatewaySNI>` suffix of another place. Case-insensitive, and a lookup allocates nothing.

use std::collections::HashMap;

use serde::Serialize;

use super::endpoints::EndpointSet;
use crate::client_hello::{ServerName, MAX_NAME};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// A service of this gateway's own place: its instances, LAN addresses.
    Service,
    /// Another place: its gateways, WAN addresses.
    Gateway,
}

#[derive(Debug, Serialize)]
pub struct Route {
    /// As CONFIG.md shows it: the exact name, or `*.<suffix>`.
    #[serde(rename = "match")]
    pub pattern: String,
    pub kind: RouteKind,
    /// For people: what the route leads to.
    pub target: String,
    pub endpoints: EndpointSet,
}

/// How a name matched, for `explain` and debug logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Subset,
    Wildcard,
}

/// A gateway may route tens of thousands of services, so a route holds its strings once: the
/// exact-name index is the routes' positions sorted by their pattern (searched by binary
/// search), not a map with a second copy of every name.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Positions in `routes` of the service routes, sorted by pattern; for equal patterns
    /// only the last added.
    exact: Box<[u32]>,
    /// Added since `exact` was last sorted (see `finish`).
    unsorted: bool,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, usize>,
}

impl RouteTable {
    /// A table about to receive `routes` routes.
    pub fn with_capacity(routes: usize) -> Self {
        RouteTable {
            routes: Vec::with_capacity(routes),
            ..RouteTable::default()
        }
    }

    /// Adds a service route for an exact (lower-case) SNI; a later route for the same name
    /// replaces an earlier one in lookups.
    pub fn add_exact(&mut self, sni: String, mut target: String, endpoints: EndpointSet) {
        target.shrink_to_fit();
        self.routes.push(Route {
            pattern: sni,
            kind: RouteKind::Service,
            target,
            endpoints,
        });
        self.unsorted = true;
    }

    /// Builds the exact-name index; called once all routes are in (lookups before that see
    /// only the wildcard routes and the index as last built).
    pub fn finish(&mut self) {
        if !self.unsorted {
            return;
        }
        let routes = &self.routes;
        let mut exact: Vec<u32> = (0..routes.len())
            .filter(|&i| routes[i].kind == RouteKind::Service)
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        // Stable, so among equal patterns the last added is last; keep only that one.
        exact.sort_by(|&a, &b| routes[a as usize].pattern.cmp(&routes[b as usize].pattern));
        exact.reverse();
        exact.dedup_by(|a, b| routes[*a as usize].pattern == routes[*b as usize].pattern);
        exact.reverse();
        self.exact = exact.into_boxed_slice();
        self.unsorted = false;
    }

    /// What the table holds on the heap, counted from its parts' sizes and capacities (the
    /// allocator's own overhead aside): a bound tests keep per-route state to.
    pub fn heap_bytes(&self) -> usize {
        let routes: usize = self
            .routes
            .iter()
            .map(|r| r.pattern.capacity() + r.target.capacity() + r.endpoints.heap_bytes())
            .sum();
        let wildcard: usize = self
            .wildcard
            .keys()
            .map(|k| k.capacity() + std::mem::size_of::<(String, usize)>())
            .sum();
        self.routes.capacity() * std::mem::size_of::<Route>()
            + routes
            + std::mem::size_of_val(&*self.exact)
            + wildcard
    }

    fn exact(&self, name: &str) -> Option<usize> {
        let at = self
            .exact
            .binary_search_by(|&i| self.routes[i as usize].pattern.as_str().cmp(name))
            .ok()?;
        self.exact.get(at).map(|&i| i as usize)
    }

    /// Adds a gateway route for every name ending in `.<suffix>`.
    pub fn add_wildcard(&mut self, suffix: String, target: String, endpoints: EndpointSet) {
        let pattern = format!("*.{suffix}");
        self.wildcard.insert(suffix, self.routes.len());
        self.routes.push(Route {
            pattern,
            kind: RouteKind::Gateway,
            target,
            endpoints,
        });
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn lookup(&self, sni: &str) -> Option<(&Route, MatchKind)> {
        self.find(sni).map(|(i, how)| (&self.routes[i], how))
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
        self.routes.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Endpoint;

    fn eps(port: u16) -> EndpointSet {
        EndpointSet::new(vec![Endpoint::Addr(([127, 0, 0, 1], port).into())])
    }

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        t.add_exact(
            "db.default.dc1.internal.td.consul".into(),
            "db".into(),
            eps(1),
        );
        t.add_exact(
            "api.default.dc1.internal.td.consul".into(),
            "api".into(),
            eps(2),
        );
        t.add_wildcard("dc2.internal.td.consul".into(), "dc2".into(), eps(3));
        t.add_wildcard(
            "ap1.dc2.internal-v1.td.consul".into(),
            "dc2/ap1".into(),
            eps(4),
        );
        t.add_exact(
            "db.default.dc1.internal.td.consul".into(),
            "db again".into(),
            eps(5),
        );
        t.add_exact(
            "aaa.default.dc1.internal.td.consul".into(),
            "aaa".into(),
            eps(6),
        );
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
            let got = t.lookup(sni).map(|(r, k)| (r.target.as_str(), k));
            assert_eq!(got, *want, "{sni}");
        }
        assert!(t.lookup(&"a".repeat(254)).is_none());
    }
}
