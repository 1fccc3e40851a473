//! sidegate with a real Consul agent's Connect CA (Consul 1.8.7, `-dev` agents on loopback),
//! configured from files: leaves, keys and roots issued by the agent carry traffic between
//! sidegate sidecars; a sidecar of another cluster is refused; old and new leaves interoperate
//! during a CA rotation; WAN-federated datacenters' certificates (dc2's intermediate) carry
//! traffic through sidegate gateways registered in Consul. These need no `[consul]` source.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::consul;

use std::sync::OnceLock;

use common::apps::{app, echo_intact};
use common::{eventually, free_port, routed, start, IO_TIMEOUT};
use consul::files::{header, inbound, upstream, ALLOW_WEB_ONLY};
use consul::traffic::{connect, echoes, refused};
use consul::{service_with_sidecar, Agent, Scratch};
use serde_json::json;

/// One dev agent for the tests that do not change the CA.
fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| Agent::dev("dc1"))
}

#[test]
fn web_and_db_sidecars_carry_traffic_with_consul_issued_certificates() {
    let agent = agent();
    let dir = Scratch::new("consul-mesh");
    let db_app = app("db");
    let db = inbound(
        agent,
        &agent.identity_files("db", &dir.0),
        db_app,
        ALLOW_WEB_ONLY,
    );
    let db_in = db.inbound_addr.unwrap();
    let port = free_port();
    // The catalog as Consul sees it: db's sidecar at sidegate's inbound, web's with the upstream.
    agent.register(&service_with_sidecar(
        "db",
        db_app,
        db_in.port(),
        json!([]),
        "",
    ));
    agent.register(&service_with_sidecar(
        "web",
        app("web"),
        free_port(),
        json!([{"DestinationName": "db", "LocalBindPort": port}]),
        "",
    ));
    let files = agent.identity_files("web", &dir.0);
    let web = upstream(agent, &files, "db", port, db_in);

    // The identity sidegate loaded is the one Consul says it issued.
    let td = agent.roots().trust_domain;
    assert_eq!(
        files.uri,
        format!("spiffe://{td}/ns/default/dc/dc1/svc/web")
    );
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let id =
        sidegate::tls::Identity::from_pem(&read(&files.cert), &read(&files.key), &read(&files.ca))
            .unwrap();
    assert_eq!(id.spiffe_id.to_string(), files.uri);

    // 4 MiB each way and the app's sign-off after the half-close.
    let rest = echo_intact(connect(port), 4 << 20, IO_TIMEOUT);
    assert_eq!(rest, b"app:db\n");
    assert_eq!(web.metrics.upstream.handshake_failures.get(), 0);
    assert_eq!(db.metrics.inbound.denied.get(), 0);

    // `api` holds a valid leaf of the same CA, but db's intentions allow only web.
    let api_port = free_port();
    let _api = upstream(
        agent,
        &agent.identity_files("api", &dir.0),
        "db",
        api_port,
        db_in,
    );
    assert!(refused(api_port));
    eventually("api denied", || db.metrics.inbound.denied.get() == 1);
}

#[test]
fn a_sidecar_of_another_consul_cluster_is_refused() {
    // Another cluster: another CA and trust domain, with its own `db`.
    let other = Agent::dev("dc1");
    let dir = Scratch::new("consul-other");
    assert_ne!(other.roots().trust_domain, agent().roots().trust_domain);
    let foreign_db = inbound(&other, &other.identity_files("db", &dir.0), app("db"), "");
    let port = free_port();
    let web_files = agent().identity_files("web", &dir.0);
    let web = upstream(
        agent(),
        &web_files,
        "db",
        port,
        foreign_db.inbound_addr.unwrap(),
    );
    assert!(refused(port));
    eventually("handshake refused", || {
        web.metrics.upstream.handshake_failures.get() == 1
    });
    eventually("the foreign db refused web too", || {
        foreign_db.metrics.inbound.handshake_failures.get() == 1
    });
}

/// A CA rotation in flight: leaves of the old root (peers that have not picked up the new
/// roots yet) and of the new root (whose chain carries the new root cross-signed by the old
/// one, as Consul issues it) carry traffic both ways.
#[test]
fn old_and_new_leaves_interoperate_during_a_ca_rotation() {
    // Its own agent: a rotation would disturb the other tests' certificates.
    let agent = Agent::dev("dc1");
    let dir = Scratch::new("consul-rotation");
    let old_db = inbound(&agent, &agent.identity_files("db", &dir.0), app("db"), "");
    let old_api_files = agent.identity_files("api", &dir.0);

    let new = agent.rotate_ca();
    assert_eq!(new.pems.len(), 2, "the old root stays trusted");
    // Services asked for a leaf only now get one of the new root at once (renewals of
    // existing leaves follow within Consul's 30 s jitter).
    let new_orders = inbound(
        &agent,
        &agent.identity_files("orders", &dir.0),
        app("orders"),
        "",
    );
    let web_files = agent.identity_files("web", &dir.0);
    let web_chain = std::fs::read_to_string(&web_files.cert).unwrap();
    assert_eq!(
        web_chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + cross-signed root"
    );

    // New leaf (trusting both roots) → old leaf trusting only the old root.
    let port = free_port();
    let web = upstream(&agent, &web_files, "db", port, old_db.inbound_addr.unwrap());
    assert!(echoes(port, b"new to old"));
    // Old leaf trusting only the old root (its files were written before the rotation) →
    // new leaf.
    let api_port = free_port();
    let api = start(&format!(
        "{}[[sidecar.upstreams]]\ndestination_name = \"orders\"\nlocal_bind_port = {api_port}\n\
         [[catalog.services]]\nname = \"orders\"\ninstances = [\"{}\"]\n",
        header(&agent, &old_api_files),
        new_orders.inbound_addr.unwrap()
    ));
    assert!(echoes(api_port, b"old to new"));
    for s in [&web, &api] {
        assert_eq!(s.metrics.upstream.handshake_failures.get(), 0);
    }
    for s in [&old_db, &new_orders] {
        assert_eq!(s.metrics.inbound.handshake_failures.get(), 0);
    }
}

