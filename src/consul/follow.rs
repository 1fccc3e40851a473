//! Following the agent: one thread that starts a watch per needed key, gathers their
//! answers, and hands the event loop a complete `Snapshot` whenever the mesh state changes —
//! only complete ones (identity, roots, registration and every target answered at least
//! once). Each complete state the agent confirmed in this run is also saved as last-known-good
//! — its answers and what it refused — and on a start with the agent unreachable that saved
//! state is served, marked stale, while the watches keep retrying.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::assemble::{self, Incomplete, Known};
use super::authorizer::Authorizer;
use super::client::Client;
use super::errors::ApiError;
use super::fleet;
use super::state_dir;
use super::status::{now_unix, Status};
use super::watch::{self, Answer, Key, Timing, Update, Watch};
use crate::config::consul::settings::Settings;
use crate::mesh::snapshot::Snapshot;

/// The saved state's file in `state_dir`.
pub const STATE_FILE: &str = "consul-state.json";
/// Updates waiting for the follower; watches block beyond this (back-pressure, bounded).
const QUEUE: usize = 256;
const TICK: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub timing: Timing,
    /// At start, how long to wait for the agent to confirm everything before serving the
    /// saved state with whatever it has confirmed so far.
    pub startup_grace: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timing: Timing::default(),
            startup_grace: Duration::from_secs(10),
        }
    }
}

/// Receives each new snapshot and takes it in service at once; returns false when nobody
/// listens any more.
pub type Sink = Box<dyn FnMut(Snapshot) -> bool + Send>;

/// Receives each new snapshot with its receipt, to redeem (`Receipt::in_service`) once the
/// snapshot is in service; returns false when nobody listens any more.
pub type DeferredSink = Box<dyn FnMut(Snapshot, Receipt) -> bool + Send>;

/// Comes with every snapshot the follower sends. A state the agent confirmed is saved as
/// last-known-good only when its receipt is redeemed, that is once it serves: a state that
/// failed to apply (an upstream's port taken) must not be what the next start serves with
/// the agent away.
pub struct Receipt {
    seq: u64,
    in_service: Arc<AtomicU64>,
    /// Boxed: the receipt travels in the event loop's queue, next to small events.
    save: Option<Box<PendingSave>>,
}

/// A confirmed state, to be written to `STATE_FILE` once in service.
struct PendingSave {
    dir: PathBuf,
    saved: Saved,
    status: Arc<Status>,
}

impl PendingSave {
    fn write(&self) {
        state_dir::save_json(
            &self.dir,
            STATE_FILE,
            &self.saved,
            &self.status,
            "the last-known-good state",
        );
    }
}

impl Receipt {
    /// A receipt with nothing to save (for snapshots that come from no follower).
    pub fn none() -> Receipt {
        Receipt {
            seq: 0,
            in_service: Arc::new(AtomicU64::new(0)),
            save: None,
        }
    }

    /// The snapshot it came with serves now: save it if the agent confirmed it.
    pub fn in_service(self) {
        if let Some(p) = self.save {
            p.write();
        }
        self.in_service.fetch_max(self.seq, Ordering::SeqCst);
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receipt")
            .field("seq", &self.seq)
            .field("saves", &self.save.is_some())
            .finish()
    }
}

/// A sink that takes snapshots in service as it receives them: each is saved before it is
/// handed over, so that whoever receives it finds it saved.
fn immediate(mut sink: Sink) -> DeferredSink {
    Box::new(move |snap, receipt: Receipt| {
        receipt.in_service();
        sink(snap)
    })
}

