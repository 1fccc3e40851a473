//! Upstream listeners of the plan in service that could not be bound (a port another process
//! holds, a socket path in a directory that does not exist yet). One of them must not take
//! the sidecar down: the rest is served, the failure is reported (log, `/ready`'s body,
//! `/config`, `/metrics`) and binding is retried until it succeeds or the plan drops it.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{BindError, ListenerKey};

/// How often binding the listeners of the plan in service that failed is tried again.
pub const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct BindFailures {
    by_listener: Mutex<HashMap<ListenerKey, Failure>>,
}

#[derive(Debug, Default)]
struct Failure {
    /// Failed attempts since start (a counter: never goes down).
    total: u64,
    /// Why the listener is not bound now; `None` once bound or no longer in the plan.
    now: Option<String>,
}

/// A listener not bound now, as reported (in `/config` too).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unbound {
    pub listener: String,
    pub error: String,
}

impl BindFailures {
    fn lock(&self) -> MutexGuard<'_, HashMap<ListenerKey, Failure>> {
        self.by_listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a failed attempt; true when it is the listener's first since it was last
    /// bound (worth an error line; repeated failures are counted, not logged again).
    pub(super) fn failed(&self, key: &ListenerKey, error: &BindError) -> bool {
        let mut all = self.lock();
        let failure = all.entry(key.clone()).or_default();
        failure.total += 1;
        let first = failure.now.is_none();
        failure.now = Some(error.to_string());
        first
    }

    /// The listener is bound (or no longer wanted); true when it was failing.
    pub(super) fn cleared(&self, key: &ListenerKey) -> bool {
        self.lock()
            .get_mut(key)
            .is_some_and(|f| f.now.take().is_some())
    }

    /// The listeners to try again.
    pub(super) fn pending(&self) -> Vec<ListenerKey> {
        let all = self.lock();
        all.iter()
            .filter(|(_, f)| f.now.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn any(&self) -> bool {
        self.lock().values().any(|f| f.now.is_some())
    }

    /// What is not bound now, by listener name.
    pub fn unbound(&self) -> Vec<Unbound> {
        let all = self.lock();
        let mut list: Vec<Unbound> = all
            .iter()
            .filter_map(|(k, f)| {
                Some(Unbound {
                    listener: k.to_string(),
                    error: f.now.clone()?,
                })
            })
            .collect();
        list.sort_by(|a, b| a.listener.cmp(&b.listener));
        list
    }

    /// `sidegate_listener_bind_failures_total{listener}` and `sidegate_listeners_unbound`.
    pub fn render_prometheus(&self, out: &mut String) {
        let all = self.lock();
        let mut rows: Vec<(String, u64)> =
            all.iter().map(|(k, f)| (k.to_string(), f.total)).collect();
        rows.sort();
        let unbound = all.values().filter(|f| f.now.is_some()).count();
        let _ = writeln!(
            out,
            "# HELP sidegate_listener_bind_failures_total Failed attempts to bind a listener of the plan in service (retried every {} s)\n\
             # TYPE sidegate_listener_bind_failures_total counter",
            RETRY_EVERY.as_secs()
        );
        for (listener, total) in rows {
            let _ = writeln!(
                out,
                "sidegate_listener_bind_failures_total{{listener=\"{}\"}} {total}",
                crate::metrics::LabelValue(&listener)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sidegate_listeners_unbound Listeners of the plan in service not bound now\n\
             # TYPE sidegate_listeners_unbound gauge\n\
             sidegate_listeners_unbound {unbound}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::BindKey;

    #[test]
    fn failures_are_counted_reported_while_unbound_and_escaped() {
        let f = BindFailures::default();
        let key = ListenerKey::Upstream(BindKey::Unix("/run/a\"b".into()));
        let error = |why: &str| BindError {
            listener: key.to_string(),
            addr: None,
            error: std::io::Error::other(why.to_owned()),
        };
        assert!(f.failed(&key, &error("taken")));
        assert!(!f.failed(&key, &error("still taken")), "logged once");
        assert!(f.any());
        assert_eq!(f.pending(), std::slice::from_ref(&key));
        assert_eq!(f.unbound()[0].error, error("still taken").to_string());
        let mut text = String::new();
        f.render_prometheus(&mut text);
        assert!(
            text.contains(
                "sidegate_listener_bind_failures_total{listener=\"upstream unix:/run/a\\\"b\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("sidegate_listeners_unbound 1"), "{text}");

        assert!(f.cleared(&key));
        assert!(!f.cleared(&key));
        assert!(!f.any() && f.unbound().is_empty());
        let mut text = String::new();
        f.render_prometheus(&mut text);
        assert!(text.contains("} 2\n") && text.contains("sidegate_listeners_unbound 0"));
    }
}
