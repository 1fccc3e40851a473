//! Faults and abuse against a running sidegate, with real TLS on loopback: a backend killed
//! mid-transfer, every endpoint down, file descriptors exhausted, ten thousand idle
//! connections against a limit of five thousand, slow-loris clients, floods of garbage; through
//! the gateway and the sidecar's listeners. Each test is bounded in time and none sleeps to
//! synchronise (the slow-loris pace is the attack's shape, not a wait).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::ops;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::apps::{app, exchange, shut_tcp};
use common::sidecars::{start_on_free_ports, DB, WEB};
use common::*;
use sidegate::metrics::HelloOutcome;
use sidegate::proxy::Running;

/// A real client's ClientHello (openssl s_client) naming db in dc1.
fn captured_hello() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hellos/openssl-s_client.bin"
    );
    std::fs::read(path).unwrap()
}

/// Deterministic noise (xorshift), so a failure replays with the same bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Bytes no TLS client sends first: anything but a handshake record (0x16).
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut g = noise(seed, len);
    if g[0] == 0x16 {
        g[0] = b'G';
    }
    g
}

fn gateway_with(services: &[(&str, Vec<SocketAddr>)], extra: &str) -> Running {
    start(&gateway_toml(
        "dc1", "default", LOOPBACK, services, "", extra,
    ))
}

/// web's sidecar with one upstream to db (dc1, part2) dialled at `instances`, with extra
/// upstream keys; and the upstream's local port.
fn web_upstream(instances: &[SocketAddr], settings: &str) -> (Running, u16) {
    let list: Vec<String> = instances.iter().map(|a| format!("\"{a}\"")).collect();
    let (running, _, port) = start_on_free_ports(|| {
        let port = free_port();
        let toml = format!(
            "{}\n[[sidecar.upstreams]]\ndestination_name = \"db\"\ndestination_partition = \"part2\"\n\
             local_bind_port = {port}\nmesh_gateway = {{ mode = \"none\" }}\n{settings}\n\
             [[catalog.services]]\nname = \"db\"\npartition = \"part2\"\ninstances = [{}]\n",
            WEB.header(),
            list.join(", ")
        );
        (toml, port)
    });
    (running, port)
}

fn hello_count(gw: &Running, outcome: HelloOutcome) -> u64 {
    gw.metrics.gateway.hello(outcome).get()
}

/// Sends `rounds` messages of `size` bytes and checks each echo, then finishes; returns the
/// backend's sign-off name.
fn echo_rounds(mut tls: Client, seed: u64, rounds: usize, size: usize) -> io::Result<String> {
    for round in 0..rounds {
        let msg = noise(seed + round as u64, size);
        tls.write_all(&msg)?;
        let mut back = vec![0u8; size];
        tls.read_exact(&mut back)?;
        if back != msg {
            return Err(io::Error::other(format!("round {round}: echo differs")));
        }
    }
    echo_and_finish(tls, b"done")
}

