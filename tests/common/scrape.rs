//! Reading one sample of a running sidegate's `/metrics`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use super::http_get;

/// One sample of an admin endpoint's `/metrics`, named with its labels as written there,
/// e.g. `sidegate_connections_accepted_total{role="inbound"}`.
pub fn metric(admin: SocketAddr, sample: &str) -> u64 {
    let (code, text) = http_get(admin, "/metrics");
    assert_eq!(code, 200);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"));
    line.parse().unwrap()
}
