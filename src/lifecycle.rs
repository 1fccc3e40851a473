//! The life of a `sidegate run` process: start serving a configuration, then react to events
//! until told to stop. Everything that changes what runs arrives here as an `Event` on one
//! channel — a signal, a new snapshot from Consul — and is applied by this one thread, so the
//! running plan has exactly one writer.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Duration;

use crate::config;
use crate::mesh::snapshot::Snapshot;
use crate::mesh::{plan, Plan};
use crate::proxy::{self, BindError, Running};

/// How long live connections may take to finish after a stop request, unless configured.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Events sent to the lifecycle loop. Senders live on other threads (signal handling, Consul
/// watches); the channel is bounded, and a full channel means a change is already pending.
#[derive(Debug)]
pub enum Event {
    /// Read the configuration file again (SIGHUP).
    Reload,
    /// Stop accepting, drain, exit (SIGTERM, SIGINT).
    Shutdown,
    /// A complete new mesh state (Consul).
    Snapshot(Box<Snapshot>),
}

/// Room for a few pending events; senders use `try_send` and drop extras of the same kind.
const EVENT_QUEUE: usize = 16;

pub fn channel() -> (SyncSender<Event>, Receiver<Event>) {
    mpsc::sync_channel(EVENT_QUEUE)
}

/// A serving process: the file it was started from and what it serves.
pub struct Lifecycle {
    path: PathBuf,
    running: Running,
    drain_timeout: Duration,
}

/// Why a reload left the running plan in place.
#[derive(Debug)]
pub enum ReloadError {
    Config(config::LoadError),
    Bind(BindError),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Config(e) => write!(f, "{e}"),
            ReloadError::Bind(e) => write!(f, "{e}"),
        }
    }
}

impl Lifecycle {
    /// Binds every listener of `plan` (made from the file at `path`) and starts serving it.
    pub fn start(path: PathBuf, plan: Plan) -> Result<Lifecycle, BindError> {
        let running = proxy::start(plan)?;
        Ok(Lifecycle {
            path,
            running,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        })
    }

    pub fn running(&self) -> &Running {
        &self.running
    }

    /// Handles events until a shutdown, then drains. Returns how many connections the drain
    /// had to cut.
    pub fn serve(self, events: &Receiver<Event>) -> u64 {
        while let Ok(event) = events.recv() {
            match event {
                Event::Reload => {
                    let _ = self.reload();
                }
                Event::Snapshot(snapshot) => {
                    if let Err(e) = self.swap(plan(&snapshot)) {
                        crate::error!("new mesh state not applied: {e}");
                    }
                }
                Event::Shutdown => break,
            }
        }
        self.drain()
    }

    /// Reads the file again and swaps in its plan; on any error the running plan stays.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let result = config::load(&self.path)
            .map_err(ReloadError::Config)
            .and_then(|c| self.swap(plan(&c.snapshot)).map_err(ReloadError::Bind));
        let m = &self.running.metrics.reloads;
        match &result {
            Ok(()) => m.ok.inc(),
            Err(e) => {
                m.failed.inc();
                crate::error!("reload failed, still serving the previous configuration: {e}");
            }
        }
        result
    }

    fn swap(&self, plan: Plan) -> Result<(), BindError> {
        for w in &plan.warnings {
            crate::warn!("{w}");
        }
        let applied = self.running.apply(plan)?;
        crate::info!(
            "new plan in service: {} listeners kept, {} opened, {} closed",
            applied.kept,
            applied.opened.len(),
            applied.closed.len()
        );
        Ok(())
    }

    /// Stops accepting and lets live connections finish for up to the drain timeout.
    pub fn drain(self) -> u64 {
        let open = self.running.active();
        crate::info!(
            "stopping: {open} connections open, waiting up to {:?} for them",
            self.drain_timeout
        );
        let cut = self.running.drain(self.drain_timeout);
        if cut > 0 {
            crate::warn!("drain timeout reached: closed {cut} connections");
        }
        cut
    }
}
