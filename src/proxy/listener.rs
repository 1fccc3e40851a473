//! Listening sockets and accepting on them: which listener a plan asks for (its key), binding
//! it, and one accept loop per listener that hands each connection to its role under the
//! plan current at that moment.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smol::LocalExecutor;

use super::handover::Socket;
use super::loops::{Handoff, Role, Spread};
use super::pending::Pending;
use super::reactor::{Async, Timer};
use super::{upstream, Serving};
use crate::mesh::plan::UpstreamPlan;
use crate::mesh::sidecar::Bind;
use crate::mesh::Plan;
use crate::metrics::{ConnStats, Counter, ListenerCounters, Metrics};

/// The accept queue asked for each TCP listener (see `Bound::bind`).
const BACKLOG: i32 = 4096;

/// How long accepting pauses when the process is out of file descriptors: long enough for
/// connections to finish, short enough that nobody notices.
const EMFILE_PAUSE: Duration = Duration::from_millis(100);

/// A listener as the configuration names it. Two plans that name the same key share the
/// listening socket across a reload; a key only in the new plan is bound, one only in the old
/// plan is closed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenerKey {
    Gateway(SocketAddr),
    Inbound(SocketAddr),
    /// A Unix socket is keyed by its path alone: a new file mode is applied in place.
    Upstream(BindKey),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BindKey {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl BindKey {
    pub fn of(bind: &Bind) -> Self {
        match bind {
            Bind::Tcp(a) => BindKey::Tcp(*a),
            Bind::Unix { path, .. } => BindKey::Unix(path.clone()),
        }
    }
}

impl std::fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenerKey::Gateway(a) => write!(f, "gateway {a}"),
            ListenerKey::Inbound(a) => write!(f, "inbound {a}"),
            ListenerKey::Upstream(BindKey::Tcp(a)) => write!(f, "upstream {a}"),
            ListenerKey::Upstream(BindKey::Unix(p)) => write!(f, "upstream unix:{}", p.display()),
        }
    }
}

impl ListenerKey {
    /// Every listener a plan asks for, in a stable order: gateway, inbound, upstreams.
    pub fn all(plan: &Plan) -> Vec<ListenerKey> {
        let gateway = plan.gateway.iter().flat_map(|g| &g.settings.listen);
        gateway
            .map(|a| ListenerKey::Gateway(*a))
            .chain(plan.inbound.iter().map(|i| ListenerKey::Inbound(i.listen)))
            .chain(
                plan.upstreams
                    .iter()
                    .map(|u| ListenerKey::Upstream(BindKey::of(&u.listen))),
            )
            .collect()
    }

    /// How many connections this listener's scope may hold under `plan`, or `None` when the
    /// plan no longer has it (it is about to be closed).
    fn limit(&self, plan: &Plan) -> Option<usize> {
        match self {
            ListenerKey::Gateway(_) => plan.gateway.as_ref().map(|g| g.settings.max_connections),
            ListenerKey::Inbound(_) => plan.inbound.as_ref().map(|i| i.max_connections),
            ListenerKey::Upstream(_) => self.upstream(plan).map(|u| u.max_connections),
        }
    }

    pub fn upstream<'p>(&self, plan: &'p Plan) -> Option<&'p UpstreamPlan> {
        self.upstream_index(plan).map(|i| &plan.upstreams[i])
    }

    fn upstream_index(&self, plan: &Plan) -> Option<usize> {
        let ListenerKey::Upstream(key) = self else {
            return None;
        };
        plan.upstreams
            .iter()
            .position(|u| BindKey::of(&u.listen) == *key)
    }

    /// The role label of `/metrics`.
    pub fn role(&self) -> &'static str {
        match self {
            ListenerKey::Gateway(_) => "gateway",
            ListenerKey::Inbound(_) => "inbound",
            ListenerKey::Upstream(_) => "upstream",
        }
    }

    fn counters(&self) -> fn(&Metrics) -> ListenerCounters<'_> {
        match self {
            ListenerKey::Gateway(_) => Metrics::gateway_listener,
            ListenerKey::Inbound(_) => Metrics::inbound_listener,
            ListenerKey::Upstream(_) => Metrics::upstream_listener,
        }
    }
}

