//! One reactor per event loop: each loop thread waits on an epoll set of its own, for the
//! sockets it serves, and runs the tasks they wake.
//!
//! Why not smol's reactor (async-io): it is one per process, polled by whichever thread holds
//! its lock, in practice its own helper thread. Every readiness event then crosses threads (a
//! futex wake and a context switch), and every wait re-arms a one-shot registration (an
//! `epoll_ctl` per wait). Traced through the gateway, that was 77 syscalls per connection, 25
//! of them `epoll_ctl`, and one thread polling for all loops. Here a socket is registered once,
//! for both directions, edge-triggered, with the epoll set of the loop that serves it; only
//! that loop's thread waits on it, and only another thread's wake-up (a handed-off connection,
//! a channel message) writes the loop's eventfd.
//!
//! Readiness is one bit per direction, set by an edge and consumed by the waiter:
//! `poll_readable` is ready once per edge. What makes edges enough is the rule every caller
//! keeps: wait for readiness only after seeing the socket empty, an operation that returned
//! `WouldBlock` or a read that came back shorter than a buffer with room for more (the kernel
//! raises a new edge for whatever arrives after that). A short read can leave the peer's FIN
//! unread, though, with no edge to come: so once the peer has closed a direction (or the
//! socket failed), that direction stays ready. A caller that saw `WouldBlock` on its own
//! syscall says so (`read_would_block`, `write_would_block`), so that an edge it has already
//! used up does not cost one more failing syscall.
//!
//! smol still provides the executor, channels and timers of the threads that are not event
//! loops; a waker from any of them reaches a loop through its eventfd.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags};

mod socket;
mod timer;

pub use socket::{Async, ShutdownWrite};
pub use timer::Timer;

/// The eventfd's key; a socket's key is its slot and generation, never all ones.
const NOTIFY: u64 = u64::MAX;
/// Events taken per wait: more stay queued in the kernel for the next one.
const EVENTS: usize = 256;
const READ: usize = 0;
const WRITE: usize = 1;

thread_local! {
    /// This thread's reactor, made on first use and kept until the thread ends.
    static CURRENT: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
}

/// Runs `future` on this thread to completion, waiting on this thread's reactor between its
/// polls. Errors only when the reactor cannot be made or waited on (out of descriptors).
pub fn run<T>(future: impl Future<Output = T>) -> io::Result<T> {
    let reactor = current()?;
    let waker = Waker::from(reactor.notify.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    reactor.notify.woken.store(true, SeqCst);
    loop {
        if reactor.notify.woken.swap(false, SeqCst) {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return Ok(out);
            }
        }
        reactor.react()?;
    }
}

/// Makes this thread's reactor now (an epoll set and an eventfd), so that a loop that cannot
/// have one fails at start rather than at its first connection.
pub fn prepare() -> io::Result<()> {
    current().map(drop)
}

fn current() -> io::Result<Rc<Reactor>> {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(r) = c.as_ref() {
            return Ok(r.clone());
        }
        let r = Rc::new(Reactor::new()?);
        *c = Some(r.clone());
        Ok(r)
    })
}

struct Reactor {
    epoll: OwnedFd,
    notify: Arc<Notify>,
    slots: RefCell<Slots>,
    /// Pending timers by due time (and a serial, to keep equal times apart).
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    serial: Cell<u64>,
    events: RefCell<Vec<epoll::Event>>,
}

/// How a thread that is not the loop's wakes it: a flag, and the eventfd only when the loop
/// sleeps (the two stores and loads are ordered so that one side always sees the other).
struct Notify {
    fd: OwnedFd,
    woken: AtomicBool,
    sleeping: AtomicBool,
}

impl Wake for Notify {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.woken.swap(true, SeqCst) && self.sleeping.load(SeqCst) {
            // A full counter (never, in practice) still leaves the loop readable.
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
        }
    }
}

/// The registered sockets, by slot; a slot's generation tells a late event for a socket
/// already gone from one for the socket now in its place.
#[derive(Default)]
struct Slots {
    slots: Vec<(u32, Option<Rc<Source>>)>,
    free: Vec<u32>,
}

