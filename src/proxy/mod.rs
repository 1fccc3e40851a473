//! The data path: listeners and the per-connection pipelines, on `[runtime] threads` event
//! loop threads (`loops`: the first accepts, every loop serves).
//!
//! The loop serves one current plan at a time. A new plan is swapped in whole: listeners it
//! adds are bound first (so a taken port fails the swap, not the process), listeners it drops
//! are closed, listeners it keeps are left alone. Each connection keeps the plan it was
//! accepted under to its end, so a reload never cuts one. At start, an upstream listener that
//! cannot be bound is the exception: the rest serves and it is retried (`unbound`).

mod buffers;
mod cpus;
mod deadline;
mod dial;
mod gateway;
pub mod handover;
mod handshake;
mod inbound;
mod listener;
mod loops;
mod pending;
mod reactor;
mod relay;
mod serving;
mod tls_relay;
mod unbound;
mod upstream;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smol::channel::{self, Receiver, Sender};
use smol::{LocalExecutor, Task};

use crate::mesh::Plan;
use crate::metrics::Metrics;
pub use cpus::{default_threads, usable_cpus, DEFAULT_MAX_THREADS};
pub use handover::Handover;
pub use listener::{BindKey, ListenerKey};
use listener::{Bound, Shared};
use loops::{Spread, Work};
use pending::Pending;
pub use serving::Serving;
pub use unbound::{BindFailures, Unbound, RETRY_EVERY};

/// A running sidegate: where it listens, and how to change or stop what it serves. Tests
/// start one on port 0.
pub struct Running {
    /// Bound at start (`apply` reports later changes).
    pub gateway_addrs: Vec<SocketAddr>,
    /// TCP upstream listeners at start, in plan order (Unix ones are at their paths).
    pub upstream_addrs: Vec<SocketAddr>,
    pub inbound_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    /// Upstream listeners of the plan in service that could not be bound, retried.
    pub bind_failures: Arc<BindFailures>,
    /// The sockets systemd passed and keeps for us (`handover`).
    handover: Arc<Handover>,
    state: Mutex<State>,
    control: Option<Sender<Control>>,
    thread: Option<JoinHandle<()>>,
    /// The loops other than the first, each with the channel it is handed connections on
    /// (weakly: the first loop holds the senders, so they end with it).
    others: Vec<(JoinHandle<()>, channel::WeakSender<Work>)>,
}

/// The caller's view of what the loop serves; changed only together with the loop.
struct State {
    /// The plan in service, with its runtime part.
    serving: Arc<Serving>,
    /// Every open listener and, for TCP ones, the address it is bound to.
    listeners: HashMap<ListenerKey, Option<SocketAddr>>,
}

/// What changed with an `apply`.
#[derive(Debug, Default)]
pub struct Applied {
    /// Newly bound listeners, with their addresses (TCP).
    pub opened: Vec<(ListenerKey, Option<SocketAddr>)>,
    pub closed: Vec<ListenerKey>,
    /// Listeners kept open, untouched.
    pub kept: usize,
}

enum Control {
    Apply {
        serving: Arc<Serving>,
        add: Vec<(ListenerKey, Bound)>,
        remove: Vec<ListenerKey>,
        done: Sender<()>,
    },
    /// Close every listener; connections carry on.
    StopAccepting { done: Sender<()> },
    /// Answer at once: proves the loop still runs its tasks (systemd's watchdog).
    Ping { done: Sender<()> },
}

#[derive(Debug)]
pub struct BindError {
    pub listener: String,
    pub addr: Option<SocketAddr>,
    pub error: io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot listen for {}: {}", self.listener, self.error)?;
        let privileged = self.addr.is_some_and(|a| a.port() < 1024);
        if self.error.kind() == io::ErrorKind::PermissionDenied && privileged {
            write!(f, " (ports below 1024 need CAP_NET_BIND_SERVICE)")?;
        }
        Ok(())
    }
}

impl std::error::Error for BindError {}

/// Binds every listener of the plan, then serves it on a new thread. Binding happens here,
/// before anything is served, so a taken port is an error to the caller, not a log line.
pub fn start(plan: Plan) -> Result<Running, BindError> {
    start_on(plan, 1)
}

/// `start` on `threads` event loops.
pub fn start_on(plan: Plan, threads: usize) -> Result<Running, BindError> {
    start_with(plan, Arc::new(Metrics::default()), threads)
}

/// `start_on`, counting into `metrics` (which an admin endpoint opened earlier already shows).
pub fn start_with(plan: Plan, metrics: Arc<Metrics>, threads: usize) -> Result<Running, BindError> {
    start_handing(plan, metrics, Arc::new(Handover::none()), threads)
}

