//! sidegate following a real Consul agent (`[consul]`; Consul 1.8.7 on loopback): the real
//! binary takes its identity, registration, upstreams, gateways and authorization from the
//! agent and follows changes live — an upstream added by re-registration opens without a
//! restart, a deny intention refuses new connections, a CA rotation is picked up without
//! cutting an established connection, cross-datacenter upstreams go through sidegate mesh
//! gateways registered in Consul — and keeps serving when the agent is gone, also across its
//! own restart (last-known-good state) and through an agent restart in the middle of traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod consul;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::apps::{app, echo_intact};
use common::{free_port, IO_TIMEOUT};
use consul::{
    gateway_toml, service_with_sidecar, sidecar_toml, wait_listening, wait_not_listening, Agent,
    Options, Scratch, Sidegate,
};
use serde_json::{json, Value};

/// Changes reach the data path within this: the agent answers blocking queries at once, and
/// Consul renews leaves within 30 s of a root rotation (its own jitter).
const FOLLOW_WITHIN: Duration = Duration::from_secs(20);
const ROTATION_WITHIN: Duration = Duration::from_secs(60);

/// One dev agent shared by the tests that change only their own services.
fn shared() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| Agent::dev("dc1"))
}

/// Sidegate sidecars for `web` and `db` following `agent`: db's app behind db's sidecar, web's
/// sidecar with `upstreams` (Consul's JSON).
struct Pair {
    web: Sidegate,
    db: Sidegate,
    web_name: String,
    web_app: SocketAddr,
    web_public: u16,
    db_public: u16,
}

impl Pair {
    fn start(agent: &Agent, dir: &Scratch, web: &str, db: &str, upstreams: Value) -> Pair {
        let (db_app, db_public) = (app("db"), free_port());
        agent.register(&service_with_sidecar(db, db_app, db_public, json!([]), ""));
        let (web_app, web_public) = (app("web"), free_port());
        agent.register(&service_with_sidecar(
            web,
            web_app,
            web_public,
            upstreams.clone(),
            "",
        ));
        let sidecar = |service: &str| {
            let state = dir.path(&format!("{service}-state"));
            std::fs::create_dir_all(&state).unwrap();
            Sidegate::run(
                service,
                &dir.0,
                &sidecar_toml(agent, &format!("{service}-sidecar-proxy"), &state),
            )
        };
        let mut pair = Pair {
            db: sidecar(db),
            web: sidecar(web),
            web_name: web.to_owned(),
            web_app,
            web_public,
            db_public,
        };
        pair.db.serving(&[db_public]);
        pair.web.serving(&[web_public]);
        pair.web.serving(&bind_ports(&upstreams));
        pair
    }

    /// Registers web again with these upstreams, as an operator (or Nomad) would.
    fn reregister_web(&self, agent: &Agent, upstreams: Value) {
        agent.register(&service_with_sidecar(
            &self.web_name,
            self.web_app,
            self.web_public,
            upstreams,
            "",
        ));
    }
}

fn bind_ports(upstreams: &Value) -> Vec<u16> {
    let ports = upstreams.as_array().into_iter().flatten();
    ports
        .map(|u| u16::try_from(u["LocalBindPort"].as_u64().unwrap()).unwrap())
        .collect()
}

fn upstream(target: &str, port: u16) -> Value {
    json!({"DestinationName": target, "LocalBindPort": port})
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// One whole exchange through an upstream listener: 256 KiB echoed and the app's sign-off.
fn carries(port: u16) -> bool {
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    std::panic::catch_unwind(|| echo_intact(s, 256 << 10, IO_TIMEOUT) == b"app:db\n")
        .unwrap_or(false)
}

/// Whether a new connection through `port` is closed without a byte of answer.
fn refused(port: u16) -> bool {
    let mut s = connect(port);
    let _ = s.write_all(b"let me in");
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset && got.is_empty(),
    }
}

/// A connection held open across a change; each `ping` must come back echoed.
struct Held(TcpStream);

impl Held {
    fn open(port: u16) -> Held {
        let mut h = Held(connect(port));
        h.ping("opened");
        h
    }

    fn ping(&mut self, what: &str) {
        self.0.write_all(what.as_bytes()).unwrap();
        let mut back = vec![0u8; what.len()];
        self.0
            .read_exact(&mut back)
            .unwrap_or_else(|e| panic!("held connection, {what}: {e}"));
        assert_eq!(back, what.as_bytes());
    }
}

