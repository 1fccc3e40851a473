//! sidegate started in-process from configuration text, and what its counters say.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Starts sidegate in-process from configuration text.
pub fn start(toml: &str) -> sidegate::proxy::Running {
    let config = sidegate::config::parse(toml).unwrap_or_else(|e| panic!("config: {e:?}"));
    sidegate::proxy::start(sidegate::mesh::plan(&config.snapshot)).unwrap()
}

/// Connections a gateway has routed.
pub fn routed(gw: &sidegate::proxy::Running) -> u64 {
    gw.metrics
        .gateway
        .hello(sidegate::metrics::HelloOutcome::Routed)
        .get()
}
