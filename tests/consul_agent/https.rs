//! The connection to the agent over HTTPS with ACLs, against a real Consul 1.8.7: verified
//! with the CA given (and only that CA) in `ca_file` or `CONSUL_CACERT` (which a plain-HTTP
//! address ignores), the token sent as `X-Consul-Token` and never shown, and each refusal
//! explained — the token's missing permission, plain HTTP to an HTTPS port, a certificate
//! nobody vouched for; and `sidegate run` with a token, which it shows nowhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::consul;

use std::net::SocketAddr;
use std::path::Path;

use common::apps::app;
use common::{free_port, http_get};
use consul::{service_with_sidecar, Agent, Options, Scratch, Sidegate};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use sidegate::consul::client::{Blocking, Client, Request};
use sidegate::consul::Settings;

pub(crate) const MASTER: &str = "8a8e8e0b-6f43-4bde-9d1c-3c9e2d0d7a11";

/// A CA and an HTTPS certificate for 127.0.0.1, as files for the agent and for sidegate.
pub(crate) fn pki(dir: &Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "agent test CA");
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), issuer.pem()).unwrap();
    std::fs::write(dir.join("agent.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("agent-key.pem"), key.serialize_pem()).unwrap();
    // Another CA, which never signed the agent's certificate.
    let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = CertifiedIssuer::self_signed(other, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
}

fn https_agent(dir: &Path, https: u16) -> Agent {
    https_agent_with(dir, https, &[])
}

/// The HTTPS agent with more configuration (e.g. `verify_incoming_https`).
pub(crate) fn https_agent_with(dir: &Path, https: u16, more: &[&str]) -> Agent {
    let d = dir.display();
    let mut hcl = vec![
        format!("ports {{ https = {https} }}"),
        format!("ca_file = \"{d}/ca.pem\""),
        format!("cert_file = \"{d}/agent.pem\""),
        format!("key_file = \"{d}/agent-key.pem\""),
        format!(
            "acl {{ enabled = true default_policy = \"deny\" tokens {{ master = \"{MASTER}\" }} }}"
        ),
    ];
    hcl.extend(more.iter().map(|m| (*m).to_owned()));
    Agent::start(Options {
        hcl,
        // The harness registers services with it.
        token: Some(MASTER.to_owned()),
        ..Options::dev("dc1")
    })
}

/// A scratch directory with the PKI, and an agent with HTTPS on the port returned.
fn with_https_agent(tag: &str) -> (Scratch, u16, Agent) {
    let dir = Scratch::new(tag);
    pki(&dir.0);
    let https = free_port();
    let agent = https_agent(&dir.0, https);
    (dir, https, agent)
}

fn settings(dir: &Path, address: &str, ca: &str, token: Option<&str>) -> Settings {
    let mut text = format!(
        "[consul]\naddress = \"{address}\"\nca_file = \"{ca}\"\nsidecar_service_id = \"web-sidecar-proxy\"\n"
    );
    if let Some(t) = token {
        std::fs::write(dir.join("token"), format!("{t}\n")).unwrap();
        text.push_str(&format!(
            "token_file = \"{}\"\n",
            dir.join("token").display()
        ));
    }
    let path = dir.join("sidegate.toml");
    std::fs::write(&path, text).unwrap();
    sidegate::config::load(&path).unwrap().consul.unwrap()
}

/// Settings for `address` with no CA in the file, `CONSUL_CACERT` set to `cacert` if given.
fn settings_from_env(address: &str, cacert: Option<&Path>) -> Settings {
    let text = format!("[consul]\naddress = \"{address}\"\nsidecar_service_id = \"w\"\n");
    let cacert = cacert.map(|p| p.display().to_string());
    let env = move |name: &str| cacert.clone().filter(|_| name == "CONSUL_CACERT");
    sidegate::config::parse_with_env(&text, &env)
        .unwrap()
        .consul
        .unwrap()
}

#[test]
fn https_with_the_given_ca_the_token_in_a_header_and_refusals_explained() {
    let (dir, https, agent) = with_https_agent("consul-https");
    let address = format!("https://127.0.0.1:{https}");
    let leaf = Request::new("/v1/agent/connect/ca/leaf/web".into());
    let roots = Request::new("/v1/agent/connect/ca/roots".into());

    // No token: the roots need none; the leaf needs service:write, and the error says so.
    let anonymous = Client::new(&settings(&dir.0, &address, "ca.pem", None));
    let r = anonymous.get(&roots, &Blocking::No).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("TrustDomain"), "{}", r.body);
    let e = anonymous.get(&leaf, &Blocking::No).unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let shown = e.to_string();
    assert!(
        shown.contains("GET /v1/agent/connect/ca/leaf/web"),
        "{shown}"
    );
    assert!(shown.contains("service:write on \"web\""), "{shown}");

    // The master token, read from token_file, travels as X-Consul-Token: the leaf is issued.
    let s = settings(&dir.0, &address, "ca.pem", Some(MASTER));
    let with_token = Client::new(&s);
    let r = with_token.get(&leaf, &Blocking::No).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("PrivateKeyPEM"));
    for shown in [format!("{s:?}"), format!("{with_token:?}")] {
        assert!(!shown.contains(MASTER), "token shown: {shown}");
    }
    // A refusal with the token set does not show it either.
    let e = with_token
        .get(
            &Request::new("/v1/health/connect/db".into()).param("ns", "x"),
            &Blocking::No,
        )
        .unwrap_err();
    assert!(!e.to_string().contains(MASTER), "{e}");

    // A CA that did not sign the agent's certificate: refused, and told to set ca_file.
    let wrong = Client::new(&settings(&dir.0, &address, "other-ca.pem", None));
    let e = wrong.get(&roots, &Blocking::No).unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(e.to_string().contains("ca_file"), "{e}");

    // The CA from CONSUL_CACERT instead of ca_file: the same verification.
    let with_cacert = |address: &str, ca: &str| {
        let s = settings_from_env(address, Some(&dir.path(ca)));
        Client::new(&s).get(&roots, &Blocking::No)
    };
    assert_eq!(with_cacert(&address, "ca.pem").unwrap().status, 200);
    let e = with_cacert(&address, "other-ca.pem").unwrap_err();
    assert!(
        e.is_unreachable() && e.to_string().contains("ca_file"),
        "{e}"
    );
    // Exported for every agent, it is not in the way of one reached over plain HTTP.
    let r = with_cacert(&agent.address(), "other-ca.pem").unwrap();
    assert_eq!(r.status, 200);

    // Plain HTTP to the HTTPS port: Consul answers 400; the cause says to use https://.
    let s = settings_from_env(&format!("127.0.0.1:{https}"), None);
    let e = Client::new(&s).get(&roots, &Blocking::No).unwrap_err();
    assert!(e.to_string().contains("https://"), "{e}");
    drop(agent);
}

