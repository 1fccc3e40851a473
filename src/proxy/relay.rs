//! Moving bytes both ways between two sockets until both sides are done.
//!
//! Half-close is kept: when one side stops sending, the other side's write half is shut and
//! the opposite direction carries on (a client may send a request, shut its write side and
//! still read the whole answer). A connection with no traffic either way for `idle` is closed.
//!
//! A transfer's bytes go through a pooled pipe with splice(2) where `Splice` says so (bytes from
//! another host; every byte at one loop): socket to pipe to socket inside the kernel, never
//! copied through user space. Small messages, the first chunk of each burst, and bytes not
//! spliced go through a pooled buffer: the same two syscalls, and no descriptors held.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use smol::future;

use super::buffers::Carrier;
use super::deadline::Deadline;
use super::reactor::Async;
use crate::mesh::snapshot::Splice;
use crate::metrics::Tally;

/// Chunks a direction may move in one turn before yielding to the other connections.
const FAIR_SHARE: u8 = 16;
/// A chunk shorter than this probably emptied the socket: wait for readiness before reading
/// again instead of trying a read that would fail (request/response traffic saves a syscall
/// per message; a bulk transfer keeps reading without waiting).
const SHORT: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed their sending halves.
    Done,
    Idle,
}

/// What one relayed connection did, for its debug log line.
#[derive(Debug)]
pub struct Relayed {
    pub end: RelayEnd,
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Per-connection state the two directions share.
pub(super) struct Flow {
    pub(super) last: Cell<Instant>,
    pub(super) a_to_b: Cell<u64>,
    pub(super) b_to_a: Cell<u64>,
    idled: Cell<bool>,
}

/// Relays until both directions end, one fails, or the pair is idle for `idle`. Bytes are
/// added to the shared counters as they move, so a failed relay is still counted. The caller
/// closes both sockets when it returns: that close passes the last direction's FIN on.
///
/// One hand-written state machine rather than two async loops raced with a watchdog: it is
/// what every held connection keeps, and this way it is a few hundred bytes.
///
/// `a_drained`: `a` was read until empty (a read came back short). `b` has never been read:
/// whatever it holds raised an edge since it was registered.
pub async fn relay(
    (a, a_drained): (&Async<TcpStream>, bool),
    b: &Async<TcpStream>,
    (idle, splice): (Duration, Splice),
    a_to_b: Tally<'_>,
    b_to_a: Tally<'_>,
) -> io::Result<Relayed> {
    let (mut up, mut down) = (Half::after(a_drained, splice), Half::after(true, splice));
    let mut last = Instant::now();
    let mut watch = Deadline::at(last + idle);
    future::poll_fn(|cx| {
        // Each direction has its own share: one that always has data must not starve the
        // other (an echo would stall until every buffer on the way is full).
        let (mut up_share, mut down_share) = (FAIR_SHARE, FAIR_SHARE);
        let moved = up.pump(cx, (a, b), a_to_b, &mut up_share, down.done)?;
        let moved = down.pump(cx, (b, a), b_to_a, &mut down_share, up.done)? || moved;
        let relayed = |end| Relayed {
            end,
            a_to_b: up.moved,
            b_to_a: down.moved,
        };
        if up.done && down.done {
            return Poll::Ready(Ok(relayed(RelayEnd::Done)));
        }
        if moved {
            last = Instant::now();
        }
        if up_share == 0 || down_share == 0 {
            // One event loop serves every connection: a transfer that never has to wait
            // must still let the others run.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        while watch.poll_due(cx).is_ready() {
            if Instant::now() >= last + idle {
                return Poll::Ready(Ok(relayed(RelayEnd::Idle)));
            }
            watch.reset(last + idle);
        }
        Poll::Pending
    })
    .await
}

/// One direction of a relayed pair.
#[derive(Default)]
struct Half {
    /// Bytes read and not yet written; `None` while nothing is in flight.
    carrier: Option<Carrier>,
    /// The last chunk was full-sized: read again before waiting.
    streaming: bool,
    /// The sender's socket was seen empty (a read would block, or came back short from a
    /// buffer that had room for more): wait for its next edge before reading. Not after a
    /// short splice, which a full pipe can cut short (`reactor` says why this matters).
    empty: bool,
    /// The sender's FIN is next: its last read emptied the socket after the FIN had been
    /// seen, so the read that would return 0 is not made.
    fin_next: bool,
    /// The sender finished and the half-close was passed on.
    done: bool,
    /// Whether streaming chunks go through a pipe; `Auto` until the first one settles it.
    splice: Splice,
    moved: u64,
}

impl Half {
    /// A direction whose sender has been seen empty (or never read) waits for its next
    /// edge before the first read; otherwise it reads first.
    fn after(empty: bool, splice: Splice) -> Half {
        Half {
            empty,
            splice,
            ..Half::default()
        }
    }

