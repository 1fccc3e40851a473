//! The life of a `sidegate run` process: start serving a configuration, then react to events
//! until told to stop. Everything that changes what runs arrives here — a new snapshot from
//! Consul as an `Event` on one channel, a signal as a request in `signals::Requests` (woken by
//! an event on the same channel) — and is applied by this one thread, so the running plan has
//! exactly one writer.
//!
//! systemd hears of each step (`notify`): READY=1 once every listener and the admin endpoint
//! are bound, RELOADING=1 … READY=1 around a reload, STOPPING=1 when the drain begins, and
//! WATCHDOG=1 keep-alives for as long as every event loop answers. With `[consul]` a reload's
//! READY=1 waits (bounded) for the restarted follower's first state to be in service, so
//! that it means the new settings are in force — or says on its STATUS= line that the agent
//! has not confirmed them yet.
//! Each listening socket also goes to systemd's file-descriptor store as it is bound and
//! comes back from it at the next start (`proxy::handover`), so a restart refuses nothing.
//!
//! Its parts: `events` (what the loop receives, and the follower generations that tell a
//! replaced follower's snapshots apart), `signals` (signals turned into requests), `notify`
//! (systemd) and `follower` (the Consul follower's handle, restarted by a reload). They live
//! here, not in `consul`, so that `consul` needs nothing of the loop: data flows from the
//! configuration and the agent to the loop, never back.

pub mod events;
pub mod follower;
pub mod notify;
pub mod signals;

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::{Admin, Status};
use crate::config::{self, Operations};
use crate::consul::follow::Receipt;
use crate::mesh::snapshot::Snapshot;
use crate::mesh::{plan, Plan};
use crate::proxy::{self, BindError, ListenerKey, Running};
pub use events::{channel, Event, Generation, EVENT_QUEUE};
pub use follower::Source;
use notify::Notifier;
use signals::{Requests, Step};

/// The admin endpoint and what it reports, open before anything serves: with `[consul]` the
/// first state may take long (the agent down, nothing saved), and `/ready` and `/metrics`
/// (`sidegate_consul_watch_errors_total`) matter most then.
pub struct Reporting {
    status: Arc<Status>,
    admin: Option<Admin>,
}

impl Reporting {
    /// Binds `[admin] listen` (if set), reporting "no plan" until a plan serves.
    pub fn open(operations: &Operations) -> Result<Reporting, BindError> {
        let status = Arc::new(Status::new(Arc::new(crate::metrics::Metrics::default())));
        let admin = bind_admin(operations.admin, &status)?;
        Ok(Reporting { status, admin })
    }

