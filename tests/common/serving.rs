//! A `sidegate run` child once it serves: what it logged, its admin endpoint's metrics, its
//! memory once settled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use super::{eventually, rss_kib, Child};

impl Child {
    /// Lines logged so far that contain `needle`.
    pub fn logged(&self, needle: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).count()
    }

    /// The address after `prefix` in the first line that has it (e.g. `admin endpoint
    /// listening on `), waiting for that line.
    pub fn logged_addr(&self, prefix: &str) -> SocketAddr {
        eventually(prefix, || self.logged(prefix) > 0);
        let log = self.log.lock().unwrap();
        let line = log.iter().find(|l| l.contains(prefix)).unwrap();
        let rest = line.split(prefix).nth(1).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }
}

/// What a serving process logs last: the admin endpoint is bound after every listener.
pub const ADMIN_LISTENING: &str = "admin endpoint listening on ";

impl Child {
    /// Waits until the process serves, and returns its admin endpoint's address (its config
    /// needs `[admin]`); `None` when it exited first (e.g. a port it names was taken).
    pub fn serving(&mut self) -> Option<SocketAddr> {
        eventually("sidegate to serve (or exit)", || {
            if self.logged(ADMIN_LISTENING) > 0 {
                Ok(Some(self.logged_addr(ADMIN_LISTENING)))
            } else if self.child.try_wait().unwrap().is_some() {
                Ok(None)
            } else {
                Err(self.log.lock().unwrap().clone())
            }
        })
    }
}

/// `rss_kib` once it stops falling: memory a process frees just after a burst (buffers of
/// connections still in flight when the burst's last one was seen) is not its steady
/// state. Readings 250 ms apart, for at most 5 s.
#[allow(
    dead_code,
    reason = "the proxy tests measure memory; the operations tests only serving and logged"
)]
pub fn settled_rss_kib(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let now = rss_kib(pid);
        if now >= last {
            return last;
        }
        last = now;
    }
    last
}
