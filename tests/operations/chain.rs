//! The discovery chain as `check` shows it, and the correctness items of the chain work:
//! entries scoped to their namespace and partition, no partitioned WAN route, names compared
//! without regard to case, a gateway that never routes to itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::sidecars::{check_json, check_json_clean};
use common::{Scratch, TD};
use serde_json::json;

fn fixtures() -> String {
    format!("{}/tests/fixtures/tls", env!("CARGO_MANIFEST_DIR"))
}

/// web's sidecar in dc1 (the web fixture's leaf), then `rest`.
fn web_file(dir: &Scratch, rest: &str) -> std::path::PathBuf {
    let path = dir.path("sidecar.toml");
    std::fs::write(
        &path,
        format!(
            "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n\
             [tls]\ncert_file = \"{fx}/web.pem\"\nkey_file = \"{fx}/web-key-sec1.pem\"\n\
             ca_file = \"{fx}/ca.pem\"\n\
             [sidecar]\nservice = \"web\"\n{rest}",
            fx = fixtures()
        ),
    )
    .unwrap();
    path
}

const RESOLVED: &str = r#"
[[sidecar.upstreams]]
destination_name = "db"
local_bind_port = 9191

[config_entries]
proxy_defaults = { mesh_gateway = { mode = "local" } }

[config_entries.service_resolvers.db]
default_subset = "v1"
connect_timeout = "3s"
subsets = { v1 = { filter = "Service.Meta.version == v1" },
            v2 = { filter = "Service.Meta.version == v2", only_passing = true } }
failover = { "*" = { datacenters = ["dc2"] } }

[[catalog.services]]
name = "db"
instances = [
  { address = "10.0.0.5:21000", meta = { version = "v1" } },
  { address = "10.0.0.6:21000", meta = { version = "v2" }, health = "warning" },
  { address = "10.0.0.7:21000", meta = { version = "v1" }, health = "critical" },
  "10.0.0.8:21000",
]

[[catalog.gateways]]
lan = ["10.0.0.2:8443"]
wan = ["198.51.100.1:8443"]

[[catalog.gateways]]
datacenter = "dc2"
wan = ["203.0.113.10:8443"]
"#;

/// The contract's example: the primary is db's default subset in dc1 (its instances with
/// version v1, the critical one left out), then dc2 through this place's gateway; the
/// upstream's own fields describe the first target.
#[test]
fn check_json_shows_each_upstreams_targets_in_dial_order() {
    let dir = Scratch::new("chain-check");
    let plan = check_json_clean(&web_file(&dir, RESOLVED), &std::env::temp_dir());
    let up = &plan["upstreams"][0];
    assert_eq!(up["connect_timeout_ms"], json!(3000));
    assert_eq!(
        up["targets"],
        json!([
            { "service": "db", "subset": "v1", "namespace": "default", "partition": "default",
              "datacenter": "dc1", "sni": format!("v1.db.default.dc1.internal.{TD}"),
              "spiffe_id": format!("spiffe://{TD}/ns/default/dc/dc1/svc/db"),
              "mode": "local", "mode_source": "proxy_defaults", "dial": ["10.0.0.5:21000"] },
            { "service": "db", "subset": "v1", "namespace": "default", "partition": "default",
              "datacenter": "dc2", "sni": format!("v1.db.default.dc2.internal.{TD}"),
              "spiffe_id": format!("spiffe://{TD}/ns/default/dc/dc2/svc/db"),
              "mode": "local", "mode_source": "proxy_defaults", "dial": ["10.0.0.2:8443"] },
        ])
    );
    assert_eq!(up["sni"], json!(format!("v1.db.default.dc1.internal.{TD}")));
    assert_eq!(up["dial"], json!(["10.0.0.5:21000"]));
    assert_eq!(
        up["spiffe_id"],
        json!(format!("spiffe://{TD}/ns/default/dc/dc1/svc/db"))
    );
}

