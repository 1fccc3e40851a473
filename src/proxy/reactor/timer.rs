//! Timers on the loop's own reactor: its wait ends at the earliest one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::{current, CURRENT};

/// A point in time on this thread's reactor: ready once it has passed.
pub struct Timer {
    at: Instant,
    /// Its place in the reactor's timers while it waits there.
    armed: Option<(Instant, u64)>,
}

impl Timer {
    pub fn at(at: Instant) -> Timer {
        Timer { at, armed: None }
    }

    pub fn after(d: Duration) -> Timer {
        Timer::at(Instant::now() + d)
    }

    fn disarm(&mut self) {
        if let Some(key) = self.armed.take() {
            let _ = CURRENT.try_with(|c| {
                if let Some(r) = c.borrow().as_ref() {
                    r.timers.borrow_mut().remove(&key);
                }
            });
        }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            self.disarm();
            return Poll::Ready(());
        }
        let reactor = match current() {
            Ok(r) => r,
            // No reactor can be made (out of descriptors): poll again soon rather than never.
            Err(_) => {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        };
        let key = match self.armed {
            Some(key) => key,
            None => {
                let serial = reactor.serial.get();
                reactor.serial.set(serial.wrapping_add(1));
                (self.at, serial)
            }
        };
        self.armed = Some(key);
        let mut timers = reactor.timers.borrow_mut();
        match timers.get_mut(&key) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => w.clone_from(cx.waker()),
            // Fired already (the waker was taken) but polled before its time: arm again.
            None => {
                timers.insert(key, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.disarm();
    }
}
