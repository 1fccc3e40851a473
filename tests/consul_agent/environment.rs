//! Consul's environment conventions against a real agent that verifies incoming HTTPS
//! (`verify_incoming_https`): the client certificate from `CONSUL_CLIENT_CERT`/`_KEY`, the
//! name from `CONSUL_TLS_SERVER_NAME`, the CAs from `CONSUL_CAPATH`, and
//! `CONSUL_HTTP_SSL_VERIFY=false`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::consul;

use common::free_port;
use consul::Scratch;
use sidegate::consul::client::{Blocking, Client, Request};

use super::https::{https_agent_with, pki};

#[test]
fn client_certificates_server_name_capath_and_no_verify() {
    let dir = Scratch::new("consul-env");
    pki(&dir.0);
    let https = free_port();
    let _agent = https_agent_with(&dir.0, https, &["verify_incoming_https = true"]);
    let path = |n: &str| dir.path(n).display().to_string();
    let capath = dir.path("cas");
    std::fs::create_dir_all(&capath).unwrap();
    std::fs::copy(dir.path("ca.pem"), capath.join("consul-ca.pem")).unwrap();
    let address = format!("https://127.0.0.1:{https}");
    let roots = |vars: &[(&'static str, String)]| {
        let mut vars = vars.to_vec();
        vars.push(("CONSUL_HTTP_ADDR", address.clone()));
        let env = move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        };
        let c = sidegate::config::parse_with_env("[consul]\nsidecar_service_id = \"w\"\n", &env)
            .unwrap()
            .consul
            .unwrap();
        Client::new(&c).get(
            &Request::new("/v1/agent/connect/ca/roots".into()),
            &Blocking::No,
        )
    };
    let cert = [
        ("CONSUL_CLIENT_CERT", path("agent.pem")),
        ("CONSUL_CLIENT_KEY", path("agent-key.pem")),
    ];
    let with = |more: &[(&'static str, String)]| {
        let mut v = cert.to_vec();
        v.extend_from_slice(more);
        v
    };

    // The CA and a client certificate: answered.
    let ok = roots(&with(&[("CONSUL_CACERT", path("ca.pem"))])).unwrap();
    assert_eq!(ok.status, 200);
    // Without the certificate, the agent refuses the handshake.
    let e = roots(&[("CONSUL_CACERT", path("ca.pem"))]).unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    // The CA from a directory.
    let ok = roots(&with(&[("CONSUL_CAPATH", capath.display().to_string())])).unwrap();
    assert_eq!(ok.status, 200);
    // The name the certificate is verified for: one it holds, then one it does not.
    let named = |name: &str| {
        roots(&with(&[
            ("CONSUL_CACERT", path("ca.pem")),
            ("CONSUL_TLS_SERVER_NAME", name.to_owned()),
        ]))
    };
    assert_eq!(named("localhost").unwrap().status, 200);
    let e = named("consul.example").unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    // A CA that never signed the agent's certificate, and verification off: answered.
    let e = roots(&with(&[("CONSUL_CACERT", path("other-ca.pem"))])).unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    let ok = roots(&with(&[
        ("CONSUL_CACERT", path("other-ca.pem")),
        ("CONSUL_HTTP_SSL_VERIFY", "false".to_owned()),
    ]))
    .unwrap();
    assert_eq!(ok.status, 200);
}

/// `unix:///path`: HTTP over the agent's Unix socket (Consul's `addresses { http }` naming
/// both loopback, for the harness, and the socket), from the file's address and from
/// `CONSUL_HTTP_ADDR`.
#[test]
fn the_agent_over_a_unix_socket() {
    let dir = Scratch::new("consul-unix");
    let socket = dir.path("http.sock");
    let agent = consul::Agent::start(consul::Options {
        hcl: vec![format!(
            "addresses {{ http = \"127.0.0.1 unix://{}\" }}",
            socket.display()
        )],
        ..consul::Options::dev("dc1")
    });
    assert_eq!(agent.get("/v1/agent/connect/ca/roots").status, 200);
    let address = format!("unix://{}", socket.display());
    let from_file = format!("[consul]\naddress = \"{address}\"\nsidecar_service_id = \"w\"\n");
    let env_address = address.clone();
    let env = move |name: &str| (name == "CONSUL_HTTP_ADDR").then(|| env_address.clone());
    for (text, env) in [
        (
            from_file.as_str(),
            &(|_: &str| None) as &dyn Fn(&str) -> Option<String>,
        ),
        ("[consul]\nsidecar_service_id = \"w\"\n", &env),
    ] {
        let settings = sidegate::config::parse_with_env(text, env)
            .unwrap()
            .consul
            .unwrap();
        let client = Client::new(&settings);
        assert_eq!(client.address(), address);
        let r = client
            .get(
                &Request::new("/v1/agent/connect/ca/roots".into()),
                &Blocking::No,
            )
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.contains("TrustDomain"), "{}", r.body);
        // A registration that is not there: the agent's 404, over the socket too.
        let r = client
            .get(
                &Request::new("/v1/agent/service/nothing".into()),
                &Blocking::No,
            )
            .unwrap();
        assert_eq!(r.status, 404);
    }
    // Nothing listening at that path: unreachable, naming it.
    let gone = format!(
        "[consul]\naddress = \"unix://{}/none.sock\"\nsidecar_service_id = \"w\"\n",
        dir.0.display()
    );
    let settings = sidegate::config::parse_with_env(&gone, &|_| None)
        .unwrap()
        .consul
        .unwrap();
    let e = Client::new(&settings)
        .get(&Request::new("/v1/agent/self".into()), &Blocking::No)
        .unwrap_err();
    assert!(
        e.is_unreachable() && e.to_string().contains("none.sock"),
        "{e}"
    );
}
