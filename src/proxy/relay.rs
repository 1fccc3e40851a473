//! Moving bytes both ways between two sockets until both sides are done.
//!
//! Half-close is kept: when one side stops sending, the other side's write half is shut and
//! the opposite direction carries on (a client may send a request, shut its write side and
//! still read the whole answer). A connection with no traffic either way for `idle` is closed.

use std::cell::Cell;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use smol::io::AsyncWriteExt;
use smol::{future, Async, Timer};

use super::buffers::Buf;
use crate::metrics::Tally;

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
    a_to_b: Tally<'_>,
    b_to_a: Tally<'_>,
) -> io::Result<Relayed> {
    let flow = Flow::new();
    let both = future::try_zip(
        pump(a, b, a_to_b, &flow.a_to_b, &flow.last),
        pump(b, a, b_to_a, &flow.b_to_a, &flow.last),
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

/// One direction. Waits for readability without holding a buffer, so an idle connection
/// costs no buffer memory; a pooled buffer is held only while bytes move.
async fn pump(
    from: &Async<TcpStream>,
    to: &Async<TcpStream>,
    total: Tally<'_>,
    mine: &Cell<u64>,
    last: &Cell<Instant>,
) -> io::Result<()> {
    let mut since_wait = 0u8;
    loop {
        // Read first and wait only when nothing is there: waiting re-arms the socket in the
        // reactor (an epoll_ctl), which a busy transfer would otherwise pay on every chunk.
        // The buffer lives in this block only, so it is neither held nor laid out in the
        // future across the wait below.
        let must_wait = {
            let mut buf = Buf::take();
            match from.get_ref().read(buf.as_mut()) {
                Ok(0) => {
                    // The peer has finished sending: pass the half-close on. The other side
                    // may already be gone; that is not an error for this direction.
                    let _ = to.get_ref().shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => {
                    let mut writer = to;
                    writer.write_all(&buf.as_mut()[..n]).await?;
                    total.add(n as u64);
                    mine.set(mine.get() + n as u64);
                    last.set(Instant::now());
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                Err(e) => return Err(e),
            }
        };
        if must_wait {
            since_wait = 0;
            from.readable().await?;
        } else {
            // One event loop serves every connection: a transfer that never has to wait
            // must still let the others run.
            since_wait += 1;
            if since_wait == FAIR_SHARE {
                since_wait = 0;
                future::yield_now().await;
            }
        }
    }
}
