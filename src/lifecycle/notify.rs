//! systemd's readiness protocol (`sd_notify`), spoken directly: one datagram per state change
//! to the Unix socket named by `NOTIFY_SOCKET`. A dozen lines of protocol do not need libsystemd
//! (which a static musl binary could not link anyway) or a crate.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where systemd listens for our state changes.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`: a filesystem path, or `@name` for an abstract socket.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            match connect(&name.to_string_lossy()) {
                Ok(t) => Some(t),
                Err(e) => {
                    crate::warn!(
                        "NOTIFY_SOCKET={name:?} is unusable, systemd will not hear from us: {e}"
                    );
                    None
                }
            }
        });
        Notifier { target }
    }

    /// A notifier that sends nothing (tests, and runs outside systemd).
    pub fn disabled() -> Notifier {
        Notifier { target: None }
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
}
