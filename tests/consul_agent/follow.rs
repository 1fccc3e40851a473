//! The Consul source's library parts against a real agent (Consul 1.8.7, `-dev`, loopback):
//! `consul::follow` turns a registered sidecar into a complete snapshot and saves it; the
//! index rules carry it across an agent that restarts with a fresh state; the agent's
//! authorization answers (and, with the agent gone, the last ones) reach the inbound path;
//! errors name the endpoint and the likely cause.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::consul;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::apps::app;
use common::{eventually_within, free_port};
use consul::{service_with_sidecar, Agent, Scratch};
use serde_json::json;
use sidegate::consul::authorizer::Authorizer;
use sidegate::consul::client::Client;
use sidegate::consul::{follow, saved_snapshot, Options, Settings, Status};
use sidegate::mesh::intentions::Action;
use sidegate::mesh::snapshot::Snapshot;
use std::sync::Arc;

/// The agent answers at once; this bounds start-up and every change.
const WITHIN: Duration = Duration::from_secs(20);

fn settings(agent_address: &str, sidecar: &str, state: Option<&std::path::Path>) -> Settings {
    let mut text =
        format!("[consul]\naddress = \"{agent_address}\"\nsidecar_service_id = \"{sidecar}\"\n");
    if let Some(dir) = state {
        text.push_str(&format!("state_dir = \"{}\"\n", dir.display()));
    }
    let config = sidegate::config::parse_with_env(&text, &|_| None).unwrap();
    config.consul.unwrap()
}

fn base() -> Snapshot {
    sidegate::config::parse_with_env("[consul]\nsidecar_service_id = \"x\"\n", &|_| None)
        .unwrap()
        .snapshot
}

/// Follows and returns the receiving end; test options shorten back-off and the start-up
/// grace so failures show quickly.
fn start(s: Settings) -> (sidegate::consul::Follower, mpsc::Receiver<Snapshot>) {
    let (tx, rx) = mpsc::sync_channel(16);
    let options = Options {
        startup_grace: Duration::from_secs(2),
        ..Options::default()
    };
    let follower = follow(
        s,
        base(),
        options,
        Arc::new(Status::default()),
        Box::new(move |snap| tx.send(snap).is_ok()),
    )
    .unwrap();
    (follower, rx)
}

/// The next snapshot for which `cond` holds, within `WITHIN`.
fn next_where(
    rx: &mpsc::Receiver<Snapshot>,
    what: &str,
    cond: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = Instant::now() + WITHIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(s) if cond(&s) => return s,
            Ok(_) => {}
            Err(e) => panic!("no snapshot with {what} within {WITHIN:?}: {e}"),
        }
    }
}

fn register_pair(agent: &Agent) -> (u16, u16, SocketAddr) {
    let (db_public, web_public, bind) = (free_port(), free_port(), free_port());
    let db_app = app("db");
    agent.register(&service_with_sidecar(
        "db",
        db_app,
        db_public,
        json!([]),
        "",
    ));
    agent.register(&service_with_sidecar(
        "web",
        app("web"),
        web_public,
        json!([{"DestinationName": "db", "LocalBindPort": bind}]),
        "",
    ));
    (db_public, bind, db_app)
}

