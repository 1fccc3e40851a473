//! Restarts that refuse nothing. The harness plays systemd's part of the documented protocol
//! (sd_notify(3) `FDSTORE=1`/`FDSTOREREMOVE=1` with `FDNAME=`, sd_listen_fds(3) `LISTEN_FDS`,
//! `LISTEN_PID`, `LISTEN_FDNAMES`): it receives the sockets sidegate stores on its
//! `NOTIFY_SOCKET`, keeps them, and on a restart sends SIGTERM, waits for the exit, then starts
//! the next process with them at fd 3 and up, as `systemctl restart` does. Socket activation
//! is systemd's own `systemd-socket-activate`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::ops;

use std::io::{self, BufRead, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::apps::app;
use common::sidecars::{DB, WEB};
use common::*;
use ops::*;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use rustix::process::Signal;
use sidegate::tls::configs::server_config;

/// systemd's side: the notify socket, and the fd store it fills.
struct Systemd {
    socket: UnixDatagram,
    path: PathBuf,
    /// The fd store: name and socket, in the order stored (the order they are passed in).
    store: Vec<(String, OwnedFd)>,
    seen: Vec<String>,
}

impl Systemd {
    fn bind(scratch: &Scratch) -> Systemd {
        let path = scratch.path("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Systemd {
            socket,
            path,
            store: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Reads messages (applying the fd store's) until one has the line `line`.
    fn expect_line(&mut self, line: &str) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {line} from sd_notify; got {:?}",
                self.seen
            );
            if let Some(msg) = self.receive(left) {
                if msg.lines().any(|l| l == line) {
                    return msg;
                }
            }
        }
    }

    /// One datagram, with the descriptors it carries, applied as systemd applies it.
    fn receive(&mut self, within: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let got = match rustix::net::recvmsg(
            &self.socket,
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(got) => got,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return None,
            Err(e) => panic!("notify socket: {e}"),
        };
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                fds.extend(r);
            }
        }
        let msg = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
        self.apply(&msg, fds);
        self.seen.push(msg.clone());
        Some(msg)
    }

    /// FDSTORE=1 keeps the descriptors under FDNAME= (once per socket, as systemd does);
    /// FDSTOREREMOVE=1 closes every one under that name.
    fn apply(&mut self, msg: &str, fds: Vec<OwnedFd>) {
        let has = |l: &str| msg.lines().any(|m| m == l);
        let name = msg
            .lines()
            .find_map(|l| l.strip_prefix("FDNAME="))
            .unwrap_or("stored")
            .to_owned();
        if has("FDSTORE=1") {
            for fd in fds {
                let id = socket_id(&fd);
                if self.store.iter().all(|(_, s)| socket_id(s) != id) {
                    self.store.push((name.clone(), fd));
                }
            }
        } else if has("FDSTOREREMOVE=1") {
            self.store.retain(|(n, _)| *n != name);
        } else {
            assert!(fds.is_empty(), "descriptors sent without FDSTORE=1: {msg}");
        }
    }

    fn names(&self) -> Vec<String> {
        self.store.iter().map(|(n, _)| n.clone()).collect()
    }

    /// `sidegate run` with the stored sockets at fd 3.. and `LISTEN_*` naming them, for the
    /// process itself: `LISTEN_PID` must be its pid, which only the process can say, so a
    /// shell puts the descriptors in place, sets the variables and execs sidegate.
    fn start(&self, config: &Path) -> Proc {
        let passed: Vec<(&str, &OwnedFd)> =
            self.store.iter().map(|(n, f)| (n.as_str(), f)).collect();
        spawn_passing(config, &passed, &self.path)
    }
}

/// The kernel's identity of a socket: systemd compares these to store a socket once.
fn socket_id(fd: &OwnedFd) -> (u64, u64) {
    let st = rustix::fs::fstat(fd).unwrap();
    (st.st_dev as u64, st.st_ino as u64)
}

