//! The gateway end to end on loopback: real TLS clients, real TLS backends holding only their
//! own name's certificate, sidegate in between reading only the ClientHello.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use common::*;
use sidegate::metrics::HelloOutcome;

/// dc1's gateway (the one under test) and, behind it, dc2's gateway and a partition's gateway,
/// each a sidegate too: a cross-place connection passes two gateways still encrypted.
struct Mesh {
    pki: Pki,
    db: Backend,
    web2: Backend,
    billing: Backend,
    gw1: sidegate::proxy::Running,
    _gw2: sidegate::proxy::Running,
    _gw_ap1: sidegate::proxy::Running,
}

fn mesh(extra: &str) -> Mesh {
    let pki = Pki::new();
    let db = Backend::db_with_subset(&pki);
    let (web2, gw2) = dc2_gateway_with_web(&pki);
    let billing = Backend::start(&pki, &format!("billing.default.ap1.dc1.internal-v1.{TD}"));
    let gw_ap1 = start(&gateway_toml(
        "dc1",
        "ap1",
        LOOPBACK,
        &[("billing", vec![billing.addr])],
        "",
        "",
    ));
    // db defines the subset v2, so `v2.db...` has a route of its own.
    let gateways = format!(
        "[[catalog.gateways]]\ndatacenter = \"dc2\"\nwan = [\"{}\"]\n\
         [[catalog.gateways]]\npartition = \"ap1\"\nlan = [\"{}\"]\nwan = [\"{}\"]\n\
         [config_entries.service_resolvers.db]\nsubsets = {{ v2 = {{}} }}\n",
        gw2.gateway_addrs[0],
        dead_addr(),
        gw_ap1.gateway_addrs[0]
    );
    let gw1 = start(&gateway_toml(
        "dc1",
        "default",
        LOOPBACK,
        &[("db", vec![db.addr])],
        &gateways,
        extra,
    ));
    Mesh {
        pki,
        db,
        web2,
        billing,
        gw1,
        _gw2: gw2,
        _gw_ap1: gw_ap1,
    }
}

impl Mesh {
    fn addr(&self) -> SocketAddr {
        self.gw1.gateway_addrs[0]
    }

    fn through(&self, sni: &str) -> std::io::Result<String> {
        let tls = tls_connect(self.addr(), sni, &self.pki.client_config())?;
        echo_and_finish(tls, b"hello through the mesh")
    }

    fn count(&self, outcome: HelloOutcome) -> u64 {
        self.gw1.metrics.gateway.hello(outcome).get()
    }

    /// The gateway still routes after whatever the test just did to it.
    fn still_serving(&self) {
        assert_eq!(
            self.through(&service_sni("db", "dc1")).unwrap(),
            self.db.name
        );
    }
}

#[test]
fn routes_every_kind_to_the_right_backend() {
    let m = mesh("");
    let cases = [
        (service_sni("db", "dc1"), &m.db),
        (service_sni("DB", "DC1").to_uppercase(), &m.db),
        (format!("v2.{}", service_sni("db", "dc1")), &m.db),
        (service_sni("web", "dc2"), &m.web2),
        (
            format!("billing.default.ap1.dc1.internal-v1.{TD}"),
            &m.billing,
        ),
    ];
    for (sni, backend) in cases {
        assert_eq!(
            m.through(&sni).unwrap_or_else(|e| panic!("{sni}: {e}")),
            backend.name,
            "{sni}"
        );
    }
    assert_eq!(m.count(HelloOutcome::Routed), 5);
    assert_eq!(m.db.accepted(), 3);
    assert_eq!(m.web2.accepted(), 1);
    assert_eq!(m.billing.accepted(), 1);
}