impl Reactor {
    fn new() -> io::Result<Reactor> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let flags = EventFlags::IN | EventFlags::ET;
        epoll::add(&epoll, &fd, EventData::new_u64(NOTIFY), flags)?;
        Ok(Reactor {
            epoll,
            notify: Arc::new(Notify {
                fd,
                woken: AtomicBool::new(false),
                sleeping: AtomicBool::new(false),
            }),
            slots: RefCell::default(),
            timers: RefCell::default(),
            serial: Cell::new(0),
            events: RefCell::new(Vec::with_capacity(EVENTS)),
        })
    }

    /// Waits for events (not at all when a task is already woken, at most until the next
    /// timer), raises them on their sockets, and fires the timers that are due.
    fn react(&self) -> io::Result<()> {
        let n = &self.notify;
        let timeout = if n.woken.load(SeqCst) {
            Some(Duration::ZERO)
        } else {
            n.sleeping.store(true, SeqCst);
            if n.woken.load(SeqCst) {
                Some(Duration::ZERO)
            } else {
                self.until_next_timer()
            }
        };
        let mut events = self.events.borrow_mut();
        let waited = self.wait(timeout, &mut events);
        // Awake before the events wake their tasks: those wakes then only set the flag,
        // not the eventfd too.
        n.sleeping.store(false, SeqCst);
        waited?;
        for event in events.iter() {
            let (flags, key) = (event.flags, event.data.u64());
            if key == NOTIFY {
                let mut count = [0u8; 8];
                let _ = rustix::io::read(&n.fd, &mut count);
            } else if let Some(source) = self.slots.borrow().get(key) {
                source.raise(flags);
            }
        }
        drop(events);
        self.fire_timers();
        Ok(())
    }

    fn wait(&self, timeout: Option<Duration>, events: &mut Vec<epoll::Event>) -> io::Result<()> {
        let timeout = match timeout.map(rustix::time::Timespec::try_from) {
            Some(Ok(t)) => Some(t),
            // Beyond any representable time: wait for events alone.
            Some(Err(_)) | None => None,
        };
        events.clear();
        match epoll::wait(&self.epoll, spare_capacity(events), timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn until_next_timer(&self) -> Option<Duration> {
        let timers = self.timers.borrow();
        let ((at, _), _) = timers.first_key_value()?;
        Some(at.saturating_duration_since(Instant::now()))
    }

    fn fire_timers(&self) {
        let now = Instant::now();
        loop {
            let due = {
                let mut timers = self.timers.borrow_mut();
                match timers.first_key_value() {
                    Some(((at, _), _)) if *at <= now => timers.pop_first(),
                    _ => None,
                }
            };
            match due {
                Some((_, waker)) => waker.wake(),
                None => return,
            }
        }
    }

    /// Registers `io` (already non-blocking) for both directions, edge-triggered.
    fn register(&self, io: impl AsFd) -> io::Result<Rc<Source>> {
        let source = self.slots.borrow_mut().insert();
        let flags = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET;
        if let Err(e) = epoll::add(&self.epoll, io, EventData::new_u64(source.key), flags) {
            self.slots.borrow_mut().remove(source.key);
            return Err(e.into());
        }
        Ok(source)
    }

    /// `shared`: the socket may be open elsewhere too (systemd's fd store keeps the
    /// listeners), so it is taken out of the set explicitly: closing our descriptor would not
    /// remove it, and it would raise events for a dead key. A socket only we hold leaves the
    /// set as it closes, without the syscall.
    fn deregister(&self, io: impl AsFd, key: u64, shared: bool) {
        if shared {
            let _ = epoll::delete(&self.epoll, io);
        }
        self.slots.borrow_mut().remove(key);
    }
}

impl Slots {
    fn insert(&mut self) -> Rc<Source> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((0, None));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX - 1)
            }
        };
        let generation = self.slots.get(index as usize).map_or(0, |s| s.0);
        let source = Rc::new(Source::new(u64::from(generation) << 32 | u64::from(index)));
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.1 = Some(source.clone());
        }
        source
    }

    fn get(&self, key: u64) -> Option<Rc<Source>> {
        let (index, generation) = split(key);
        match self.slots.get(index) {
            Some((g, Some(source))) if *g == generation => Some(source.clone()),
            _ => None,
        }
    }

    fn remove(&mut self, key: u64) {
        let (index, generation) = split(key);
        if let Some(slot) = self.slots.get_mut(index).filter(|s| s.0 == generation) {
            slot.0 = slot.0.wrapping_add(1) & 0x7fff_ffff;
            slot.1 = None;
            self.free.push(index as u32);
        }
    }
}

