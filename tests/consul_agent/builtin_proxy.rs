//! sidegate against `consul connect proxy`, Consul's own built-in proxy (Consul 1.8.7): an
//! independent implementation of the mesh's mTLS, with Consul leaves and authorization through
//! the agent's intentions. Both directions, with sidegate configured from files holding the
//! agent's certificates and with sidegate following the agent (`[consul]`):
//! (a) sidegate's upstream listener → the built-in proxy's public listener → the app;
//! (b) the built-in proxy's upstream listener → sidegate's inbound listener → the app. The
//! built-in proxy sends no SNI and does not carry a half-close, so exchanges are echoes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::consul;

use std::net::SocketAddr;
use std::sync::OnceLock;

use common::apps::{app, pattern};
use common::{eventually, free_port};
use consul::files::{inbound, upstream, ALLOW_WEB_ONLY};
use consul::traffic::{echoes, refused};
use consul::{service_with_sidecar, sidecar_toml, Agent, BuiltinProxy, Scratch, Sidegate};
use serde_json::json;

/// One dev agent for every test here: each test has its own destination service, so the
/// intentions one sets do not touch another.
fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| Agent::dev("dc1"))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `destination`'s app behind the built-in proxy (`-sidecar-for`), which lets in only `web`
/// by the agent's intentions.
fn behind_builtin_proxy(agent: &Agent, destination: &str) -> (BuiltinProxy, SocketAddr) {
    let public = loopback(free_port());
    agent.register(&service_with_sidecar(
        destination,
        app("app"),
        public.port(),
        json!([]),
        "",
    ));
    agent.set_intention("*", destination, "deny");
    agent.set_intention("web", destination, "allow");
    assert!(agent.authorized("web", destination) && !agent.authorized("api", destination));
    (
        BuiltinProxy::sidecar_for(agent, destination, public.port()),
        public,
    )
}

/// The built-in proxy refused `api` and logged why (the agent's answer).
fn denied_by_the_agent(proxy: &mut BuiltinProxy, destination: &str) {
    let line = proxy.wait_for_log("authz call denied");
    assert!(line.contains(destination), "{line}");
}

/// (a), file source.
#[test]
fn our_upstream_reaches_the_app_through_consul_connect_proxy() {
    let agent = agent();
    let dir = Scratch::new("builtin-in-file");
    let (mut proxy, public) = behind_builtin_proxy(agent, "ledger");
    let port = free_port();
    let web = upstream(
        agent,
        &agent.identity_files("web", &dir.0),
        "ledger",
        port,
        public,
    );
    assert!(echoes(port, &pattern(2_000_000)));
    assert_eq!(web.metrics.upstream.handshake_failures.get(), 0);

    let api_port = free_port();
    let _api = upstream(
        agent,
        &agent.identity_files("api", &dir.0),
        "ledger",
        api_port,
        public,
    );
    assert!(refused(api_port));
    denied_by_the_agent(&mut proxy, "ledger");
}

/// (b), file source: sidegate's inbound authorizes by its file's intentions.
#[test]
fn consul_connect_proxy_reaches_the_app_through_our_inbound() {
    let agent = agent();
    let dir = Scratch::new("builtin-out-file");
    let billing_app = app("billing");
    let files = agent.identity_files("billing", &dir.0);
    let billing = inbound(agent, &files, billing_app, ALLOW_WEB_ONLY);
    let billing_in = billing.inbound_addr.unwrap();
    // The built-in proxy finds sidegate's inbound listener in the catalog.
    agent.register(&service_with_sidecar(
        "billing",
        billing_app,
        billing_in.port(),
        json!([]),
        "",
    ));

    let port = free_port();
    let _web = BuiltinProxy::upstream(agent, "web", "billing", port);
    assert!(echoes(port, &pattern(2_000_000)));
    assert_eq!(billing.metrics.inbound.handshake_failures.get(), 0);
    assert_eq!(billing.metrics.inbound.denied.get(), 0);

    let evil_port = free_port();
    let _evil = BuiltinProxy::upstream(agent, "evil", "billing", evil_port);
    assert!(refused(evil_port));
    eventually("evil denied", || billing.metrics.inbound.denied.get() == 1);
}

/// A sidegate sidecar for `service` following the agent, with these upstreams.
fn following(
    agent: &Agent,
    dir: &Scratch,
    service: &str,
    upstreams: serde_json::Value,
) -> Sidegate {
    let (public, binds) = (free_port(), upstreams.clone());
    agent.register(&service_with_sidecar(
        service,
        app("app"),
        public,
        upstreams,
        "",
    ));
    let state = dir.path(&format!("{service}-state"));
    std::fs::create_dir_all(&state).unwrap();
    let toml = sidecar_toml(agent, &format!("{service}-sidecar-proxy"), &state);
    let mut sidecar = Sidegate::run(service, &dir.0, &toml);
    let mut ports = vec![public];
    ports.extend(
        binds
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["LocalBindPort"].as_u64().unwrap() as u16),
    );
    sidecar.serving(&ports);
    sidecar
}

/// (a), `[consul]` source: sidegate's upstream finds the built-in proxy in the catalog.
#[test]
fn our_upstream_following_the_agent_reaches_consul_connect_proxy() {
    let agent = agent();
    let dir = Scratch::new("builtin-in-consul");
    let (mut proxy, _) = behind_builtin_proxy(agent, "orders");
    let (port, api_port) = (free_port(), free_port());
    let _web = following(
        agent,
        &dir,
        "web",
        json!([{"DestinationName": "orders", "LocalBindPort": port}]),
    );
    assert!(echoes(port, &pattern(2_000_000)));
    let _api = following(
        agent,
        &dir,
        "api",
        json!([{"DestinationName": "orders", "LocalBindPort": api_port}]),
    );
    assert!(refused(api_port));
    denied_by_the_agent(&mut proxy, "orders");
}

/// (b), `[consul]` source: sidegate's inbound asks the agent, as the built-in proxy does.
#[test]
fn consul_connect_proxy_reaches_our_inbound_following_the_agent() {
    let agent = agent();
    let dir = Scratch::new("builtin-out-consul");
    agent.set_intention("*", "stock", "deny");
    agent.set_intention("web", "stock", "allow");
    let _stock = following(agent, &dir, "stock", json!([]));

    let port = free_port();
    let _web = BuiltinProxy::upstream(agent, "web", "stock", port);
    assert!(echoes(port, &pattern(2_000_000)));
    let evil_port = free_port();
    let _evil = BuiltinProxy::upstream(agent, "evil", "stock", evil_port);
    assert!(refused(evil_port));
}
