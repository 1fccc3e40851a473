//! A stop request that a waiting thread wakes up from at once. Watch threads pause between
//! requests (rate limit, back-off of up to 30 s); waiting on this instead of sleeping lets a
//! replaced follower's threads end as soon as it is stopped, not at the end of their pause.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for up to `pause`; true when stopped (before or during the wait).
    pub fn wait(&self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        while !*stopped {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stopped = self
                .wake
                .wait_timeout(stopped, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_wait_ends_at_its_pause_or_at_once_when_stopped() {
        let stop = Arc::new(Stop::default());
        let started = Instant::now();
        assert!(!stop.wait(Duration::from_millis(50)));
        assert!(started.elapsed() >= Duration::from_millis(50));

        let waiter = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                (stop.wait(Duration::from_secs(600)), started.elapsed())
            })
        };
        stop.stop();
        let (stopped, took) = waiter.join().unwrap();
        assert!(stopped);
        assert!(took < Duration::from_secs(60), "{took:?}");
        assert!(stop.is_stopped() && stop.wait(Duration::from_secs(600)));
    }
}