/// A running follower. Dropping it (or `stop`) ends the follower thread; its watches end
/// after their current request.
pub struct Follower {
    pub status: Arc<Status>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts following the agent. `base` carries what the file still says (the `[gateway]`
/// knobs); `sink` gets every complete snapshot.
pub fn follow(
    settings: Settings,
    base: Snapshot,
    options: Options,
    status: Arc<Status>,
    sink: Sink,
) -> io::Result<Follower> {
    Ok(prepare(settings, base, options, status, sink)?.start())
}

/// `prepare` for a receiver that redeems each snapshot's receipt once it serves it.
pub fn prepare_deferred(
    settings: Settings,
    base: Snapshot,
    options: Options,
    status: Arc<Status>,
    sink: DeferredSink,
) -> io::Result<Prepared> {
    prepared(settings, base, options, status, sink)
}

/// A follower whose thread exists but has not looked at the agent yet. Creating the thread
/// is the one step of following that can fail, so a reload prepares the new follower before
/// it stops the one it replaces: a failure leaves the old one following.
pub struct Prepared {
    // Dropped first (fields drop in order): the waiting thread then ends, so dropping the
    // follower, which joins it, cannot hang.
    go: SyncSender<()>,
    follower: Follower,
}

impl Prepared {
    pub fn start(self) -> Follower {
        // The thread waits for this; it cannot have gone (it exits only without it).
        let _ = self.go.send(());
        self.follower
    }
}

/// `follow` up to the start: dropped instead of started, the thread ends unused.
pub fn prepare(
    settings: Settings,
    base: Snapshot,
    options: Options,
    status: Arc<Status>,
    sink: Sink,
) -> io::Result<Prepared> {
    prepared(settings, base, options, status, immediate(sink))
}

fn prepared(
    settings: Settings,
    base: Snapshot,
    options: Options,
    status: Arc<Status>,
    sink: DeferredSink,
) -> io::Result<Prepared> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let (go, gate) = mpsc::sync_channel(1);
    let mut c = Coordinator::new(settings, base, options, status.clone(), tx, sink);
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("sidegate-consul".into())
        .spawn(move || {
            if gate.recv().is_ok() {
                c.run(&rx, &flag);
            }
        })?;
    Ok(Prepared {
        go,
        follower: Follower {
            status,
            stop,
            thread: Some(thread),
        },
    })
}

/// A snapshot as the follower remembers it once sent: all but its catalog as it was, the
/// catalog only as a 128-bit hash. A gateway's catalog is most of its snapshot (every instance
/// of every service it follows, some 700 bytes a service), and the event loop keeps what it
/// needs of it in the plan; keeping a second copy here only to compare with cost that much
/// per service for nothing. Two SipHash passes with different leading salts make a catalog
/// change that leaves both hashes unchanged vanishingly unlikely.
#[derive(Debug)]
struct Sent {
    rest: Snapshot,
    catalog: (u64, u64),
}

impl Sent {
    /// Remembers `snap` (whose catalog is put back as it was).
    fn of(snap: &mut Snapshot) -> Sent {
        let catalog = std::mem::take(&mut snap.catalog);
        let rest = snap.clone();
        let hash = catalog_hash(&catalog);
        snap.catalog = catalog;
        Sent {
            rest,
            catalog: hash,
        }
    }

    /// Whether `snap` is the snapshot remembered.
    fn is(&self, snap: &mut Snapshot) -> bool {
        if catalog_hash(&snap.catalog) != self.catalog {
            return false;
        }
        let catalog = std::mem::take(&mut snap.catalog);
        let same = self.rest == *snap;
        snap.catalog = catalog;
        same
    }
}

fn catalog_hash(c: &crate::mesh::snapshot::Catalog) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        c.hash(&mut h);
        h.finish()
    };
    (half(1), half(2))
}

/// How a key's watch is doing, kept only for keys not simply well (see `Coordinator::fresh`):
/// a gateway follows hundreds of services that all are, nearly always, and an entry each
/// cost its key again.
#[derive(Debug, Default)]
struct Health {
    /// Settled by the agent in this run — answered, or refused with no answer known — and
    /// not failing otherwise since. A refusal restored from the saved state is not fresh.
    fresh: bool,
    /// Boxed: errors are rare.
    error: Option<Box<ApiError>>,
}

/// What `STATE_FILE` holds: the agent's answers and refusals, from which the same snapshot
/// is rebuilt.
#[derive(Serialize, Deserialize)]
struct Saved {
    saved_unix: u64,
    sidecar_service_id: Option<String>,
    gateway_service_id: Option<String>,
    answers: Vec<(Key, Answer)>,
    /// Keys the agent refused (with its reason) and the snapshot went on without: without
    /// them a saved state that lacks, say, an upstream in a datacenter with no path to it
    /// would never be complete again. Absent in files of earlier versions.
    #[serde(default)]
    refused: Vec<(Key, String)>,
}

/// Why the saved state cannot be served.
#[derive(Debug)]
pub enum SavedError {
    /// The file is there but cannot be read, or fails its checks.
    Read(PathBuf, state_dir::ReadError),
    /// It reads, but is not a state this version wrote.
    Json(PathBuf, serde_json::Error),
    /// It was saved for other registrations (another `sidecar_service_id`).
    OtherRegistrations(PathBuf),
    /// It lacks something a snapshot needs.
    Incomplete(Incomplete),
}