/// Whether a peer closed `s`: EOF or reset. Never blocks (`s` is set non-blocking).
fn peer_closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match (&*s).read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("{n} unexpected bytes"),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
        Err(e) => panic!("{e}"),
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A configuration file for the binary, removed when dropped.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(name: &str, toml: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!(
            "sidegate-faults-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, toml).unwrap();
        ConfigFile(path)
    }

    /// A dc1 gateway on a loopback port with these `[gateway]` settings, one instance per
    /// service.
    fn gateway(name: &str, settings: &str, services: &[(&str, SocketAddr)]) -> ConfigFile {
        let services: Vec<(&str, Vec<SocketAddr>)> =
            services.iter().map(|&(n, a)| (n, vec![a])).collect();
        Self::new(
            name,
            &gateway_toml("dc1", "default", LOOPBACK, &services, "", settings),
        )
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An endpoint that never answers: a listener whose accept queue is full, so the kernel drops
/// every further SYN and a connect hangs until the dialer gives up.
struct Blackhole {
    addr: SocketAddr,
    _listener: rustix::fd::OwnedFd,
    _queued: Vec<TcpStream>,
}

fn blackhole() -> Blackhole {
    use rustix::net::{bind, getsockname, listen, socket, AddressFamily, SocketType};
    let listener = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&listener, &SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    listen(&listener, 0).unwrap();
    let addr = SocketAddr::try_from(getsockname(&listener).unwrap()).unwrap();
    let mut queued = Vec::new();
    while let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        queued.push(s);
        assert!(queued.len() < 16, "the accept queue never filled");
    }
    Blackhole {
        addr,
        _listener: listener,
        _queued: queued,
    }
}

/// `openssl s_server -WWW` for one name, serving `STREAM_BYTES` of `0123456789\n` as
/// `/stream`: a real backend in its own process, to be killed. (Its stdin mode is no good
/// here: it can block in a read on the TLS socket and stop sending.)
struct StreamingServer {
    child: std::process::Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

const CYCLE: &[u8] = b"0123456789\n";
/// More than every socket buffer between the server and the client can hold, so the kill
/// lands mid-transfer.
const STREAM_BYTES: usize = 48 << 20;

impl StreamingServer {
    fn start(pki: &Pki, name: &str) -> StreamingServer {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let (cert, key) = pki.leaf_pem(&[name.to_owned()]);
        let dir =
            std::env::temp_dir().join(format!("sidegate-faults-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        let stream: Vec<u8> = CYCLE.iter().copied().cycle().take(STREAM_BYTES).collect();
        std::fs::write(dir.join("stream"), stream).unwrap();
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", "127.0.0.1:0", "-WWW"])
            .args(["-cert", "cert.pem", "-key", "key.pem"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // It prints `ACCEPT 127.0.0.1:PORT` once listening.
        let stdout = io::BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("ACCEPT ") {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>());
                }
            }
        });
        let addr = rx
            .recv_timeout(IO_TIMEOUT)
            .expect("openssl s_server did not start");
        StreamingServer {
            child,
            addr: addr.unwrap(),
            dir,
        }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks that bytes continue the `CYCLE` stream without a gap or a stray byte.
#[derive(Default)]
struct CycleCheck {
    next: Option<u8>,
    seen: usize,
}

impl CycleCheck {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            let at = CYCLE
                .iter()
                .position(|&c| c == b)
                .expect("a byte not in the stream");
            if let Some(want) = self.next {
                assert_eq!(b, want, "stream broken after {} bytes", self.seen);
            }
            self.next = Some(CYCLE[(at + 1) % CYCLE.len()]);
            self.seen += 1;
        }
    }
}

/// A backend process killed while it streams to a client: that client gets the bytes sent
/// before the kill, intact, then a TCP close without TLS close_notify, which its TLS library
/// reports as a truncated stream (rustls: UnexpectedEof). The gateway passes the backend's
/// FIN on as a FIN: it cannot know more than the backend's kernel said, and TLS makes the
/// truncation visible. Connections to another backend through the same gateway, mid-transfer
/// at the moment of the kill, finish intact.
#[test]
fn a_backend_killed_mid_transfer_ends_only_its_own_connection() {
    let pki = Pki::new();
    let db_sni = service_sni("db", "dc1");
    let mut db = StreamingServer::start(&pki, &db_sni);
    let web = Backend::start(&pki, &service_sni("web", "dc1"));
    let gw = gateway_with(&[("db", vec![db.addr]), ("web", vec![web.addr])], "");
    let addr = gw.gateway_addrs[0];
    let cfg = pki.client_config();

    // Three transfers to web, each paused mid-way until the kill is done.
    let (ready_tx, ready_rx) = mpsc::channel();
    let others: Vec<_> = (0..3u64)
        .map(|i| {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let (cfg, ready) = (cfg.clone(), ready_tx.clone());
            let sni = service_sni("web", "dc1");
            let t = thread::spawn(move || -> io::Result<String> {
                let mut tls = tls_connect(addr, &sni, &cfg)?;
                let first = noise(100 + i, 64 * 1024);
                tls.write_all(&first)?;
                let mut back = vec![0u8; first.len()];
                tls.read_exact(&mut back)?;
                assert!(back == first);
                ready.send(()).unwrap();
                go_rx.recv_timeout(IO_TIMEOUT).unwrap();
                echo_rounds(tls, 200 + i * 100, 16, 64 * 1024)
            });
            (t, go_tx)
        })
        .collect();
    for _ in 0..3 {
        ready_rx.recv_timeout(IO_TIMEOUT).unwrap();
    }

    let mut victim = tls_connect(addr, &db_sni, &cfg).unwrap();
    victim.write_all(b"GET /stream HTTP/1.0\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        victim.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
        assert!(head.len() < 1024, "no end of the HTTP head");
    }
    let mut check = CycleCheck {
        next: Some(CYCLE[0]),
        seen: 0,
    };
    let mut buf = vec![0u8; 16 * 1024];
    while check.seen < 256 * 1024 {
        let n = victim
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("db's stream after {} bytes: {e}", check.seen));
        assert!(n > 0, "db ended its stream early");
        check.feed(&buf[..n]);
    }
    db.kill();
    let killed = Instant::now();
    let end = loop {
        match victim.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => check.feed(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    let err = end.expect_err("the stream ended as if complete (close_notify) after a kill");
    assert!(
        check.seen < STREAM_BYTES,
        "the kill came after the whole stream was sent"
    );
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "the close took {:?}",
        killed.elapsed()
    );
    drop(victim);

    for (t, go) in others {
        go.send(()).unwrap();
        assert_eq!(t.join().unwrap().unwrap(), web.name);
    }
    // db is gone: a new connection to it is a counted refusal; web still serves.
    assert!(tls_connect(addr, &db_sni, &cfg).is_err());
    eventually("no_endpoint = 1", || {
        gw.metrics.gateway.no_endpoint.get() == 1
    });
    let tls = tls_connect(addr, &service_sni("web", "dc1"), &cfg).unwrap();
    assert_eq!(echo_and_finish(tls, b"after").unwrap(), web.name);
    eventually("every connection closed", || {
        gw.metrics.gateway.active.get() == 0
    });
}

/// Every endpoint down, refusing or silent: the client is closed once each has had its
/// connect timeout, no later, and the refusal is counted. Failed endpoints are tried last
/// afterwards, but still tried, so the bound holds on the next connection too.
#[test]
fn every_endpoint_down_is_refused_within_the_connect_timeouts() {
    let pki = Pki::new();
    let hole = blackhole();
    let gw = start(&format!(
        "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
         connect_timeout_ms = 500\n[[catalog.services]]\nname = \"db\"\ninstances = [\"{}\", \"{}\", \"{}\"]\n",
        dead_addr(),
        hole.addr,
        dead_addr()
    ));
    let cfg = pki.client_config();
    for round in 1..=2u64 {
        let t = Instant::now();
        assert!(tls_connect(gw.gateway_addrs[0], &service_sni("db", "dc1"), &cfg).is_err());
        let took = t.elapsed();
        // One silent endpoint: one connect timeout, plus scheduling on a busy machine.
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_millis(3000),
            "refused after {took:?}"
        );
        eventually("no_endpoint counted", || {
            gw.metrics.gateway.no_endpoint.get() == round
        });
        assert_eq!(gw.metrics.gateway.dial.connect_failures.get(), 3 * round);
    }
    assert_eq!(hello_count(&gw, HelloOutcome::Routed), 2);
}

/// The sidecar's upstream with its target down: the local app's connection is closed
/// without a byte once each endpoint has had its connect timeout, and counted.
#[test]
fn upstream_whose_target_is_down_closes_the_local_app_and_counts() {
    let hole = blackhole();
    let (web, port) = web_upstream(&[dead_addr(), hole.addr], "connect_timeout_ms = 500");
    let t = Instant::now();
    local_app_gets_nothing(port, b"anyone there?");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(3000),
        "closed after {took:?}"
    );
    eventually("no_endpoint = 1", || {
        web.metrics.upstream.no_endpoint.get() == 1
    });
    assert_eq!(web.metrics.upstream.dial.connect_failures.get(), 2);
    assert_eq!(web.metrics.upstream.handshake_failures.get(), 0);
}

