//! One chain, two compilers: the same `service-resolver`, `service-defaults` and
//! `proxy-defaults` entries written into a real Consul 1.8.7 agent and into a file, and the
//! targets sidegate's own compiler gives (the file source) compared with the chain Consul
//! compiles (`POST /v1/discovery-chain/:service`, what the `[consul]` source follows): the
//! same targets in the same order, with the same service, subset, namespace, datacenter, SNI,
//! connect timeout, and mesh-gateway mode for each target outside this datacenter (Consul
//! leaves it empty for a target in the datacenter the chain is used in).
//!
//! Then the real binary following the agent dials per the chain it follows.
//!
//! Not covered, because Consul 1.8.7 has no such key: failover `targets` (Consul 1.13+) and
//! any namespace or partition other than `default` (Enterprise). `redirect.namespace` and
//! `failover.namespace` are therefore only ever `default` here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::apps::app;
use crate::common::{eventually_within, free_port};
use crate::consul::traffic::{carries, refused};
use crate::consul::{service_with_sidecar, sidecar_toml, Agent, Scratch, Shown, Sidegate};
use sidegate::consul::api::discovery_chain;
use sidegate::mesh::chain::filter::Filter;
use sidegate::mesh::chain::{resolver_of, Subset, Target};

/// The trust domain of the file side: the fixtures' leaf is web's in it.
const FILE_TD: &str = "11111111-2222-3333-4444-555555555555.consul";

/// One configuration: the entries (Consul's JSON), and the upstream of web's sidecar.
struct Case {
    name: &'static str,
    entries: Vec<Value>,
    upstream: &'static str,
    datacenter: &'static str,
    mode: Option<&'static str>,
    connect_timeout_ms: Option<u64>,
}

fn case(name: &'static str, entries: Vec<Value>) -> Case {
    Case {
        name,
        entries,
        upstream: "db",
        datacenter: "dc1",
        mode: None,
        connect_timeout_ms: None,
    }
}

fn resolver(name: &str, body: Value) -> Value {
    let mut v = json!({"Kind": "service-resolver", "Name": name});
    v.as_object_mut()
        .unwrap()
        .extend(body.as_object().unwrap().clone());
    v
}

fn defaults(name: &str, mode: &str) -> Value {
    json!({"Kind": "service-defaults", "Name": name, "Protocol": "tcp", "MeshGateway": {"Mode": mode}})
}