/// `start_with`, taking the listeners' sockets from those systemd passed when it has them,
/// and handing each listener to systemd's fd store (`handover`). Passed sockets no listener
/// takes are closed once every listener is bound.
pub fn start_handing(
    plan: Plan,
    metrics: Arc<Metrics>,
    handover: Arc<Handover>,
    threads: usize,
) -> Result<Running, BindError> {
    raise_fd_limit();
    let serving = Arc::new(Serving::new(plan, &metrics, threads));
    let plan = serving.plan.clone();
    let bind_failures = Arc::new(BindFailures::default());
    // The loops first (each makes its reactor), so that every descriptor the process keeps
    // is open before it says it listens. A bind that fails below ends them: the control
    // channel closes, and the first loop closes the others'.
    let pending = Arc::new(Pending::default());
    let (others, senders) = start_others(threads, &pending)?;
    let (control, controlled) = channel::unbounded();
    let loop_metrics = metrics.clone();
    let loop_serving = serving.clone();
    let thread = spawn_loop("sidegate-loop".into(), move || {
        let spread = Spread::new(&loop_metrics, senders);
        event_loop(loop_serving, loop_metrics, controlled, (spread, pending));
    })?;
    // An upstream listener that cannot be bound leaves the rest serving (and is retried);
    // the gateway's and the inbound listeners are what the host is for: those must bind.
    let (upstreams, required): (Vec<ListenerKey>, Vec<ListenerKey>) = ListenerKey::all(&plan)
        .into_iter()
        .partition(|k| matches!(k, ListenerKey::Upstream(_)));
    let mut add = bind_all(&required, &plan, &handover)?;
    add.extend(bind_or_retry(&upstreams, &plan, &bind_failures, &handover));
    handover.release_unclaimed();
    let listeners: HashMap<_, _> = add
        .iter()
        .map(|(k, b)| (k.clone(), b.local_addr()))
        .collect();
    let addrs_of = |want: fn(&ListenerKey) -> bool| -> Vec<SocketAddr> {
        add.iter()
            .filter(|(k, _)| want(k))
            .filter_map(|(_, b)| b.local_addr())
            .collect()
    };
    let gateway_addrs = addrs_of(|k| matches!(k, ListenerKey::Gateway(_)));
    let upstream_addrs = addrs_of(|k| matches!(k, ListenerKey::Upstream(_)));
    let inbound_addr = addrs_of(|k| matches!(k, ListenerKey::Inbound(_)))
        .first()
        .copied();
    let (done, started) = channel::bounded(1);
    control
        .try_send(Control::Apply {
            serving: serving.clone(),
            add,
            remove: Vec::new(),
            done,
        })
        .map_err(|_| thread_error(io::Error::other("control channel closed")))?;
    let _ = smol::block_on(started.recv());
    if threads > 1 {
        crate::info!("serving on {threads} event loops");
    }
    Ok(Running {
        gateway_addrs,
        upstream_addrs,
        inbound_addr,
        metrics,
        bind_failures,
        handover,
        state: Mutex::new(State {
            serving: serving.clone(),
            listeners,
        }),
        control: Some(control),
        thread: Some(thread),
        others,
    })
}

type Others = Vec<(JoinHandle<()>, channel::WeakSender<Work>)>;

/// Starts the loops after the first (`threads - 1`); returns them and the channels the first
/// loop hands them connections on. None with one thread. A loop that cannot be started fails
/// the start: the ones already started end as their senders are dropped with the error.
fn start_others(
    threads: usize,
    pending: &Arc<Pending>,
) -> Result<(Others, Vec<Sender<Work>>), BindError> {
    let mut others = Vec::new();
    let mut senders = Vec::new();
    for index in 1..threads.max(1) {
        let (to, work) = channel::unbounded();
        let pending = pending.clone();
        let thread = spawn_loop(format!("sidegate-loop{index}"), move || {
            loops::other_loop(index, work, pending);
        })?;
        others.push((thread, to.downgrade()));
        senders.push(to);
    }
    Ok((others, senders))
}

/// Starts an event loop's thread once its reactor is made: a loop that cannot have one
/// (out of descriptors) fails the start, and the process holds every descriptor it keeps
/// before it binds and says that it listens.
fn spawn_loop(
    name: String,
    run: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, BindError> {
    let (made, reactor) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let ready = reactor::prepare();
            let ok = ready.is_ok();
            let _ = made.send(ready);
            if ok {
                run();
            }
        })
        .map_err(thread_error)?;
    let ready = reactor
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the thread ended at start")));
    ready.map_err(thread_error)?;
    Ok(thread)
}

