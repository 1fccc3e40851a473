//! A gateway's view of every service of its place, with a fixed number of agent connections
//! and threads whatever the size of the mesh.
//!
//! ```text
//! names poller  ── GET /v1/catalog/services?index ──┐   (which names exist)
//! checks poller ── GET /v1/health/state/any?index ──┼─▶ fleet thread: diff ─▶ queue of names
//!                                                   │                            │
//! WORKERS × ── GET /v1/health/connect/:name (once per changed name) ◀────────────┘
//!                 └─▶ Update { Key::Connect } to the follower, only when it changed
//! ```
//!
//! A blocking query holds a connection (and here a thread) for as long as it waits, so only
//! the two pollers block; they say *that* something changed. What changed comes from their
//! diffs: a name that appeared or went, a check that appeared, went or changed its status or
//! index (each check names its service; a sidecar's check names the proxy, which is mapped to
//! the service it fronts). A change of the service table that neither diff explains (an
//! instance without checks, a new port) makes a sweep: every name fetched once, through the
//! same bounded workers. Connections to the agent: 2 blocking + `WORKERS` short requests.
//!
//! On an Enterprise agent (its registrations carry a namespace) the two polls ask every
//! namespace of the partition at once (`ns=*`), so the connections stay the same however
//! many namespaces there are. The names list merges namespaces (a name → tags map); the
//! checks name their service's namespace. A service is followed in each namespace its
//! checks (or its proxies' checks) name, or in the gateway's own namespace when none does,
//! and fetched with `?ns=` of that namespace. Inside the fleet and in what it tells the
//! follower such a service is `<namespace>/<name>` (see [`split`]). Community Edition
//! answers 400 to any `ns=`, so it is never sent there.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::api::health::instances;
use super::api::{catalog, nullable};
use super::blocking::{next_index, Backoff, RateLimit};
use super::client::{segment, Blocking, Client, Reply, Request};
use super::errors::ApiError;
use super::stop::Stop;
use super::watch::{Answer, Key, Timing, Update};
use crate::mesh::place::DEFAULT_PARTITION;
use crate::mesh::Place;

/// Short requests in flight at once (`/v1/health/connect/:name`, `/v1/catalog/service/:name`).
pub const WORKERS: usize = 2;
/// Blocking queries held open (the service names, the checks).
pub const POLLERS: usize = 2;
/// Threads a fleet runs: pollers, workers and the thread that diffs.
pub const THREADS: usize = POLLERS + WORKERS + 1;
/// How long a change of the service table may wait for the checks to explain it before
/// every name is fetched again.
const SETTLE: Duration = Duration::from_millis(300);
/// Thread stacks: these threads wait on sockets and parse JSON of bounded depth.
const STACK: usize = 256 << 10;
/// Between a namespace and a service name in an Enterprise fleet's names: neither a
/// namespace nor a service name Consul routes holds it, and the fleet drops names with it.
const NS_SEP: char = '/';

/// A name a fleet told: `(namespace, service)`, where a bare name (Community Edition) is in
/// `own`, the gateway's namespace.
pub fn split<'a>(entry: &'a str, own: &'a str) -> (&'a str, &'a str) {
    entry.split_once(NS_SEP).unwrap_or((own, entry))
}

pub fn qualified(namespace: &str, name: &str) -> String {
    format!("{namespace}{NS_SEP}{name}")
}

/// The handle kept by the follower; dropping it ends every thread of the fleet at once,
/// with their requests in flight: the fleet's client is its own, and is shut down.
pub struct Fleet {
    shared: Arc<Shared>,
    client: Arc<Client>,
}

impl Fleet {
    pub fn stop(&self) {
        self.shared.stop();
        self.client.shutdown();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A name to fetch; `resolve`: when it has no mesh instances, ask the catalog whether it is a
/// proxy, and of which service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Job {
    name: String,
    resolve: bool,
}

struct Shared {
    stop: Stop,
    inbox: Inbox,
    queue: Mutex<Queue>,
    ready: Condvar,
    told: Mutex<Told>,
    /// Proxy service name → the services it fronts (from the instances fetched).
    /// A `Vec`: a proxy fronts one service, nearly always, and a one-element set costs a
    /// whole B-tree node per proxy.
    proxies: Mutex<HashMap<String, Vec<String>>>,
    /// `proxies` gained a name since the fleet thread last looked.
    learned: AtomicBool,
}

/// What the follower was told.
#[derive(Default)]
struct Told {
    /// The names of the last list told: the follower takes a service's answer only once
    /// it is listed, so nothing is told of a name before that (a check can name a proxy
    /// before the names poller lists it).
    listed: HashSet<String>,
    /// Per name, a hash of the instances last told.
    hashes: HashMap<String, u64>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    queued: HashSet<Job>,
}

impl Shared {
    fn stop(&self) {
        self.stop.stop();
        self.inbox.close();
        let _guard = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        self.ready.notify_all();
    }

    fn push(&self, job: Job) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.queued.insert(job.clone()) {
            q.jobs.push_back(job);
            self.ready.notify_one();
        }
    }

