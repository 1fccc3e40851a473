//! A plan as the event loop serves it: the plan itself (pure data, shared with `/config`)
//! and what only a running process attaches to it, by the positions the plan gives.
//!
//! - Counters per gateway route and per upstream: looked up in the metrics registry by their
//!   `/metrics` labels when a plan is put in service, so the next plan with the same route or
//!   upstream carries on counting where this one stopped (a reload resets nothing), and
//!   labels no plan uses any more are dropped once their last connection ends.
//! - The rustls configurations, built from the plan's identity: one client configuration per
//!   upstream (each requires a different server identity) and one for the inbound listener.

use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};

use crate::mesh::snapshot::Splice;
use crate::mesh::Plan;
use crate::metrics::{ConnStats, Metrics};
use crate::tls::configs::{client_config, server_config};

pub struct Serving {
    pub plan: Arc<Plan>,
    /// In the order of the gateway's `routes()`.
    routes: Box<[Arc<ConnStats>]>,
    /// In the order of the plan's `upstreams`.
    upstreams: Box<[UpstreamRuntime]>,
    /// `None` without an inbound listener, or when its configuration could not be built
    /// (logged): the listener then closes what it accepts.
    inbound_tls: Option<Arc<ServerConfig>>,
    /// The gateway's `splice` as this process runs it (`gateway_splice`).
    pub gateway_splice: Splice,
}

/// One upstream's share of the runtime.
pub struct UpstreamRuntime {
    pub stats: Arc<ConnStats>,
    /// mTLS to each target of this upstream's chain, in its order: our leaf, and exactly the
    /// target's `spiffe_id` required of the server. `None` without an identity, or when it
    /// could not be built (logged).
    targets_tls: Box<[Option<Arc<ClientConfig>>]>,
}

impl UpstreamRuntime {
    /// The client configuration for target `index` of the chain.
    pub fn tls(&self, index: usize) -> Option<Arc<ClientConfig>> {
        self.targets_tls.get(index).cloned().flatten()
    }
}

impl Serving {
    /// Attaches counters and TLS to `plan`, run on `loops` event loops. Called off the data
    /// path, once per plan.
    pub fn new(plan: Plan, metrics: &Metrics, loops: usize) -> Serving {
        let routes = plan
            .gateway
            .iter()
            .flat_map(|g| g.routes.routes())
            .map(|r| metrics.routes.get(&[r.pattern]))
            .collect();
        let upstreams = plan
            .upstreams
            .iter()
            .map(|u| UpstreamRuntime {
                stats: metrics.upstreams.get(&[&u.destination_name, &u.bind]),
                targets_tls: u
                    .targets
                    .iter()
                    .map(|t| {
                        plan.identity.as_ref().and_then(|id| {
                            client_config(id, &t.spiffe_id)
                                .map_err(|e| {
                                    crate::warn!(
                                        "upstream {} target {}: cannot build its TLS configuration: {e}",
                                        u.destination_name,
                                        t.sni
                                    );
                                })
                                .ok()
                        })
                    })
                    .collect(),
            })
            .collect();
        let inbound_tls = plan
            .inbound
            .as_ref()
            .and(plan.identity.as_ref())
            .and_then(|id| {
                server_config(id)
                    .map_err(|e| {
                        crate::warn!("public_listener: cannot build its TLS configuration: {e}");
                    })
                    .ok()
            });
        // The plan being replaced still holds its counters; they go at a later swap if no
        // plan takes them up again.
        metrics.prune();
        let gateway_splice = gateway_splice(&plan, loops);
        Serving {
            plan: Arc::new(plan),
            routes,
            upstreams,
            inbound_tls,
            gateway_splice,
        }
    }

    /// The counters of the gateway route at `index` in `routes()`.
    pub fn routes(&self) -> &[Arc<ConnStats>] {
        &self.routes
    }

    pub fn upstream(&self, index: usize) -> Option<&UpstreamRuntime> {
        self.upstreams.get(index)
    }

    pub fn inbound_tls(&self) -> Option<&Arc<ServerConfig>> {
        self.inbound_tls.as_ref()
    }
}

/// `[gateway] splice` as `loops` event loops run it. `auto` copies bytes from this host only
/// when there are several loops. With one, that loop carries every byte and a copy doubles
/// its work per byte: 4 streams at one loop moved ×1.12 as much spliced as copied (×1.04 with
/// everything on one CPU), while at two loops on two CPUs the copy moved ×1.12 of the splice.
fn gateway_splice(plan: &Plan, loops: usize) -> Splice {
    match plan.gateway.as_ref().map(|g| g.settings.splice) {
        Some(Splice::Auto) if loops <= 1 => Splice::Always,
        Some(chosen) => chosen,
        None => Splice::Auto,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway_of(services: &[&str]) -> Plan {
        let names: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
        crate::mesh::plan(&crate::mesh::snapshot::testing::gateway(
            "td.consul",
            &names,
            1,
        ))
    }

    /// `auto` splices everything on one loop; several loops, or a setting other than `auto`,
    /// leave it as configured.
    #[test]
    fn auto_splice_resolves_by_the_number_of_loops() {
        let metrics = Metrics::default();
        let with = |splice, loops| {
            let mut snapshot = crate::mesh::snapshot::testing::gateway("td.consul", &[], 1);
            if let Some(g) = snapshot.gateway.as_mut() {
                g.splice = splice;
            }
            Serving::new(crate::mesh::plan(&snapshot), &metrics, loops).gateway_splice
        };
        assert_eq!(with(Splice::Auto, 1), Splice::Always);
        assert_eq!(with(Splice::Auto, 2), Splice::Auto);
        assert_eq!(with(Splice::Never, 1), Splice::Never);
        assert_eq!(with(Splice::Always, 4), Splice::Always);
    }

    /// A reload builds a new plan; the counters of a route it keeps carry on, and those of a
    /// route it drops go once nothing holds them.
    #[test]
    fn route_counters_survive_a_new_plan_and_go_with_their_route() {
        let metrics = Metrics::default();
        let first = Serving::new(gateway_of(&["api", "db"]), &metrics, 1);
        first.routes()[1].opened.add(7);
        let second = Serving::new(gateway_of(&["db"]), &metrics, 1);
        assert_eq!(second.routes().len(), 1);
        assert_eq!(
            second.routes()[0].opened.get(),
            7,
            "db's counter carried on"
        );
        assert_eq!(
            metrics.routes.entries().len(),
            2,
            "api still held by the old plan"
        );
        drop(first);
        let _third = Serving::new(gateway_of(&["db"]), &metrics, 1);
        let labels: Vec<_> = metrics.routes.entries().into_iter().map(|e| e.0).collect();
        assert_eq!(
            labels.len(),
            1,
            "api's counter went with its route: {labels:?}"
        );
        assert!(labels[0][0].starts_with("db."), "{labels:?}");
    }
}