    /// The Consul source's freshness, for `/ready` while waiting and after.
    pub fn follow(&self, source: &Source) {
        self.status.set_consul(source.status().clone());
    }
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
    consul: Option<Source>,
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
    /// A stop was asked for while the file was being read; nothing changed.
    Stopped,
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Config(e) => write!(f, "{e}"),
            ReloadError::Bind(e) => write!(f, "{e}"),
            ReloadError::Consul(e) => write!(f, "{e}"),
            ReloadError::Stopped => f.write_str("stopping: a stop was asked for during the reload"),
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
        crate::log::configure(operations.log_level, operations.log_format);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let threads = threads_of(&operations);
        let running = proxy::start_handing(plan, metrics, notifier.handover(), threads)?;
        let status = Arc::new(Status::new(running.metrics.clone()));
        // The plan before the endpoint: once it listens, /config and /ready answer for it
        // (a scraper that came between them was told "no plan").
        status.set_plan(running.plan());
        let admin = bind_admin(operations.admin, &status)?;
        Ok(Lifecycle::assemble(
            path, running, operations, status, admin, notifier,
        ))
    }

    /// `start` with the admin endpoint opened before (`Reporting::open`), while waiting for
    /// the Consul agent's first state: it answers `/ready` (503, with why) and `/metrics`
    /// from the start.
    pub fn start_reporting(
        path: PathBuf,
        plan: Plan,
        operations: Operations,
        notifier: Arc<Notifier>,
        reporting: Reporting,
    ) -> Result<Lifecycle, BindError> {
        let Reporting { status, admin } = reporting;
        let threads = threads_of(&operations);
        let running =
            proxy::start_handing(plan, status.metrics.clone(), notifier.handover(), threads)?;
        status.set_plan(running.plan());
        Ok(Lifecycle::assemble(
            path, running, operations, status, admin, notifier,
        ))
    }

    fn assemble(
        path: PathBuf,
        running: Running,
        operations: Operations,
        status: Arc<Status>,
        admin: Option<Admin>,
        notifier: Arc<Notifier>,
    ) -> Lifecycle {
        status.set_bind_failures(running.bind_failures.clone());
        Lifecycle {
            path,
            running,
            operations,
            status,
            admin,
            notifier,
            _watchdog: None,
            consul: None,
            generation: Generation::default(),
        }
    }

    pub fn running(&self) -> &Running {
        &self.running
    }

    /// Serves snapshots from this Consul source; reloads restart it with the new settings.
    /// Its freshness decides readiness (`/ready` is 503 while the state is stale).
    pub fn with_consul(mut self, source: Option<Source>) -> Lifecycle {
        if let Some(s) = &source {
            self.status.set_consul(s.status().clone());
            self.generation = s.generation();
        }
        self.consul = source;
        self
    }

    pub fn consul(&self) -> Option<&Source> {
        self.consul.as_ref()
    }

    /// Tells systemd it is ready, then handles requests and events until a shutdown, then
    /// drains. Returns how many connections the drain had to cut.
    pub fn serve(mut self, events: &Receiver<Event>, requests: &Requests) -> u64 {
        self.notifier.ready(&self.describe());
        self._watchdog = self.start_watchdog();
        let mut retry_at = None;
        loop {
            // Listeners of the plan in service that could not be bound are tried again
            // every `RETRY_EVERY` while the loop waits.
            if retry_at.is_none() && self.running.bind_failures.any() {
                retry_at = Some(Instant::now() + proxy::RETRY_EVERY);
            }
            let Some(step) = requests.next_until(events, retry_at) else {
                retry_at = None;
                if !self.running.retry_unbound().is_empty() {
                    self.notifier.status(&self.describe());
                }
                continue;
            };
            match step {
                Step::Reload => {
                    self.notifier.reloading();
                    let outcome = match self.reload_heeding(requests) {
                        Ok(()) => match self.awaited(events, requests) {
                            Some(status) => status,
                            None => break,
                        },
                        Err(ReloadError::Stopped) => break,
                        Err(_) => format!(
                            "reload failed, serving the previous configuration: {}",
                            self.describe()
                        ),
                    };
                    self.notifier.ready(&outcome);
                }
                Step::Apply(generation, snapshot, receipt) => {
                    if self.apply(generation, &snapshot, receipt).is_some() {
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
                Some(Step::Apply(generation, snapshot, receipt)) => {
                    if let Some(applied) = self.apply(generation, &snapshot, receipt) {
                        return Waited::Applied(applied);
                    }
                }
                // `next_before` leaves reload requests pending, for after this one.
                Some(Step::Reload) => {}
            }
        }
    }

    /// Serves a snapshot of the current Consul follower, and once it serves redeems its
    /// receipt (saving it as last-known-good): a state that failed to apply is never saved.
    /// `None`: it came from a follower a reload replaced (queued before it was retired) and is
    /// dropped — it answers settings no longer in force, and would undo the new follower's
    /// state.
    fn apply(
        &self,
        generation: Generation,
        snapshot: &Snapshot,
        receipt: Receipt,
    ) -> Option<Result<(), BindError>> {
        if generation != self.generation {
            crate::info!("consul: dropped a state sent before the reload restarted the follower");
            return None;
        }
        let applied = self.swap(plan(snapshot));
        match &applied {
            Ok(()) => receipt.in_service(),
            Err(e) => crate::error!("new mesh state not applied: {e}"),
        }
        Some(applied)
    }

    /// Reads the file again and swaps in its plan, admin endpoint and settings; on any error
    /// everything running stays as it was.
    pub fn reload(&mut self) -> Result<(), ReloadError> {
        self.reload_heeding(&Requests::default())
    }

    /// `reload`, given up on (`ReloadError::Stopped`) when a stop is asked for while the
    /// file is still being read.
    fn reload_heeding(&mut self, requests: &Requests) -> Result<(), ReloadError> {
        crate::info!("reloading {}", self.path.display());
        let path = self.path.clone();
        let result = read_apart(requests, &self.path, move || config::load(&path))
            .and_then(|config| self.try_reload(config));
        let m = &self.running.metrics.reloads;
        match &result {
            Ok(()) => m.ok.inc(),
            // Not a failed reload: the process is stopping.
            Err(ReloadError::Stopped) => {}
            Err(e) => {
                m.failed.inc();
                crate::error!("reload failed, still serving the previous configuration: {e}");
            }
        }
        result
    }

    fn try_reload(&mut self, config: config::Config) -> Result<(), ReloadError> {
        for w in &config.warnings {
            crate::warn!("{w}");
        }
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
        crate::log::configure(ops.log_level, ops.log_format);
        let (now, asked) = (self.running.threads(), threads_of(&ops));
        if asked != now {
            crate::warn!(
                "runtime.threads: threads = {asked} takes effect at the next restart; still serving on {now} event loops"
            );
        }
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
                Err(Unanswered(interval / 2))
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
        let unbound = self.running.bind_failures.unbound();
        if !unbound.is_empty() {
            let names: Vec<&str> = unbound.iter().map(|u| u.listener.as_str()).collect();
            parts.push(format!("NOT BOUND (retrying): {}", names.join(", ")));
        }
        format!("serving {}", parts.join("; "))
    }
}

/// The data path's event loop did not answer a ping within this long.
struct Unanswered(Duration);

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the event loop did not answer within {:?}", self.0)
    }
}

