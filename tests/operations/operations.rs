//! Operating the real binary the way systemd and Prometheus do: sd_notify on a test
//! `NOTIFY_SOCKET`, SIGHUP reloads with connections open through every role, SIGTERM drains,
//! the admin endpoint parsed by Prometheus' own parser, and the log format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::ops;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::apps::app;
use common::sidecars::{fixture, Service, DB, WEB};
use common::*;
use ops::*;
use rustix::process::Signal;
use sidegate::names::SpiffeId;
use sidegate::tls::configs::{client_config, server_config};

/// One sidegate serving all three roles, and what sits around it: a TLS service `api` behind
/// the gateway, the mesh service `db` (mTLS, its real leaf) behind the `db` upstream, and the
/// local app behind the inbound listener.
struct World {
    scratch: Scratch,
    pki: Pki,
    api: Backend,
    db: Backend,
    app: SocketAddr,
    upstream_port: u16,
}

impl World {
    fn new(name: &str) -> World {
        let pki = Pki::new();
        let api = Backend::start(&pki, &service_sni("api", "dc1"));
        let db = Backend::serve(server_config(&DB.identity()).unwrap(), "db");
        World {
            scratch: Scratch::new(name),
            pki,
            api,
            db,
            app: app("web"),
            upstream_port: free_port(),
        }
    }

    /// The configuration file with these gateway listeners and extra sections.
    fn write(&self, gateway_listen: &[&str], extra: &str) -> std::path::PathBuf {
        let listen: Vec<String> = gateway_listen.iter().map(|a| format!("\"{a}\"")).collect();
        let text = format!(
            r#"[mesh]
datacenter = "dc1"
trust_domain = "{TD}"
[tls]
cert_file = "{cert}"
key_file = "{key}"
ca_file = "{ca}"
[sidecar]
service = "web"
public_listener = "127.0.0.1:0"
local_service_address = "{app}"
[[sidecar.upstreams]]
destination_name = "db"
destination_partition = "part2"
local_bind_port = {port}
mesh_gateway = {{ mode = "none" }}
[gateway]
listen = [{listen}]
[[catalog.services]]
name = "api"
instances = ["{api}"]
[[catalog.services]]
name = "db"
partition = "part2"
instances = ["{db}"]
[admin]
listen = "127.0.0.1:0"
{extra}
"#,
            cert = fixture("web.pem"),
            key = fixture("web-key-sec1.pem"),
            ca = fixture("ca.pem"),
            app = self.app,
            port = self.upstream_port,
            listen = listen.join(", "),
            api = self.api.addr,
            db = self.db.addr,
        );
        let path = self.config();
        // Written whole and renamed, as an operator's editor or config management would.
        let tmp = self.scratch.path("sidegate.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    fn config(&self) -> std::path::PathBuf {
        self.scratch.path("sidegate.toml")
    }

    fn upstream(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.upstream_port))
    }

    /// A TLS client through the gateway to `api`.
    fn gateway_client(&self, gateway: SocketAddr) -> std::io::Result<Client> {
        tls_connect(
            gateway,
            &service_sni("api", "dc1"),
            &self.pki.client_config(),
        )
    }

    fn via_gateway(&self, gateway: SocketAddr) -> std::io::Result<Live> {
        self.gateway_client(gateway).map(Live::tls)
    }
}

/// A mesh caller of web's inbound listener: db's leaf as client certificate, web's identity
/// required of the server.
fn mesh_caller(inbound: SocketAddr) -> std::io::Result<Live> {
    caller_as(inbound, DB)
}

fn caller_as(inbound: SocketAddr, caller: Service) -> std::io::Result<Live> {
    let (cfg, sni) = caller_config(caller);
    tls_connect(inbound, &sni, &cfg).map(Live::tls)
}

/// A mesh caller's TLS client: its leaf as client certificate, web's identity required of
/// the server; and the name it sends.
fn caller_config(caller: Service) -> (std::sync::Arc<rustls::ClientConfig>, String) {
    let web = SpiffeId::service(TD, "default", "default", "dc1", "web");
    let cfg = client_config(&caller.identity(), &web).unwrap();
    (cfg, format!("web.default.dc1.internal.{TD}"))
}

/// Where the running process listens, read from its log lines.
struct Addrs {
    gateway: Vec<SocketAddr>,
    inbound: SocketAddr,
    admin: SocketAddr,
}

/// Starts sidegate on `config` with `notify` as its `NOTIFY_SOCKET`, waiting for READY=1.
fn start_notified(
    config: &std::path::Path,
    notify: &mut Notify,
    gateways: usize,
    env: &[(&str, String)],
) -> (Sidegate, Addrs, String) {
    let mut env = env.to_vec();
    env.push(("NOTIFY_SOCKET", notify.path.display().to_string()));
    let sg = Sidegate::spawn(config, &env);
    let gateway = (0..gateways)
        .map(|_| sg.wait_addr("gateway listening on "))
        .collect();
    let inbound = sg.wait_addr("inbound listening on ");
    let admin = sg.wait_addr("admin endpoint listening on ");
    let ready = notify.expect_line("READY=1");
    let addrs = Addrs {
        gateway,
        inbound,
        admin,
    };
    (sg, addrs, ready)
}