/// A bound listening socket, not yet accepting.
/// Plain sockets, so that one bound elsewhere can be sent to the first loop: its accept loop
/// registers it there (`Accepting`).
pub enum Bound {
    Tcp(TcpListener),
    /// The socket, its path, the file it made there (device, inode), and whether that file
    /// must outlive it (the socket lives on in systemd's fd store).
    Unix(UnixListener, PathBuf, (u64, u64), Arc<AtomicBool>),
}

impl Bound {
    /// Binds what `key` names under `plan`. A Unix socket left by an earlier run is replaced
    /// (any other file at that path is an error, and so is a socket another process still
    /// listens on), then given its configured mode.
    pub fn bind(key: &ListenerKey, plan: &Plan, keep_file: Arc<AtomicBool>) -> io::Result<Bound> {
        match key {
            ListenerKey::Gateway(a)
            | ListenerKey::Inbound(a)
            | ListenerKey::Upstream(BindKey::Tcp(a)) => {
                let l = TcpListener::bind(a)?;
                // std listens with a backlog of 128. During a restart the backlog is where
                // new connections wait for the next process (systemd's fd store keeps the
                // socket): a longer one lets more of them wait instead of having their SYNs
                // dropped and retried a second later. The kernel caps it at
                // net.core.somaxconn (4096 by default), as systemd's own `Backlog=` is.
                rustix::net::listen(&l, BACKLOG)?;
                Ok(Bound::Tcp(l))
            }
            // (std's Unix listeners already ask for the kernel's maximum.)
            ListenerKey::Upstream(BindKey::Unix(path)) => {
                remove_stale_socket(path)?;
                let l = UnixListener::bind(path)?;
                let made = file_id(path)?;
                set_socket_mode(key, plan)?;
                Ok(Bound::Unix(l, path.clone(), made, keep_file))
            }
        }
    }

    /// Serves `key` on a socket systemd passed (already bound, already listening). A Unix
    /// socket's file is the one at its path now, given the configured mode; none there (it
    /// was deleted) is an error: nobody could connect to it.
    pub fn adopt(
        key: &ListenerKey,
        plan: &Plan,
        socket: Socket,
        keep_file: Arc<AtomicBool>,
    ) -> io::Result<Bound> {
        match (key, socket) {
            (ListenerKey::Upstream(BindKey::Unix(path)), Socket::Unix(l)) => {
                let made = file_id(path)?;
                set_socket_mode(key, plan)?;
                Ok(Bound::Unix(l, path.clone(), made, keep_file))
            }
            (ListenerKey::Upstream(BindKey::Unix(_)), Socket::Tcp(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a TCP socket passed for a Unix socket listener",
            )),
            (_, Socket::Tcp(l)) => Ok(Bound::Tcp(l)),
            (_, Socket::Unix(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a Unix socket passed for a TCP listener",
            )),
        }
    }

    /// The listening socket, for systemd's fd store.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Bound::Tcp(l) => l.as_fd(),
            Bound::Unix(l, ..) => l.as_fd(),
        }
    }

    /// How `/metrics` names this listener: its bound address, or `unix:<path>`.
    fn label(&self) -> String {
        match self {
            Bound::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            Bound::Unix(_, path, ..) => format!("unix:{}", path.display()),
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Bound::Tcp(l) => l.local_addr().ok(),
            Bound::Unix(..) => None,
        }
    }

    /// Registers the socket with this thread's reactor, to accept on it. A TCP listener gets
    /// `TCP_NODELAY` first: Linux copies it into every socket accepted from it, which saves a
    /// system call per connection (a new connection's cost is mostly system calls). Nagle's
    /// delay would hold back the small records of a TLS handshake relayed one by one.
    fn accepting(&self) -> io::Result<Accepting<'_>> {
        Ok(match self {
            Bound::Tcp(l) => {
                if let Err(e) = rustix::net::sockopt::set_tcp_nodelay(l, true) {
                    crate::warn!("cannot set TCP_NODELAY on {}: {e}", self.label());
                }
                Accepting::Tcp(Async::new(l)?)
            }
            Bound::Unix(l, ..) => Accepting::Unix(Async::new(l)?),
        })
    }
}