/// dc1 and dc2 WAN-federated (dc2's CA an intermediate of dc1's): web in dc1 reaches db in
/// dc2 through sidegate mesh gateways registered in Consul, in `local` mode (dc1's gateway,
/// then dc2's) and `remote` mode (dc2's gateway directly), with the gateways' addresses as
/// Consul's catalog gives them across the federation.
#[test]
fn cross_datacenter_upstreams_through_sidegate_gateways_with_federated_certificates() {
    let dc1 = Agent::dev("dc1");
    let dc2 = Agent::secondary("dc2", &dc1);
    let dir = Scratch::new("consul-wan");
    let td = dc1.roots().trust_domain;

    let db_files = dc2.identity_files("db", &dir.0);
    assert_eq!(
        db_files.uri,
        format!("spiffe://{td}/ns/default/dc/dc2/svc/db")
    );
    let chain = std::fs::read_to_string(&db_files.cert).unwrap();
    assert!(
        chain.matches("BEGIN CERTIFICATE").count() > 1,
        "dc2 signs with an intermediate"
    );
    let db_app = app("db");
    let db = inbound(&dc2, &db_files, db_app, "");
    let db_in = db.inbound_addr.unwrap();
    dc2.register(&service_with_sidecar(
        "db",
        db_app,
        db_in.port(),
        json!([]),
        "",
    ));

    let gateway = |dc: &str, routes: &str| {
        start(&format!(
            "[mesh]\ndatacenter = \"{dc}\"\ntrust_domain = \"{td}\"\n\
             [gateway]\nlisten = [\"127.0.0.1:0\"]\n{routes}"
        ))
    };
    let gw2 = gateway(
        "dc2",
        &format!("[[catalog.services]]\nname = \"db\"\ninstances = [\"{db_in}\"]\n"),
    );
    let gw2_addr = gw2.gateway_addrs[0];
    dc2.register_mesh_gateway("mesh-gateway", gw2_addr, gw2_addr, &["lan"]);
    let gw2_wan = dc1.mesh_gateway_wan("dc2");
    assert_eq!(gw2_wan, vec![gw2_addr], "dc2's gateway as dc1 sees it");
    let gw1 = gateway(
        "dc1",
        &format!(
            "[[catalog.gateways]]\ndatacenter = \"dc2\"\nwan = [\"{}\"]\n",
            gw2_wan[0]
        ),
    );
    let gw1_addr = gw1.gateway_addrs[0];
    dc1.register_mesh_gateway("mesh-gateway", gw1_addr, gw1_addr, &["lan"]);

    let (local, remote) = (free_port(), free_port());
    let upstream = |port: u16, mode: &str| {
        format!(
            "[[sidecar.upstreams]]\ndestination_name = \"db\"\ndatacenter = \"dc2\"\n\
             local_bind_port = {port}\nmesh_gateway = {{ mode = \"{mode}\" }}\n"
        )
    };
    let web_files = dc1.identity_files("web", &dir.0);
    let web = start(&format!(
        "{}{}{}[[catalog.gateways]]\nlan = [\"{gw1_addr}\"]\n\
         [[catalog.gateways]]\ndatacenter = \"dc2\"\nwan = [\"{}\"]\n",
        header(&dc1, &web_files),
        upstream(local, "local"),
        upstream(remote, "remote"),
        gw2_wan[0]
    ));

    assert_eq!(
        echo_intact(connect(local), 1 << 20, IO_TIMEOUT),
        b"app:db\n"
    );
    assert_eq!(
        (routed(&gw1), routed(&gw2)),
        (1, 1),
        "local: dc1's gateway, then dc2's"
    );
    assert_eq!(
        echo_intact(connect(remote), 1 << 20, IO_TIMEOUT),
        b"app:db\n"
    );
    assert_eq!(
        (routed(&gw1), routed(&gw2)),
        (1, 2),
        "remote: dc2's gateway only"
    );
    assert_eq!(web.metrics.upstream.handshake_failures.get(), 0);
}