    /// The next job; `None` once stopped.
    fn next(&self) -> Option<Job> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.stop.is_stopped() {
                return None;
            }
            if let Some(job) = q.jobs.pop_front() {
                q.queued.remove(&job);
                return Some(job);
            }
            q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn destinations(&self, proxy: &str) -> Option<Vec<String>> {
        let p = self.proxies.lock().unwrap_or_else(PoisonError::into_inner);
        p.get(proxy).cloned()
    }
}

/// What the pollers and workers tell the fleet thread, coalesced: of each poller only its
/// newest answer waits (a newer one replaces it), so a slow fleet thread holds at most two
/// answers besides the one it diffs, however fast the agent answers (a queue of them held
/// 88 MiB once: every `/v1/health/state/any` answer for 30,000 checks is about 2.6 MiB).
/// The diff compares with the last answer it took, so a skipped answer loses nothing.
#[derive(Default)]
struct Pending {
    names: Option<(u64, Vec<String>)>,
    checks: Option<(u64, HashMap<u64, CheckSeen>)>,
    /// A poller failed: after it answers again, everything is fetched again (the agent may
    /// have restarted with another state).
    poll_failed: bool,
    /// Fetches that failed: try them again later.
    fetch_failed: BTreeSet<String>,
    /// A worker learned a new proxy name: it leaves the names told.
    learned: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.names.is_none()
            && self.checks.is_none()
            && !self.poll_failed
            && self.fetch_failed.is_empty()
            && !self.learned
    }
}

/// The fleet thread's inbox; once closed (the fleet stopped), nothing more is taken in.
#[derive(Default)]
struct Inbox {
    pending: Mutex<(Pending, bool)>,
    arrived: Condvar,
}

