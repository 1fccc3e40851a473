//! The admin endpoint (`[admin] listen`): `/ready`, `/metrics` (Prometheus text) and `/config`
//! (the running plan as JSON, no key material).
//!
//! An upstream listener that could not be bound (its port held by another process) leaves
//! `/ready` at 200 — the rest serves, and a 503 would take the whole sidecar out of a health
//! check for one local port — with the body naming what is not bound and why; `/config`
//! lists it under `unbound_listeners` and `/metrics` counts the failed attempts.
//!
//! It runs on threads of its own with blocking sockets, never on the data path's event loop:
//! one thread accepts and hands each connection to a thread of its own, which serves it under
//! a hard deadline and a request-size limit. So a silent or slow client holds only its own
//! thread, for at most the deadline, and at most `MAX_CONNECTIONS` are served at once; more
//! are closed at accept and counted. The accept thread never waits on a client, so stopping
//! the endpoint (at exit, or when a reload moves it) is not delayed by one either.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::mesh::Plan;
use crate::metrics::{self, Metrics};
use crate::proxy::BindFailures;

/// A request line and headers larger than this are refused (431): scrapers send a few hundred
/// bytes.
const MAX_REQUEST: usize = 8192;
const MAX_HEADERS: usize = 32;
/// Time one connection may take from accept to the last byte of the answer.
const DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once. Scrapers and health checks need a few; beyond this, a flood of
/// silent connections would cost a thread each.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection's thread: request parsing (an 8 KiB buffer), routing and rendering, whose
/// bodies live on the heap.
const CONNECTION_STACK: usize = 256 * 1024;

/// What the control loop publishes for the endpoint to read.
pub struct Status {
    pub metrics: Arc<Metrics>,
    plan: Mutex<Option<Arc<Plan>>>,
    draining: AtomicBool,
    /// With `[consul]`: how fresh the state served is.
    consul: Mutex<Option<Arc<crate::consul::Status>>>,
    /// Listeners of the plan in service that could not be bound.
    bind_failures: Mutex<Option<Arc<BindFailures>>>,
}

impl Status {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Status {
            metrics,
            plan: Mutex::new(None),
            draining: AtomicBool::new(false),
            consul: Mutex::new(None),
            bind_failures: Mutex::new(None),
        }
    }

    pub fn set_bind_failures(&self, failures: Arc<BindFailures>) {
        *self
            .bind_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(failures);
    }

    fn bind_failures(&self) -> Option<Arc<BindFailures>> {
        self.bind_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The Consul source's freshness, for `/ready` and `/metrics`.
    pub fn set_consul(&self, consul: Arc<crate::consul::Status>) {
        *self.consul.lock().unwrap_or_else(PoisonError::into_inner) = Some(consul);
    }

    fn consul(&self) -> Option<Arc<crate::consul::Status>> {
        self.consul
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The plan now serving (after start and after every applied reload).
    pub fn set_plan(&self, plan: Arc<Plan>) {
        *self.plan.lock().unwrap_or_else(PoisonError::into_inner) = Some(plan);
    }

    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// `Ok` when a plan is live and current, else why not.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(NotReady::Draining);
        }
        if self.plan().is_none() {
            // With [consul] the endpoint opens before the agent's first state: say what it
            // waits for, and why it may be long.
            return Err(match self.consul() {
                Some(c) => NotReady::AwaitingConsul {
                    last_error: c.last_error(),
                },
                None => NotReady::NoPlan,
            });
        }
        match self.consul() {
            Some(c) if c.is_stale() => Err(NotReady::Stale {
                last_error: c.last_error(),
            }),
            _ => Ok(()),
        }
    }
}

