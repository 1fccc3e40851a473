//! The discovery chain on the data path: a sidegate gateway sends each subset only to its
//! instances (backends that hold only their own names' certificates, so a mis-route fails
//! the client's handshake) and refuses a subset no resolver defines; a sidecar upstream
//! fails over to its next target when its first target's instances are down, and comes back
//! when one returns — also to another datacenter through sidegate gateways, each hop its own
//! `sidegate run` process.
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

/// A mesh leaf for `db` in `dc` (default partition) from `pki`, as a server that requires
/// the callers' mesh certificates: it holds only that one SPIFFE ID, so a caller expecting
/// db in the other datacenter fails the handshake.
fn db_of(pki: &Pki, dc: &str, ca: &str) -> Backend {
    let id = sidegate::names::SpiffeId::service(TD, "default", "default", dc, "db");
    let hour = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let (cert, key) = pki.spiffe_leaf_pem(&id.to_string(), hour);
    let identity =
        sidegate::tls::Identity::from_pem(cert.as_bytes(), key.as_bytes(), ca.as_bytes()).unwrap();
    Backend::serve(server_config(&identity).unwrap(), &format!("db-{dc}"))
}

/// A `sidegate run` process with an admin endpoint, from `dir/<name>.toml`, once it serves.
fn node(dir: &Scratch, name: &str, toml: &str) -> (Child, SocketAddr) {
    let (child, admin, _, ()) =
        sidecars::run_on_free_ports(&dir.path(&format!("{name}.toml")), || {
            (format!("{toml}[admin]\nlisten = \"127.0.0.1:0\"\n"), ())
        });
    (child, admin)
}

fn routed(admin: SocketAddr) -> u64 {
    metric(admin, "sidegate_client_hello_total{outcome=\"routed\"}")
}

/// The failover through mesh gateways, every hop its own `sidegate run` process:
/// web's sidecar in dc1 has two upstreams to db (dc1), one in mode `local` and one in mode
/// `remote`, and db's resolver fails over to dc2 (`datacenters = ["dc2"]`). While dc1's db
/// instances are down (one refuses, one closes mid-handshake) both reach db in dc2 — `local`
/// through dc1's gateway then dc2's, `remote` through dc2's only — and both reach dc1's db
/// directly again once its instance answers. Each db holds only its own datacenter's leaf.
#[test]
fn failover_to_another_datacenter_goes_through_the_gateways_and_comes_back() {
    let dir = Scratch::new("chain-failover-dc");
    let pki = Pki::new();
    let ca = pki.ca_pem();
    let (db1, db2) = (db_of(&pki, "dc1", &ca), db_of(&pki, "dc2", &ca));
    let (db1_instance, db1_up) = switch(db1.addr);
    let (dead, nowhere) = (dead_addr(), dead_addr());

    let (gw2_child, gw2_admin) = node(
        &dir,
        "gw-dc2",
        &gateway_toml(
            "dc2",
            "default",
            LOOPBACK,
            &[("db", vec![db2.addr])],
            "",
            "",
        ),
    );
    let gw2 = gw2_child.logged_addr("gateway listening on ");
    let (gw1_child, gw1_admin) = node(
        &dir,
        "gw-dc1",
        &gateway_toml(
            "dc1",
            "default",
            LOOPBACK,
            &[],
            &format!(
                "[[catalog.gateways]]\ndatacenter = \"dc2\"\nlan = [\"{nowhere}\"]\nwan = [\"{gw2}\"]\n"
            ),
            "",
        ),
    );
    let gw1 = gw1_child.logged_addr("gateway listening on ");

    // web's leaf from the same CA as the dbs'.
    let web_id = sidegate::names::SpiffeId::service(TD, "default", "default", "dc1", "web");
    let hour = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let (cert, key) = pki.spiffe_leaf_pem(&web_id.to_string(), hour);
    for (file, pem) in [("web.pem", &cert), ("web-key.pem", &key), ("ca.pem", &ca)] {
        std::fs::write(dir.path(file), pem).unwrap();
    }
    let path = |f: &str| dir.path(f).display().to_string();
    let web_path = dir.path("web.toml");
    let (_web, web_admin, _, [local, remote]) = sidecars::run_on_free_ports(&web_path, || {
        let local = free_port();
        let remote = loop {
            let p = free_port();
            if p != local {
                break p;
            }
        };
        let upstream = |port: u16, mode: &str| {
            format!(
                "[[sidecar.upstreams]]\ndestination_name = \"db\"\nlocal_bind_port = {port}\n\
                 connect_timeout_ms = 2000\nmesh_gateway = {{ mode = \"{mode}\" }}\n"
            )
        };
        let toml = format!(
            "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
             [sidecar]\nservice = \"web\"\n{}{}\
             [config_entries.service_resolvers.db]\nfailover = {{ \"*\" = {{ datacenters = [\"dc2\"] }} }}\n\
             [[catalog.services]]\nname = \"db\"\ninstances = [\"{dead}\", \"{db1_instance}\"]\n\
             [[catalog.gateways]]\nlan = [\"{gw1}\"]\nwan = [\"{nowhere}\"]\n\
             [[catalog.gateways]]\ndatacenter = \"dc2\"\nlan = [\"{nowhere}\"]\nwan = [\"{gw2}\"]\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            path("web.pem"),
            path("web-key.pem"),
            path("ca.pem"),
            upstream(local, "local"),
            upstream(remote, "remote"),
        );
        (toml, [local, remote])
    });
    let gateways = || (routed(gw1_admin), routed(gw2_admin));

    // dc1's db serves both upstreams directly: mode applies to targets in other places.
    for port in [local, remote] {
        assert_eq!(ask(port), "ping served-by:db-dc1\n");
    }
    assert_eq!(gateways(), (0, 0));

    db1_up.store(false, Ordering::SeqCst);
    for round in 1..=2 {
        assert_eq!(
            ask(local),
            "ping served-by:db-dc2\n",
            "local, round {round}"
        );
        eventually("local: dc1's gateway, then dc2's", || {
            let seen = gateways();
            if seen == (round, 2 * round - 1) {
                Ok(())
            } else {
                Err(seen)
            }
        });
        assert_eq!(
            ask(remote),
            "ping served-by:db-dc2\n",
            "remote, round {round}"
        );
        eventually("remote: dc2's gateway only", || {
            let seen = gateways();
            if seen == (round, 2 * round) {
                Ok(())
            } else {
                Err(seen)
            }
        });
    }
    // Every failover began with dc1's closing instance failing web's handshake.
    let (_, text) = http_get(web_admin, "/metrics");
    let failures: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("sidegate_tls_handshake_failures_total{role=\"upstream\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(failures >= 4, "upstream handshake failures: {failures}");

    db1_up.store(true, Ordering::SeqCst);
    for port in [local, remote] {
        assert_eq!(ask(port), "ping served-by:db-dc1\n");
    }
    assert_eq!(gateways(), (2, 4));
    assert_eq!((db1.accepted(), db2.accepted()), (4, 4));
}