#[test]
fn refuses_and_counts_each_reason_and_keeps_serving() {
    let m = mesh("handshake_timeout_ms = 300\nmax_client_hello_bytes = 1024");

    // Unknown SNI: a service of our own place that is not in the catalog, and a place with
    // no gateways.
    for sni in [
        service_sni("nope", "dc1"),
        service_sni("web", "dc3"),
        "example.com".to_owned(),
    ] {
        assert!(m.through(&sni).is_err(), "{sni} must not be routed");
    }
    eventually("unknown_sni = 3", || m.count(HelloOutcome::UnknownSni) == 3);
    m.still_serving();

    // No SNI: rustls sends none for an IP address.
    assert!(m.through("127.0.0.1").is_err());
    eventually("no_sni = 1", || m.count(HelloOutcome::NoSni) == 1);

    // Not TLS.
    let mut s = raw(m.addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: db\r\n\r\n").unwrap();
    assert_closed(&mut s);
    eventually("not_tls = 1", || m.count(HelloOutcome::NotTls) == 1);

    // Too large: a handshake record declaring more than the 1024-byte limit.
    let mut s = raw(m.addr());
    s.write_all(&[0x16, 0x03, 0x01, 0x10, 0x00, 0x01, 0x00, 0x0f, 0xfc])
        .unwrap();
    s.write_all(&[0u8; 1100]).ok();
    assert_closed(&mut s);
    eventually("too_large = 1", || m.count(HelloOutcome::TooLarge) == 1);

    // Timeout: half a record header, then silence.
    let mut s = raw(m.addr());
    s.write_all(&[0x16, 0x03]).unwrap();
    let t = std::time::Instant::now();
    assert_closed(&mut s);
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "closed before the handshake timeout"
    );
    eventually("timeout = 1", || m.count(HelloOutcome::Timeout) == 1);

    m.still_serving();
    assert_eq!(m.count(HelloOutcome::Routed), 2);
    eventually("no connection left open", || {
        m.gw1.metrics.gateway.active.get() == 0
    });
}

#[test]
fn fails_over_past_a_dead_instance_and_then_skips_it() {
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let toml = format!(
        "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
         [[catalog.services]]\nname = \"db\"\ninstances = [\"{}\", \"{}\"]\n",
        dead_addr(),
        db.addr
    );
    let gw = start(&toml);
    let cfg = pki.client_config();
    for _ in 0..6 {
        let tls = tls_connect(gw.gateway_addrs[0], &service_sni("db", "dc1"), &cfg).unwrap();
        assert_eq!(echo_and_finish(tls, b"x").unwrap(), db.name);
    }
    // The dead instance cost one failed attempt; afterwards it is held back behind the live one.
    assert_eq!(gw.metrics.gateway.dial.connect_failures.get(), 1);
    assert_eq!(db.accepted(), 6);
}

#[test]
fn every_endpoint_down_is_a_counted_refusal() {
    let pki = Pki::new();
    let toml = format!(
        "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
         [[catalog.services]]\nname = \"db\"\ninstances = [\"{}\", \"{}\"]\n",
        dead_addr(),
        dead_addr()
    );
    let gw = start(&toml);
    assert!(tls_connect(
        gw.gateway_addrs[0],
        &service_sni("db", "dc1"),
        &pki.client_config()
    )
    .is_err());
    eventually("no_endpoint = 1", || {
        gw.metrics.gateway.no_endpoint.get() == 1
    });
    assert_eq!(gw.metrics.gateway.dial.connect_failures.get(), 2);
}

#[test]
fn holds_a_thousand_concurrent_connections() {
    let m = mesh("");
    let cfg = m.pki.client_config();
    let sni = service_sni("db", "dc1");
    let clients: Vec<Client> = (0..1000)
        .map(|i| tls_connect(m.addr(), &sni, &cfg).unwrap_or_else(|e| panic!("#{i}: {e}")))
        .collect();
    eventually("1000 active", || m.gw1.metrics.gateway.active.get() == 1000);
    for (i, tls) in clients.into_iter().enumerate() {
        let msg = format!("connection {i}");
        assert_eq!(echo_and_finish(tls, msg.as_bytes()).unwrap(), m.db.name);
    }
    eventually("all closed", || m.gw1.metrics.gateway.active.get() == 0);
    assert_eq!(m.count(HelloOutcome::Routed), 1000);
}