impl Inbox {
    /// Adds to what is pending; false once closed.
    fn put(&self, f: impl FnOnce(&mut Pending)) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if p.1 {
            return false;
        }
        f(&mut p.0);
        self.arrived.notify_one();
        true
    }

    fn close(&self) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        p.1 = true;
        self.arrived.notify_all();
    }

    /// Everything pending, once something is or `until` passed (then possibly nothing);
    /// `None` once closed.
    fn take(&self, until: Option<Instant>) -> Option<Pending> {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if p.1 {
                return None;
            }
            if !p.0.is_empty() {
                return Some(std::mem::take(&mut p.0));
            }
            p = match until {
                None => self.arrived.wait(p).unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Some(Pending::default());
                    }
                    self.arrived
                        .wait_timeout(p, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// One check as the diff needs it, kept for every check of the place between answers:
/// compact (its node and ID only as a hash, the key it is kept under).
#[derive(Clone, Debug, PartialEq, Eq)]
struct CheckSeen {
    /// The service's name; empty for a node's own check.
    service: Box<str>,
    modify_index: u64,
    critical: bool,
}

/// Starts following every service of `place` (in `namespace`, or in every namespace of it
/// on an Enterprise agent); answers go to `tx` as `Key::Services` and `Key::Connect` updates.
pub fn spawn(
    place: Place,
    namespace: String,
    enterprise: bool,
    client: &Client,
    timing: Timing,
    tx: SyncSender<Update>,
) -> std::io::Result<Fleet> {
    // Its own connections: the pollers' two, and the workers' kept between fetches.
    let client = client.own(WORKERS);
    let shared = Arc::new(Shared {
        stop: Stop::default(),
        inbox: Inbox::default(),
        queue: Mutex::new(Queue::default()),
        ready: Condvar::new(),
        told: Mutex::new(Told::default()),
        proxies: Mutex::new(HashMap::new()),
        learned: AtomicBool::new(false),
    });
    let fleet = Fleet {
        shared: shared.clone(),
        client: client.clone(),
    };
    let ctx = Arc::new(Context {
        place,
        namespace,
        enterprise,
        client,
        timing,
        tx,
        shared,
    });
    for n in 0..WORKERS {
        let c = ctx.clone();
        thread(&format!("sidegate-fetch{n}"), move || c.work())?;
    }
    let c = ctx.clone();
    thread("sidegate-names", move || c.poll_names())?;
    let c = ctx.clone();
    thread("sidegate-checks", move || c.poll_checks())?;
    thread("sidegate-fleet", move || {
        ctx.diff();
        // The follower is gone (or the fleet stopped): the other threads end too.
        ctx.shared.stop();
    })?;
    Ok(fleet)
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(STACK)
        .spawn(f)
        .map(|_| ())
}

struct Context {
    place: Place,
    /// The gateway's own namespace.
    namespace: String,
    /// Every namespace of the place is followed, with `ns=` on each request.
    enterprise: bool,
    client: Arc<Client>,
    timing: Timing,
    tx: SyncSender<Update>,
    shared: Arc<Shared>,
}

impl Context {
    fn enterprise(&self, mut req: Request) -> Request {
        req = req.param("dc", &self.place.datacenter);
        if self.place.partition != DEFAULT_PARTITION {
            req = req.param("partition", &self.place.partition);
        }
        req
    }

    /// `req` in `namespace` (`*`: every one) on an Enterprise agent; unchanged otherwise.
    fn in_namespace(&self, req: Request, namespace: &str) -> Request {
        let req = self.enterprise(req);
        if self.enterprise {
            req.param("ns", namespace)
        } else {
            req
        }
    }

    /// A name as the fleet keeps it: in its namespace on an Enterprise agent.
    fn qualify(&self, namespace: &str, name: String) -> String {
        if self.enterprise {
            qualified(namespace, &name)
        } else {
            name
        }
    }

    fn connect_key(&self, entry: &str) -> Key {
        let (namespace, service) = split(entry, &self.namespace);
        Key::Connect {
            service: service.to_owned(),
            namespace: namespace.to_owned(),
            place: self.place.clone(),
        }
    }

    /// An Enterprise agent's merged names, each in every namespace where its checks name it
    /// or a proxy fronts it (a service registered without checks is known by its sidecar's
    /// checks, once its proxy is resolved), else in the gateway's own.
    fn names_in_namespaces(
        &self,
        names: &[String],
        checks: &HashMap<u64, CheckSeen>,
    ) -> BTreeSet<String> {
        let proxies = self
            .shared
            .proxies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut seen: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        let fronted = proxies.values().flatten().map(|d| &**d);
        for entry in checks.values().map(|c| &*c.service).chain(fronted) {
            if let Some((ns, name)) = entry.split_once(NS_SEP) {
                seen.entry(name).or_default().insert(ns);
            }
        }
        let mut out = BTreeSet::new();
        for name in names {
            match seen.get(name.as_str()) {
                Some(namespaces) => out.extend(namespaces.iter().map(|ns| qualified(ns, name))),
                None => {
                    out.insert(qualified(&self.namespace, name));
                }
            }
        }
        out
    }

    fn services_key(&self) -> Key {
        Key::Services {
            place: self.place.clone(),
        }
    }

    /// One blocking query, followed with Consul's client rules; `seen` gets each answer
    /// whose index moved (false: stop).
    fn poll(&self, req: &Request, mut seen: impl FnMut(u64, &Reply) -> Result<bool, ApiError>) {
        let stop = &self.shared.stop;
        let mut index = 0u64;
        let mut backoff = Backoff::new(self.timing.retry_min, self.timing.retry_max);
        // Two queries in all, so a faster pace than a per-key watch's still bounds what a
        // flapping catalog costs the agent: bursts of four, then ten a second at most.
        let mut limit = RateLimit::new(self.timing.every / 2, 4, Instant::now());
        while !stop.wait(limit.take(Instant::now())) {
            let blocking = Blocking::Index(index, self.timing.wait);
            let result = self.client.get(req, &blocking);
            if stop.is_stopped() {
                return;
            }
            let result = result.and_then(|reply| {
                let next = next_index(index, reply.index);
                if next == index && index != 0 {
                    // The wait ended with nothing new.
                    return Ok(true);
                }
                index = next;
                seen(next, &reply)
            });
            match result {
                Ok(true) => backoff.reset(),
                Ok(false) => return,
                Err(e) => {
                    index = 0;
                    let inbox = &self.shared.inbox;
                    let failed = !inbox.put(|p| p.poll_failed = true)
                        || self
                            .tx
                            .send(Update {
                                key: self.services_key(),
                                result: Err(e),
                            })
                            .is_err();
                    if failed || stop.wait(backoff.next_delay(fastrand::f64())) {
                        return;
                    }
                }
            }
        }
    }

    fn poll_names(&self) {
        let req = self.in_namespace(Request::new("/v1/catalog/services".into()), "*");
        self.poll(&req, |index, reply| {
            let mut names = catalog::service_names(&reply.body)
                .map_err(|e| ApiError::body(req.shown("GET", &Blocking::No), e))?;
            // Never routed (not a DNS label), and it would read as a namespace.
            names.retain(|n| !n.contains(NS_SEP));
            Ok(self.shared.inbox.put(|p| p.names = Some((index, names))))
        });
    }

    fn poll_checks(&self) {
        let req = self.in_namespace(Request::new("/v1/health/state/any".into()), "*");
        self.poll(&req, |index, reply| {
            let checks = checks(&reply.body, self.enterprise)
                .map_err(|e| ApiError::body(req.shown("GET", &Blocking::No), e))?;
            Ok(self.shared.inbox.put(|p| p.checks = Some((index, checks))))
        });
    }

    /// A worker: fetches queued names until stopped.
    fn work(&self) {
        let inbox = &self.shared.inbox;
        while let Some(job) = self.shared.next() {
            let result = self.fetch(&job);
            if self.shared.learned.swap(false, Ordering::SeqCst) && !inbox.put(|p| p.learned = true)
            {
                return;
            }
            if let Err(e) = result {
                if self.shared.stop.is_stopped() {
                    return;
                }
                let key = self.connect_key(&job.name);
                if let Ok(mut t) = self.shared.told.lock() {
                    t.hashes.remove(&job.name);
                }
                let sent = self.tx.send(Update {
                    key,
                    result: Err(e),
                });
                if sent.is_err()
                    || !inbox.put(|p| {
                        p.fetch_failed.insert(job.name);
                    })
                {
                    return;
                }
            }
        }
    }

    fn fetch(&self, job: &Job) -> Result<(), ApiError> {
        if let Some(dests) = self.shared.destinations(&job.name) {
            // A proxy's name: its own answer is empty; the services it fronts changed.
            for d in dests {
                self.shared.push(Job {
                    name: d,
                    resolve: false,
                });
            }
            return self.tell(&job.name, Vec::new(), &[]);
        }
        let (namespace, name) = split(&job.name, &self.namespace);
        let req = self.in_namespace(
            Request::new(format!("/v1/health/connect/{}", segment(name))),
            namespace,
        );
        let reply = self.client.get(&req, &Blocking::No)?;
        let shown = || req.shown("GET", &Blocking::No);
        if reply.status == 404 {
            return Err(ApiError::body(
                shown(),
                format!("HTTP 404: {}", reply.body.trim()),
            ));
        }
        let (list, proxies) =
            instances_and_proxies(&reply.body).map_err(|e| ApiError::body(shown(), e))?;
        // A proxy fronts services of its own namespace.
        let proxies: Vec<String> = proxies
            .into_iter()
            .map(|p| self.qualify(namespace, p))
            .collect();
        if list.is_empty() && job.resolve {
            self.resolve(&job.name)?;
        }
        self.tell(&job.name, list, &proxies)
    }

    /// Asks the catalog what `name` is: when it is a proxy, the services it fronts are
    /// fetched (their instances changed) and the name is remembered as a proxy.
    fn resolve(&self, name: &str) -> Result<(), ApiError> {
        let (namespace, bare) = split(name, &self.namespace);
        let req = self.in_namespace(
            Request::new(format!("/v1/catalog/service/{}", segment(bare))),
            namespace,
        );
        let reply = self.client.get(&req, &Blocking::No)?;
        let dests: Vec<String> = proxy_destinations(&reply.body)
            .map_err(|e| ApiError::body(req.shown("GET", &Blocking::No), e))?
            .into_iter()
            .map(|d| self.qualify(namespace, d))
            .collect();
        if dests.is_empty() {
            return Ok(());
        }
        {
            let mut p = self
                .shared
                .proxies
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !p.contains_key(name) {
                self.shared.learned.store(true, Ordering::SeqCst);
            }
            let known = p.entry(name.to_owned()).or_default();
            for d in &dests {
                if !known.contains(d) {
                    known.push(d.clone());
                }
            }
        }
        for d in dests {
            self.shared.push(Job {
                name: d,
                resolve: false,
            });
        }
        Ok(())
    }

    /// Sends the answer for `name` unless it is what was told last.
    fn tell(
        &self,
        name: &str,
        list: Vec<super::api::health::Instance>,
        proxies: &[String],
    ) -> Result<(), ApiError> {
        if !proxies.is_empty() {
            let mut p = self
                .shared
                .proxies
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for proxy in proxies {
                if !p.contains_key(proxy) {
                    self.shared.learned.store(true, Ordering::SeqCst);
                }
                if !p.get(proxy).is_some_and(|d| d.iter().any(|d| d == name)) {
                    p.entry(proxy.clone()).or_default().push(name.to_owned());
                }
            }
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        list.hash(&mut h);
        let hash = h.finish();
        {
            let mut told = self
                .shared
                .told
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !told.listed.contains(name) || told.hashes.get(name) == Some(&hash) {
                return Ok(());
            }
            told.hashes.insert(name.to_owned(), hash);
        }
        // A full queue blocks here: back-pressure on the workers, not unbounded memory.
        let _ = self.tx.send(Update {
            key: self.connect_key(name),
            result: Ok(Answer::Instances(list.into())),
        });
        Ok(())
    }

    /// The fleet thread: turns the pollers' answers into names to fetch. Returns once the
    /// fleet stopped or the follower is gone.
    fn diff(&self) {
        let mut diff = Diff::new();
        while let Some(got) = self.shared.inbox.take(diff.deadline()) {
            if self.shared.stop.is_stopped() {
                return;
            }
            let Pending {
                names,
                checks,
                poll_failed,
                fetch_failed,
                learned,
            } = got;
            if learned && !self.tell_names(&diff.names, false) {
                return;
            }
            diff.sweep_due |= poll_failed;
            for name in fetch_failed {
                diff.on_fetch_failed(name, self.timing.retry_min);
            }
            let answered = names.is_some() || checks.is_some();
            // The names first: checks taken with them may explain the change they show.
            let mut todo = Todo::default();
            let names_answered = names.is_some();
            if let Some((index, list)) = names {
                if self.enterprise {
                    // Their namespaces come from the checks, taken below.
                    diff.merged = Some((index, list));
                } else if !diff.on_names(self, index, list, &mut todo) {
                    return;
                }
            }
            if let Some((index, answer)) = checks {
                // `on_checks` reads a fresh `Todo`'s empty names as "touched no service".
                let mut touched = Todo::default();
                diff.on_checks(index, answer, &mut touched);
                todo.names.extend(touched.names);
                todo.sweep |= touched.sweep;
            }
            if let Some((index, merged)) = &diff.merged {
                // A name moves between namespaces, or gains one, with the checks alone.
                let index = *index;
                let now = self.names_in_namespaces(merged, &diff.checks);
                if (names_answered || now != diff.names)
                    && !diff.on_names(self, index, now.into_iter().collect(), &mut todo)
                {
                    return;
                }
            }
            for name in diff.due(answered, todo) {
                if diff.names.contains(&name) || self.shared.destinations(&name).is_some() {
                    self.shared.push(Job {
                        name,
                        resolve: true,
                    });
                }
            }
        }
    }

    /// Tells the follower the catalog's names that are not proxies (a proxy's own name has
    /// no mesh instances: following it would cost as much as a service and route nothing),
    /// when they changed. Names are listed before any answer for them is told, and unlisted
    /// before the list goes. False: the follower is gone.
    fn tell_names(&self, names: &BTreeSet<String>, always: bool) -> bool {
        let visible: Vec<String> = {
            let p = self
                .shared
                .proxies
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            names
                .iter()
                .filter(|n| !p.contains_key(*n))
                .cloned()
                .collect()
        };
        let added: Vec<String> = {
            let mut told = self
                .shared
                .told
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let before = told.listed.len();
            let keep: HashSet<&String> = visible.iter().collect();
            let Told { listed, hashes } = &mut *told;
            listed.retain(|n| {
                let kept = keep.contains(n);
                if !kept {
                    hashes.remove(n);
                }
                kept
            });
            let added: Vec<String> = visible
                .iter()
                .filter(|n| !listed.contains(*n))
                .cloned()
                .collect();
            if !always && added.is_empty() && listed.len() == before {
                return true;
            }
            added
        };
        let sent = self.tx.send(Update {
            key: self.services_key(),
            result: Ok(Answer::Names(visible)),
        });
        let mut told = self
            .shared
            .told
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        told.listed.extend(added);
        sent.is_ok()
    }

    /// A name left the catalog: forget what was told of it; if it was a proxy, the services
    /// it fronted lost instances.
    fn forget(&self, name: &str, candidates: &mut BTreeSet<String>) {
        {
            let mut told = self
                .shared
                .told
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Still listed: `tell_names` unlists it as it tells the list without it.
            told.hashes.remove(name);
        }
        let dests = self
            .shared
            .proxies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        candidates.extend(dests.into_iter().flatten());
    }
}

/// The fleet thread's memory between events: the pollers' last answers and what is owed.
struct Diff {
    names: BTreeSet<String>,
    /// An Enterprise agent's names list (merged across namespaces) and its index.
    merged: Option<(u64, Vec<String>)>,
    checks: HashMap<u64, CheckSeen>,
    first_names: bool,
    first_checks: bool,
    /// A poller failed: sweep at the next answer of either poller (once the names have
    /// answered at all).
    sweep_due: bool,
    /// The highest check index whose diff explained something, and a change of the
    /// service table not explained yet (its index, and since when).
    explained_upto: u64,
    unexplained: Option<(u64, Instant)>,
    /// Names whose fetch failed, and when to fetch them again.
    retries: Vec<(Instant, String)>,
}

/// What one event asks for: the names it touched, and whether every name is to be fetched.
/// Fresh for each event: `on_checks` reads an empty `names` as "touched no service".
#[derive(Default)]
struct Todo {
    names: BTreeSet<String>,
    sweep: bool,
}

impl Diff {
    fn new() -> Self {
        Diff {
            names: BTreeSet::new(),
            merged: None,
            checks: HashMap::new(),
            first_names: true,
            first_checks: true,
            sweep_due: false,
            explained_upto: 0,
            unexplained: None,
            retries: Vec::new(),
        }
    }

    /// When the fleet thread must wake without an event: an unexplained change has waited
    /// `SETTLE`, or a retry is due. `None`: only an event.
    fn deadline(&self) -> Option<Instant> {
        let mut until = self.unexplained.map(|(_, at)| at + SETTLE);
        if let Some(r) = self.retries.iter().map(|(at, _)| *at).min() {
            until = Some(until.map_or(r, |u| u.min(r)));
        }
        until
    }

    /// The names poller answered: names that came or went are fetched (a gone proxy's
    /// services with them) and the follower is told the list. The first answer sweeps; a
    /// later one that changed no name is a change of the service table the checks must
    /// explain within `SETTLE`. False: the follower is gone.
    fn on_names(&mut self, ctx: &Context, index: u64, list: Vec<String>, todo: &mut Todo) -> bool {
        let new: BTreeSet<String> = list.into_iter().collect();
        let mut changed = false;
        for gone in self.names.difference(&new) {
            changed = true;
            ctx.forget(gone, &mut todo.names);
        }
        for added in new.difference(&self.names) {
            changed = true;
            todo.names.insert(added.clone());
        }
        self.names = new;
        if !ctx.tell_names(&self.names, self.first_names) {
            return false;
        }
        if self.first_names {
            todo.sweep = true;
        } else if !changed && index > self.explained_upto {
            self.note_unexplained(index);
        }
        self.first_names = false;
        true
    }

    /// A change of the service table at `index` waits for the checks to explain it: what
    /// they must reach is the newest index, the wait began with the oldest change.
    fn note_unexplained(&mut self, index: u64) {
        self.unexplained = Some(match self.unexplained {
            Some((newest, since)) => (newest.max(index), since),
            None => (index, Instant::now()),
        });
    }

    /// The checks poller answered: every check that appeared, went or changed names its
    /// service; a node's own check sweeps. Any of them explains the service table's changes
    /// up to `index`.
    fn on_checks(&mut self, index: u64, now_checks: HashMap<u64, CheckSeen>, todo: &mut Todo) {
        let mut node_level = false;
        let mut touched = |c: &CheckSeen| {
            if c.service.is_empty() {
                node_level = true;
            } else {
                todo.names.insert(c.service.to_string());
            }
        };
        for (k, old) in &self.checks {
            match now_checks.get(k) {
                None => touched(old),
                Some(c) if c != old => touched(c),
                Some(_) => {}
            }
        }
        for (k, c) in &now_checks {
            if !self.checks.contains_key(k) {
                touched(c);
            }
        }
        self.checks = now_checks;
        if !self.first_checks && node_level {
            // A node's own check changes every instance on it.
            todo.sweep = true;
        }
        if !todo.names.is_empty() || node_level {
            self.explained_upto = self.explained_upto.max(index);
            if self.unexplained.is_some_and(|(i, _)| i <= index) {
                self.unexplained = None;
            }
        }
        if self.first_checks {
            // The names' first answer fetches everything already.
            todo.names.clear();
            self.first_checks = false;
        }
    }

    fn on_fetch_failed(&mut self, name: String, after: Duration) {
        self.retries.push((Instant::now() + after, name));
    }

    /// After an event (`answered`: a poller's answer): the names to fetch now, with the
    /// sweep owed since a poller failed, an unexplained change that waited long enough and
    /// the retries that are due.
    fn due(&mut self, answered: bool, todo: Todo) -> BTreeSet<String> {
        let Todo {
            names: mut candidates,
            mut sweep,
        } = todo;
        if self.sweep_due && answered && !self.first_names {
            self.sweep_due = false;
            sweep = true;
        }
        let now = Instant::now();
        if self.unexplained.is_some_and(|(_, at)| now >= at + SETTLE) {
            self.unexplained = None;
            sweep = true;
        }
        self.retries.retain(|(at, name)| {
            let due = *at <= now;
            if due {
                candidates.insert(name.clone());
            }
            !due
        });
        if sweep {
            candidates.extend(self.names.iter().cloned());
        }
        candidates
    }
}

/// `/v1/health/state/any`: every check, reduced to what the diff compares; `enterprise`:
/// a service's check names it in its namespace (`<namespace>/<name>`).
fn checks(body: &str, enterprise: bool) -> Result<HashMap<u64, CheckSeen>, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Raw<'a> {
        #[serde(borrow, default)]
        node: std::borrow::Cow<'a, str>,
        #[serde(borrow, rename = "CheckID", default)]
        check_id: std::borrow::Cow<'a, str>,
        #[serde(borrow, rename = "ServiceID", default)]
        service_id: std::borrow::Cow<'a, str>,
        #[serde(borrow, default)]
        service_name: std::borrow::Cow<'a, str>,
        #[serde(borrow, default)]
        status: std::borrow::Cow<'a, str>,
        #[serde(default)]
        modify_index: u64,
        #[serde(borrow, default)]
        namespace: std::borrow::Cow<'a, str>,
    }
    let raw: Vec<Raw<'_>> = nullable(&mut serde_json::Deserializer::from_str(body))?;
    Ok(raw
        .into_iter()
        .map(|r| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&*r.node, &*r.check_id).hash(&mut h);
            let service: Box<str> = if r.service_id.is_empty() {
                "".into()
            } else if enterprise {
                let ns = match &*r.namespace {
                    "" => crate::mesh::place::DEFAULT_NAMESPACE,
                    ns => ns,
                };
                qualified(ns, &r.service_name).into()
            } else {
                r.service_name.into()
            };
            let seen = CheckSeen {
                service,
                modify_index: r.modify_index,
                critical: r.status == "critical",
            };
            (h.finish(), seen)
        })
        .collect())
}

