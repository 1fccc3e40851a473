//! Listening sockets that outlive the process: taken from systemd at start, given to systemd
//! to keep while the next instance starts.
//!
//! A restart (or a package upgrade, which restarts) used to close every listening socket at
//! SIGTERM and open new ones once the next process had started: in between, for the whole
//! drain and the start, every new connection was refused. Now each listener is sent to
//! systemd's file-descriptor store (`FDSTORE=1`, `FileDescriptorStoreMax=` in the unit) as
//! soon as it is bound. systemd holds its copy of the socket across the restart and passes it
//! to the next process the way socket activation does: at fd 3 and up, counted by `LISTEN_FDS`,
//! named by `LISTEN_FDNAMES`, for the process `LISTEN_PID`. The socket never stops listening:
//! connections that arrive while no process accepts wait in the kernel's backlog and are
//! accepted by the next instance.
//!
//! A passed socket is matched to a listener by the name it was stored under, or else by its
//! bound address (`getsockname`), so that sockets from a `.socket` unit, named anything, are
//! taken too. Sockets nothing in the configuration asks for are closed (and dropped from the
//! store), so that a port removed from the file does not stay bound, queueing connections no
//! process will accept.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::listener::{BindKey, ListenerKey};

/// systemd's side of the fd store: `lifecycle::notify` speaks the protocol.
pub trait FdStore: Send + Sync {
    /// `FDSTORE=1` with `FDNAME=name`, the socket attached (SCM_RIGHTS).
    fn store(&self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// `FDSTOREREMOVE=1` with `FDNAME=name`: systemd closes its copies under that name.
    fn remove(&self, name: &str) -> io::Result<()>;
}

/// A listening socket passed by systemd.
pub enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Socket {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l) => l.as_fd(),
        }
    }
}

/// Where a passed socket is bound.
#[derive(Debug, PartialEq)]
enum Place {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// An unnamed or abstract Unix socket: matched by name only.
    Elsewhere,
}

struct Passed {
    name: String,
    socket: Socket,
    place: Place,
}

/// The sockets passed at start, not yet claimed by a listener, and the store new ones go to.
pub struct Handover {
    passed: Mutex<Vec<Passed>>,
    /// The names of the sockets handed to the store by this process.
    kept: Mutex<Vec<String>>,
    /// Where the passed sockets that listeners took are bound.
    taken: Mutex<Vec<Place>>,
    store: Option<Box<dyn FdStore>>,
    /// Set when the process stops with its sockets in the store: the Unix sockets' files
    /// stay, for the next instance (see `listener::Bound`'s `Drop`).
    keep_files: Arc<AtomicBool>,
}