/// Polls `cond` until it holds, at most `within`.
fn within(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_upstream_added_by_reregistration_opens_without_restart() {
    let agent = shared();
    let dir = Scratch::new("consul-source-reg");
    let mut pair = Pair::start(agent, &dir, "web-reg", "db-reg", json!([]));
    let port = free_port();
    pair.reregister_web(agent, json!([upstream("db-reg", port)]));
    assert!(
        wait_listening(port, FOLLOW_WITHIN),
        "{}",
        pair.web.output_tail()
    );
    assert!(carries(port));
    // And removed again: the listener closes; the process never restarted.
    pair.reregister_web(agent, json!([]));
    assert!(
        wait_not_listening(port, FOLLOW_WITHIN),
        "{}",
        pair.web.output_tail()
    );
    assert!(pair.web.is_running());
}

#[test]
fn an_intention_set_to_deny_refuses_new_connections() {
    let agent = shared();
    let dir = Scratch::new("consul-source-deny");
    let port = free_port();
    let pair = Pair::start(
        agent,
        &dir,
        "web-deny",
        "db-deny",
        json!([upstream("db-deny", port)]),
    );
    agent.set_intention("web-deny", "db-deny", "allow");
    assert!(carries(port));
    let mut held = Held::open(port);

    agent.set_intention("web-deny", "db-deny", "deny");
    within("new connections refused", FOLLOW_WITHIN, || refused(port));
    // Authorization is per connection, at its start (as Envoy's L4 RBAC): the established
    // connection keeps going.
    held.ping("after the deny");
    agent.set_intention("web-deny", "db-deny", "allow");
    within("allowed again", FOLLOW_WITHIN, || carries(port));
    drop(pair);
}

#[test]
fn a_ca_rotation_is_picked_up_without_dropping_an_established_connection() {
    // Its own agent: a rotation changes every leaf of the cluster.
    let agent = Agent::dev("dc1");
    let dir = Scratch::new("consul-source-rotation");
    let port = free_port();
    let pair = Pair::start(&agent, &dir, "web", "db", json!([upstream("db", port)]));
    assert!(carries(port));
    let mut held = Held::open(port);

    let new = agent.rotate_ca();
    // db's public listener presents a leaf of the new root: a client trusting only that root
    // completes a handshake with it (a leaf of the old root alone would not verify).
    let probe = new_root_client(&agent, &dir, &new.active_pem);
    within("db serves a leaf of the new root", ROTATION_WITHIN, || {
        handshake(&probe, pair.db_public)
    });
    held.ping("after the rotation");
    assert!(carries(port), "a new connection after the rotation");
}

/// A client with a fresh leaf (issued after the rotation) trusting only `root`, expecting db.
fn new_root_client(agent: &Agent, dir: &Scratch, root: &str) -> Arc<rustls::ClientConfig> {
    let files = agent.identity_files("probe", &dir.0);
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let identity =
        sidegate::tls::Identity::from_pem(&read(&files.cert), &read(&files.key), root.as_bytes())
            .unwrap();
    let td = agent.roots().trust_domain;
    let db =
        sidegate::mesh::names::SpiffeId::parse(&format!("spiffe://{td}/ns/default/dc/dc1/svc/db"))
            .unwrap();
    sidegate::tls::configs::client_config(&identity, &db).unwrap()
}

fn handshake(cfg: &Arc<rustls::ClientConfig>, port: u16) -> bool {
    let name = rustls::pki_types::ServerName::try_from("db").unwrap();
    let Ok(mut sock) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return false;
        }
    }
    true
}