/// `/v1/health/connect/:name`: the instances, and the names of the proxies they are.
fn instances_and_proxies(
    body: &str,
) -> Result<(Vec<super::api::health::Instance>, Vec<String>), serde_json::Error> {
    #[derive(Deserialize)]
    struct Node {
        #[serde(rename = "Service", default)]
        service: Svc,
    }
    #[derive(Deserialize, Default)]
    struct Svc {
        #[serde(rename = "Service", default, deserialize_with = "nullable")]
        name: String,
    }
    let list = instances(body, None)?;
    let nodes: Vec<Node> = nullable(&mut serde_json::Deserializer::from_str(body))?;
    let mut proxies: Vec<String> = nodes.into_iter().map(|n| n.service.name).collect();
    proxies.sort();
    proxies.dedup();
    proxies.retain(|p| !p.is_empty());
    Ok((list, proxies))
}

/// `/v1/catalog/service/:name`: the services its proxy instances front (none when it is no
/// proxy).
fn proxy_destinations(body: &str) -> Result<BTreeSet<String>, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Raw {
        #[serde(default, deserialize_with = "nullable")]
        service_kind: String,
        #[serde(default, deserialize_with = "nullable")]
        service_proxy: RawProxy,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct RawProxy {
        #[serde(default, deserialize_with = "nullable")]
        destination_service_name: String,
    }
    let raw: Vec<Raw> = nullable(&mut serde_json::Deserializer::from_str(body))?;
    Ok(raw
        .into_iter()
        .filter(|r| r.service_kind == "connect-proxy")
        .map(|r| r.service_proxy.destination_service_name)
        .filter(|d| !d.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_read_compactly_and_null_is_empty() {
        let body = r#"[{"Node":"n1","CheckID":"service:web-sidecar-proxy:1","Name":"x","Status":"critical","Notes":"","Output":"long","ServiceID":"web-sidecar-proxy","ServiceName":"web-sidecar-proxy","ServiceTags":[],"Type":"tcp","CreateIndex":14,"ModifyIndex":15},
                       {"Node":"n1","CheckID":"serfHealth","Status":"passing","ServiceID":"","ServiceName":"","ModifyIndex":3}]"#;
        let got = checks(body, false).unwrap();
        assert_eq!(got.len(), 2);
        let proxy = got.values().find(|c| !c.service.is_empty()).unwrap();
        assert_eq!(&*proxy.service, "web-sidecar-proxy");
        assert!(proxy.critical);
        assert_eq!(proxy.modify_index, 15);
        let node = got.values().find(|c| c.service.is_empty()).unwrap();
        assert!(!node.critical, "a node's own check");
        assert!(checks("null", false).unwrap().is_empty());
        assert!(checks("{}", false).is_err());
    }

    /// On an Enterprise agent a service's check names it in its namespace; a node's own
    /// check names none, and a check without a namespace is in `default`.
    #[test]
    fn enterprise_checks_name_their_namespace() {
        let body = r#"[{"Node":"n1","CheckID":"service:api-sidecar-proxy:1","Status":"passing","ServiceID":"api-sidecar-proxy","ServiceName":"api-sidecar-proxy","Namespace":"team-a","ModifyIndex":5},
                       {"Node":"n1","CheckID":"service:db","Status":"passing","ServiceID":"db","ServiceName":"db","ModifyIndex":6},
                       {"Node":"n1","CheckID":"serfHealth","Status":"passing","ServiceID":"","ServiceName":"","Namespace":"default","ModifyIndex":3}]"#;
        let mut got: Vec<String> = checks(body, true)
            .unwrap()
            .into_values()
            .map(|c| c.service.to_string())
            .collect();
        got.sort();
        assert_eq!(got, ["", "default/db", "team-a/api-sidecar-proxy"]);
        assert_eq!(split("team-a/api", "default"), ("team-a", "api"));
        assert_eq!(split("api", "default"), ("default", "api"));
    }

    fn check(service: &str, modify_index: u64, critical: bool) -> CheckSeen {
        CheckSeen {
            service: service.into(),
            modify_index,
            critical,
        }
    }

    #[test]
    fn checks_name_what_to_fetch_and_explain_the_service_table() {
        let mut d = Diff::new();
        let first = HashMap::from([(1, check("web", 5, false)), (2, check("", 3, false))]);
        let mut todo = Todo::default();
        d.on_checks(7, first, &mut todo);
        assert!(
            todo.names.is_empty() && !todo.sweep,
            "the names' first answer sweeps"
        );
        assert_eq!(d.explained_upto, 7);
        // A change of the service table no name explains waits for the checks.
        d.first_names = false;
        d.names = BTreeSet::from(["web".to_owned(), "db".to_owned()]);
        d.unexplained = Some((9, Instant::now()));
        let mut todo = Todo::default();
        let later = HashMap::from([(1, check("web", 9, true)), (2, check("", 3, false))]);
        d.on_checks(9, later, &mut todo);
        assert_eq!(todo.names, BTreeSet::from(["web".to_owned()]));
        assert!(!todo.sweep);
        assert_eq!((d.explained_upto, d.unexplained), (9, None));
        // A node's own check changes every instance on it.
        let mut todo = Todo::default();
        let node = HashMap::from([(1, check("web", 9, true)), (2, check("", 10, true))]);
        d.on_checks(10, node, &mut todo);
        assert!(todo.sweep && todo.names.is_empty());
        assert_eq!(d.due(true, todo).len(), 2);
    }

    #[test]
    fn sweeps_and_retries_come_due() {
        let mut d = Diff::new();
        assert_eq!(d.deadline(), None);
        d.names = BTreeSet::from(["web".to_owned(), "db".to_owned()]);
        d.sweep_due = true;
        assert!(
            d.due(true, Todo::default()).is_empty(),
            "before the names answer"
        );
        d.first_names = false;
        assert!(
            d.due(false, Todo::default()).is_empty(),
            "until a poller answers"
        );
        assert_eq!(d.due(true, Todo::default()).len(), 2);
        assert!(!d.sweep_due);
        let long_ago = Instant::now() - SETTLE;
        d.unexplained = Some((4, long_ago));
        assert_eq!(d.deadline(), Some(long_ago + SETTLE));
        assert_eq!(d.due(false, Todo::default()).len(), 2);
        assert_eq!(d.unexplained, None);
        d.on_fetch_failed("db".into(), Duration::ZERO);
        d.on_fetch_failed("web".into(), Duration::from_secs(60));
        assert!(d.deadline().is_some_and(|at| at <= Instant::now()));
        assert_eq!(
            d.due(false, Todo::default()),
            BTreeSet::from(["db".to_owned()])
        );
        assert_eq!(d.retries.len(), 1, "the later retry waits");
    }

    /// A stopped fleet (a gateway's catalog no longer followed, or its follower replaced)
    /// closes its long-polls' connections at once, not when their waits end.
    #[test]
    fn a_stopped_fleet_closes_its_connections_at_once() {
        use super::super::watch::tests::{closed_within, silent_agent};
        let (client, accepted) = silent_agent();
        let (tx, _updates) = std::sync::mpsc::sync_channel(4);
        let place = Place::new("dc1", DEFAULT_PARTITION);
        let fleet = spawn(
            place,
            "default".into(),
            false,
            &client,
            Timing::default(),
            tx,
        )
        .unwrap();
        let polls: Vec<_> = (0..POLLERS)
            .map(|_| accepted.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        drop(fleet);
        for conn in polls {
            assert!(
                closed_within(conn, Duration::from_secs(5)).is_some(),
                "a stopped fleet's long-poll still holds its connection"
            );
        }
    }

    /// However many answers the pollers give while the fleet thread is busy, one per poller
    /// waits, the newest; what the workers report waits with them, once per name.
    #[test]
    fn the_inbox_keeps_only_each_pollers_newest_answer() {
        let inbox = Inbox::default();
        for i in 1..=50u64 {
            let checks = HashMap::from([(i, check("web", i, false))]);
            assert!(inbox.put(|p| p.checks = Some((i, checks))));
            assert!(inbox.put(|p| p.names = Some((i, vec![format!("svc-{i}")]))));
            assert!(inbox.put(|p| {
                p.fetch_failed.insert("db".into());
            }));
        }
        let got = inbox.take(None).unwrap();
        let (index, checks) = got.checks.unwrap();
        assert_eq!((index, checks.len()), (50, 1));
        assert!(checks.contains_key(&50));
        assert_eq!(got.names, Some((50, vec!["svc-50".to_owned()])));
        assert_eq!(got.fetch_failed, BTreeSet::from(["db".to_owned()]));
        assert!(!got.poll_failed && !got.learned);
        // Taken: nothing waits; a deadline ends the wait with nothing.
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(inbox.take(Some(soon)).unwrap().is_empty());
        // What comes after a take is the next take's; once closed, nothing is taken in.
        assert!(inbox.put(|p| p.learned = true));
        assert!(inbox.take(Some(soon)).unwrap().learned);
        inbox.close();
        assert!(!inbox.put(|p| p.poll_failed = true));
        assert!(inbox.take(None).is_none(), "closed: the fleet thread ends");
    }

    /// A change of the service table the checks have not explained yet is kept as the
    /// newest index seen (what the checks must reach to explain it) with the oldest time
    /// (when the wait for them began): keeping the oldest index let checks that explained
    /// only the first change clear the later ones, which then never made a sweep.
    #[test]
    fn unexplained_changes_keep_the_newest_index_and_the_oldest_time() {
        let mut d = Diff::new();
        d.first_names = false;
        d.explained_upto = 3;
        let first = Instant::now() - Duration::from_millis(100);
        d.unexplained = Some((5, first));
        d.note_unexplained(9);
        assert_eq!(d.unexplained, Some((9, first)));
        d.note_unexplained(7);
        assert_eq!(
            d.unexplained,
            Some((9, first)),
            "an older index moves nothing"
        );
        // Checks up to 5 explain the first change only: the wait goes on.
        let mut todo = Todo::default();
        d.on_checks(5, HashMap::from([(1, check("web", 5, false))]), &mut todo);
        assert_eq!(d.unexplained, Some((9, first)));
        let mut todo = Todo::default();
        d.on_checks(9, HashMap::from([(1, check("web", 9, false))]), &mut todo);
        assert_eq!(d.unexplained, None);
    }

    #[test]
    fn proxies_are_told_apart_from_services() {
        let body = r#"[{"ServiceKind":"connect-proxy","ServiceName":"web-sidecar-proxy","ServiceProxy":{"DestinationServiceName":"web"}},
                       {"ServiceKind":"","ServiceName":"web","ServiceProxy":null}]"#;
        assert_eq!(
            proxy_destinations(body).unwrap(),
            BTreeSet::from(["web".to_owned()])
        );
        assert!(proxy_destinations("null").unwrap().is_empty());
        let body = r#"[{"Node":{"Node":"a","Address":"10.0.0.1"},"Service":{"ID":"w1","Service":"web-sidecar-proxy","Port":21000},"Checks":[]}]"#;
        let (list, proxies) = instances_and_proxies(body).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(proxies, ["web-sidecar-proxy"]);
    }
}
