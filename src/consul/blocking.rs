//! Consul's blocking-query client rules (api-docs/features/blocking): follow the index, reset
//! it when it goes backwards, cap `wait`, back off with jitter after errors, and rate-limit the
//! loop so a flapping result cannot make us hammer the agent.

use std::time::{Duration, Instant};

/// Consul caps `wait` at 10 minutes (`max_query_time`); we ask for its 5-minute default.
pub const WAIT: Duration = Duration::from_secs(300);
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// The index for the next request after an answer carrying `returned`
/// (`X-Consul-Index`). No header: the endpoint does not block, ask from scratch. Lower than
/// before: the server's state was reset (snapshot restore, new cluster) — start over at 0,
/// or the query would block until the new index happens to pass the old one. Below 1: 1, so
/// the next request blocks instead of returning at once.
pub fn next_index(previous: u64, returned: Option<u64>) -> u64 {
    match returned {
        None => 0,
        Some(r) if r < previous => 0,
        Some(0) => 1,
        Some(r) => r,
    }
}

/// Exponential back-off with full jitter in the upper half: after the n-th consecutive
/// failure wait a random time in [d/2, d], d = min(max, base·2ⁿ). Jitter keeps a fleet of
/// sidecars from retrying in lockstep after an agent restart.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            failures: 0,
        }
    }

    /// The delay before the next attempt; `rand01` is a uniform sample in [0, 1).
    pub fn next_delay(&mut self, rand01: f64) -> Duration {
        let shift = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        let full = self.base.saturating_mul(1 << shift).min(self.max);
        full / 2 + full.mul_f64(rand01.clamp(0.0, 1.0) / 2.0)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// A token bucket: `burst` calls at once, then one per `every`.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    burst: u32,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub fn new(every: Duration, burst: u32, now: Instant) -> RateLimit {
        RateLimit {
            every,
            burst,
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Takes a token at `now`; returns how long to wait first (zero when one was there).
    pub fn take(&mut self, now: Instant) -> Duration {
        let refill =
            now.saturating_duration_since(self.at).as_secs_f64() / self.every.as_secs_f64();
        self.tokens = (self.tokens + refill).min(f64::from(self.burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Duration::ZERO;
        }
        let wait = self.every.mul_f64(1.0 - self.tokens);
        // The token that accrues during the wait is spent by this call.
        self.tokens = 0.0;
        self.at = now + wait;
        wait
    }
}

/// `wait` as Consul parses it (a Go duration): whole seconds, clamped to its cap.
pub fn wait_param(wait: Duration) -> String {
    format!("{}s", wait.min(MAX_WAIT).as_secs().max(1))
}

/// How long one blocking request may take in all: the wait, Consul's jitter of up to
/// wait/16, and time for the answer itself.
pub fn request_timeout(wait: Duration) -> Duration {
    let wait = wait.min(MAX_WAIT);
    wait + wait / 16 + Duration::from_secs(15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, Some(42)), 42);
        assert_eq!(next_index(42, Some(42)), 42, "same index: block again");
        assert_eq!(next_index(42, Some(50)), 50);
        assert_eq!(next_index(50, Some(7)), 0, "went backwards: reset");
        assert_eq!(next_index(0, Some(0)), 1, "never block on 0");
        assert_eq!(next_index(9, None), 0, "no index: not blocking");
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let low: Vec<Duration> = (0..8).map(|_| b.next_delay(0.0)).collect();
        let ms: Vec<u128> = low.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1600, 2500, 2500]);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(0.999_999).as_millis(), 99);
        // Never beyond the cap, whatever the sample or the number of failures.
        for _ in 0..100 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(5));
        }
    }

    #[test]
    fn rate_limit_allows_a_burst_then_spaces_calls() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_millis(500), 2, t0);
        assert_eq!(r.take(t0), Duration::ZERO);
        assert_eq!(r.take(t0), Duration::ZERO);
        let wait = r.take(t0);
        assert_eq!(wait, Duration::from_millis(500));
        // The caller slept `wait`; the next call right after waits a full period again.
        assert_eq!(r.take(t0 + wait), Duration::from_millis(500));
        // After a long quiet time the burst is back, but no more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(r.take(later), Duration::ZERO);
        assert_eq!(r.take(later), Duration::ZERO);
        assert!(r.take(later) > Duration::ZERO);
    }

    #[test]
    fn wait_is_capped() {
        assert_eq!(wait_param(Duration::from_secs(300)), "300s");
        assert_eq!(wait_param(Duration::from_secs(3600)), "600s");
        assert_eq!(wait_param(Duration::from_millis(10)), "1s");
        assert!(request_timeout(Duration::from_secs(3600)) < Duration::from_secs(700));
    }
}