impl fmt::Display for SavedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SavedError::Read(path, e) => {
                write!(f, "last-known-good state {}: {e}", path.display())
            }
            SavedError::Json(path, e) => write!(
                f,
                "last-known-good state {} is not readable ({e}); ignored",
                path.display()
            ),
            SavedError::OtherRegistrations(path) => write!(
                f,
                "last-known-good state {} was saved for other registrations; ignored",
                path.display()
            ),
            SavedError::Incomplete(e) => write!(f, "the saved state is incomplete: {e}"),
        }
    }
}

impl std::error::Error for SavedError {}

/// The saved state for these settings: `Ok(None)` when there is none (or no `state_dir`),
/// `Err` when it is there but unusable (corrupt, partial, for other registrations).
fn load(settings: &Settings) -> Result<Option<Saved>, SavedError> {
    let Some(dir) = &settings.state_dir else {
        return Ok(None);
    };
    let shown = state_dir::path(dir, STATE_FILE);
    let bytes = match state_dir::read(dir, STATE_FILE) {
        Ok(b) => b,
        Err(state_dir::ReadError::Missing) => return Ok(None),
        Err(e) => return Err(SavedError::Read(shown, e)),
    };
    let saved: Saved =
        serde_json::from_slice(&bytes).map_err(|e| SavedError::Json(shown.clone(), e))?;
    if saved.sidecar_service_id != settings.sidecar_service_id
        || saved.gateway_service_id != settings.gateway_service_id
    {
        return Err(SavedError::OtherRegistrations(shown));
    }
    Ok(Some(saved))
}

/// The snapshot the saved state gives, without asking the agent (for `check`, and what a
/// start with the agent unreachable serves), and when it was saved.
pub fn saved_snapshot(
    settings: &Settings,
    base: &Snapshot,
) -> Result<Option<(Snapshot, u64)>, SavedError> {
    let Some(saved) = load(settings)? else {
        return Ok(None);
    };
    let answers: BTreeMap<Key, Answer> = saved.answers.into_iter().collect();
    let refused: BTreeMap<Key, String> = saved.refused.into_iter().collect();
    let known = Known {
        answers: &answers,
        refused: &refused,
    };
    let (mut snap, _) =
        assemble::snapshot(settings, base, &known).map_err(SavedError::Incomplete)?;
    if let Some(sc) = snap.sidecar.as_mut() {
        let client = Client::new(settings);
        let status = Arc::new(Status::default());
        let authorizer = Authorizer::new(client, status, settings.state_dir.clone());
        sc.authority = Some(authorizer.for_service(&sc.service));
    }
    Ok(Some((snap, saved.saved_unix)))
}

struct Coordinator {
    settings: Settings,
    base: Snapshot,
    client: Arc<Client>,
    options: Options,
    status: Arc<Status>,
    authorizer: Arc<Authorizer>,
    tx: SyncSender<Update>,
    watches: BTreeMap<Key, Watch>,
    /// The namespace of the services a fleet (`Key::Services`) answers for.
    fleet_namespace: Option<String>,
    /// The last answer per key (this run's, or restored from the saved state).
    answers: BTreeMap<Key, Answer>,
    /// Keys the agent answered with an error, with no answer known (this run's, or restored),
    /// and the error as shown.
    refused: BTreeMap<Key, String>,
    /// The keys whose watch is not simply well: restored and not answered yet in this run,
    /// failing, or refused. Answered in this run and well since: no entry.
    health: BTreeMap<Key, Health>,
    /// Something changed since the last look.
    dirty: bool,
    /// What was sent last, to tell a new snapshot from it.
    last_sent: Option<Sent>,
    /// `last_sent` is saved (or will be, once in service) as of this run: the agent
    /// confirmed it.
    last_sent_saved: bool,
    /// The receipt number of `last_sent`, and the highest the receiver redeemed.
    sent_seq: u64,
    in_service: Arc<AtomicU64>,
    last_warnings: Vec<String>,
    /// Why the last look made no snapshot, logged once per reason.
    last_waiting: Option<Incomplete>,
    unreachable_since: Option<Instant>,
    started: Instant,
    restored_at: Option<u64>,
    sink: DeferredSink,
}