/// Failover to success: the upstream's endpoints are one that never answers, one that
/// refuses and db's live inbound listener, in that order. The local app's connection still
/// reaches db's app, after more than one connect timeout: the silent endpoint used up its
/// whole timeout and the next two were still tried, so `connect_timeout_ms` bounds each
/// attempt, not the dial as a whole.
#[test]
fn upstream_fails_over_past_a_silent_and_a_refusing_endpoint() {
    let hole = blackhole();
    let db = DB.inbound(app("db"), "");
    let (web, port) = web_upstream(
        &[hole.addr, dead_addr(), db.inbound_addr.unwrap()],
        "connect_timeout_ms = 500",
    );
    let t = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let got = exchange(tcp.try_clone().unwrap(), tcp, b"through at last", shut_tcp);
    assert_eq!(got, b"through at lastapp:db\n");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(500), "served after {took:?}");
    assert_eq!(web.metrics.upstream.dial.connect_failures.get(), 2);
    assert_eq!(web.metrics.upstream.no_endpoint.get(), 0);
    assert_eq!(web.metrics.upstream.handshake_failures.get(), 0);
    assert_eq!(db.metrics.inbound.accepted.get(), 1);
}

/// The inbound listener with its local app down: the authorized caller's connection is closed
/// without a byte and counted; the mesh handshake itself was fine.
#[test]
fn inbound_whose_local_app_is_down_closes_the_caller_and_counts() {
    let db = DB.inbound(dead_addr(), "");
    let (web, port) = web_upstream(&[db.inbound_addr.unwrap()], "");
    local_app_gets_nothing(port, b"hello db");
    eventually("local_connect_failures = 1", || {
        db.metrics.inbound.local_connect_failures.get() == 1
    });
    assert_eq!(db.metrics.inbound.handshake_failures.get(), 0);
    assert_eq!(db.metrics.inbound.denied.get(), 0);
    assert_eq!(web.metrics.upstream.handshake_failures.get(), 0);
}