/// A world, its configuration (one gateway listener, `extra` sections) and sidegate serving
/// it with `env` added, started (READY=1 seen).
fn serving_with(
    name: &str,
    extra: &str,
    env: &[(&str, String)],
) -> (World, Notify, Sidegate, Addrs, String) {
    let world = World::new(name);
    let config = world.write(&["127.0.0.1:0"], extra);
    let mut notify = Notify::bind(&world.scratch);
    let (sg, addrs, ready) = start_notified(&config, &mut notify, 1, env);
    (world, notify, sg, addrs, ready)
}

fn serving(name: &str, extra: &str) -> (World, Notify, Sidegate, Addrs) {
    let (world, notify, sg, addrs, _) = serving_with(name, extra, &[]);
    (world, notify, sg, addrs)
}

/// SIGTERM with nothing open: a prompt exit with status 0.
fn stop_cleanly(mut sg: Sidegate) {
    sg.signal(Signal::TERM);
    assert_eq!(sg.wait_exit(IO_TIMEOUT).code(), Some(0));
}

#[test]
fn systemd_hears_ready_status_watchdog_reloading_and_stopping() {
    // 200 ms: keep-alives every 100 ms (their pace has a test of its own).
    let (_world, mut notify, mut sg, addrs, ready) =
        serving_with("notify", "", &[("WATCHDOG_USEC", "200000".into())]);
    // READY=1 only once everything is bound: the admin endpoint and each listener answer now.
    assert_eq!(http_get(addrs.admin, "/ready").0, 200);
    assert!(ready.contains("STATUS="), "{ready}");
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap();
    assert!(
        status.contains("gateway") && status.contains("inbound") && status.contains("upstream"),
        "STATUS should say what runs: {status}"
    );
    for _ in 0..2 {
        notify.expect_line("WATCHDOG=1");
    }

    sg.signal(Signal::HUP);
    let reloading = notify.expect_line("RELOADING=1");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("RELOADING=1 carries MONOTONIC_USEC")
        .parse()
        .unwrap();
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now_usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    assert!(
        usec <= now_usec && now_usec - usec < 10_000_000,
        "{usec} vs {now_usec}"
    );
    notify.expect_line("READY=1");

    sg.signal(Signal::TERM);
    notify.expect_line("STOPPING=1");
    assert!(sg.wait_exit(IO_TIMEOUT).success());
    // A watchdog-enabled run kept pinging until it stopped, and never before READY=1.
    let first_ready = notify
        .seen
        .iter()
        .position(|m| m.contains("READY=1"))
        .unwrap();
    assert!(notify.seen[..first_ready]
        .iter()
        .all(|m| !m.contains("WATCHDOG=1")));
}

