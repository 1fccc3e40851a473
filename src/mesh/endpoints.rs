//! The endpoints of one route or upstream with the memory of recent failures, so that a dead
//! instance is skipped for a while instead of costing every new connection a connect timeout.
//!
//! Lives in the plan (built once, shared by every connection that takes this plan), so the
//! marks are atomics and nothing is allocated per connection.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use super::Endpoint;

/// How long an endpoint that just failed is passed over while others remain.
pub const FAILURE_HOLD: Duration = Duration::from_secs(10);
/// Failure memory covers the first 256 endpoints of a route; later ones are tried in turn
/// without it. A fixed bitmap keeps ordering free of allocation.
const HELD_WORDS: usize = 4;

#[derive(Debug)]
pub struct EndpointSet {
    endpoints: Box<[Endpoint]>,
    /// Milliseconds since [`epoch`] at the last failure, plus one (0 = never failed).
    failed_at: Box<[AtomicU64]>,
    next: AtomicUsize,
}

/// One clock origin for every set: a gateway holds a set per route, so a per-set origin
/// would cost each of them 16 bytes for nothing.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl EndpointSet {
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        let failed_at = endpoints.iter().map(|_| AtomicU64::new(0)).collect();
        EndpointSet {
            endpoints: endpoints.into_boxed_slice(),
            failed_at,
            next: AtomicUsize::new(0),
        }
    }

    /// The set as the dialer reads it.
    pub fn view(&self) -> Endpoints<'_> {
        Endpoints {
            endpoints: &self.endpoints,
            failed_at: &self.failed_at,
            next: &self.next,
        }
    }

    pub fn as_slice(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn attempt_order(&self) -> impl Iterator<Item = (usize, &Endpoint, bool)> + '_ {
        self.view().attempt_order()
    }

    pub fn mark_failed(&self, index: usize) {
        self.view().mark_failed(index);
    }

    pub fn mark_ok(&self, index: usize) {
        self.view().mark_ok(index);
    }

    /// What the set holds on the heap (see `RouteTable::heap_bytes`).
    pub fn heap_bytes(&self) -> usize {
        self.view().heap_bytes()
    }
}

/// Endpoints with their failure marks and round-robin position, wherever they are stored: in
/// an [`EndpointSet`] of their own (an upstream), or in a route table's shared storage (a
/// gateway's routes, tens of thousands of them, kept in a few large allocations).
#[derive(Clone, Copy, Debug)]
pub struct Endpoints<'a> {
    endpoints: &'a [Endpoint],
    /// Milliseconds since [`epoch`] at the last failure, plus one (0 = never failed); one per
    /// endpoint.
    failed_at: &'a [AtomicU64],
    next: &'a AtomicUsize,
}

impl<'a> Endpoints<'a> {
    /// `failed_at` has one mark per endpoint (missing ones mean no failure memory).
    pub fn new(
        endpoints: &'a [Endpoint],
        failed_at: &'a [AtomicU64],
        next: &'a AtomicUsize,
    ) -> Self {
        Endpoints {
            endpoints,
            failed_at,
            next,
        }
    }

    pub fn as_slice(&self) -> &'a [Endpoint] {
        self.endpoints
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The order to try endpoints in for one connection: round-robin start, recently failed
    /// ones moved to the back (still tried, so a route never refuses while any might work).
    /// Yields `(index, endpoint, held_back)`. Which endpoints are held back is decided once,
    /// up front, so a failure during this connection's attempts does not reorder them.
    pub fn attempt_order(self) -> impl Iterator<Item = (usize, &'a Endpoint, bool)> + 'a {
        let n = self.endpoints.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        let now = now_ms();
        let mut held = [0u64; HELD_WORDS];
        for i in 0..n.min(HELD_WORDS * 64) {
            let at = self
                .failed_at
                .get(i)
                .map_or(0, |a| a.load(Ordering::Relaxed));
            if at != 0 && now.saturating_sub(at - 1) < FAILURE_HOLD.as_millis() as u64 {
                held[i / 64] |= 1 << (i % 64);
            }
        }
        let is_held = move |i: usize| held.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0);
        let rotated = move || (0..n).map(move |k| (start + k) % n);
        let fresh = rotated().filter(move |&i| !is_held(i)).map(|i| (i, false));
        let stale = rotated().filter(move |&i| is_held(i)).map(|i| (i, true));
        let endpoints = self.endpoints;
        fresh
            .chain(stale)
            .map(move |(i, held_back)| (i, &endpoints[i], held_back))
    }

    pub fn mark_failed(&self, index: usize) {
        if let Some(slot) = self.failed_at.get(index) {
            slot.store(now_ms() + 1, Ordering::Relaxed);
        }
    }

    pub fn mark_ok(&self, index: usize) {
        if let Some(slot) = self.failed_at.get(index) {
            slot.store(0, Ordering::Relaxed);
        }
    }

    /// What these endpoints hold on the heap, their marks included.
    pub fn heap_bytes(&self) -> usize {
        heap_bytes(self.endpoints) + std::mem::size_of_val(self.failed_at)
    }
}

/// What a list of endpoints holds on the heap: the list and its host names.
pub fn heap_bytes(endpoints: &[Endpoint]) -> usize {
    let hosts: usize = endpoints
        .iter()
        .map(|e| match e {
            Endpoint::Host { host, .. } => host.len(),
            Endpoint::Addr(_) => 0,
        })
        .sum();
    std::mem::size_of_val(endpoints) + hosts
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Serialize for Endpoints<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.endpoints.serialize(s)
    }
}

impl Serialize for EndpointSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.endpoints.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: u16) -> EndpointSet {
        EndpointSet::new(
            (1..=n)
                .map(|p| Endpoint::Addr(([127, 0, 0, 1], p).into()))
                .collect(),
        )
    }

    fn order(s: &EndpointSet) -> Vec<(usize, bool)> {
        s.attempt_order()
            .map(|(i, _, skipped)| (i, skipped))
            .collect()
    }

    #[test]
    fn rotates_and_moves_failed_to_the_back() {
        let s = set(3);
        assert_eq!(order(&s), [(0, false), (1, false), (2, false)]);
        assert_eq!(order(&s), [(1, false), (2, false), (0, false)]);
        s.mark_failed(2);
        assert_eq!(order(&s), [(0, false), (1, false), (2, true)]);
        s.mark_ok(2);
        assert_eq!(order(&s), [(0, false), (1, false), (2, false)]);
    }

    #[test]
    fn failures_during_a_pass_do_not_repeat_endpoints() {
        let s = set(3);
        let tried: Vec<usize> = s
            .attempt_order()
            .map(|(i, _, _)| {
                s.mark_failed(i);
                i
            })
            .collect();
        assert_eq!(tried, [0, 1, 2]);
    }

    #[test]
    fn all_failed_still_tried() {
        let s = set(2);
        s.mark_failed(0);
        s.mark_failed(1);
        assert_eq!(order(&s).len(), 2);
        assert!(order(&s).iter().all(|(_, skipped)| *skipped));
        assert_eq!(set(0).attempt_order().count(), 0);
    }
}
