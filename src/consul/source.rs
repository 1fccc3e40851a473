//! The Consul source inside `sidegate run`: a follower whose snapshots arrive at the
//! lifecycle loop as `Event::Snapshot`, replaced by a new one when the configuration is
//! reloaded (a rotated token file, another address), with one `Status` for its whole life.

use std::io;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use super::follow::{follow, Follower, Options};
use super::status::Status;
use crate::config::Config;
use crate::lifecycle::Event;
use crate::mesh::snapshot::Snapshot;

pub struct Source {
    follower: Mutex<Option<Follower>>,
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
            events,
            status: Arc::new(Status::default()),
            options,
        };
        source.restart(config)?;
        Ok(Some(source))
    }

    /// Replaces the follower with one for `config` (on reload). The new one sends its first
    /// complete snapshot as soon as it has one; until then the running plan stays.
    pub fn restart(&self, config: &Config) -> io::Result<()> {
        let Some(settings) = config.consul.clone() else {
            return Err(io::Error::other(
                "the configuration no longer has [consul]; switching sources needs a restart",
            ));
        };
        let mut slot = self
            .follower
            .lock()
            .map_err(|_| io::Error::other("consul follower lock poisoned"))?;
        if let Some(old) = slot.take() {
            old.stop();
        }
        let events = self.events.clone();
        // Blocking send: a snapshot must never be dropped, and the follower may wait.
        let sink =
            Box::new(move |snap: Snapshot| events.send(Event::Snapshot(Box::new(snap))).is_ok());
        *slot = Some(follow(
            settings,
            config.snapshot.clone(),
            self.options,
            self.status.clone(),
            sink,
        )?);
        Ok(())
    }

    /// Freshness of the state served, for readiness and metrics.
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }
}

/// Waits for the first complete snapshot, to start serving with. `None`: a shutdown came
/// first. Reloads before it are ignored: nothing runs yet to reload.
pub fn first_snapshot(events: &Receiver<Event>) -> Option<Box<Snapshot>> {
    while let Ok(event) = events.recv() {
        match event {
            Event::Snapshot(s) => return Some(s),
            Event::Shutdown => return None,
            Event::Reload => crate::info!(
                "reload ignored: still waiting for the first state from the Consul agent"
            ),
        }
    }
    None
}