impl Coordinator {
    fn new(
        settings: Settings,
        base: Snapshot,
        options: Options,
        status: Arc<Status>,
        tx: SyncSender<Update>,
        sink: DeferredSink,
    ) -> Coordinator {
        let client = Client::new(&settings);
        // The authorizer has a client of its own: the plan in service keeps asking it after
        // this follower is stopped (until the next follower's plan replaces it), while
        // stopping shuts the watches' client down.
        let authorizer = Authorizer::new(
            Client::new(&settings),
            status.clone(),
            settings.state_dir.clone(),
        );
        Coordinator {
            settings,
            base,
            client,
            options,
            status,
            authorizer,
            tx,
            watches: BTreeMap::new(),
            fleet_namespace: None,
            answers: BTreeMap::new(),
            refused: BTreeMap::new(),
            health: BTreeMap::new(),
            dirty: true,
            last_sent: None,
            last_sent_saved: false,
            sent_seq: 0,
            in_service: Arc::new(AtomicU64::new(0)),
            last_warnings: Vec::new(),
            last_waiting: None,
            unreachable_since: None,
            started: Instant::now(),
            restored_at: None,
            sink,
        }
    }

    fn run(&mut self, rx: &Receiver<Update>, stop: &AtomicBool) {
        crate::info!(
            "consul: following agent {} ({})",
            self.client.address(),
            self.following()
        );
        self.restore();
        while !stop.load(Ordering::Relaxed) {
            // Before the first snapshot time alone can make one due (the start-up grace).
            if self.dirty || self.last_sent.is_none() {
                self.dirty = false;
                self.reconcile();
                if !self.maybe_send() {
                    return;
                }
            }
            match rx.recv_timeout(TICK) {
                Ok(update) => {
                    self.apply(update);
                    while let Ok(more) = rx.try_recv() {
                        self.apply(more);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Whether the agent settled `key` in this run (`Health::fresh`): its entry says, and with
    /// none, it is well if known at all.
    fn fresh(&self, key: &Key) -> bool {
        match self.health.get(key) {
            Some(h) => h.fresh,
            None => self.answers.contains_key(key) || self.refused.contains_key(key),
        }
    }

    fn following(&self) -> String {
        let s = &self.settings;
        let mut parts = Vec::new();
        if let Some(id) = &s.sidecar_service_id {
            parts.push(format!("sidecar {id}"));
        }
        if let Some(id) = &s.gateway_service_id {
            parts.push(format!("mesh gateway {id}"));
        }
        parts.join(", ")
    }

    fn known(&self) -> Known<'_> {
        Known {
            answers: &self.answers,
            refused: &self.refused,
        }
    }

    fn needed(&self) -> BTreeSet<Key> {
        assemble::needed(&self.settings, &self.known())
    }

    /// Whether `key` is answered by a fleet (a gateway's catalog) rather than a watch of
    /// its own: a service of the fleet's place and namespace that its names list holds.
    fn covered(&self, key: &Key) -> bool {
        let Key::Connect {
            service,
            namespace,
            place,
        } = key
        else {
            return false;
        };
        let fleet = Key::Services {
            place: place.clone(),
        };
        if !self.watches.contains_key(&fleet) {
            return false;
        }
        let Some(Answer::Names(names)) = self.answers.get(&fleet) else {
            return false;
        };
        // A fleet's names are of its own namespace; on an Enterprise agent each names its
        // namespace (asked second: Community Edition's lookups cost what they did).
        (self.fleet_namespace.as_ref() == Some(namespace) && names.binary_search(service).is_ok())
            || names
                .binary_search(&fleet::qualified(namespace, service))
                .is_ok()
    }

    /// Starts watches for newly needed keys, stops the ones no longer needed.
    fn reconcile(&mut self) {
        let needed = self.needed();
        // Fleets first: the services a fleet answers for need no watch of their own, also in
        // the pass that starts it. A gateway started from its saved state knows its names
        // before its fleet runs; deciding coverage first gave every service a watch, and an
        // agent connection, of its own for a moment.
        for key in needed.iter().filter(|k| matches!(k, Key::Services { .. })) {
            if !self.watches.contains_key(key) {
                self.start(key.clone());
            }
        }
        let covered: BTreeSet<Key> = needed.iter().filter(|k| self.covered(k)).cloned().collect();
        self.watches
            .retain(|k, _| needed.contains(k) && !covered.contains(k));
        self.answers.retain(|k, _| needed.contains(k));
        self.refused.retain(|k, _| needed.contains(k));
        self.health.retain(|k, _| needed.contains(k));
        for key in needed {
            if !self.watches.contains_key(&key) && !covered.contains(&key) {
                self.start(key);
            }
        }
    }

    /// Starts the watch of `key`: a gateway's whole catalog is a fleet (a fixed set of
    /// threads and connections, not one per service), any other key a watch of its own.
    fn start(&mut self, key: Key) {
        let started = match &key {
            Key::Services { place } => {
                let namespace = assemble::namespace(&self.settings, &self.known())
                    .unwrap_or_else(|| crate::mesh::place::DEFAULT_NAMESPACE.to_owned());
                self.fleet_namespace = Some(namespace.clone());
                fleet::spawn(
                    place.clone(),
                    namespace,
                    assemble::enterprise(&self.settings, &self.known()),
                    &self.client,
                    self.options.timing,
                    self.tx.clone(),
                )
                .map(Watch::from)
            }
            _ => watch::spawn(
                key.clone(),
                &self.client,
                self.options.timing,
                self.tx.clone(),
            ),
        };
        match started {
            Ok(w) => {
                crate::debug!("consul: watching {key:?}");
                self.watches.insert(key, w);
            }
            Err(e) => crate::warn!("consul: cannot start a watch thread for {key:?}: {e}"),
        }
    }

    fn apply(&mut self, update: Update) {
        let Update { key, result } = update;
        if !self.watches.contains_key(&key) && !self.covered(&key) {
            return;
        }
        self.dirty = true;
        let serving = self.serving();
        match result {
            Ok(answer) => {
                // Fresh, and well: no entry.
                if let Some(e) = self.health.remove(&key).and_then(|h| h.error) {
                    if !e.is_unreachable() {
                        crate::info!("consul: {key:?} answers again");
                    }
                }
                if matches!(answer, Answer::Service(None))
                    && self.answers.get(&key) != Some(&answer)
                {
                    if let Key::Service { id } = &key {
                        crate::warn!("consul: no service with ID {id:?} is registered on the agent yet; waiting for its registration");
                    }
                }
                self.refused.remove(&key);
                self.answers.insert(key, answer);
                if self.unreachable_since.take().is_some() {
                    crate::info!(
                        "consul: the agent at {} answers again",
                        self.client.address()
                    );
                }
            }
            Err(e) => {
                self.status.watch_error(e.to_string());
                let health = self.health.entry(key.clone()).or_default();
                health.fresh = false;
                if e.is_unreachable() {
                    if self.unreachable_since.is_none() {
                        self.unreachable_since = Some(Instant::now());
                        crate::warn!("consul: {e}; {serving}, retrying with back-off");
                    }
                } else {
                    if health.error.as_deref() != Some(&e) {
                        crate::warn!("consul: {e}");
                    } else {
                        crate::debug!("consul: {e}");
                    }
                    // The agent answered, with an error: settled, for keys that allow it.
                    if !self.answers.contains_key(&key) {
                        self.refused.insert(key, e.to_string());
                        health.fresh = true;
                    }
                }
                health.error = Some(Box::new(e));
            }
        }
    }

    /// What is served while the agent does not answer, for the log.
    fn serving(&self) -> &'static str {
        if self.last_sent.is_some() {
            "serving the last state received"
        } else if self.restored_at.is_some() {
            "serving the last-known-good state saved earlier"
        } else {
            "nothing to serve yet (no state received, none saved)"
        }
    }

    /// Sends the snapshot if it is complete and new. False: the receiver is gone.
    fn maybe_send(&mut self) -> bool {
        let needed = assemble::needed(&self.settings, &self.known());
        let confirmed = needed.iter().all(|k| self.fresh(k));
        self.status
            .set_stale(self.last_sent.is_some() && !confirmed);
        let Some(mut snap) = self.assembled() else {
            return true;
        };
        // At start, prefer a fully confirmed state; serve a restored one only once the agent
        // proved unreachable or the grace period is over.
        if !confirmed
            && self.last_sent.is_none()
            && self.unreachable_since.is_none()
            && self.started.elapsed() < self.options.startup_grace
        {
            return true;
        }
        if let Some(sc) = snap.sidecar.as_mut() {
            sc.authority = Some(self.authorizer.for_service(&sc.service));
        }
        if self
            .last_sent
            .as_ref()
            .is_some_and(|sent| sent.is(&mut snap))
        {
            self.unchanged(confirmed, &needed);
            return true;
        }
        // Only what the agent confirmed in this run is saved: a restored (or partly restored)
        // state saved again would claim to be as new as the save, and the next start would
        // report its age wrong.
        let save = if confirmed {
            self.pending_save(&needed).map(Box::new)
        } else {
            None
        };
        self.last_sent_saved = confirmed;
        self.send(snap, confirmed, save)
    }

    /// The snapshot of what is known, logging new warnings and why there is none (each
    /// reason once).
    fn assembled(&mut self) -> Option<Snapshot> {
        match assemble::snapshot(&self.settings, &self.base, &self.known()) {
            Ok((snap, warnings)) => {
                if warnings != self.last_warnings {
                    for w in warnings.iter().filter(|w| !self.last_warnings.contains(w)) {
                        crate::warn!("consul: {w}");
                    }
                    self.last_warnings = warnings;
                }
                Some(snap)
            }
            Err(why) => {
                if self.last_waiting.as_ref() != Some(&why) {
                    crate::debug!("consul: not complete yet: {why}");
                    self.last_waiting = Some(why);
                }
                None
            }
        }
    }

    /// The agent answered what was sent already: once it confirms everything, the state is
    /// fresh again — and a restored state it confirms unchanged is saved as of now.
    fn unchanged(&mut self, confirmed: bool, needed: &BTreeSet<Key>) {
        if !confirmed {
            return;
        }
        self.status.confirmed();
        // Saved only once in service: until the receiver redeemed its receipt, the state
        // may yet fail to apply (a later look saves it).
        let serving = self.in_service.load(Ordering::SeqCst) >= self.sent_seq;
        if !self.last_sent_saved && serving {
            if let Some(p) = self.pending_save(needed) {
                p.write();
            }
            self.last_sent_saved = true;
        }
    }

    /// Hands a new snapshot to the sink, with `save` for once it serves. False: the
    /// receiver is gone.
    fn send(
        &mut self,
        mut snap: Snapshot,
        confirmed: bool,
        save: Option<Box<PendingSave>>,
    ) -> bool {
        if !confirmed && self.last_sent.is_none() {
            let when = self.restored_at.map_or("an earlier run".to_owned(), |t| {
                format!("{} s ago", now_unix().saturating_sub(t))
            });
            crate::warn!("consul: serving the last-known-good state saved {when}; it is stale until the agent confirms it");
        }
        // Status first: whoever receives the snapshot may look at it at once.
        self.status.sent(!confirmed);
        self.sent_seq += 1;
        let receipt = Receipt {
            seq: self.sent_seq,
            in_service: self.in_service.clone(),
            save,
        };
        let (upstreams, services, places) = (
            snap.sidecar.as_ref().map_or(0, |s| s.upstreams.len()),
            snap.catalog.services.len(),
            snap.catalog.gateways.len(),
        );
        let sent = Sent::of(&mut snap);
        if !(self.sink)(snap, receipt) {
            return false;
        }
        crate::info!(
            "consul: new mesh state applied ({upstreams} upstreams, {services} services, {places} gateway places{})",
            if confirmed { "" } else { "; stale" }
        );
        self.last_sent = Some(sent);
        true
    }

    /// What `STATE_FILE` is to hold for the current answers; `None` without `state_dir`.
    fn pending_save(&self, needed: &BTreeSet<Key>) -> Option<PendingSave> {
        let dir = self.settings.state_dir.clone()?;
        let saved = Saved {
            saved_unix: now_unix(),
            sidecar_service_id: self.settings.sidecar_service_id.clone(),
            gateway_service_id: self.settings.gateway_service_id.clone(),
            answers: of_needed(&self.answers, needed),
            refused: of_needed(&self.refused, needed),
        };
        Some(PendingSave {
            dir,
            saved,
            status: self.status.clone(),
        })
    }

    /// Loads the saved answers as unconfirmed entries.
    fn restore(&mut self) {
        let saved = match load(&self.settings) {
            Ok(Some(saved)) => saved,
            Ok(None) => return,
            Err(e) => {
                crate::warn!("consul: {e}");
                return;
            }
        };
        // Known, not settled in this run: not fresh until the agent answers.
        for (key, answer) in saved.answers {
            self.health.insert(key.clone(), Health::default());
            self.answers.insert(key, answer);
        }
        self.restored_at = Some(saved.saved_unix);
        crate::info!(
            "consul: loaded the last-known-good state saved {} s ago",
            now_unix().saturating_sub(saved.saved_unix)
        );
        for (key, why) in saved.refused {
            crate::info!("consul: the saved state goes without what the agent refused then: {why}");
            self.health.insert(key.clone(), Health::default());
            self.refused.insert(key, why);
        }
    }
}

impl Drop for Coordinator {
    /// A stopped follower's watches end now, not after their blocking queries: each is told
    /// to stop, then their client's connections are shut down under them.
    fn drop(&mut self) {
        self.watches.clear();
        self.client.shutdown();
    }
}

/// The entries of `map` for `needed` keys, to be saved.
fn of_needed<V: Clone>(map: &BTreeMap<Key, V>, needed: &BTreeSet<Key>) -> Vec<(Key, V)> {
    map.iter()
        .filter(|(k, _)| needed.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::consul::settings::{resolve, FileKeys};
    use crate::consul::assemble::tests::{connect, web_1_8};

    fn settings(dir: &std::path::Path, sidecar: &str) -> Settings {
        resolve(
            FileKeys {
                sidecar_service_id: Some(sidecar.into()),
                state_dir: Some(dir.to_path_buf()),
                // Nothing listens there: the agent is unreachable.
                address: Some(format!("127.0.0.1:{}", dead_port())),
                ..FileKeys::default()
            },
            &|_| None,
        )
        .unwrap()
    }

    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sidegate-follow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn coordinator(s: &Settings) -> Coordinator {
        let (tx, _rx) = mpsc::sync_channel(1);
        let status = Arc::new(Status::default());
        Coordinator::new(
            s.clone(),
            base(),
            Options::default(),
            status,
            tx,
            immediate(Box::new(|_| true)),
        )
    }

    /// As if the agent had just answered (or refused) every needed key in this run.
    fn all_confirmed(c: &mut Coordinator) {
        for key in c.needed() {
            let fresh = Health {
                fresh: true,
                error: None,
            };
            c.health.insert(key, fresh);
        }
        c.dirty = true;
    }

    /// The state a run saves when the agent confirmed web's sidecar but refused db's
    /// instances (as it does for an upstream in a datacenter it has no path to).
    fn save_with_db_refused(s: &Settings) {
        let mut world = web_1_8(s);
        let db = connect("db", "dc1");
        world.answers.remove(&db);
        let mut c = coordinator(s);
        c.answers = world.answers;
        c.refused.insert(
            db,
            "GET /v1/health/connect/db?dc=dc1: HTTP 500: \"No path to datacenter\"".into(),
        );
        all_confirmed(&mut c);
        assert!(c.maybe_send());
        assert!(
            c.last_sent.is_some() && !c.status.is_stale(),
            "confirmed, sent"
        );
    }

    /// Follows with the agent unreachable; the first snapshot served.
    fn serve_offline(s: &Settings) -> (Follower, Snapshot) {
        let (tx, rx) = mpsc::sync_channel(4);
        let status = Arc::new(Status::default());
        let sink = Box::new(move |snap| tx.send(snap).is_ok());
        let f = follow(s.clone(), base(), Options::default(), status, sink).unwrap();
        let snap = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the saved state is served with the agent unreachable");
        (f, snap)
    }

    /// A prepared follower looks at nothing and sends nothing until started, and one dropped
    /// unstarted ends: a reload makes the new follower first and can still keep the old one.
    #[test]
    fn a_prepared_follower_waits_for_its_start() {
        let dir = scratch("prepared");
        let s = settings(&dir, "web-sidecar-proxy");
        save_with_db_refused(&s);
        let quick = Options {
            startup_grace: Duration::from_millis(50),
            ..Options::default()
        };
        let prepared = || {
            let (tx, rx) = mpsc::sync_channel(4);
            let sink = Box::new(move |snap| tx.send(snap).is_ok());
            let status = Arc::new(Status::default());
            (prepare(s.clone(), base(), quick, status, sink).unwrap(), rx)
        };
        let (held, rx) = prepared();
        assert!(
            rx.recv_timeout(Duration::from_secs(1)).is_err(),
            "not started: the saved state is not served"
        );
        drop(held);
        let (next, rx) = prepared();
        let f = next.start();
        rx.recv_timeout(Duration::from_secs(30))
            .expect("started: the saved state is served");
        f.stop();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_saved_state_with_refusals_is_served_offline() {
        let dir = scratch("refused");
        let s = settings(&dir, "web-sidecar-proxy");
        save_with_db_refused(&s);
        let (saved, _) = saved_snapshot(&s, &base())
            .unwrap()
            .expect("check shows the saved state");
        assert_eq!(
            saved.sidecar.as_ref().unwrap().upstreams[0].destination_name,
            "db"
        );
        assert!(
            saved.catalog.services.is_empty(),
            "db was refused: nothing to dial"
        );

        let (f, served) = serve_offline(&s);
        assert_eq!(served, saved);
        assert!(f.status.is_stale(), "a restored refusal is no confirmation");
        f.stop();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn base() -> Snapshot {
        crate::config::parse("[consul]\nsidecar_service_id = \"x\"\n")
            .unwrap()
            .snapshot
    }

    /// Served again while the agent is unreachable, a restored state is not saved again:
    /// the file keeps the time the agent confirmed it, which the next start reports.
    #[test]
    fn a_restored_state_keeps_the_time_it_was_saved() {
        let dir = scratch("saved-at");
        let s = settings(&dir, "web-sidecar-proxy");
        save_with_db_refused(&s);
        let mut saved = load(&s).unwrap().unwrap();
        saved.saved_unix = 1000;
        state_dir::write(&dir, STATE_FILE, &serde_json::to_vec(&saved).unwrap()).unwrap();

        let (f, _) = serve_offline(&s);
        f.stop();
        let saved_at = || load(&s).unwrap().unwrap().saved_unix;
        assert_eq!(saved_at(), 1000, "saved again as if confirmed now");

        // Once the agent confirms it, unchanged, it is saved as of then.
        let mut c = coordinator(&s);
        c.restore();
        c.unreachable_since = Some(Instant::now());
        assert!(c.maybe_send());
        assert!(c.status.is_stale());
        assert_eq!(saved_at(), 1000);
        all_confirmed(&mut c);
        assert!(c.maybe_send());
        assert!(!c.status.is_stale());
        assert!(saved_at() > 1000, "confirmed now, saved now");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unusable_saved_state_is_reported_and_ignored() {
        let dir = scratch("unusable");
        let s = settings(&dir, "web-sidecar-proxy");
        assert!(
            matches!(saved_snapshot(&s, &base()), Ok(None)),
            "nothing saved"
        );

        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), b"{\"truncated\": ").unwrap();
        let err = saved_snapshot(&s, &base())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("corrupt or incomplete"), "{err}");

        let saved = |answers: Vec<(Key, Answer)>, id: &str| Saved {
            saved_unix: 1,
            sidecar_service_id: Some(id.into()),
            gateway_service_id: None,
            answers,
            refused: Vec::new(),
        };
        let write = |s: &Saved| {
            state_dir::write(&dir, STATE_FILE, &serde_json::to_vec(s).unwrap()).unwrap()
        };
        write(&saved(Vec::new(), "db-sidecar-proxy"));
        let err = saved_snapshot(&s, &base())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("other registrations"), "{err}");

        write(&saved(Vec::new(), "web-sidecar-proxy"));
        let err = saved_snapshot(&s, &base())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("incomplete"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod compact_tests {
    use super::*;
    use crate::mesh::snapshot::{testing, Health as InstanceHealth};

    /// What a gateway keeps per followed service stays small: a new kind of answer or a
    /// richer error that is large must be boxed, or every service pays for it.
    #[test]
    fn what_is_kept_per_key_is_a_few_words() {
        assert!(
            std::mem::size_of::<Answer>() <= 56,
            "{}",
            std::mem::size_of::<Answer>()
        );
        assert!(
            std::mem::size_of::<Health>() <= 16,
            "{}",
            std::mem::size_of::<Health>()
        );
    }

    /// The snapshot remembered without its catalog still tells any change of the catalog,
    /// down to one instance's health, and takes the same snapshot for the same.
    #[test]
    fn a_sent_snapshot_tells_a_catalog_change_from_none() {
        let names: Vec<String> = (0..50).map(|i| format!("svc-{i}")).collect();
        let mut snap = testing::gateway("td.consul", &names, 2);
        let sent = Sent::of(&mut snap);
        assert_eq!(snap.catalog.services.len(), 50, "the catalog is put back");
        assert!(sent.rest.catalog.services.is_empty(), "and not kept");
        assert!(sent.is(&mut snap.clone()));

        let mut warning = snap.clone();
        warning.catalog.services[49].instances[1].health = InstanceHealth::Warning;
        assert!(!sent.is(&mut warning));

        let mut fewer = snap.clone();
        fewer.catalog.services.pop();
        assert!(!sent.is(&mut fewer));

        let mut other_domain = snap.clone();
        other_domain.here.trust_domain = "other.consul".into();
        assert!(
            !sent.is(&mut other_domain),
            "beyond the catalog, compared as before"
        );
    }
}
