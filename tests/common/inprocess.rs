//! sidegate started in-process from configuration text, and what its counters say.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Starts sidegate in-process from configuration text, on its `[runtime] threads` or else
/// `SIDEGATE_TEST_THREADS` event loops (`test_threads`).
pub fn start(toml: &str) -> sidegate::proxy::Running {
    let config = sidegate::config::parse(toml).unwrap_or_else(|e| panic!("config: {e:?}"));
    let threads = config
        .operations
        .threads
        .unwrap_or_else(super::test_threads);
    sidegate::proxy::start_on(sidegate::mesh::plan(&config.snapshot), threads).unwrap()
}

/// Connections a gateway has routed.
pub fn routed(gw: &sidegate::proxy::Running) -> u64 {
    gw.metrics
        .gateway
        .hello(sidegate::metrics::HelloOutcome::Routed)
        .get()
}
