//! Connection deadlines (handshake, connect, idle) on one shared sweep per event loop.
//!
//! An async-io `Timer` per deadline costs each connection a timer-queue insert and removal
//! and, on insert, an eventfd write that wakes the reactor for one more epoll cycle; held
//! connections also keep a timer entry each. Here a deadline is a slot in a thread-local
//! table, and one task (`sweeper`) sleeps on a single timer until the earliest slot is due,
//! then wakes every slot that is. Deadlines fire up to `GRAIN` late, which is nothing next
//! to timeouts of seconds; registering one that is later than the sweep already planned
//! costs no syscall at all.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::reactor::Timer;

/// How late a deadline may fire; also the shortest gap between two sweeps.
const GRAIN: Duration = Duration::from_millis(10);

thread_local! {
    static TABLE: RefCell<Table> = const { RefCell::new(Table::new()) };
}

struct Slot {
    due: Instant,
    /// The owner's waker while it waits; `None` once woken (or before its first wait).
    waker: Option<Waker>,
}

struct Table {
    /// `None`: a free slot, listed in `free`.
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// When the sweeper plans to run next, and how to wake it to plan again.
    planned: Option<Instant>,
    sweeper: Option<Waker>,
}

impl Table {
    const fn new() -> Self {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            planned: None,
            sweeper: None,
        }
    }

    /// Stores (or updates) a waiting deadline; returns its slot.
    fn wait(&mut self, slot: Option<u32>, due: Instant, waker: &Waker) -> u32 {
        let index = match slot {
            Some(i) => i,
            None => match self.free.pop() {
                Some(i) => i,
                None => {
                    self.slots.push(None);
                    (self.slots.len() - 1) as u32
                }
            },
        };
        if let Some(entry) = self.slots.get_mut(index as usize) {
            match entry {
                Some(s) if s.waker.as_ref().is_some_and(|w| w.will_wake(waker)) => s.due = due,
                _ => {
                    *entry = Some(Slot {
                        due,
                        waker: Some(waker.clone()),
                    })
                }
            }
        }
        // Only a deadline clearly before the planned sweep needs the sweeper to plan again.
        if self.planned.is_none_or(|p| due + GRAIN < p) {
            self.planned = Some(due);
            if let Some(s) = &self.sweeper {
                s.wake_by_ref();
            }
        }
        index
    }

    fn release(&mut self, index: u32) {
        if let Some(entry) = self.slots.get_mut(index as usize) {
            if entry.take().is_some() {
                self.free.push(index);
            }
        }
    }

    /// Wakes every slot due by `now`; returns when the next one is due.
    fn sweep(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for s in self.slots.iter_mut().flatten() {
            if s.waker.is_none() {
                continue;
            }
            if s.due <= now {
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            } else if next.is_none_or(|n| s.due < n) {
                next = Some(s.due);
            }
        }
        next
    }
}

/// A point in time a connection gives up at. Polling it registers the task; it is ready once
/// `due` has passed. Dropping it frees its slot.
pub struct Deadline {
    due: Instant,
    slot: Option<u32>,
}

impl Deadline {
    pub fn at(due: Instant) -> Self {
        Deadline { due, slot: None }
    }

    pub fn after(d: Duration) -> Self {
        Deadline::at(Instant::now() + d)
    }

    /// Moves the deadline; the next poll registers the new time.
    pub fn reset(&mut self, due: Instant) {
        self.due = due;
    }

    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.due {
            return Poll::Ready(());
        }
        let due = self.due;
        let slot = TABLE.with(|t| t.borrow_mut().wait(self.slot, due, cx.waker()));
        self.slot = Some(slot);
        Poll::Pending
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_due(cx)
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            // The table is gone only while the thread itself is ending.
            let _ = TABLE.try_with(|t| t.borrow_mut().release(slot));
        }
    }
}

/// Runs `fut`, or gives up with `TimedOut` after `limit`.
pub async fn timeout<T>(
    limit: Duration,
    what: &'static str,
    fut: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    smol::future::or(fut, async {
        Deadline::after(limit).await;
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
    })
    .await
}

/// The one task per event loop that fires deadlines: it must run on every thread whose
/// connections use `Deadline`. Never ends.
pub async fn sweeper() {
    let mut timer: Option<(Instant, Timer)> = None;
    smol::future::poll_fn(move |cx| {
        loop {
            let now = Instant::now();
            let planned = TABLE.with(|t| {
                let mut t = t.borrow_mut();
                if t.sweeper.as_ref().is_none_or(|w| !w.will_wake(cx.waker())) {
                    t.sweeper = Some(cx.waker().clone());
                }
                match t.planned {
                    Some(p) if p <= now => {
                        let next = t.sweep(now).map(|n| n.max(now + GRAIN));
                        t.planned = next;
                        next
                    }
                    other => other,
                }
            });
            let Some(at) = planned else {
                timer = None;
                return Poll::Pending;
            };
            if timer.as_ref().is_none_or(|(armed, _)| *armed != at) {
                timer = Some((at, Timer::at(at)));
            }
            if let Some((_, t)) = &mut timer {
                if Pin::new(t).poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            timer = None; // due: sweep on the next turn of the loop
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deadlines fire (no earlier than due, at most a sweep late), in order, whichever was
    /// registered first; a dropped one frees its slot for reuse.
    #[test]
    fn deadlines_fire_in_order_and_slots_are_reused() {
        let ex = smol::LocalExecutor::new();
        super::super::reactor::run(ex.run(async {
            ex.spawn(sweeper()).detach();
            let start = Instant::now();
            let late = ex.spawn(async move {
                Deadline::after(Duration::from_millis(120)).await;
                start.elapsed()
            });
            let early = ex.spawn(async move {
                Deadline::after(Duration::from_millis(40)).await;
                start.elapsed()
            });
            let (early, late) = (early.await, late.await);
            assert!(early >= Duration::from_millis(40), "{early:?}");
            assert!(late >= Duration::from_millis(120), "{late:?}");
            assert!(early < late, "{early:?} {late:?}");
            // Late by a sweep or so when the machine is idle; the bound is loose because a
            // test run shares the cores with builds, and it still tells "fired" from "never".
            assert!(late < Duration::from_millis(120) + 200 * GRAIN, "{late:?}");

            // A deadline given up on is released, and its slot serves the next one.
            let gone = smol::future::or(
                async {
                    Deadline::after(Duration::from_secs(3600)).await;
                    false
                },
                async { true },
            )
            .await;
            assert!(gone);
            let used = TABLE.with(|t| t.borrow().slots.iter().flatten().count());
            assert_eq!(used, 0);
        }))
        .unwrap();
    }
}