/// sidegate's command line: under `strace` with `SIDEGATE_TEST_STRACE=<dir>`
/// (tests/ops/syscalls.sh). `-D` keeps the traced process the one started, so `LISTEN_PID`
/// stays its pid.
fn sidegate_traced() -> Vec<String> {
    let mut argv = Vec::new();
    if let Some(dir) = std::env::var_os("SIDEGATE_TEST_STRACE") {
        static TRACES: AtomicUsize = AtomicUsize::new(0);
        let n = TRACES.fetch_add(1, Ordering::Relaxed);
        let file = Path::new(&dir).join(format!("trace.restarts.{}.{n}", std::process::id()));
        argv.extend(["strace", "-D", "-f", "-qq", "-o"].map(String::from));
        argv.push(file.display().to_string());
    }
    argv.extend(sidegate_argv());
    argv
}

/// Under strace (`sidegate_traced`), the tracer is forked with the passed descriptors open and
/// holds copies of them: a socket sidegate closes still listens.
fn traced() -> bool {
    std::env::var_os("SIDEGATE_TEST_STRACE").is_some()
}

/// Descriptors made inheritable for one spawn at a time: another spawn meanwhile (of these
/// tests) would inherit them too.
static SPAWNING: Mutex<()> = Mutex::new(());

/// `sidegate run --config` with `passed` at fd 3.. through bash (`exec 3<&N` is a dup2 that
/// needs no `unsafe` here), `NOTIFY_SOCKET` at `notify`.
fn spawn_passing(config: &Path, passed: &[(&str, &OwnedFd)], notify: &Path) -> Proc {
    let _one = SPAWNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut script = String::new();
    let mut inheritable = Vec::new();
    for (i, (_, fd)) in passed.iter().enumerate() {
        // Above any fd 3.. it will be moved to; without FD_CLOEXEC so bash gets it.
        let high = rustix::io::fcntl_dupfd_cloexec(fd, 100 + i as i32).unwrap();
        rustix::io::fcntl_setfd(&high, rustix::io::FdFlags::empty()).unwrap();
        let n = high.as_raw_fd();
        script.push_str(&format!("exec {}<&{n} {n}<&-; ", 3 + i));
        inheritable.push(high);
    }
    if !passed.is_empty() {
        let names: Vec<&str> = passed.iter().map(|(n, _)| *n).collect();
        script.push_str(&format!(
            "export LISTEN_FDS={} LISTEN_FDNAMES='{}' LISTEN_PID=$$; ",
            passed.len(),
            names.join(":")
        ));
    }
    script.push_str("exec \"$@\"");
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script).arg("sidegate-under-test");
    cmd.args(sidegate_traced());
    cmd.args(["run", "--config"]).arg(config);
    let proc = Proc::spawn(cmd, notify);
    drop(inheritable);
    proc
}