/// A client that sends more than its ClientHello in one write, more than the gateway's first
/// read takes (2 KiB): the bytes behind the hello reach the backend without the client
/// sending anything more. (A relay that waited for the client's next readiness here would
/// hold them until the client spoke again.)
#[test]
fn bytes_behind_the_client_hello_are_forwarded_without_waiting_for_more() {
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gw = gateway_with(&[("db", vec![sink.local_addr().unwrap()])], "");
    let mut sent = captured_hello();
    sent.extend(noise(7, 3000));
    let mut client = raw(gw.gateway_addrs[0]);
    // Once the gateway waits for the hello: all of it then arrives as one edge, the one the
    // gateway's first read uses up.
    thread::sleep(Duration::from_millis(200));
    client.write_all(&sent).unwrap();

    let (mut backend, _) = sink.accept().unwrap();
    backend
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = vec![0u8; sent.len()];
    let read = backend.read_exact(&mut got);
    assert!(
        read.is_ok(),
        "{read:?}: the bytes behind the hello were held back"
    );
    assert_eq!(got, sent);
    drop(client);
}

/// Clients trickling a real ClientHello one byte at a time are closed at
/// `handshake_timeout_ms` and counted as timeouts, while a normal client is served.
#[test]
fn slow_loris_clients_are_closed_at_the_handshake_timeout() {
    const LORISES: usize = 20;
    const TIMEOUT: Duration = Duration::from_millis(2000);
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let gw = gateway_with(&[("db", vec![db.addr])], "handshake_timeout_ms = 2000");
    let addr = gw.gateway_addrs[0];
    let hello = captured_hello();

    let lorises = slow_clients(addr, LORISES);
    let cfg = pki.client_config();
    let normal = thread::spawn(move || {
        let tls = tls_connect(addr, &service_sni("db", "dc1"), &cfg);
        (
            tls.and_then(|t| echo_rounds(t, 7, 4, 16 * 1024)),
            Instant::now(),
        )
    });
    let closed = trickle_until_closed(&lorises, &hello, TIMEOUT);
    eventually("every slow client counted as timeout", || {
        hello_count(&gw, HelloOutcome::Timeout) == LORISES as u64
    });
    let (result, finished) = normal.join().unwrap();
    assert_eq!(result.unwrap(), db.name);
    assert!(
        finished < closed[0],
        "the normal client was not served while the slow ones were held"
    );
    assert_eq!(hello_count(&gw, HelloOutcome::Routed), 1);
}

