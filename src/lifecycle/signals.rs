//! SIGHUP, SIGTERM and SIGINT, turned into requests to the lifecycle loop on a thread of their
//! own.
//!
//! A request is a flag, not a queued event: the event queue is bounded and Consul snapshots can
//! fill it, and a stop request lost there would leave systemd to SIGKILL us after
//! `TimeoutStopSec`. The flag is set first; then one event of its kind wakes the loop (a
//! blocking send: never dropped, at most one per kind in flight). The loop reads the flags
//! before every event it handles, so a stop waits behind no snapshot, and SIGHUPs that arrive
//! while a reload is pending add nothing to it. While a reload waits for its outcome (the
//! restarted Consul follower's first state), a stop still ends the wait at once and further
//! SIGHUPs stay pending for after it.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SendError, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use async_signal::{Signal, Signals};
use smol::stream::StreamExt;

use super::events::{Event, Generation};
use crate::consul::follow::Receipt;
use crate::mesh::snapshot::Snapshot;

/// What the signals asked for and the loop has not done yet.
#[derive(Debug, Default)]
pub struct Requests {
    shutdown: AtomicBool,
    reload: AtomicBool,
}

/// What the lifecycle loop does next.
#[derive(Debug)]
pub enum Step {
    Stop,
    Reload,
    /// A snapshot, from the Consul follower of this generation, and its receipt.
    Apply(Generation, Box<Snapshot>, Receipt),
}

impl Requests {
    /// Records a reload request (`false`) or a stop request (`true`) and wakes the loop.
    /// Err: the loop is gone.
    pub fn post(&self, shutdown: bool, events: &SyncSender<Event>) -> Result<(), SendError<Event>> {
        let (flag, wake) = if shutdown {
            (&self.shutdown, Event::Shutdown)
        } else {
            (&self.reload, Event::Reload)
        };
        if flag.swap(true, Ordering::SeqCst) {
            // Pending already: its wake-up is queued, or the loop has it and has yet to look.
            return Ok(());
        }
        events.send(wake)
    }

    /// Whether a stop (SIGTERM, SIGINT) is pending: for waits other than `next`.
    pub fn stop_requested(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Waits for the next thing to do: a stop request first, then a reload request, then
    /// the next snapshot. A closed channel stops the loop too.
    pub fn next(&self, events: &Receiver<Event>) -> Step {
        self.wait(events, true, None).unwrap_or(Step::Stop)
    }

    /// `next`, or `None` once `deadline` (if any) has passed.
    pub fn next_until(&self, events: &Receiver<Event>, deadline: Option<Instant>) -> Option<Step> {
        self.wait(events, true, deadline)
    }

    /// While a reload waits for its outcome: a stop request, or the next snapshot, or `None`
    /// once `deadline` has passed. Never `Step::Reload`: reload requests stay pending, for
    /// `next` once this reload is done.
    pub fn next_before(&self, events: &Receiver<Event>, deadline: Instant) -> Option<Step> {
        self.wait(events, false, Some(deadline))
    }

    fn wait(&self, events: &Receiver<Event>, reload: bool, until: Option<Instant>) -> Option<Step> {
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                return Some(Step::Stop);
            }
            if reload && self.reload.swap(false, Ordering::SeqCst) {
                return Some(Step::Reload);
            }
            let event = match until {
                None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(t) => events.recv_timeout(t.saturating_duration_since(Instant::now())),
            };
            match event {
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) | Ok(Event::Shutdown) => {
                    return Some(Step::Stop)
                }
                Ok(Event::Snapshot(g, s, r)) => return Some(Step::Apply(g, s, r)),
                // A wake-up: the flag (checked above) says whether the reload is still to do.
                Ok(Event::Reload) => {}
            }
        }
    }
}