#[test]
fn a_registered_sidecar_becomes_a_complete_saved_snapshot() {
    let agent = Agent::dev("dc1");
    let dir = Scratch::new("consul-follow-snapshot");
    let (db_public, bind, _) = register_pair(&agent);
    let s = settings(&agent.address(), "web-sidecar-proxy", Some(&dir.0));
    let (follower, rx) = start(s.clone());
    let snap = next_where(&rx, "db's instance", |s| !s.catalog.services.is_empty());

    let roots = agent.roots();
    assert_eq!(snap.here.place.datacenter, "dc1");
    assert_eq!(snap.here.trust_domain, roots.trust_domain);
    let identity = snap.identity.as_ref().unwrap();
    assert_eq!(
        identity.spiffe_id.to_string(),
        format!("spiffe://{}/ns/default/dc/dc1/svc/web", roots.trust_domain)
    );
    assert_eq!(identity.roots.len(), roots.pems.len(), "every root trusted");
    let sidecar = snap.sidecar.as_ref().unwrap();
    assert_eq!(sidecar.service, "web");
    assert!(
        sidecar.authority.is_some(),
        "callers are authorized by the agent"
    );
    assert_eq!(sidecar.upstreams[0].destination_name, "db");
    assert_eq!(
        sidecar.upstreams[0].bind.to_string(),
        format!("127.0.0.1:{bind}")
    );
    let db = &snap.catalog.services[0];
    assert_eq!(db.name, "db");
    assert_eq!(
        db.instances[0].address.to_string(),
        format!("127.0.0.1:{db_public}")
    );
    assert!(!follower.status.is_stale());
    assert!(follower.status.last_success_unix() > 0);

    // The saved state rebuilds the very same snapshot, without the agent.
    let (saved, _) = saved_snapshot(&s, &base()).unwrap().unwrap();
    assert_eq!(saved, snap);
    let mode = std::fs::metadata(dir.path("consul-state.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // `check` shows that saved state offline: the agent is not asked (here: not there).
    let config = dir.path("offline.toml");
    std::fs::write(
        &config,
        format!(
            "[consul]\naddress = \"127.0.0.1:{}\"\nsidecar_service_id = \"web-sidecar-proxy\"\nstate_dir = \"{}\"\n",
            free_port(),
            dir.0.display()
        ),
    )
    .unwrap();
    let (plan, stderr) = common::sidecars::check_json(&config, &dir.0);
    assert_eq!(plan["upstreams"][0]["destination_name"], "db");
    assert_eq!(
        plan["upstreams"][0]["dial"],
        json!([format!("127.0.0.1:{db_public}")])
    );
    let authority = plan["inbound"]["authority"].as_str().unwrap();
    assert!(authority.starts_with("consul agent"), "{authority}");
    assert!(stderr.contains("last-known-good state saved"), "{stderr}");
}

/// A `-dev` agent restarted is a new cluster: new CA, new trust domain, every index starts
/// low again. A watch still asking with the old, higher index would block for its whole
/// wait; asking from scratch after a failure (and whenever the index goes backwards) picks
/// the new state up at once — and no snapshot pairs the new roots with the old leaf.
#[test]
fn an_agent_restarted_with_a_fresh_state_is_followed_at_once() {
    let mut agent = Agent::dev("dc1");
    register_pair(&agent);
    let (follower, rx) = start(settings(&agent.address(), "web-sidecar-proxy", None));
    let first = next_where(&rx, "a first state", |_| true);
    // Raise the indexes well above what a fresh agent starts at.
    for i in 0..30 {
        agent.config_entry(
            &json!({"Kind": "service-defaults", "Name": format!("bump{i}"), "Protocol": "tcp"}),
        );
    }
    agent.kill();
    agent.restart();
    register_pair(&agent);
    let new_td = agent.roots().trust_domain;
    assert_ne!(new_td, first.here.trust_domain);
    let second = next_where(&rx, "the new trust domain", |s| {
        let leaf_td = s.identity.as_ref().unwrap().spiffe_id.to_string();
        assert!(
            leaf_td.starts_with(&format!("spiffe://{}/", s.here.trust_domain)),
            "{leaf_td} served with roots of {}",
            s.here.trust_domain
        );
        s.here.trust_domain == new_td
    });
    assert_eq!(
        second.identity.unwrap().spiffe_id.to_string(),
        format!("spiffe://{new_td}/ns/default/dc/dc1/svc/web")
    );
    assert!(
        follower.status.watch_errors() > 0,
        "the restart was seen as errors"
    );
}

#[test]
fn the_agent_authorizes_callers_and_its_last_answer_outlives_it() {
    let mut agent = Agent::dev("dc1");
    let dir = Scratch::new("consul-follow-authorize");
    let s = settings(&agent.address(), "db-sidecar-proxy", Some(&dir.0));
    let status = Arc::new(Status::default());
    let core = Authorizer::new(Client::new(&s), status.clone(), Some(dir.0.clone()));
    let db = core.for_service("db");
    let td = agent.roots().trust_domain;
    let caller = |svc: &str| format!("spiffe://{td}/ns/default/dc/dc1/svc/{svc}");

    agent.set_intention("web", "db", "allow");
    agent.set_intention("api", "db", "deny");
    let (action, why) = db.0.ask(&caller("web"), "01");
    assert_eq!(action, Action::Allow, "{why}");
    let (action, why) = db.0.ask(&caller("api"), "02");
    assert_eq!(action, Action::Deny, "{why}");
    assert!(why.contains("agent"), "{why}");
    assert_eq!(
        db.0.cached(&caller("web")).map(|v| v.0),
        Some(Action::Allow),
        "fresh answers are cached"
    );

    agent.kill();
    let (action, why) = db.0.ask(&caller("web"), "01");
    assert_eq!(
        action,
        Action::Allow,
        "last answer while the agent is gone: {why}"
    );
    assert!(why.contains("agent unreachable"), "{why}");
    assert_eq!(
        db.0.ask(&caller("api"), "02").0,
        Action::Deny,
        "denied stays denied"
    );
    let (action, why) = db.0.ask(&caller("never-seen"), "03");
    assert_eq!(action, Action::Deny);
    assert!(why.contains("no earlier answer"), "{why}");
    assert!(status.authorize_errors() >= 3);

    // A new process (same state_dir) with the agent still gone knows the answers too.
    let again = Authorizer::new(
        Client::new(&s),
        Arc::new(Status::default()),
        Some(dir.0.clone()),
    );
    assert_eq!(
        again.for_service("db").0.ask(&caller("web"), "01").0,
        Action::Allow
    );
    assert_eq!(
        again.for_service("db").0.cached(&caller("web")),
        None,
        "restored answers are never fresh"
    );
}

#[test]
fn errors_name_the_endpoint_and_the_likely_cause() {
    // Nothing listens here: the agent is "not running at ADDRESS".
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (follower, _rx) = start(settings(&dead, "web-sidecar-proxy", None));
    let error = eventually_within(WITHIN, "an error reported", || {
        follower.status.last_error().ok_or("none")
    });
    assert!(error.contains("GET /v1/"), "{error}");
    assert!(
        error.contains(&format!("is the Consul agent running at {dead}")),
        "{error}"
    );
    assert!(!follower.status.has_snapshot());

    // Community Edition refuses namespaces: the cause says so (a real 400 from 1.8.7).
    let agent = Agent::dev("dc1");
    let s = settings(&agent.address(), "x", None);
    let client = Client::new(&s);
    let req = sidegate::consul::client::Request::new("/v1/health/connect/db".into())
        .param("dc", "dc1")
        .param("ns", "team");
    let e = client
        .get(&req, &sidegate::consul::client::Blocking::No)
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("Community Edition"), "{e}");
}

/// `sidegate run`'s source: the first snapshot starts serving; a reload follows the agent
/// again with the file's new settings (here: another agent) as a new generation, and the
/// first snapshot carrying that generation is the new agent's state — whatever the old
/// follower had queued carries an older one, for the lifecycle to drop.
#[test]
fn a_reload_follows_the_agent_again_with_new_settings() {
    use sidegate::lifecycle::follower::{first_snapshot, Source};
    use sidegate::lifecycle::{self, Event};
    let (one, two) = (Agent::dev("dc1"), Agent::dev("dc1"));
    let (_, bind_one, _) = register_pair(&one);
    let (_, bind_two, _) = register_pair(&two);
    let config = |agent: &Agent| {
        let text = format!(
            "[consul]\naddress = \"{}\"\nsidecar_service_id = \"web-sidecar-proxy\"\n",
            agent.address()
        );
        sidegate::config::parse_with_env(&text, &|_| None).unwrap()
    };
    let (events, received) = lifecycle::channel();
    let source = Source::start(&config(&one), events, Options::default())
        .unwrap()
        .unwrap();
    let first_generation = source.generation();
    let bind_of = |s: &Snapshot| s.sidecar.as_ref().unwrap().upstreams[0].bind.to_string();
    let (first, _) = first_snapshot(&received).unwrap();
    assert_eq!(bind_of(&first), format!("127.0.0.1:{bind_one}"));
    let (td_one, td_two) = (one.roots().trust_domain, two.roots().trust_domain);
    assert_eq!(first.here.trust_domain, td_one);

    let generation = source.restart(&config(&two)).unwrap();
    assert!(generation > first_generation, "{generation:?}");
    assert_eq!(source.generation(), generation);
    let deadline = Instant::now() + WITHIN;
    let next = loop {
        match received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Snapshot(g, s, _)) if g == generation => break s,
            Ok(Event::Snapshot(g, s, _)) => {
                assert_eq!((g, &s.here.trust_domain), (first_generation, &td_one));
            }
            Ok(_) => {}
            Err(e) => panic!("no snapshot from the second agent: {e}"),
        }
    };
    assert_eq!(next.here.trust_domain, td_two);
    assert_eq!(bind_of(&next), format!("127.0.0.1:{bind_two}"));
    assert!(
        source.status().snapshots() >= 2,
        "one status across restarts"
    );
}
