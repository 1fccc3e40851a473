//! The whole mesh on loopback, every hop a separate sidegate: two datacenters and two
//! partitions, each with its own gateway, and web's sidecar reaching `api` (dc2) and `db`
//! (dc1/part2) in every mesh-gateway mode. Each test checks the bytes and the route taken:
//! which gateways saw the connection and which inbound listener delivered it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::apps::{answer_after_eof, app, echo_intact, half_close_exchange};
use common::sidecars::{check_json_clean, routed, start_on_free_ports, Service, API, DB, WEB};
use common::*;
use sidegate::proxy::Running;

const MODES: [&str; 3] = ["none", "local", "remote"];

/// ```text
///  dc1/default: web's sidecar ─LAN─▶ gw_dc1 ─WAN─┬▶ gw_dc2   (dc2/default) ─▶ api's inbound ─▶ api app
///                                                └▶ gw_part2 (dc1/part2)   ─▶ db's inbound  ─▶ db app
/// ```
/// Mode `none` dials the inbound listeners directly, `remote` the target place's gateway.
/// Every address a correct dial list never uses (dc1's WAN, the other places' LAN) is one
/// where nothing listens, and the gateways' counters say who carried each connection.
struct Mesh {
    /// web's configuration, as `check` reads it and as its sidecar runs.
    web_toml: String,
    /// web's upstream listener port for each (target, mode).
    ports: Vec<(&'static str, &'static str, u16)>,
    gw_dc1: Running,
    gw_dc2: Running,
    gw_part2: Running,
    api: Running,
    db: Running,
    _web: Running,
}

/// Who carried connections: the three gateways (routed) and the two inbound listeners
/// (accepted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    gw_dc1: u64,
    gw_dc2: u64,
    gw_part2: u64,
    api_inbound: u64,
    db_inbound: u64,
}

