//! The Consul follower's handle inside `sidegate run`: a follower whose snapshots arrive at the
//! lifecycle loop as `Event::Snapshot`, replaced by a new one when the configuration is
//! reloaded (a rotated token file, another address), with one `Status` for its whole life.
//! Each follower has a `Generation`, carried by every snapshot it sends: what a replaced one
//! left in the queue is told apart from the new one's answers.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::events::{Event, Generation};
use crate::config::Config;
use crate::consul::follow::{prepare_deferred, Follower, Options, Receipt};
use crate::consul::status::Status;
use crate::consul::stop::Stop;
use crate::mesh::snapshot::Snapshot;

/// How long a follower waits before trying a full event queue again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(50);
/// Past the start-up grace, a follower sends what it has at its next look (every 250 ms);
/// this leaves room for that look on a busy or emulated host.
const AFTER_GRACE: Duration = Duration::from_secs(1);

pub struct Source {
    /// The follower, and the flag that retires its sink when it is replaced.
    follower: Mutex<Option<(Follower, Arc<Stop>)>>,
    /// The generation of the follower in `follower`.
    generation: AtomicU64,
    events: SyncSender<Event>,
    status: Arc<Status>,
    options: Options,
}

impl Source {
    /// Starts following the agent `config` names; `None` for a file-source configuration.
    pub fn start(
        config: &Config,
        events: SyncSender<Event>,
        options: Options,
    ) -> io::Result<Option<Source>> {
        if config.consul.is_none() {
            return Ok(None);
        }
        let source = Source {
            follower: Mutex::new(None),
            generation: AtomicU64::new(0),
            events,
            status: Arc::new(Status::default()),
            options,
        };
        source.restart(config)?;
        Ok(Some(source))
    }

    /// Replaces the follower with one for `config` (on reload) and returns its generation.
    /// The new one sends its first complete snapshot as soon as it has one (or, with only a
    /// saved state, within `first_snapshot_within`); until then the running plan stays.
    pub fn restart(&self, config: &Config) -> io::Result<Generation> {
        let Some(settings) = config.consul.clone() else {
            return Err(io::Error::other(
                "the configuration no longer has [consul]; switching sources needs a restart",
            ));
        };
        // sidecar_for: which registration, looked up once per start or reload.
        let settings =
            crate::consul::preflight::resolve_sidecar_for(settings).map_err(io::Error::other)?;
        let mut slot = self
            .follower
            .lock()
            .map_err(|_| io::Error::other("consul follower lock poisoned"))?;
        let events = self.events.clone();
        let retired = Arc::new(Stop::default());
        let flag = retired.clone();
        let generation = Generation(self.generation.load(Ordering::SeqCst) + 1);
        let sink = Box::new(move |snap: Snapshot, receipt: Receipt| {
            deliver(&events, generation, snap, receipt, &flag)
        });
        // Prepared before the old one stops: if it cannot be, the old one goes on following.
        let next = prepare_deferred(
            settings,
            config.snapshot.clone(),
            self.options,
            self.status.clone(),
            sink,
        )?;
        if let Some((old, retired)) = slot.take() {
            // Retired first: an old follower waiting for room in the queue gives up at once,
            // so stopping it never waits on the loop that is running this reload. Stopped
            // before the new one starts, so the two never write the saved state at once.
            retired.stop();
            old.stop();
        }
        let follower = next.start();
        *slot = Some((follower, retired));
        self.generation.store(generation.0, Ordering::SeqCst);
        Ok(generation)
    }

    /// The generation of the follower running now: snapshots of older ones are stale.
    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::SeqCst))
    }

    /// How long a new follower may take to send its first snapshot when the agent answers,
    /// or the saved state is there to serve: past this, the agent has not confirmed it.
    pub fn first_snapshot_within(&self) -> Duration {
        self.options.startup_grace + AFTER_GRACE
    }

    /// Freshness of the state served, for readiness and metrics.
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }
}

/// Hands a snapshot to the loop. A snapshot is never dropped: when the queue is full the
/// follower waits for room — unless it was retired meanwhile, or the loop is gone.
fn deliver(
    events: &SyncSender<Event>,
    generation: Generation,
    snap: Snapshot,
    receipt: Receipt,
    retired: &Stop,
) -> bool {
    let mut event = Event::Snapshot(generation, Box::new(snap), receipt);
    loop {
        if retired.is_stopped() {
            return false;
        }
        match events.try_send(event) {
            Ok(()) => return true,
            Err(TrySendError::Full(back)) => {
                event = back;
                // Retiring wakes this wait: a reload never waits on a full queue.
                retired.wait(QUEUE_FULL_PAUSE);
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
    }
}

/// Waits for the first complete snapshot, to start serving with. `None`: a shutdown came
/// first. A reload requested meanwhile stays pending in `signals::Requests` and runs once
/// serving: the file may have changed since it was read (a token file fixed because the
/// agent refused the old one).
pub fn first_snapshot(events: &Receiver<Event>) -> Option<(Box<Snapshot>, Receipt)> {
    while let Ok(event) = events.recv() {
        match event {
            Event::Snapshot(_, s, r) => return Some((s, r)),
            Event::Shutdown => return None,
            Event::Reload => crate::info!(
                "reload requested while waiting for the first state from the Consul agent; it will run once serving"
            ),
        }
    }
    None
}
