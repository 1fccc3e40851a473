//! The life of a `sidegate run` process: start serving a configuration, then react to events
//! until told to stop. Everything that changes what runs arrives here — a new snapshot from
//! Consul as an `Event` on one channel, a signal as a request in `signals::Requests` (woken by
//! an event on the same channel) — and is applied by this one thread, so the running plan has
//! exactly one writer.
//!
//! systemd hears of each step (`notify`): READY=1 once every listener and the admin endpoint
//! are bound, RELOADING=1 … READY=1 around a reload, STOPPING=1 when the drain begins, and
//! WATCHDOG=1 keep-alives for as long as the event loop answers. With `[consul]` a reload's
//! READY=1 waits (bounded) for the restarted follower's first state to be in service, so
//! that it means the new settings are in force — or says on its STATUS= line that the agent
//! has not confirmed them yet.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::{Admin, Status};
use crate::config::{self, Operations};
use crate::consul::source::Generation;
use crate::mesh::snapshot::Snapshot;
use crate::mesh::{plan, Plan};
use crate::notify::{self, Notifier};
use crate::proxy::{self, BindError, ListenerKey, Running};
use crate::signals::{Requests, Step};

/// Events sent to the lifecycle loop. Senders live on other threads (signal handling, Consul
/// watches); the channel is bounded. Signals also leave their request in `signals::Requests`,
/// which the loop reads first: their events are wake-ups and never lost to a full queue.
#[derive(Debug)]
pub enum Event {
    /// Read the configuration file again (SIGHUP).
    Reload,
    /// Stop accepting, drain, exit (SIGTERM, SIGINT).
    Shutdown,
    /// A complete new mesh state (Consul), from the follower of this generation.
    Snapshot(Generation, Box<Snapshot>),
}

/// Room for a few pending events: a Consul follower waits for room, signals never need it.
pub const EVENT_QUEUE: usize = 16;

pub fn channel() -> (SyncSender<Event>, Receiver<Event>) {
    mpsc::sync_channel(EVENT_QUEUE)
}

/// A serving process: the file it was started from and what it serves.
pub struct Lifecycle {
    path: PathBuf,
    running: Running,
    operations: Operations,
    status: Arc<Status>,
    admin: Option<Admin>,
    notifier: Arc<Notifier>,
    /// Dropping it ends the watchdog thread.
    _watchdog: Option<mpsc::Sender<()>>,
    /// With `[consul]`: the follower sending snapshots; a reload restarts it.
    consul: Option<crate::consul::Source>,
    /// The generation of that follower: snapshots an older one left queued are dropped.
    generation: Generation,
}

/// How waiting for a restarted follower's first snapshot ended.
enum Waited {
    Applied(Result<(), BindError>),
    TimedOut,
    Stop,
}

/// Why a reload left the running plan in place.
#[derive(Debug)]
pub enum ReloadError {
    Config(config::LoadError),
    Bind(BindError),
    Consul(std::io::Error),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Config(e) => write!(f, "{e}"),
            ReloadError::Bind(e) => write!(f, "{e}"),
            ReloadError::Consul(e) => write!(f, "{e}"),
        }
    }
}

impl Lifecycle {
    /// Binds every listener of `plan` (made from the file at `path`) and the admin endpoint,
    /// and starts serving; `serve` then tells systemd it is ready.
    pub fn start(
        path: PathBuf,
        plan: Plan,
        operations: Operations,
        notifier: Arc<Notifier>,
    ) -> Result<Lifecycle, BindError> {
        crate::log::configure(operations.log_level);
        let running = proxy::start(plan)?;
        let status = Arc::new(Status::new(running.metrics.clone()));
        // The plan before the endpoint: once it listens, /config and /ready answer for it
        // (a scraper that came between them was told "no plan").
        status.set_plan(running.plan());
        let admin = bind_admin(operations.admin, &status)?;
        Ok(Lifecycle {
            path,
            running,
            operations,
            status,
            admin,
            notifier,
            _watchdog: None,
            consul: None,
            generation: Generation::default(),
        })
    }

    pub fn running(&self) -> &Running {
        &self.running
    }

