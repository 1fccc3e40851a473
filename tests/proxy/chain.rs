//! The discovery chain on the data path: a sidegate gateway sends each subset only to its
//! instances (backends that hold only their own names' certificates, so a mis-route fails
//! the client's handshake) and refuses a subset no resolver defines; a sidecar upstream
//! fails over to its next target when its first target's instances are down, and comes back
//! when one returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::sidecars::{API, DB, WEB};
use common::*;
use sidegate::metrics::HelloOutcome;
use sidegate::tls::configs::server_config;

fn db_name(subset: &str) -> String {
    let plain = service_sni("db", "dc1");
    if subset.is_empty() {
        plain
    } else {
        format!("{subset}.{plain}")
    }
}

/// db's v1 instance (which is also the default subset, so it holds the plain name too) and
/// its v2 instance, each holding only its own names; a gateway whose resolver tells them apart.
#[test]
fn a_gateway_sends_each_subset_to_its_instances_only() {
    let pki = Pki::new();
    let v1 = Backend::start_with(&pki, &db_name("v1"), &[db_name("")]);
    let v2 = Backend::start(&pki, &db_name("v2"));
    let gw = start(&format!(
        "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n\
         [gateway]\nlisten = [\"127.0.0.1:0\"]\nconnect_timeout_ms = 2000\n\
         [config_entries.service_resolvers.db]\ndefault_subset = \"v1\"\n\
         subsets = {{ v1 = {{ filter = \"Service.Meta.version == v1\" }}, v2 = {{ filter = \"v2 in Service.Tags\" }} }}\n\
         [[catalog.services]]\nname = \"db\"\ninstances = [\n\
           {{ address = \"{}\", meta = {{ version = \"v1\" }}, tags = [\"v1\"] }},\n\
           {{ address = \"{}\", meta = {{ version = \"v2\" }}, tags = [\"v2\"] }},\n]\n",
        v1.addr, v2.addr
    ));
    let addr = gw.gateway_addrs[0];
    let through = |sni: &str| {
        let tls = tls_connect(addr, sni, &pki.client_config())?;
        echo_and_finish(tls, b"which version?")
    };
    // Round robin over both instances would send every other connection to the wrong one;
    // each subset's route has only its own.
    for _ in 0..4 {
        for (subset, backend) in [("v1", &v1), ("v2", &v2), ("", &v1)] {
            let sni = db_name(subset);
            assert_eq!(
                through(&sni).unwrap_or_else(|e| panic!("{sni}: {e}")),
                backend.name,
                "{sni}"
            );
        }
    }
    assert_eq!((v1.accepted(), v2.accepted()), (8, 4));

    // A subset no resolver defines: refused at the gateway, counted as such, no backend
    // reached.
    assert!(through(&db_name("v3")).is_err());
    let unknown = || gw.metrics.gateway.hello(HelloOutcome::UnknownSubset).get();
    eventually("unknown_subset = 1", || unknown() == 1);
    assert_eq!(gw.metrics.gateway.hello(HelloOutcome::UnknownSni).get(), 0);
    assert_eq!((v1.accepted(), v2.accepted()), (8, 4));
    // And the gateway still serves.
    assert_eq!(through(&db_name("v2")).unwrap(), v2.name);
}

/// A TCP relay in front of `to` that can be switched off: while off it accepts and closes at
/// once, so a TLS client's handshake fails as with an instance that died mid-handshake.
fn switch(to: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let on = Arc::new(AtomicBool::new(true));
    let flag = on.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            if !flag.load(Ordering::SeqCst) {
                drop(client);
                continue;
            }
            let Ok(server) = TcpStream::connect(to) else {
                continue;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let _ = io::copy(&mut from, &mut into);
                    let _ = into.shutdown(Shutdown::Write);
                });
            }
        }
    });
    (addr, on)
}

/// What a local app gets back through the upstream on `port`: the echo and the sign-off of
/// whichever service answered.
fn ask(port: u16) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.write_all(b"ping ").unwrap();
    tcp.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    let _ = tcp.read_to_string(&mut got);
    got
}

/// web's upstream to db (partition part2) fails over to api in dc2 — another service in
/// another datacenter, with its own SNI and SPIFFE ID — when every db instance refuses the
/// connection or fails the handshake, and goes back to db as soon as one answers again.
#[test]
fn a_sidecar_upstream_fails_over_and_comes_back() {
    let db = Backend::serve(server_config(&DB.identity()).unwrap(), "db");
    let api = Backend::serve(server_config(&API.identity()).unwrap(), "api");
    let (db_instance, db_up) = switch(db.addr);
    let dead = dead_addr();
    let (web, _, port) = sidecars::start_on_free_ports(|| {
        let port = free_port();
        (
            format!(
                "{}\n\
                 [[sidecar.upstreams]]\ndestination_name = \"db\"\ndestination_partition = \"part2\"\n\
                 local_bind_port = {port}\nconnect_timeout_ms = 2000\n\
                 [config_entries.service_resolvers.db]\npartition = \"part2\"\n\
                 failover = {{ \"*\" = {{ targets = [ {{ service = \"api\", partition = \"default\", datacenter = \"dc2\" }} ] }} }}\n\
                 [[catalog.services]]\nname = \"db\"\npartition = \"part2\"\ninstances = [\"{dead}\", \"{db_instance}\"]\n\
                 [[catalog.services]]\nname = \"api\"\ndatacenter = \"dc2\"\ninstances = [\"{}\"]\n",
                WEB.header(),
                api.addr
            ),
            port,
        )
    });
    assert_eq!(ask(port), "ping served-by:db\n");

    db_up.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(ask(port), "ping served-by:api\n");
    }
    assert!(web.metrics.upstream.handshake_failures.get() >= 3);
    assert_eq!(web.metrics.upstream.no_endpoint.get(), 0);

    db_up.store(true, Ordering::SeqCst);
    assert_eq!(ask(port), "ping served-by:db\n");
    let served = (db.accepted(), api.accepted());
    assert_eq!(served, (2, 3), "db, api connections");
}
