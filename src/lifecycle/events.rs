//! What the lifecycle loop receives, defined here so that the threads sending it (signal
//! handling, the Consul follower's sink) and the loop share it without importing each other.

use std::sync::mpsc::{self, Receiver, SyncSender};

use crate::consul::follow::Receipt;
use crate::mesh::snapshot::Snapshot;

/// Which follower of a `Source` a snapshot came from, counting from 1; each restart starts
/// the next one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Generation(pub u64);

/// Events sent to the lifecycle loop. Senders live on other threads (signal handling, Consul
/// watches); the channel is bounded. Signals also leave their request in `signals::Requests`,
/// which the loop reads first: their events are wake-ups and never lost to a full queue.
#[derive(Debug)]
pub enum Event {
    /// Read the configuration file again (SIGHUP).
    Reload,
    /// Stop accepting, drain, exit (SIGTERM, SIGINT).
    Shutdown,
    /// A complete new mesh state (Consul), from the follower of this generation, with the
    /// receipt to redeem once it serves (which saves it as last-known-good).
    Snapshot(Generation, Box<Snapshot>, Receipt),
}

/// Room for a few pending events: a Consul follower waits for room, signals never need it.
pub const EVENT_QUEUE: usize = 16;

pub fn channel() -> (SyncSender<Event>, Receiver<Event>) {
    mpsc::sync_channel(EVENT_QUEUE)
}