/// A listener registered with the first loop's reactor, for as long as its accept loop runs.
enum Accepting<'l> {
    Tcp(Async<&'l TcpListener>),
    Unix(Async<&'l UnixListener>),
}

impl Accepting<'_> {
    async fn accept(&self) -> io::Result<Conn> {
        match self {
            Accepting::Tcp(l) => l.accept().await.map(|(s, peer)| Conn::Tcp(s, peer)),
            Accepting::Unix(l) => l.accept().await.map(Conn::Unix),
        }
    }
}

impl Drop for Bound {
    /// A closed Unix listener takes its socket file with it, so a stale path does not look
    /// like a live upstream to the local app — but only the file it made: one that another
    /// process has bound at that path since (after removing ours) is theirs to keep. Nor
    /// when the socket lives on in systemd's fd store: the next instance serves that file.
    fn drop(&mut self) {
        if let Bound::Unix(_, path, made, keep) = self {
            if !keep.load(Ordering::Relaxed) && file_id(path).is_ok_and(|now| now == *made) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The (device, inode) of the file at `path`, not following a link.
fn file_id(path: &std::path::Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()))
}

/// Makes way for binding a Unix socket at `path`: a socket nobody listens on (connecting is
/// refused: its process is gone) is removed; a live one belongs to another process — maybe
/// another sidegate, or the app itself — and is neither taken over nor deleted.
fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        // Nothing there (bind makes it), or not a socket (bind refuses it: EADDRINUSE).
        return Ok(());
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is a socket another process is listening on; not taking it over",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "{} is a socket whose owner cannot be told ({e}); remove it if it is stale",
                path.display()
            ),
        )),
    }
}

/// Gives an upstream's Unix socket the mode `plan` asks for; nothing for other listeners.
pub fn set_socket_mode(key: &ListenerKey, plan: &Plan) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = key.upstream(plan).and_then(|u| match &u.listen {
        Bind::Unix {
            path,
            mode: Some(mode),
        } => Some((path, *mode)),
        _ => None,
    });
    match mode {
        Some((path, mode)) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
        None => Ok(()),
    }
}

/// An accepted connection, not yet registered: the loop that serves it does that.
pub enum Conn {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

/// What every accept loop on the (first) event loop thread shares.
pub struct Shared {
    pub ex: Rc<LocalExecutor<'static>>,
    /// The plan new connections are accepted under; swapped whole by a reload. Only the first
    /// loop accepts, so this is the process's one current plan.
    pub current: RefCell<Arc<Serving>>,
    pub metrics: Arc<Metrics>,
    /// The loops accepted connections are served on.
    pub spread: Spread,
    /// Gateway connections waiting for their ClientHello, on every loop.
    pub pending: Arc<Pending>,
}

/// Accepts on one listener until its task is dropped: the connection limit first (refuse,
/// never queue), then one task per connection, holding the plan current at accept.
pub async fn accept_loop(listener: Bound, key: ListenerKey, shared: Rc<Shared>) {
    let counters = key.counters();
    // This listener's own counters (`/metrics` per listener); upstreams are also limited by
    // them one by one, while gateway listeners share one limit, as does inbound.
    let held = shared
        .metrics
        .listeners
        .get(&[key.role(), &listener.label()]);
    let accepting = match listener.accepting() {
        Ok(a) => a,
        Err(e) => {
            counters(&shared.metrics).accept_errors.inc();
            crate::error!("{key}: cannot wait for connections ({e}); not accepting on it");
            return;
        }
    };
    loop {
        let conn = match accepting.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                accept_failed(&e, counters(&shared.metrics).accept_errors, &key).await;
                continue;
            }
        };
        let c = counters(&shared.metrics);
        c.accepted.inc();
        let serving = shared.current.borrow().clone();
        let Some(limit) = key.limit(&serving.plan) else {
            continue; // closed by the reload that is in progress
        };
        let open = match key {
            ListenerKey::Upstream(_) => held.active.get(),
            _ => c.active.get(),
        };
        if open >= limit as u64 {
            // Refuse rather than queue: a queue here would be unbounded memory and latency.
            c.refused_limit.inc();
            crate::debug!("{key}: refused a connection, {open} open (max_connections {limit})");
            continue;
        }
        let role = match key {
            ListenerKey::Gateway(_) => Role::Gateway,
            ListenerKey::Inbound(_) => Role::Inbound,
            ListenerKey::Upstream(_) => match key.upstream_index(&serving.plan) {
                Some(index) => Role::Upstream(index),
                None => continue,
            },
        };
        // Counted here, on the one thread that accepts, before it goes to its loop: the limit
        // above and this count never race another loop. The guard travels inside the
        // connection's own future: wrapping that future in another one to hold the guard
        // would lay it out twice per connection.
        let (on, on_loop) = shared.spread.pick();
        let active = Active::new(shared.metrics.clone(), counters, held.clone(), on_loop);
        let handoff = Handoff {
            serving,
            role,
            conn,
            active,
        };
        shared.spread.hand(on, handoff, &shared.ex, &shared.pending);
    }
}

