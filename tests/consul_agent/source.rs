//! sidegate following a real Consul agent (`[consul]`; Consul 1.8.7 on loopback): the real
//! binary takes its identity, registration, upstreams, gateways and authorization from the
//! agent and follows changes live — an upstream added by re-registration opens without a
//! restart, a deny intention refuses new connections, a CA rotation is picked up without
//! cutting an established connection, a gateway's routes follow the catalog, cross-datacenter
//! upstreams go through sidegate mesh gateways registered in Consul — and keeps serving when the agent is gone, also across its
//! own restart (last-known-good state) and through an agent restart in the middle of traffic.
//! A SIGHUP reload tells systemd READY=1 only once the restarted follower's state is in
//! service (or, when the agent does not confirm it in time, says so), and a SIGTERM during
//! that wait stops at once; a SIGHUP before the first state reloads once serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::consul;
use crate::ops;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::apps::app;
use common::{eventually_within, free_port, http_get, tls_connect};
use consul::{
    gateway_toml, saved_unix, service_with_sidecar, set_saved_unix, sidecar_toml, traffic,
    wait_listening, wait_not_listening, Agent, Options, Scratch, Shown, Sidegate, SERVING_WITHIN,
};
use serde_json::{json, Value};
use sidegate::consul::status::now_unix;
use traffic::{refused, Held};

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
    /// web's admin endpoint (`/ready`, `/metrics`).
    web_admin: SocketAddr,
}

impl Pair {
    fn start(agent: &Agent, dir: &Scratch, web: &str, db: &str, upstreams: Value) -> Pair {
        Pair::start_with(agent, dir, web, db, upstreams, true)
    }