/// Why `/ready` answers 503; its `Display` is the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotReady {
    /// Shutting down: the load balancer should stop sending.
    Draining,
    /// Nothing served yet (file source: before the first plan).
    NoPlan,
    /// Nothing served yet: the Consul agent has not given a first state.
    AwaitingConsul { last_error: Option<String> },
    /// Serving, but what the Consul agent has not confirmed lately.
    Stale { last_error: Option<String> },
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last_error = match self {
            NotReady::Draining => {
                return f.write_str("draining: shutting down, not accepting connections")
            }
            NotReady::NoPlan => return f.write_str("no plan: not serving yet"),
            NotReady::AwaitingConsul { last_error } => {
                f.write_str("no plan: waiting for the first state from the Consul agent")?;
                last_error
            }
            NotReady::Stale { last_error } => {
                f.write_str("stale: serving state the Consul agent has not confirmed")?;
                last_error
            }
        };
        match last_error {
            Some(e) => write!(f, " (last error: {e})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for NotReady {}

/// A bound, serving admin endpoint; stops when dropped.
pub struct Admin {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    /// Binds now, so a taken port is the caller's error, then serves on its own thread.
    pub fn start(addr: SocketAddr, status: Arc<Status>) -> io::Result<Admin> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sidegate-admin".into())
            .spawn(move || {
                let open = Arc::new(AtomicUsize::new(0));
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    match conn {
                        Ok(stream) => serve(stream, &status, &open),
                        // Out of descriptors: the data path matters more; try the next one.
                        Err(e) => crate::debug!("admin: accept failed: {e}"),
                    }
                }
            })?;
        if !addr.ip().is_loopback() {
            crate::warn!("admin endpoint on {addr} is reachable from other hosts: /config and /metrics show this host's mesh (services, addresses, identities) to anyone who can connect; listen on 127.0.0.1 or ::1 unless that is meant");
        }
        crate::info!("admin endpoint listening on {addr} (/ready, /metrics, /config)");
        Ok(Admin {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept with a connection of our own.
        let wake = match self.addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, a.port()))
            }
            a => a,
        };
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Hands `stream` to a thread of its own, or closes it when `MAX_CONNECTIONS` are being
/// served already (counted: the scrape that failed has a reason on `/metrics`).
fn serve(stream: TcpStream, status: &Arc<Status>, open: &Arc<AtomicUsize>) {
    let m = &status.metrics.admin;
    if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        open.fetch_sub(1, Ordering::SeqCst);
        m.refused.inc();
        crate::debug!("admin: refused a connection, {MAX_CONNECTIONS} already open");
        return;
    }
    let slot = Slot(open.clone());
    let status = status.clone();
    let spawned = std::thread::Builder::new()
        .name("sidegate-admin-conn".into())
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            let _slot = slot;
            if let Err(e) = handle(stream, &status) {
                crate::debug!("admin: {e}");
            }
        });
    if let Err(e) = spawned {
        m.refused.inc();
        crate::debug!("admin: refused a connection, cannot start its thread: {e}");
    }
}

/// One of `MAX_CONNECTIONS`, given back when its connection's thread ends (or never starts).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: Body,
    extra_header: &'static str,
}

/// `/metrics` and `/config` are written as they are made (megabytes with a large mesh), not
/// built in memory first; the connection's close ends them.
enum Body {
    Text(String),
    Metrics,
    Config(Arc<Plan>),
}

/// The most of a streamed body held in memory at once.
const CHUNK: usize = metrics::CHUNK;

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Body::Text(body.into()),
            extra_header: "",
        }
    }
}

/// The status line, headers and body. A text body has its length; a streamed one ends when
/// the connection closes (`Connection: close`), which HTTP/1.1 allows.
fn write_response(stream: &mut TcpStream, response: &Response, status: &Status) -> io::Result<()> {
    let length = match &response.body {
        Body::Text(text) => format!("Content-Length: {}\r\n", text.len()),
        Body::Metrics | Body::Config(_) => String::new(),
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\n{length}Cache-Control: no-store\r\n{}Connection: close\r\n\r\n",
        response.status, response.content_type, response.extra_header
    );
    stream.write_all(head.as_bytes())?;
    match &response.body {
        Body::Text(text) => stream.write_all(text.as_bytes())?,
        Body::Metrics => {
            metrics::render(&status.metrics, &mut *stream)?;
            // All small: a few samples each, bounded by the process, the agent's state and the
            // plan's listeners and upstreams, not by the mesh.
            let mut text = String::new();
            if let Some(plan) = status.plan() {
                metrics::render_limits(&plan, &mut text);
            }
            metrics::render_process(&mut text);
            if let Some(consul) = status.consul() {
                consul.render_prometheus(&mut text);
            }
            if let Some(failures) = status.bind_failures() {
                failures.render_prometheus(&mut text);
            }
            stream.write_all(text.as_bytes())?;
        }
        // The plan's serialization leaves out TLS configurations and keys (serde skip); what
        // remains is what `check --json` prints.
        Body::Config(plan) => {
            let mut out = io::BufWriter::with_capacity(CHUNK, &mut *stream);
            let config = ConfigBody {
                plan,
                unbound_listeners: status
                    .bind_failures()
                    .map(|f| f.unbound())
                    .unwrap_or_default(),
            };
            serde_json::to_writer_pretty(&mut out, &config).map_err(io::Error::other)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
    }
    stream.flush()
}

fn handle(mut stream: TcpStream, status: &Status) -> io::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    stream.set_write_timeout(Some(DEADLINE))?;
    let m = &status.metrics.admin;
    let response = match read_request(&mut stream, deadline)? {
        Some(Request::Get(path)) => route(&path, status),
        Some(Request::OtherMethod) => Response {
            extra_header: "Allow: GET\r\n",
            ..Response::text("405 Method Not Allowed", "only GET is served\n")
        },
        Some(Request::TooLarge) => {
            Response::text("431 Request Header Fields Too Large", "request too large\n")
        }
        Some(Request::Malformed) => Response::text("400 Bad Request", "not an HTTP request\n"),
        None => {
            m.abandoned.inc();
            crate::debug!("admin: a client sent no complete request within {DEADLINE:?}");
            return Ok(());
        }
    };
    let code = response
        .status
        .get(..3)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if let Some(c) = m.answered(code) {
        c.inc();
    }
    if matches!(code, 400 | 405 | 431) {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        crate::debug!("admin {peer}: refused, {}", response.status);
    }
    write_response(&mut stream, &response, status)?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

enum Request {
    Get(String),
    OtherMethod,
    TooLarge,
    Malformed,
}

/// Reads until the request head is complete. `None`: the client went away or ran out of time.
fn read_request(stream: &mut TcpStream, deadline: Instant) -> io::Result<Option<Request>> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(Some(match (req.method, req.path) {
                    (Some("GET"), Some(path)) => Request::Get(path.to_owned()),
                    (Some(_), Some(_)) => Request::OtherMethod,
                    _ => Request::Malformed,
                }))
            }
            Ok(httparse::Status::Partial) if len == buf.len() => {
                return Ok(Some(Request::TooLarge))
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(Some(Request::TooLarge)),
            Err(_) => return Ok(Some(Request::Malformed)),
        }
    }
}

