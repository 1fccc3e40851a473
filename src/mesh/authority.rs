//! Who authorizes inbound callers when it is not the file's `[sidecar.intentions]`: an
//! authority outside the process (the Consul agent's intentions). The inbound pipeline asks
//! it through `proxy::authorize`, off the event loop.

use std::fmt;
use std::sync::Arc;

use super::sidecar::Action;

/// An answer: allow or deny, and why (for the log line of the connection).
pub type Verdict = (Action, String);

pub trait Authority: Send + Sync {
    /// A recent answer for this caller (its SPIFFE ID), without any I/O.
    fn cached(&self, caller: &str) -> Option<Verdict>;
    /// Asks, blocking; runs on a blocking thread, never on the event loop. `serial` is the
    /// caller certificate's serial number, which the authority may want to see.
    fn ask(&self, caller: &str, serial: &str) -> Verdict;
    /// What it is, for plans and logs, e.g. `consul agent http://127.0.0.1:8500 for web`.
    fn describe(&self) -> String;
}

/// An authority in a snapshot: compared and shown by what it is, so two snapshots with the
/// same authority are equal.
#[derive(Clone)]
pub struct SharedAuthority(pub Arc<dyn Authority>);

impl PartialEq for SharedAuthority {
    fn eq(&self, other: &Self) -> bool {
        self.0.describe() == other.0.describe()
    }
}

impl Eq for SharedAuthority {}

impl fmt::Debug for SharedAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Authority({})", self.0.describe())
    }
}

impl serde::Serialize for SharedAuthority {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.describe())
    }
}
