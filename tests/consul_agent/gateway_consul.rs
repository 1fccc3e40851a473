//! A mesh gateway following a real Consul agent (1.8.7) routes as Envoy gateways do: the
//! subsets of its partition's `service-resolver` entries — each subset's name to the
//! instances its filter selects (the filter sees the sidecar's meta, which Consul copies from
//! the service), the plain name to the default subset's, and no other subset label, followed
//! live — and another datacenter through that datacenter's gateways found by kind, whatever
//! name they were registered under.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::consul;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use common::apps::app;
use common::{eventually_within, free_port, http_get, metric, tls_connect};
use consul::{gateway_toml, service_with_sidecar, sidecar_toml, Agent, Scratch, Sidegate};
use serde_json::{json, Value};

const FOLLOW_WITHIN: Duration = Duration::from_secs(20);

/// The endpoints of the gateway's route for exactly `sni`, as its `/config` shows them.
fn route(admin: SocketAddr, sni: &str) -> Option<Value> {
    let (code, body) = http_get(admin, "/config");
    assert_eq!(code, 200, "{body}");
    let plan: Value = serde_json::from_str(&body).unwrap();
    let routes = plan["gateway"]["routes"].as_array().unwrap().clone();
    routes
        .into_iter()
        .find(|r| r["match"] == sni)
        .map(|r| r["endpoints"].clone())
}

#[test]
fn a_gateway_following_consul_routes_each_resolver_subset_to_its_instances() {
    let agent = Agent::dev("dc1");
    let dir = Scratch::new("consul-gateway-subsets");
    let state = |name: &str| dir.path(&format!("state-{name}"));
    let lan = SocketAddr::from(([127, 0, 0, 1], free_port()));
    agent.register_mesh_gateway("mesh-gateway", lan, lan, &["lan"]);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = gateway_toml(&agent, "mesh-gateway", &state("gateway"))
        + &format!("[admin]\nlisten = \"{admin}\"\n");
    let mut gateway = Sidegate::run("gateway", &dir.0, &toml);
    gateway.serving(&[lan.port(), admin.port()]);
    gateway.plan(admin);

    // Two instances of db, each a sidegate sidecar in front of its own app; the version is
    // the service's meta (the sidecar registration inherits it).
    let mut sidecars = Vec::new();
    let mut public = Vec::new();
    for (version, app_name) in [("v1", "db-v1"), ("v2", "db-v2")] {
        let port = free_port();
        let mut reg = service_with_sidecar("db", app(app_name), port, json!([]), "");
        reg["ID"] = json!(app_name);
        reg["Meta"] = json!({ "version": version });
        agent.register(&reg);
        let id = format!("{app_name}-sidecar-proxy");
        let mut s = Sidegate::run(
            app_name,
            &dir.0,
            &sidecar_toml(&agent, &id, &state(app_name)),
        );
        s.serving(&[port]);
        sidecars.push(s);
        public.push(json!([format!("127.0.0.1:{port}")]));
    }
    agent.config_entry(&json!({
        "Kind": "service-resolver", "Name": "db", "DefaultSubset": "v1",
        "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"},
        },
    }));

    let td = agent.roots().trust_domain;
    let sni = |subset: &str| format!("{subset}db.default.dc1.internal.{td}");
    eventually_within(FOLLOW_WITHIN, "db's subset routes", || {
        let seen = [sni(""), sni("v1."), sni("v2.")].map(|n| route(admin, &n));
        let want = [&public[0], &public[0], &public[1]].map(|p| Some(p.clone()));
        if seen == want {
            Ok(())
        } else {
            Err(seen)
        }
    });
    assert_eq!(route(admin, &sni("v3.")), None);

    // Real mTLS through the gateway: each name reaches the app of its subset's instance.
    let files = agent.identity_files("probe", &dir.0);
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let identity = sidegate::tls::Identity::from_pem(
        &read(&files.cert),
        &read(&files.key),
        agent.roots().pems.concat().as_bytes(),
    )
    .unwrap();
    let db_id =
        sidegate::names::SpiffeId::parse(&format!("spiffe://{td}/ns/default/dc/dc1/svc/db"))
            .unwrap();
    let probe = sidegate::tls::configs::client_config(&identity, &db_id).unwrap();
    let answer = |name: &str| -> std::io::Result<String> {
        let mut tls = tls_connect(lan, name, &probe)?;
        tls.write_all(b"hi ")?;
        tls.conn.send_close_notify();
        tls.flush()?;
        tls.sock.shutdown(Shutdown::Write)?;
        let mut got = String::new();
        match tls.read_to_string(&mut got) {
            Ok(_) => Ok(got),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(got),
            Err(e) => Err(e),
        }
    };
    for _ in 0..2 {
        assert_eq!(answer(&sni("")).unwrap(), "hi app:db-v1\n");
        assert_eq!(answer(&sni("v1.")).unwrap(), "hi app:db-v1\n");
        assert_eq!(answer(&sni("v2.")).unwrap(), "hi app:db-v2\n");
    }
    // A subset no resolver defines: refused at the gateway and counted as such.
    let unknown = || {
        metric(
            admin,
            "sidegate_client_hello_total{outcome=\"unknown_subset\"}",
        )
    };
    assert_eq!(unknown(), 0);
    assert!(answer(&sni("v3.")).is_err_or_empty());
    eventually_within(FOLLOW_WITHIN, "unknown_subset counted", || unknown() == 1);

    // Followed live: the plain name moves to the new default subset.
    agent.config_entry(&json!({
        "Kind": "service-resolver", "Name": "db", "DefaultSubset": "v2",
        "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"},
        },
    }));
    eventually_within(FOLLOW_WITHIN, "the plain name to v2", || {
        route(admin, &sni("")) == Some(public[1].clone())
    });
    assert_eq!(answer(&sni("")).unwrap(), "hi app:db-v2\n");
    assert!(gateway.is_running() && sidecars.iter_mut().all(Sidegate::is_running));
}