/// Takes over the three signals now (so a SIGHUP that arrives before we are ready waits
/// for us instead of killing the process, its default action) and posts them as requests.
pub fn forward(events: SyncSender<Event>, requests: Arc<Requests>) -> io::Result<()> {
    let mut signals = Signals::new([Signal::Hup, Signal::Term, Signal::Int])?;
    std::thread::Builder::new()
        .name("sidegate-signals".into())
        .spawn(move || {
            smol::block_on(async {
                while let Some(signal) = signals.next().await {
                    let shutdown = match signal {
                        Ok(Signal::Hup) => false,
                        Ok(_) => true,
                        Err(e) => {
                            crate::warn!("signal handling failed: {e}");
                            continue;
                        }
                    };
                    if requests.post(shutdown, &events).is_err() {
                        return;
                    }
                }
            });
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::events::{channel, EVENT_QUEUE};
    use crate::mesh::snapshot::{Catalog, Here};
    use crate::mesh::Place;

    const FIRST: Generation = Generation(1);

    fn snapshot() -> Box<Snapshot> {
        Box::new(Snapshot {
            here: Here {
                place: Place::new("dc1", ""),
                namespace: "default".into(),
                trust_domain: "td.consul".into(),
            },
            identity: None,
            gateway: None,
            sidecar: None,
            config_entries: Default::default(),
            catalog: Catalog::default(),
        })
    }

    /// A queue filled with snapshots, as a busy Consul follower leaves it.
    fn full_queue() -> (SyncSender<Event>, Receiver<Event>) {
        let (tx, rx) = channel();
        for _ in 0..EVENT_QUEUE {
            tx.try_send(Event::Snapshot(FIRST, snapshot(), Receipt::none()))
                .unwrap();
        }
        assert!(
            tx.try_send(Event::Snapshot(FIRST, snapshot(), Receipt::none()))
                .is_err(),
            "not full"
        );
        (tx, rx)
    }

    type Posted = Result<(), SendError<Event>>;

    /// Posts a request from another thread, as the signal thread would, and returns once its
    /// flag is set: the poster is then blocked for room to send the wake-up.
    fn post_while_full<'s>(
        scope: &'s std::thread::Scope<'s, '_>,
        requests: &'s Requests,
        tx: &'s SyncSender<Event>,
        shutdown: bool,
    ) -> std::thread::ScopedJoinHandle<'s, Posted> {
        let poster = scope.spawn(move || requests.post(shutdown, tx));
        let flag = if shutdown {
            &requests.shutdown
        } else {
            &requests.reload
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !flag.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the request was never posted"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        poster
    }

    #[test]
    fn a_stop_request_is_not_lost_behind_a_full_queue() {
        let (tx, rx) = full_queue();
        let requests = Requests::default();
        std::thread::scope(|s| {
            let poster = post_while_full(s, &requests, &tx, true);
            // The loop stops at once, before any of the queued snapshots, and stays stopped.
            assert!(matches!(requests.next(&rx), Step::Stop));
            assert!(matches!(requests.next(&rx), Step::Stop));
            // The loop is gone: the wake-up still waiting for room is not sent.
            drop(rx);
            assert!(poster.join().unwrap().is_err());
        });
    }

    #[test]
    fn reload_requests_behind_a_full_queue_coalesce_into_one() {
        let (tx, rx) = full_queue();
        let requests = Requests::default();
        std::thread::scope(|s| {
            let poster = post_while_full(s, &requests, &tx, false);
            // Two more SIGHUPs find the request pending: nothing to send, nothing blocks.
            requests.post(false, &tx).unwrap();
            requests.post(false, &tx).unwrap();
            // The reload comes first, then every queued snapshot.
            assert!(matches!(requests.next(&rx), Step::Reload));
            for _ in 0..EVENT_QUEUE {
                assert!(matches!(requests.next(&rx), Step::Apply(..)));
            }
            // The first SIGHUP's wake-up found room meanwhile; it asks for nothing more.
            poster.join().unwrap().unwrap();
            tx.try_send(Event::Snapshot(FIRST, snapshot(), Receipt::none()))
                .unwrap();
            assert!(matches!(requests.next(&rx), Step::Apply(..)));
            requests.post(true, &tx).unwrap();
            assert!(matches!(requests.next(&rx), Step::Stop));
        });
    }
    /// Waiting for a reload's outcome: a SIGHUP meanwhile neither ends the wait nor is lost,
    /// a snapshot ends it, and so does a stop request (long before the deadline).
    #[test]
    fn a_wait_for_a_reloads_outcome_keeps_reloads_and_hears_stops() {
        use std::time::Duration;
        let (tx, rx) = channel();
        let requests = Requests::default();
        let far = Instant::now() + Duration::from_secs(600);
        requests.post(false, &tx).unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(
            requests.next_before(&rx, soon).is_none(),
            "only a SIGHUP came"
        );
        tx.try_send(Event::Snapshot(FIRST, snapshot(), Receipt::none()))
            .unwrap();
        assert!(matches!(
            requests.next_before(&rx, far),
            Some(Step::Apply(FIRST, ..))
        ));
        assert!(matches!(requests.next(&rx), Step::Reload), "kept for after");
        std::thread::scope(|s| {
            let poster = s.spawn(|| requests.post(true, &tx));
            assert!(matches!(requests.next_before(&rx, far), Some(Step::Stop)));
            poster.join().unwrap().unwrap();
        });
    }
}