pub async fn serve_upstream(serving: Arc<Serving>, index: usize, conn: Conn, active: Active) {
    let (Some(up), Some(rt)) = (serving.plan.upstreams.get(index), serving.upstream(index)) else {
        return;
    };
    let m = &active.metrics.upstream;
    match conn {
        Conn::Tcp(s, _) => {
            if let Some(s) = active.register(s, "upstream", &up.destination_name) {
                upstream::serve(s, up, rt, m).await;
            }
        }
        Conn::Unix(s) => {
            if let Some(s) = active.register(s, "upstream", &up.destination_name) {
                upstream::serve(s, up, rt, m).await;
            }
        }
    }
}

async fn accept_failed(e: &io::Error, errors: &Counter, key: &ListenerKey) {
    errors.inc();
    if super::dial::out_of_fds(e) {
        crate::warn!("{key}: cannot accept ({e}); pausing accepts for {EMFILE_PAUSE:?}");
        Timer::after(EMFILE_PAUSE).await;
    } else {
        // ECONNABORTED and friends: the client gave up between SYN and accept.
        crate::debug!("{key}: accept failed: {e}");
    }
}

/// Counts a connection as active (in its role's counters and its listener's) for as long as
/// it is held, and gives the connection its metrics.
pub struct Active {
    pub metrics: Arc<Metrics>,
    counters: fn(&Metrics) -> ListenerCounters<'_>,
    held: Arc<ConnStats>,
    /// The counters of the loop serving it (`loops`).
    on_loop: Arc<ConnStats>,
}

impl Active {
    fn new(
        metrics: Arc<Metrics>,
        counters: fn(&Metrics) -> ListenerCounters<'_>,
        held: Arc<ConnStats>,
        on_loop: Arc<ConnStats>,
    ) -> Self {
        counters(&metrics).active.inc();
        held.opened.inc();
        held.active.inc();
        on_loop.active.inc();
        Active {
            metrics,
            counters,
            held,
            on_loop,
        }
    }

    pub fn on_loop(&self) -> &ConnStats {
        &self.on_loop
    }

    /// Registers this accepted connection with the serving loop's reactor. On failure (the
    /// kernel out of memory for the epoll entry) it is closed, and counted as its listener's
    /// accept error, as accepting it would have been.
    /// `role` and `which` name it in the log line, as the role's other lines do.
    pub fn register<T: AsFd>(
        &self,
        s: T,
        role: &str,
        which: &dyn std::fmt::Display,
    ) -> Option<Async<T>> {
        Async::nonblocking(s)
            .inspect_err(|e| {
                (self.counters)(&self.metrics).accept_errors.inc();
                crate::warn!("{role} {which}: cannot wait on the connection ({e}); closed it");
            })
            .ok()
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        (self.counters)(&self.metrics).active.dec();
        self.held.active.dec();
        self.on_loop.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections accepted from a TCP listener have Nagle's algorithm off without a call of
    /// their own: the listener's option is inherited.
    #[test]
    fn accepted_tcp_connections_have_nodelay() {
        let bound = Bound::Tcp(TcpListener::bind("127.0.0.1:0").unwrap());
        let to = bound.local_addr().unwrap();
        let accepting = bound.accepting().unwrap();
        let client = std::net::TcpStream::connect(to).unwrap();
        let conn = super::super::reactor::within(accepting.accept());
        let Some(Ok(Conn::Tcp(s, peer))) = conn else {
            panic!("no TCP connection accepted")
        };
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(
            s.nodelay().unwrap(),
            "TCP_NODELAY is off on the accepted socket"
        );
    }
}