/// `sidegate run` following the HTTPS agent with the master token (from token_file): it gets
/// web's leaf and serves, logging at debug level, a refusal among its lines (an upstream in a
/// datacenter that does not exist) — and the token is in none of them, nor in what the admin
/// endpoint shows.
#[test]
fn the_running_binary_never_shows_its_token() {
    let (dir, https, agent) = with_https_agent("consul-https-token");
    let (public, nowhere) = (free_port(), free_port());
    let upstreams =
        json!([{"DestinationName": "db", "Datacenter": "dc9", "LocalBindPort": nowhere}]);
    agent.register(&service_with_sidecar(
        "web",
        app("web"),
        public,
        upstreams,
        "",
    ));
    std::fs::write(dir.path("token"), format!("{MASTER}\n")).unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = format!(
        "[consul]\naddress = \"https://127.0.0.1:{https}\"\nca_file = \"ca.pem\"\n\
         token_file = \"token\"\nsidecar_service_id = \"web-sidecar-proxy\"\n\
         [admin]\nlisten = \"{admin}\"\n[log]\nlevel = \"debug\"\n"
    );
    let mut web = Sidegate::run("web", &dir.0, &toml);
    web.serving(&[public, nowhere, admin.port()]);

    let plan = web.plan(admin);
    assert_eq!(plan["upstreams"][0]["datacenter"], "dc9", "{plan}");
    for path in ["/config", "/metrics", "/ready"] {
        let (_, body) = http_get(admin, path);
        assert!(!body.contains(MASTER), "{path} shows the token: {body}");
    }
    let log = web.stop();
    let seen = |needle: &str| log.iter().any(|l| l.contains(needle));
    assert!(
        seen(&format!("following agent https://127.0.0.1:{https}")),
        "{log:#?}"
    );
    assert!(seen("dc=dc9") && seen("DEBUG"), "{log:#?}");
    let shown: Vec<&String> = log.iter().filter(|l| l.contains(MASTER)).collect();
    assert!(shown.is_empty(), "the token in the log: {shown:#?}");
}
