//! How fresh the Consul-sourced state is, for readiness, metrics and logs: whether what is
//! served was confirmed by the agent in this run, when it last was, and how many requests
//! failed. Plain atomics: the admin endpoint reads them from another thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct Status {
    stale: AtomicBool,
    has_snapshot: AtomicBool,
    last_success_unix: AtomicU64,
    watch_errors: AtomicU64,
    snapshots: AtomicU64,
    state_write_errors: AtomicU64,
    authorize_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Status {
    /// True while what is served was not confirmed by the agent in this run: restored from
    /// the last-known-good file, or kept because the agent stopped answering.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// A complete snapshot (fresh or restored) has been handed to the data path.
    pub fn has_snapshot(&self) -> bool {
        self.has_snapshot.load(Ordering::Relaxed)
    }

    /// Seconds since 1970 of the last complete answer from the agent; 0 = never in this run.
    pub fn last_success_unix(&self) -> u64 {
        self.last_success_unix.load(Ordering::Relaxed)
    }

    /// Failed requests to the agent (any watch), since start.
    pub fn watch_errors(&self) -> u64 {
        self.watch_errors.load(Ordering::Relaxed)
    }

    /// Snapshots handed to the data path, since start.
    pub fn snapshots(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    pub fn state_write_errors(&self) -> u64 {
        self.state_write_errors.load(Ordering::Relaxed)
    }

    /// Authorization requests that got no answer from the agent.
    pub fn authorize_errors(&self) -> u64 {
        self.authorize_errors.load(Ordering::Relaxed)
    }

    /// The last error seen, with its likely cause (never a token).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    pub(crate) fn sent(&self, stale: bool) {
        self.stale.store(stale, Ordering::Relaxed);
        self.has_snapshot.store(true, Ordering::Relaxed);
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        if !stale {
            self.last_success_unix.store(now_unix(), Ordering::Relaxed);
        }
    }

    pub(crate) fn set_stale(&self, stale: bool) {
        self.stale.store(stale, Ordering::Relaxed);
    }

    pub(crate) fn confirmed(&self) {
        self.last_success_unix.store(now_unix(), Ordering::Relaxed);
    }

    pub(crate) fn watch_error(&self, shown: String) {
        self.watch_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(shown);
        }
    }

    pub(crate) fn state_write_error(&self) {
        self.state_write_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn authorize_error(&self) {
        self.authorize_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in Prometheus text format, for the metrics endpoint.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let rows: [(&str, &str, &str, u64); 7] = [
            (
                "sidegate_consul_stale",
                "gauge",
                "1 while serving state the agent has not confirmed in this run",
                u64::from(self.is_stale()),
            ),
            (
                "sidegate_consul_last_success_timestamp_seconds",
                "gauge",
                "unix time of the last complete answer from the agent; 0 = none in this run",
                self.last_success_unix(),
            ),
            // The old name said "duration" for a timestamp. Kept for one release so that
            // dashboards and alerts can move; it goes in the next one.
            (
                "sidegate_consul_last_success_seconds",
                "gauge",
                "DEPRECATED, removed in the next release: use sidegate_consul_last_success_timestamp_seconds (same value)",
                self.last_success_unix(),
            ),
            (
                "sidegate_consul_watch_errors_total",
                "counter",
                "failed requests to the Consul agent",
                self.watch_errors(),
            ),
            (
                "sidegate_consul_snapshots_total",
                "counter",
                "snapshots applied from the Consul source",
                self.snapshots(),
            ),
            (
                "sidegate_consul_state_write_errors_total",
                "counter",
                "failed writes of the last-known-good state",
                self.state_write_errors(),
            ),
            (
                "sidegate_consul_authorize_errors_total",
                "counter",
                "authorization requests the agent did not answer",
                self.authorize_errors(),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_until_confirmed_and_rendered() {
        let s = Status::default();
        assert!(!s.has_snapshot() && !s.is_stale());
        s.sent(true);
        assert!(s.has_snapshot() && s.is_stale());
        assert_eq!(s.last_success_unix(), 0, "a restored state is no success");
        s.watch_error("GET /v1/x: refused".into());
        s.sent(false);
        assert!(!s.is_stale());
        assert!(s.last_success_unix() > 0);
        assert_eq!((s.snapshots(), s.watch_errors()), (2, 1));
        assert_eq!(s.last_error().as_deref(), Some("GET /v1/x: refused"));
        let mut text = String::new();
        s.render_prometheus(&mut text);
        assert!(text.contains("sidegate_consul_stale 0\n"), "{text}");
        let now = s.last_success_unix();
        assert!(text.contains(&format!(
            "\nsidegate_consul_last_success_timestamp_seconds {now}\n"
        )));
        assert!(text.contains(&format!("\nsidegate_consul_last_success_seconds {now}\n")));
        assert!(text.contains("# HELP sidegate_consul_last_success_seconds DEPRECATED"));
        assert!(
            text.contains("sidegate_consul_watch_errors_total 1\n"),
            "{text}"
        );
    }
}
