//! `[admin]`, `[shutdown]`, `[log]` and `[runtime]`: how the process is operated, as opposed
//! to what it serves. None of them is needed; each has the default an edge host wants.

use std::net::SocketAddr;
use std::time::Duration;

use super::fields::Fields;
use crate::log::{Format, Level};

/// How the process is run: the admin endpoint, the drain grace period, the log level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operations {
    /// `[admin] listen`: `/ready`, `/metrics`, `/config`. No section, no listener.
    pub admin: Option<SocketAddr>,
    /// `[shutdown] drain_timeout_ms`: how long live connections may finish after SIGTERM.
    pub drain_timeout: Duration,
    /// `[log] level`; `SIDEGATE_LOG` in the environment wins over it.
    pub log_level: Option<Level>,
    /// `[log] format`: text (the default) or json.
    pub log_format: Format,
    /// `[runtime] threads`: how many event loops serve connections. `None`: as many as the
    /// process may use CPUs, up to 4 (`proxy::default_threads`, read when serving starts).
    pub threads: Option<usize>,
}

impl Operations {
    /// Loopback only: the endpoint tells whoever asks how the mesh is laid out.
    pub const DEFAULT_ADMIN_LISTEN: &'static str = "127.0.0.1:19100";
    /// Below systemd's default stop timeout (90 s) and the unit's `TimeoutStopSec`.
    pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;
    /// More loops than this is a typing mistake on any board sidegate runs on.
    pub const MAX_THREADS: i64 = 64;
}

impl Default for Operations {
    fn default() -> Self {
        Operations {
            admin: None,
            drain_timeout: Duration::from_millis(Self::DEFAULT_DRAIN_TIMEOUT_MS),
            log_level: None,
            log_format: Format::Text,
            threads: None,
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
            // Invalid (reported): `None`, read after every other section was.
            parsed.ok().map(Some)
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
    let mut log_format = Format::Text;
    let log_level = match root.table("log") {
        Some(t) => {
            if let Some(f) = t.str("format") {
                match Format::parse(f) {
                    Some(format) => log_format = format,
                    None => t.error("format", format!("{f:?} is not \"text\" or \"json\"")),
                }
            }
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
            level.flatten()
        }
        None => None,
    };
    let threads = root.table("runtime").and_then(|t| {
        let n = t.int("threads", 1, Operations::MAX_THREADS);
        t.finish();
        n.and_then(|n| usize::try_from(n).ok())
    });
    Some(Operations {
        admin: admin?,
        drain_timeout,
        log_level,
        log_format,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str = "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"td.consul\"\n[gateway]\nlisten = [\"127.0.0.1:0\"]\n";

    #[test]
    fn defaults_and_values() {
        let ops = |extra: &str| {
            crate::config::parse(&format!("{GATEWAY}{extra}"))
                .unwrap()
                .operations
        };
        assert_eq!(ops(""), Operations::default());
        assert_eq!(ops("").drain_timeout, Duration::from_secs(30));
        let set = ops("[admin]\n[shutdown]\ndrain_timeout_ms = 0\n[log]\nlevel = \"DEBUG\"\n");
        assert_eq!(set.admin, Some("127.0.0.1:19100".parse().unwrap()));
        assert_eq!(set.drain_timeout, Duration::ZERO);
        assert_eq!(set.log_level, Some(Level::Debug));
        assert_eq!(set.log_format, Format::Text);
        assert_eq!(ops("[log]\nformat = \"json\"\n").log_format, Format::Json);
        let admin = ops("[admin]\nlisten = \"[::1]:9100\"\n");
        assert_eq!(admin.admin, Some("[::1]:9100".parse().unwrap()));
        assert_eq!(ops("[runtime]\nthreads = 2\n").threads, Some(2));
        assert_eq!(ops("[runtime]\n").threads, None);
        assert_eq!(ops("[runtime]\nthreads = 64\n").threads, Some(64));
        let too_many = crate::config::parse(&format!("{GATEWAY}[runtime]\nthreads = 65\n"));
        let errors: Vec<String> = too_many
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors, ["runtime.threads: 65 is out of range (1 to 64)"]);
    }

    #[test]
    fn every_error_has_its_key_path() {
        let text = format!(
            "{GATEWAY}[admin]\nlisten = \"localhost:9100\"\nlisen = 1\n[shutdown]\ndrain_timeout_ms = -1\n[log]\nlevel = \"loud\"\nformat = \"xml\"\n[runtime]\nthreads = 0\n"
        );
        let errors: Vec<String> = crate::config::parse(&text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        for want in [
            "admin.listen: \"localhost:9100\" is not an IP address with a port",
            "admin.lisen: unknown key (did you mean `listen`?)",
            "shutdown.drain_timeout_ms: -1 is out of range (0 to 86400000)",
            "log.level: \"loud\" is not one of",
            "log.format: \"xml\" is not \"text\" or \"json\"",
            "runtime.threads: 0 is out of range (1 to 64)",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "want {want:?} in {errors:#?}"
            );
        }
    }
}
