//! Moving bytes both ways between two sockets until both sides are done.
//!
//! Half-close is kept: when one side stops sending, the other side's write half is shut and
//! the opposite direction carries on (a client may send a request, shut its write side and
//! still read the whole answer). A connection with no traffic either way for `idle` is closed.
//!
//! Bytes go through a pooled pipe with splice(2): socket to pipe to socket inside the kernel,
//! never copied through user space (a pooled buffer is the fallback when no pipe can be had).

use std::cell::Cell;
use std::future::Future;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use smol::io::AsyncWriteExt;
use smol::{future, Async, Timer};

use super::buffers::{Buf, Pipe};
use crate::metrics::Counter;

/// Chunks one direction may move before yielding to the other connections.
const FAIR_SHARE: u8 = 16;

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
/// added to the shared counters as they move, so a failed relay is still counted.
pub async fn relay(
    a: &Async<TcpStream>,
    b: &Async<TcpStream>,
    idle: Duration,
    a_to_b: &Counter,
    b_to_a: &Counter,
) -> io::Result<Relayed> {
    let flow = Flow::new();
    let both = future::try_zip(
        pump(a, b, a_to_b, &flow, &flow.a_to_b),
        pump(b, a, b_to_a, &flow, &flow.b_to_a),
    );
    future::or(both, flow.watchdog(idle)).await?;
    Ok(flow.relayed())
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
        loop {
            let deadline = self.last.get() + idle;
            if Instant::now() >= deadline {
                self.idled.set(true);
                return Ok(((), ()));
            }
            Timer::at(deadline).await;
        }
    }

    /// Counts `n` bytes moved in the direction whose count is `mine`.
    pub(super) fn moved(&self, total: &Counter, mine: &Cell<u64>, n: usize) {
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

/// One direction. Waits for readability without holding a pipe or buffer, so an idle
/// connection costs neither; one is held only while bytes move.
async fn pump(
    from: &Async<TcpStream>,
    to: &Async<TcpStream>,
    total: &Counter,
    flow: &Flow,
    mine: &Cell<u64>,
) -> io::Result<()> {
    let mut pace = Pace::default();
    loop {
        // Read first and wait only when nothing is there: waiting re-arms the socket in the
        // reactor (an epoll_ctl), which a busy transfer would otherwise pay on every chunk.
        let step = match Pipe::take() {
            Some(pipe) => splice_once(from, to, pipe).await?,
            None => copy_once(from, to).await?,
        };
        match step {
            Step::Eof => {
                // The peer has finished sending: pass the half-close on. The other side
                // may already be gone; that is not an error for this direction.
                let _ = to.get_ref().shutdown(Shutdown::Write);
                return Ok(());
            }
            Step::Moved(n) => flow.moved(total, mine, n),
            Step::Again | Step::Wait => {}
        }
        pace.next(step == Step::Wait, from.readable()).await?;
    }
}

/// What one read attempt of a direction came to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Moved(usize),
    Eof,
    /// Nothing to read until the socket is readable again.
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

/// One chunk through the kernel: whatever `from` has, into the pipe, then all of it to `to`.
async fn splice_once(
    from: &Async<TcpStream>,
    to: &Async<TcpStream>,
    mut pipe: Pipe,
) -> io::Result<Step> {
    let filled = step(pipe.fill(from.get_ref()))?;
    while !pipe.is_empty() {
        match pipe.drain(to.get_ref()) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One chunk through a pooled buffer, when no pipe can be had.
async fn copy_once(from: &Async<TcpStream>, to: &Async<TcpStream>) -> io::Result<Step> {
    let mut buf = Buf::take();
    let read = step(from.get_ref().read(buf.as_mut()))?;
    if let Step::Moved(n) = read {
        let mut writer = to;
        writer.write_all(&buf.as_mut()[..n]).await?;
    }
    Ok(read)
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
