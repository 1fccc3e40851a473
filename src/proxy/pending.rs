//! Gateway connections still waiting for their ClientHello get a budget of their own
//! (`[gateway] max_pending_handshakes`), smaller than `max_connections`.
//!
//! A connection that never sends its hello holds a place until `handshake_timeout_ms`; with
//! only `max_connections` to bound them, a few hundred silent connections a second kept a
//! gateway full and routed traffic out. Now when the budget is full, a new connection sheds
//! the *oldest* one still waiting (and the shed is counted): the newest has had no time to
//! send anything yet, while the oldest has had the most and is the likeliest to be silent.
//! A real client sends its hello within a round trip, long before a flood could push it to
//! the front; and silent connections can never take more than the budget from routed ones.
//!
//! The waiting connections are slots in one table for the whole `Running` (`Pending`), not
//! one per event loop: the budget holds for the process however many loops serve it, and the
//! oldest waiting connection is shed whichever loop it is on (its waker is woken from the loop
//! that took the new one). The lock is taken only on entering, on a wake-up and on leaving,
//! never while bytes move; entering and leaving allocate nothing once the table has grown to
//! the budget.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::metrics::Counter;

/// Every gateway connection waiting for its ClientHello, on whichever loop it is.
#[derive(Default)]
pub struct Pending(Mutex<Table>);

impl Pending {
    fn table(&self) -> MutexGuard<'_, Table> {
        // Nothing panics while holding it; a poisoned table is still consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Entry {
    /// Admission order: the smallest is the oldest.
    admitted: u64,
    shed: bool,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Table {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// Entries waiting and not shed.
    live: usize,
    next: u64,
}

impl Table {
    /// Marks the oldest waiting entry shed and wakes it; false when none is left to shed.
    fn shed_oldest(&mut self) -> bool {
        let oldest = self
            .slots
            .iter_mut()
            .flatten()
            .filter(|e| !e.shed)
            .min_by_key(|e| e.admitted);
        let Some(e) = oldest else {
            return false;
        };
        e.shed = true;
        if let Some(w) = e.waker.take() {
            w.wake();
        }
        self.live -= 1;
        true
    }

    fn enter(&mut self) -> u32 {
        let entry = Entry {
            admitted: self.next,
            shed: false,
            waker: None,
        };
        self.next += 1;
        self.live += 1;
        match self.free.pop() {
            Some(i) => {
                if let Some(slot) = self.slots.get_mut(i as usize) {
                    *slot = Some(entry);
                }
                i
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn leave(&mut self, index: u32) {
        if let Some(slot) = self.slots.get_mut(index as usize) {
            if let Some(e) = slot.take() {
                if !e.shed {
                    self.live -= 1;
                }
                self.free.push(index);
            }
        }
    }

    /// Ready once shed; otherwise remembers who to wake.
    fn poll(&mut self, index: u32, cx: &mut Context<'_>) -> Poll<()> {
        match self.slots.get_mut(index as usize) {
            Some(Some(e)) if e.shed => Poll::Ready(()),
            Some(Some(e)) => {
                if e.waker.as_ref().is_none_or(|w| !w.will_wake(cx.waker())) {
                    e.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }
}

/// A connection's place among those waiting for their hello, held until dropped. As a
/// future it completes when the connection is shed to make room for a newer one.
pub struct Waiting<'p> {
    pending: &'p Pending,
    slot: u32,
}

impl<'p> Waiting<'p> {
    /// Takes a place in `pending` within `budget`, shedding the oldest waiting connections
    /// (each counted in `shed`) while the budget is full.
    pub fn enter(pending: &'p Pending, budget: usize, shed: &Counter) -> Waiting<'p> {
        let mut t = pending.table();
        while t.live >= budget.max(1) && t.shed_oldest() {
            shed.inc();
        }
        Waiting {
            pending,
            slot: t.enter(),
        }
    }
}

impl Future for Waiting<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.pending.table().poll(self.slot, cx)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending.table().leave(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The oldest waiting place is shed (and woken) when a new one comes over budget; a place
    /// left frees room without shedding anybody.
    #[test]
    fn the_oldest_waiting_connection_is_shed() {
        let shed = Counter::default();
        let pending = Pending::default();
        let flag = std::sync::Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut first = Waiting::enter(&pending, 2, &shed);
        let second = Waiting::enter(&pending, 2, &shed);
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        let mut third = Waiting::enter(&pending, 2, &shed);
        assert_eq!(shed.get(), 1);
        assert!(
            flag.0.load(std::sync::atomic::Ordering::SeqCst),
            "not woken"
        );
        assert!(Pin::new(&mut first).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut third).poll(&mut cx).is_pending());
        drop(first);
        drop(second);
        let _fourth = Waiting::enter(&pending, 2, &shed);
        assert_eq!(shed.get(), 1, "room was left: nobody shed");
        let used = pending.table().slots.iter().flatten().count();
        assert_eq!(used, 2);
    }

    /// One budget for every loop: a connection entering on one thread sheds the oldest,
    /// waiting on another, and wakes it there.
    #[test]
    fn the_budget_is_shared_by_every_loop_thread() {
        let shed = Counter::default();
        let pending = Pending::default();
        let flag = std::sync::Arc::new(Flag(false.into()));
        std::thread::scope(|s| {
            s.spawn(|| {
                let waker = Waker::from(flag.clone());
                let mut cx = Context::from_waker(&waker);
                let mut oldest = Waiting::enter(&pending, 1, &shed);
                assert!(Pin::new(&mut oldest).poll(&mut cx).is_pending());
                std::mem::forget(oldest);
            });
        });
        let newest = std::thread::scope(|s| {
            s.spawn(|| Waiting::enter(&pending, 1, &shed).slot)
                .join()
                .unwrap()
        });
        assert_eq!(shed.get(), 1);
        assert!(
            flag.0.load(std::sync::atomic::Ordering::SeqCst),
            "the other thread's waiter was not woken"
        );
        let live = pending.table().live;
        assert_eq!(live, 0, "the newest left as its thread ended: {newest}");
    }
}
