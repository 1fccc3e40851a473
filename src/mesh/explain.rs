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
        (MatchKind::Exact, _) => "exact name of a service in this gateway's own place".to_owned(),
        (MatchKind::Subset, _) => format!(
            "a service of this gateway's own place with the subset label {:?} (the destination picks the subset)",
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