#[test]
fn refuses_connections_over_the_limit_without_disturbing_others() {
    let m = mesh("max_connections = 3");
    let cfg = m.pki.client_config();
    let sni = service_sni("db", "dc1");
    let held: Vec<Client> = (0..3)
        .map(|_| tls_connect(m.addr(), &sni, &cfg).unwrap())
        .collect();
    eventually("3 active", || m.gw1.metrics.gateway.active.get() == 3);
    assert!(tls_connect(m.addr(), &sni, &cfg).is_err());
    assert_eq!(m.gw1.metrics.gateway.refused_limit.get(), 1);
    for tls in held {
        assert_eq!(echo_and_finish(tls, b"still here").unwrap(), m.db.name);
    }
    eventually("0 active", || m.gw1.metrics.gateway.active.get() == 0);
    m.still_serving();
}

/// A relayed connection silent both ways for `idle_timeout_ms` is closed and counted; one
/// that keeps talking, for three times that in all, is left alone.
#[test]
fn closes_idle_connections_and_keeps_busy_ones() {
    let m = mesh("idle_timeout_ms = 300");
    let (cfg, sni) = (m.pki.client_config(), service_sni("db", "dc1"));
    let echo = |tls: &mut Client, msg: &[u8]| {
        tls.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        tls.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    };
    let mut idle = tls_connect(m.addr(), &sni, &cfg).unwrap();
    let mut busy = tls_connect(m.addr(), &sni, &cfg).unwrap();
    echo(&mut idle, b"then silence");
    echo(&mut busy, b"and more");
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(900) {
        // Pacing, not synchronisation: the idle timer needs real time to pass.
        std::thread::sleep(Duration::from_millis(100));
        echo(&mut busy, b"still here");
        if start.elapsed() < Duration::from_millis(200) {
            assert_eq!(
                m.gw1.metrics.gateway.idle_timeouts.get(),
                0,
                "closed too early"
            );
        }
    }
    eventually("idle_timeouts = 1", || {
        m.gw1.metrics.gateway.idle_timeouts.get() == 1
    });
    // The idle connection is closed (its read timeout would fail this).
    assert_closed(&mut idle);
    assert_eq!(echo_and_finish(busy, b"bye").unwrap(), m.db.name);
}

/// `localhost`'s addresses in the resolver's order, and how many come before 127.0.0.1 (where
/// the test backends listen, and only there): each is a refused attempt before a named
/// endpoint is reached. One on a stock Debian `/etc/hosts`, which lists `::1` first.
fn localhost_addresses() -> (Vec<SocketAddr>, u64) {
    let addrs: Vec<SocketAddr> = ("localhost", 0).to_socket_addrs().unwrap().collect();
    let ahead = addrs
        .iter()
        .position(|a| a.ip() == std::net::Ipv4Addr::LOCALHOST)
        .unwrap_or_else(|| panic!("localhost resolves to {addrs:?}, without 127.0.0.1"));
    // sidegate tries the first four of a name's addresses.
    assert!(addrs.len() <= 4, "localhost resolves to {addrs:?}");
    (addrs, ahead as u64)
}

/// A service instance and another datacenter's gateway given as `localhost:PORT`: names are
/// resolved when dialled, by the C library's resolver from `/etc/hosts`. Under
/// `cross/test.sh` this runs as a static musl program under qemu-user, so it shows that musl's
/// own resolver (no NSS modules) finds the name on the ARM builds too. Both listen on
/// 127.0.0.1 only, so where `localhost` is `::1` first they are reached past a refusal.
#[test]
fn dials_an_instance_and_a_gateway_given_by_host_name() {
    let (_, ahead) = localhost_addresses();
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let (web2, gw2) = dc2_gateway_with_web(&pki);
    let by_name = format!(
        "[[catalog.services]]\nname = \"db\"\ninstances = [\"localhost:{}\"]\n\
         [[catalog.gateways]]\ndatacenter = \"dc2\"\nwan = [\"localhost:{}\"]\n",
        db.addr.port(),
        gw2.gateway_addrs[0].port()
    );
    let gw = start(&gateway_toml("dc1", "default", LOOPBACK, &[], &by_name, ""));

    let cfg = pki.client_config();
    for backend in [&db, &web2] {
        let tls = tls_connect(gw.gateway_addrs[0], &backend.name, &cfg).unwrap();
        assert_eq!(echo_and_finish(tls, b"by name").unwrap(), backend.name);
        assert_eq!(backend.accepted(), 1, "{}", backend.name);
    }
    assert_eq!(gw.metrics.gateway.hello(HelloOutcome::Routed).get(), 2);
    assert_eq!(gw.metrics.gateway.dial.connect_failures.get(), 2 * ahead);
}

