//! What most integration tests need: bounded socket timeouts, free ports, scratch
//! directories, sidegate started in-process, and its admin endpoint over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Every socket operation in tests is bounded in time.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The event loops the tests serve on: `SIDEGATE_TEST_THREADS` (so the same tests run with
/// `threads = 1` and `threads = 2`), 1 when unset. An invalid value fails loudly rather than
/// quietly testing the other mode.
pub fn test_threads() -> usize {
    match std::env::var("SIDEGATE_TEST_THREADS") {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .unwrap_or_else(|| panic!("SIDEGATE_TEST_THREADS={v:?} is not 1 to 64")),
        Err(_) => 1,
    }
}

/// A free loopback port for a listener a configuration must name (`local_bind_port` cannot
/// be 0). It comes from below the kernel's ephemeral range (32768 and up by default), so the
/// local end of some test's outgoing connection cannot take it before sidegate binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    loop {
        // Spread by process so that test binaries running at once rarely probe the same ports.
        let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() * 97;
        let port = u16::try_from(FIRST + n % SPAN).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A port on which nothing listens (bound, then released).
pub fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One GET to sidegate's admin endpoint: (status code, body).
pub fn http_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect_timeout(&admin, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: sidegate\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

/// A scratch directory under cargo's target tmp dir, removed when dropped.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
