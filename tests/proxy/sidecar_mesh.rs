//! The whole mesh on loopback, every hop its own `sidegate run` process: two datacenters and
//! two partitions, each with its own gateway, and web's sidecar reaching `api` (dc2) and `db`
//! (dc1/part2) in every mesh-gateway mode. Each test checks the bytes and the route taken —
//! which gateways saw the connection and which inbound listener delivered it — from the
//! processes' own counters (their admin endpoints' /metrics).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Instant;

use common::apps::{answer_after_eof, app, echo_intact, half_close_exchange};
use common::sidecars::{check_json_clean, run_on_free_ports, Service, API, DB, WEB};
use common::*;

const MODES: [&str; 3] = ["none", "local", "remote"];

/// Every process has an admin endpoint: its counters, and its "serving" log line.
const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// One sidegate process of the mesh and its admin endpoint.
struct Node {
    child: Child,
    admin: SocketAddr,
}

impl Node {
    /// Runs `toml` with an admin endpoint, from `dir/<name>.toml`, once it serves.
    fn run(dir: &Scratch, name: &str, toml: &str) -> Node {
        let path = dir.path(&format!("{name}.toml"));
        let (child, admin, _, ()) = run_on_free_ports(&path, || (format!("{toml}{ADMIN}"), ()));
        Node { child, admin }
    }

    /// Where it listens for `role` (`gateway` or `inbound`), as it logged.
    fn listening(&self, role: &str) -> SocketAddr {
        self.child.logged_addr(&format!("{role} listening on "))
    }

    /// Connections its gateway listener routed.
    fn routed(&self) -> u64 {
        metric(
            self.admin,
            "sidegate_client_hello_total{outcome=\"routed\"}",
        )
    }

    /// Connections its inbound listener accepted.
    fn inbound_accepted(&self) -> u64 {
        metric(
            self.admin,
            "sidegate_connections_accepted_total{role=\"inbound\"}",
        )
    }
}

/// The far places: api's sidecar (inbound only) behind dc2's gateway, db's behind part2's.
struct Far {
    api: Node,
    db: Node,
    gw_dc2: Node,
    gw_part2: Node,
    api_in: SocketAddr,
    db_in: SocketAddr,
    dc2_wan: SocketAddr,
    part2_wan: SocketAddr,
    /// Where nothing listens: every address a correct dial list never uses (dc1's WAN, the
    /// far places' LAN).
    nowhere: SocketAddr,
}