    /// Serves snapshots from this Consul source; reloads restart it with the new settings.
    /// Its freshness decides readiness (`/ready` is 503 while the state is stale).
    pub fn with_consul(mut self, source: Option<crate::consul::Source>) -> Lifecycle {
        if let Some(s) = &source {
            self.status.set_consul(s.status().clone());
            self.generation = s.generation();
        }
        self.consul = source;
        self
    }

    pub fn consul(&self) -> Option<&crate::consul::Source> {
        self.consul.as_ref()
    }

    /// Tells systemd it is ready, then handles requests and events until a shutdown, then
    /// drains. Returns how many connections the drain had to cut.
    pub fn serve(mut self, events: &Receiver<Event>, requests: &Requests) -> u64 {
        self.notifier.ready(&self.describe());
        self._watchdog = self.start_watchdog();
        loop {
            match requests.next(events) {
                Step::Reload => {
                    self.notifier.reloading();
                    let outcome = match self.reload() {
                        Ok(()) => match self.awaited(events, requests) {
                            Some(status) => status,
                            None => break,
                        },
                        Err(_) => format!(
                            "reload failed, serving the previous configuration: {}",
                            self.describe()
                        ),
                    };
                    self.notifier.ready(&outcome);
                }
                Step::Apply(generation, snapshot) => {
                    if self.apply(generation, &snapshot).is_some() {
                        self.notifier.status(&self.describe());
                    }
                }
                Step::Stop => break,
            }
        }
        self.drain()
    }

    /// After a reload: with `[consul]`, waits for the restarted follower's first snapshot
    /// and applies it, for up to the time it may take to send one; gives the STATUS= line
    /// for the reload's READY=1. `None`: a stop request came meanwhile (it ends the wait at
    /// once).
    fn awaited(&self, events: &Receiver<Event>, requests: &Requests) -> Option<String> {
        let Some(consul) = &self.consul else {
            return Some(self.describe());
        };
        let (within, freshness) = (consul.first_snapshot_within(), consul.status().clone());
        let unconfirmed = |served: &str| {
            format!(
                "reloaded, but the new [consul] settings are not confirmed by the agent yet; serving {served}: {}",
                self.describe()
            )
        };
        let status = match self.await_generation(events, requests, within) {
            Waited::Stop => return None,
            Waited::Applied(Ok(())) if !freshness.is_stale() => self.describe(),
            // The new follower serves its saved state: the agent it follows did not answer.
            Waited::Applied(Ok(())) => unconfirmed("the last-known-good state"),
            Waited::Applied(Err(e)) => format!(
                "reloaded, but the new state from the Consul agent was not applied ({e}); serving the previous plan: {}",
                self.describe()
            ),
            Waited::TimedOut => {
                crate::warn!("consul: no state from the agent within {within:?} of the reload; serving the previous one until it comes");
                unconfirmed("the previous state")
            }
        };
        Some(status)
    }

    /// Waits up to `within` for the first snapshot of the current follower and applies it;
    /// older followers' snapshots are dropped on the way.
    fn await_generation(
        &self,
        events: &Receiver<Event>,
        requests: &Requests,
        within: Duration,
    ) -> Waited {
        let deadline = Instant::now() + within;
        loop {
            match requests.next_before(events, deadline) {
                None => return Waited::TimedOut,
                Some(Step::Stop) => return Waited::Stop,
                Some(Step::Apply(generation, snapshot)) => {
                    if let Some(applied) = self.apply(generation, &snapshot) {
                        return Waited::Applied(applied);
                    }
                }
                // `next_before` leaves reload requests pending, for after this one.
                Some(Step::Reload) => {}
            }
        }
    }

    /// Serves a snapshot of the current Consul follower. `None`: it came from a follower a
    /// reload replaced (queued before it was retired) and is dropped — it answers settings
    /// no longer in force, and would undo the new follower's state.
    fn apply(&self, generation: Generation, snapshot: &Snapshot) -> Option<Result<(), BindError>> {
        if generation != self.generation {
            crate::info!("consul: dropped a state sent before the reload restarted the follower");
            return None;
        }
        let applied = self.swap(plan(snapshot));
        if let Err(e) = &applied {
            crate::error!("new mesh state not applied: {e}");
        }
        Some(applied)
    }