fn proxy_defaults(mode: &str) -> Value {
    json!({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": mode}})
}

fn subsets_v1_v2() -> Value {
    json!({
        "v1": {"Filter": "Service.Meta.version == v1"},
        "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": true}
    })
}

fn cases() -> Vec<Case> {
    let r = resolver;
    vec![
        case("no entries", vec![]),
        case(
            "default_subset",
            vec![r(
                "db",
                json!({"DefaultSubset": "v1", "Subsets": subsets_v1_v2()}),
            )],
        ),
        case(
            "default_subset with only_passing and a tag filter",
            vec![r(
                "db",
                json!({"DefaultSubset": "canary", "Subsets": {
                    "canary": {"Filter": "canary in Service.Tags and Service.Meta.zone != z9", "OnlyPassing": true},
                    "stable": {"Filter": ""}
                }}),
            )],
        ),
        case(
            "subsets without a default subset",
            vec![r("db", json!({"Subsets": subsets_v1_v2()}))],
        ),
        case(
            "redirect to another service",
            vec![r("db", json!({"Redirect": {"Service": "db2"}}))],
        ),
        case(
            "redirect to another service's subset",
            // Consul checks the subset exists when the entry is written: db2's first.
            vec![
                r("db2", json!({"Subsets": subsets_v1_v2()})),
                r(
                    "db",
                    json!({"Redirect": {"Service": "db2", "ServiceSubset": "v2"}}),
                ),
            ],
        ),
        case(
            "redirect to a service with a default subset",
            vec![
                r("db", json!({"Redirect": {"Service": "db2"}})),
                r(
                    "db2",
                    json!({"DefaultSubset": "v1", "Subsets": subsets_v1_v2()}),
                ),
            ],
        ),
        case(
            "redirect to another datacenter",
            vec![r("db", json!({"Redirect": {"Datacenter": "dc2"}}))],
        ),
        case(
            "redirect twice",
            vec![
                r("db", json!({"Redirect": {"Service": "db2"}})),
                r(
                    "db2",
                    json!({"Redirect": {"Service": "db3", "Datacenter": "dc3"}}),
                ),
            ],
        ),
        case(
            "failover to datacenters",
            vec![r(
                "db",
                json!({"Failover": {"*": {"Datacenters": ["dc2", "dc3"]}}}),
            )],
        ),
        case(
            "failover datacenters keep the default subset",
            vec![r(
                "db",
                json!({"DefaultSubset": "v1", "Subsets": subsets_v1_v2(),
                       "Failover": {"*": {"Datacenters": ["dc2"]}}}),
            )],
        ),
        case(
            "failover to another service",
            vec![r(
                "db",
                json!({"Failover": {"*": {"Service": "db-backup"}}}),
            )],
        ),
        case(
            "failover to another subset",
            vec![r(
                "db",
                json!({"DefaultSubset": "v1", "Subsets": subsets_v1_v2(),
                       "Failover": {"*": {"ServiceSubset": "v2"}}}),
            )],
        ),
        case(
            "per-subset failover wins over *",
            vec![r(
                "db",
                json!({"DefaultSubset": "v1", "Subsets": subsets_v1_v2(),
                       "Failover": {"v1": {"ServiceSubset": "v2"}, "*": {"Datacenters": ["dc2"]}}}),
            )],
        ),
        case(
            "* when the subset has no failover entry",
            vec![r(
                "db",
                json!({"DefaultSubset": "v1", "Subsets": subsets_v1_v2(),
                       "Failover": {"v2": {"ServiceSubset": "v1"}, "*": {"Datacenters": ["dc3"]}}}),
            )],
        ),
        case(
            "failover to another service in datacenters",
            vec![r(
                "db",
                json!({"Failover": {"*": {"Service": "db-backup", "Datacenters": ["dc2", "dc3"]}}}),
            )],
        ),
        case(
            "failover to a service with its own resolver",
            vec![
                r("db", json!({"Failover": {"*": {"Service": "db-backup"}}})),
                r(
                    "db-backup",
                    json!({"DefaultSubset": "v2", "Subsets": subsets_v1_v2(),
                                      "Failover": {"*": {"Datacenters": ["dc3"]}}}),
                ),
            ],
        ),
        case(
            "failover to a redirected service",
            vec![
                r("db", json!({"Failover": {"*": {"Service": "db-backup"}}})),
                r("db-backup", json!({"Redirect": {"Datacenter": "dc2"}})),
            ],
        ),
        case(
            "failover datacenters naming the primary's own",
            vec![r(
                "db",
                json!({"Failover": {"*": {"Datacenters": ["dc1", "dc2"]}}}),
            )],
        ),
        case(
            "failover subset in other datacenters",
            vec![r(
                "db",
                json!({"Subsets": subsets_v1_v2(), "DefaultSubset": "v1",
                       "Failover": {"*": {"ServiceSubset": "v2", "Datacenters": ["dc2"]}}}),
            )],
        ),
        case(
            "connect_timeout",
            vec![r(
                "db",
                json!({"ConnectTimeout": "3s", "Failover": {"*": {"Datacenters": ["dc2"]}}}),
            )],
        ),
        Case {
            connect_timeout_ms: Some(7_000),
            ..case(
                "the upstream's connect timeout wins",
                vec![r("db", json!({"ConnectTimeout": "1m30s"}))],
            )
        },
        Case {
            mode: Some("local"),
            ..case(
                "the upstream's mode applies to every target",
                vec![r(
                    "db",
                    json!({"Failover": {"*": {"Datacenters": ["dc2", "dc3"]}}}),
                )],
            )
        },
        case(
            "the target's service-defaults mode",
            vec![
                defaults("db", "remote"),
                r("db", json!({"Failover": {"*": {"Datacenters": ["dc2"]}}})),
            ],
        ),
        case(
            "proxy-defaults mode",
            vec![
                proxy_defaults("local"),
                r("db", json!({"Failover": {"*": {"Datacenters": ["dc2"]}}})),
            ],
        ),
        case(
            "each failover target its own service-defaults mode",
            vec![
                defaults("db-backup", "remote"),
                r(
                    "db",
                    json!({"Failover": {"*": {"Service": "db-backup", "Datacenters": ["dc2"]}}}),
                ),
            ],
        ),
        Case {
            mode: Some("none"),
            ..case(
                "the upstream's mode over service-defaults",
                vec![
                    defaults("db", "remote"),
                    r("db", json!({"Redirect": {"Datacenter": "dc2"}})),
                ],
            )
        },
        Case {
            datacenter: "dc2",
            mode: Some("remote"),
            ..case(
                "an upstream in another datacenter fails over home",
                vec![r(
                    "db",
                    json!({"Failover": {"*": {"Datacenters": ["dc1", "dc3"]}}}),
                )],
            )
        },
        case(
            "an HTTP service's routers and splitters are L7",
            vec![
                json!({"Kind": "service-defaults", "Name": "db", "Protocol": "http"}),
                json!({"Kind": "service-defaults", "Name": "db2", "Protocol": "http"}),
                r("db", json!({"Failover": {"*": {"Datacenters": ["dc2"]}}})),
                json!({"Kind": "service-splitter", "Name": "db",
                       "Splits": [{"Weight": 50, "Service": "db2"}, {"Weight": 50}]}),
                json!({"Kind": "service-router", "Name": "db", "Routes": [
                    {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": "db2"}}
                ]}),
            ],
        ),
        Case {
            upstream: "api",
            ..case(
                "another upstream with subsets and redirect entries around",
                vec![
                    r(
                        "api",
                        json!({"DefaultSubset": "v2", "Subsets": subsets_v1_v2(),
                                    "Failover": {"v2": {"Service": "db", "Datacenters": ["dc2"]}}}),
                    ),
                    r(
                        "db",
                        json!({"DefaultSubset": "v1", "Subsets": subsets_v1_v2()}),
                    ),
                ],
            )
        },
    ]
}

/// Consul's CamelCase keys as the file's snake_case ones.
fn snake(key: &str) -> String {
    let mut out = String::new();
    for (i, c) in key.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A JSON value as a TOML inline value; keys converted to snake_case except the names of
/// subsets and failover entries, which are the user's.
fn toml(v: &Value, keep_keys: bool) -> String {
    match v {
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(|x| toml(x, false)).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(o) => {
            let items: Vec<String> = o
                .iter()
                .map(|(k, x)| {
                    let key = if keep_keys { k.clone() } else { snake(k) };
                    let inner_keeps = matches!(k.as_str(), "Subsets" | "Failover");
                    format!("{} = {}", Value::String(key), toml(x, inner_keeps))
                })
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        Value::Null => "\"\"".into(),
    }
}

fn file_for(case: &Case) -> String {
    let fx = format!("{}/tests/fixtures/tls", env!("CARGO_MANIFEST_DIR"));
    let mut text = format!(
        "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{FILE_TD}\"\n\
         [tls]\ncert_file = \"{fx}/web.pem\"\nkey_file = \"{fx}/web-key-sec1.pem\"\nca_file = \"{fx}/ca.pem\"\n\
         [sidecar]\nservice = \"web\"\n\
         [[sidecar.upstreams]]\ndestination_name = \"{}\"\ndatacenter = \"{}\"\nlocal_bind_port = 9191\n",
        case.upstream, case.datacenter
    );
    if let Some(m) = case.mode {
        writeln!(text, "mesh_gateway = {{ mode = \"{m}\" }}").unwrap();
    }
    if let Some(ms) = case.connect_timeout_ms {
        writeln!(text, "connect_timeout_ms = {ms}").unwrap();
    }
    text.push_str("[config_entries]\n");
    for e in &case.entries {
        let mut body = e.as_object().unwrap().clone();
        let kind = body.remove("Kind").unwrap();
        let name = body.remove("Name").unwrap();
        let value = toml(&Value::Object(body), false);
        match kind.as_str().unwrap() {
            "proxy-defaults" => writeln!(text, "proxy_defaults = {value}").unwrap(),
            "service-defaults" => {
                writeln!(text, "service_defaults.{name} = {value}").unwrap();
            }
            "service-resolver" => {
                writeln!(text, "service_resolvers.{name} = {value}").unwrap();
            }
            "service-splitter" => {
                writeln!(text, "service_splitters.{name} = {value}").unwrap();
            }
            "service-router" => {
                writeln!(text, "service_routers.{name} = {value}").unwrap();
            }
            other => panic!("{other}"),
        }
    }
    text
}

/// One target as both sides are compared: service, subset, namespace, datacenter, SNI, the
/// mode outside dc1, and the subset's definition (filter text, only_passing).
type Row = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<(String, bool)>,
);

fn shown(s: &Subset) -> (String, bool) {
    (
        s.filter.as_ref().map_or("", Filter::text).to_owned(),
        s.only_passing,
    )
}

fn mode_word(m: sidegate::mesh::mode::Mode) -> String {
    serde_json::to_value(m)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// sidegate's own compiler: the plan of the file, and the override the `[consul]` source
/// sends Consul for this upstream (the levels the upstream and the downstream set).
fn file_side(case: &Case) -> (Vec<Row>, Duration, Option<String>) {
    let text = file_for(case);
    let config =
        sidegate::config::parse(&text).unwrap_or_else(|e| panic!("{}: {e:#?}\n{text}", case.name));
    let snap = &config.snapshot;
    let sidecar = snap.sidecar.as_ref().unwrap();
    let over = snap
        .config_entries
        .chain_override(sidecar, &sidecar.upstreams[0])
        .map(mode_word);
    let plan = sidegate::mesh::plan(snap);
    assert!(
        plan.warnings
            .iter()
            .all(|w| !w.contains("cannot be compiled")),
        "{}: {:?}",
        case.name,
        plan.warnings
    );
    let u = &plan.upstreams[0];
    let rows = u
        .targets
        .iter()
        .map(|t| {
            let target = Target {
                service: t.service.clone(),
                subset: t.subset.clone(),
                namespace: t.namespace.clone(),
                partition: t.partition.clone(),
                datacenter: t.datacenter.clone(),
            };
            let subset = resolver_of(&snap.config_entries.service_resolvers, &target)
                .and_then(|r| r.subsets.get(&t.subset))
                .map(shown);
            (
                t.service.clone(),
                t.subset.clone(),
                t.namespace.clone(),
                t.datacenter.clone(),
                t.sni.clone(),
                (t.datacenter != "dc1").then(|| mode_word(t.mode)),
                subset,
            )
        })
        .collect();
    (rows, u.connect_timeout, over)
}

/// Consul's compiler, asked as the `[consul]` source asks it.
fn consul_side(
    agent: &Agent,
    case: &Case,
    over: Option<&str>,
    consul_td: &str,
) -> (Vec<Row>, Duration) {
    // As the `[consul]` source asks: compiled as TCP, the chain of an HTTP service is its
    // resolver part (routers and splitters act on requests).
    let mut body = serde_json::Map::new();
    body.insert("OverrideProtocol".into(), json!("tcp"));
    if let Some(m) = over {
        body.insert("OverrideMeshGateway".into(), json!({"Mode": m}));
    }
    if let Some(ms) = case.connect_timeout_ms {
        body.insert("OverrideConnectTimeout".into(), json!(format!("{ms}ms")));
    }
    let r = agent.call(
        "POST",
        &format!(
            "/v1/discovery-chain/{}?compile-dc={}",
            case.upstream, case.datacenter
        ),
        &Value::Object(body).to_string(),
    );
    assert_eq!(r.status, 200, "{}: {}", case.name, r.body);
    let compiled = discovery_chain::parse(&r.body).unwrap();
    let chain = compiled
        .to_chain()
        .unwrap_or_else(|e| panic!("{}: {e}: {}", case.name, r.body));
    let rows = chain
        .targets
        .iter()
        .zip(&chain.compiled)
        .map(|(t, c)| {
            let mode = c.mesh_gateway.map(mode_word);
            if t.datacenter == "dc1" {
                assert_eq!(mode, None, "{}: Consul sets no mode in place", case.name);
            }
            (
                t.service.clone(),
                t.subset.clone(),
                t.namespace.clone(),
                t.datacenter.clone(),
                c.sni.replace(consul_td, FILE_TD),
                // Consul's empty mode outside this datacenter is `none`.
                (t.datacenter != "dc1").then(|| mode.unwrap_or_else(|| "none".into())),
                c.subset.as_ref().map(|s| shown(s.as_ref().unwrap())),
            )
        })
        .collect();
    (rows, chain.connect_timeout)
}

fn delete_all(agent: &Agent, entries: &[Value]) {
    // Resolvers first: a resolver may lean on another's subsets.
    for e in entries.iter().rev() {
        let path = format!(
            "/v1/config/{}/{}",
            e["Kind"].as_str().unwrap(),
            e["Name"].as_str().unwrap()
        );
        agent.ok("DELETE", &path, &Value::Null);
    }
}

#[test]
fn sidegate_and_consul_compile_the_same_chains() {
    let agent = Agent::dev("dc1");
    let consul_td = agent.roots().trust_domain;
    let all = cases();
    assert!(all.len() >= 20);
    let mut failures = Vec::new();
    for c in &all {
        for e in &c.entries {
            agent.config_entry(e);
        }
        let (file, file_timeout, over) = file_side(c);
        let (consul, consul_timeout) = consul_side(&agent, c, over.as_deref(), &consul_td);
        if file != consul || file_timeout != consul_timeout {
            failures.push(format!(
                "{}:\n  file   {file_timeout:?} {file:?}\n  consul {consul_timeout:?} {consul:?}\n  (override {over:?})\n{}",
                c.name,
                file_for(c)
            ));
        }
        delete_all(&agent, &c.entries);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Chains reach the data path (`[consul]`, the real binary): web's upstream `db` follows
/// db's resolver live — to db itself, then redirected to db2, then to db2's subset `v1`,
/// which selects none of db2's instances (db2's registration has `version = v2`, which its
/// sidecar inherits): nothing is dialled then, never every instance; then to subset `v2`,
/// db2 again.
#[test]
fn a_sidecar_following_the_agent_dials_per_the_chain() {
    let agent = Agent::dev("dc1");
    let dir = Scratch::new("consul-chain-e2e");
    let within = Duration::from_secs(20);
    let sidecar = |service: &str| {
        let state = dir.path(&format!("{service}-state"));
        std::fs::create_dir_all(&state).unwrap();
        Sidegate::run(
            service,
            &dir.0,
            &sidecar_toml(&agent, &format!("{service}-sidecar-proxy"), &state),
        )
    };
    let mut backends = Vec::new();
    for name in ["db", "db2"] {
        let public = free_port();
        let mut reg = service_with_sidecar(name, app(name), public, json!([]), "");
        reg["Meta"] = json!({"version": "v2"});
        agent.register(&reg);
        let mut sg = sidecar(name);
        sg.serving(&[public]);
        backends.push(sg);
    }
    let port = free_port();
    agent.register(&service_with_sidecar(
        "web",
        app("web"),
        free_port(),
        json!([{"DestinationName": "db", "LocalBindPort": port}]),
        "",
    ));
    let mut web = sidecar("web");
    web.serving(&[port]);
    let reaches = |name: &str, web: &Sidegate| {
        eventually_within(
            within,
            &format!("web's upstream db reaching {name}"),
            || {
                if carries(port, name) {
                    Ok(())
                } else {
                    Err(Shown(web.output_tail()))
                }
            },
        );
    };
    reaches("db", &web);
    agent.config_entry(&resolver("db", json!({"Redirect": {"Service": "db2"}})));
    reaches("db2", &web);
    agent.config_entry(&resolver(
        "db2",
        // The failover target is in a datacenter the agent has no path to: its refusal
        // does not hold the chain's first target back.
        json!({"Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"}
        }, "Failover": {"*": {"Datacenters": ["dc9"]}}}),
    ));
    agent.config_entry(&resolver(
        "db",
        json!({"Redirect": {"Service": "db2", "ServiceSubset": "v1"}}),
    ));
    eventually_within(within, "subset v1 selecting no instance", || {
        if refused(port) {
            Ok(())
        } else {
            Err(Shown(web.output_tail()))
        }
    });
    agent.config_entry(&resolver(
        "db",
        json!({"Redirect": {"Service": "db2", "ServiceSubset": "v2"}}),
    ));
    reaches("db2", &web);
    assert!(web.is_running());
}