/// Runs `load` (reading the configuration and the files it names) on a thread of its own and
/// waits for it while watching for a stop request. This loop is the one that acts on SIGTERM:
/// a read that blocks — a hung network mount; FIFOs are refused before they are read — must
/// not keep it from stopping. A read that never ends leaves only its thread behind.
fn read_apart(
    requests: &Requests,
    path: &std::path::Path,
    load: impl FnOnce() -> Result<config::Config, config::LoadError> + Send + 'static,
) -> Result<config::Config, ReloadError> {
    let unread = |error| {
        ReloadError::Config(config::LoadError::Read {
            path: path.display().to_string(),
            error,
        })
    };
    /// How often the wait looks at the stop request; only while a reload reads.
    const LOOK: Duration = Duration::from_millis(50);
    let (done, read) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("sidegate-reload".into())
        .spawn(move || {
            let _ = done.send(load());
        })
        .map_err(unread)?;
    loop {
        match read.recv_timeout(LOOK) {
            Ok(loaded) => return loaded.map_err(ReloadError::Config),
            Err(mpsc::RecvTimeoutError::Timeout) if requests.stop_requested() => {
                crate::warn!("reload abandoned: a stop was asked for while the configuration was still being read");
                return Err(ReloadError::Stopped);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(unread(std::io::Error::other(
                    "the thread reading it ended without an answer",
                )))
            }
        }
    }
}

/// `[runtime] threads`, or the CPUs this process may use (up to 4).
fn threads_of(operations: &Operations) -> usize {
    operations.threads.unwrap_or_else(proxy::default_threads)
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
        tx.send(Event::Snapshot(OLD, state("stale"), Receipt::none()))
            .unwrap();
        // Nothing of the new follower's came: the wait ends at its deadline, the stale state
        // unapplied.
        let within = Duration::from_millis(200);
        assert!(matches!(
            l.await_generation(&rx, &requests, within),
            Waited::TimedOut
        ));
        assert_eq!(routed(&l), before);

        tx.send(Event::Snapshot(OLD, state("stale"), Receipt::none()))
            .unwrap();
        tx.send(Event::Snapshot(NEW, state("new"), Receipt::none()))
            .unwrap();
        let within = Duration::from_secs(600);
        assert!(matches!(
            l.await_generation(&rx, &requests, within),
            Waited::Applied(Ok(()))
        ));
        assert!(routed(&l).contains("new"), "{}", routed(&l));
        // After the wait too: the main loop drops it.
        assert!(l.apply(OLD, &state("stale"), Receipt::none()).is_none());
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

    /// A read that never ends (as on a hung mount) does not keep the loop from stopping: the
    /// wait gives up as soon as a stop is asked for.
    #[test]
    fn a_stop_ends_the_wait_for_a_configuration_read_that_hangs() {
        let (tx, _rx) = channel();
        let requests = Requests::default();
        let (_hold, hung) = mpsc::channel::<()>();
        let started = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                requests.post(true, &tx).unwrap();
            });
            let read = read_apart(&requests, std::path::Path::new("never"), move || {
                let _ = hung.recv();
                Err(config::LoadError::Read {
                    path: "never".into(),
                    error: std::io::Error::other("never"),
                })
            });
            assert!(matches!(read, Err(ReloadError::Stopped)), "{read:?}");
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        // A read that ends is the reload's, as before.
        let read = read_apart(&Requests::default(), std::path::Path::new("x"), || {
            config::parse("[mesh]\n").map_err(|errors| config::LoadError::Invalid {
                path: "x".into(),
                errors,
            })
        });
        assert!(matches!(read, Err(ReloadError::Config(_))), "{read:?}");
    }

    /// `[runtime] threads` is read at start; a reload asking for another number serves on
    /// (warned about), with the rest of the file applied.
    #[test]
    fn the_loops_are_started_as_configured_and_kept_by_a_reload() {
        let dir = std::env::temp_dir().join(format!("sidegate-loops-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        let head = "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"td.consul\"\n\
                    [gateway]\nlisten = [\"127.0.0.1:0\"]\n";
        std::fs::write(&path, format!("{head}[runtime]\nthreads = 3\n")).unwrap();
        let config = config::load(&path).unwrap();
        let notifier = Arc::new(Notifier::disabled());
        let started = Lifecycle::start(
            path.clone(),
            plan(&config.snapshot),
            config.operations,
            notifier,
        );
        let mut l = started.unwrap();
        assert_eq!(l.running().threads(), 3);
        std::fs::write(
            &path,
            format!("{head}[runtime]\nthreads = 1\n[shutdown]\ndrain_timeout_ms = 5\n"),
        )
        .unwrap();
        l.reload().unwrap();
        assert_eq!(
            l.running().threads(),
            3,
            "the loops are the process's to the end"
        );
        assert_eq!(l.operations.drain_timeout, Duration::from_millis(5));
        assert_eq!(l.drain(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