/// Slow-loris clients of the inbound (mTLS) listener are closed at its fixed 10 s handshake
/// timeout and counted, while a mesh caller is served.
#[test]
fn slow_loris_clients_of_the_inbound_listener_are_closed_at_its_handshake_timeout() {
    const LORISES: usize = 5;
    const TIMEOUT: Duration = Duration::from_secs(10);
    let db = DB.inbound(app("db"), "");
    let lorises = slow_clients(db.inbound_addr.unwrap(), LORISES);
    let (_web, port) = web_upstream(&[db.inbound_addr.unwrap()], "");
    let payload = noise(3, 200_000);
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let got = exchange(tcp.try_clone().unwrap(), tcp, &payload, shut_tcp);
    let served = Instant::now();
    assert!(
        got == [&payload[..], b"app:db\n"].concat(),
        "the caller's transfer was damaged"
    );
    let closed = trickle_until_closed(&lorises, &captured_hello(), TIMEOUT);
    assert!(
        served < closed[0],
        "the caller was not served while the slow ones were held"
    );
    eventually("every slow client counted", || {
        db.metrics.inbound.handshake_failures.get() == LORISES as u64
    });
}

/// `n` connections to `addr`, each with the time it was opened.
fn slow_clients(addr: SocketAddr, n: usize) -> Vec<(TcpStream, Instant)> {
    (0..n)
        .map(|_| (TcpStream::connect(addr).unwrap(), Instant::now()))
        .collect()
}

/// Trickles `bytes` into every connection, one byte each per 50 ms, until the server closes
/// each; checks that each was closed `timeout` after it opened (plus scheduling on a busy
/// machine), and returns when each was closed, in order.
fn trickle_until_closed(
    slow: &[(TcpStream, Instant)],
    bytes: &[u8],
    timeout: Duration,
) -> Vec<Instant> {
    let mut closed: Vec<Option<Instant>> = vec![None; slow.len()];
    let deadline = Instant::now() + timeout + IO_TIMEOUT;
    for byte in bytes.iter().cycle() {
        if closed.iter().all(Option::is_some) {
            break;
        }
        assert!(Instant::now() < deadline, "slow clients still open");
        for (i, (s, _)) in slow.iter().enumerate() {
            if closed[i].is_none() && (peer_closed(s) || (&*s).write_all(&[*byte]).is_err()) {
                closed[i] = Some(Instant::now());
            }
        }
        thread::sleep(Duration::from_millis(50)); // the attack's pace
    }
    let mut closed: Vec<Instant> = closed.into_iter().map(Option::unwrap).collect();
    for ((_, opened), at) in slow.iter().zip(&closed) {
        let after = *at - *opened;
        assert!(
            after >= timeout && after < timeout + Duration::from_millis(2500),
            "a slow client was closed after {after:?}"
        );
    }
    closed.sort();
    closed
}

/// Many clients sending garbage: each is closed and counted as not TLS, and a client
/// transferring meanwhile sees every byte echoed intact.
#[test]
fn a_flood_of_garbage_is_closed_and_counted_without_hurting_good_traffic() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 40;
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let gw = gateway_with(&[("db", vec![db.addr])], "");
    let addr = gw.gateway_addrs[0];
    let cfg = pki.client_config();
    let good = thread::spawn(move || {
        (0..10u64)
            .map(|i| {
                let tls = tls_connect(addr, &service_sni("db", "dc1"), &cfg)?;
                echo_rounds(tls, i * 1000, 8, 64 * 1024)
            })
            .collect::<io::Result<Vec<String>>>()
    });
    let flood: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let mut s = raw(addr);
                    let _ = s.write_all(&garbage(t * PER_THREAD + i, 2048));
                    assert_closed(&mut s);
                }
            })
        })
        .collect();
    for f in flood {
        f.join().unwrap();
    }
    let names = good.join().unwrap().unwrap();
    assert!(names.iter().all(|n| *n == db.name));
    eventually("every garbage client counted", || {
        hello_count(&gw, HelloOutcome::NotTls) == THREADS * PER_THREAD
    });
    assert_eq!(hello_count(&gw, HelloOutcome::Routed), 10);
    eventually("nothing left open", || gw.metrics.gateway.active.get() == 0);
}

