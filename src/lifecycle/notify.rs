//! systemd's readiness protocol (`sd_notify`), spoken directly: one datagram per state change
//! to the Unix socket named by `NOTIFY_SOCKET`. A dozen lines of protocol do not need libsystemd
//! (which a static musl binary could not link anyway) or a crate.
//!
//! The same socket carries the listening sockets to systemd's file-descriptor store
//! (`FDSTORE=1`, the socket attached as SCM_RIGHTS), so that a restart hands them to the next
//! instance instead of closing them (`proxy::handover`).
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::io;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix};

use crate::proxy::handover::{FdStore, Handover};

/// Where systemd listens for our state changes, and the listening sockets it passed us.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    handover: Arc<Handover>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`: a filesystem path, or `@name` for an abstract socket. Takes
    /// the sockets systemd passed (`LISTEN_FDS`; unset after) and, under systemd, keeps
    /// listeners in its fd store — unless it says the store is off (`FDSTORE=0`, systemd
    /// 254 and later; earlier ones do not say, and log that they dropped the sockets).
    pub fn from_env() -> Notifier {
        let name = std::env::var_os("NOTIFY_SOCKET").map(|n| n.to_string_lossy().into_owned());
        let target = name.as_deref().and_then(|name| match connect(name) {
            Ok(t) => Some(t),
            Err(e) => {
                crate::warn!(
                    "NOTIFY_SOCKET={name:?} is unusable, systemd will not hear from us: {e}"
                );
                None
            }
        });
        let store_off = std::env::var("FDSTORE").is_ok_and(|n| n.trim() == "0");
        let store = match (name, &target) {
            (Some(name), Some(_)) if !store_off => StoreVia::open(&name),
            _ => None,
        };
        let handover = Arc::new(Handover::from_env(
            store.map(|s| Box::new(s) as Box<dyn FdStore>),
        ));
        Notifier { target, handover }
    }

    /// A notifier that sends nothing (tests, and runs outside systemd).
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            handover: Arc::new(Handover::none()),
        }
    }

    /// The sockets systemd passed, and its fd store: for the listeners.
    pub fn handover(&self) -> Arc<Handover> {
        self.handover.clone()
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Every listener is bound and serving.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A reload has started; systemd holds `systemctl reload` until the next `READY=1`.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            monotonic_usec()
        ));
    }

    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Best effort: systemd not hearing a status line must never stop the proxy.
    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                crate::debug!("sd_notify {:?} failed: {e}", first_line(message));
            }
        }
    }
}

/// The fd store's end of `NOTIFY_SOCKET`: datagrams with a socket attached, which std's
/// `UnixDatagram` cannot send.
struct StoreVia {
    socket: UnixDatagram,
    addr: SocketAddrUnix,
}

impl StoreVia {
    fn open(name: &str) -> Option<StoreVia> {
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => SocketAddrUnix::new_abstract_name(abstract_name.as_bytes()),
            None => SocketAddrUnix::new(name),
        };
        match (UnixDatagram::unbound(), addr) {
            (Ok(socket), Ok(addr)) => Some(StoreVia { socket, addr }),
            (Err(e), _) => {
                crate::warn!("no socket for systemd's fd store ({e}); listeners will be closed across restarts");
                None
            }
            (_, Err(e)) => {
                crate::warn!(
                    "NOTIFY_SOCKET={name:?}: {e}; listeners will be closed across restarts"
                );
                None
            }
        }
    }

    fn send(&self, message: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("no room for the descriptor"));
        }
        let iov = [IoSlice::new(message.as_bytes())];
        rustix::net::sendmsg_addr(
            &self.socket,
            &self.addr,
            &iov,
            &mut control,
            SendFlags::empty(),
        )?;
        Ok(())
    }
}

impl FdStore for StoreVia {
    fn store(&self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.send(&format!("FDSTORE=1\nFDNAME={name}"), &[fd])
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[])
    }
}

fn connect(name: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match name.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
        None if name.starts_with('/') => SocketAddr::from_pathname(name)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither an absolute path nor an @abstract name",
            ))
        }
    };
    Ok((UnixDatagram::unbound()?, addr))
}

/// The keep-alive interval systemd asks for: half of `WATCHDOG_USEC`, when the variable is meant
/// for this process (`WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Sends `WATCHDOG=1` every `interval` for as long as `alive` says the process still does its
/// work, on a thread of its own; a process that stops answering is left for systemd to restart.
/// The thread ends when `stop`'s sender is dropped.
pub fn spawn_watchdog<E: std::fmt::Display>(
    notifier: std::sync::Arc<Notifier>,
    interval: Duration,
    alive: impl Fn() -> Result<(), E> + Send + 'static,
    stop: std::sync::mpsc::Receiver<()>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sidegate-watchdog".into())
        .spawn(move || {
            let mut healthy = true;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(interval)
            {
                match alive() {
                    Ok(()) => {
                        notifier.watchdog();
                        healthy = true;
                    }
                    Err(why) if healthy => {
                        crate::error!("watchdog: {why}; not telling systemd we are alive");
                        healthy = false;
                    }
                    Err(_) => {}
                }
            }
        })
}

/// `CLOCK_MONOTONIC` in microseconds, as systemd compares reload timestamps with it.
fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}

/// A STATUS= value is one line: a newline would start another assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("sidegate-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some(connect(path.to_str().unwrap()).unwrap()),
            handover: Arc::new(Handover::none()),
        };
        n.ready("serving 2 listeners\nsecond line");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(
            &buf[..len],
            b"READY=1\nSTATUS=serving 2 listeners second line"
        );

        let name = format!("sidegate-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            target: Some(connect(&format!("@{name}")).unwrap()),
            handover: Arc::new(Handover::none()),
        };
        n.reloading();
        let len = server.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
        let usec: u64 = text.lines().nth(1).unwrap()[15..].parse().unwrap();
        assert!(usec > 0);
        assert!(connect("relative/path").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// FDSTORE=1 carries the socket itself: what systemd receives is the same listening
    /// socket (same address), and FDSTOREREMOVE=1 names it.
    #[test]
    fn the_fd_store_receives_the_socket_and_its_name() {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        use std::os::fd::AsFd;
        let name = format!("sidegate-fdstore-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        let store = StoreVia::open(&format!("@{name}")).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        store.store("gateway=x", listener.as_fd()).unwrap();
        store.remove("gateway=x").unwrap();

        let mut buf = [0u8; 256];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let got =
            rustix::net::recvmsg(&systemd, &mut iov, &mut control, RecvFlags::empty()).unwrap();
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                fds.extend(r);
            }
        }
        assert_eq!(&buf[..got.bytes], b"FDSTORE=1\nFDNAME=gateway=x");
        assert_eq!(fds.len(), 1);
        let kept = std::net::TcpListener::from(fds.pop().unwrap());
        assert_eq!(kept.local_addr().unwrap(), listener.local_addr().unwrap());
        drop(listener);
        // systemd's copy still listens after ours is closed.
        std::net::TcpStream::connect(kept.local_addr().unwrap()).unwrap();

        let len = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"FDSTOREREMOVE=1\nFDNAME=gateway=x");
    }
}