    /// `db_heartbeat` false: db's sidecar check turns critical when the agent restarts.
    fn start_with(
        agent: &Agent,
        dir: &Scratch,
        web: &str,
        db: &str,
        upstreams: Value,
        db_heartbeat: bool,
    ) -> Pair {
        let (db_app, db_public) = (app("db"), free_port());
        let db_registration = service_with_sidecar(db, db_app, db_public, json!([]), "");
        if db_heartbeat {
            agent.register(&db_registration);
        } else {
            agent.register_without_heartbeat(&db_registration);
        }
        let (web_app, web_public) = (app("web"), free_port());
        agent.register(&service_with_sidecar(
            web,
            web_app,
            web_public,
            upstreams.clone(),
            "",
        ));
        let web_admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let sidecar = |service: &str, extra: &str| {
            let state = state_dir(dir, &format!("{service}-state"));
            Sidegate::run(
                service,
                &dir.0,
                &(sidecar_toml(agent, &format!("{service}-sidecar-proxy"), &state) + extra),
            )
        };
        let mut pair = Pair {
            db: sidecar(db, ""),
            web: sidecar(web, &format!("[admin]\nlisten = \"{web_admin}\"\n")),
            web_admin,
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

/// A sidegate's `state_dir` in the test's scratch directory.
fn state_dir(dir: &Scratch, name: &str) -> std::path::PathBuf {
    let d = dir.path(name);
    std::fs::create_dir_all(&d).unwrap();
    d
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

/// One whole exchange with db's app through 127.0.0.1:`port`.
fn carries(port: u16) -> bool {
    traffic::carries(port, "db")
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
    eventually_within(FOLLOW_WITHIN, "new connections refused", || refused(port));
    // Authorization is per connection, at its start (as Envoy's L4 RBAC): the established
    // connection keeps going.
    held.ping("after the deny");
    agent.set_intention("web-deny", "db-deny", "allow");
    eventually_within(FOLLOW_WITHIN, "allowed again", || carries(port));
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
    let probe = probe_client(&agent, &dir, &new.active_pem, "db");
    let db_public = SocketAddr::from(([127, 0, 0, 1], pair.db_public));
    eventually_within(ROTATION_WITHIN, "db serves a leaf of the new root", || {
        tls_connect(db_public, "db", &probe).map(drop)
    });
    held.ping("after the rotation");
    assert!(carries(port), "a new connection after the rotation");
}

/// A client with a fresh leaf of `probe` trusting only `roots` (PEM), expecting `target`'s
/// SPIFFE ID from the server.
fn probe_client(
    agent: &Agent,
    dir: &Scratch,
    roots: &str,
    target: &str,
) -> Arc<rustls::ClientConfig> {
    let files = agent.identity_files("probe", &dir.0);
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let identity =
        sidegate::tls::Identity::from_pem(&read(&files.cert), &read(&files.key), roots.as_bytes())
            .unwrap();
    let td = agent.roots().trust_domain;
    let id = format!("spiffe://{td}/ns/default/dc/dc1/svc/{target}");
    let target = sidegate::names::SpiffeId::parse(&id).unwrap();
    sidegate::tls::configs::client_config(&identity, &target).unwrap()
}

/// A gateway following its registration routes what the catalog holds, live: a service
/// registered after it started gets a route — a real mTLS connection with the service's SNI
/// reaches its sidecar and app through the gateway — and loses it once deregistered.
#[test]
fn a_gateways_routes_follow_the_catalog() {
    // Its own agent: the gateway routes every service registered there.
    let agent = Agent::dev("dc1");
    let dir = Scratch::new("consul-source-routes");
    let state = |name: &str| state_dir(&dir, name);
    let lan = SocketAddr::from(([127, 0, 0, 1], free_port()));
    agent.register_mesh_gateway("mesh-gateway", lan, lan, &["lan"]);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = gateway_toml(&agent, "mesh-gateway", &state("gateway"))
        + &format!("[admin]\nlisten = \"{admin}\"\n");
    let mut gateway = Sidegate::run("gateway", &dir.0, &toml);
    gateway.serving(&[lan.port(), admin.port()]);
    gateway.plan(admin);

    let sni = format!("api.default.dc1.internal.{}", agent.roots().trust_domain);
    let route = || {
        let (code, body) = http_get(admin, "/config");
        assert_eq!(code, 200, "{body}");
        let plan: Value = serde_json::from_str(&body).unwrap();
        let routes = plan["gateway"]["routes"].as_array().unwrap().clone();
        routes.into_iter().find(|r| r["match"] == sni.as_str())
    };
    assert_eq!(route(), None, "no api yet");

    let (api_app, api_public) = (app("api"), free_port());
    agent.register(&service_with_sidecar(
        "api",
        api_app,
        api_public,
        json!([]),
        "",
    ));
    let api_toml = sidecar_toml(&agent, "api-sidecar-proxy", &state("api"));
    let mut api = Sidegate::run("api", &dir.0, &api_toml);
    api.serving(&[api_public]);
    eventually_within(FOLLOW_WITHIN, "a route for api", || route().is_some());
    let r = route().unwrap();
    assert_eq!(r["kind"], "service");
    assert_eq!(r["endpoints"], json!([format!("127.0.0.1:{api_public}")]));
    let probe = probe_client(&agent, &dir, &agent.roots().pems.concat(), "api");
    let through_gateway = || {
        let Ok(mut tls) = tls_connect(lan, &sni, &probe) else {
            return false;
        };
        let mut back = [0u8; 16];
        tls.write_all(b"via the gateway!").is_ok()
            && tls.read_exact(&mut back).is_ok()
            && back == *b"via the gateway!"
    };
    assert!(through_gateway(), "{}", gateway.output_tail());

    agent.ok("PUT", "/v1/agent/service/deregister/api", &Value::Null);
    eventually_within(FOLLOW_WITHIN, "api's route removed", || route().is_none());
    assert!(!through_gateway(), "no route: the gateway closes");
    assert!(gateway.is_running() && api.is_running());
}

/// dc1 and dc2 WAN-federated; sidegate mesh gateways registered in each as `mesh-gateway`
/// services (kind `mesh-gateway`, `lan` and `wan` tagged addresses) and listening where their
/// registrations say: dc1's only on its LAN address, dc2's only on its WAN address, so a path
/// that took a wrong address fails. web in dc1 reaches db in dc2 with upstreams in `local` mode
/// (dc1's gateway on its LAN address, then dc2's on its WAN address), `remote` mode (dc2's
/// gateway directly, WAN) and no mode of its own, inheriting `local` from dc1's `proxy-defaults`
/// config entry. Stopping dc1's gateway then cuts exactly the two `local` paths.
#[test]
fn cross_datacenter_upstreams_through_sidegate_mesh_gateways() {
    let dc1 = Agent::dev("dc1");
    let dc2 = Agent::secondary("dc2", &dc1);
    let dir = Scratch::new("consul-source-wan");
    let state = |name: &str| state_dir(&dir, name);

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

    let lan = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let wan = |port: u16| SocketAddr::from(([127, 0, 0, 2], port));
    let mut gateways = Vec::new();
    for (agent, listen_on) in [(&dc1, "lan"), (&dc2, "wan")] {
        let (l, w) = (lan(free_port()), wan(free_port()));
        agent.register_mesh_gateway("mesh-gateway", l, w, &[listen_on]);
        let name = format!("gateway-{}", agent.options.datacenter);
        let toml = gateway_toml(agent, "mesh-gateway", &state(&name));
        let mut gw = Sidegate::run(&name, &dir.0, &toml);
        let (bound, not_bound) = if listen_on == "lan" { (l, w) } else { (w, l) };
        gw.serving(&[bound.port()]);
        assert!(
            wait_not_listening(not_bound.port(), Duration::ZERO),
            "{not_bound} must not be bound"
        );
        gateways.push(gw);
    }

    dc1.config_entry(&json!({"Kind": "proxy-defaults", "Name": "global",
                             "MeshGateway": {"Mode": "local"}}));
    let (local, remote, inherited) = (free_port(), free_port(), free_port());
    let cross = |port: u16, mode: Option<&str>| {
        let mut u = json!({"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": port});
        if let Some(mode) = mode {
            u["MeshGateway"] = json!({"Mode": mode});
        }
        u
    };
    let upstreams = json!([
        cross(local, Some("local")),
        cross(remote, Some("remote")),
        cross(inherited, None)
    ]);
    dc1.register(&service_with_sidecar(
        "web",
        app("web"),
        free_port(),
        upstreams,
        "",
    ));
    let mut web = Sidegate::run(
        "web",
        &dir.0,
        &sidecar_toml(&dc1, "web-sidecar-proxy", &state("web")),
    );
    db.serving(&[db_public]);
    web.serving(&[local, remote, inherited]);

    for (port, what) in [
        (local, "local"),
        (remote, "remote"),
        (inherited, "proxy-defaults local"),
    ] {
        eventually_within(FOLLOW_WITHIN, what, || carries(port));
    }
    gateways[0].kill();
    assert!(refused(local), "local mode must go through dc1's gateway");
    assert!(
        refused(inherited),
        "proxy-defaults' local mode must go through dc1's gateway"
    );
    assert!(carries(remote), "remote mode never used dc1's gateway");
}

#[test]
fn with_the_agent_gone_traffic_flows_and_a_restarted_sidegate_serves_its_last_known_state() {
    let mut agent = Agent::dev("dc1");
    let dir = Scratch::new("consul-source-offline");
    let (port, nowhere) = (free_port(), free_port());
    // An upstream in a datacenter that does not exist: the agent refuses its instances (500
    // "No path to datacenter"), and the state is complete — and saved — without them.
    let far = json!({"DestinationName": "db", "Datacenter": "dc9", "LocalBindPort": nowhere});
    let upstreams = json!([upstream("db", port), far]);
    let mut pair = Pair::start(&agent, &dir, "web", "db", upstreams);
    assert!(carries(port));
    assert!(refused(nowhere), "nothing to dial in dc9");
    assert_eq!(http_get(pair.web_admin, "/ready"), (200, "ready\n".into()));
    let mut held = Held::open(port);

    agent.kill();
    held.ping("agent gone");
    // New connections too: db authorizes web from its last answer.
    assert!(carries(port));

    // web starts again with the agent still gone: it serves from its state_dir — saved an
    // hour ago, say — and leaves that state as it is: served again, it is no newer.
    pair.web.kill();
    let state = dir.path("web-state");
    let an_hour_ago = now_unix() - 3600;
    set_saved_unix(&state, an_hour_ago);
    pair.web.restart();
    pair.web.serving(&[port, nowhere]);
    assert!(carries(port), "restarted from the last-known-good state");
    assert!(refused(nowhere));
    // The log says what is served, how old it is, and that it is stale.
    let line = pair.web.wait_for_line(
        "consul: serving the last-known-good state saved ",
        SERVING_WITHIN,
    );
    assert!(
        line.contains("it is stale until the agent confirms it"),
        "{line}"
    );
    let age: u64 = line
        .split("saved ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no age in {line:?}"));
    assert!(age >= 3600, "saved an hour ago, logged as {age} s ago");
    // Serving, but not what the agent confirmed: not ready, and the metrics say stale.
    let (code, why) = http_get(pair.web_admin, "/ready");
    assert_eq!(code, 503);
    assert!(why.starts_with("stale: "), "{why}");
    let (_, metrics) = http_get(pair.web_admin, "/metrics");
    assert!(metrics.contains("\nsidegate_consul_stale 1\n"), "{metrics}");
    assert_eq!(
        saved_unix(&state),
        an_hour_ago,
        "a stale state saved as new"
    );
}

/// Issue 7's fault: the agent restarted, then stopped, in the middle of traffic. Nothing
/// established is cut, every new connection is carried, and after the restart changes are
/// followed again. The restarted agent reports db's sidecar critical (its check has not run
/// again), as a restarted node's agent does for a while: with no healthy instance left, db's
/// instances are still dialled (Envoy's panic routing under Consul).
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
    let pair = Pair::start_with(
        &agent,
        &dir,
        "web",
        "db",
        json!([upstream("db", port)]),
        false,
    );
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
        eventually_within(FOLLOW_WITHIN, "more connections carried", || {
            if carried_now() >= from + 5 {
                return Ok(());
            }
            Err(Shown(format!(
                "{} carried, {} failed; web:\n{}\ndb:\n{}",
                carried_now(),
                failed.load(Ordering::Relaxed),
                pair.web.output_tail(),
                pair.db.output_tail()
            )))
        });
    };

    more_traffic(0);
    agent.kill();
    more_traffic(carried_now());
    held.ping("agent killed");
    agent.restart();
    agent.wait_until("db critical after the restart", || {
        let healthy = agent.get("/v1/health/connect/db?passing").json();
        healthy.as_array()?.is_empty().then_some(())
    });
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

/// A reload's READY=1 comes within this when the agent never confirms the new settings: the
/// new follower's start-up grace (10 s) and a generous margin for emulation.
const UNCONFIRMED_READY_WITHIN: Duration = Duration::from_secs(60);

/// `sidegate run` following the sidecar of `<service>` on the shared agent as systemd runs
/// it: a test `NOTIFY_SOCKET`, and its admin endpoint for `/config`.
struct Notified {
    sg: ops::Sidegate,
    notify: ops::Notify,
    config: std::path::PathBuf,
    state: std::path::PathBuf,
    admin: SocketAddr,
}

impl Notified {
    fn spawn(dir: &Scratch, service: &str) -> Notified {
        let config = dir.path("sidegate.toml");
        let (state, admin) = (
            state_dir(dir, "state"),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
        );
        std::fs::write(&config, web_toml(service, &state, admin)).unwrap();
        let notify = ops::Notify::bind(dir);
        let env = [("NOTIFY_SOCKET", notify.path.display().to_string())];
        let sg = ops::Sidegate::spawn(&config, &env);
        Notified {
            sg,
            notify,
            config,
            state,
            admin,
        }
    }

    /// Spawned and serving: READY=1 seen.
    fn start(dir: &Scratch, service: &str) -> Notified {
        let mut n = Notified::spawn(dir, service);
        n.notify.expect_line("READY=1");
        n
    }

    /// Its file, following `service`'s sidecar.
    fn toml(&self, service: &str) -> String {
        web_toml(service, &self.state, self.admin)
    }

    /// Reloads `toml`: the file rewritten, SIGHUP, RELOADING=1 seen.
    fn reload_with(&mut self, toml: &str) {
        std::fs::write(&self.config, toml).unwrap();
        self.sg.signal(rustix::process::Signal::HUP);
        self.notify.expect_line("RELOADING=1");
    }

    /// Follows `service`'s sidecar instead.
    fn reload_as(&mut self, service: &str) {
        self.reload_with(&self.toml(service));
    }

    /// The next READY=1's STATUS= line.
    fn ready_status(&mut self, within: Duration) -> String {
        let ready = self
            .notify
            .expect_within("READY=1", within, |m| m.lines().any(|l| l == "READY=1"));
        status_of(&ready).to_owned()
    }

    /// What `/config` says the upstream listeners are.
    fn binds(&self) -> Vec<String> {
        let (code, body) = http_get(self.admin, "/config");
        assert_eq!(code, 200, "{body}");
        let plan: Value = serde_json::from_str(&body).unwrap();
        let upstreams = plan["upstreams"].as_array().unwrap();
        upstreams
            .iter()
            .map(|u| u["bind"].as_str().unwrap().to_owned())
            .collect()
    }

    /// SIGTERM: STOPPING=1, and exit status 0.
    fn stop(&mut self) {
        self.sg.signal(rustix::process::Signal::TERM);
        self.notify.expect_line("STOPPING=1");
        assert_eq!(self.sg.wait_exit(common::IO_TIMEOUT).code(), Some(0));
    }
}

fn web_toml(service: &str, state: &std::path::Path, admin: SocketAddr) -> String {
    sidecar_toml(shared(), &format!("{service}-sidecar-proxy"), state)
        + &format!("[admin]\nlisten = \"{admin}\"\n")
}

fn status_of(message: &str) -> &str {
    message
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or("")
}

/// Registers `service` with a sidecar whose one upstream, to `<service>-db`, listens on
/// `bind`; returns the sidecar's public port (which systemd's STATUS= line shows).
fn register_web(agent: &Agent, service: &str, bind: u16) -> u16 {
    let public = free_port();
    let upstreams = json!([upstream(&format!("{service}-db"), bind)]);
    agent.register(&service_with_sidecar(
        service,
        app("web"),
        public,
        upstreams,
        "",
    ));
    public
}

fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// How systemd's STATUS= line shows a sidecar's public listener on `port`.
fn inbound(port: u16) -> String {
    format!("inbound {}", loopback(port))
}

/// A reload's STATUS= line saying that the agent has not confirmed the new settings, what is
/// served instead, and (by its public listener) whose state that is.
fn assert_unconfirmed(status: &str, serving: &str, public: u16) {
    let said =
        format!("the new [consul] settings are not confirmed by the agent yet; serving {serving}");
    assert!(
        status.contains(&said) && status.contains(&inbound(public)),
        "{status}"
    );
}

/// The new follower has nothing to send until its sidecar is registered, which happens only
/// once RELOADING=1 is seen: a READY=1 sent as soon as the follower restarted would show the
/// previous state.
#[test]
fn a_reloads_ready_comes_once_the_new_followers_state_is_in_service() {
    let agent = shared();
    let dir = Scratch::new("consul-reload-ready");
    let (bind_a, bind_b) = (free_port(), free_port());
    register_web(agent, "web-ready-a", bind_a);
    let mut s = Notified::start(&dir, "web-ready-a");
    assert_eq!(s.binds(), [loopback(bind_a)]);

    s.reload_as("web-ready-b");
    let public_b = register_web(agent, "web-ready-b", bind_b);
    let status = s.ready_status(common::IO_TIMEOUT);
    assert!(
        status.contains(&inbound(public_b)) && status.contains("upstream web-ready-b-db"),
        "READY=1 before the new state was in service: {status}"
    );
    assert!(!status.contains("not confirmed"), "{status}");
    assert_eq!(s.binds(), [loopback(bind_b)]);
    assert!(wait_listening(bind_b, Duration::ZERO));
    s.stop();
}

/// The agent does not have the new registration: READY=1 comes at the end of the wait and
/// says the new settings are not confirmed; the previous state is served until the new
/// follower's comes.
#[test]
fn a_reload_the_agent_does_not_confirm_says_so_and_serves_the_previous_state_meanwhile() {
    let agent = shared();
    let dir = Scratch::new("consul-reload-unconfirmed");
    let (bind_a, bind_b) = (free_port(), free_port());
    let public_a = register_web(agent, "web-unconfirmed-a", bind_a);
    let mut s = Notified::start(&dir, "web-unconfirmed-a");

    s.reload_as("web-unconfirmed-b");
    assert_unconfirmed(
        &s.ready_status(UNCONFIRMED_READY_WITHIN),
        "the previous state",
        public_a,
    );
    assert_eq!(s.binds(), [loopback(bind_a)]);
    s.sg.wait_log("consul: no state from the agent within");
    assert!(wait_listening(bind_a, Duration::ZERO));

    let public_b = register_web(agent, "web-unconfirmed-b", bind_b);
    s.notify.expect("the new state's STATUS=", |m| {
        m.contains(&inbound(public_b))
    });
    assert_eq!(s.binds(), [loopback(bind_b)]);
    s.stop();
}

/// The agent the file now names is unreachable: the new follower serves the saved state at
/// once, and READY=1 says the agent has not confirmed the new settings.
#[test]
fn a_reload_to_an_unreachable_agent_is_ready_with_the_saved_state_said_unconfirmed() {
    let dir = Scratch::new("consul-reload-offline");
    let bind = free_port();
    let public = register_web(shared(), "web-offline", bind);
    let mut s = Notified::start(&dir, "web-offline");
    let dead = format!("http://{}", common::dead_addr());
    let toml = s.toml("web-offline").replace(&shared().address(), &dead);
    s.reload_with(&toml);
    let status = s.ready_status(UNCONFIRMED_READY_WITHIN);
    assert_unconfirmed(&status, "the last-known-good state", public);
    assert_eq!(s.binds(), [loopback(bind)]);
    s.stop();
}

/// A SIGTERM while a reload waits for the agent ends the wait: STOPPING=1 with no READY=1
/// before it (a wait that ran its course would send one), and exit status 0.
#[test]
fn sigterm_while_a_reload_waits_for_the_agent_stops_at_once_with_status_0() {
    let dir = Scratch::new("consul-reload-stop");
    register_web(shared(), "web-stop-a", free_port());
    let mut s = Notified::start(&dir, "web-stop-a");
    s.reload_as("web-stop-b");
    let from = s.notify.seen.len();
    s.stop();
    let since = &s.notify.seen[from..];
    assert!(
        since.iter().all(|m| !m.lines().any(|l| l == "READY=1")),
        "{since:?}"
    );
}

/// A SIGHUP before the first state is neither lost nor said to be ignored: the log says it
/// will run once serving, and it does (RELOADING=1 after the first READY=1).
#[test]
fn a_sighup_while_waiting_for_the_first_state_reloads_once_serving() {
    let agent = shared();
    let dir = Scratch::new("consul-reload-early");
    let mut s = Notified::spawn(&dir, "web-early");
    s.notify.expect("the wait for the first state", |m| {
        m.contains("STATUS=waiting for the first state")
    });
    s.sg.signal(rustix::process::Signal::HUP);
    s.sg.wait_log("reload requested while waiting for the first state from the Consul agent; it will run once serving");
    let public = register_web(agent, "web-early", free_port());
    s.notify.expect_line("READY=1");
    s.notify.expect_line("RELOADING=1");
    let status = s.ready_status(common::IO_TIMEOUT);
    assert!(status.contains(&inbound(public)), "{status}");
    assert!(s.sg.log().iter().all(|l| !l.contains("reload ignored")));
    s.stop();
}

/// What the last-known-good state in `state_dir` holds, as compact JSON; empty when there
/// is none yet.
fn saved_json(state_dir: &std::path::Path) -> String {
    sidegate::consul::state_dir::read(state_dir, sidegate::consul::follow::STATE_FILE)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A state from the agent that could not be put in service (one of its upstreams' ports is
/// taken) must not become the last-known-good state: the next start with the agent away
/// would serve it. Only what was applied is saved. (Saved before applying, this failed: the
/// state file held the taken port.)
#[test]
fn a_state_that_failed_to_apply_is_not_saved_as_last_known_good() {
    let agent = shared();
    let dir = Scratch::new("unapplied-not-saved");
    let first = free_port();
    let upstream = |port: u16, name: &str| json!({"DestinationName": name, "LocalBindPort": port});
    let mut pair = Pair::start(
        agent,
        &dir,
        "unapplied-web",
        "unapplied-db",
        json!([upstream(first, "unapplied-db")]),
    );
    let state = dir.path("unapplied-web-state");
    let first_saved = format!("\"LocalBindPort\":{first}");
    agent.wait_until("the first state saved", || {
        saved_json(&state).contains(&first_saved).then_some(())
    });

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    pair.reregister_web(
        agent,
        json!([
            upstream(first, "unapplied-db"),
            upstream(port, "unapplied-other")
        ]),
    );
    pair.web
        .wait_for_line("new mesh state not applied", FOLLOW_WITHIN);
    // A save comes before or right after the apply; give a late one time to show.
    std::thread::sleep(Duration::from_millis(500));
    let saved = saved_json(&state);
    assert!(
        saved.contains(&first_saved),
        "the applied state stays saved"
    );
    assert!(
        !saved.contains(&format!("\"LocalBindPort\":{port}")),
        "the state that failed to apply was saved"
    );
    assert!(
        wait_listening(first, Duration::from_secs(1)),
        "still serving"
    );
    drop(taken);
}

/// The pid of the `sidegate run` started on `config` (found by its command line).
fn pid_of(config: &std::path::Path) -> u32 {
    let wanted = config.display().to_string();
    let pids = std::fs::read_dir("/proc").unwrap().flatten();
    pids.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&b"run".as_slice()) && args.contains(&wanted.as_bytes())
        })
        .unwrap_or_else(|| panic!("no sidegate runs on {wanted}"))
}

/// Threads of process `pid`, and its TCP connections to `agent` (established, from
/// /proc/<pid>/net/tcp whose socket inodes are among the process's descriptors).
fn threads_and_agent_connections(pid: u32, agent: SocketAddr) -> (usize, usize) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            let l = l.display().to_string();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let port = format!("{:04X}", agent.port());
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    let connections = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| {
            f.len() > 9
                && f[2].ends_with(&format!(":{port}"))
                && f[3] == "01"
                && inodes.contains(f[9])
        })
        .count();
    (threads, connections)
}