/// Garbage sent to the inbound (mTLS) listener: each connection's handshake fails and is
/// counted, and mesh traffic through the same listener meanwhile arrives intact.
#[test]
fn garbage_to_the_inbound_listener_fails_handshakes_without_hurting_callers() {
    const CLIENTS: u64 = 60;
    let db = DB.inbound(app("db"), "");
    let inbound = db.inbound_addr.unwrap();
    let (_web, port) = web_upstream(&[inbound], "");
    let payload = noise(1, 2_000_000);
    let expected = [&payload[..], b"app:db\n"].concat();
    let good = thread::spawn(move || {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        exchange(tcp.try_clone().unwrap(), tcp, &payload, shut_tcp)
    });
    for i in 0..CLIENTS {
        let mut s = raw(inbound);
        // Half of them look like the start of a TLS record; each finishes sending so that a
        // handshake waiting for more bytes fails now rather than at its timeout.
        let mut bytes = noise(500 + i, 1500);
        if i % 2 == 0 {
            bytes[..3].copy_from_slice(&[0x16, 0x03, 0x01]);
        }
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            // A TLS alert at most, never application data.
            Ok(_) => assert!(rest.len() < 64, "{} bytes back", rest.len()),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    assert!(
        good.join().unwrap() == expected,
        "the good transfer was damaged"
    );
    eventually("every garbage handshake counted", || {
        db.metrics.inbound.handshake_failures.get() == CLIENTS
    });
    assert_eq!(db.metrics.inbound.denied.get(), 0);
}

/// The peer breaking TLS after the handshake ends its connection with the fatal alert TLS
/// names for it, so that the peer's log says why rather than showing a reset; the local app
/// gets none of it. A record that fails to authenticate (one bit of its tag flipped on the
/// way) is answered with bad_record_mac, an unprotected handshake record with
/// unexpected_message.
#[test]
fn a_peer_breaking_tls_after_the_handshake_gets_the_alert_that_says_why() {
    use rustls::AlertDescription::{BadRecordMac, UnexpectedMessage};
    let db = DB.inbound(app("db"), "");
    let client = sidegate::tls::configs::client_config(&WEB.identity(), &DB.spiffe_id()).unwrap();
    let flip_tag = |tls: &mut Client| {
        tls.conn.writer().write_all(b"hello db").unwrap();
        let mut record = Vec::new();
        tls.conn.write_tls(&mut record).unwrap();
        // The last byte is the tag's.
        *record.last_mut().unwrap() ^= 1;
        record
    };
    // A key update in a plain handshake record: after the handshake, TLS 1.3 takes only
    // protected ones.
    let unprotected = |_: &mut Client| vec![0x16, 3, 3, 0, 5, 24, 0, 0, 1, 0];
    // What the client sends after the handshake, and the alert that must answer it.
    type Sends = fn(&mut Client) -> Vec<u8>;
    let cases: [(Sends, _); 2] = [(flip_tag, BadRecordMac), (unprotected, UnexpectedMessage)];
    for (bytes, alert) in cases {
        let mut tls = tls_connect(db.inbound_addr.unwrap(), &DB.sni(), &client).unwrap();
        let bytes = bytes(&mut tls);
        tls.sock.write_all(&bytes).unwrap();
        let error = loop {
            match tls.conn.read_tls(&mut tls.sock) {
                Ok(0) => panic!("closed without an alert ({alert:?} expected)"),
                Ok(_) => {
                    if let Err(e) = tls.conn.process_new_packets() {
                        break e;
                    }
                }
                Err(e) => panic!("no alert before {e} ({alert:?} expected)"),
            }
        };
        assert_eq!(error, rustls::Error::AlertReceived(alert));
    }
}

/// The soft limit up to the hard one for this test process (as sidegate does for itself);
/// panics when even the hard limit is below `need`.
fn raise_own_fd_limit(need: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= need,
        "this test needs {need} open files; the hard limit is {hard} (ulimit -Hn)"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: limit.maximum,
        },
    )
    .unwrap();
}

