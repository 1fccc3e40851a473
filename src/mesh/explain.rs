//! `sidegate explain --sni NAME`: which gateway route a name takes and why, or why none does.
//! Debugging SNI routing through Envoy is what Consul users lose days on (consul#12623), so a
//! refusal says what to change.

use std::fmt::Write;

use super::plan::GatewayPlan;
use super::routes::{MatchKind, RouteKind};
use super::snapshot::Here;
use super::Place;

/// No route takes the name; the text says why and what would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoute(pub String);

impl std::fmt::Display for NoRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoRoute {}

/// The answer: routed (with the text) or not (with the reason).
pub fn explain(gw: &GatewayPlan, here: &Here, sni: &str) -> Result<String, NoRoute> {
    let Some((route, how)) = gw.routes.lookup(sni) else {
        return Err(NoRoute(why_not(gw, here, sni)));
    };
    let mut out = String::new();
    let why = match (how, route.kind) {
        (MatchKind::Exact | MatchKind::Subset | MatchKind::Wildcard, RouteKind::Server) => {
            "a Consul server's WAN-federation name: forwarded as it is, still encrypted (the servers' own TLS)".to_owned()
        }
        (MatchKind::Exact, _) => match &route.subset {
            Some(subset) => format!(
                "exact name of subset {subset:?} of a service in this gateway's own place (its resolver's filter selects the instances)"
            ),
            None => "exact name of a service in this gateway's own place".to_owned(),
        },
        (MatchKind::Subset, _) => format!(
            "a service of this gateway's own place with the subset label {:?} (the subsets are not known here: the destination picks the subset)",
            sni.split('.').next().unwrap_or_default()
        ),
        (MatchKind::Wildcard, RouteKind::Gateway | RouteKind::Service) => {
            "another place's name: forwarded to that place's gateways, still encrypted".to_owned()
        }
    };
    let dial: Vec<String> = route
        .endpoints
        .as_slice()
        .iter()
        .map(ToString::to_string)
        .collect();
    let _ = writeln!(out, "sni:     {sni}");
    let _ = writeln!(out, "route:   {} ({:?})", route.pattern, route.kind);
    let _ = writeln!(out, "why:     {why}");
    let _ = writeln!(out, "target:  {}", route.target);
    let _ = write!(
        out,
        "dial:    {}",
        if dial.is_empty() {
            "(none: connections are refused)".into()
        } else {
            dial.join(", ")
        }
    );
    Ok(out)
}

fn why_not(gw: &GatewayPlan, here: &Here, sni: &str) -> String {
    let name = sni.to_ascii_lowercase();
    let td = &here.trust_domain;
    let head = format!("no route for {sni:?}");
    if let Some(why) = why_not_server(gw, here, &name) {
        return format!("{head}: {why}");
    }
    if gw.routes.is_unknown_subset(&name) {
        let (subset, service) = name.split_once('.').unwrap_or_default();
        return format!(
            "{head}: {service} is a service of this gateway's own place, but no service_resolvers entry defines its subset {subset:?} (Envoy has no cluster for it either; add it to the resolver's `subsets`)"
        );
    }
    let Some(rest) = name
        .strip_suffix(td.as_str())
        .and_then(|r| r.strip_suffix('.'))
    else {
        return format!(
            "{head}: it does not end in this mesh's trust domain {td}, so it is not a service or gateway name of this cluster"
        );
    };
    match place_of(rest) {
        Some(place) if place == here.place => format!(
            "{head}: it names a service in this gateway's own place ({place}), but no such service is in the catalog \
             (known here: {})",
            gw.routes.routes().filter(|r| r.kind == RouteKind::Service).count()
        ),
        Some(place) => format!(
            "{head}: it names {place}, but no gateways with `wan` addresses are known for it \
             (add a [[catalog.gateways]] entry for that place)"
        ),
        None => format!("{head}: it is not in Consul's `<service>.<namespace>[.<partition>].<dc>.internal[-v1].<td>` form"),
    }
}

/// A Consul server name (`[<node>.]server.<dc>.<domain>`) with no route: why.
fn why_not_server(gw: &GatewayPlan, here: &Here, name: &str) -> Option<String> {
    let servers: Vec<&str> = gw
        .routes
        .routes()
        .filter(|r| r.kind == RouteKind::Server)
        .map(|r| r.pattern)
        .collect();
    // A service of that name (`server.default.dc1.internal.<td>`) is no server name.
    if name.ends_with(here.trust_domain.as_str()) {
        return None;
    }
    let labels: Vec<&str> = name.split('.').collect();
    let at = labels.iter().position(|l| *l == "server")?;
    // `server.<dc>.<domain>`: at least the datacenter and one domain label follow.
    if labels.len() < at + 3 || at > 1 {
        return None;
    }
    let dc = labels[at + 1];
    Some(if servers.is_empty() {
        "it looks like a Consul server's WAN-federation name, and this gateway routes none: \
         register it with meta consul-wan-federation = \"1\" (or set [catalog.wan_federation] in a file)"
            .to_owned()
    } else if dc == here.place.datacenter {
        format!(
            "it names a Consul server of this datacenter ({dc}) that is not known here (known: {})",
            servers.join(", ")
        )
    } else {
        format!(
            "it names Consul servers of {dc}, but no gateways with `wan` addresses are known for that datacenter, \
             or the name is not in this gateway's domain (routed: {})",
            servers.join(", ")
        )
    })
}

/// The place a Consul internal SNI (trust domain already removed) points at: `...<dc>.internal`
/// is the default partition, `...<partition>.<dc>.internal-v1` another one.
fn place_of(rest: &str) -> Option<Place> {
    let mut labels = rest.rsplit('.');
    match labels.next()? {
        "internal" => Some(Place::new(labels.next()?, "")),
        "internal-v1" => {
            let dc = labels.next()?;
            Some(Place::new(dc, labels.next()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_of_names() {
        assert_eq!(
            place_of("db.default.dc1.internal"),
            Some(Place::new("dc1", "default"))
        );
        assert_eq!(
            place_of("db.default.ap1.dc2.internal-v1"),
            Some(Place::new("dc2", "ap1"))
        );
        assert_eq!(place_of("q.default.dc1.query"), None);
        assert_eq!(place_of("internal"), None);
    }
}