/// A reload replaces the Consul follower; the one it replaces must end with its watches,
/// whose blocking queries would otherwise hold a thread and an agent connection each for up
/// to 5 minutes (every reload adding a follower's worth, past the agent's limit of 200
/// connections per client). Before the old follower's client was shut down, 8 reloads here
/// took threads and agent connections up by about 5 per reload.
#[test]
fn reloads_do_not_leak_the_replaced_followers_threads_or_agent_connections() {
    let agent = shared();
    let dir = Scratch::new("consul-reload-leak");
    register_web(agent, "web-leak", free_port());
    let mut s = Notified::start(&dir, "web-leak");
    let pid = pid_of(&s.config);
    let agent_addr: SocketAddr = agent
        .address()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    // Every watch has asked once and blocks now.
    std::thread::sleep(Duration::from_secs(1));
    let (threads, connections) = threads_and_agent_connections(pid, agent_addr);
    assert!(
        connections > 0,
        "the follower's watches hold agent connections"
    );
    const RELOADS: usize = 8;
    for _ in 0..RELOADS {
        s.reload_as("web-leak");
        s.ready_status(UNCONFIRMED_READY_WITHIN);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (threads_after, connections_after) = threads_and_agent_connections(pid, agent_addr);
    // Slack for a watch between two requests, and the authorizer's own connection.
    assert!(
        threads_after <= threads + 3,
        "threads {threads} → {threads_after} after {RELOADS} reloads"
    );
    assert!(
        connections_after <= connections + 3,
        "agent connections {connections} → {connections_after} after {RELOADS} reloads"
    );
    s.stop();
}

/// With `[consul]`, nothing saved and the agent down, there is nothing to serve yet — but
/// the admin endpoint opens at once, so that `/ready` says why (503) and the watch errors
/// can be scraped exactly when they matter; the log does not claim to serve a state it never
/// received. (Before, the endpoint opened only with the first state: never, here.)
#[test]
fn with_the_agent_down_and_nothing_saved_the_admin_endpoint_says_why_it_is_not_ready() {
    let dir = Scratch::new("consul-down-admin");
    let (agent_port, admin) = (free_port(), SocketAddr::from(([127, 0, 0, 1], free_port())));
    let config = dir.path("sidegate.toml");
    let toml = format!(
        "[consul]\naddress = \"127.0.0.1:{agent_port}\"\nsidecar_service_id = \"web-sidecar-proxy\"\nstate_dir = \"{}\"\n[admin]\nlisten = \"{admin}\"\n",
        state_dir(&dir, "state").display()
    );
    std::fs::write(&config, toml).unwrap();
    let mut sg = ops::Sidegate::spawn(&config, &[]);
    let unreachable = sg.wait_log("retrying with back-off");
    assert!(
        unreachable.contains("nothing to serve yet") && !unreachable.contains("last state"),
        "{unreachable}"
    );
    assert!(
        wait_listening(admin.port(), SERVING_WITHIN),
        "the admin endpoint never opened; log: {:#?}",
        sg.log()
    );
    let (code, body) = http_get(admin, "/ready");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("waiting for the first state from the Consul agent")
            && body.contains(&format!("127.0.0.1:{agent_port}")),
        "{body}"
    );
    let (code, metrics) = http_get(admin, "/metrics");
    assert_eq!(code, 200);
    let errors = metrics
        .lines()
        .find(|l| l.starts_with("sidegate_consul_watch_errors_total "))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_ne!(errors, "sidegate_consul_watch_errors_total 0", "{metrics}");
    sg.signal(rustix::process::Signal::TERM);
    assert_eq!(sg.wait_exit(common::IO_TIMEOUT).code(), Some(0));
}