#[test]
fn a_port_taken_at_start_exits_71_and_says_why() {
    let world = World::new("taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = world.write(&[addr.as_str()], "");
    let mut notify = Notify::bind(&world.scratch);
    let mut sg = Sidegate::spawn(
        &config,
        &[("NOTIFY_SOCKET", notify.path.display().to_string())],
    );
    // EX_OSERR, not EX_CONFIG: the file is fine, and systemd may restart into a free port.
    assert_eq!(sg.wait_exit(IO_TIMEOUT).code(), Some(71));
    let status = notify.expect("STATUS=", |m| m.starts_with("STATUS=not started"));
    assert!(status.contains(&addr), "{status}");
    assert!(notify.seen.iter().all(|m| !m.contains("READY=1")));
    sg.wait_log(&addr);
}

#[test]
fn watchdog_keep_alives_come_at_half_of_watchdog_usec() {
    // WATCHDOG_USEC = 3 s. At the full interval, keep-alives are at least 3 s apart: never
    // more than 2 in a window under 6 s. At half (1.5 s, plus the idle event loop's answer to
    // a ping) there are 3 in it, unless each answer takes longer than 0.4 s; and never more
    // than 4, as they are never less than 1.5 s apart.
    let (_world, mut notify, sg, _, _) =
        serving_with("watchdog-half", "", &[("WATCHDOG_USEC", "3000000".into())]);
    let alive = notify.count_for(Duration::from_millis(5_900), "WATCHDOG=1");
    assert!((3..=4).contains(&alive), "{alive} keep-alives in 5.9 s");
    stop_cleanly(sg);
}

#[test]
fn watchdog_for_another_process_is_ignored() {
    let env = [
        ("WATCHDOG_USEC", "100000".into()),
        ("WATCHDOG_PID", "1".into()),
    ];
    let (_world, mut notify, mut sg, _, _) = serving_with("watchdog-pid", "", &env);
    // Six keep-alive periods (50 ms each) pass without one: the variable was not for us.
    let seen = notify.collect_for(Duration::from_millis(300));
    assert!(seen.iter().all(|m| !m.contains("WATCHDOG=1")), "{seen:?}");
    sg.signal(Signal::TERM);
    notify.expect_line("STOPPING=1");
    assert!(sg.wait_exit(IO_TIMEOUT).success());
}

#[test]
fn reload_keeps_live_connections_and_changes_only_the_listeners_it_must() {
    let world = World::new("reload");
    // Two gateway listeners: 127.0.0.1 stays, 127.0.0.3 goes, 127.0.0.2 comes.
    let config = world.write(&["127.0.0.1:0", "127.0.0.3:0"], "");
    let mut notify = Notify::bind(&world.scratch);
    let (sg, addrs, _) = start_notified(&config, &mut notify, 2, &[]);
    let (kept, removed) = (addrs.gateway[0], addrs.gateway[1]);
    assert_eq!(kept.ip().to_string(), "127.0.0.1");

    // Live connections through every role, including one on the listener about to go.
    let mut live = vec![
        ("gateway", world.via_gateway(kept).unwrap()),
        (
            "gateway on the removed listener",
            world.via_gateway(removed).unwrap(),
        ),
        ("upstream", Live::tcp(world.upstream()).unwrap()),
        ("inbound", mesh_caller(addrs.inbound).unwrap()),
    ];
    for (role, conn) in &mut live {
        conn.round(b"before the reload")
            .unwrap_or_else(|e| panic!("{role}: {e}"));
    }

    // New connections to the kept listener all along: from before the reload until after it.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let done = std::sync::Arc::new(AtomicUsize::new(0));
    let hammer = {
        let (stop, done, pki, sni) = (
            stop.clone(),
            done.clone(),
            world.pki.client_config(),
            service_sni("api", "dc1"),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let tls = tls_connect(kept, &sni, &pki).expect("connect during reload");
                assert_eq!(echo_and_finish(tls, b"during").unwrap(), sni);
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    eventually("connections before the reload", || {
        done.load(Ordering::Relaxed) > 0
    });

    world.write(&["127.0.0.1:0", "127.0.0.2:0"], "");
    sg.signal(Signal::HUP);
    notify.expect_line("RELOADING=1");
    let added = sg.wait_addr("gateway listening on ");
    notify.expect_line("READY=1");
    let at_ready = done.load(Ordering::Relaxed);
    eventually("connections after the reload", || {
        done.load(Ordering::Relaxed) > at_ready
    });
    stop.store(true, Ordering::Relaxed);
    hammer
        .join()
        .expect("every connection around the reload succeeded");

    // The unchanged listener kept its socket: not rebound, no second "listening" line.
    assert_eq!(added.ip().to_string(), "127.0.0.2");
    let listening: Vec<String> = sg
        .log()
        .into_iter()
        .filter(|l| l.contains("listening on 127.0.0.1:") && l.contains("gateway"))
        .collect();
    assert_eq!(listening.len(), 1, "{listening:?}");
    assert!(refused(removed), "the removed listener must be closed");
    let tls = world.gateway_client(added).unwrap();
    assert_eq!(
        echo_and_finish(tls, b"new listener").unwrap(),
        world.api.name
    );
    let tls = world.gateway_client(kept).unwrap();
    assert_eq!(
        echo_and_finish(tls, b"kept listener").unwrap(),
        world.api.name
    );

    // Every live connection carried on intact, and finishes cleanly.
    let signoffs = [
        format!("served-by:{}\n", world.api.name),
        format!("served-by:{}\n", world.api.name),
        "served-by:db\n".to_owned(),
        "app:web\n".to_owned(),
    ];
    for ((role, mut conn), signoff) in live.into_iter().zip(signoffs) {
        conn.round(b"after the reload")
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        assert_eq!(conn.finish().unwrap(), signoff, "{role}");
    }
    let samples = scrape(addrs.admin);
    assert_eq!(
        value(&samples, "sidegate_reloads_total", &[("result", "ok")]),
        1
    );
    stop_cleanly(sg);
}

#[test]
fn handshakes_in_flight_during_a_reload_complete() {
    let (world, mut notify, sg, addrs) = serving("in-flight", "");
    // A gateway client and an inbound mesh caller, each with its ClientHello sent only up to
    // the server name.
    let sni = service_sni("api", "dc1");
    let to_gateway = HalfHello::send(addrs.gateway[0], &sni, &world.pki.client_config());
    let (cfg, inbound_sni) = caller_config(DB);
    let to_inbound = HalfHello::send(addrs.inbound, &inbound_sni, &cfg);
    // Both accepted under the running plan, neither done with its handshake.
    let active = |role: &str| {
        value(
            &scrape(addrs.admin),
            "sidegate_connections_active",
            &[("role", role)],
        )
    };
    eventually("both handshakes accepted", || {
        active("gateway") == 1 && active("inbound") == 1
    });

    // A reload that changes the plan (a gateway listener more) while they wait.
    world.write(&["127.0.0.1:0", "127.0.0.2:0"], "");
    sg.signal(Signal::HUP);
    notify.expect_line("RELOADING=1");
    let ready = notify.expect_line("READY=1");
    assert!(!ready.contains("reload failed"), "{ready}");
    let samples = scrape(addrs.admin);
    assert_eq!(
        value(&samples, "sidegate_reloads_total", &[("result", "ok")]),
        1
    );

    // The rest of each hello: routed, handshaken, and working end to end.
    let tls = to_gateway.finish().unwrap();
    assert_eq!(
        echo_and_finish(tls, b"after the reload").unwrap(),
        world.api.name
    );
    let mut caller = Live::tls(to_inbound.finish().unwrap());
    caller.round(b"after the reload").unwrap();
    assert_eq!(caller.finish().unwrap(), "app:web\n");
    let samples = scrape(addrs.admin);
    assert_eq!(
        value(
            &samples,
            "sidegate_client_hello_total",
            &[("outcome", "routed")]
        ),
        1
    );
    stop_cleanly(sg);
}

#[test]
fn a_broken_file_on_reload_keeps_the_running_configuration() {
    let (world, mut notify, sg, addrs) = serving("broken", "");
    let mut live = world.via_gateway(addrs.gateway[0]).unwrap();
    live.round(b"before").unwrap();

    // Two mistakes: both must be logged, with their key paths.
    let config = world.config();
    let good = std::fs::read_to_string(&config).unwrap();
    let broken = good
        .replace("[gateway]\n", "[gateway]\nlisten_typo = 1\n")
        .replace("local_bind_port = ", "local_bind_port = -");
    std::fs::write(&config, broken).unwrap();
    sg.signal(Signal::HUP);
    notify.expect_line("RELOADING=1");
    let ready = notify.expect_line("READY=1");
    assert!(ready.contains("reload failed"), "{ready}");
    sg.wait_log("gateway.listen_typo: unknown key");
    sg.wait_log("sidecar.upstreams[0].local_bind_port");

    // Still serving the old configuration, old and new connections alike.
    live.round(b"after").unwrap();
    let tls = world.gateway_client(addrs.gateway[0]).unwrap();
    assert_eq!(
        echo_and_finish(tls, b"still routed").unwrap(),
        world.api.name
    );
    assert_eq!(http_get(addrs.admin, "/ready").0, 200);
    let samples = scrape(addrs.admin);
    assert_eq!(
        value(&samples, "sidegate_reloads_total", &[("result", "failed")]),
        1
    );
    assert_eq!(
        value(&samples, "sidegate_reloads_total", &[("result", "ok")]),
        0
    );

    // An unreadable file fails the same way.
    std::fs::remove_file(&config).unwrap();
    sg.signal(Signal::HUP);
    sg.wait_log("cannot read");
    notify.expect_line("READY=1");
    let samples = scrape(addrs.admin);
    assert_eq!(
        value(&samples, "sidegate_reloads_total", &[("result", "failed")]),
        2
    );
    live.round(b"still").unwrap();
    assert_eq!(
        live.finish().unwrap(),
        format!("served-by:{}\n", world.api.name)
    );
    stop_cleanly(sg);
}

#[test]
fn drain_lets_live_connections_finish_and_refuses_new_ones() {
    let (world, mut notify, mut sg, addrs) =
        serving("drain", "[shutdown]\ndrain_timeout_ms = 60000\n");
    let gateway = addrs.gateway[0];
    let mut live = world.via_gateway(gateway).unwrap();
    let mut up = Live::tcp(world.upstream()).unwrap();
    live.round(b"before").unwrap();
    up.round(b"before").unwrap();

    sg.signal(Signal::TERM);
    notify.expect_line("STOPPING=1");
    sg.wait_log("draining");
    // Stopped accepting at once: new connections are refused on every listener...
    eventually("gateway refuses", || refused(gateway));
    assert!(refused(world.upstream()));
    assert!(refused(addrs.inbound));
    // ...the admin endpoint says why it is not ready...
    let (code, body) = http_get(addrs.admin, "/ready");
    assert_eq!((code, body.starts_with("draining")), (503, true), "{body}");
    // ...and the live connections keep working until they finish.
    live.round(b"while draining").unwrap();
    up.round(b"while draining").unwrap();
    assert!(
        sg.child.try_wait().unwrap().is_none(),
        "exited while connections were open"
    );
    assert_eq!(
        live.finish().unwrap(),
        format!("served-by:{}\n", world.api.name)
    );
    assert_eq!(up.finish().unwrap(), "served-by:db\n");
    let started = Instant::now();
    let status = sg.wait_exit(IO_TIMEOUT);
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited for the grace period"
    );
    sg.wait_log("drained");
}

#[test]
fn drain_cuts_what_is_left_when_the_grace_period_ends() {
    let (world, mut notify, mut sg, addrs) =
        serving("grace", "[shutdown]\ndrain_timeout_ms = 500\n");
    let mut live = world.via_gateway(addrs.gateway[0]).unwrap();
    live.round(b"before").unwrap();
    let started = Instant::now();
    sg.signal(Signal::INT);
    notify.expect_line("STOPPING=1");
    let status = sg.wait_exit(IO_TIMEOUT);
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(live.is_closed(), "the connection outlived the grace period");
    sg.wait_log("cut 1 connection");
}

#[test]
fn metrics_count_exactly_the_traffic_sent() {
    let deny_db = "[sidecar.intentions]\ndefault = \"allow\"\n[[sidecar.intentions.rules]]\n\
                   source = \"db\"\nsource_partition = \"part2\"\naction = \"deny\"\n";
    let (world, _notify, sg, addrs) = serving("metrics", deny_db);
    let gateway = addrs.gateway[0];

    // Gateway: three routed connections, counting every byte on the client's socket.
    let (mut gw_sent, mut gw_received) = (0u64, 0u64);
    for i in 0..3usize {
        let sock = std::net::TcpStream::connect(gateway).unwrap();
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let counted = Counted {
            inner: sock,
            sent: 0,
            received: 0,
        };
        let name = service_sni("api", "dc1");
        let conn = rustls::ClientConnection::new(
            world.pki.client_config(),
            name.clone().try_into().unwrap(),
        )
        .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, counted);
        let payload = vec![b'x'; 1000 * (i + 1)];
        std::io::Write::write_all(&mut tls, &payload).unwrap();
        let mut echoed = vec![0u8; payload.len()];
        std::io::Read::read_exact(&mut tls, &mut echoed).unwrap();
        tls.conn.send_close_notify();
        std::io::Write::flush(&mut tls).unwrap();
        tls.sock.inner.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut tls, &mut rest);
        // Anything still unread on the socket counts too: read it raw to the end.
        let _ = std::io::Read::read_to_end(&mut tls.sock, &mut rest);
        gw_sent += tls.sock.sent;
        gw_received += tls.sock.received;
    }
    // One unknown name, one client that is not TLS at all.
    let pki = world.pki.client_config();
    assert!(tls_connect(gateway, &service_sni("nope", "dc1"), &pki).is_err());
    {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(gateway).unwrap();
        raw.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        raw.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let _ = raw.read_to_end(&mut Vec::new());
    }

    // Upstream: plaintext in, exact bytes both ways.
    let mut up = Live::tcp(world.upstream()).unwrap();
    up.round(&[7u8; 5000]).unwrap();
    assert_eq!(up.finish().unwrap(), "served-by:db\n");
    // Inbound: one allowed caller (web), one denied by intentions (db), one without a
    // certificate.
    let mut caller = caller_as(addrs.inbound, WEB).unwrap();
    caller.round(&[9u8; 3000]).unwrap();
    assert_eq!(caller.finish().unwrap(), "app:web\n");
    // A denied caller gets nothing: sidegate closes the connection after the handshake (an
    // EOF, or a reset when our close_notify arrives after that); a timeout fails.
    let denied = mesh_caller(addrs.inbound).unwrap();
    match denied.finish() {
        Ok(rest) => assert_eq!(rest, "", "a denied caller gets nothing"),
        Err(e) => assert!(closed_by_peer(&e), "a denied caller's connection: {e}"),
    }
    // A client that does not trust web's leaf refuses it (an alert reaches sidegate)...
    assert!(tls_connect(addrs.inbound, "web", &pki).is_err());
    // ...and one that trusts it but has no certificate of its own is refused by sidegate.
    let s_client = std::process::Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(addrs.inbound.to_string())
        .args(["-CAfile", &fixture("ca.pem")])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&s_client.stdout).contains("app:web"));

    let samples = scrape_when_idle(addrs.admin, |s| {
        value(
            s,
            "sidegate_authorization_denials_total",
            &[("role", "inbound")],
        ) == 1
    });
    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    let route = service_sni("api", "dc1");
    let route = route.as_str();
    let listener = gateway.to_string();

    assert_eq!(
        v("sidegate_client_hello_total", &[("outcome", "routed")]),
        3
    );
    assert_eq!(
        v("sidegate_client_hello_total", &[("outcome", "unknown_sni")]),
        1
    );
    assert_eq!(
        v("sidegate_client_hello_total", &[("outcome", "not_tls")]),
        1
    );
    assert_eq!(
        v(
            "sidegate_connections_accepted_total",
            &[("role", "gateway")]
        ),
        5
    );
    assert_eq!(
        v(
            "sidegate_listener_connections_opened_total",
            &[("role", "gateway"), ("listener", &listener)]
        ),
        5
    );
    assert_eq!(
        v(
            "sidegate_route_connections_opened_total",
            &[("route", route)]
        ),
        3
    );
    assert_eq!(
        v("sidegate_route_connections_active", &[("route", route)]),
        0
    );
    assert_eq!(
        v(
            "sidegate_route_bytes_total",
            &[("route", route), ("direction", "from_client")]
        ),
        gw_sent
    );
    assert_eq!(
        v(
            "sidegate_route_bytes_total",
            &[("route", route), ("direction", "to_client")]
        ),
        gw_received
    );
    assert_eq!(
        v(
            "sidegate_bytes_total",
            &[("role", "gateway"), ("direction", "from_client")]
        ),
        gw_sent
    );

    let bind = world.upstream().to_string();
    let up_labels = [("upstream", "db"), ("bind", bind.as_str())];
    assert_eq!(
        v("sidegate_upstream_connections_opened_total", &up_labels),
        1
    );
    let with_dir = |d: &'static str| [up_labels[0], up_labels[1], ("direction", d)];
    assert_eq!(
        v("sidegate_upstream_bytes_total", &with_dir("from_client")),
        5000
    );
    assert_eq!(
        v("sidegate_upstream_bytes_total", &with_dir("to_client")),
        5013
    );
    assert_eq!(
        v(
            "sidegate_bytes_total",
            &[("role", "upstream"), ("direction", "to_client")]
        ),
        5013
    );
    assert_eq!(
        v(
            "sidegate_bytes_total",
            &[("role", "inbound"), ("direction", "from_client")]
        ),
        3000
    );
    assert_eq!(
        v(
            "sidegate_bytes_total",
            &[("role", "inbound"), ("direction", "to_client")]
        ),
        3008
    );
    assert_eq!(
        v(
            "sidegate_connections_accepted_total",
            &[("role", "inbound")]
        ),
        4
    );
    assert_eq!(
        v(
            "sidegate_tls_handshake_failures_total",
            &[("role", "inbound"), ("reason", "alert_received")]
        ),
        1
    );
    assert_eq!(
        v(
            "sidegate_tls_handshake_failures_total",
            &[("role", "inbound"), ("reason", "no_client_certificate")]
        ),
        1
    );
    assert_eq!(
        v("sidegate_connect_failures_total", &[("role", "gateway")]),
        0
    );
    assert_eq!(v("sidegate_reloads_total", &[("result", "ok")]), 0);
    let build = samples
        .iter()
        .find(|s| s.name == "sidegate_build_info")
        .unwrap();
    assert!(build
        .labels
        .contains(&("version".into(), env!("CARGO_PKG_VERSION").into())));

    // /config: the running plan, with no key material.
    let (code, body) = http_get(addrs.admin, "/config");
    assert_eq!(code, 200);
    let plan: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(plan["upstreams"][0]["destination_name"], "db");
    assert_eq!(plan["gateway"]["routes"][0]["match"], route);
    let key_pem = std::fs::read_to_string(fixture("web-key-sec1.pem")).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!body.contains("PRIVATE KEY") && !body.contains(key_body));
    assert_eq!(http_get(addrs.admin, "/ready"), (200, "ready\n".into()));
    stop_cleanly(sg);
}

