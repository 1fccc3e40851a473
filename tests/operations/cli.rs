//! The command line as an operator meets it: examples load, `check` prints the plan, bad
//! files get every error with its key path and exit 78, `explain` says why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::sidecars::check_json_clean;
use common::{Pki, Scratch, TD};
use std::path::{Path, PathBuf};
use std::process::Output;

fn sidegate(args: &[&str]) -> Output {
    common::sidegate_command().args(args).output().unwrap()
}

fn fixtures() -> String {
    format!("{}/tests/fixtures/tls", env!("CARGO_MANIFEST_DIR"))
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_example_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let examples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(
        !examples.is_empty(),
        "no example configs found in {}",
        dir.display()
    );
    for path in examples {
        let config = sidegate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let plan = sidegate::mesh::plan(&config.snapshot);
        assert!(
            plan.warnings.is_empty(),
            "{}: {:?}",
            path.display(),
            plan.warnings
        );
    }
}

#[test]
fn check_json_shows_every_route_with_endpoints() {
    let out = sidegate(&["check", "--config", &example("gateway.toml"), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["upstreams"], serde_json::json!([]));
    assert_eq!(
        plan["gateway"]["listen"],
        serde_json::json!(["127.0.0.1:8443"])
    );
    let routes: Vec<(String, String, Vec<String>)> = plan["gateway"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let eps = r["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().to_owned())
                .collect();
            (
                r["match"].as_str().unwrap().to_owned(),
                r["kind"].as_str().unwrap().to_owned(),
                eps,
            )
        })
        .collect();
    let expected = [
        (
            format!("db.default.dc1.internal.{TD}"),
            "service",
            vec!["127.0.0.1:21000", "127.0.0.1:21001"],
        ),
        (
            format!("v1.db.default.dc1.internal.{TD}"),
            "service",
            vec!["127.0.0.1:21000"],
        ),
        (
            format!("v2.db.default.dc1.internal.{TD}"),
            "service",
            vec!["127.0.0.1:21001"],
        ),
        (
            format!("web.default.dc1.internal.{TD}"),
            "service",
            vec!["127.0.0.1:21002"],
        ),
        (
            format!("*.dc2.internal.{TD}"),
            "gateway",
            vec!["127.0.0.1:28443"],
        ),
        (
            format!("*.ap1.dc1.internal-v1.{TD}"),
            "gateway",
            vec!["127.0.0.1:18444"],
        ),
    ];
    assert_eq!(routes.len(), expected.len(), "{routes:?}");
    for (m, kind, eps) in expected {
        let found = routes
            .iter()
            .find(|r| r.0 == m)
            .unwrap_or_else(|| panic!("no route {m}"));
        assert_eq!(
            (
                found.1.as_str(),
                found.2.iter().map(String::as_str).collect::<Vec<_>>()
            ),
            (kind, eps),
            "{m}"
        );
    }
}

#[test]
fn invalid_file_lists_every_error_and_exits_78() {
    let dir = std::env::temp_dir().join(format!("sidegate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"td.consul\"\n[gateway]\nlisten = [\"0.0.0.0:8443\"]\n\
         handshake_timeout_ms = -5\n[[catalog.services]]\nname = \"db\"\ninstances = [\"10.0.0.1:1\"]\n\
         [[catalog.services]]\nname = \"api\"\ninstances = [\"10.0.0.5\"]\nport = 3\n",
    )
    .unwrap();
    let out = sidegate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in [
        "gateway.handshake_timeout_ms: -5 is out of range",
        "catalog.services[1].instances[0]: \"10.0.0.5\" has no port",
        "catalog.services[1].port: unknown key",
        "3 errors",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
    assert_eq!(
        sidegate(&["check", "--config", "/nonexistent.toml"])
            .status
            .code(),
        Some(66)
    );
    assert_eq!(sidegate(&["check"]).status.code(), Some(64));
}

/// Each mistake is reported at its key path; the table is the contract for messages.
#[test]
fn config_errors_name_their_key_path() {
    let mesh = format!("[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n");
    let gw = "[gateway]\nlisten = [\"127.0.0.1:0\"]\n";
    let cases: &[(String, &str)] = &[
        (String::new(), "mesh: is required"),
        (format!("{gw}[mesh]\ntrust_domain = \"{TD}\"\n"), "mesh.datacenter: is required"),
        (format!("{gw}[mesh]\ndatacenter = \"dc1\"\n"), "mesh.trust_domain: is required"),
        (format!("{gw}[mesh]\ndatacenter = \"d.c\"\ntrust_domain = \"{TD}\"\n"), "mesh.datacenter: \"d.c\" is not a valid name"),
        (mesh.clone(), "nothing to run"),
        (format!("{mesh}[gateway]\nlisten = []\n"), "gateway.listen: is empty"),
        (format!("{mesh}[gateway]\nlisten = [\"8443\"]\n"), "gateway.listen[0]: \"8443\" is not an IP address with a port"),
        (format!("{mesh}[gateway]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n"), "gateway.listen[1]: \"127.0.0.1:1\" is listed twice"),
        (format!("{mesh}{gw}connect_timeout_ms = \"5s\"\n"), "gateway.connect_timeout_ms: expected a whole number, found string"),
        (format!("{mesh}{gw}max_connections = 0\n"), "gateway.max_connections: 0 is out of range"),
        (format!("{mesh}{gw}lisen = 1\n"), "gateway.lisen: unknown key (did you mean `listen`?)"),
        (format!("{mesh}{gw}[[catalog.services]]\ninstances = []\n"), "catalog.services[0].name: is required"),
        (format!("{mesh}{gw}[[catalog.services]]\nname = \"db\"\n"), "catalog.services[0].instances: is required"),
        (format!("{mesh}{gw}[[catalog.services]]\nname = \"db\"\ninstances = [\"h:0\"]\n"), "catalog.services[0].instances[0]: \"h:0\" has a port that is not"),
        (
            format!("{mesh}{gw}[[catalog.services]]\nname = \"db\"\ninstances = []\n[[catalog.services]]\nname = \"db\"\ninstances = []\n"),
            "catalog.services[1]: service \"db\" in namespace default (datacenter dc1 partition default) is listed twice",
        ),
        (format!("{mesh}{gw}[[catalog.gateways]]\ndatacenter = \"dc2\"\n"), "catalog.gateways[0]: has neither `lan` nor `wan` addresses"),
        (
            format!("{mesh}{gw}[[catalog.gateways]]\ndatacenter = \"dc2\"\nwan = [\"a:1\"]\n[[catalog.gateways]]\ndatacenter = \"dc2\"\nwan = [\"b:1\"]\n"),
            "catalog.gateways[1]: gateways of datacenter dc2 partition default are listed twice",
        ),
        (format!("{mesh}{gw}[catalog]\nservice = []\n"), "catalog.service: unknown key (did you mean `services`?)"),
        (format!("{mesh}{gw}[sidecars]\n"), "sidecars: unknown key"),
        (format!("{mesh}[sidecar]\n"), "sidecar.service: is required"),
        (
            format!("{mesh}[sidecar]\nservice = \"web\"\nmesh_gateway = {{ mode = \"near\" }}\n"),
            "sidecar.mesh_gateway.mode: \"near\" is not \"none\", \"local\" or \"remote\"",
        ),
        (format!("{mesh}[sidecar]\nservice = \"web\"\n[[sidecar.upstreams]]\nlocal_bind_port = 1\n"), "sidecar.upstreams[0].destination_name: is required"),
        (format!("{mesh}[sidecar]\nservice = \"web\"\n[[sidecar.upstreams]]\ndestination_name = \"db\"\n"), "sidecar.upstreams[0]: needs local_bind_port"),
        (
            format!("{mesh}[sidecar]\nservice = \"web\"\n[[sidecar.upstreams]]\ndestination_name = \"db\"\nlocal_bind_port = 1\nlocal_bind_socket_path = \"/s\"\n"),
            "sidecar.upstreams[0]: sets both local_bind_port and local_bind_socket_path",
        ),
        (
            format!("{mesh}[sidecar]\nservice = \"web\"\n[[sidecar.upstreams]]\ndestination_name = \"db\"\nlocal_bind_socket_path = \"/s\"\nlocal_bind_socket_mode = \"0999\"\n"),
            "sidecar.upstreams[0].local_bind_socket_mode: \"0999\" is not an octal file mode",
        ),
        (
            format!("{mesh}[sidecar]\nservice = \"web\"\n[[sidecar.upstreams]]\ndestination_name = \"db\"\nlocal_bind_port = 9\n[[sidecar.upstreams]]\ndestination_name = \"api\"\nlocal_bind_port = 9\n"),
            "sidecar.upstreams[1]: binds 127.0.0.1:9 like upstreams[0]",
        ),
        (format!("{mesh}[sidecar]\nservice = \"web\"\n[sidecar.intentions]\ndefault = \"maybe\"\n"), "sidecar.intentions.default: \"maybe\" is not \"allow\" or \"deny\""),
        (format!("{mesh}[sidecar]\nservice = \"web\"\n[[sidecar.intentions.rules]]\nsource = \"api\"\n"), "sidecar.intentions.rules[0].action: is required"),
        (format!("{mesh}{gw}[config_entries.service_defaults.web]\nmesh_gatway = {{}}\n"), "config_entries.service_defaults.web.mesh_gatway: unknown key (did you mean `mesh_gateway`?)"),
        (format!("{mesh}{gw}[config_entries]\nproxy_defaults = {{ mesh_gateway = {{ mode = 1 }} }}\n"), "config_entries.proxy_defaults.mesh_gateway.mode: expected a string"),
        (format!("{mesh}[sidecar]\nservice = \"web\"\n"), "tls: is required with [sidecar]"),
        (
            format!("{mesh}{gw}[tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"{fx}/web-key-sec1.pem\"\nca_file = \"{fx}/ca.pem\"\n", fx = fixtures()),
            "tls.cert_file: cannot read /nonexistent.pem",
        ),
        (
            format!("{mesh}{gw}[tls]\ncert_file = \"{fx}/web.pem\"\nkey_file = \"{fx}/db-key-pkcs1.pem\"\nca_file = \"{fx}/ca.pem\"\n", fx = fixtures()),
            "db-key-pkcs1.pem\" does not match the certificate's public key",
        ),
        (
            format!("{mesh}{gw}[tls]\ncert_file = \"{fx}/nospiffe.pem\"\nkey_file = \"{fx}/nospiffe-key.pem\"\nca_file = \"{fx}/ca.pem\"\n", fx = fixtures()),
            "nospiffe.pem\" leaf has no spiffe:// URI SAN",
        ),
        (
            format!("{mesh}[tls]\ncert_file = \"{fx}/web.pem\"\nkey_file = \"{fx}/web-key-sec1.pem\"\nca_file = \"{fx}/ca.pem\"\n[sidecar]\nservice = \"api\"\n", fx = fixtures()),
            "tls.cert_file: leaf is spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web but [sidecar] service is \"api\"",
        ),
        (
            format!("[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"other.consul\"\n[tls]\ncert_file = \"{fx}/web.pem\"\nkey_file = \"{fx}/web-key-sec1.pem\"\nca_file = \"{fx}/ca.pem\"\n[sidecar]\nservice = \"web\"\n", fx = fixtures()),
            "but [mesh] trust_domain is other.consul",
        ),
        ("[mesh\n".to_owned(), "not valid TOML"),
    ];
    for (text, want) in cases {
        let errors = sidegate::config::parse(text).expect_err(want);
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            shown.iter().any(|e| e.contains(want)),
            "want {want:?}, got {shown:#?}"
        );
    }
}

#[test]
fn explain_says_which_route_and_why() {
    let cfg = example("gateway.toml");
    let routed = sidegate(&[
        "explain",
        "--config",
        &cfg,
        "--sni",
        &format!("V2.DB.default.dc1.internal.{TD}"),
    ]);
    assert_eq!(routed.status.code(), Some(0));
    let text = String::from_utf8_lossy(&routed.stdout);
    // db's resolver defines v2: its route reaches only v2's instance.
    assert!(
        text.contains("subset \"v2\"") && text.contains("dial:    127.0.0.1:21001"),
        "{text}"
    );

    let wild = sidegate(&[
        "explain",
        "--config",
        &cfg,
        "--sni",
        &format!("api.default.dc2.internal.{TD}"),
    ]);
    assert_eq!(wild.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&wild.stdout).contains(&format!("*.dc2.internal.{TD}")));

    for (sni, why) in [
        (
            format!("nope.default.dc1.internal.{TD}"),
            "no such service is in the catalog",
        ),
        (format!("api.default.dc9.internal.{TD}"), "datacenter dc9"),
        // A subset no resolver defines: refused, not sent to every instance.
        (
            format!("bogus.db.default.dc1.internal.{TD}"),
            "defines its subset \"bogus\"",
        ),
        (
            "db.default.dc1.internal.other.consul".to_owned(),
            "does not end in this mesh's trust domain",
        ),
    ] {
        let out = sidegate(&["explain", "--config", &cfg, "--sni", &sni]);
        assert_eq!(out.status.code(), Some(1), "{sni}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(why), "{sni}");
    }
}

/// A gateway carrying Consul's WAN federation: `check --json` lists its server routes (kind
/// `server`), and `explain` says where a server name goes, or why it goes nowhere.
#[test]
fn check_json_and_explain_show_server_routes() {
    let cfg = example("gateway-wan-federation.toml");
    let out = sidegate(&["check", "--config", &cfg, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let servers: Vec<(String, serde_json::Value)> = plan["gateway"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "server")
        .map(|r| {
            (
                r["match"].as_str().unwrap().to_owned(),
                r["endpoints"].clone(),
            )
        })
        .collect();
    let json = |v: &[&str]| serde_json::json!(v);
    assert_eq!(
        servers,
        [
            (
                "consul-1.server.dc1.consul".to_owned(),
                json(&["127.0.0.1:8300"])
            ),
            (
                "consul-2.server.dc1.consul".to_owned(),
                json(&["127.0.0.1:9300"])
            ),
            (
                "server.dc1.consul".to_owned(),
                json(&["127.0.0.1:8300", "127.0.0.1:9300"])
            ),
            ("*.server.dc2.consul".to_owned(), json(&["127.0.0.1:28443"])),
            ("server.dc2.consul".to_owned(), json(&["127.0.0.1:28443"])),
        ]
    );

    let explain = |sni: &str| {
        let out = sidegate(&["explain", "--config", &cfg, "--sni", sni]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = explain("CONSUL-2.server.dc1.consul");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("(Server)") && text.contains("127.0.0.1:9300"),
        "{text}"
    );
    let (code, text) = explain("consul-7.server.dc2.consul");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("*.server.dc2.consul") && text.contains("127.0.0.1:28443"),
        "{text}"
    );
    for (sni, why) in [
        ("consul-9.server.dc1.consul", "not known here"),
        ("consul-1.server.dc3.consul", "Consul servers of dc3"),
    ] {
        let (code, text) = explain(sni);
        assert_eq!(code, Some(1), "{sni}");
        assert!(text.contains(why), "{sni}: {text}");
    }
    // Without [catalog.wan_federation] a server name is not routed, and explain says how.
    let (code, text) = {
        let out = sidegate(&[
            "explain",
            "--config",
            &example("gateway.toml"),
            "--sni",
            "consul-1.server.dc1.consul",
        ]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(1));
    assert!(text.contains("consul-wan-federation"), "{text}");

    // Every mistake in the section is named by its key path.
    let bad = format!(
        "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n[gateway]\nlisten = [\"127.0.0.1:8443\"]\n\
         [catalog.wan_federation]\ndomain = \"no such.domain\"\nservrs = []\n\
         [[catalog.wan_federation.servers]]\naddress = \"nowhere\"\n\
         [[catalog.wan_federation.servers]]\nnode = \"a.b\"\naddress = \"127.0.0.1:8300\"\n"
    );
    let errs = sidegate::config::parse(&bad).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "catalog.wan_federation.domain",
        "catalog.wan_federation.servrs",
        "catalog.wan_federation.servers[0].node",
        "catalog.wan_federation.servers[0].address",
        "catalog.wan_federation.servers[1].node",
    ] {
        assert!(paths.contains(&want), "{want}: {errs:?}");
    }
}

#[test]
fn version_names_the_target() {
    let out = sidegate(&["--version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with(&format!("sidegate {} (", env!("CARGO_PKG_VERSION")))
            && text.contains("linux"),
        "{text}"
    );
}

/// Where web's upstreams can go, as the catalog says: dc1's db, dc2's api (instances), this
/// place's gateway (LAN), dc2's and part2's gateways (WAN). Each mode of a dc2 upstream dials
/// a different address, so the dial list shows which mode was applied.
const CATALOG: &str = r#"
[[catalog.services]]
name = "db"
instances = ["10.0.0.5:21000"]

[[catalog.services]]
name = "api"
datacenter = "dc2"
instances = ["10.2.0.5:21000"]

[[catalog.gateways]]
lan = ["10.0.0.2:8443"]
wan = ["198.51.100.1:8443"]

[[catalog.gateways]]
datacenter = "dc2"
wan = ["203.0.113.10:8443"]

[[catalog.gateways]]
partition = "part2"
wan = ["10.0.9.9:8443"]
"#;

const DC2_WAN: &str = "203.0.113.10:8443";
const DC1_LAN: &str = "10.0.0.2:8443";
const API_INSTANCE: &str = "10.2.0.5:21000";

/// web's sidecar (dc1, the web fixture's leaf) with `sidecar` keys under `[sidecar]`, then
/// `rest` (upstreams, `[config_entries]`) and `CATALOG`, written to `dir/name`.
fn web_sidecar_file(dir: &Scratch, name: &str, sidecar: &str, rest: &str) -> PathBuf {
    let path = dir.path(name);
    std::fs::write(
        &path,
        format!(
            "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n\
             [tls]\ncert_file = \"{fx}/web.pem\"\nkey_file = \"{fx}/web-key-sec1.pem\"\n\
             ca_file = \"{fx}/ca.pem\"\n\
             [sidecar]\nservice = \"web\"\n{sidecar}\n{rest}\n{CATALOG}",
            fx = fixtures()
        ),
    )
    .unwrap();
    path
}

/// `check --json` shows Consul's answer for each upstream: the mode, the level that decided
/// it, the final target's SNI and SPIFFE ID in every mode, and the dial list for the mode.
/// Here the three highest levels; `check_json_resolves_every_level_below_the_proxy` has the
/// rest. web's override `{ name = "api" }` names no partition, so, as Consul normalizes it,
/// it is for api in web's entry's partition (`[mesh]`'s, default) only: it decides api in
/// dc2 (a service ID has no datacenter) but not api in part2, which falls to the proxy level.
#[test]
fn check_json_resolves_upstreams() {
    let dir = Scratch::new("cli-sidecar");
    let path = web_sidecar_file(
        &dir,
        "sidecar.toml",
        r#"mesh_gateway = { mode = "local" }"#,
        r#"
[[sidecar.upstreams]]
destination_name = "db"
datacenter = "dc2"
local_bind_port = 9191
mesh_gateway = { mode = "remote" }

[[sidecar.upstreams]]
destination_name = "api"
datacenter = "dc2"
local_bind_port = 9192

[[sidecar.upstreams]]
destination_name = "cache"
datacenter = "dc2"
local_bind_port = 9193

[[sidecar.upstreams]]
destination_name = "db"
local_bind_port = 9194

[[sidecar.upstreams]]
destination_name = "billing"
destination_partition = "part2"
local_bind_socket_path = "/run/sidegate/billing.sock"
mesh_gateway = { mode = "remote" }

[[sidecar.upstreams]]
destination_name = "api"
destination_partition = "part2"
local_bind_port = 9195

[config_entries.service_defaults.web]
upstream_config = { overrides = [ { name = "api", mesh_gateway = { mode = "none" } } ] }
"#,
    );
    let plan = check_json_clean(&path, &std::env::temp_dir());
    let expected = [
        (
            "db",
            "dc2",
            "default",
            "127.0.0.1:9191",
            "remote",
            "upstream",
            DC2_WAN,
        ),
        (
            "api",
            "dc2",
            "default",
            "127.0.0.1:9192",
            "none",
            "upstream_config_override",
            API_INSTANCE,
        ),
        (
            "cache",
            "dc2",
            "default",
            "127.0.0.1:9193",
            "local",
            "proxy",
            DC1_LAN,
        ),
        // Same place: the mode is reported but instances are dialled directly.
        (
            "db",
            "dc1",
            "default",
            "127.0.0.1:9194",
            "local",
            "proxy",
            "10.0.0.5:21000",
        ),
        (
            "billing",
            "dc1",
            "part2",
            "unix:/run/sidegate/billing.sock",
            "remote",
            "upstream",
            "10.0.9.9:8443",
        ),
        // The override is for api in the default partition: the proxy's local decides.
        (
            "api",
            "dc1",
            "part2",
            "127.0.0.1:9195",
            "local",
            "proxy",
            DC1_LAN,
        ),
    ];
    let expected = expected.map(|(name, dc, partition, bind, mode, source, dial)| {
        (name, dc, partition, bind, mode, source, vec![dial])
    });
    assert_upstreams(&plan, &expected);
}

/// Below the proxy level, each level in turn. Each file sets that level and every level
/// under it, each to another mode, so the answer names the level only if the order is
/// Consul's (`mesh::mode`). `cache` has service-defaults of its own (the target's
/// level), `api` none, so in the last file cache is decided by its own entry and api by
/// nothing. Every file also has overrides for `cache` in another partition and in another
/// namespace: they are not for this upstream and must never apply. The level after the
/// target's service-defaults, the target partition's proxy-defaults, exists only with the
/// Consul source (a file has one `proxy_defaults`); src/consul/assemble_tests.rs covers it.
#[test]
fn check_json_resolves_every_level_below_the_proxy() {
    let dir = Scratch::new("cli-levels");
    let remote = ("remote", DC2_WAN);
    let local = ("local", DC1_LAN);
    // The modes set at: web's upstream_config.defaults, web's service-defaults, proxy_defaults,
    // cache's service-defaults; then what cache and api resolve to, and from which level.
    let cases = [
        (
            [Some("remote"), Some("local"), Some("none"), Some("local")],
            [(remote, "upstream_config_defaults"); 2],
        ),
        (
            [None, Some("local"), Some("remote"), Some("none")],
            [(local, "service_defaults"); 2],
        ),
        (
            [None, None, Some("remote"), Some("local")],
            [(remote, "proxy_defaults"); 2],
        ),
        (
            [None, None, None, Some("local")],
            [
                (local, "target_service_defaults"),
                (("none", API_INSTANCE), "default"),
            ],
        ),
    ];
    for (n, ([defaults, web, proxy, cache], answers)) in cases.into_iter().enumerate() {
        let mode = |m: Option<&str>| {
            m.map_or(String::new(), |m| {
                format!("mesh_gateway = {{ mode = \"{m}\" }}")
            })
        };
        let defaults = defaults.map_or(String::new(), |m| {
            format!("defaults = {{ {} }},", mode(Some(m)))
        });
        let rest = format!(
            "[[sidecar.upstreams]]\ndestination_name = \"cache\"\ndatacenter = \"dc2\"\nlocal_bind_port = 9193\n\
             [[sidecar.upstreams]]\ndestination_name = \"api\"\ndatacenter = \"dc2\"\nlocal_bind_port = 9192\n\
             [config_entries]\n{proxy}\n\
             [config_entries.service_defaults.web]\n{web}\n\
             upstream_config = {{ {defaults} overrides = [\
               {{ name = \"cache\", partition = \"part2\", mesh_gateway = {{ mode = \"none\" }} }},\
               {{ name = \"cache\", namespace = \"ns2\", mesh_gateway = {{ mode = \"none\" }} }} ] }}\n\
             [config_entries.service_defaults.cache]\n{cache}\n",
            proxy = proxy.map_or(String::new(), |m| format!("proxy_defaults = {{ {} }}", mode(Some(m)))),
            web = mode(web),
            cache = mode(cache),
        );
        let path = web_sidecar_file(&dir, &format!("level{n}.toml"), "", &rest);
        let plan = check_json_clean(&path, &dir.0);
        let expected = [("cache", "127.0.0.1:9193"), ("api", "127.0.0.1:9192")]
            .into_iter()
            .zip(answers)
            .map(|((name, bind), ((mode, dial), source))| {
                (name, "dc2", "default", bind, mode, source, vec![dial])
            })
            .collect::<Vec<_>>();
        assert_upstreams(&plan, &expected);
    }
}

/// One upstream as `check --json` should show it: name, datacenter, partition, bind, mode,
/// mode_source and dial list; the SNI and SPIFFE ID follow from the first three.
type Upstream<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Vec<&'a str>,
);

fn assert_upstreams(plan: &serde_json::Value, expected: &[Upstream]) {
    let ups = plan["upstreams"].as_array().unwrap();
    assert_eq!(ups.len(), expected.len(), "{ups:#?}");
    for (u, (name, dc, partition, bind, mode, source, dial)) in ups.iter().zip(expected) {
        let what = format!("{name} in {dc}/{partition}");
        assert_eq!(u["destination_name"], *name, "{what}");
        assert_eq!(u["datacenter"], *dc, "{what}");
        assert_eq!(u["destination_partition"], *partition, "{what}");
        assert_eq!(u["bind"], *bind, "{what}");
        assert_eq!(u["mode"], *mode, "{what}");
        assert_eq!(u["mode_source"], *source, "{what}");
        assert_eq!(u["dial"], serde_json::json!(dial), "{what}");
        let (sni, spiffe) = if *partition == "default" {
            (
                format!("{name}.default.{dc}.internal.{TD}"),
                format!("spiffe://{TD}/ns/default/dc/{dc}/svc/{name}"),
            )
        } else {
            (
                format!("{name}.default.{partition}.{dc}.internal-v1.{TD}"),
                format!("spiffe://{TD}/ap/{partition}/ns/default/dc/{dc}/svc/{name}"),
            )
        };
        assert_eq!(u["sni"], sni.as_str(), "{what}");
        assert_eq!(u["spiffe_id"], spiffe.as_str(), "{what}");
    }
}

/// The example sidecar loads from any working directory (its certificate paths are relative
/// to the file), without a warning, and resolves each upstream it declares as its comments
/// say; its inbound listener and intentions are as written.
#[test]
fn example_sidecar_resolves_its_upstreams() {
    let plan = check_json_clean(Path::new(&example("sidecar.toml")), Path::new("/"));
    let expected: [Upstream; 4] = [
        (
            "db",
            "dc1",
            "default",
            "127.0.0.1:9191",
            "local",
            "proxy_defaults",
            vec!["127.0.0.1:21000", "127.0.0.1:21001"],
        ),
        (
            "api",
            "dc2",
            "default",
            "127.0.0.1:9192",
            "local",
            "proxy_defaults",
            vec!["127.0.0.1:8443"],
        ),
        (
            "billing",
            "dc1",
            "ap1",
            "127.0.0.1:9193",
            "remote",
            "upstream",
            vec!["127.0.0.1:18444"],
        ),
        (
            "search",
            "dc2",
            "default",
            "unix:/tmp/sidegate-web-search.sock",
            "none",
            "upstream_config_override",
            vec!["127.0.0.1:22000"],
        ),
    ];
    assert_upstreams(&plan, &expected);
    assert_eq!(plan["inbound"]["listen"], "127.0.0.1:21002");
    assert_eq!(plan["inbound"]["local_service_address"], "127.0.0.1:8080");
    assert_eq!(plan["inbound"]["intentions"]["default"], "deny");
    let rules: Vec<(&str, &str, &str)> = plan["inbound"]["intentions"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["source"].as_str().unwrap(),
                r["source_partition"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("frontend", "default", "allow"),
            ("reporting", "ap1", "allow")
        ]
    );
    assert!(plan["gateway"].is_null());
}

/// Plain `check` of a sidecar shows what it would serve: each upstream listener with its
/// mode and where it dials, and the inbound listener.
#[test]
fn check_text_lists_the_sidecar_listeners() {
    let out = sidegate(&["check", "--config", &example("sidecar.toml")]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("upstream 127.0.0.1:9191 -> db.default.dc1.internal.{TD} mode local (proxy_defaults) dial 127.0.0.1:21000, 127.0.0.1:21001"),
        format!("upstream 127.0.0.1:9192 -> api.default.dc2.internal.{TD} mode local (proxy_defaults) dial 127.0.0.1:8443"),
        format!("upstream unix:/tmp/sidegate-web-search.sock -> search.default.dc2.internal.{TD} mode none (upstream_config_override) dial 127.0.0.1:22000"),
        "inbound listen 127.0.0.1:21002 -> 127.0.0.1:8080, intentions: default deny, 2 rules".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
    }
}

/// A leaf from a file is renewed by nobody but the operator: `check` of a sidecar whose leaf
/// (signed by the configured CA) expires in three hours warns on stderr, and still succeeds
/// and prints the plan.
#[test]
fn check_warns_of_a_leaf_that_expires_within_a_day() {
    let dir = Scratch::new("cli-expiring");
    let pki = Pki::new();
    let spiffe = format!("spiffe://{TD}/ns/default/dc/dc1/svc/web");
    let in_three_hours = std::time::SystemTime::now() + std::time::Duration::from_secs(3 * 3600);
    let (cert, key) = pki.spiffe_leaf_pem(&spiffe, in_three_hours);
    for (name, pem) in [
        ("ca.pem", pki.ca_pem()),
        ("web.pem", cert),
        ("web-key.pem", key),
    ] {
        std::fs::write(dir.path(name), pem).unwrap();
    }
    let path = web_sidecar_toml(&dir);
    let out = sidegate(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: leaf certificate"))
        .unwrap_or_else(|| panic!("no expiry warning in:\n{stderr}"));
    // Three hours less the seconds since the leaf was made, in whole minutes.
    let minutes: u64 = warning
        .split(&format!("{spiffe} expires in "))
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{warning}"));
    assert!((170..=180).contains(&minutes), "{warning}");
    assert!(warning.ends_with("renew it"), "{warning}");
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("upstream 127.0.0.1:9191 -> db.default.dc1.internal."),
        "{plan}"
    );
}

/// A token in a line the TOML parser chokes on never reaches the terminal or the journal:
/// the parser quotes the offending line, so the error shows only where and why.
#[test]
fn a_toml_syntax_error_never_echoes_a_token() {
    let dir = Scratch::new("cli-token-leak");
    for (name, text) in [
        ("plain.toml", "[consul]\ntoken = \"s3cr3t-unterminated\n"),
        (
            "multiline.toml",
            "[consul]\nsidecar_service_id = \"w\"\ntoken = \"\"\"\ns3cr3t-unterminated\nmore\n",
        ),
        (
            "quoted-key.toml",
            "[consul]\n\"token\" = 's3cr3t-unterminated\n",
        ),
    ] {
        let path = dir.path(name);
        std::fs::write(&path, text).unwrap();
        let out = sidegate(&["check", "--config", path.to_str().unwrap()]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(78), "{name}: {stderr}");
        assert!(stderr.contains("not valid TOML"), "{name}: {stderr}");
        assert!(stderr.contains("line "), "{name}: no position in {stderr}");
        assert!(
            !stdout.contains("s3cr3t") && !stderr.contains("s3cr3t"),
            "{name}: the token leaked:\n{stdout}{stderr}"
        );
    }
}

/// A closed stdout/stderr (`sidegate check --config bad.toml 2>&1 | true`) does not abort the
/// CLI: the messages are lost, the exit code still says what happened.
#[test]
fn a_closed_output_pipe_keeps_the_exit_code() {
    let dir = Scratch::new("cli-epipe");
    let bad = dir.path("bad.toml");
    std::fs::write(&bad, "[gateway]\nlisten = 5\n").unwrap();
    let good = example("gateway.toml");
    for (args, code) in [
        (vec!["check", "--config", bad.to_str().unwrap()], 78),
        (vec!["check", "--config", "/nonexistent.toml"], 66),
        (vec!["check", "--config", good.as_str()], 0),
        (vec!["check"], 64),
    ] {
        // A pipe whose reading end is closed before the child starts: every write fails
        // with EPIPE (Rust ignores SIGPIPE, so the write returns the error).
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        drop(reader);
        let out = common::sidegate_command()
            .args(&args)
            .stdout(std::process::Stdio::from(writer.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(writer))
            .status()
            .unwrap();
        assert_eq!(out.code(), Some(code), "{args:?}");
    }
}

/// A FIFO where a key file belongs is refused at once (exit 78, naming the key) instead of
/// hanging `check` until some writer comes along.
#[test]
fn check_refuses_a_fifo_as_key_file_promptly() {
    let dir = Scratch::new("cli-fifo");
    let pki = Pki::new();
    let spiffe = format!("spiffe://{TD}/ns/default/dc/dc1/svc/web");
    let (cert, _) = pki.spiffe_leaf_pem(
        &spiffe,
        std::time::SystemTime::now() + std::time::Duration::from_secs(86400 * 30),
    );
    std::fs::write(dir.path("ca.pem"), pki.ca_pem()).unwrap();
    std::fs::write(dir.path("web.pem"), cert).unwrap();
    common::make_fifo(&dir.path("web-key.pem"));
    let path = web_sidecar_toml(&dir);
    let mut child = common::sidegate_command()
        .args(["check", "--config", path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(10) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("check hung on a FIFO key_file");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("tls.key_file: cannot read ")
            && stderr.contains("is a FIFO (named pipe), not a regular file"),
        "{stderr}"
    );
}

/// A CA of its own (rcgen), for identities `check` must refuse.
fn own_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// web's mesh leaf from `issuer`, valid from `not_before` for 30 days; `ca` says what its
/// basicConstraints say. PEM (certificate, key).
fn web_leaf(
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    not_before: std::time::SystemTime,
    ca: rcgen::IsCa,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    let spiffe = format!("spiffe://{TD}/ns/default/dc/dc1/svc/web");
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe.as_str().try_into().unwrap())];
    params.not_before = not_before.into();
    params.not_after = (not_before + std::time::Duration::from_secs(30 * 86400)).into();
    params.is_ca = ca;
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `check` of a web sidecar with these files (`None`: not written), key at `key_mode`.
fn check_identity(
    dir: &Scratch,
    cert: Option<&str>,
    key: &str,
    key_mode: u32,
    ca: &str,
) -> (Option<i32>, String) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(dir.path("web.pem"));
    if let Some(cert) = cert {
        std::fs::write(dir.path("web.pem"), cert).unwrap();
    }
    std::fs::write(dir.path("web-key.pem"), key).unwrap();
    std::fs::set_permissions(
        dir.path("web-key.pem"),
        std::fs::Permissions::from_mode(key_mode),
    )
    .unwrap();
    std::fs::write(dir.path("ca.pem"), ca).unwrap();
    let path = web_sidecar_toml(dir);
    let out = sidegate(&["check", "--config", path.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check` refuses identities no peer would accept, each reported at its key (exit 78): a
/// leaf another CA signed, a ca_file that is no CA (a CA:FALSE certificate, or the leaf
/// itself), a leaf not valid yet. A key others can read is a warning. An unreadable
/// cert_file does not hide a bad key_file.
#[test]
fn check_refuses_identities_that_cannot_work() {
    let dir = Scratch::new("cli-identity");
    let (ca, other) = (own_ca("the mesh CA"), own_ca("another CA"));
    let now = std::time::SystemTime::now();
    let ok = rcgen::IsCa::NoCa;
    let (cert, key) = web_leaf(&ca, now, ok);

    // The control: a leaf of the configured CA passes, silently with a private key.
    let (code, stderr) = check_identity(&dir, Some(&cert), &key, 0o600, &ca.pem());
    assert_eq!((code, stderr.as_str()), (Some(0), ""));

    let (code, stderr) = check_identity(&dir, Some(&cert), &key, 0o640, &ca.pem());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: tls.key_file: ")
            && stderr.contains("is readable by group or others (mode 640)"),
        "{stderr}"
    );

    let (foreign, foreign_key) = web_leaf(&other, now, ok);
    let (code, stderr) = check_identity(&dir, Some(&foreign), &foreign_key, 0o600, &ca.pem());
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("tls.cert_file: \"web.pem\" is not signed by any CA in ca_file"),
        "{stderr}"
    );

    let (code, stderr) = check_identity(&dir, Some(&cert), &key, 0o600, &cert);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("tls.ca_file: \"ca.pem\" certificate 1 is the leaf itself"),
        "{stderr}"
    );

    let (not_ca, _) = web_leaf(&ca, now, rcgen::IsCa::ExplicitNoCa);
    let (code, stderr) = check_identity(&dir, Some(&cert), &key, 0o600, &not_ca);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("tls.ca_file: \"ca.pem\" certificate 1 (")
            && stderr.contains("is not a CA"),
        "{stderr}"
    );

    let tomorrow = now + std::time::Duration::from_secs(86400);
    let (early, early_key) = web_leaf(&ca, tomorrow, ok);
    let (code, stderr) = check_identity(&dir, Some(&early), &early_key, 0o600, &ca.pem());
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("tls.cert_file: \"web.pem\" leaf is not valid yet"),
        "{stderr}"
    );

    let (code, stderr) = check_identity(&dir, None, "not a key\n", 0o600, &ca.pem());
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("tls.cert_file: cannot read "), "{stderr}");
    assert!(
        stderr.contains("tls.key_file: \"web-key.pem\" holds no private key"),
        "{stderr}"
    );
}

/// A web sidecar reading web.pem, web-key.pem and ca.pem next to it, in `dir`.
fn web_sidecar_toml(dir: &Scratch) -> PathBuf {
    let path = dir.path("sidecar.toml");
    std::fs::write(
        &path,
        format!(
            "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n\
             [tls]\ncert_file = \"web.pem\"\nkey_file = \"web-key.pem\"\nca_file = \"ca.pem\"\n\
             [sidecar]\nservice = \"web\"\n\
             [[sidecar.upstreams]]\ndestination_name = \"db\"\nlocal_bind_port = 9191\n{CATALOG}"
        ),
    )
    .unwrap();
    path
}

/// `check --json` of a gateway-only file whose `[gateway]` section adds `extra`.
fn check_gateway(path: &std::path::Path, extra: &str) -> std::process::Output {
    std::fs::write(
        path,
        format!(
            "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n\
             [gateway]\nlisten = [\"127.0.0.1:0\"]\n{extra}\n"
        ),
    )
    .unwrap();
    sidegate(&["check", "--json", "--config", path.to_str().unwrap()])
}

/// `[gateway] max_pending_handshakes`: a quarter of max_connections unless given, and never
/// more than max_connections (which counts those connections too).
#[test]
fn max_pending_handshakes_defaults_to_a_quarter_and_stays_within_max_connections() {
    let dir = Scratch::new("cli-pending");
    let path = dir.path("gw.toml");
    let gateway = |extra: &str| check_gateway(&path, extra);
    for (extra, want) in [
        ("", 1024),
        ("max_connections = 100", 25),
        ("max_connections = 3", 1),
        ("max_pending_handshakes = 64", 64),
    ] {
        let out = gateway(extra);
        assert!(out.status.success(), "{extra}");
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            plan["gateway"]["max_pending_handshakes"], want,
            "{extra}: {plan}"
        );
    }
    let out = gateway("max_connections = 10\nmax_pending_handshakes = 11");
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("gateway.max_pending_handshakes: 11 is more than max_connections (10)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `[gateway] splice`: `auto` unless given, any of the three values shown by `check --json`,
/// anything else a configuration error naming the choices.
#[test]
fn splice_defaults_to_auto_and_refuses_other_values() {
    let dir = Scratch::new("cli-splice");
    let path = dir.path("gw.toml");
    let gateway = |extra: &str| check_gateway(&path, extra);
    for (extra, want) in [
        ("", "auto"),
        ("splice = \"always\"", "always"),
        ("splice = \"never\"", "never"),
    ] {
        let out = gateway(extra);
        assert!(out.status.success(), "{extra}");
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(plan["gateway"]["splice"], want, "{extra}: {plan}");
    }
    let out = gateway("splice = \"sometimes\"");
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "gateway.splice: \"sometimes\" is not one of \"auto\", \"always\", \"never\""
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