    /// Whether this direction's streaming chunks go through a pipe.
    fn splices(&mut self, from: &TcpStream) -> bool {
        if self.splice == Splice::Auto {
            self.splice = if sender_is_remote(from) {
                Splice::Always
            } else {
                Splice::Never
            };
        }
        self.splice == Splice::Always
    }

    /// Moves what can move now, within `budget` chunks; registers for the readiness it then
    /// waits on. True if any bytes moved. `last`: the other direction has ended.
    fn pump(
        &mut self,
        cx: &mut Context<'_>,
        (from, to): (&Async<TcpStream>, &Async<TcpStream>),
        total: Tally<'_>,
        budget: &mut u8,
        last: bool,
    ) -> io::Result<bool> {
        let mut moved = false;
        while !self.done {
            if let Some(carrier) = self.carrier.as_mut().filter(|c| !c.is_empty()) {
                let sent = step(carrier.drain(to.get_ref()))?;
                if sent == Step::Wait {
                    to.write_would_block();
                    if to.poll_writable(cx)?.is_pending() {
                        return Ok(moved);
                    }
                }
                continue;
            }
            if self.fin_next {
                self.finish(to, last);
                continue;
            }
            if *budget == 0 {
                return Ok(moved);
            }
            if !self.streaming {
                // Nothing is held while waiting: an idle direction costs no pipe or buffer.
                self.carrier = None;
                if self.empty && from.poll_readable(cx)?.is_pending() {
                    return Ok(moved);
                }
            }
            let splices = self.streaming && self.splices(from.get_ref());
            let carrier = self.carrier.get_or_insert_with(Carrier::buffer);
            if splices {
                carrier.for_streaming();
            }
            match step(carrier.fill(from.get_ref()))? {
                Step::Eof => self.finish(to, last),
                Step::Moved(n) => {
                    self.fin_next = carrier.emptied_by(n) && from.peer_finished();
                    total.add(n as u64);
                    self.moved += n as u64;
                    self.empty = !self.streaming && n < SHORT;
                    self.streaming = n >= SHORT;
                    *budget -= 1;
                    moved = true;
                }
                Step::Again => {}
                Step::Wait => {
                    from.read_would_block();
                    self.streaming = false;
                    self.empty = true;
                }
            }
        }
        Ok(moved)
    }

    /// The sender has finished sending: pass the half-close on. The other side may already be
    /// gone; that is not an error for this direction. When this is the last direction both
    /// sockets close next, and the close sends the same FIN (`to` has nothing unread: its own
    /// sender has finished).
    fn finish(&mut self, to: &Async<TcpStream>, last: bool) {
        if !last {
            let _ = to.get_ref().shutdown(Shutdown::Write);
        }
        self.carrier = None;
        self.done = true;
    }
}

/// Whether the host sending to `s` is another one: its address is neither loopback nor `s`'s
/// own. Asked once per direction, when it first streams; unknown counts as this host, whose
/// copy is always correct.
fn sender_is_remote(s: &TcpStream) -> bool {
    match (s.peer_addr(), s.local_addr()) {
        (Ok(peer), Ok(local)) => {
            let peer = peer.ip().to_canonical();
            !peer.is_loopback() && peer != local.ip().to_canonical()
        }
        _ => false,
    }
}

impl Flow {
    pub(super) fn new() -> Self {
        Flow {
            last: Cell::new(Instant::now()),
            a_to_b: Cell::new(0),
            b_to_a: Cell::new(0),
            idled: Cell::new(false),
        }
    }