fn thread_error(error: io::Error) -> BindError {
    BindError {
        listener: "the event loop".into(),
        addr: None,
        error,
    }
}

fn bind_all(
    keys: &[ListenerKey],
    plan: &Plan,
    handover: &Handover,
) -> Result<Vec<(ListenerKey, Bound)>, BindError> {
    keys.iter()
        .map(|key| {
            let bound = bind_one(key, plan, handover)?;
            log_listening(key, &bound, plan);
            Ok((key.clone(), bound))
        })
        .collect()
}

/// Binds `key`, or takes the socket systemd passed for it; then hands it to systemd's store.
fn bind_one(key: &ListenerKey, plan: &Plan, handover: &Handover) -> Result<Bound, BindError> {
    let keep_file = handover.keep_files();
    let (bound, was) = match handover.take(key) {
        Some((name, socket)) => match Bound::adopt(key, plan, socket, keep_file.clone()) {
            Ok(bound) => {
                crate::info!("{key}: serving the socket systemd passed as {name:?}");
                (Ok(bound), Some(name))
            }
            Err(e) => {
                crate::warn!("{key}: cannot serve the socket systemd passed as {name:?} ({e}); binding a new one");
                (Bound::bind(key, plan, keep_file), Some(name))
            }
        },
        None => (Bound::bind(key, plan, keep_file), None),
    };
    let bound = bound.map_err(|error| bind_error(key, error))?;
    handover.keep(key, bound.fd(), was.as_deref());
    Ok(bound)
}

fn bind_error(key: &ListenerKey, error: io::Error) -> BindError {
    BindError {
        listener: key.to_string(),
        addr: match key {
            ListenerKey::Gateway(a)
            | ListenerKey::Inbound(a)
            | ListenerKey::Upstream(BindKey::Tcp(a)) => Some(*a),
            ListenerKey::Upstream(BindKey::Unix(_)) => None,
        },
        error,
    }
}

/// Binds what it can of `keys`; the rest is recorded in `failures`, to retry.
fn bind_or_retry(
    keys: &[ListenerKey],
    plan: &Plan,
    failures: &BindFailures,
    handover: &Handover,
) -> Vec<(ListenerKey, Bound)> {
    let mut add = Vec::new();
    for key in keys {
        match bind_one(key, plan, handover) {
            Ok(bound) => {
                if failures.cleared(key) {
                    crate::info!("{key}: bound after all");
                }
                log_listening(key, &bound, plan);
                add.push((key.clone(), bound));
            }
            Err(e) if failures.failed(key, &e) => crate::error!(
                "{e}; serving the rest, trying again every {} s",
                RETRY_EVERY.as_secs()
            ),
            Err(e) => crate::debug!("{e}; trying again in {} s", RETRY_EVERY.as_secs()),
        }
    }
    add
}

fn log_listening(key: &ListenerKey, bound: &Bound, plan: &Plan) {
    // Tests and operators read the bound address from these lines (port 0 in tests).
    let at = match (bound.local_addr(), key) {
        (Some(a), _) => a.to_string(),
        (None, ListenerKey::Upstream(BindKey::Unix(p))) => format!("unix:{}", p.display()),
        (None, _) => String::new(),
    };
    match key {
        ListenerKey::Upstream(_) => {
            if let Some(up) = key.upstream(plan) {
                crate::info!(
                    "upstream {} listening on {at} (mode {:?}, {:?})",
                    up.destination_name,
                    up.mode,
                    up.via
                );
            }
        }
        ListenerKey::Inbound(_) => {
            let to = plan.inbound.as_ref().map(|i| &i.local_service_address);
            if let Some(to) = to {
                crate::info!("inbound listening on {at} for {to}");
            }
        }
        ListenerKey::Gateway(_) => crate::info!("gateway listening on {at}"),
    }
}