impl Far {
    /// Starts the far places with `app` as the apps behind api and db.
    fn start(dir: &Scratch, app: fn(&'static str) -> SocketAddr) -> Far {
        let api = Node::run(dir, "api", &API.inbound_toml(app("api"), ""));
        let db = Node::run(dir, "db", &DB.inbound_toml(app("db"), ""));
        let (api_in, db_in) = (api.listening("inbound"), db.listening("inbound"));
        let gw_dc2 = gateway(dir, API, api_in);
        let gw_part2 = gateway(dir, DB, db_in);
        Far {
            dc2_wan: gw_dc2.listening("gateway"),
            part2_wan: gw_part2.listening("gateway"),
            api,
            db,
            gw_dc2,
            gw_part2,
            api_in,
            db_in,
            nowhere: dead_addr(),
        }
    }

    /// web's `[[catalog.*]]`: api's and db's instances (their inbound listeners), and every
    /// place's gateways, with `dc1_lan` as the LAN address of web's own place's gateway.
    fn catalog(&self, dc1_lan: SocketAddr) -> String {
        let Far {
            api_in,
            db_in,
            dc2_wan,
            part2_wan,
            nowhere,
            ..
        } = self;
        format!(
            "[[catalog.services]]\nname = \"api\"\ndatacenter = \"dc2\"\ninstances = [\"{api_in}\"]\n\
             [[catalog.services]]\nname = \"db\"\npartition = \"part2\"\ninstances = [\"{db_in}\"]\n\
             [[catalog.gateways]]\nlan = [\"{dc1_lan}\"]\nwan = [\"{nowhere}\"]\n\
             [[catalog.gateways]]\ndatacenter = \"dc2\"\nlan = [\"{nowhere}\"]\nwan = [\"{dc2_wan}\"]\n\
             [[catalog.gateways]]\npartition = \"part2\"\nlan = [\"{nowhere}\"]\nwan = [\"{part2_wan}\"]\n"
        )
    }

    /// `target`'s inbound listener process and its place's gateway.
    fn of(&self, target: Service) -> (&Node, &Node) {
        if target == API {
            (&self.api, &self.gw_dc2)
        } else {
            (&self.db, &self.gw_part2)
        }
    }
}

/// The gateway of `svc`'s place, in front of its one instance.
fn gateway(dir: &Scratch, svc: Service, instance: SocketAddr) -> Node {
    let toml = gateway_toml(
        svc.dc,
        svc.partition,
        LOOPBACK,
        &[(svc.name, vec![instance])],
        "",
        "",
    );
    Node::run(dir, &format!("gw-{}-{}", svc.dc, svc.partition), &toml)
}

/// ```text
///  dc1/default: web's sidecar ─LAN─▶ gw_dc1 ─WAN─┬▶ gw_dc2   (dc2/default) ─▶ api's inbound ─▶ api app
///                                                └▶ gw_part2 (dc1/part2)   ─▶ db's inbound  ─▶ db app
/// ```
/// Mode `none` dials the inbound listeners directly, `remote` the target place's gateway.
struct Mesh {
    far: Far,
    gw_dc1: Node,
    _web: Node,
    /// web's configuration file, as `check` reads it and as its sidecar runs.
    web_config: PathBuf,
    /// web's upstream listener port for each (target, mode).
    ports: Vec<(&'static str, &'static str, u16)>,
    dir: Scratch,
}

impl Mesh {
    /// Starts every place with `app` as the apps behind api and db.
    fn start(app: fn(&'static str) -> SocketAddr) -> Mesh {
        let dir = Scratch::new("sidecar-mesh");
        let far = Far::start(&dir, app);
        let gw_dc1 = Node::run(
            &dir,
            "gw-dc1",
            &gateway_toml(
                "dc1",
                "default",
                LOOPBACK,
                &[],
                &format!(
                    "[[catalog.gateways]]\ndatacenter = \"dc2\"\nlan = [\"{0}\"]\nwan = [\"{1}\"]\n\
                     [[catalog.gateways]]\npartition = \"part2\"\nlan = [\"{0}\"]\nwan = [\"{2}\"]\n",
                    far.nowhere, far.dc2_wan, far.part2_wan
                ),
                // Every peer here is on loopback, where `auto` copies. This gateway splices,
                // so mode `local` crosses a splicing gateway and then a copying one.
                "splice = \"always\"",
            ),
        );
        let catalog = far.catalog(gw_dc1.listening("gateway"));
        let web_config = dir.path("web.toml");
        let (child, admin, _, ports) = run_on_free_ports(&web_config, || {
            let mut ports = Vec::new();
            let mut web_toml = format!(
                // Modes come from three levels: the upstream's own, the proxy's (api's
                // `local`), and web's service-defaults override for db (db's `remote`).
                "{}\nmesh_gateway = {{ mode = \"local\" }}\n\
                 [config_entries.service_defaults.web]\n\
                 upstream_config = {{ overrides = [ {{ name = \"db\", partition = \"part2\", mesh_gateway = {{ mode = \"remote\" }} }} ] }}\n\
                 {catalog}{ADMIN}",
                WEB.header()
            );
            for target in [API, DB] {
                for mode in MODES {
                    let port = distinct_port(ports.iter().map(|(_, _, p)| *p));
                    let inherited =
                        (target == API && mode == "local") || (target == DB && mode == "remote");
                    web_toml += &upstream_toml(target, (!inherited).then_some(mode), port);
                    ports.push((target.name, mode, port));
                }
            }
            (web_toml, ports)
        });
        Mesh {
            far,
            gw_dc1,
            _web: Node { child, admin },
            web_config,
            ports,
            dir,
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
        connect(port)
    }

    /// Where a client in web's place dials `target` in `mode`: the target's inbound listener,
    /// dc1's gateway (LAN) or the target place's gateway (WAN).
    fn entry(&self, target: Service, mode: &str) -> SocketAddr {
        let (inbound, far_gateway) = self.far.of(target);
        match mode {
            "none" => inbound.listening("inbound"),
            "local" => self.gw_dc1.listening("gateway"),
            _ => far_gateway.listening("gateway"),
        }
    }

    fn seen(&self) -> Seen {
        Seen::of(&self.far, &self.gw_dc1)
    }

    fn assert_route(&self, before: Seen, target: Service, mode: &str) {
        assert_route(&self.far, &self.gw_dc1, before, target, mode);
    }
}

/// A free port for an upstream listener, none of `taken` (two upstreams on one port is a
/// configuration error).
fn distinct_port(taken: impl Iterator<Item = u16> + Clone) -> u16 {
    loop {
        let p = free_port();
        if taken.clone().all(|q| q != p) {
            return p;
        }
    }
}

/// A local app's connection to an upstream listener on `port`.
fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
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

impl Seen {
    /// The counters now, with `local_gateway` standing as web's place's gateway.
    fn of(far: &Far, local_gateway: &Node) -> Seen {
        Seen {
            gw_dc1: local_gateway.routed(),
            gw_dc2: far.gw_dc2.routed(),
            gw_part2: far.gw_part2.routed(),
            api_inbound: far.api.inbound_accepted(),
            db_inbound: far.db.inbound_accepted(),
        }
    }
}

/// Checks that since `before` exactly the hops of one connection to `target` in `mode`
/// carried something, `local_gateway` being web's place's gateway.
fn assert_route(far: &Far, local_gateway: &Node, before: Seen, target: Service, mode: &str) {
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
    // The counters are bumped after the client saw its bytes; wait for them, boundedly.
    let what = format!("route of {} in mode {mode}: {want:?}", target.name);
    eventually(&what, || {
        let seen = Seen::of(far, local_gateway);
        if seen == want {
            Ok(())
        } else {
            Err(seen)
        }
    });
}

/// One of web's upstreams: to `target` on `port`, with `mode` set on the upstream itself, or
/// none (it inherits one).
fn upstream_toml(target: Service, mode: Option<&str>, port: u16) -> String {
    let place = if target.dc == WEB.dc {
        format!("destination_partition = \"{}\"", target.partition)
    } else {
        format!("datacenter = \"{}\"", target.dc)
    };
    let own_mode = mode.map_or(String::new(), |m| {
        format!("mesh_gateway = {{ mode = \"{m}\" }}")
    });
    format!(
        "[[sidecar.upstreams]]\ndestination_name = \"{}\"\n{place}\nlocal_bind_port = {port}\n{own_mode}\n",
        target.name
    )
}

/// api in dc2 from web in dc1 in every mode: 100 MiB each way intact through the path the
/// mode names (less under emulation: `bulk_bytes`), and the sign-off of api's own app.
#[test]
fn every_mode_carries_100_mb_across_datacenters_on_its_route() {
    let mesh = Mesh::start(app);
    let bytes = bulk_bytes(100 << 20);
    for mode in MODES {
        let before = mesh.seen();
        let started = Instant::now();
        let rest = echo_intact(mesh.connect(API, mode), bytes, IO_TIMEOUT);
        assert_eq!(String::from_utf8_lossy(&rest), "app:api\n", "mode {mode}");
        mesh.assert_route(before, API, mode);
        eprintln!(
            "mode {mode}: {} MiB each way in {:?}",
            bytes >> 20,
            started.elapsed()
        );
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

            let client =
                sidegate::tls::configs::client_config(&WEB.identity(), &target.spiffe_id())
                    .unwrap();
            for close_notify in [true, false] {
                let before = mesh.seen();
                let tls = tls_connect(mesh.entry(target, mode), &target.sni(), &client).unwrap();
                let shut = |s: &mut Client| {
                    if close_notify {
                        finish_sending(s).unwrap();
                    } else {
                        s.sock.shutdown(Shutdown::Write).unwrap();
                    }
                };
                half_close_exchange(tls, shut, target.name);
                mesh.assert_route(before, target, mode);
            }
        }
    }
}

/// The local gateway may be this same process: web's sidecar is also its place's gateway
/// (`[sidecar]` and `[gateway]` in one configuration), and upstreams in mode `local` dial its
/// own gateway listener, which sends them on to the target place's gateway (WAN).
#[test]
fn the_local_gateway_can_be_the_sidecars_own_process() {
    let dir = Scratch::new("sidecar-mesh-own-gateway");
    let far = Far::start(&dir, app);
    let (child, admin, _, [api_port, db_port]) = run_on_free_ports(&dir.path("web.toml"), || {
        let gw = free_port();
        let api_port = distinct_port([gw].into_iter());
        let db_port = distinct_port([gw, api_port].into_iter());
        let own_lan = SocketAddr::from(([127, 0, 0, 1], gw));
        let toml = format!(
            "{}\n{}{}[gateway]\nlisten = [\"{own_lan}\"]\n{}{ADMIN}",
            WEB.header(),
            upstream_toml(API, Some("local"), api_port),
            upstream_toml(DB, Some("local"), db_port),
            far.catalog(own_lan),
        );
        (toml, [api_port, db_port])
    });
    let web = Node { child, admin };
    for (target, port) in [(API, api_port), (DB, db_port)] {
        let before = Seen::of(&far, &web);
        let rest = echo_intact(connect(port), 4 << 20, IO_TIMEOUT);
        assert_eq!(
            String::from_utf8_lossy(&rest),
            format!("app:{}\n", target.name)
        );
        assert_route(&far, &web, before, target, "local");
    }
}

/// `check --json` on web's configuration: each upstream's dial list is exactly the listener
/// this mesh started for its mode, and the SNI and SPIFFE ID are Consul's names for the
/// target (dc2's for api) whatever the mode.
#[test]
fn check_json_dials_the_mesh_that_was_started() {
    let mesh = Mesh::start(app);
    let plan = check_json_clean(&mesh.web_config, &mesh.dir.0);
    let ups = plan["upstreams"].as_array().unwrap();
    let far = &mesh.far;
    let (api_in, db_in) = (far.api_in, far.db_in);
    let (dc1, dc2, part2) = (mesh.gw_dc1.listening("gateway"), far.dc2_wan, far.part2_wan);
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