/// `only_passing` drops the warning instance of v2; a redirect to v2 shows it.
#[test]
fn only_passing_drops_warning_instances() {
    let dir = Scratch::new("chain-passing");
    let text = RESOLVED.replace(
        "[config_entries.service_resolvers.db]",
        "[config_entries.service_resolvers.db-v2]\nredirect = { service = \"db\", service_subset = \"v2\" }\n\n[config_entries.service_resolvers.db]",
    ).replace("destination_name = \"db\"", "destination_name = \"db-v2\"");
    let (plan, stderr) = check_json(&web_file(&dir, &text), &std::env::temp_dir());
    let first = &plan["upstreams"][0]["targets"][0];
    assert_eq!(first["subset"], json!("v2"));
    assert_eq!(first["dial"], json!([]), "{stderr}");
    assert!(stderr.contains("nothing to dial"), "{stderr}");
}

/// The gateway's view of the same resolver: the plain name serves the default subset's
/// instances, each subset its own, with `"subset"` in the route.
#[test]
fn gateway_routes_one_subset_each() {
    let dir = Scratch::new("chain-gateway");
    let path = dir.path("gateway.toml");
    let catalog = RESOLVED
        .split("[config_entries.service_resolvers.db]")
        .nth(1)
        .unwrap();
    std::fs::write(
        &path,
        format!(
            "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n[gateway]\nlisten = [\"127.0.0.1:8443\"]\n\
             [config_entries.service_resolvers.db]\n{catalog}"
        ),
    )
    .unwrap();
    let (plan, _) = check_json(&path, &std::env::temp_dir());
    let routes: Vec<(String, serde_json::Value, serde_json::Value)> = plan["gateway"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["match"].as_str().unwrap().to_owned(),
                r["subset"].clone(),
                r["endpoints"].clone(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            (
                format!("db.default.dc1.internal.{TD}"),
                json!(null),
                json!(["10.0.0.5:21000"])
            ),
            (
                format!("v1.db.default.dc1.internal.{TD}"),
                json!("v1"),
                json!(["10.0.0.5:21000"])
            ),
            (
                format!("v2.db.default.dc1.internal.{TD}"),
                json!("v2"),
                json!([])
            ),
            (
                format!("*.dc2.internal.{TD}"),
                json!(null),
                json!(["203.0.113.10:8443"])
            ),
        ]
    );
    let explain = |sni: String| {
        common::sidegate_command()
            .args(["explain", "--config"])
            .arg(&path)
            .args(["--sni", &sni])
            .output()
            .unwrap()
    };
    assert!(explain(format!("v1.db.default.dc1.internal.{TD}"))
        .status
        .success());
    let bogus = explain(format!("bogus.db.default.dc1.internal.{TD}"));
    assert_eq!(
        bogus.status.code(),
        Some(1),
        "an undefined subset has no route"
    );
}

fn plan_of(text: &str) -> sidegate::mesh::Plan {
    let config = sidegate::config::parse(text).unwrap_or_else(|e| panic!("{e:#?}"));
    sidegate::mesh::plan(&config.snapshot)
}