fn split(key: u64) -> (usize, u32) {
    ((key & 0xffff_ffff) as usize, (key >> 32) as u32)
}

/// One socket's readiness: a bit per direction and the task waiting on it.
struct Source {
    key: u64,
    ready: [Cell<bool>; 2],
    /// The peer closed that way (or the socket failed): ready from then on, never consumed.
    /// A short read that took the last bytes before a FIN has not read the FIN, and the FIN
    /// raises no edge after that read.
    ended: [Cell<bool>; 2],
    /// The peer's FIN arrived, with no error: every byte it sent is queued before it.
    fin: Cell<bool>,
    waiting: [Cell<Option<Waker>>; 2],
}

impl Source {
    fn new(key: u64) -> Source {
        Source {
            key,
            ready: [Cell::new(false), Cell::new(false)],
            ended: [Cell::new(false), Cell::new(false)],
            fin: Cell::new(false),
            waiting: [Cell::new(None), Cell::new(None)],
        }
    }

    fn raise(&self, flags: EventFlags) {
        let any = |f: EventFlags| flags.intersects(f);
        let (err, hup) = (EventFlags::ERR, EventFlags::HUP);
        if any(EventFlags::RDHUP | err | hup) {
            self.end(READ);
        }
        if any(EventFlags::RDHUP) && !any(err) {
            self.fin.set(true);
        }
        if any(err | hup) {
            self.end(WRITE);
        }
        if any(EventFlags::IN | EventFlags::RDHUP | EventFlags::PRI | err | hup) {
            self.set(READ);
        }
        if any(EventFlags::OUT | err | hup) {
            self.set(WRITE);
        }
    }

    fn set(&self, way: usize) {
        if let (Some(ready), Some(waiting)) = (self.ready.get(way), self.waiting.get(way)) {
            ready.set(true);
            if let Some(w) = waiting.take() {
                w.wake();
            }
        }
    }

    fn end(&self, way: usize) {
        if let Some(e) = self.ended.get(way) {
            e.set(true);
        }
    }

    /// The peer closed that way, or the socket failed.
    fn has_ended(&self, way: usize) -> bool {
        self.ended.get(way).is_some_and(Cell::get)
    }

    /// Ready (and consumed) if an edge came since the last time, or ever once the peer
    /// ended that way; otherwise waits for an edge.
    fn poll_ready(&self, way: usize, cx: &Context<'_>) -> Poll<()> {
        let ended = self.has_ended(way);
        if self.ready.get(way).is_some_and(|r| r.replace(false)) || ended {
            return Poll::Ready(());
        }
        self.wait(way, cx.waker());
        Poll::Pending
    }

    fn wait(&self, way: usize, waker: &Waker) {
        let Some(slot) = self.waiting.get(way) else {
            return;
        };
        match slot.take() {
            Some(w) if w.will_wake(waker) => slot.set(Some(w)),
            // Another task waited on this direction: let it look again rather than lose it.
            Some(w) => {
                slot.set(Some(waker.clone()));
                w.wake();
            }
            None => slot.set(Some(waker.clone())),
        }
    }

    fn clear(&self, way: usize) {
        if let Some(r) = self.ready.get(way) {
            r.set(false);
        }
    }
}

/// `fut` run on this thread, or `None` if it has not finished within two seconds (a test
/// fails instead of hanging).
#[cfg(test)]
pub(super) fn within<T>(fut: impl Future<Output = T>) -> Option<T> {
    run(smol::future::or(async { Some(fut.await) }, async {
        Timer::after(Duration::from_secs(2)).await;
        None
    }))
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wake from another thread reaches a loop asleep in its wait.
    #[test]
    fn another_threads_wake_reaches_a_sleeping_loop() {
        let (tx, rx) = smol::channel::bounded(1);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            tx.send_blocking(42).unwrap();
        });
        assert_eq!(within(rx.recv()), Some(Ok(42)));
        sender.join().unwrap();
    }

    /// A slot freed and taken again gets a new generation: an event still queued for the
    /// socket that had it finds nothing.
    #[test]
    fn a_reused_slot_does_not_take_the_old_sockets_events() {
        let mut slots = Slots::default();
        let old = slots.insert().key;
        slots.remove(old);
        let new = slots.insert().key;
        assert_eq!(split(old).0, split(new).0);
        assert!(slots.get(old).is_none());
        assert!(slots.get(new).is_some());
    }
}