/// A connection the gateway refused: the handshake fails, or the stream ends with nothing.
trait Refused {
    fn is_err_or_empty(&self) -> bool;
}

impl Refused for std::io::Result<String> {
    fn is_err_or_empty(&self) -> bool {
        self.as_ref().map_or(true, String::is_empty)
    }
}

/// dc2's gateways registered as `edge-gw` and `edge-gw-b` (kind `mesh-gateway`): dc1's
/// sidegate gateway routes dc2's names to both WAN addresses, which it can only have found by
/// kind (it is configured with no gateway name at all, so `mesh-gateway` would be the name).
#[test]
fn a_gateway_finds_another_datacenters_gateways_by_kind() {
    let dc1 = Agent::dev("dc1");
    let dc2 = Agent::secondary("dc2", &dc1);
    let dir = Scratch::new("consul-gateway-kind");
    let addr = |host: u8| SocketAddr::from(([127, 0, 0, host], free_port()));
    let (wan_a, wan_b) = (addr(2), addr(2));
    dc2.register_mesh_gateway_named("edge-gw", "edge-a", addr(1), wan_a, &["wan"]);
    dc2.register_mesh_gateway_named("edge-gw-b", "edge-b", addr(1), wan_b, &["wan"]);
    let lan = addr(1);
    dc1.register_mesh_gateway("mesh-gateway", lan, addr(2), &["lan"]);
    let admin = addr(1);
    let toml = gateway_toml(&dc1, "mesh-gateway", &dir.path("state"))
        + &format!("[admin]\nlisten = \"{admin}\"\n");
    let mut gateway = Sidegate::run("gateway", &dir.0, &toml);
    gateway.serving(&[lan.port(), admin.port()]);
    gateway.plan(admin);

    let td = dc1.roots().trust_domain;
    let pattern = format!("*.dc2.internal.{td}");
    let mut want = vec![wan_a.to_string(), wan_b.to_string()];
    want.sort();
    eventually_within(FOLLOW_WITHIN, "dc2's gateways by kind", || {
        let seen = route(admin, &pattern);
        let mut dial: Vec<String> = seen
            .iter()
            .flat_map(|v| v.as_array().cloned().unwrap_or_default())
            .filter_map(|e| Some(e.as_str()?.to_owned()))
            .collect();
        dial.sort();
        if dial == want {
            Ok(())
        } else {
            Err(seen)
        }
    });
    assert!(gateway.is_running(), "{}", gateway.output_tail());
}