/// The first event loop's thread: applies control messages, runs every accept loop and its
/// share of the connections. Ends when the control channel closes; dropping the executor then
/// closes its connections, and closing `spread` ends the other loops.
fn event_loop(
    serving: Arc<Serving>,
    metrics: Arc<Metrics>,
    controlled: Receiver<Control>,
    (spread, pending): (Spread, Arc<Pending>),
) {
    let ex = Rc::new(LocalExecutor::new());
    let shared = Rc::new(Shared {
        ex: ex.clone(),
        current: std::cell::RefCell::new(serving),
        metrics,
        spread,
        pending,
    });
    let mut listeners: HashMap<ListenerKey, Task<()>> = HashMap::new();
    // Fires every connection's deadlines (handshake, connect, idle) from one timer.
    ex.spawn(deadline::sweeper()).detach();
    let ran = reactor::run(ex.run(async {
        while let Ok(msg) = controlled.recv().await {
            match msg {
                Control::Apply {
                    serving,
                    add,
                    remove,
                    done,
                } => {
                    *shared.current.borrow_mut() = serving;
                    for key in remove {
                        // Cancelling drops the accept loop and with it the socket. Merely
                        // dropping the handle would leave that to a later turn of the
                        // executor, after the caller was told the listener is gone.
                        if let Some(task) = listeners.remove(&key) {
                            task.cancel().await;
                        }
                        crate::info!("{key} closed");
                    }
                    for (key, bound) in add {
                        let task =
                            ex.spawn(listener::accept_loop(bound, key.clone(), shared.clone()));
                        listeners.insert(key, task);
                    }
                    let _ = done.try_send(());
                }
                Control::StopAccepting { done } => {
                    for (_, task) in listeners.drain() {
                        task.cancel().await;
                    }
                    let _ = done.try_send(());
                }
                Control::Ping { done } => {
                    let _ = done.try_send(());
                }
            }
        }
    }));
    if let Err(e) = ran {
        // Nothing is served any more: the watchdog's pings go unanswered and systemd restarts.
        crate::error!("the first event loop failed: {e}");
    }
    shared.spread.close();
    // The accept loops hold the executor through `shared`; drop them first so it is freed.
    listeners.clear();
    drop(shared);
}

impl Running {
    /// The plan new connections are accepted under.
    pub fn plan(&self) -> Arc<Plan> {
        self.state().serving.plan.clone()
    }

    /// The address a TCP listener is bound to (useful with port 0).
    pub fn local_addr(&self, key: &ListenerKey) -> Option<SocketAddr> {
        self.state().listeners.get(key).copied().flatten()
    }

    /// Swaps in a new plan: binds the listeners it adds (on error nothing changes), closes
    /// those it drops, keeps the rest without rebinding. Established connections keep the plan
    /// they were accepted under.
    pub fn apply(&self, plan: Plan) -> Result<Applied, BindError> {
        let serving = Arc::new(Serving::new(plan, &self.metrics, self.threads()));
        let plan = serving.plan.clone();
        let mut state = self.state();
        let keys = ListenerKey::all(&plan);
        // Listeners that failed under the plan in service stay tolerated (retried); a new
        // listener that cannot be bound refuses the whole plan, as before.
        let failing = self.bind_failures.pending();
        let (retry, new): (Vec<ListenerKey>, Vec<ListenerKey>) = keys
            .iter()
            .filter(|k| !state.listeners.contains_key(k))
            .cloned()
            .partition(|k| failing.contains(k));
        let kept = keys.len() - new.len() - retry.len();
        let remove: Vec<ListenerKey> = state
            .listeners
            .keys()
            .filter(|k| !keys.contains(k))
            .cloned()
            .collect();
        let mut add = bind_all(&new, &plan, &self.handover)?;
        add.extend(bind_or_retry(
            &retry,
            &plan,
            &self.bind_failures,
            &self.handover,
        ));
        for gone in failing.iter().filter(|k| !keys.contains(k)) {
            self.bind_failures.cleared(gone);
        }
        for key in keys.iter().filter(|k| state.listeners.contains_key(k)) {
            if let Err(e) = listener::set_socket_mode(key, &plan) {
                crate::warn!("{key}: cannot set the socket's mode: {e}");
            }
        }
        let opened = self.hand_over(serving.clone(), add, remove.clone());
        for key in &remove {
            state.listeners.remove(key);
            self.handover.forget(key);
        }
        state.listeners.extend(opened.iter().cloned());
        state.serving = serving;
        Ok(Applied {
            kept,
            opened,
            closed: remove,
        })
    }

    /// Tries again to bind the listeners of the plan in service that failed; returns those
    /// bound now.
    pub fn retry_unbound(&self) -> Vec<ListenerKey> {
        let pending = self.bind_failures.pending();
        if pending.is_empty() {
            return Vec::new();
        }
        let mut state = self.state();
        let serving = state.serving.clone();
        let add = bind_or_retry(&pending, &serving.plan, &self.bind_failures, &self.handover);
        if add.is_empty() {
            return Vec::new();
        }
        let opened = self.hand_over(serving, add, Vec::new());
        state.listeners.extend(opened.iter().cloned());
        opened.into_iter().map(|(k, _)| k).collect()
    }

