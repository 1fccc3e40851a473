//! Onboarding from Consul with the examples in config/consul/: the registrations taken by a
//! real agent (`consul services register`), the ACL policies made into tokens on an agent
//! with ACLs (default deny), `sidegate check --agent` naming what a token lacks and passing
//! with the example policies, and `sidegate run` following both registrations — the sidecar
//! found by `sidecar_for`, the gateway's HTTP check on `/ready` passing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::consul;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::apps::app;
use common::{eventually, free_port};
use consul::{Agent, Options, Scratch, Sidegate};
use serde_json::json;

const MASTER: &str = "5f0c2b7e-1d5a-4c55-9b1e-2a7d3c4e5f60";

fn example(name: &str) -> String {
    let path = format!("{}/config/consul/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An example with its addresses and ports replaced (the examples name documentation
/// addresses and fixed ports; tests run side by side).
fn adapted(dir: &Path, name: &str, replace: &[(&str, String)]) -> PathBuf {
    let mut text = example(name);
    for (from, to) in replace {
        assert!(text.contains(from), "{name} no longer holds {from}");
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn consul_cli(agent: &Agent, args: &[&str]) -> Output {
    let out = std::process::Command::new("consul")
        .args(args)
        .env("CONSUL_HTTP_ADDR", agent.address())
        .env("CONSUL_HTTP_TOKEN", MASTER)
        .output()
        .unwrap();
    assert!(out.status.success(), "consul {args:?}: {out:?}");
    out
}

/// A token with the rules of `policy_file` (an example, or rules given here).
fn token(agent: &Agent, name: &str, rules: &str) -> String {
    agent.ok(
        "PUT",
        "/v1/acl/policy",
        &json!({"Name": name, "Rules": rules}),
    );
    let r = agent.ok(
        "PUT",
        "/v1/acl/token",
        &json!({"Policies": [{"Name": name}]}),
    );
    r.json()["SecretID"].as_str().unwrap().to_owned()
}

fn check_agent(dir: &Path, name: &str, consul: &str, token: &str) -> (i32, String) {
    std::fs::write(dir.join(format!("{name}.token")), format!("{token}\n")).unwrap();
    let config = dir.join(format!("{name}-check.toml"));
    std::fs::write(
        &config,
        format!("[consul]\n{consul}\ntoken_file = \"{name}.token\"\n"),
    )
    .unwrap();
    let out = common::sidegate_command()
        .args(["check", "--agent", "--config"])
        .arg(&config)
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_ADDR")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_examples_register_check_and_run() {
    let dir = Scratch::new("onboarding");
    let agent = Agent::start(Options {
        hcl: vec![format!(
            "acl {{ enabled = true default_policy = \"deny\" tokens {{ master = \"{MASTER}\" }} }}"
        )],
        token: Some(MASTER.to_owned()),
        ..Options::dev("dc1")
    });
    let address = agent.address();
    let web_app = app("web");
    let (public, upstream, gw, admin) = (free_port(), free_port(), free_port(), free_port());
    let web = adapted(
        &dir.0,
        "web.hcl",
        &[
            ("8080", web_app.port().to_string()),
            ("21000", public.to_string()),
            ("9191", upstream.to_string()),
        ],
    );
    let gateway = adapted(
        &dir.0,
        "mesh-gateway.hcl",
        &[
            ("192.0.2.10", "127.0.0.1".to_owned()),
            ("203.0.113.10", "127.0.0.1".to_owned()),
            ("8443", gw.to_string()),
            ("19100", admin.to_string()),
        ],
    );
    for file in [&web, &gateway] {
        consul_cli(&agent, &["services", "register", file.to_str().unwrap()]);
    }
    let sidecar_token = token(&agent, "sidegate-web", &example("sidecar-policy.hcl"));
    let gateway_token = token(&agent, "sidegate-gateway", &example("gateway-policy.hcl"));
    let at = format!("address = \"{address}\"");

    // The example policies: everything there, and the plan the agent's state gives.
    let sidecar_keys = format!("{at}\nsidecar_for = \"web\"");
    let (code, text) = check_agent(&dir.0, "web", &sidecar_keys, &sidecar_token);
    assert_eq!(code, 0, "{text}");
    for want in [
        "ok      sidecar: registration \"web-sidecar-proxy\" found",
        "has service:write on \"web\"",
        "leaf for \"web\" issued",
        &format!("upstream 127.0.0.1:{upstream} -> db."),
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    assert!(!text.contains("MISSING"), "{text}");
    let gateway_keys = format!("{at}\ngateway_service_id = \"mesh-gateway\"");
    let (code, text) = check_agent(&dir.0, "gw", &gateway_keys, &gateway_token);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("has agent:read"), "{text}");

    // A token that can read the registration but not write web: the leaf and intentions
    // need service:write, named; exit 1.
    let weak = token(
        &agent,
        "weak",
        "service \"web-sidecar-proxy\" { policy = \"read\" }\nservice \"web\" { policy = \"read\" }\n",
    );
    let (code, text) = check_agent(&dir.0, "weak", &sidecar_keys, &weak);
    assert_eq!(code, 1, "{text}");
    for want in [
        "MISSING sidecar: missing service:write on \"web\"",
        "MISSING sidecar: missing service:read on \"db\"",
        "MISSING sidecar: missing node:read",
        "MISSING sidecar: leaf for \"web\"",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    // No agent there: 69.
    let nowhere = format!(
        "address = \"127.0.0.1:{}\"\nsidecar_for = \"web\"",
        free_port()
    );
    let (code, text) = check_agent(&dir.0, "nowhere", &nowhere, &weak);
    assert_eq!(code, 69, "{text}");

    // `run` follows both: the sidecar found by sidecar_for, the gateway on its address,
    // whose /ready turns Consul's HTTP check from the example to passing.
    let sidecar_admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(dir.path("web-run.token"), format!("{sidecar_token}\n")).unwrap();
    let mut sidecar = Sidegate::run(
        "web",
        &dir.0,
        &format!("[consul]\n{sidecar_keys}\ntoken_file = \"web-run.token\"\n[admin]\nlisten = \"{sidecar_admin}\"\n"),
    );
    sidecar.serving(&[public, upstream]);
    let plan = sidecar.plan(sidecar_admin);
    assert_eq!(plan["upstreams"][0]["destination_name"], "db", "{plan}");

    std::fs::write(dir.path("gw-run.token"), format!("{gateway_token}\n")).unwrap();
    let mut gateway_run = Sidegate::run(
        "gw",
        &dir.0,
        &format!("[consul]\n{gateway_keys}\ntoken_file = \"gw-run.token\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    );
    gateway_run.serving(&[gw, admin]);
    eventually("Consul's check of the gateway passing", || {
        let r = agent.get("/v1/health/checks/mesh-gateway");
        r.body.contains("\"Status\": \"passing\"") || r.body.contains("\"Status\":\"passing\"")
    });
    gateway_run.stop();
    sidecar.stop();
}