    /// Reads the file again and swaps in its plan, admin endpoint and settings; on any error
    /// everything running stays as it was.
    pub fn reload(&mut self) -> Result<(), ReloadError> {
        crate::info!("reloading {}", self.path.display());
        let result = self.try_reload();
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

    fn try_reload(&mut self) -> Result<(), ReloadError> {
        let config = config::load(&self.path).map_err(ReloadError::Config)?;
        let ops = config.operations.clone();
        // The admin endpoint first: binding it is the step that can still fail, and a new one
        // that cannot be bound must leave the old plan in place too.
        let new_admin = if ops.admin == self.operations.admin {
            None
        } else {
            Some(bind_admin(ops.admin, &self.status).map_err(ReloadError::Bind)?)
        };
        match (&self.consul, config.consul.is_some()) {
            (None, false) => self
                .swap(plan(&config.snapshot))
                .map_err(ReloadError::Bind)?,
            // The agent's state is unchanged by the file: follow it again with the new
            // settings (token, address, [gateway] knobs); the new follower sends a snapshot.
            (Some(source), true) => {
                self.generation = source.restart(&config).map_err(ReloadError::Consul)?;
            }
            _ => {
                return Err(ReloadError::Consul(std::io::Error::other(
                    "switching between the file and [consul] as the source needs a restart",
                )))
            }
        }
        if let Some(admin) = new_admin {
            // The old endpoint (if any) closes as it is replaced.
            self.admin = admin;
        }
        crate::log::configure(ops.log_level);
        self.operations = ops;
        Ok(())
    }

    fn swap(&self, plan: Plan) -> Result<(), BindError> {
        for w in &plan.warnings {
            crate::warn!("{w}");
        }
        let applied = self.running.apply(plan)?;
        self.status.set_plan(self.running.plan());
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
        let grace = self.operations.drain_timeout;
        self.status.set_draining();
        // Every listener is closed before systemd and the log hear of the drain: once they
        // say "draining", no port of ours accepts (in whatever order the loop closed them).
        self.running.stop_accepting();
        let open = self.running.active();
        self.notifier
            .stopping(&format!("draining {open} connections for up to {grace:?}"));
        crate::info!("draining: {open} connections open, waiting up to {grace:?} for them");
        let Lifecycle { running, admin, .. } = self;
        let cut = running.drain(grace);
        match cut {
            0 => crate::info!("drained: every connection finished"),
            1 => crate::warn!("drain: grace period over, cut 1 connection"),
            n => crate::warn!("drain: grace period over, cut {n} connections"),
        }
        drop(admin);
        cut
    }

    /// Keep-alives at half of `WATCHDOG_USEC`, each sent only once the event loop has answered
    /// a ping: a wedged loop stops them and systemd restarts the service.
    fn start_watchdog(&self) -> Option<mpsc::Sender<()>> {
        let interval = notify::watchdog_interval()?;
        if !self.notifier.is_enabled() {
            return None;
        }
        let (stop, stopped) = mpsc::channel();
        let pinger = self.running.pinger();
        let alive = move || {
            if pinger.ping(interval / 2) {
                Ok(())
            } else {
                Err(format!(
                    "the event loop did not answer within {:?}",
                    interval / 2
                ))
            }
        };
        match notify::spawn_watchdog(self.notifier.clone(), interval, alive, stopped) {
            Ok(_) => Some(stop),
            Err(e) => {
                crate::error!("cannot start the watchdog thread: {e}");
                None
            }
        }
    }

    /// What runs, for systemd's STATUS= line (`systemctl status`).
    fn describe(&self) -> String {
        let plan = self.running.plan();
        let at = |key: &ListenerKey| {
            self.running
                .local_addr(key)
                .map_or_else(|| key.to_string(), |a| format!("{} {a}", key.role()))
        };
        let mut parts: Vec<String> = Vec::new();
        if let Some(gw) = &plan.gateway {
            let listen: Vec<String> = gw
                .settings
                .listen
                .iter()
                .map(|a| at(&ListenerKey::Gateway(*a)))
                .collect();
            parts.push(format!(
                "{} ({} routes)",
                listen.join(", "),
                gw.routes.routes().len()
            ));
        }
        if let Some(inb) = &plan.inbound {
            parts.push(at(&ListenerKey::Inbound(inb.listen)));
        }
        if !plan.upstreams.is_empty() {
            let names: Vec<&str> = plan
                .upstreams
                .iter()
                .map(|u| u.destination_name.as_str())
                .collect();
            parts.push(format!("upstream {}", names.join(", ")));
        }
        if let Some(admin) = &self.admin {
            parts.push(format!("admin {}", admin.addr));
        }
        format!("serving {}", parts.join("; "))
    }
}

fn bind_admin(
    addr: Option<std::net::SocketAddr>,
    status: &Arc<Status>,
) -> Result<Option<Admin>, BindError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    Admin::start(addr, status.clone())
        .map(Some)
        .map_err(|error| BindError {
            listener: "the admin endpoint".into(),
            addr: Some(addr),
            error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::Requests;

    const OLD: Generation = Generation(1);
    const NEW: Generation = Generation(2);

    /// A gateway routing one service, `name`: the states these tests tell apart.
    fn config_of(name: &str) -> config::Config {
        let toml = format!(
            "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"td.consul\"\n\
             [gateway]\nlisten = [\"127.0.0.1:0\"]\n\
             [[catalog.services]]\nname = \"{name}\"\ninstances = [\"127.0.0.1:9\"]\n"
        );
        config::parse(&toml).unwrap()
    }

    fn state(name: &str) -> Box<Snapshot> {
        Box::new(config_of(name).snapshot)
    }

    /// Serving `old` as the follower of generation `NEW`, just restarted by a reload.
    fn restarted() -> Lifecycle {
        let config = config_of("old");
        let notifier = Arc::new(Notifier::disabled());
        let mut l = Lifecycle::start(
            PathBuf::from("unused.toml"),
            plan(&config.snapshot),
            config.operations,
            notifier,
        )
        .unwrap();
        l.generation = NEW;
        l
    }

    /// The service the running gateway routes.
    fn routed(l: &Lifecycle) -> String {
        let plan = l.running.plan();
        let mut routes = plan.gateway.as_ref().unwrap().routes.routes();
        assert_eq!(routes.len(), 1);
        routes.next().unwrap().target.to_owned()
    }

    #[test]
    fn a_state_queued_by_a_replaced_follower_is_dropped_not_taken_for_the_new_one() {
        let l = restarted();
        let before = routed(&l);
        let (tx, rx) = channel();
        let requests = Requests::default();
        tx.send(Event::Snapshot(OLD, state("stale"))).unwrap();
        // Nothing of the new follower's came: the wait ends at its deadline, the stale state
        // unapplied.
        let within = Duration::from_millis(200);
        assert!(matches!(
            l.await_generation(&rx, &requests, within),
            Waited::TimedOut
        ));
        assert_eq!(routed(&l), before);

        tx.send(Event::Snapshot(OLD, state("stale"))).unwrap();
        tx.send(Event::Snapshot(NEW, state("new"))).unwrap();
        let within = Duration::from_secs(600);
        assert!(matches!(
            l.await_generation(&rx, &requests, within),
            Waited::Applied(Ok(()))
        ));
        assert!(routed(&l).contains("new"), "{}", routed(&l));
        // After the wait too: the main loop drops it.
        assert!(l.apply(OLD, &state("stale")).is_none());
        assert!(routed(&l).contains("new"), "{}", routed(&l));
        l.drain();
    }

    #[test]
    fn a_stop_request_ends_the_wait_for_the_new_followers_state() {
        let l = restarted();
        let (tx, rx) = channel();
        let requests = Requests::default();
        std::thread::scope(|s| {
            let poster = s.spawn(|| requests.post(true, &tx));
            // Long before the deadline; nothing is applied.
            let within = Duration::from_secs(600);
            assert!(matches!(
                l.await_generation(&rx, &requests, within),
                Waited::Stop
            ));
            poster.join().unwrap().unwrap();
        });
        assert!(routed(&l).contains("old"));
        l.drain();
    }
}
