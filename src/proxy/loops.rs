//! Several event loops (`[runtime] threads`), and how accepted connections are spread over
//! them.
//!
//! The first loop runs every listener's accept loop (and serves connections too); each other
//! loop only serves the connections the first hands it. A connection stays on the loop it is
//! handed to from accept to close: its deadlines, buffers and task are that loop's.
//!
//! One acceptor handing off, not a `SO_REUSEPORT` socket per loop, because:
//! - a listener is one socket, the one systemd's fd store keeps across restarts (`handover`)
//!   and socket activation passes; a group of N would not survive a restart with another N;
//! - closing one socket of a reuse-port group resets the connections waiting in its backlog,
//!   while closing our single copy (`stop_accepting`) leaves them waiting in systemd's copy for
//!   the next process;
//! - Unix-socket listeners have no reuse-port balancing at all;
//! - the connection limits are checked and counted on one thread, so they hold exactly for
//!   the process, without a check-then-count race between loops.
//!
//! The cost is one channel hop for a connection served by another loop. Measured against
//! every loop accepting on the one socket (`EPOLLEXCLUSIVE`), with and without handing off,
//! it made no difference to the CPU a short connection costs (tests/bench/RESULTS.md). A
//! connection is registered with the reactor of the loop that serves it (`reactor`), once it
//! is there.
//!
//! With one loop nothing is handed off: no channel, no extra thread, as before there were
//! several.

use std::cell::Cell;
use std::sync::Arc;

use smol::channel::{Receiver, Sender};
use smol::LocalExecutor;

use super::listener::{serve_upstream, Active, Conn};
use super::pending::Pending;
use super::reactor;
use super::{deadline, gateway, inbound, Serving};
use crate::metrics::{ConnStats, Metrics};

/// Which role serves a connection: the listener's, resolved under the plan it was accepted
/// under.
pub enum Role {
    Gateway,
    Inbound,
    /// The upstream at this index of the plan.
    Upstream(usize),
}

/// An accepted connection for a loop to serve: already counted (its `Active` guard) under
/// the plan current when it was accepted.
pub struct Handoff {
    pub serving: Arc<Serving>,
    pub role: Role,
    pub conn: Conn,
    pub active: Active,
}

/// What a loop other than the first is sent.
pub enum Work {
    Serve(Handoff),
    /// Answer at once: the loop still runs its tasks (systemd's watchdog).
    Ping(Sender<()>),
}

/// The loops a listener's connections go to, as the first loop sees them.
pub struct Spread {
    loops: Box<[Slot]>,
    /// Where the search for the least loaded loop starts next: ties go round.
    next: Cell<usize>,
}

struct Slot {
    /// `/metrics` `loop="N"`: `active` is what this loop holds now (counted when a connection
    /// is handed to it), `opened` what it has taken up (counted on the loop itself).
    stats: Arc<ConnStats>,
    /// `None` for the first loop, which serves its share itself.
    to: Option<Sender<Work>>,
}

impl Spread {
    /// The first loop (index 0) and the others, each with the channel it is sent work on.
    pub fn new(metrics: &Metrics, others: Vec<Sender<Work>>) -> Spread {
        let first = std::iter::once(None).chain(others.into_iter().map(Some));
        let loops = first
            .enumerate()
            .map(|(i, to)| Slot {
                stats: loop_stats(metrics, i),
                to,
            })
            .collect();
        Spread {
            loops,
            next: Cell::new(0),
        }
    }

    /// The loop that holds the fewest connections now (long-lived connections make that a
    /// better spread than turns alone), and its counters.
    pub fn pick(&self) -> (usize, Arc<ConnStats>) {
        let n = self.loops.len();
        let start = self.next.get();
        let mut best = (start % n, u64::MAX);
        for i in 0..n {
            let j = (start + i) % n;
            let held = self.loops.get(j).map_or(u64::MAX, |s| s.stats.active.get());
            if held < best.1 {
                best = (j, held);
            }
        }
        self.next.set((best.0 + 1) % n);
        let stats = self
            .loops
            .get(best.0)
            .map(|s| s.stats.clone())
            .unwrap_or_default();
        (best.0, stats)
    }

    /// Has loop `index` serve `handoff`: this loop itself, or another through its channel.
    pub fn hand(
        &self,
        index: usize,
        handoff: Handoff,
        ex: &LocalExecutor<'static>,
        pending: &Arc<Pending>,
    ) {
        match self.loops.get(index).and_then(|s| s.to.as_ref()) {
            None => serve(ex, handoff, pending),
            // Unbounded: the connections in flight are already within max_connections, so
            // the queue is too; a bounded one would stop every listener behind a busy loop.
            Some(to) => {
                if to.try_send(Work::Serve(handoff)).is_err() {
                    // Only while the process stops: the connection is closed as it drops.
                    crate::debug!(
                        "event loop {index} has stopped; closed a connection handed to it"
                    );
                }
            }
        }
    }
}

impl Spread {
    /// Ends the other loops once they have taken up what they were handed: the first loop
    /// calls this as it ends. Not left to dropping the senders: the accept loops' tasks hold
    /// them, and those tasks may outlive the loop's run (freed with the executor, or not).
    pub fn close(&self) {
        for to in self.loops.iter().filter_map(|s| s.to.as_ref()) {
            to.close();
        }
    }
}

/// Loop `index`'s counters in `metrics`.
pub fn loop_stats(metrics: &Metrics, index: usize) -> Arc<ConnStats> {
    metrics.loops.get(&[&index.to_string()])
}

/// Starts serving `handoff` on this loop.
pub fn serve(ex: &LocalExecutor<'static>, handoff: Handoff, pending: &Arc<Pending>) {
    let Handoff {
        serving,
        role,
        conn,
        active,
    } = handoff;
    active.on_loop().opened.inc();
    match (role, conn) {
        (Role::Gateway, Conn::Tcp(s, peer)) => {
            if let Some(s) = active.register(s, "gateway", &peer) {
                ex.spawn(gateway::accept(serving, s, peer, active, pending.clone()))
                    .detach();
            }
        }
        (Role::Inbound, Conn::Tcp(s, peer)) => {
            if let Some(s) = active.register(s, "inbound", &peer) {
                ex.spawn(inbound::accept(serving, s, peer, active)).detach();
            }
        }
        (Role::Upstream(index), conn) => {
            ex.spawn(serve_upstream(serving, index, conn, active))
                .detach();
        }
        (_, Conn::Unix(_)) => {}
    }
}

/// A loop other than the first: serves what it is handed until every sender is gone (the
/// first loop ended); dropping its executor then closes the connections it still holds.
pub fn other_loop(index: usize, work: Receiver<Work>, pending: Arc<Pending>) {
    let ex = LocalExecutor::new();
    // This loop's own deadline table needs its own sweeper.
    ex.spawn(deadline::sweeper()).detach();
    let ran = reactor::run(ex.run(async {
        while let Ok(w) = work.recv().await {
            match w {
                Work::Serve(handoff) => serve(&ex, handoff, &pending),
                Work::Ping(done) => {
                    let _ = done.try_send(());
                }
            }
        }
    }));
    match ran {
        Ok(()) => crate::debug!("event loop {index} stopped"),
        // What it was handed closes as the channel drops; the watchdog's pings go unanswered.
        Err(e) => crate::error!("event loop {index} failed: {e}"),
    }
}