/// `ready`, and what is not bound (the rest serves; retried).
fn ready_body(status: &Status) -> String {
    let unbound = status
        .bind_failures()
        .map(|f| f.unbound())
        .unwrap_or_default();
    let mut body = String::from("ready\n");
    for u in unbound {
        body.push_str(&format!("not bound (retrying): {}\n", u.error));
    }
    body
}

/// `/config`: the plan, then the listeners it names that are not bound now (only while there
/// are any), written straight to the socket.
#[derive(serde::Serialize)]
struct ConfigBody<'a> {
    #[serde(flatten)]
    plan: &'a Plan,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unbound_listeners: Vec<crate::proxy::Unbound>,
}

fn route(target: &str, status: &Status) -> Response {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match path {
        "/ready" => match status.readiness() {
            Ok(()) => Response::text("200 OK", ready_body(status)),
            Err(why) => Response::text("503 Service Unavailable", format!("{why}\n")),
        },
        "/metrics" => Response {
            content_type: metrics::CONTENT_TYPE,
            body: Body::Metrics,
            ..Response::text("200 OK", "")
        },
        "/config" => match status.plan() {
            Some(plan) => Response {
                content_type: "application/json",
                body: Body::Config(plan),
                ..Response::text("200 OK", "")
            },
            None => Response::text("503 Service Unavailable", "no plan: not serving yet\n"),
        },
        _ => Response::text(
            "404 Not Found",
            "not found; try /ready, /metrics or /config\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(addr: SocketAddr, request: &[u8]) -> String {
        try_ask(addr, request).unwrap()
    }

    /// `ask`, where a refused or reset connection is an answer too (the endpoint is full).
    fn try_ask(addr: SocketAddr, request: &[u8]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    fn status_line(response: &str) -> &str {
        response.lines().next().unwrap_or_default()
    }

    /// The reasons read as the `/ready` bodies operators and health checks already match on.
    #[test]
    fn not_ready_reasons_read_as_before() {
        let e = || Some("connection refused".to_owned());
        let shown = [
            NotReady::Draining,
            NotReady::NoPlan,
            NotReady::AwaitingConsul { last_error: None },
            NotReady::AwaitingConsul { last_error: e() },
            NotReady::Stale { last_error: None },
            NotReady::Stale { last_error: e() },
        ]
        .map(|r| r.to_string());
        assert_eq!(
            shown,
            [
                "draining: shutting down, not accepting connections",
                "no plan: not serving yet",
                "no plan: waiting for the first state from the Consul agent",
                "no plan: waiting for the first state from the Consul agent (last error: connection refused)",
                "stale: serving state the Consul agent has not confirmed",
                "stale: serving state the Consul agent has not confirmed (last error: connection refused)",
            ]
        );
    }

    #[test]
    fn answers_ready_and_refuses_what_it_does_not_serve() {
        let status = Arc::new(Status::new(Arc::new(Metrics::default())));
        let admin = Admin::start("127.0.0.1:0".parse().unwrap(), status.clone()).unwrap();
        let get = |path: &str| {
            ask(
                admin.addr,
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )
        };

        let r = get("/ready");
        assert_eq!(status_line(&r), "HTTP/1.1 503 Service Unavailable");
        assert!(r.ends_with("no plan: not serving yet\n"), "{r}");
        status.set_plan(Arc::new(Plan {
            upstreams: Vec::new(),
            inbound: None,
            gateway: None,
            warnings: Vec::new(),
            identity: None,
        }));
        assert_eq!(status_line(&get("/ready?verbose")), "HTTP/1.1 200 OK");
        let consul = Arc::new(crate::consul::Status::default());
        status.set_consul(consul.clone());
        consul.sent(true);
        let r = get("/ready");
        assert!(
            r.contains("\r\n\r\nstale: serving state the Consul agent has not confirmed"),
            "{r}"
        );
        consul.sent(false);
        assert_eq!(status_line(&get("/ready")), "HTTP/1.1 200 OK");
        assert!(get("/metrics").contains("\nsidegate_consul_stale 0\n"));
        status.set_draining();
        assert!(get("/ready").contains("\r\n\r\ndraining"));

        assert_eq!(status_line(&get("/nope")), "HTTP/1.1 404 Not Found");
        let post = ask(
            admin.addr,
            b"POST /ready HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(status_line(&post), "HTTP/1.1 405 Method Not Allowed");
        assert!(post.contains("\r\nAllow: GET\r\n"));
        assert_eq!(
            status_line(&ask(admin.addr, b"\x16\x03\x01\x02\x00junk\r\n\r\n")),
            "HTTP/1.1 400 Bad Request"
        );
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST)
        );
        assert_eq!(
            status_line(&ask(admin.addr, huge.as_bytes())),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        let many = format!("GET /metrics HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            status_line(&ask(admin.addr, many.as_bytes())),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );

        // A client that sends half a request and stalls holds the endpoint at most DEADLINE.
        let mut stalled = TcpStream::connect(admin.addr).unwrap();
        stalled.write_all(b"GET /met").unwrap();
        let started = Instant::now();
        assert_eq!(status_line(&get("/metrics")), "HTTP/1.1 200 OK");
        assert!(started.elapsed() < DEADLINE + Duration::from_secs(3));
        let m = &status.metrics.admin;
        let count = |code| m.answered(code).unwrap().get();
        assert_eq!(
            (count(400), count(404), count(405), count(431)),
            (1, 1, 1, 2)
        );
        // Served on its own thread, the stalled client is given up on at its own deadline.
        while m.abandoned.get() == 0 && started.elapsed() < DEADLINE + Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(m.abandoned.get(), 1);
    }

    /// Silent connections hold nobody else up: `/ready` answers at once past several of
    /// them; past `MAX_CONNECTIONS` a connection is closed at accept and counted; and the
    /// endpoint stops at once with a silent connection open.
    #[test]
    fn silent_connections_block_nobody() {
        let status = Arc::new(Status::new(Arc::new(Metrics::default())));
        let admin = Admin::start("127.0.0.1:0".parse().unwrap(), status.clone()).unwrap();
        let silent: Vec<TcpStream> = (0..5)
            .map(|_| TcpStream::connect(admin.addr).unwrap())
            .collect();
        let started = Instant::now();
        let r = ask(admin.addr, b"GET /ready HTTP/1.1\r\n\r\n");
        assert_eq!(status_line(&r), "HTTP/1.1 503 Service Unavailable", "{r}");
        // Before, each silent connection held the endpoint for its whole deadline (5 s).
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        // The /ready asker's place comes back when its thread ends, a moment after its answer:
        // until then a connection taking the last place is closed at accept (and counted).
        // Each is kept only once it is seen held open (no EOF within a short wait).
        let m = &status.metrics.admin;
        let mut closed_early = 0;
        let mut more: Vec<TcpStream> = Vec::new();
        while silent.len() + more.len() < MAX_CONNECTIONS {
            let c = TcpStream::connect(admin.addr).unwrap();
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            match (&c).read(&mut [0u8; 1]) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    more.push(c)
                }
                _ => {
                    closed_early += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            assert!(closed_early < 100, "places never given back");
        }
        let mut over = TcpStream::connect(admin.addr).unwrap();
        over.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut byte = [0u8; 1];
        // Closed at accept: an EOF (or a reset), long before the read timeout.
        match over.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection over the limit closed, got {other:?}"),
        }
        assert_eq!(m.refused.get(), closed_early + 1);
        drop((silent, more));
        // Their threads see the EOF and give their places back.
        let deadline = Instant::now() + Duration::from_secs(10);
        while try_ask(admin.addr, b"GET /ready HTTP/1.1\r\n\r\n").map_or(true, |r| {
            status_line(&r) != "HTTP/1.1 503 Service Unavailable"
        }) {
            assert!(Instant::now() < deadline, "places never given back");
            std::thread::sleep(Duration::from_millis(10));
        }

        let _idle = TcpStream::connect(admin.addr).unwrap();
        let stopping = Instant::now();
        drop(admin);
        assert!(
            stopping.elapsed() < Duration::from_secs(1),
            "{:?}",
            stopping.elapsed()
        );
    }
}
