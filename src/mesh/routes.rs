//! The gateway's route table: SNI → endpoints, matched the way Consul's Envoy gateway does.
//!
//! Order (as Consul's Envoy mesh gateway matches; `config/README.md`, "How the gateway routes"):
//! the exact SNI of a service in the gateway's own (datacenter, partition), or of one of its
//! resolver's subsets, or a Consul server's WAN-federation name; then the longest
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
    /// Consul servers' WAN-federation names (`<node>.server.<dc>.<domain>`): this
    /// datacenter's servers, or another datacenter's gateways.
    Server,
}

#[derive(Debug, Serialize)]
pub struct Route {
    /// As `check --json` shows it: the exact name, or `*.<suffix>`.
    #[serde(rename = "match")]
    pub pattern: String,
    pub kind: RouteKind,
    /// The resolver subset this route serves (a service route for `<subset>.<service SNI>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
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

#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact: HashMap<String, usize>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, usize>,
    /// Whether a subset label no route names is passed to the service (the destination
    /// picks the subset) rather than refused. Only while the resolvers are not known (the
    /// Consul source, until it takes them from the agent): Envoy refuses an undefined subset.
    pub pass_any_subset: bool,
}

impl RouteTable {
    /// Adds a service route for an exact (lower-case) SNI, of one subset or of the plain name.
    pub fn add_exact(
        &mut self,
        sni: String,
        target: String,
        endpoints: EndpointSet,
        subset: Option<String>,
    ) {
        self.exact.insert(sni.clone(), self.routes.len());
        self.routes.push(Route {
            pattern: sni,
            kind: RouteKind::Service,
            subset,
            target,
            endpoints,
        });
    }

    /// Adds a gateway route for every name ending in `.<suffix>`.
    pub fn add_wildcard(&mut self, suffix: String, target: String, endpoints: EndpointSet) {
        let pattern = format!("*.{suffix}");
        self.wildcard.insert(suffix, self.routes.len());
        self.routes.push(Route {
            pattern,
            kind: RouteKind::Gateway,
            subset: None,
            target,
            endpoints,
        });
    }

    /// Adds a Consul server route: the exact `name`, or with `wildcard` every name ending in
    /// `.<name>` (another datacenter's servers, any node). Never matched with a subset label.
    pub fn add_server(
        &mut self,
        name: String,
        wildcard: bool,
        target: String,
        endpoints: EndpointSet,
    ) {
        let pattern = if wildcard {
            format!("*.{name}")
        } else {
            name.clone()
        };
        let index = if wildcard {
            &mut self.wildcard
        } else {
            &mut self.exact
        };
        index.insert(name, self.routes.len());
        self.routes.push(Route {
            pattern,
            kind: RouteKind::Server,
            subset: None,
            target,
            endpoints,
        });
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether `sni` is a subset label on a service this gateway routes, of a subset no
    /// route serves: refused, and counted apart from names that are not ours at all.
    pub fn is_unknown_subset(&self, sni: &str) -> bool {
        let Some(name) = lowercase(sni) else {
            return false;
        };
        !self.pass_any_subset
            && !self.exact.contains_key(name.as_str())
            && name.split_once('.').is_some_and(|(_, rest)| {
                self.exact.get(rest).is_some_and(|&i| {
                    self.routes[i].kind == RouteKind::Service && self.routes[i].subset.is_none()
                })
            })
    }

    pub fn lookup(&self, sni: &str) -> Option<(&Route, MatchKind)> {
        self.find(sni).map(|(i, how)| (&self.routes[i], how))
    }

    /// The matching route's position in `routes()` (the runtime keeps per-route state by it).
    pub fn find(&self, sni: &str) -> Option<(usize, MatchKind)> {
        let name = lowercase(sni)?;
        let name = name.as_str();
        if let Some(&i) = self.exact.get(name) {
            return Some((i, MatchKind::Exact));
        }
        // `<subset>.<service sni>` of a subset no resolver defines: refused, as Envoy has no
        // cluster for it (`unknown_subset`), unless the subsets are not known. Only services
        // have subsets: `<unknown node>.server.<dc>.<domain>` must not reach the exact
        // `server.<dc>.<domain>` route of all servers (Consul closes it).
        if let Some(&i) = name
            .split_once('.')
            .and_then(|(_, rest)| self.exact.get(rest))
            .filter(|&&i| self.routes[i].kind == RouteKind::Service)
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
        let mut t = RouteTable {
            pass_any_subset: true,
            ..RouteTable::default()
        };
        t.add_exact(
            "db.default.dc1.internal.td.consul".into(),
            "db".into(),
            eps(1),
            None,
        );
        t.add_exact(
            "api.default.dc1.internal.td.consul".into(),
            "api".into(),
            eps(2),
            None,
        );
        t.add_wildcard("dc2.internal.td.consul".into(), "dc2".into(), eps(3));
        t.add_wildcard(
            "ap1.dc2.internal-v1.td.consul".into(),
            "dc2/ap1".into(),
            eps(4),
        );
        t.add_server(
            "node1.server.dc1.consul".into(),
            false,
            "node1".into(),
            eps(5),
        );
        t.add_server(
            "server.dc1.consul".into(),
            false,
            "dc1 servers".into(),
            eps(5),
        );
        t.add_server(
            "server.dc2.consul".into(),
            true,
            "dc2 servers".into(),
            eps(3),
        );
        t
    }

    #[test]
    fn matches_in_order() {
        let t = table();
        let cases: &[(&str, Option<(&str, MatchKind)>)] = &[
            (
                "db.default.dc1.internal.td.consul",
                Some(("db", MatchKind::Exact)),
            ),
            (
                "DB.Default.DC1.internal.TD.consul",
                Some(("db", MatchKind::Exact)),
            ),
            (
                "v2.db.default.dc1.internal.td.consul",
                Some(("db", MatchKind::Subset)),
            ),
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
            let got = t.lookup(sni).map(|(r, k)| (r.target.as_str(), k));
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
            "v1.db.default.dc1.internal.td.consul".into(),
            "db v1".into(),
            eps(5),
            Some("v1".into()),
        );
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
        ];
        for (sni, want, unknown_subset) in cases {
            let got = t.lookup(sni).map(|(r, k)| (r.target.as_str(), k));
            assert_eq!(got, *want, "{sni}");
            assert_eq!(t.is_unknown_subset(sni), *unknown_subset, "{sni}");
        }
    }
}
