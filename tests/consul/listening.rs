//! Whether something listens on a loopback port, read from /proc/net/tcp{,6}.

use std::time::Duration;

use crate::common::poll_within;

/// Waits (bounded) until something listens on `port`, read from /proc/net/tcp so that no
/// probe connection reaches the listener (a probe would count as a connection).
pub fn wait_listening(port: u16, within: Duration) -> bool {
    poll_within(within, || listening(port)).is_ok()
}

/// Waits (bounded) until nothing listens on `port` any more.
pub fn wait_not_listening(port: u16, within: Duration) -> bool {
    poll_within(within, || !listening(port)).is_ok()
}

/// Whether something listens on `port` now.
pub fn listening(port: u16) -> bool {
    let needle = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        let table = std::fs::read_to_string(f).unwrap_or_default();
        table.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            cols.len() > 3 && cols[1].ends_with(&needle) && cols[3] == "0A"
        })
    })
}