/// One upstream whose port another process holds must not take the sidecar down at start:
/// the inbound listener and the other upstream serve, `/ready` stays 200 and names the
/// listener that is not bound, `/config` and `/metrics` report it, and it is bound once the
/// port is free. (Before, the start failed with exit 71.)
#[test]
fn an_upstream_whose_port_is_taken_at_start_is_reported_and_retried_while_the_rest_serves() {
    let agent = shared();
    let dir = Scratch::new("consul-upstream-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (busy, free) = (taken.local_addr().unwrap().port(), free_port());
    let public = free_port();
    let register = |upstreams: Value| {
        agent.register(&service_with_sidecar(
            "web-taken",
            app("web"),
            public,
            upstreams,
            "",
        ));
    };
    register(json!([
        upstream("web-taken-db", free),
        upstream("web-taken-other", busy)
    ]));
    let s = Notified::start(&dir, "web-taken");
    assert!(wait_listening(public, SERVING_WITHIN), "inbound serves");
    assert!(
        wait_listening(free, SERVING_WITHIN),
        "the other upstream serves"
    );
    let busy_at = loopback(busy);
    let (code, ready) = http_get(s.admin, "/ready");
    assert_eq!(code, 200, "{ready}");
    assert!(
        ready.contains("not bound") && ready.contains(&busy_at),
        "{ready}"
    );
    let (code, config) = http_get(s.admin, "/config");
    assert_eq!(code, 200);
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["unbound_listeners"][0]["listener"],
        format!("upstream {busy_at}"),
        "{config:#}"
    );
    let failures =
        format!("sidegate_listener_bind_failures_total{{listener=\"upstream {busy_at}\"}}");
    assert!(common::metric(s.admin, &failures) >= 1);
    assert_eq!(common::metric(s.admin, "sidegate_listeners_unbound"), 1);

    // A change while it is not bound still applies: only a listener new to the change must
    // bind for it to apply.
    let third = free_port();
    register(json!([
        upstream("web-taken-db", free),
        upstream("web-taken-other", busy),
        upstream("web-taken-third", third)
    ]));
    assert!(wait_listening(third, FOLLOW_WITHIN), "the change applied");
    assert_eq!(common::metric(s.admin, "sidegate_listeners_unbound"), 1);

    drop(taken);
    assert!(
        wait_listening(busy, RETRY_WITHIN),
        "bound once the port is free"
    );
    // The socket listens a moment before the retry records it as bound: poll, bounded.
    eventually_within(common::IO_TIMEOUT, "/ready without the listener", || {
        let (_, ready) = http_get(s.admin, "/ready");
        if ready == "ready\n" {
            Ok(())
        } else {
            Err(ready)
        }
    });
    assert_eq!(common::metric(s.admin, "sidegate_listeners_unbound"), 0);
    let mut s = s;
    s.stop();
}

/// Binding is retried every 5 s; the margin is for a busy host.
const RETRY_WITHIN: Duration = Duration::from_secs(15);
