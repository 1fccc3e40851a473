//! Listeners over a process's life: a new plan swapped in live (kept listeners untouched,
//! added ones bound, removed ones closed, live connections never cut), drain, and the
//! per-listener connection limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::sidecars::{db_upstream, DB, WEB};
use common::*;
use sidegate::proxy::{ListenerKey, Running};
use sidegate::tls::configs::server_config;

fn plan(toml: &str) -> sidegate::mesh::Plan {
    let config = sidegate::config::parse(toml).unwrap_or_else(|e| panic!("config: {e:?}"));
    sidegate::mesh::plan(&config.snapshot)
}

/// A dc1 gateway listening on `listen` (TOML list items) for the given services.
fn gateway(listen: &str, services: &[(&str, Vec<SocketAddr>)]) -> String {
    gateway_toml("dc1", "default", listen, services, "", "")
}

fn refused(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[test]
fn reload_keeps_the_listener_and_its_live_connections_and_routes_by_the_new_plan() {
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let billing = Backend::start(&pki, &service_sni("billing", "dc1"));
    let gw = start(&gateway(LOOPBACK, &[("db", vec![db.addr])]));
    let addr = gw.gateway_addrs[0];
    let cfg = pki.client_config();
    let mut live = tls_connect(addr, &service_sni("db", "dc1"), &cfg).unwrap();
    live.write_all(b"before").unwrap();
    let mut echoed = [0u8; 6];
    live.read_exact(&mut echoed).unwrap();

    let applied = gw
        .apply(plan(&gateway(
            LOOPBACK,
            &[("db", vec![db.addr]), ("billing", vec![billing.addr])],
        )))
        .unwrap();
    assert_eq!(
        (applied.kept, applied.opened.len(), applied.closed.len()),
        (1, 0, 0)
    );
    assert_eq!(
        gw.local_addr(&ListenerKey::Gateway("127.0.0.1:0".parse().unwrap())),
        Some(addr)
    );

    // The connection accepted before the reload carries on, under its old plan.
    assert_eq!(echo_and_finish(live, b"after the reload").unwrap(), db.name);
    // The same socket now routes what only the new plan knows.
    let fresh = tls_connect(addr, &service_sni("billing", "dc1"), &cfg).unwrap();
    assert_eq!(echo_and_finish(fresh, b"new route").unwrap(), billing.name);
    assert_eq!(gw.plan().gateway.as_ref().unwrap().routes.routes().len(), 2);
}

#[test]
fn reload_binds_added_listeners_and_closes_removed_ones_without_cutting_their_connections() {
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let gw = start(&gateway(LOOPBACK, &[("db", vec![db.addr])]));
    let first = gw.gateway_addrs[0];
    let cfg = pki.client_config();
    let sni = service_sni("db", "dc1");
    let live = tls_connect(first, &sni, &cfg).unwrap();

    let second: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let both = format!("{LOOPBACK}, \"{second}\"");
    let applied = gw
        .apply(plan(&gateway(&both, &[("db", vec![db.addr])])))
        .unwrap();
    assert_eq!(
        applied.opened,
        vec![(ListenerKey::Gateway(second), Some(second))]
    );
    assert_eq!(applied.kept, 1);
    let via_second = tls_connect(second, &sni, &cfg).unwrap();
    assert_eq!(
        echo_and_finish(via_second, b"new listener").unwrap(),
        db.name
    );

    let only_second = format!("\"{second}\"");
    let applied = gw
        .apply(plan(&gateway(&only_second, &[("db", vec![db.addr])])))
        .unwrap();
    assert_eq!(
        applied.closed,
        vec![ListenerKey::Gateway("127.0.0.1:0".parse().unwrap())]
    );
    assert!(refused(first), "the removed listener still accepts");
    // Its connection was not cut by closing the listener it came through.
    assert_eq!(echo_and_finish(live, b"still here").unwrap(), db.name);
    let again = tls_connect(second, &sni, &cfg).unwrap();
    assert_eq!(echo_and_finish(again, b"kept listener").unwrap(), db.name);
}

#[test]
fn a_reload_that_cannot_bind_changes_nothing() {
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let billing = Backend::start(&pki, &service_sni("billing", "dc1"));
    let gw = start(&gateway(LOOPBACK, &[("db", vec![db.addr])]));
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();

    let listen = format!("{LOOPBACK}, \"{busy}\"");
    let err = gw
        .apply(plan(&gateway(
            &listen,
            &[("db", vec![db.addr]), ("billing", vec![billing.addr])],
        )))
        .unwrap_err();
    assert_eq!(err.addr, Some(busy));
    assert!(err.to_string().contains(&busy.to_string()), "{err}");

    // Still the old plan: billing is unknown, db is served.
    assert_eq!(gw.plan().gateway.as_ref().unwrap().routes.routes().len(), 1);
    let cfg = pki.client_config();
    assert!(tls_connect(gw.gateway_addrs[0], &service_sni("billing", "dc1"), &cfg).is_err());
    let ok = tls_connect(gw.gateway_addrs[0], &service_sni("db", "dc1"), &cfg).unwrap();
    assert_eq!(echo_and_finish(ok, b"old plan").unwrap(), db.name);
}

/// Starts a drain on another thread; returns the handle with the number of cut connections.
fn drain_in_background(gw: Running, grace: Duration) -> std::thread::JoinHandle<(u64, Duration)> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let cut = gw.drain(grace);
        (cut, started.elapsed())
    })
}