/// The binary under `prlimit` with so few descriptors that the next connection is accepted
/// with the last one and cannot dial its backend: it must wait for a descriptor (within the
/// connect timeout) rather than be refused, later clients wait in the kernel's accept queue
/// while accepting pauses, and all of them are served once held connections close.
#[test]
fn out_of_file_descriptors_accepting_pauses_and_resumes() {
    const NOFILE: usize = 40;
    let pki = Pki::new();
    let web_sni = service_sni("web", "dc1");
    let web = Backend::start(&pki, &web_sni);
    let config = ConfigFile::gateway(
        "nofile",
        "connect_timeout_ms = 10000\nhandshake_timeout_ms = 60000",
        &[("web", web.addr)],
    );
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    let mut sg = run_binary_with(&["prlimit", &limit, "--"], &[], &config.0, 1);
    let (pid, addr) = (sg.child.id(), sg.gateway_addrs[0]);
    let cfg = pki.client_config();

    // Leave exactly one descriptor free: a client that has not sent anything takes one.
    let base = open_fds(pid);
    let _silent = ((NOFILE - base) % 2 == 0).then(|| raw(addr));
    eventually("the silent client accepted", || {
        (NOFILE - open_fds(pid)) % 2 == 1
    });
    let free = NOFILE - open_fds(pid);
    let held: Vec<Client> = (0..free / 2)
        .map(|i| tls_connect(addr, &web_sni, &cfg).unwrap_or_else(|e| panic!("#{i}: {e}")))
        .collect();
    eventually("one descriptor left", || open_fds(pid) == NOFILE - 1);

    let waiting: Vec<_> = (0..4)
        .map(|i| {
            let (cfg, sni) = (cfg.clone(), web_sni.clone());
            thread::spawn(move || {
                echo_and_finish(
                    tls_connect(addr, &sni, &cfg)?,
                    format!("waiting {i}").as_bytes(),
                )
            })
        })
        .collect();
    eventually("accepting paused", || sg.logged("pausing accepts") > 0);
    for (i, tls) in held.into_iter().enumerate() {
        assert_eq!(
            echo_and_finish(tls, format!("held {i}").as_bytes()).unwrap(),
            web.name
        );
    }
    for w in waiting {
        assert_eq!(w.join().unwrap().unwrap(), web.name);
    }
    assert!(sg.child.try_wait().unwrap().is_none(), "sidegate exited");
    let tls = tls_connect(addr, &web_sni, &cfg).unwrap();
    assert_eq!(echo_and_finish(tls, b"later").unwrap(), web.name);
}

/// A backend that accepts and holds every connection without reading: where the held
/// connections below are relayed to.
struct Holder {
    addr: SocketAddr,
    held: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Holder {
    fn start() -> Holder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = held.clone();
        thread::spawn(move || {
            for s in listener.incoming().map_while(Result::ok) {
                kept.lock().unwrap().push(s);
            }
        });
        Holder { addr, held }
    }

    fn count(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.held.lock().unwrap().clear();
    }
}

