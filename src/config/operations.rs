//! `[admin]`, `[shutdown]` and `[log]`: how the process is operated, as opposed to what it
//! serves. None of them is needed; each has the default an edge host wants.

use std::net::SocketAddr;
use std::time::Duration;

use super::fields::Fields;
use crate::log::Level;

/// How the process is run: the admin endpoint, the drain grace period, the log level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operations {
    /// `[admin] listen`: `/ready`, `/metrics`, `/config`. No section, no listener.
    pub admin: Option<SocketAddr>,
    /// `[shutdown] drain_timeout_ms`: how long live connections may finish after SIGTERM.
    pub drain_timeout: Duration,
    /// `[log] level`; `SIDEGATE_LOG` in the environment wins over it.
    pub log_level: Option<Level>,
}

impl Operations {
    /// Loopback only: the endpoint tells whoever asks how the mesh is laid out.
    pub const DEFAULT_ADMIN_LISTEN: &'static str = "127.0.0.1:19100";
    /// Below systemd's default stop timeout (90 s) and the unit's `TimeoutStopSec`.
    pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;
}

impl Default for Operations {
    fn default() -> Self {
        Operations {
            admin: None,
            drain_timeout: Duration::from_millis(Self::DEFAULT_DRAIN_TIMEOUT_MS),
            log_level: None,
        }
    }
}

pub fn operations(root: &Fields<'_>) -> Option<Operations> {
    let defaults = Operations::default();
    let admin = match root.table("admin") {
        Some(t) => {
            let listen = t.str("listen").unwrap_or(Operations::DEFAULT_ADMIN_LISTEN);
            let parsed = listen.parse::<SocketAddr>();
            if parsed.is_err() {
                t.error(
                    "listen",
                    format!("{listen:?} is not an IP address with a port, e.g. 127.0.0.1:19100"),
                );
            }
            t.finish();
            Some(Some(parsed.ok()?))
        }
        None => Some(None),
    };
    let drain_timeout = match root.table("shutdown") {
        Some(t) => {
            // 0 is allowed: cut every connection at once, as some operators want on shutdown.
            let ms = t
                .int("drain_timeout_ms", 0, 86_400_000)
                .map_or(defaults.drain_timeout, |ms| {
                    Duration::from_millis(ms.unsigned_abs())
                });
            t.finish();
            ms
        }
        None => defaults.drain_timeout,
    };
    let log_level = match root.table("log") {
        Some(t) => {
            let level = t.str("level").map(|l| {
                let parsed = Level::parse(l);
                if parsed.is_none() {
                    t.error(
                        "level",
                        format!("{l:?} is not one of \"error\", \"warn\", \"info\", \"debug\""),
                    );
                }
                parsed
            });
            t.finish();
            match level {
                Some(None) => return None,
                Some(l) => l,
                None => None,
            }
        }
        None => None,
    };
    Some(Operations {
        admin: admin?,
        drain_timeout,
        log_level,
    })
}