#[test]
fn drain_refuses_new_connections_and_waits_for_live_ones() {
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let gw = start(&gateway(LOOPBACK, &[("db", vec![db.addr])]));
    let addr = gw.gateway_addrs[0];
    let cfg = pki.client_config();
    let live = tls_connect(addr, &service_sni("db", "dc1"), &cfg).unwrap();

    let draining = drain_in_background(gw, Duration::from_secs(30));
    eventually("the listener to close", || refused(addr));
    // The live connection keeps working while the drain waits for it.
    assert_eq!(echo_and_finish(live, b"during the drain").unwrap(), db.name);
    let (cut, took) = draining.join().unwrap();
    assert_eq!(cut, 0);
    assert!(
        took < Duration::from_secs(10),
        "drain waited {took:?} after the last connection"
    );
}

#[test]
fn drain_cuts_connections_that_outlive_the_grace_period() {
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let gw = start(&gateway(LOOPBACK, &[("db", vec![db.addr])]));
    let mut live = tls_connect(gw.gateway_addrs[0], &service_sni("db", "dc1"), &cfg(&pki)).unwrap();

    let (cut, took) = drain_in_background(gw, Duration::from_millis(300))
        .join()
        .unwrap();
    assert_eq!(cut, 1);
    assert!(took >= Duration::from_millis(300));
    // The connection did not outlive the drain (its read timeout would fail this).
    assert_closed(&mut live);
}

fn cfg(pki: &Pki) -> std::sync::Arc<rustls::ClientConfig> {
    pki.client_config()
}

#[test]
fn an_upstream_holds_at_most_max_connections_and_refuses_the_rest() {
    // db's real sidecar (partition part2), so that held connections are relayed ones.
    let db = Backend::serve(server_config(&DB.identity()).unwrap(), "db");
    let port = free_port();
    let sidecar = start(&format!(
        r#"{}
{}[[catalog.services]]
name = "db"
partition = "part2"
instances = ["{}"]
"#,
        WEB.header(),
        db_upstream(&format!("local_bind_port = {port}"), "max_connections = 2"),
        db.addr
    ));
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(local).unwrap()).collect();
    let m = &sidecar.metrics.upstream;
    eventually("two upstream connections held", || m.active.get() == 2);

    let mut extra = TcpStream::connect(local).unwrap();
    extra.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // The third connection is not served: closed (its read timeout would fail this).
    assert_closed(&mut extra);
    eventually("the refusal counted", || m.refused_limit.get() == 1);
    assert_eq!(m.active.get(), 2);

    drop(held);
    eventually("the held connections closed", || m.active.get() == 0);
    let _again = TcpStream::connect(local).unwrap();
    eventually("a new connection held once there is room", || {
        m.active.get() == 1
    });
    assert_eq!(m.refused_limit.get(), 1);
}

/// A web sidecar with one upstream to db on the Unix socket at `socket`.
fn unix_upstream_plan(socket: &std::path::Path) -> sidegate::mesh::Plan {
    plan(&format!(
        "{}\n{}[[catalog.services]]\nname = \"db\"\npartition = \"part2\"\ninstances = [\"127.0.0.1:9\"]\n",
        WEB.header(),
        db_upstream(
            &format!("local_bind_socket_path = \"{}\"", socket.display()),
            r#"mesh_gateway = { mode = "none" }"#
        ),
    ))
}

/// A socket another process listens on at `local_bind_socket_path` is neither taken over
/// nor deleted (the upstream is reported unbound and retried, the rest serves); a stale one
/// (its process gone) is replaced; and at exit only the socket sidegate made is removed, not
/// one another process has bound there since.
#[test]
fn a_live_unix_socket_of_another_process_is_left_alone() {
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = Scratch::new("live-socket");
    let socket = dir.path("db.sock");

    let theirs = UnixListener::bind(&socket).unwrap();
    let ours = sidegate::proxy::start(unix_upstream_plan(&socket)).unwrap();
    let unbound = ours.bind_failures.unbound();
    assert_eq!(unbound.len(), 1, "{unbound:?}");
    assert!(
        unbound[0].error.contains("another process is listening on"),
        "{unbound:?}"
    );
    UnixStream::connect(&socket).expect("their socket still answers");
    theirs.accept().unwrap();
    assert!(ours.retry_unbound().is_empty(), "took over a live socket");
    UnixStream::connect(&socket).expect("their socket still answers a retry");
    theirs.accept().unwrap();

    // Their process goes away, leaving its file: that one is stale and replaced.
    drop(theirs);
    assert_eq!(
        ours.retry_unbound().len(),
        1,
        "the stale socket was not replaced"
    );
    assert!(ours.bind_failures.unbound().is_empty());
    UnixStream::connect(&socket).expect("ours answers");

    // Someone replaces our file with a socket of their own while we run: at our exit,
    // theirs stays.
    std::fs::remove_file(&socket).unwrap();
    let again = UnixListener::bind(&socket).unwrap();
    ours.drain(Duration::from_secs(1));
    assert!(socket.exists(), "deleted another process's socket at exit");
    UnixStream::connect(&socket).expect("their socket still answers");
    again.accept().unwrap();
}