/// A sidegate process, its log as it comes; killed when dropped.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(mut cmd: Command, notify: &Path) -> Proc {
        for v in [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "WATCHDOG_USEC",
            "SIDEGATE_LOG",
        ] {
            cmd.env_remove(v);
        }
        cmd.env("NOTIFY_SOCKET", notify).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
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
        Proc { child, lines, log }
    }

    fn wait_log(&self, needle: &str) -> String {
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

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn signal(&self, sig: Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, sig).unwrap();
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        eventually_within(IO_TIMEOUT, "sidegate to exit", || {
            self.child.try_wait().unwrap().ok_or_else(|| self.log())
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What runs around sidegate: `api` behind the gateway, `db` behind the Unix upstream, the
/// local app behind inbound; the listeners on fixed addresses, as in production.
struct World {
    scratch: Scratch,
    pki: Pki,
    api: Backend,
    db: Backend,
    app: SocketAddr,
    gateway: SocketAddr,
    inbound: SocketAddr,
    upstream: PathBuf,
    config: PathBuf,
}

impl World {
    fn new(name: &str) -> World {
        let scratch = Scratch::new(name);
        let pki = Pki::new();
        let api = Backend::start(&pki, &service_sni("api", "dc1"));
        let db = Backend::serve(server_config(&DB.identity()).unwrap(), "db");
        let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let upstream = scratch.path("db.sock");
        let config = scratch.path("sidegate.toml");
        let world = World {
            scratch,
            pki,
            api,
            db,
            app: app("web"),
            gateway,
            inbound,
            upstream,
            config,
        };
        world.write(gateway);
        world
    }

    /// The configuration, with the gateway listening on `gateway`.
    fn write(&self, gateway: SocketAddr) {
        let text = format!(
            r#"{header}
public_listener = "{inbound}"
local_service_address = "{app}"
[[sidecar.upstreams]]
destination_name = "db"
destination_partition = "part2"
local_bind_socket_path = "{upstream}"
mesh_gateway = {{ mode = "none" }}
[gateway]
listen = ["{gateway}"]
[[catalog.services]]
name = "api"
instances = ["{api}"]
[[catalog.services]]
name = "db"
partition = "part2"
instances = ["{db}"]
[shutdown]
drain_timeout_ms = 5000
"#,
            header = WEB.header(),
            app = self.app,
            inbound = self.inbound,
            upstream = self.upstream.display(),
            api = self.api.addr,
            db = self.db.addr,
        );
        let tmp = self.scratch.path("sidegate.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    fn via_gateway(&self) -> io::Result<Live> {
        let sni = service_sni("api", "dc1");
        tls_connect(self.gateway, &sni, &self.pki.client_config()).map(Live::tls)
    }

    /// One exchange with `db` through the Unix socket upstream.
    fn through_upstream(&self) -> io::Result<String> {
        let mut s = UnixStream::connect(&self.upstream)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.write_all(b"via the unix socket")?;
        let mut echoed = [0u8; 19];
        s.read_exact(&mut echoed)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut rest = String::new();
        s.read_to_string(&mut rest)?;
        Ok(rest)
    }
}

/// New connections through the gateway, one after another on each of a few threads, each a
/// TLS handshake with `api` and an exchange; every outcome counted.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    slowest: Arc<Mutex<Duration>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(world: &World, threads: usize) -> Load {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicUsize::new(0)),
            refused: Arc::new(AtomicUsize::new(0)),
            failed: Arc::new(Mutex::new(Vec::new())),
            slowest: Arc::new(Mutex::new(Duration::ZERO)),
            threads: Vec::new(),
        };
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, refused, failed, slowest) = (
                    load.stop.clone(),
                    load.ok.clone(),
                    load.refused.clone(),
                    load.failed.clone(),
                    load.slowest.clone(),
                );
                let (addr, cfg, sni) = (
                    world.gateway,
                    world.pki.client_config(),
                    service_sni("api", "dc1"),
                );
                let name = world.api.name.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let began = Instant::now();
                        let outcome = tls_connect(addr, &sni, &cfg)
                            .and_then(|tls| echo_and_finish(tls, b"load"));
                        match outcome {
                            Ok(by) if by == name => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let took = began.elapsed();
                                let mut s = slowest.lock().unwrap();
                                *s = (*s).max(took);
                            }
                            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                // As a client retrying at once would, without spinning.
                                std::thread::sleep(Duration::from_millis(2));
                            }
                            other => failed.lock().unwrap().push(format!("{other:?}")),
                        }
                    }
                })
            })
            .collect();
        Load { threads, ..load }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` connections succeeded since `since`.
    fn served_beyond(&self, since: usize, more: usize) {
        eventually("connections served under load", || {
            (self.ok() >= since + more).then_some(()).ok_or(self.ok())
        });
    }

    /// Stops the clients; (served, refused, failed, slowest).
    fn finish(mut self) -> (usize, usize, Vec<String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        let slowest = *self.slowest.lock().unwrap();
        (
            self.ok(),
            self.refused.load(Ordering::Relaxed),
            failed,
            slowest,
        )
    }
}

/// Three `systemctl restart`s under load: each one SIGTERM (the old process drains a live
/// connection), its exit, then the next process started by `start`. Returns the load's tally.
fn three_restarts(
    world: &World,
    systemd: &mut Systemd,
    mut sg: Proc,
    start: impl Fn(&Systemd) -> Proc,
) -> (usize, usize, Vec<String>, Duration) {
    let load = Load::start(world, 3);
    load.served_beyond(0, 20);
    for round in 0..3 {
        let mut live = world.via_gateway().unwrap();
        live.round(b"before the restart").unwrap();
        sg.signal(Signal::TERM);
        systemd.expect_line("STOPPING=1");
        // The old process accepts no more; what arrives now waits for the next one (or is
        // refused, without the store). The live connection carries on meanwhile.
        std::thread::sleep(Duration::from_millis(300));
        live.round(b"during the drain")
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let signoff = format!("served-by:{}\n", world.api.name);
        assert_eq!(live.finish().unwrap(), signoff);
        assert_eq!(sg.wait_exit().code(), Some(0), "{:#?}", sg.log());
        let drained = |l: &String| l.contains("drained: every connection finished");
        assert!(sg.log().iter().any(drained), "{:#?}", sg.log());
        sg = start(systemd);
        systemd.expect_line("READY=1");
        let at_ready = load.ok();
        load.served_beyond(at_ready, 20);
    }
    // The load stops before the last process: with nothing started after it, what it
    // leaves queued in the backlog would wait for good.
    let tally = load.finish();
    // The Unix socket upstream serves after it all.
    assert_eq!(world.through_upstream().unwrap(), "served-by:db\n");
    sg.signal(Signal::TERM);
    assert_eq!(sg.wait_exit().code(), Some(0));
    tally
}

#[test]
fn three_restarts_under_load_through_the_fd_store_refuse_nothing() {
    let world = World::new("fdstore");
    let mut systemd = Systemd::bind(&world.scratch);
    let sg = systemd.start(&world.config);
    systemd.expect_line("READY=1");
    // Every listener is in the store, under its name.
    let mut names = systemd.names();
    names.sort();
    let port = |a: SocketAddr| a.port();
    assert_eq!(
        names,
        vec![
            format!("gateway=127.0.0.1%3A{}", port(world.gateway)),
            format!("inbound=127.0.0.1%3A{}", port(world.inbound)),
            format!("upstream=unix%3A{}", world.upstream.display()),
        ]
    );
    let start = |systemd: &Systemd| systemd.start(&world.config);
    let (served, refused, failed, slowest) = three_restarts(&world, &mut systemd, sg, start);
    eprintln!(
        "fd store: {served} connections served, {refused} refused, {} failed, slowest {slowest:?}",
        failed.len()
    );
    assert_eq!(refused, 0, "refused with the fd store");
    assert!(failed.is_empty(), "{failed:?}");
    // Still the same three sockets: taken back, not bound anew and added.
    assert_eq!(systemd.store.len(), 3, "{:?}", systemd.names());
}

/// The same restarts with the store off (`FDSTORE=0`, as systemd 254+ says when
/// `FileDescriptorStoreMax=` is unset): the harness has nothing to pass, each process binds
/// anew, and the load sees the refusals the store avoids. Also proves the load would see them.
#[test]
fn without_the_fd_store_restarts_refuse_connections() {
    let world = World::new("no-fdstore");
    let mut systemd = Systemd::bind(&world.scratch);
    let start = |systemd: &Systemd| {
        let mut cmd = Command::new("env");
        cmd.arg("FDSTORE=0").args(sidegate_traced());
        cmd.args(["run", "--config"]).arg(&world.config);
        Proc::spawn(cmd, &systemd.path)
    };
    let sg = start(&systemd);
    systemd.expect_line("READY=1");
    assert!(systemd.store.is_empty(), "{:?}", systemd.names());
    let (served, refused, failed, slowest) = three_restarts(&world, &mut systemd, sg, start);
    eprintln!(
        "no fd store: {served} connections served, {refused} refused, failed: {failed:?}, slowest {slowest:?}"
    );
    assert!(
        refused > 0,
        "no refusal seen: the load would not have seen them either"
    );
}

/// Socket activation by systemd's own tool: sockets named anything are taken by address (a
/// TCP port and a Unix socket path), one nothing asks for is closed, a connection made before
/// sidegate ran is served, and the listeners go to the fd store under sidegate's names.
#[test]
fn socket_activated_listeners_are_taken_by_address() {
    let world = World::new("activated");
    let mut systemd = Systemd::bind(&world.scratch);
    let stray = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(world.gateway.to_string())
        .arg("-l")
        .arg(&world.upstream)
        .arg("-l")
        .arg(stray.to_string())
        .arg("--fdname=web:db-socket:stray")
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", systemd.path.display()))
        .args(sidegate_traced())
        .args(["run", "--config"])
        .arg(&world.config);
    let sg = Proc::spawn(cmd, &systemd.path);
    // systemd-socket-activate execs sidegate on the first connection: this one, made while
    // no sidegate runs, waits in the backlog and is served.
    let mut first = eventually("systemd-socket-activate to listen", || {
        world.via_gateway().map_err(|e| e.to_string())
    });
    first.round(b"made before sidegate ran").unwrap();
    assert_eq!(
        first.finish().unwrap(),
        format!("served-by:{}\n", world.api.name)
    );
    systemd.expect_line("READY=1");
    sg.wait_log("serving the socket systemd passed as \"web\"");
    sg.wait_log("serving the socket systemd passed as \"db-socket\"");
    sg.wait_log("closing the socket systemd passed as \"stray\"");
    if !traced() {
        assert!(refused(stray), "the socket no listener took must be closed");
    }
    let up = world.through_upstream();
    assert_eq!(
        up.as_deref().ok(),
        Some("served-by:db\n"),
        "{up:?} {:#?}",
        sg.log()
    );
    // Stored under sidegate's names: the next restart matches them by name.
    let mut names = systemd.names();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(
        names[0],
        format!("gateway=127.0.0.1%3A{}", world.gateway.port())
    );
    // The inbound listener, not passed, was bound by sidegate itself.
    assert!(sg
        .log()
        .iter()
        .any(|l| l.contains(&format!("inbound listening on {}", world.inbound))));
}

/// A listener the configuration no longer has leaves the store, whether a reload drops it or
/// the file changed between two runs: its port is freed, not left queueing connections
/// that no process will accept.
#[test]
fn a_listener_dropped_from_the_configuration_leaves_the_store() {
    let world = World::new("dropped");
    let mut systemd = Systemd::bind(&world.scratch);
    let mut sg = systemd.start(&world.config);
    systemd.expect_line("READY=1");
    let name = |a: SocketAddr| format!("gateway=127.0.0.1%3A{}", a.port());
    assert!(systemd.names().contains(&name(world.gateway)));

    // A reload moves the gateway to another port.
    let moved = SocketAddr::from(([127, 0, 0, 1], free_port()));
    world.write(moved);
    sg.signal(Signal::HUP);
    systemd.expect_line("READY=1");
    assert!(
        !systemd.names().contains(&name(world.gateway)),
        "{:?}",
        systemd.names()
    );
    assert!(
        systemd.names().contains(&name(moved)),
        "{:?}",
        systemd.names()
    );
    assert!(refused(world.gateway), "the old port must be free");

    // Stopped, the file edited, restarted: the socket passed for `moved` is not in it.
    sg.signal(Signal::TERM);
    assert_eq!(sg.wait_exit().code(), Some(0));
    let again = SocketAddr::from(([127, 0, 0, 1], free_port()));
    world.write(again);
    let sg = systemd.start(&world.config);
    systemd.expect_line("READY=1");
    sg.wait_log(&format!(
        "closing the socket systemd passed as \"{}\"",
        name(moved)
    ));
    assert!(
        !systemd.names().contains(&name(moved)),
        "{:?}",
        systemd.names()
    );
    if !traced() {
        assert!(refused(moved), "the dropped listener's port must be free");
    }
    assert_eq!(systemd.store.len(), 3, "{:?}", systemd.names());
    let tls = tls_connect(
        again,
        &service_sni("api", "dc1"),
        &world.pki.client_config(),
    );
    assert_eq!(echo_and_finish(tls.unwrap(), b"x").unwrap(), world.api.name);
}