/// dc1 and dc2 WAN-federated; sidegate mesh gateways registered in each as `mesh-gateway`
/// services (kind `mesh-gateway`, `lan` and `wan` tagged addresses) and following their
/// registrations; web in dc1 reaches db in dc2 with an upstream in `local` mode (through dc1's
/// gateway, then dc2's) and one in `remote` mode (dc2's gateway directly). Stopping dc1's
/// gateway then cuts only the `local` path: each mode took the path Consul's semantics give it.
#[test]
fn cross_datacenter_upstreams_through_sidegate_mesh_gateways() {
    let dc1 = Agent::dev("dc1");
    let dc2 = Agent::secondary("dc2", &dc1);
    let dir = Scratch::new("consul-source-wan");
    let state = |name: &str| {
        let d = dir.path(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    let (db_app, db_public) = (app("db"), free_port());
    dc2.register(&service_with_sidecar(
        "db",
        db_app,
        db_public,
        json!([]),
        "",
    ));
    let mut db = Sidegate::run(
        "db",
        &dir.0,
        &sidecar_toml(&dc2, "db-sidecar-proxy", &state("db")),
    );

    let mut gateways = Vec::new();
    for agent in [&dc1, &dc2] {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        agent.register_mesh_gateway("mesh-gateway", addr, addr);
        let name = format!("gateway-{}", agent.options.datacenter);
        let mut gw = Sidegate::run(
            &name,
            &dir.0,
            &gateway_toml(agent, "mesh-gateway", &state(&name)),
        );
        gw.serving(&[addr.port()]);
        gateways.push(gw);
    }

    let (local, remote) = (free_port(), free_port());
    let cross = |port: u16, mode: &str| {
        json!({"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": port,
               "MeshGateway": {"Mode": mode}})
    };
    dc1.register(&service_with_sidecar(
        "web",
        app("web"),
        free_port(),
        json!([cross(local, "local"), cross(remote, "remote")]),
        "",
    ));
    let mut web = Sidegate::run(
        "web",
        &dir.0,
        &sidecar_toml(&dc1, "web-sidecar-proxy", &state("web")),
    );
    db.serving(&[db_public]);
    web.serving(&[local, remote]);

    within("local mode carries", FOLLOW_WITHIN, || carries(local));
    assert!(carries(remote), "remote mode");
    gateways[0].kill();
    assert!(refused(local), "local mode must go through dc1's gateway");
    assert!(carries(remote), "remote mode never used dc1's gateway");
}

#[test]
fn with_the_agent_gone_traffic_flows_and_a_restarted_sidegate_serves_its_last_known_state() {
    let mut agent = Agent::dev("dc1");
    let dir = Scratch::new("consul-source-offline");
    let port = free_port();
    let mut pair = Pair::start(&agent, &dir, "web", "db", json!([upstream("db", port)]));
    assert!(carries(port));
    let mut held = Held::open(port);

    agent.kill();
    held.ping("agent gone");
    // New connections too: db authorizes web from its last answer.
    assert!(carries(port));

    // web starts again with the agent still gone: it serves from its state_dir.
    pair.web.restart();
    pair.web.serving(&[port]);
    assert!(carries(port), "restarted from the last-known-good state");
    // `held` went through the web sidegate that was just killed: it ended with it.
    drop(held);
}

/// Issue 7's fault: the agent restarted, then stopped, in the middle of traffic. Nothing
/// established is cut, every new connection is carried, and after the restart changes are
/// followed again.
#[test]
fn the_agent_restarted_and_stopped_in_the_middle_of_traffic() {
    // A server with its state on disk: its restart keeps the CA and the catalog, as a
    // node's agent restart does with servers that stay up.
    let mut agent = Agent::start(Options {
        persistent: true,
        ..Options::dev("dc1")
    });
    let dir = Scratch::new("consul-source-fault");
    let port = free_port();
    let pair = Pair::start(&agent, &dir, "web", "db", json!([upstream("db", port)]));
    let mut held = Held::open(port);

    let stop = Arc::new(AtomicBool::new(false));
    let (carried, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, carried, failed) = (stop.clone(), carried.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = if carries(port) { &carried } else { &failed };
                n.fetch_add(1, Ordering::Relaxed);
                // Pacing, not synchronisation: a steady stream, not a CPU-bound loop.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let carried_now = || carried.load(Ordering::Relaxed);
    let more_traffic = |from: usize| {
        within("more connections carried", FOLLOW_WITHIN, || {
            carried_now() >= from + 5
        })
    };

    more_traffic(0);
    agent.kill();
    more_traffic(carried_now());
    held.ping("agent killed");
    agent.restart();
    more_traffic(carried_now());
    // Followed again after the restart: a new upstream opens.
    let extra = free_port();
    pair.reregister_web(&agent, json!([upstream("db", port), upstream("db", extra)]));
    assert!(
        wait_listening(extra, FOLLOW_WITHIN),
        "{}",
        pair.web.output_tail()
    );
    agent.stop();
    more_traffic(carried_now());
    held.ping("agent stopped");

    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {} connections",
        carried_now()
    );
    assert!(carries(extra));
}