    /// Has the loop serve `plan` with the listeners `add`ed and `remove`d, once it did;
    /// returns what was opened, with the addresses.
    fn hand_over(
        &self,
        serving: Arc<Serving>,
        add: Vec<(ListenerKey, Bound)>,
        remove: Vec<ListenerKey>,
    ) -> Vec<(ListenerKey, Option<SocketAddr>)> {
        let opened: Vec<_> = add
            .iter()
            .map(|(k, b)| (k.clone(), b.local_addr()))
            .collect();
        let (done, applied) = channel::bounded(1);
        self.send(Control::Apply {
            serving,
            add,
            remove,
            done,
        });
        let _ = smol::block_on(applied.recv());
        opened
    }

    /// A handle that asks every event loop to answer, from any thread.
    pub fn pinger(&self) -> Pinger {
        Pinger(
            self.control.as_ref().map(Sender::downgrade),
            self.others.iter().map(|(_, to)| to.clone()).collect(),
        )
    }

    /// How many event loops serve connections.
    pub fn threads(&self) -> usize {
        1 + self.others.len()
    }

    /// Connections open now, every role together.
    pub fn active(&self) -> u64 {
        let m = &self.metrics;
        m.gateway.active.get() + m.upstream.active.get() + m.inbound.active.get()
    }

    /// Closes every listener and returns once all their sockets are closed; open connections
    /// carry on. Calling it again does nothing.
    ///
    /// With systemd's fd store, closing is what lets the next instance start cleanly: only
    /// our copy of each socket closes, systemd's keeps listening, and connections arriving
    /// from now on wait in its backlog for the next process instead of being refused. Closing
    /// (rather than keeping our copy open but unpolled) also means this process takes no new
    /// connection it would then have to drain. Never `shutdown(2)` a listening socket here: it
    /// would stop the shared socket for systemd's copy too.
    pub fn stop_accepting(&self) {
        if self.state().listeners.is_empty() {
            return;
        }
        self.handover.stopping();
        let (done, stopped) = channel::bounded(1);
        self.send(Control::StopAccepting { done });
        let _ = smol::block_on(stopped.recv());
        self.state().listeners.clear();
    }

    /// Stops accepting at once, lets open connections finish for up to `grace`, then closes
    /// the rest and stops. Returns how many connections were cut.
    pub fn drain(mut self, grace: Duration) -> u64 {
        self.stop_accepting();
        let deadline = Instant::now() + grace;
        // Polling a counter a few times a second is cheaper than waking on every close.
        while self.active() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
        }
        let cut = self.active();
        self.shutdown();
        cut
    }

    /// Stops serving and closes every connection.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Blocks until every event loop ends.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.join_others();
    }

    /// The other loops end once the first has (it holds their senders).
    fn join_others(&mut self) {
        for (t, _) in self.others.drain(..) {
            let _ = t.join();
        }
    }

    fn send(&self, msg: Control) {
        if let Some(c) = &self.control {
            let _ = c.try_send(msg);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shutdown(&mut self) {
        self.control.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.join_others();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Asks every event loop whether it still runs its tasks. Holds their channels weakly, so
/// that it never keeps a stopped loop alive.
pub struct Pinger(
    Option<channel::WeakSender<Control>>,
    Vec<channel::WeakSender<Work>>,
);

impl Pinger {
    /// True when every loop answered within `timeout`: one wedged loop is reason enough for
    /// systemd to restart the process.
    pub fn ping(&self, timeout: Duration) -> bool {
        let Some(control) = self.0.as_ref().and_then(channel::WeakSender::upgrade) else {
            return false;
        };
        let loops = 1 + self.1.len();
        let (done, answered) = channel::bounded(loops);
        if control
            .try_send(Control::Ping { done: done.clone() })
            .is_err()
        {
            return false;
        }
        for other in &self.1 {
            let sent = other
                .upgrade()
                .is_some_and(|to| to.try_send(Work::Ping(done.clone())).is_ok());
            if !sent {
                return false;
            }
        }
        drop(done);
        smol::block_on(smol::future::or(
            async {
                for _ in 0..loops {
                    if answered.recv().await.is_err() {
                        return false;
                    }
                }
                true
            },
            async {
                smol::Timer::after(timeout).await;
                false
            },
        ))
    }
}

/// A gateway holding a thousand connections needs two thousand descriptors; the usual soft
/// limit is 1024 while the hard limit is far higher. Go and systemd raise it the same way.
fn raise_fd_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised) {
            crate::warn!("cannot raise the open-file limit: {e}");
        }
    }
}