#[test]
fn metrics_count_dial_failures_skipped_endpoints_and_open_connections() {
    let world = World::new("dial-metrics");
    let dead = dead_addr();
    let flaky = Backend::start(&world.pki, &service_sni("flaky", "dc1"));
    let cache = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // flaky: a dead endpoint, then a live one. gone: only the dead one. The upstream cache:
    // db's real leaf answers it, trusted by the mesh CA but for another service.
    let extra = format!(
        r#"[[sidecar.upstreams]]
destination_name = "cache"
local_bind_port = {cache_port}
mesh_gateway = {{ mode = "none" }}
[[catalog.services]]
name = "cache"
instances = ["{db}"]
[[catalog.services]]
name = "flaky"
instances = ["{dead}", "{flaky}"]
[[catalog.services]]
name = "gone"
instances = ["{dead}"]
"#,
        cache_port = cache.port(),
        db = world.db.addr,
        flaky = flaky.addr,
    );
    let config = world.write(&["127.0.0.1:0"], &extra);
    let mut notify = Notify::bind(&world.scratch);
    let (sg, addrs, _) = start_notified(&config, &mut notify, 1, &[]);
    let gateway = addrs.gateway[0];
    let pki = world.pki.client_config();

    // Round-robin starts flaky's first connection at the dead endpoint: one connect failure.
    // Within 10 s it is held back: the second starts at the live one, the third would start
    // at the dead one but tries the live one first, and it answers.
    for _ in 0..3 {
        let tls = tls_connect(gateway, &service_sni("flaky", "dc1"), &pki).unwrap();
        assert_eq!(echo_and_finish(tls, b"flaky").unwrap(), flaky.name);
    }
    // gone's first connection fails to connect; its second tries the held-back endpoint
    // anyway (it is the only one): a second failure.
    for _ in 0..2 {
        assert!(tls_connect(gateway, &service_sni("gone", "dc1"), &pki).is_err());
    }
    let mut to_cache = Live::tcp(cache).unwrap();
    assert!(to_cache.is_closed(), "cache's wrong identity was accepted");

    // The last connection's close and its counters can trail the client's error (a slow
    // emulated loop): wait for the three failed dials, then hold every figure exactly.
    let gw = [("role", "gateway")];
    let s = scrape_when_idle(addrs.admin, |s| {
        value(s, "sidegate_connect_failures_total", &gw) >= 3
    });
    let v = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
    assert_eq!(v("sidegate_connect_failures_total", &gw), 3);
    // flaky's dead endpoint, put behind the live one on its second and third connections;
    // gone's, alone, is not put behind anything.
    assert_eq!(v("sidegate_endpoints_skipped_total", &gw), 2);
    assert_eq!(v("sidegate_no_endpoint_total", &gw), 2);
    assert_eq!(flaky.accepted(), 3);
    let flaky_route = service_sni("flaky", "dc1");
    assert_eq!(
        v(
            "sidegate_route_connections_opened_total",
            &[("route", &flaky_route)]
        ),
        3
    );
    let up = [("role", "upstream")];
    assert_eq!(v("sidegate_connect_failures_total", &up), 0);
    assert_eq!(v("sidegate_endpoints_skipped_total", &up), 0);
    let upstream_failures: Vec<(String, u64)> = s
        .iter()
        .filter(|x| x.name == "sidegate_tls_handshake_failures_total")
        .filter(|x| x.labels.contains(&("role".into(), "upstream".into())))
        .filter(|x| x.value > 0.0)
        .map(|x| {
            (
                x.labels.iter().find(|l| l.0 == "reason").unwrap().1.clone(),
                x.value as u64,
            )
        })
        .collect();
    assert_eq!(upstream_failures, [("wrong_identity".to_owned(), 1)]);

    // One connection open through each role: every gauge on its path says 1, the others 0.
    let bind = world.upstream().to_string();
    let cache_bind = cache.to_string();
    let listeners = [
        ("gateway", gateway.to_string()),
        ("upstream", bind.clone()),
        ("inbound", addrs.inbound.to_string()),
    ];
    let mut open = [
        world.via_gateway(gateway).unwrap(),
        Live::tcp(world.upstream()).unwrap(),
        caller_as(addrs.inbound, WEB).unwrap(),
    ];
    for conn in &mut open {
        conn.round(b"open").unwrap();
    }
    let gauges = |s: &[Sample], n: u64| {
        for (role, listener) in &listeners {
            let labels = [("role", *role), ("listener", listener.as_str())];
            assert_eq!(value(s, "sidegate_listener_connections_active", &labels), n);
            assert_eq!(
                value(s, "sidegate_connections_active", &[("role", role)]),
                n
            );
        }
        let api = service_sni("api", "dc1");
        assert_eq!(
            value(s, "sidegate_route_connections_active", &[("route", &api)]),
            n
        );
        let db = [("upstream", "db"), ("bind", bind.as_str())];
        assert_eq!(value(s, "sidegate_upstream_connections_active", &db), n);
        let flaky = [("route", flaky_route.as_str())];
        assert_eq!(value(s, "sidegate_route_connections_active", &flaky), 0);
        let cache = [("upstream", "cache"), ("bind", cache_bind.as_str())];
        assert_eq!(value(s, "sidegate_upstream_connections_active", &cache), 0);
    };
    gauges(&scrape(addrs.admin), 1);
    for conn in open {
        conn.finish().unwrap();
    }
    gauges(&scrape_when_idle(addrs.admin, |_| true), 0);
    stop_cleanly(sg);
}