impl Handover {
    /// Nothing passed, nothing stored: a process outside systemd, and the in-process tests.
    pub fn none() -> Handover {
        Handover {
            passed: Mutex::new(Vec::new()),
            kept: Mutex::new(Vec::new()),
            taken: Mutex::new(Vec::new()),
            store: None,
            keep_files: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Takes the sockets passed in `LISTEN_FDS` (when `LISTEN_PID` is this process) and
    /// unsets the variables, so that no child process mistakes them for its own. Call it
    /// first thing, before other threads read the environment. `store`: where bound
    /// listeners are kept across restarts (none outside systemd).
    pub fn from_env(store: Option<Box<dyn FdStore>>) -> Handover {
        Handover {
            passed: Mutex::new(take_passed()),
            kept: Mutex::new(Vec::new()),
            taken: Mutex::new(Vec::new()),
            store,
            keep_files: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether listeners are kept in systemd's store.
    pub fn stores(&self) -> bool {
        self.store.is_some()
    }

    /// The passed socket for `key`, if any: the one stored under its name, or else one bound
    /// to its address (a port-0 key matches by name only: its address is not known).
    pub fn take(&self, key: &ListenerKey) -> Option<(String, Socket)> {
        let mut passed = lock(&self.passed);
        let name = fd_name(key);
        let by_name = passed
            .iter()
            .position(|p| Some(&p.name) == name.as_ref() && fits(key, &p.place, true));
        let at = by_name.or_else(|| passed.iter().position(|p| fits(key, &p.place, false)))?;
        let p = passed.remove(at);
        lock(&self.taken).push(p.place);
        Some((p.name, p.socket))
    }

    /// A listener is bound (or taken over from a passed socket, stored before as `was`):
    /// hand systemd its copy under the listener's name. Best effort: without it the socket
    /// is merely closed at the next restart, as before.
    pub fn keep(&self, key: &ListenerKey, fd: BorrowedFd<'_>, was: Option<&str>) {
        let Some(store) = &self.store else {
            return;
        };
        let Some(name) = fd_name(key) else {
            crate::warn!("{key}: its name is too long for systemd's fd store; it will be closed across restarts");
            return;
        };
        // The store then holds exactly this socket under this name. systemd keeps a socket
        // once, under the name it first got, and keeps several sockets under one name: so
        // whatever it holds under the name the socket was passed as (an older naming, a
        // `.socket` unit's) and under this listener's (a socket this one replaces) goes
        // first. Our own copy stays open meanwhile: nothing is refused.
        let mut names = vec![name.as_str()];
        names.extend(was.filter(|w| *w != name));
        for n in names {
            if let Err(e) = store.remove(n) {
                crate::debug!("{key}: FDSTOREREMOVE {n:?} failed: {e}");
            }
        }
        match store.store(&name, fd) {
            Ok(()) => lock(&self.kept).push(name),
            Err(e) => crate::warn!("{key}: cannot hand the socket to systemd's fd store ({e}); it will be closed across restarts"),
        }
    }

    /// A listener was closed for good (a reload dropped it): systemd closes its copy too, so
    /// the port is free and nothing queues connections on it.
    pub fn forget(&self, key: &ListenerKey) {
        if let (Some(store), Some(name)) = (&self.store, fd_name(key)) {
            lock(&self.kept).retain(|k| *k != name);
            if let Err(e) = store.remove(&name) {
                crate::warn!("{key}: cannot drop the socket from systemd's fd store: {e}");
            }
        }
    }

    /// Closes the passed sockets no listener took, dropping ours from the store.
    pub fn release_unclaimed(&self) {
        let left = std::mem::take(&mut *lock(&self.passed));
        let kept = lock(&self.kept).clone();
        let taken = std::mem::take(&mut *lock(&self.taken));
        for p in left {
            if p.place != Place::Elsewhere && taken.contains(&p.place) {
                // Another copy of a socket served now: a `.socket` unit's next to the
                // store's.
                crate::debug!(
                    "closing the socket systemd passed as {:?}: a copy of one already served",
                    p.name
                );
            } else {
                crate::info!(
                    "closing the socket systemd passed as {:?} ({:?}): no listener of the configuration is bound there",
                    p.name,
                    p.place
                );
            }
            // A name a listener now serves is left alone: removing it would drop that
            // listener's socket, stored again above.
            let stale = is_ours(&p.name) && !kept.contains(&p.name);
            if let (Some(store), true) = (&self.store, stale) {
                if let Err(e) = store.remove(&p.name) {
                    crate::debug!("FDSTOREREMOVE {:?} failed: {e}", p.name);
                }
            }
            drop(p.socket);
        }
    }

    /// The process is stopping: with the store in use, the sockets live on in systemd, and
    /// the Unix sockets' files must stay where the next instance (and the clients) find them.
    pub fn stopping(&self) {
        if self.stores() {
            self.keep_files.store(true, Ordering::Relaxed);
        }
    }

    /// Shared with each Unix listener: true once its file must outlive it.
    pub fn keep_files(&self) -> Arc<AtomicBool> {
        self.keep_files.clone()
    }

    /// How many passed sockets are not claimed yet (tests, logs).
    pub fn unclaimed(&self) -> usize {
        lock(&self.passed).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a passed socket bound at `place` can serve `key`: the same address (the same
/// path). A key on port 0 only by its name (`named`), on the same IP.
fn fits(key: &ListenerKey, place: &Place, named: bool) -> bool {
    match (key, place) {
        (
            ListenerKey::Gateway(want)
            | ListenerKey::Inbound(want)
            | ListenerKey::Upstream(BindKey::Tcp(want)),
            Place::Tcp(have),
        ) if want.port() == 0 => named && want.ip() == have.ip(),
        (
            ListenerKey::Gateway(want)
            | ListenerKey::Inbound(want)
            | ListenerKey::Upstream(BindKey::Tcp(want)),
            Place::Tcp(have),
        ) => want == have,
        (ListenerKey::Upstream(BindKey::Unix(want)), Place::Unix(have)) => want == have,
        _ => false,
    }
}

/// The longest name systemd accepts (`FDNAME=`, and each name of `LISTEN_FDNAMES`).
const FDNAME_MAX: usize = 255;

/// The name a listener's socket is stored under: `ROLE=ADDRESS`, e.g.
/// `gateway=0.0.0.0%3A8443`, `upstream=unix%3A/run/app/db.sock`. systemd takes printable
/// ASCII except `:` (it separates the names in `LISTEN_FDNAMES`), at most 255 characters; `:`,
/// `%` and anything else outside that set are written `%XX`, so that two keys never share a
/// name. `None` when that is too long (a very long Unix path).
pub fn fd_name(key: &ListenerKey) -> Option<String> {
    let address = match key {
        ListenerKey::Gateway(a)
        | ListenerKey::Inbound(a)
        | ListenerKey::Upstream(BindKey::Tcp(a)) => a.to_string().into_bytes(),
        ListenerKey::Upstream(BindKey::Unix(p)) => {
            [b"unix:".as_slice(), p.as_os_str().as_bytes()].concat()
        }
    };
    let mut name = format!("{}=", key.role());
    for b in address {
        if b.is_ascii_graphic() && b != b':' && b != b'%' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    (name.len() <= FDNAME_MAX).then_some(name)
}

/// A name `fd_name` makes: stored by a sidegate, so ours to drop from the store.
fn is_ours(name: &str) -> bool {
    ["gateway=", "inbound=", "upstream="]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The sockets of `LISTEN_FDS`, with their names and addresses; the variables unset.
fn take_passed() -> Vec<Passed> {
    let var = |name| std::env::var(name).ok();
    let (count, pid, names) = (var("LISTEN_FDS"), var("LISTEN_PID"), var("LISTEN_FDNAMES"));
    // listenfd also reads a variable systemd never sets; it must not move fd 3.
    for v in ["LISTEN_FDS_FIRST_FD", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    // listenfd accepts a missing LISTEN_PID; systemd's protocol does not: variables without
    // it (or for another process) were inherited by mistake and the fds are not ours.
    let ours =
        pid.as_deref().and_then(|p| p.trim().parse::<u32>().ok()) == Some(std::process::id());
    if !ours {
        if count.is_some() {
            crate::debug!("LISTEN_FDS is set for another process (LISTEN_PID={pid:?}); ignored");
        }
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        return Vec::new();
    }
    // Unsets LISTEN_FDS and LISTEN_PID.
    let mut fds = listenfd::ListenFd::from_env();
    let names: Vec<&str> = names
        .as_deref()
        .map_or(Vec::new(), |n| n.split(':').collect());
    (0..fds.len())
        .filter_map(|i| {
            let name = names.get(i).copied().unwrap_or("unknown").to_owned();
            passed(&mut fds, i, name)
        })
        .collect()
}

/// The listening stream socket at index `i`, or `None` (with a warning, and closed when it
/// can be) for anything else.
fn passed(fds: &mut listenfd::ListenFd, i: usize, name: String) -> Option<Passed> {
    let fd = i + 3;
    let socket = match fds.take_tcp_listener(i) {
        Ok(Some(l)) => Socket::Tcp(l),
        Ok(None) => return None,
        Err(_) => match fds.take_unix_listener(i) {
            Ok(Some(l)) => Socket::Unix(l),
            Ok(None) => return None,
            Err(_) => {
                // A datagram socket is closed; anything else stays open, unused.
                let closed = matches!(fds.take_udp_socket(i), Ok(Some(_)))
                    || matches!(fds.take_unix_datagram(i), Ok(Some(_)));
                crate::warn!(
                    "fd {fd} ({name:?}) passed by systemd is not a stream socket; {}",
                    if closed { "closed" } else { "ignored" }
                );
                return None;
            }
        },
    };
    if !rustix::net::sockopt::socket_acceptconn(socket.fd()).unwrap_or(false) {
        crate::warn!("fd {fd} ({name:?}) passed by systemd is not listening; closed");
        return None;
    }
    let place = match &socket {
        Socket::Tcp(l) => l.local_addr().map_or(Place::Elsewhere, Place::Tcp),
        Socket::Unix(l) => l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| Place::Unix(p.to_owned())))
            .unwrap_or(Place::Elsewhere),
    };
    crate::debug!("fd {fd}: socket {name:?} passed by systemd, bound at {place:?}");
    Some(Passed {
        name,
        socket,
        place,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(a: &str) -> ListenerKey {
        ListenerKey::Gateway(a.parse().unwrap())
    }

    #[test]
    fn names_are_what_systemd_accepts_and_tell_keys_apart() {
        assert_eq!(
            fd_name(&tcp("0.0.0.0:8443")).unwrap(),
            "gateway=0.0.0.0%3A8443"
        );
        assert_eq!(
            fd_name(&ListenerKey::Inbound("[::1]:20000".parse().unwrap())).unwrap(),
            "inbound=[%3A%3A1]%3A20000"
        );
        let unix = |p: &str| ListenerKey::Upstream(BindKey::Unix(PathBuf::from(p)));
        assert_eq!(
            fd_name(&unix("/run/a b%c.sock")).unwrap(),
            "upstream=unix%3A/run/a%20b%25c.sock"
        );
        // Printable ASCII without ':' (systemd's rule), whatever the path holds.
        let odd = unix("/run/\u{e9}\n:x");
        let name = fd_name(&odd).unwrap();
        assert!(
            name.bytes().all(|b| b.is_ascii_graphic() && b != b':'),
            "{name}"
        );
        assert_ne!(fd_name(&odd), fd_name(&unix("/run/\u{e9}\n%3Ax")));
        assert!(fd_name(&unix(&format!("/{}", "x".repeat(300)))).is_none());
        assert!(is_ours("gateway=0.0.0.0%3A8443") && !is_ours("sidegate.socket"));
    }

    #[test]
    fn a_passed_socket_fits_its_address_or_a_port_0_key_by_name() {
        let at = Place::Tcp("127.0.0.1:8443".parse().unwrap());
        assert!(fits(&tcp("127.0.0.1:8443"), &at, false));
        assert!(!fits(&tcp("127.0.0.2:8443"), &at, true));
        assert!(!fits(&tcp("127.0.0.1:0"), &at, false));
        assert!(fits(&tcp("127.0.0.1:0"), &at, true));
        let path = ListenerKey::Upstream(BindKey::Unix(PathBuf::from("/run/x")));
        assert!(fits(&path, &Place::Unix(PathBuf::from("/run/x")), false));
        assert!(!fits(&path, &at, true));
        assert!(!fits(&tcp("127.0.0.1:8443"), &Place::Elsewhere, true));
    }
}