    /// Ends when nothing has moved either way for `idle`. It has the two directions' output
    /// type so the three race with `future::or` directly: wrapping the directions in another
    /// future would lay them out twice in every connection's state.
    pub(super) async fn watchdog(&self, idle: Duration) -> io::Result<((), ())> {
        let mut due = Deadline::at(self.last.get() + idle);
        loop {
            (&mut due).await;
            let deadline = self.last.get() + idle;
            if Instant::now() >= deadline {
                self.idled.set(true);
                return Ok(((), ()));
            }
            due.reset(deadline);
        }
    }

    /// Counts `n` bytes moved in the direction whose count is `mine`.
    pub(super) fn moved(&self, total: Tally<'_>, mine: &Cell<u64>, n: usize) {
        total.add(n as u64);
        mine.set(mine.get() + n as u64);
        self.last.set(Instant::now());
    }

    pub(super) fn relayed(&self) -> Relayed {
        let end = if self.idled.get() {
            RelayEnd::Idle
        } else {
            RelayEnd::Done
        };
        Relayed {
            end,
            a_to_b: self.a_to_b.get(),
            b_to_a: self.b_to_a.get(),
        }
    }
}

/// What one non-blocking read (or write) attempt came to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Moved(usize),
    Eof,
    /// Nothing to do until the socket is ready again.
    Wait,
    /// Interrupted: try again.
    Again,
}

pub(super) fn step(read: io::Result<usize>) -> io::Result<Step> {
    match read {
        Ok(0) => Ok(Step::Eof),
        Ok(n) => Ok(Step::Moved(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Step::Wait),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Step::Again),
        Err(e) => Err(e),
    }
}

/// Between a direction's chunks: wait for readiness when the read would have blocked;
/// otherwise yield now and then, because one event loop serves every connection and a
/// transfer that never has to wait must still let the others run.
#[derive(Default)]
pub(super) struct Pace(u8);

impl Pace {
    pub(super) async fn next(
        &mut self,
        must_wait: bool,
        ready: impl Future<Output = io::Result<()>>,
    ) -> io::Result<()> {
        if must_wait {
            self.0 = 0;
            return ready.await;
        }
        self.0 += 1;
        if self.0 == FAIR_SHARE {
            self.0 = 0;
            future::yield_now().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener, UdpSocket};

    fn pair(listen: Ipv4Addr, dial: Ipv4Addr) -> (TcpStream, TcpStream) {
        let l = TcpListener::bind((listen, 0)).unwrap();
        let c = TcpStream::connect((dial, l.local_addr().unwrap().port())).unwrap();
        (c, l.accept().unwrap().0)
    }

    #[test]
    fn senders_on_this_host_are_not_remote() {
        let (c, s) = pair(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST);
        assert!(!sender_is_remote(&c) && !sender_is_remote(&s));
        // This host's own address on the interface of its default route, when it has one (a
        // UDP connect only picks the source address; nothing is sent).
        let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        if udp.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).is_ok() {
            if let std::net::IpAddr::V4(own) = udp.local_addr().unwrap().ip() {
                let (c, s) = pair(Ipv4Addr::UNSPECIFIED, own);
                assert_eq!(c.peer_addr().unwrap().ip(), own);
                assert!(!sender_is_remote(&c) && !sender_is_remote(&s));
            }
        }
    }
}