fn errors_of(text: &str) -> Vec<String> {
    sidegate::config::parse(text)
        .expect_err("must be refused")
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// `service_defaults` for db in default does not configure db in part2; an entry written for
/// part2 (the `partition` key) does.
#[test]
fn config_entries_belong_to_their_namespace_and_partition() {
    let base = format!(
        "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n\
         [tls]\ncert_file = \"{fx}/web.pem\"\nkey_file = \"{fx}/web-key-sec1.pem\"\nca_file = \"{fx}/ca.pem\"\n\
         [sidecar]\nservice = \"web\"\n\
         [[sidecar.upstreams]]\ndestination_name = \"db\"\ndestination_partition = \"part2\"\nlocal_bind_port = 9191\n\
         [[sidecar.upstreams]]\ndestination_name = \"db\"\nlocal_bind_port = 9192\ndatacenter = \"dc2\"\n",
        fx = fixtures()
    );
    let modes = |entries: &str| -> Vec<(String, String)> {
        plan_of(&format!("{base}{entries}"))
            .upstreams
            .iter()
            .map(|u| {
                let v = serde_json::to_value(u).unwrap();
                (
                    v["mode"].as_str().unwrap().to_owned(),
                    v["mode_source"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pair = |m: &str, s: &str| (m.to_owned(), s.to_owned());
    assert_eq!(
        modes("[config_entries.service_defaults.db]\nmesh_gateway = { mode = \"remote\" }\n"),
        [
            pair("none", "default"),
            pair("remote", "target_service_defaults")
        ],
        "db's entry in default applies to db in default only"
    );
    assert_eq!(
        modes("[config_entries.service_defaults.db-part2]\nname = \"db\"\npartition = \"part2\"\nmesh_gateway = { mode = \"local\" }\n"),
        [pair("local", "target_service_defaults"), pair("none", "default")],
    );
    // A resolver in part2 redirects db there only.
    let plan = plan_of(&format!(
        "{base}[config_entries.service_resolvers.db]\npartition = \"part2\"\nredirect = {{ service = \"db2\" }}\n"
    ));
    let services: Vec<&str> = plan
        .upstreams
        .iter()
        .map(|u| u.targets[0].service.as_str())
        .collect();
    assert_eq!(services, ["db2", "db"]);
}

/// WAN federation joins the default partitions of datacenters only.
#[test]
fn no_partitioned_wan_route() {
    let plan = plan_of(&format!(
        "[mesh]\ndatacenter = \"dc1\"\npartition = \"ap1\"\ntrust_domain = \"{TD}\"\n\
         [gateway]\nlisten = [\"127.0.0.1:8443\"]\n\
         [[catalog.gateways]]\ndatacenter = \"dc2\"\nwan = [\"203.0.113.10:8443\"]\n\
         [[catalog.gateways]]\ndatacenter = \"dc1\"\npartition = \"ap2\"\nwan = [\"10.0.9.9:8443\"]\n"
    ));
    let gw = plan.gateway.unwrap();
    let patterns: Vec<&str> = gw.routes.routes().map(|r| r.pattern).collect();
    assert_eq!(patterns, [format!("*.ap2.dc1.internal-v1.{TD}")]);
    assert!(
        plan.warnings.iter().any(|w| w.contains("WAN federation")),
        "{:?}",
        plan.warnings
    );
}

/// Consul's names are case-insensitive: `DB` and `db` are one service, `DC1` and `dc1` one
/// datacenter, and a gateway never routes to itself.
#[test]
fn names_compare_without_regard_to_case() {
    let mesh = format!("[mesh]\ndatacenter = \"DC1\"\ntrust_domain = \"{TD}\"\n[gateway]\nlisten = [\"127.0.0.1:8443\"]\n");
    let errors = errors_of(&format!(
        "{mesh}[[catalog.services]]\nname = \"db\"\ninstances = []\n[[catalog.services]]\nname = \"DB\"\ninstances = []\n"
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("catalog.services[1]") && e.contains("listed twice")),
        "{errors:?}"
    );
    let errors = errors_of(&format!(
        "{mesh}[config_entries.service_resolvers.db]\nconnect_timeout = \"1s\"\n[config_entries.service_resolvers.DB]\nconnect_timeout = \"2s\"\n"
    ));
    assert!(
        errors.iter().any(|e| e.contains("same entry")),
        "{errors:?}"
    );
    // The dc1 entry is this gateway's own place: no WAN route to itself.
    let plan = plan_of(&format!(
        "{mesh}[[catalog.gateways]]\ndatacenter = \"dc1\"\nwan = [\"127.0.0.1:8443\"]\n"
    ));
    assert!(plan.gateway.unwrap().routes.is_empty());
    // Another place's WAN address that is this gateway itself is refused.
    let errors = errors_of(&format!(
        "{mesh}[[catalog.gateways]]\ndatacenter = \"dc2\"\nwan = [\"127.0.0.1:8443\"]\n"
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("catalog.gateways[0].wan") && e.contains("route to itself")),
        "{errors:?}"
    );
}

/// Every resolver key is read, and every mistake named at its key path.
#[test]
fn resolver_errors_name_their_key_path() {
    let mesh = format!("[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n[gateway]\nlisten = [\"127.0.0.1:0\"]\n");
    let r = "[config_entries.service_resolvers.db]\n";
    let cases: &[(String, &str)] = &[
        (format!("{r}default_subset = \"v1\"\n"), "config_entries.service_resolvers.db.default_subset: \"v1\" is not one of this entry's subsets"),
        (format!("{r}subsets = {{ v1 = {{ filter = \"Service.Meta.version matches v\" }} }}\n"), "config_entries.service_resolvers.db.subsets.v1.filter: \"Service.Meta.version matches v\": `matches`"),
        (format!("{r}subsets = {{ v1 = {{ filter = \"Checks.Status == passing\" }} }}\n"), "subsets.v1.filter: \"Checks.Status == passing\": selector \"Checks.Status\" is not supported"),
        (format!("{r}subsets = {{ v1 = {{ fliter = \"\" }} }}\n"), "subsets.v1.fliter: unknown key (did you mean `filter`?)"),
        (format!("{r}subsets = {{ v1 = {{ only_passing = \"yes\" }} }}\n"), "subsets.v1.only_passing: expected true or false"),
        (format!("{r}connect_timeout = \"3\"\n"), "service_resolvers.db.connect_timeout: \"3\" is not a duration"),
        (format!("{r}failover = {{ v9 = {{ datacenters = [\"dc2\"] }} }}\n"), "service_resolvers.db.failover.v9: is neither \"*\" nor one of this entry's subsets"),
        (format!("{r}failover = {{ \"*\" = {{}} }}\n"), "service_resolvers.db.failover.*: names nothing to fail over to"),
        (format!("{r}failover = {{ \"*\" = {{ datacenters = [\"dc2\"], targets = [{{ datacenter = \"dc3\" }}] }} }}\n"), "failover.*.targets: cannot be set with `datacenters`"),
        (format!("{r}failover = {{ \"*\" = {{ targets = [{{ peer = \"x\" }}] }} }}\n"), "failover.*.targets[0].peer: unknown key"),
        (format!("{r}redirect = {{ service = \"db2\" }}\nsubsets = {{ v1 = {{}} }}\n"), "service_resolvers.db.redirect: cannot be set with subsets"),
        (format!("{r}redirect = {{}}\n"), "service_resolvers.db.redirect: is empty"),
        (format!("{r}redirect = {{ service = \"db\", service_subset = \"v3\" }}\n"), "config_entries.service_resolvers.db: service \"db\" has no subset named \"v3\""),
        (format!("{r}redirect = {{ service = \"db2\" }}\n[config_entries.service_resolvers.db2]\nredirect = {{ service = \"db\" }}\n"), "circular resolver redirect"),
        (format!("{r}redirect = {{ service = \"db2\", service_subset = \"v1\" }}\n"), "service \"db2\" has no subset named \"v1\""),
        (format!("{r}redirct = {{}}\n"), "service_resolvers.db.redirct: unknown key (did you mean `redirect`?)"),
        ("[config_entries.service_defaults.db]\nprotocol = \"udp\"\n".to_owned(), "config_entries.service_defaults.db.protocol: \"udp\" is not one of Consul's protocols"),
        (
            "[[catalog.services]]\nname = \"db\"\ninstances = [{ address = \"10.0.0.1:1\", health = \"sick\" }]\n".to_owned(),
            "catalog.services[0].instances[0].health: \"sick\" is not",
        ),
        (
            "[[catalog.services]]\nname = \"db\"\ninstances = [{ adress = \"10.0.0.1:1\" }]\n".to_owned(),
            "catalog.services[0].instances[0].adress: unknown key (did you mean `address`?)",
        ),
        (
            "[[catalog.services]]\nname = \"db\"\ninstances = [{ address = \"10.0.0.1:1\", meta = { v = 1 } }]\n".to_owned(),
            "catalog.services[0].instances[0].meta.v: expected a string",
        ),
    ];
    for (rest, want) in cases {
        let errors = errors_of(&format!("{mesh}{rest}"));
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "want {want:?}, got {errors:#?}"
        );
    }
}

/// Splitters, routers and an HTTP protocol are accepted with a warning that names them:
/// sidegate carries TCP.
#[test]
fn l7_entries_are_ignored_with_a_warning() {
    let config = sidegate::config::parse(&format!(
        "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
         [config_entries.service_splitters.db]\nsplits = [{{ weight = 100 }}]\n\
         [config_entries.service_routers.api]\nroutes = []\n\
         [config_entries.service_defaults.db]\nprotocol = \"http\"\n"
    ))
    .unwrap();
    let w = config.warnings.join("\n");
    assert!(w.contains("service-splitter \"db\" is ignored"), "{w}");
    assert!(w.contains("service-router \"api\" is ignored"), "{w}");
    assert!(
        w.contains("config_entries.service_defaults.db.protocol: \"http\" is carried as TCP"),
        "{w}"
    );
}

/// Each target has its own mode: the levels the upstream and the downstream set apply to
/// all of them, the target's own `service_defaults` only to that target.
#[test]
fn each_target_takes_its_own_target_level_mode() {
    let plan = plan_of(&format!(
        "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n\
         [tls]\ncert_file = \"{fx}/web.pem\"\nkey_file = \"{fx}/web-key-sec1.pem\"\nca_file = \"{fx}/ca.pem\"\n\
         [sidecar]\nservice = \"web\"\n\
         [[sidecar.upstreams]]\ndestination_name = \"db\"\nlocal_bind_port = 9191\n\
         [[sidecar.upstreams]]\ndestination_name = \"db\"\nlocal_bind_port = 9192\nmesh_gateway = {{ mode = \"local\" }}\n\
         [config_entries.service_resolvers.db]\n\
         failover = {{ \"*\" = {{ targets = [ {{ service = \"db-backup\", datacenter = \"dc2\" }} ] }} }}\n\
         [config_entries.service_defaults.db-backup]\nmesh_gateway = {{ mode = \"remote\" }}\n\
         [[catalog.gateways]]\nlan = [\"10.0.0.2:8443\"]\n\
         [[catalog.gateways]]\ndatacenter = \"dc2\"\nwan = [\"203.0.113.10:8443\"]\n",
        fx = fixtures()
    ));
    let modes = |u: usize| -> Vec<(String, String, String, Vec<String>)> {
        plan.upstreams[u]
            .targets
            .iter()
            .map(|t| {
                let v = serde_json::to_value(t).unwrap();
                (
                    t.sni.clone(),
                    v["mode"].as_str().unwrap().to_owned(),
                    v["mode_source"].as_str().unwrap().to_owned(),
                    t.dial.as_slice().iter().map(ToString::to_string).collect(),
                )
            })
            .collect()
    };
    let row = |sni: String, mode: &str, source: &str, dial: &[&str]| {
        (
            sni,
            mode.to_owned(),
            source.to_owned(),
            dial.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        modes(0),
        [
            row(
                format!("db.default.dc1.internal.{TD}"),
                "none",
                "default",
                &[]
            ),
            row(
                format!("db-backup.default.dc2.internal.{TD}"),
                "remote",
                "target_service_defaults",
                &["203.0.113.10:8443"]
            ),
        ]
    );
    // The upstream's own mode is above the target's level: it decides for both.
    assert_eq!(
        modes(1),
        [
            row(
                format!("db.default.dc1.internal.{TD}"),
                "local",
                "upstream",
                &[]
            ),
            row(
                format!("db-backup.default.dc2.internal.{TD}"),
                "local",
                "upstream",
                &["10.0.0.2:8443"]
            ),
        ]
    );
    assert_eq!(
        plan.upstreams[0].targets[1].spiffe_id,
        format!("spiffe://{TD}/ns/default/dc/dc2/svc/db-backup")
    );
}