impl Mesh {
    /// Starts every place with `app` as the apps behind api and db.
    fn start(app: fn(&'static str) -> SocketAddr) -> Mesh {
        let api = API.inbound(app("api"), "");
        let db = DB.inbound(app("db"), "");
        let (api_in, db_in) = (api.inbound_addr.unwrap(), db.inbound_addr.unwrap());
        let gw_dc2 = gateway(API, api_in);
        let gw_part2 = gateway(DB, db_in);
        let (dc2_wan, part2_wan) = (gw_dc2.gateway_addrs[0], gw_part2.gateway_addrs[0]);
        let nowhere = dead_addr();
        let gw_dc1 = start(&gateway_toml(
            "dc1",
            "default",
            LOOPBACK,
            &[],
            &format!(
                "[[catalog.gateways]]\ndatacenter = \"dc2\"\nlan = [\"{nowhere}\"]\nwan = [\"{dc2_wan}\"]\n\
                 [[catalog.gateways]]\npartition = \"part2\"\nlan = [\"{nowhere}\"]\nwan = [\"{part2_wan}\"]\n"
            ),
            "",
        ));
        let dc1_lan = gw_dc1.gateway_addrs[0];
        let (web, web_toml, ports) = start_on_free_ports(|| {
            let mut ports = Vec::new();
            let mut web_toml = format!(
                // Modes come from three levels: the upstream's own, the proxy's (api's
                // `local`), and web's service-defaults override for db (db's `remote`).
                "{}\nmesh_gateway = {{ mode = \"local\" }}\n\
                 [config_entries.service_defaults.web]\n\
                 upstream_config = {{ overrides = [ {{ name = \"db\", mesh_gateway = {{ mode = \"remote\" }} }} ] }}\n\
                 [[catalog.services]]\nname = \"api\"\ndatacenter = \"dc2\"\ninstances = [\"{api_in}\"]\n\
                 [[catalog.services]]\nname = \"db\"\npartition = \"part2\"\ninstances = [\"{db_in}\"]\n\
                 [[catalog.gateways]]\nlan = [\"{dc1_lan}\"]\nwan = [\"{nowhere}\"]\n\
                 [[catalog.gateways]]\ndatacenter = \"dc2\"\nlan = [\"{nowhere}\"]\nwan = [\"{dc2_wan}\"]\n\
                 [[catalog.gateways]]\npartition = \"part2\"\nlan = [\"{nowhere}\"]\nwan = [\"{part2_wan}\"]\n",
                WEB.header()
            );
            for target in [API, DB] {
                for mode in MODES {
                    // Six free ports, distinct (two upstreams on one port is a config error).
                    let port = loop {
                        let p = free_port();
                        if ports.iter().all(|(_, _, q)| *q != p) {
                            break p;
                        }
                    };
                    web_toml += &upstream_toml(target, mode, port);
                    ports.push((target.name, mode, port));
                }
            }
            (web_toml, ports)
        });
        Mesh {
            web_toml,
            ports,
            gw_dc1,
            gw_dc2,
            gw_part2,
            api,
            db,
            _web: web,
        }
    }

    /// A connection to web's upstream listener for `target` in `mode`.
    fn connect(&self, target: Service, mode: &str) -> TcpStream {
        let port = self
            .ports
            .iter()
            .find(|(t, m, _)| *t == target.name && *m == mode)
            .unwrap()
            .2;
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }

    /// Where a client in web's place dials `target` in `mode`: the target's inbound listener,
    /// dc1's gateway (LAN) or the target place's gateway (WAN).
    fn entry(&self, target: Service, mode: &str) -> SocketAddr {
        let (inbound, far_gateway) = if target == API {
            (&self.api, &self.gw_dc2)
        } else {
            (&self.db, &self.gw_part2)
        };
        match mode {
            "none" => inbound.inbound_addr.unwrap(),
            "local" => self.gw_dc1.gateway_addrs[0],
            _ => far_gateway.gateway_addrs[0],
        }
    }

    fn seen(&self) -> Seen {
        Seen {
            gw_dc1: routed(&self.gw_dc1),
            gw_dc2: routed(&self.gw_dc2),
            gw_part2: routed(&self.gw_part2),
            api_inbound: self.api.metrics.inbound.accepted.get(),
            db_inbound: self.db.metrics.inbound.accepted.get(),
        }
    }

    /// Checks that since `before` exactly the hops of one connection to `target` in `mode`
    /// carried something.
    fn assert_route(&self, before: Seen, target: Service, mode: &str) {
        let mut want = before;
        let far_gateway = if target == API {
            &mut want.gw_dc2
        } else {
            &mut want.gw_part2
        };
        match mode {
            "none" => {}
            "local" => {
                *far_gateway += 1;
                want.gw_dc1 += 1;
            }
            "remote" => *far_gateway += 1,
            _ => unreachable!(),
        }
        if target == API {
            want.api_inbound += 1;
        } else {
            want.db_inbound += 1;
        }
        // The counters are bumped by other threads; wait for them, boundedly, then compare.
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.seen() != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(self.seen(), want, "route of {} in mode {mode}", target.name);
    }
}

/// One of web's upstreams: to `target` on `port`, in `mode` set on the upstream itself, except
/// api's `local` (from the proxy level) and db's `remote` (from web's service-defaults).
fn upstream_toml(target: Service, mode: &str, port: u16) -> String {
    let place = if target.dc == WEB.dc {
        format!("destination_partition = \"{}\"", target.partition)
    } else {
        format!("datacenter = \"{}\"", target.dc)
    };
    let inherited = (target == API && mode == "local") || (target == DB && mode == "remote");
    let own_mode = if inherited {
        String::new()
    } else {
        format!("mesh_gateway = {{ mode = \"{mode}\" }}")
    };
    format!(
        "[[sidecar.upstreams]]\ndestination_name = \"{}\"\n{place}\nlocal_bind_port = {port}\n{own_mode}\n",
        target.name
    )
}

/// The gateway of `svc`'s place, in front of its one instance.
fn gateway(svc: Service, instance: SocketAddr) -> Running {
    start(&gateway_toml(
        svc.dc,
        svc.partition,
        LOOPBACK,
        &[(svc.name, vec![instance])],
        "",
        "",
    ))
}

/// api in dc2 from web in dc1 in every mode: 100 MiB each way intact through the path the
/// mode names, and the sign-off of api's own app.
#[test]
fn every_mode_carries_100_mb_across_datacenters_on_its_route() {
    let mesh = Mesh::start(app);
    for mode in MODES {
        let before = mesh.seen();
        let started = Instant::now();
        let rest = echo_intact(mesh.connect(API, mode), 100 << 20, IO_TIMEOUT);
        assert_eq!(String::from_utf8_lossy(&rest), "app:api\n", "mode {mode}");
        mesh.assert_route(before, API, mode);
        eprintln!("mode {mode}: 100 MiB each way in {:?}", started.elapsed());
    }
}

/// A request, a write shutdown, then the whole answer (which the app sends only after it
/// read EOF) through every path: web's upstream listener in each mode, across datacenters and
/// across partitions; then a TLS client of its own (web's leaf) dialling where each mode
/// dials, so the inbound listener and each gateway must carry a bare FIN too, not only the
/// close_notify that sidegate's upstream sends before it.
#[test]
fn half_close_crosses_every_path() {
    let mesh = Mesh::start(answer_after_eof);
    for target in [API, DB] {
        for mode in MODES {
            let before = mesh.seen();
            let shut = |s: &mut TcpStream| s.shutdown(Shutdown::Write).unwrap();
            half_close_exchange(mesh.connect(target, mode), shut, target.name);
            mesh.assert_route(before, target, mode);

            let client = sidegate::tls::configs::client_config(
                &WEB.identity(),
                &sidegate::mesh::names::SpiffeId::service(
                    TD,
                    target.partition,
                    "default",
                    target.dc,
                    target.name,
                ),
            )
            .unwrap();
            for close_notify in [true, false] {
                let before = mesh.seen();
                let tls = tls_connect(mesh.entry(target, mode), &target.sni(), &client).unwrap();
                let shut = |s: &mut Client| {
                    if close_notify {
                        s.conn.send_close_notify();
                        std::io::Write::flush(s).unwrap();
                    }
                    s.sock.shutdown(Shutdown::Write).unwrap();
                };
                half_close_exchange(tls, shut, target.name);
                mesh.assert_route(before, target, mode);
            }
        }
    }
}

/// `check --json` on web's configuration: each upstream's dial list is exactly the listener
/// this mesh started for its mode, and the SNI and SPIFFE ID are Consul's names for the
/// target (dc2's for api) whatever the mode.
#[test]
fn check_json_dials_the_mesh_that_was_started() {
    let mesh = Mesh::start(app);
    let dir = std::env::temp_dir().join(format!("sidegate-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("web.toml");
    std::fs::write(&path, &mesh.web_toml).unwrap();
    let plan = check_json_clean(&path, &dir);
    let ups = plan["upstreams"].as_array().unwrap();
    let (api_in, db_in) = (
        mesh.api.inbound_addr.unwrap(),
        mesh.db.inbound_addr.unwrap(),
    );
    let (dc1, dc2, part2) = (
        mesh.gw_dc1.gateway_addrs[0],
        mesh.gw_dc2.gateway_addrs[0],
        mesh.gw_part2.gateway_addrs[0],
    );
    let api_sni = format!("api.default.dc2.internal.{TD}");
    let api_id = format!("spiffe://{TD}/ns/default/dc/dc2/svc/api");
    let db_sni = format!("db.default.part2.dc1.internal-v1.{TD}");
    let db_id = format!("spiffe://{TD}/ap/part2/ns/default/dc/dc1/svc/db");
    let expected = [
        ("api", "dc2", "none", "upstream", api_in, &api_sni, &api_id),
        ("api", "dc2", "local", "proxy", dc1, &api_sni, &api_id),
        ("api", "dc2", "remote", "upstream", dc2, &api_sni, &api_id),
        ("db", "dc1", "none", "upstream", db_in, &db_sni, &db_id),
        ("db", "dc1", "local", "upstream", dc1, &db_sni, &db_id),
        (
            "db",
            "dc1",
            "remote",
            "upstream_config_override",
            part2,
            &db_sni,
            &db_id,
        ),
    ];
    assert_eq!(ups.len(), expected.len());
    for (u, (name, dc, mode, source, dial, sni, id)) in ups.iter().zip(expected) {
        let what = format!("{name} in mode {mode}");
        assert_eq!(u["destination_name"], name, "{what}");
        assert_eq!(u["datacenter"], dc, "{what}");
        assert_eq!(u["mode"], mode, "{what}");
        assert_eq!(u["mode_source"], source, "{what}");
        assert_eq!(u["dial"], serde_json::json!([dial.to_string()]), "{what}");
        assert_eq!(u["sni"], sni.as_str(), "{what}");
        assert_eq!(u["spiffe_id"], id.as_str(), "{what}");
    }
}
