//! Bounded polling: how tests wait for what happens on another thread or in another process.

use std::time::Duration;

use super::IO_TIMEOUT;

/// Bounded polling, within `IO_TIMEOUT`: see `eventually_within`. For what happens on another
/// thread or in another process after the test saw its cause, e.g. counters updated by the
/// event loop after the client already saw the close.
pub fn eventually<P: Polled>(what: &str, poll: impl FnMut() -> P) -> P::Done {
    eventually_within(IO_TIMEOUT, what, poll)
}

/// The one way tests wait for something: calls `poll` until it reports done, and returns what
/// it found; after `limit`, panics naming `what` and the last thing `poll` observed. `poll`
/// returns a `bool`, or a `Result` whose `Err` is what it saw instead (shown on failure).
pub fn eventually_within<P: Polled>(
    limit: Duration,
    what: &str,
    poll: impl FnMut() -> P,
) -> P::Done {
    poll_within(limit, poll).unwrap_or_else(|seen| {
        panic!("timed out after {limit:?} waiting for {what}; last observed: {seen:#?}")
    })
}

/// `eventually_within` for a caller that handles the timeout itself (a retry, its own
/// message): `Err` with what `poll` last observed once `limit` has passed.
///
/// Polls at once, then after 5 ms, doubling to at most 50 ms: quick for what is nearly
/// there, and no busy loop on two cores for what takes seconds (a Consul agent, a scrape
/// through Python). The last poll is at the deadline.
pub fn poll_within<P: Polled>(
    limit: Duration,
    mut poll: impl FnMut() -> P,
) -> Result<P::Done, P::Seen> {
    let deadline = std::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        let seen = match poll().done() {
            Ok(done) => return Ok(done),
            Err(seen) => seen,
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(seen);
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// What one poll of `eventually` observed: done (with a value), or what it saw instead.
pub trait Polled {
    type Done;
    type Seen: std::fmt::Debug;
    fn done(self) -> Result<Self::Done, Self::Seen>;
}

/// A condition: done when it holds.
impl Polled for bool {
    type Done = ();
    type Seen = bool;
    fn done(self) -> Result<(), bool> {
        if self {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// `Ok(value)` when done; `Err(observed)` not yet, with what was observed instead.
impl<T, E: std::fmt::Debug> Polled for Result<T, E> {
    type Done = T;
    type Seen = E;
    fn done(self) -> Result<T, E> {
        self
    }
}
