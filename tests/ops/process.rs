//! `sidegate run` as systemd starts it: a test `NOTIFY_SOCKET`, its log lines as they come,
//! signals; optionally under strace (tests/ops/syscalls.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, BufRead};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{eventually, eventually_within, Scratch, IO_TIMEOUT};

/// systemd's end of `NOTIFY_SOCKET`: every datagram the child sends, in order.
pub struct Notify {
    socket: UnixDatagram,
    pub path: PathBuf,
    pub seen: Vec<String>,
}

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Notify {
    /// Bound in the system's temporary directory, not in `scratch`: a socket's path must fit
    /// in 108 bytes, and a clone's target directory can be deep (`mktemp -d`, a cross target).
    pub fn bind(scratch: &Scratch) -> Notify {
        let name = scratch.0.file_name().unwrap_or_default().to_string_lossy();
        let path = std::env::temp_dir().join(format!("sg-{name}.notify"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        Notify {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Reads messages until one satisfies `want`, and returns it; panics after `IO_TIMEOUT`.
    pub fn expect(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        self.expect_within(what, IO_TIMEOUT, want)
    }

    /// `expect` for a message that may take longer than `IO_TIMEOUT` by design.
    pub fn expect_within(
        &mut self,
        what: &str,
        within: Duration,
        want: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} from sd_notify; got {:?}",
                self.seen
            );
            self.socket.set_read_timeout(Some(left)).unwrap();
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push(msg.clone());
                    if want(&msg) {
                        return msg;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    }

    /// Every message that arrives within `window`: for checking that something is *not* sent.
    #[allow(
        dead_code,
        reason = "the operations tests use it, the Consul tests do not"
    )]
    pub fn collect_for(&mut self, window: Duration) -> &[String] {
        let deadline = Instant::now() + window;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return &self.seen;
            }
            self.socket.set_read_timeout(Some(left)).unwrap();
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// How many messages with the line `line` arrive within `window`, counting none of those
    /// already waiting: the window starts now.
    #[allow(
        dead_code,
        reason = "the operations tests use it, the Consul tests do not"
    )]
    pub fn count_for(&mut self, window: Duration, line: &str) -> usize {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.seen
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.socket.set_nonblocking(false).unwrap();
        let from = self.seen.len();
        self.collect_for(window)[from..]
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }

    pub fn expect_line(&mut self, line: &str) -> String {
        self.expect(line, |m| m.lines().any(|l| l == line))
    }
}

/// `sidegate run` as systemd would start it, killed when dropped.
///
/// With `SIDEGATE_TEST_STRACE=<dir>` it runs under `strace -f`, writing every system call to a
/// file in `dir`: tests/ops/syscalls.sh checks them against the unit's `SystemCallFilter=`.
pub struct Sidegate {
    pub child: Child,
    /// sidegate itself (not strace, when traced): where signals go.
    pid: rustix::process::Pid,
    lines: Receiver<String>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Sidegate {
    pub fn spawn(config: &Path, env: &[(&str, String)]) -> Sidegate {
        let bin = env!("CARGO_BIN_EXE_sidegate");
        let trace_dir = std::env::var_os("SIDEGATE_TEST_STRACE").map(PathBuf::from);
        let mut cmd = match &trace_dir {
            Some(dir) => {
                static TRACES: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let n = TRACES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let file = dir.join(format!("trace.{}.{n}", std::process::id()));
                let mut c = Command::new("strace");
                c.args(["-f", "-qq", "-o"]).arg(file).arg(bin);
                c
            }
            None => crate::common::sidegate_command(),
        };
        cmd.args(["run", "--config"])
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env_remove("SIDEGATE_LOG")
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let pid = match trace_dir {
            Some(_) => tracee(&child, Path::new(bin)),
            None => rustix::process::Pid::from_child(&child),
        };
        let stderr = io::BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let all = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                all.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Sidegate {
            child,
            pid,
            lines,
            log,
        }
    }

    /// Waits for the next log line containing `needle` and returns it.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}; log: {:#?}", self.log()),
            }
        }
    }

    /// The address at the end of the next `... listening on ADDR` line after `prefix`.
    #[allow(
        dead_code,
        reason = "the operations tests use it, the Consul tests do not"
    )]
    pub fn wait_addr(&self, prefix: &str) -> SocketAddr {
        let line = self.wait_log(prefix);
        let rest = line.split(prefix).nth(1).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// sidegate's process id, for reading its /proc entries.
    #[allow(
        dead_code,
        reason = "the operations tests use it, the Consul tests do not"
    )]
    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get().unsigned_abs()
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        rustix::process::kill_process(self.pid, sig).unwrap();
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        eventually_within(within, "sidegate to exit", || {
            self.child.try_wait().unwrap().ok_or_else(|| self.log())
        })
    }
}

impl Drop for Sidegate {
    fn drop(&mut self) {
        // The tracee first: a killed strace would leave it running, detached.
        let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sidegate process under `strace` (a descendant running `bin`), once it exists.
fn tracee(strace: &Child, bin: &Path) -> rustix::process::Pid {
    eventually("strace to start sidegate", || {
        let mut family = vec![strace.id()];
        while let Some(pid) = family.pop() {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            if pid != strace.id() && exe.as_deref() == Some(bin) {
                return Ok(rustix::process::Pid::from_raw(pid.try_into().unwrap()).unwrap());
            }
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
            {
                let children = task.unwrap().path().join("children");
                let listed = std::fs::read_to_string(children).unwrap_or_default();
                family.extend(listed.split_whitespace().map(|c| c.parse::<u32>().unwrap()));
            }
        }
        // A sidegate that failed at start may be gone before it was seen; strace then exits
        // with its status, and there is nothing left to signal.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", strace.id()));
        if stat.map_or(true, |s| s.contains(") Z ")) {
            return Ok(rustix::process::Pid::from_child(strace));
        }
        Err("no sidegate under strace yet")
    })
}