/// A name is tried at each address it resolves to, in the resolver's order: past those that
/// refuse to the one that serves (127.0.0.1, after `::1` where the hosts file lists it
/// first), each refusal a connect failure; a name whose every address refuses is refused
/// once all were tried. Where `localhost` has one address there is no refusal ahead to
/// pass; `proxy::dial`'s unit tests pass one whatever the machine.
#[test]
fn a_name_is_dialled_at_each_address_it_resolves_to() {
    let (addrs, ahead) = localhost_addresses();
    if addrs.len() == 1 {
        eprintln!("localhost resolves to {addrs:?} only: no address ahead to refuse");
    }
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let services = format!(
        "[[catalog.services]]\nname = \"db\"\ninstances = [\"localhost:{}\"]\n\
         [[catalog.services]]\nname = \"gone\"\ninstances = [\"localhost:{}\"]\n",
        db.addr.port(),
        dead_addr().port()
    );
    let gw = start(&gateway_toml(
        "dc1",
        "default",
        LOOPBACK,
        &[],
        &services,
        "",
    ));
    let dial = &gw.metrics.gateway.dial;
    let cfg = pki.client_config();

    // A refused address does not make the name a failed endpoint: each connection is served.
    for round in 1..=2 {
        let tls = tls_connect(gw.gateway_addrs[0], &db.name, &cfg).unwrap();
        assert_eq!(echo_and_finish(tls, b"past ::1").unwrap(), db.name);
        assert_eq!(dial.connect_failures.get(), round * ahead);
    }
    assert_eq!(gw.metrics.gateway.no_endpoint.get(), 0);

    assert!(tls_connect(gw.gateway_addrs[0], &service_sni("gone", "dc1"), &cfg).is_err());
    eventually("no_endpoint = 1", || {
        gw.metrics.gateway.no_endpoint.get() == 1
    });
    assert_eq!(dial.connect_failures.get(), 2 * ahead + addrs.len() as u64);
    assert_eq!(db.accepted(), 2);
}

/// Silent connections cannot crowd real clients out: those still waiting for their
/// ClientHello have a budget of their own (by default a quarter of `max_connections`, here
/// 2 of 8), the oldest of them shed (and counted) to make room, so twice `max_connections`
/// of silent connections leave the gateway room, and a real client still routes.
#[test]
fn silent_connections_cannot_crowd_out_a_real_client() {
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let gw = start(&gateway_toml(
        "dc1",
        "default",
        LOOPBACK,
        &[("db", vec![db.addr])],
        "",
        "max_connections = 8",
    ));
    let addr = gw.gateway_addrs[0];
    let m = &gw.metrics.gateway;
    // Each one waits to be accepted, so that none is refused at the limit instead of shed.
    let silent: Vec<std::net::TcpStream> = (1..=16u64)
        .map(|n| {
            let s = raw(addr);
            eventually("accepted", || m.accepted.get() >= n);
            s
        })
        .collect();
    eventually("silent connections beyond the budget shed", || {
        m.active.get() == 2
    });
    assert_eq!(m.hello_shed.get(), 14);
    assert_eq!(m.refused_limit.get(), 0);
    let tls = tls_connect(addr, &service_sni("db", "dc1"), &pki.client_config()).unwrap();
    assert_eq!(
        echo_and_finish(tls, b"room left").unwrap(),
        db.name,
        "the real client was not routed"
    );
    assert_eq!(m.hello(HelloOutcome::Routed).get(), 1);
    drop(silent);
}
