//! The operations tests' harness: the real binary as a child process with a test
//! `NOTIFY_SOCKET`, its log lines as they come, signals, the admin endpoint over HTTP, and
//! live connections through each role that a test keeps open across a reload or a drain.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{eventually, eventually_within, http_get as get, Client, Scratch, IO_TIMEOUT};

/// systemd's end of `NOTIFY_SOCKET`: every datagram the child sends, in order.
pub struct Notify {
    socket: UnixDatagram,
    pub path: PathBuf,
    pub seen: Vec<String>,
}

impl Notify {
    pub fn bind(scratch: &Scratch) -> Notify {
        let path = scratch.path("notify.sock");
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
    pub fn wait_addr(&self, prefix: &str) -> SocketAddr {
        let line = self.wait_log(prefix);
        let rest = line.split(prefix).nth(1).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
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

/// One sample of `/metrics`, as Prometheus' own Python parser read it.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Scrapes `/metrics` and parses it with `prometheus_client` (tests/ops/prometheus_parse.py).
pub fn scrape(admin: SocketAddr) -> Vec<Sample> {
    let (code, text) = get(admin, "/metrics");
    assert_eq!(code, 200);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ops/prometheus_parse.py");
    let mut py = Command::new("/usr/bin/python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (tests/run.sh installs python3-prometheus-client)");
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap().to_owned(),
            labels: s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            value: s["value"].as_f64().unwrap(),
        })
        .collect()
}

/// Scrapes until no connection is open in any role and `also` holds: counters are updated as
/// connections end on the event loop, after their client may already have seen the close.
pub fn scrape_when_idle(admin: SocketAddr, also: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    eventually("no connection active (and the test's condition)", || {
        let s = scrape(admin);
        let active: u64 = ["gateway", "upstream", "inbound"]
            .iter()
            .map(|r| value(&s, "sidegate_connections_active", &[("role", r)]))
            .sum();
        if active == 0 && also(&s) {
            Ok(s)
        } else {
            Err(format!("{active} connections active"))
        }
    })
}

/// The value of the sample `name` with exactly these labels; panics when absent.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> u64 {
    let found = samples.iter().find(|s| {
        s.name == name
            && s.labels.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
    });
    match found {
        Some(s) => s.value as u64,
        None => panic!("no sample {name}{labels:?} in /metrics"),
    }
}

/// A TCP stream that counts the bytes it moves, to compare with what sidegate counted.
pub struct Counted {
    pub inner: TcpStream,
    pub sent: u64,
    pub received: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.received += n as u64;
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A connection kept open through one role while the test does something to the process.
pub enum Live {
    /// Gateway passthrough or inbound mTLS: a TLS client.
    Tls(Box<Client>),
    /// An upstream listener: the local app's plain TCP.
    Tcp(TcpStream),
}

impl Live {
    pub fn tls(client: Client) -> Live {
        Live::Tls(Box::new(client))
    }

    pub fn tcp(addr: SocketAddr) -> io::Result<Live> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Live::Tcp(s))
    }

    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Live::Tls(t) => &mut **t,
            Live::Tcp(t) => t,
        }
    }

    /// Sends `msg` and reads exactly its echo back.
    pub fn round(&mut self, msg: &[u8]) -> io::Result<()> {
        let s = self.stream();
        s.write_all(msg)?;
        s.flush()?;
        let mut echoed = vec![0u8; msg.len()];
        s.read_exact(&mut echoed)?;
        if echoed != msg {
            return Err(io::Error::other("echo differs"));
        }
        Ok(())
    }

    /// Finishes sending (half-close) and returns everything the far end sent after that.
    pub fn finish(mut self) -> io::Result<String> {
        match &mut self {
            Live::Tls(t) => {
                t.conn.send_close_notify();
                t.flush()?;
                t.sock.shutdown(Shutdown::Write)?;
            }
            Live::Tcp(t) => t.shutdown(Shutdown::Write)?,
        }
        let mut rest = Vec::new();
        match self.stream().read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e),
        }
        Ok(String::from_utf8_lossy(&rest).into_owned())
    }

    /// True once the far end has closed the connection (EOF or reset), within `IO_TIMEOUT`.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream().read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }
}

/// A TLS client that has sent its ClientHello only up to the server name: the handshake is in
/// flight, and no reader of the hello can have routed or answered it yet.
pub struct HalfHello {
    conn: rustls::ClientConnection,
    sock: TcpStream,
    rest: Vec<u8>,
}

impl HalfHello {
    pub fn send(addr: SocketAddr, sni: &str, cfg: &Arc<rustls::ClientConfig>) -> HalfHello {
        let mut sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        let cut = hello
            .windows(sni.len())
            .position(|w| w == sni.as_bytes())
            .expect("the ClientHello carries the server name");
        sock.write_all(&hello[..cut]).unwrap();
        HalfHello {
            conn,
            sock,
            rest: hello[cut..].to_vec(),
        }
    }

    /// Sends the rest of the hello and completes the handshake.
    pub fn finish(mut self) -> io::Result<Client> {
        self.sock.write_all(&self.rest)?;
        let mut tls = Client::new(self.conn, self.sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(tls)
    }
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A connection attempt is refused (nothing listens there any more).
pub fn refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, IO_TIMEOUT),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}