/// 10,000 idle connections against `max_connections = 5000`, on the binary (so its memory
/// is its own): the client holds all 10,000 sockets open at once; 5,000 are relayed and held,
/// the gateway closes each of the other 5,000 at once and counts it, the held ones stay open,
/// and memory per held connection stays within budget.
///
/// Held connections carry a real client's ClientHello to a backend that never answers: the
/// gateway does not decrypt, so an idle relayed connection costs it the same whether or not
/// a handshake went through it, and 5,000 real handshakes would cost a debug build half a
/// minute. Counts come from the admin endpoint's /metrics.
#[test]
fn ten_thousand_idle_connections_against_a_limit_of_five_thousand() {
    const LIMIT: usize = 5000;
    // Issue 7's target: 2 KiB per held connection. Measured here on 2026-11-26: 2,349 bytes
    // (debug and release alike: the heap objects per connection make the cost); 1,815 since
    // the relay is one small state machine and deadlines share one sweep. Paced and warmed
    // as below (2026-12-02): 1,626-1,656 bytes (x86_64 debug), 1,774 (aarch64) and 1,091
    // (armv7) under qemu-user. The target is the bound.
    const BUDGET_BYTES: f64 = 2.0 * 1024.0;
    // This process holds the 10,000 client sockets and the backend's 5,000 accepted ones.
    raise_own_fd_limit(3 * LIMIT as u64 + 1000);
    let holder = Holder::start();
    let pki = Pki::new();
    let web_sni = service_sni("web", "dc1");
    let web = Backend::start(&pki, &web_sni);
    let config = ConfigFile::gateway(
        "10k",
        &format!(
            "max_connections = {LIMIT}\nhandshake_timeout_ms = 60000\n\
             [admin]\nlisten = \"127.0.0.1:0\""
        ),
        &[("db", holder.addr), ("web", web.addr)],
    );
    let mut sg = run_binary(&config.0, 1);
    let (pid, addr) = (sg.child.id(), sg.gateway_addrs[0]);
    let admin = sg.logged_addr("admin endpoint listening on ");
    let gateway_count = |name: &str| {
        let samples = ops::scrape(admin);
        ops::value(&samples, name, &[("role", "gateway")])
    };
    let hello = captured_hello();
    // Connections arrive in bursts of BURST, each relayed before the next: the memory a
    // gateway keeps after a burst (the heap's high-water mark from the hellos in flight, the
    // buffer pool) depends on how many arrive at once, and this keeps that the same in the
    // warm-up and the measured part. Unpaced, the same code measured 1,593-2,023 bytes here
    // and up to 2,545 under qemu-user.
    const BURST: usize = 100;
    let open = |held: &mut Vec<TcpStream>, n: usize| {
        for _ in 0..n / BURST {
            held.extend((0..BURST).map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&hello).unwrap();
                s
            }));
            eventually_within(
                Duration::from_secs(60),
                "every connection of the burst relayed",
                || holder.count() == held.len(),
            );
        }
    };
    // The budget is per held connection, so the baseline is a gateway that has already
    // carried some: one-time costs (code paged in, the pool and the heap grown to a burst,
    // and under qemu-user the emulator translating the code) are not spread over the 5,000.
    // This is the benchmark's method (`warm_idle_rss_kib`).
    const WARM: usize = 2 * BURST;
    let mut warm = Vec::with_capacity(WARM);
    open(&mut warm, WARM);
    for s in warm {
        rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO)).unwrap();
    }
    holder.held.lock().unwrap().clear();
    eventually_within(
        Duration::from_secs(60),
        "the warm-up connections closed",
        || gateway_count("sidegate_connections_active") == 0,
    );
    let idle = settled_rss_kib(pid);

    let mut held = Vec::with_capacity(LIMIT);
    open(&mut held, LIMIT);
    // Settled: the last connections' buffers may still be in use when the backend has them.
    let first = rss_kib(pid);
    let with_held = settled_rss_kib(pid);

    // One at a time, each seen closed before the next, so the listener's accept queue
    // (backlog 128) never overflows into SYN retries; the client keeps every refused socket
    // open to the end of the test, 10,000 in all.
    let mut refused = Vec::with_capacity(LIMIT);
    for _ in 0..LIMIT {
        let mut s = raw(addr);
        let _ = s.write_all(&hello);
        assert_closed(&mut s);
        refused.push(s);
    }
    let after_excess = rss_kib(pid);
    assert_eq!(
        gateway_count("sidegate_connections_refused_total"),
        LIMIT as u64
    );
    assert_eq!(gateway_count("sidegate_connections_active"), LIMIT as u64);
    assert_eq!(
        holder.count(),
        LIMIT,
        "a refused connection reached the backend"
    );
    assert!(
        held.iter().all(|s| !peer_closed(s)),
        "a held connection was closed"
    );

    let per_held = (with_held.saturating_sub(idle) * 1024) as f64 / LIMIT as f64;
    eprintln!(
        "sidegate ({} build) RSS: after {WARM} held and closed {idle} KiB, {LIMIT} held {with_held} KiB \
         ({per_held:.0} bytes each; first reading {first} KiB), after {LIMIT} refused \
         {after_excess} KiB",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    assert!(
        per_held <= BUDGET_BYTES,
        "{per_held:.0} bytes per held connection"
    );
    assert!(
        after_excess <= with_held + 1024,
        "refusing grew memory from {with_held} to {after_excess} KiB"
    );

    // Room for one more once a held connection goes: a real TLS client is served. It resets
    // (a plain close would leave the connection half-open, the backend may still answer).
    let gone = held.pop().unwrap();
    rustix::net::sockopt::set_socket_linger(&gone, Some(Duration::ZERO)).unwrap();
    drop(gone);
    let cfg = pki.client_config();
    let tls = eventually("a TLS client served again", || {
        tls_connect(addr, &web_sni, &cfg)
    });
    assert_eq!(echo_and_finish(tls, b"room again").unwrap(), web.name);
    assert!(sg.child.try_wait().unwrap().is_none(), "sidegate exited");
    drop(refused);
}
