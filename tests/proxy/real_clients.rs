//! What an operator would try by hand: `sidegate run` as a process, and the TLS clients they
//! have (openssl s_client, curl) reaching the right backend for every route kind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::{Command, Stdio};

use common::*;

struct Setup {
    dir: std::path::PathBuf,
    db: Backend,
    web2: Backend,
    gw: Child,
    _gw2: sidegate::proxy::Running,
}

fn setup(tag: &str) -> Setup {
    let pki = Pki::new();
    let db = Backend::db_with_subset(&pki);
    let (web2, gw2) = dc2_gateway_with_web(&pki);
    let dir = std::env::temp_dir().join(format!("sidegate-real-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), pki.ca_pem()).unwrap();
    let config = dir.join("gateway.toml");
    // db's resolver defines v2, so `v2.db...` is a route (an undefined subset is refused).
    let gateways = format!(
        "[[catalog.gateways]]\ndatacenter = \"dc2\"\nwan = [\"{}\"]\n\
         [config_entries.service_resolvers.db]\nsubsets = {{ v2 = {{}} }}\n",
        gw2.gateway_addrs[0]
    );
    let toml = gateway_toml(
        "dc1",
        "default",
        "\"127.0.0.1:0\", \"[::1]:0\"",
        &[("db", vec![db.addr])],
        &gateways,
        "",
    );
    std::fs::write(&config, toml).unwrap();
    let gw = run_binary(&config, 2);
    Setup {
        dir,
        db,
        web2,
        gw,
        _gw2: gw2,
    }
}

fn routes(s: &Setup) -> Vec<(String, &Backend)> {
    vec![
        (service_sni("db", "dc1"), &s.db),
        (format!("v2.{}", service_sni("db", "dc1")), &s.db),
        (service_sni("web", "dc2"), &s.web2),
    ]
}

#[test]
fn openssl_s_client_reaches_each_route() {
    let s = setup("openssl");
    for addr in &s.gw.gateway_addrs {
        for (sni, backend) in routes(&s) {
            let before = backend.accepted();
            let out = Command::new("openssl")
                .args([
                    "s_client",
                    "-brief",
                    "-verify_return_error",
                    "-connect",
                    &addr.to_string(),
                ])
                .args(["-servername", &sni, "-verify_hostname", &sni, "-CAfile"])
                .arg(s.dir.join("ca.pem"))
                .stdin(Stdio::null())
                .output()
                .expect("openssl is installed by the test command");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.contains("Verification: OK"),
                "{sni} via {addr}: {stderr}"
            );
            assert_eq!(
                backend.accepted(),
                before + 1,
                "{sni} reached the wrong backend"
            );
        }
    }
    // Refused: a name with no route. The gateway closes; s_client fails the handshake.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-brief",
            "-connect",
            &s.gw.gateway_addrs[0].to_string(),
        ])
        .args(["-servername", &service_sni("nope", "dc1")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an unknown name must not get a handshake"
    );
}

#[test]
fn curl_reaches_each_route() {
    let s = setup("curl");
    let port = s.gw.gateway_addrs[0].port();
    for (sni, backend) in routes(&s) {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
            .arg(s.dir.join("ca.pem"))
            .args([
                "--connect-to",
                &format!("{sni}:443:127.0.0.1:{port}"),
                &format!("https://{sni}/"),
            ])
            .output()
            .expect("curl is installed by the test command");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{sni}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(body.trim(), format!("served-by:{}", backend.name), "{sni}");
    }
}