#[test]
fn logs_are_journald_shaped_under_systemd_and_timestamped_otherwise() {
    use std::os::unix::fs::MetadataExt;
    let world = World::new("logs");
    let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = gateway.to_string();
    let run = |extra: &str, env: &[(&str, &str)], journal: bool| -> String {
        let config = world.write(&[gw.as_str()], extra);
        let log_path = world.scratch.path("stderr.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let meta = log.metadata().unwrap();
        let mut cmd = sidegate_command();
        cmd.args(["run", "--config"])
            .arg(&config)
            .env_remove("SIDEGATE_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stderr(log);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            // Inherited from some other stream: not ours, so no prefixes.
            cmd.env("JOURNAL_STREAM", "1:1");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        // Wait until it serves, make one routed connection, then stop it.
        eventually("gateway up", || {
            std::net::TcpStream::connect(gateway).is_ok()
        });
        let tls = world.gateway_client(gateway).unwrap();
        echo_and_finish(tls, b"one").unwrap();
        rustix::process::kill_process(rustix::process::Pid::from_child(&child), Signal::TERM)
            .unwrap();
        eventually("the exit after SIGTERM", || {
            child.try_wait().unwrap().is_some()
        });
        std::fs::read_to_string(&log_path).unwrap()
    };

    let journal = run("", &[], true);
    let first = journal.lines().next().unwrap();
    assert!(first.starts_with("<6>"), "{journal}");
    assert!(journal.lines().all(|l| l.starts_with('<')), "{journal}");
    assert!(
        !journal.contains(" via "),
        "per-connection lines are debug only: {journal}"
    );

    // `[log] level = "debug"` adds one line per connection; timestamps outside the journal.
    let debug = run("[log]\nlevel = \"debug\"\n", &[], false);
    let first = debug.lines().next().unwrap();
    let (stamp, rest) = first.split_once(' ').unwrap();
    assert!(
        stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "RFC 3339 UTC timestamp expected: {first}"
    );
    assert!(rest.starts_with("INFO"), "{first}");
    assert!(
        debug
            .lines()
            .any(|l| l.contains("DEBUG") && l.contains(" via ")),
        "one debug line per connection: {debug}"
    );

    // SIDEGATE_LOG wins over the file.
    let quiet = run(
        "[log]\nlevel = \"debug\"\n",
        &[("SIDEGATE_LOG", "warn")],
        false,
    );
    assert!(
        !quiet.contains("INFO") && !quiet.contains("DEBUG"),
        "{quiet}"
    );
}

/// Silent connections to the admin endpoint hold up neither a scrape nor the exit: past four
/// of them `/ready` answers at once (before: 5 s each, one after the other), and SIGTERM with
/// them still open exits promptly (before: up to 5 s more).
#[test]
fn silent_admin_connections_delay_neither_scrapes_nor_exit() {
    let (_world, _notify, mut sg, addrs) = serving("admin-silent", "");
    let silent: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(addrs.admin).unwrap())
        .collect();
    let asked = Instant::now();
    assert_eq!(http_get(addrs.admin, "/ready").0, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "/ready took {:?}",
        asked.elapsed()
    );
    let stopping = Instant::now();
    sg.signal(Signal::TERM);
    assert_eq!(sg.wait_exit(IO_TIMEOUT).code(), Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "exit took {:?}",
        stopping.elapsed()
    );
    drop(silent);
}

/// An admin endpoint other hosts can reach is allowed, with a warning at start.
#[test]
fn an_admin_endpoint_beyond_loopback_is_warned_about() {
    let dir = Scratch::new("admin-exposed");
    let config = dir.path("gw.toml");
    for (listen, warned) in [("0.0.0.0:0", 1), ("127.0.0.1:0", 0)] {
        std::fs::write(
            &config,
            format!(
                "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n\
                 [gateway]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"{listen}\"\n"
            ),
        )
        .unwrap();
        let mut sg = run_binary(&config, 1);
        sg.serving().expect("serving");
        assert_eq!(
            sg.logged("is reachable from other hosts"),
            warned,
            "{listen}: {:#?}",
            sg.log.lock().unwrap()
        );
    }
}

/// A FIFO given as key_file on a reload is refused at once; the reload fails, and SIGTERM
/// still stops the process (before, the reload blocked opening the FIFO and SIGTERM was
/// never acted on).
#[test]
fn a_fifo_key_file_on_reload_is_refused_and_sigterm_still_stops() {
    let (world, mut notify, mut sg, addrs) = serving("fifo-reload", "");
    let fifo = world.scratch.path("key.fifo");
    common::make_fifo(&fifo);
    let config = world.config();
    let good = std::fs::read_to_string(&config).unwrap();
    let with_fifo = good.replace(&fixture("web-key-sec1.pem"), fifo.to_str().unwrap());
    assert_ne!(good, with_fifo, "the key path was not in the file");
    std::fs::write(&config, with_fifo).unwrap();
    sg.signal(Signal::HUP);
    notify.expect_line("RELOADING=1");
    let ready = notify.expect_line("READY=1");
    assert!(ready.contains("reload failed"), "{ready}");
    sg.wait_log("is a FIFO (named pipe), not a regular file");
    assert_eq!(http_get(addrs.admin, "/ready").0, 200);
    sg.signal(Signal::TERM);
    assert_eq!(sg.wait_exit(IO_TIMEOUT).code(), Some(0));
}
