//! How long rebuilding the plan takes for a mesh of 1,000 services, each with a resolver
//! (two subsets with filters, a default subset, failover to another datacenter): the work
//! every reload and every change the Consul source sees costs, off the data path.
//!
//!   cargo run --release --example plan_rebuild [SERVICES]
//!
//! One file has a gateway routing every service (three routes each) and a sidecar with an
//! upstream to each (two targets each). Prints the parse time and the plan time (best,
//! median and 90th percentile of 20 builds: a shared host's noise shows in the spread); the
//! target is at most 50 ms for the plan's median.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write;
use std::time::{Duration, Instant};

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

fn mesh(services: usize) -> String {
    let fx = format!("{}/tests/fixtures/tls", env!("CARGO_MANIFEST_DIR"));
    let mut t = format!(
        "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n\
         [gateway]\nlisten = [\"127.0.0.1:8443\"]\n\
         [tls]\ncert_file = \"{fx}/web.pem\"\nkey_file = \"{fx}/web-key-sec1.pem\"\nca_file = \"{fx}/ca.pem\"\n\
         [sidecar]\nservice = \"web\"\n\
         [config_entries]\nproxy_defaults = {{ mesh_gateway = {{ mode = \"local\" }} }}\n\
         [[catalog.gateways]]\nlan = [\"10.0.0.2:8443\"]\nwan = [\"198.51.100.1:8443\"]\n\
         [[catalog.gateways]]\ndatacenter = \"dc2\"\nwan = [\"203.0.113.10:8443\"]\n"
    );
    for i in 0..services {
        let _ = write!(
            t,
            "[[sidecar.upstreams]]\ndestination_name = \"svc{i}\"\nlocal_bind_port = {}\n\
             [config_entries.service_resolvers.svc{i}]\ndefault_subset = \"v1\"\n\
             subsets = {{ v1 = {{ filter = \"Service.Meta.version == v1 and canary not in Service.Tags\" }}, \
                         v2 = {{ filter = \"Service.Meta.version == v2\", only_passing = true }} }}\n\
             failover = {{ \"*\" = {{ datacenters = [\"dc2\"] }} }}\n\
             [[catalog.services]]\nname = \"svc{i}\"\ninstances = [\n\
               {{ address = \"10.{}.{}.1:21000\", meta = {{ version = \"v1\" }} }},\n\
               {{ address = \"10.{}.{}.2:21000\", meta = {{ version = \"v2\" }}, tags = [\"canary\"], health = \"warning\" }},\n\
               \"10.{}.{}.3:21000\",\n]\n",
            10_000 + i,
            i / 250,
            i % 250,
            i / 250,
            i % 250,
            i / 250,
            i % 250,
        );
    }
    t
}

fn main() {
    let services: usize = std::env::args()
        .nth(1)
        .map_or(1000, |a| a.parse().expect("SERVICES is a number"));
    let text = mesh(services);
    let started = Instant::now();
    let config = sidegate::config::parse(&text).unwrap_or_else(|e| panic!("{e:#?}"));
    let parse = started.elapsed();
    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            let started = Instant::now();
            let plan = sidegate::mesh::plan(&config.snapshot);
            let took = started.elapsed();
            assert_eq!(plan.upstreams.len(), services);
            assert_eq!(plan.upstreams[0].targets.len(), 2);
            let routes = plan.gateway.as_ref().map_or(0, |g| g.routes.routes().len());
            assert_eq!(routes, services * 3 + 1);
            took
        })
        .collect();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // Nearest-rank percentiles of the sorted runs.
    let pct = |p: usize| times[(times.len() * p).div_ceil(100).saturating_sub(1)];
    println!(
        "{services} services with resolvers: parse {:.1} ms; plan of {} runs: best {:.1} ms, median {:.1} ms, p90 {:.1} ms (target: median <= 50 ms)",
        ms(parse),
        times.len(),
        ms(times[0]),
        ms(pct(50)),
        ms(pct(90)),
    );
}
