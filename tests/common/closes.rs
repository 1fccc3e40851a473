//! How a test sees a connection refused or closed by sidegate, and never a timeout instead.

use std::io::{self, Read};

/// The far end closed the connection: a read ends (EOF or reset) without any data. `s` has a
/// read timeout, and a timeout fails: the connection is still open.
#[allow(
    dead_code,
    reason = "the proxy tests use it; the operations tests only closed_by_peer"
)]
pub fn assert_closed(s: &mut impl Read) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("got {n} bytes from a connection that should be closed"),
        Err(e) => assert!(closed_by_peer(&e), "expected a close, got {e}"),
    }
}

/// Whether `e` says the far end closed the connection: a reset, a write or shutdown after it
/// did, or, through a TLS client, a TCP close without close_notify (rustls' `UnexpectedEof`).
/// Never a timeout (`WouldBlock`/`TimedOut`): that is a connection still open.
pub fn closed_by_peer(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}
