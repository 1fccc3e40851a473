//! The agent's answers to snapshots and plans: which keys each answer reveals, mode precedence
//! with Consul-sourced config entries (merged by the agent or not), the gateway role.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::config::consul::settings::{resolve, FileKeys};
use crate::consul::api::ca::{CaRoot, CaRoots, LeafCert};
use crate::consul::api::config_entry::{ProxyDefaultsEntry, ServiceDefaultsEntry};
use crate::consul::api::example;
use crate::consul::api::health::instances;
use crate::mesh::mode::{Mode, ModeSource};
use crate::mesh::plan::plan;
use crate::mesh::routes::RouteKind;
use crate::mesh::sidecar::UpstreamSpec;

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/tls/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn settings(sidecar: Option<&str>, gateway: Option<&str>) -> Settings {
    resolve(
        FileKeys {
            sidecar_service_id: sidecar.map(Into::into),
            gateway_service_id: gateway.map(Into::into),
            ..FileKeys::default()
        },
        &|_| None,
    )
    .unwrap()
}

fn base() -> Snapshot {
    Snapshot {
        here: Here {
            place: Place::new("", ""),
            namespace: String::new(),
            trust_domain: String::new(),
        },
        identity: None,
        gateway: None,
        sidecar: None,
        config_entries: ConfigEntries::default(),
        catalog: Catalog::default(),
    }
}

fn roots() -> Answer {
    Answer::Roots(Box::new(CaRoots {
        trust_domain: TD.into(),
        roots: vec![CaRoot {
            root_cert: fixture("ca.pem"),
            active: true,
            ..CaRoot::default()
        }],
        ..CaRoots::default()
    }))
}

fn leaf() -> Answer {
    Answer::Leaf(Box::new(LeafCert {
        cert_pem: fixture("web.pem"),
        private_key_pem: fixture("web-key-sec1.pem"),
        service: "web".into(),
        service_uri: format!("spiffe://{TD}/ns/default/dc/dc1/svc/web"),
        ..LeafCert::default()
    }))
}

fn leaf_key_web() -> Key {
    Key::Leaf {
        service: "web".into(),
        namespace: "default".into(),
        partition: "default".into(),
    }
}

fn registration(name: &str) -> Answer {
    Answer::Service(Some(Box::new(
        serde_json::from_str(&example(name)).unwrap(),
    )))
}

pub(crate) fn connect(service: &str, dc: &str) -> Key {
    Key::Connect {
        service: service.into(),
        namespace: "default".into(),
        place: Place::new(dc, "default"),
    }
}

fn gateways(dc: &str) -> Key {
    Key::Gateways {
        place: Place::new(dc, "default"),
        name: "mesh-gateway".into(),
    }
}

fn proxy_defaults(mode: &str) -> Answer {
    let mut e: ProxyDefaultsEntry =
        serde_json::from_str(&example("config-proxy-defaults.json")).unwrap();
    e.mesh_gateway.mode = mode.into();
    Answer::ProxyDefaults(Some(Box::new(e)))
}

fn service_defaults(name: &str, mode: &str) -> Answer {
    Answer::ServiceDefaults(Some(Box::new(ServiceDefaultsEntry {
        kind: "service-defaults".into(),
        name: name.into(),
        mesh_gateway: crate::consul::api::MeshGatewayConfig { mode: mode.into() },
        ..ServiceDefaultsEntry::default()
    })))
}

fn sd_key(service: &str) -> Key {
    Key::ServiceDefaults {
        service: service.into(),
        namespace: "default".into(),
        partition: "default".into(),
    }
}

fn pd_key() -> Key {
    Key::ProxyDefaults {
        partition: "default".into(),
    }
}

/// A dc2 gateway and a dc1 gateway, LAN and WAN addresses apart.
fn gateway_instances(lan: &str, wan: &str) -> Answer {
    let body = format!(
        r#"[{{"Node":{{"Node":"n","Address":"{lan}"}},"Service":{{"Kind":"mesh-gateway","ID":"mesh-gateway","Address":"{lan}","Port":8443,
        "TaggedAddresses":{{"wan":{{"Address":"{wan}","Port":443}}}}}},"Checks":[]}}]"#
    );
    Answer::Instances(instances(&body, Some("mesh-gateway")).unwrap().into())
}

fn db_instances(lan: &str, wan: &str) -> Answer {
    let body = format!(
        r#"[{{"Node":{{"Node":"n","Address":"{lan}"}},"Service":{{"Kind":"connect-proxy","ID":"db-sidecar-proxy","Address":"{lan}","Port":21000,
        "TaggedAddresses":{{"wan":{{"Address":"{wan}","Port":21001}}}}}},"Checks":[]}}]"#
    );
    Answer::Instances(instances(&body, None).unwrap().into())
}

/// Roots, web's sidecar registration (`registration`) and web's leaf: what any web snapshot
/// starts from.
fn web_with(registration: Answer) -> World {
    World::new()
        .with(Key::Roots, roots())
        .with(
            Key::Service {
                id: "web-sidecar-proxy".into(),
            },
            registration,
        )
        .with(leaf_key_web(), leaf())
}

pub(crate) struct World {
    pub(crate) answers: BTreeMap<Key, Answer>,
    pub(crate) refused: BTreeMap<Key, String>,
}

impl World {
    fn new() -> World {
        World {
            answers: BTreeMap::new(),
            refused: BTreeMap::new(),
        }
    }

    fn with(mut self, key: Key, answer: Answer) -> World {
        self.answers.insert(key, answer);
        self
    }

    fn known(&self) -> Known<'_> {
        Known {
            answers: &self.answers,
            refused: &self.refused,
        }
    }

    fn needed(&self, s: &Settings) -> BTreeSet<Key> {
        needed(s, &self.known())
    }

    /// Answers every needed key with `fill` until nothing new is needed.
    fn settle(mut self, s: &Settings, fill: impl Fn(&Key) -> Answer) -> World {
        loop {
            let missing: Vec<Key> = self
                .needed(s)
                .into_iter()
                .filter(|k| !self.known().settled(k))
                .collect();
            if missing.is_empty() {
                return self;
            }
            for k in missing {
                let a = fill(&k);
                self.answers.insert(k, a);
            }
        }
    }
}

/// 1.8.7's registration: web with upstream db in dc1, no datacenter in the registration.
pub(crate) fn web_1_8(s: &Settings) -> World {
    web_with(registration("agent-service-sidecar-1.8.7.json")).settle(s, |k| match k {
        Key::Connect { .. } => db_instances("10.0.0.5", "203.0.113.5"),
        Key::ProxyDefaults { .. } => Answer::ProxyDefaults(None),
        Key::ServiceDefaults { .. } => Answer::ServiceDefaults(None),
        Key::Chain { .. } => plain_chain(k),
        other => panic!("unexpected {other:?}"),
    })
}

/// What Consul 1.8.7 compiles for `key` without a resolver: the service itself, with the
/// override's mode outside dc1 and the override's timeout.
pub(crate) fn plain_chain(key: &Key) -> Answer {
    let Key::Chain {
        service,
        place,
        mesh_gateway,
        connect_timeout_ms,
        ..
    } = key
    else {
        panic!("{key:?}")
    };
    let dc = &place.datacenter;
    let id = format!("{service}.default.{dc}");
    let mode = if dc == "dc1" {
        ""
    } else {
        mesh_gateway.as_str()
    };
    let timeout = match connect_timeout_ms {
        0 => "5s".to_owned(),
        ms => format!("{ms}ms"),
    };
    let body = serde_json::json!({"Chain": {
        "ServiceName": service, "Datacenter": dc, "Protocol": "tcp",
        "StartNode": format!("resolver:{id}"),
        "Nodes": {format!("resolver:{id}"): {"Type": "resolver", "Name": id,
            "Resolver": {"ConnectTimeout": timeout, "Default": true, "Target": id}}},
        "Targets": {id.clone(): {"ID": id, "Service": service, "Namespace": "default",
            "Datacenter": dc, "MeshGateway": {"Mode": mode}, "Subset": {},
            "SNI": format!("{service}.default.{dc}.internal.{TD}")}}
    }});
    Answer::Chain(Box::new(
        crate::consul::api::discovery_chain::parse(&body.to_string()).unwrap(),
    ))
}

#[test]
fn each_answer_reveals_the_next_keys() {
    let s = settings(Some("web-sidecar-proxy"), None);
    let reg_key = Key::Service {
        id: "web-sidecar-proxy".into(),
    };
    let w = World::new();
    assert_eq!(w.needed(&s), BTreeSet::from([Key::Roots, reg_key.clone()]));
    let w = w.with(Key::Roots, roots()).with(
        reg_key.clone(),
        registration("agent-service-sidecar-1.8.7.json"),
    );
    // No datacenter in a 1.8 registration: the leaf's SPIFFE ID will tell.
    assert_eq!(
        w.needed(&s),
        BTreeSet::from([Key::Roots, reg_key.clone(), leaf_key_web()])
    );
    let w = w.with(leaf_key_web(), leaf());
    let n = w.needed(&s);
    for k in [connect("db", "dc1"), pd_key(), sd_key("web"), sd_key("db")] {
        assert!(n.contains(&k), "{k:?} in {n:?}");
    }
    assert!(
        !n.contains(&Key::AgentSelf),
        "the leaf named the datacenter"
    );
    assert!(assemble_err(&s, &w).contains("waiting for"));

    // An unregistered sidecar is waited for, with the reason.
    let absent = World::new()
        .with(Key::Roots, roots())
        .with(reg_key, Answer::Service(None));
    assert!(
        assemble_err(&s, &absent).contains("no service with ID \"web-sidecar-proxy\""),
        "{}",
        assemble_err(&s, &absent)
    );
}

fn assemble_err(s: &Settings, w: &World) -> String {
    snapshot(s, &base(), &w.known())
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn complete_sidecar_snapshot_plans_like_the_file_would() {
    let s = settings(Some("web-sidecar-proxy"), None);
    let w = web_1_8(&s);
    let (snap, warnings) = snapshot(&s, &base(), &w.known()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(snap.here.place, Place::new("dc1", "default"));
    assert_eq!(snap.here.trust_domain, TD);
    assert!(snap.identity.is_some());
    let sidecar = snap.sidecar.as_ref().unwrap();
    assert_eq!(
        sidecar.public_listener,
        Some("0.0.0.0:21000".parse().unwrap())
    );
    let p = plan(&snap);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let db = &p.upstreams[0];
    assert_eq!(db.bind, "127.0.0.1:9191");
    assert_eq!(db.sni, format!("db.default.dc1.internal.{TD}"));
    assert_eq!(
        db.spiffe_id,
        format!("spiffe://{TD}/ns/default/dc/dc1/svc/db")
    );
    assert_eq!((db.mode, db.mode_source), (Mode::None, ModeSource::Default));
    let dial: Vec<String> = db.dial.as_slice().iter().map(ToString::to_string).collect();
    assert_eq!(dial, ["10.0.0.5:21000"], "same place: LAN address");
    assert!(p.inbound.is_some());
}

/// web's registration with upstream db in dc2, as a 1.9+ agent returns it with central config
/// merged: `proxy` is the proxy-level mode, `upstream` the upstream's ("" = unset).
fn merged(proxy: &str, upstream: &str) -> Answer {
    let Answer::Service(Some(mut svc)) = registration("agent-service-sidecar-1.8.7.json") else {
        unreachable!()
    };
    svc.proxy.mesh_gateway.mode = proxy.into();
    svc.proxy.upstreams[0].mesh_gateway.mode = upstream.into();
    svc.proxy.upstreams[0].datacenter = "dc2".into();
    Answer::Service(Some(svc))
}

fn cross_dc(
    s: &Settings,
    registration: Answer,
    entries: &[(Key, Answer)],
) -> (Mode, ModeSource, Vec<String>) {
    let entries: BTreeMap<Key, Answer> = entries.iter().cloned().collect();
    let w = web_with(registration).settle(s, |k| match k {
        Key::Connect { .. } => db_instances("10.1.0.5", "203.0.113.5"),
        Key::Gateways { place, .. } if place.datacenter == "dc1" => {
            gateway_instances("10.0.0.9", "198.51.100.9")
        }
        Key::Gateways { .. } => gateway_instances("10.1.0.9", "203.0.113.9"),
        k => entries.get(k).cloned().unwrap_or(match k {
            Key::ProxyDefaults { .. } => Answer::ProxyDefaults(None),
            _ => Answer::ServiceDefaults(None),
        }),
    });
    let (snap, _) = snapshot(s, &base(), &w.known()).unwrap();
    let p = plan(&snap);
    let u = &p.upstreams[0];
    let dial = u.dial.as_slice().iter().map(ToString::to_string).collect();
    (u.mode, u.mode_source, dial)
}

#[test]
fn precedence_with_consul_sourced_config_entries() {
    let s = settings(Some("web-sidecar-proxy"), None);
    let unmerged = || merged("", "");
    // 1.8 agent (no merge): proxy-defaults decides, and says so; local = our dc's gateways, LAN.
    let (mode, source, dial) = cross_dc(&s, unmerged(), &[(pd_key(), proxy_defaults("local"))]);
    assert_eq!((mode, source), (Mode::Local, ModeSource::ProxyDefaults));
    assert_eq!(dial, ["10.0.0.9:8443"]);
    // 1.9+ agent: the same value merged into the registration is still attributed to the entry.
    let (mode, source, _) = cross_dc(
        &s,
        merged("local", "local"),
        &[(pd_key(), proxy_defaults("local"))],
    );
    assert_eq!((mode, source), (Mode::Local, ModeSource::ProxyDefaults));
    // An explicit upstream mode that differs from every entry is the upstream's.
    let (mode, source, dial) = cross_dc(
        &s,
        merged("local", "remote"),
        &[(pd_key(), proxy_defaults("local"))],
    );
    assert_eq!((mode, source), (Mode::Remote, ModeSource::Upstream));
    assert_eq!(dial, ["203.0.113.9:443"], "remote: dc2's gateways, WAN");
    // The downstream's service-defaults beats proxy-defaults.
    let (mode, source, _) = cross_dc(
        &s,
        unmerged(),
        &[
            (pd_key(), proxy_defaults("local")),
            (sd_key("web"), service_defaults("web", "remote")),
        ],
    );
    assert_eq!((mode, source), (Mode::Remote, ModeSource::ServiceDefaults));
    // Only the target's service-defaults: the level the agent never merges.
    let (mode, source, dial) = cross_dc(
        &s,
        unmerged(),
        &[(sd_key("db"), service_defaults("db", "remote"))],
    );
    assert_eq!(
        (mode, source),
        (Mode::Remote, ModeSource::TargetServiceDefaults)
    );
    assert_eq!(dial, ["203.0.113.9:443"]);
    // Nothing anywhere: none, dial the instances on their WAN address.
    let (mode, source, dial) = cross_dc(&s, unmerged(), &[]);
    assert_eq!((mode, source), (Mode::None, ModeSource::Default));
    assert_eq!(dial, ["203.0.113.5:21001"]);
}

/// The target's service-defaults is read from the target's namespace: an upstream to
/// another namespace's "web" from web's sidecar keeps its own entry, though the
/// downstream's entry of the same name is read too.
#[test]
fn a_target_sharing_the_downstreams_name_keeps_its_own_service_defaults() {
    let s = settings(Some("web-sidecar-proxy"), None);
    let Answer::Service(Some(mut svc)) = merged("", "") else {
        unreachable!()
    };
    svc.proxy.upstreams[0].destination_name = "web".into();
    svc.proxy.upstreams[0].destination_namespace = "ns2".into();
    let target = Key::ServiceDefaults {
        service: "web".into(),
        namespace: "ns2".into(),
        partition: "default".into(),
    };
    let (mode, source, dial) = cross_dc(
        &s,
        Answer::Service(Some(svc)),
        &[
            (sd_key("web"), service_defaults("web", "")),
            (target, service_defaults("web", "remote")),
        ],
    );
    assert_eq!(
        (mode, source),
        (Mode::Remote, ModeSource::TargetServiceDefaults)
    );
    assert_eq!(dial, ["203.0.113.9:443"], "remote: dc2's gateways, WAN");
}

#[test]
fn attribution_never_changes_a_mode() {
    // Proxy-level local explicitly, proxy-defaults local, but upstream_config.defaults remote:
    // the explicit proxy level must keep beating the defaults (3 before 4).
    let mut spec = {
        let s = settings(Some("web-sidecar-proxy"), None);
        let w = web_1_8(&s);
        snapshot(&s, &base(), &w.known())
            .unwrap()
            .0
            .sidecar
            .unwrap()
    };
    spec.upstreams[0].place = Place::new("dc2", "default");
    spec.mesh_gateway = Some(Mode::Local);
    let mut entries = ConfigEntries {
        proxy_defaults: Some(Mode::Local),
        ..ConfigEntries::default()
    };
    entries.service_defaults.insert(
        "web".into(),
        crate::mesh::config_entries::ServiceDefaults {
            upstream_defaults: Some(Mode::Remote),
            ..Default::default()
        },
    );
    let before = entries.mode_levels(&spec, &spec.upstreams[0]).resolve();
    assert_eq!(before, (Mode::Local, ModeSource::Proxy));
    crate::mesh::mode::attribute_merged_levels(&mut spec, &entries);
    assert_eq!(
        spec.mesh_gateway,
        Some(Mode::Local),
        "kept: leaving it out would change the mode"
    );
    assert_eq!(
        entries.mode_levels(&spec, &spec.upstreams[0]).resolve(),
        before
    );
}

/// The downstream's entry is read in the registration's namespace and partition, and an
/// override in it naming neither means those, as Consul normalizes it: for web in ns2/part2,
/// `{"Name": "db"}` (as a Community Edition agent writes it, without Namespace or Partition)
/// is for db in ns2/part2, not for db in default/default.
#[test]
fn an_override_without_namespace_or_partition_is_the_registrations() {
    let s = settings(Some("web-sidecar-proxy"), None);
    let (snap, _) = snapshot(&s, &base(), &web_1_8(&s).known()).unwrap();
    let spec = snap.sidecar.unwrap();
    let here = Here {
        place: Place::new("dc1", "part2"),
        namespace: "ns2".into(),
        trust_domain: TD.into(),
    };
    let entry: ServiceDefaultsEntry = serde_json::from_str(
        r#"{"Kind":"service-defaults","Name":"web","UpstreamConfig":{"Overrides":[{"Name":"db","MeshGateway":{"Mode":"remote"}}]}}"#,
    )
    .unwrap();
    let key = Key::ServiceDefaults {
        service: "web".into(),
        namespace: "ns2".into(),
        partition: "part2".into(),
    };
    let w = World::new().with(key, Answer::ServiceDefaults(Some(Box::new(entry))));
    let entries = config_entries(&w.known(), &here, &spec);
    let db_default = spec.upstreams[0].clone();
    assert_eq!(db_default.place, Place::new("dc1", "default"));
    let db_part2 = UpstreamSpec {
        destination_namespace: "ns2".into(),
        place: Place::new("dc1", "part2"),
        ..db_default.clone()
    };
    let override_for = |u: &UpstreamSpec| entries.mode_levels(&spec, u).upstream_config_override;
    assert_eq!(override_for(&db_part2), Some(Mode::Remote));
    assert_eq!(override_for(&db_default), None);
}

#[test]
fn other_partitions_proxy_defaults_and_enterprise_registration() {
    let s = settings(Some("web-sidecar-proxy"), None);
    // The ENT-style example: api in dc2 (remote), billing in partition finance (local),
    // cache on a socket; geo-db (prepared query) is left out with a warning.
    let w = web_with(registration("agent-service-sidecar.json")).settle(&s, |k| match k {
        Key::Connect { service, .. } if service == "cache" => db_instances("10.0.0.7", "10.0.0.7"),
        Key::Connect { .. } => db_instances("10.1.0.5", "203.0.113.5"),
        Key::Gateways { place, .. } if *place == Place::new("dc1", "default") => {
            gateway_instances("10.0.0.9", "198.51.100.9")
        }
        Key::Gateways { .. } => gateway_instances("10.1.0.9", "203.0.113.9"),
        Key::ProxyDefaults { partition } if partition == "finance" => proxy_defaults("remote"),
        Key::ProxyDefaults { .. } => Answer::ProxyDefaults(None),
        _ => Answer::ServiceDefaults(None),
    });
    let n = w.needed(&s);
    assert!(n.contains(&Key::ProxyDefaults {
        partition: "finance".into()
    }));
    assert!(n.contains(&Key::Connect {
        service: "billing".into(),
        namespace: "default".into(),
        place: Place::new("dc1", "finance"),
    }));
    assert!(
        n.contains(&gateways("dc2")),
        "api is remote: dc2's gateways"
    );
    assert!(
        n.contains(&gateways("dc1")),
        "billing is local: our own gateways"
    );
    let (snap, warnings) = snapshot(&s, &base(), &w.known()).unwrap();
    assert!(
        warnings.iter().any(|w| w.contains("geo-db")),
        "{warnings:?}"
    );
    assert_eq!(
        snap.config_entries.partition_proxy_defaults.get("finance"),
        Some(&Mode::Remote)
    );
    let p = plan(&snap);
    let by_name = |n: &str| {
        p.upstreams
            .iter()
            .find(|u| u.destination_name == n)
            .unwrap()
    };
    let billing = by_name("billing");
    assert_eq!(
        billing.sni,
        format!("billing.default.finance.dc1.internal-v1.{TD}")
    );
    assert_eq!(
        billing.spiffe_id,
        format!("spiffe://{TD}/ap/finance/ns/default/dc/dc1/svc/billing")
    );
    // The example is a merged registration: billing's "local" equals the proxy level it
    // would have been merged from, so the proxy level is named.
    assert_eq!(
        (billing.mode, billing.mode_source),
        (Mode::Local, ModeSource::Proxy)
    );
    let api = by_name("api");
    assert_eq!(
        (api.mode, api.mode_source),
        (Mode::Remote, ModeSource::Upstream)
    );
    assert_eq!(api.sni, format!("api.default.dc2.internal.{TD}"));
}

#[test]
fn refused_targets_do_not_block_the_rest() {
    let s = settings(Some("web-sidecar-proxy"), None);
    let mut w = web_1_8(&s);
    w.answers.remove(&connect("db", "dc1"));
    w.refused.insert(connect("db", "dc1"), "HTTP 403".into());
    let (snap, _) = snapshot(&s, &base(), &w.known()).unwrap();
    assert!(snap.catalog.services.is_empty());
    assert!(
        !plan(&snap).warnings.is_empty(),
        "the plan says db has nothing to dial"
    );
    // The core keys are never skipped.
    w.answers.remove(&leaf_key_web());
    w.refused.insert(leaf_key_web(), "HTTP 403".into());
    assert!(snapshot(&s, &base(), &w.known()).is_err());
}

/// The gateway's routes of the kinds `keep` selects: (match, kind, endpoints dialled).
fn gateway_routes(
    p: &crate::mesh::Plan,
    keep: impl Fn(RouteKind) -> bool,
) -> Vec<(String, RouteKind, Vec<String>)> {
    let Some(gateway) = p.gateway.as_ref() else {
        return Vec::new();
    };
    gateway
        .routes
        .routes()
        .filter(|r| keep(r.kind))
        .map(|r| {
            let dial = r.endpoints.as_slice().iter().map(ToString::to_string);
            (r.pattern.to_string(), r.kind, dial.collect())
        })
        .collect()
}

/// What a mesh gateway knows first: its registration, not carrying WAN federation (see
/// `a_wan_federation_gateway_routes_servers`), and the roots. Returns the registration's key.
fn gateway_world() -> (Key, World) {
    let gw_key = Key::Service {
        id: "mesh-gateway".into(),
    };
    let mut reg = registration("agent-service-mesh-gateway.json");
    if let Answer::Service(Some(svc)) = &mut reg {
        svc.meta.remove(federation::META_WAN_FEDERATION);
    }
    let w = World::new()
        .with(Key::Roots, roots())
        .with(gw_key.clone(), reg);
    (gw_key, w)
}

/// `w` answered: dc1 lists db (one instance), mesh-gateway and web; dc2 has gateways.
fn settle_gateway_world(w: World, s: &Settings) -> World {
    w.settle(s, |k| match k {
        Key::Services { .. } => {
            Answer::Names(vec!["db".into(), "mesh-gateway".into(), "web".into()])
        }
        Key::Datacenters => Answer::Names(vec!["dc1".into(), "dc2".into()]),
        Key::Connect { service, .. } if service == "db" => db_instances("10.0.0.5", "203.0.113.5"),
        Key::Connect { .. } => Answer::Instances(Vec::new().into()),
        Key::Gateways { .. } => gateway_instances("10.1.0.9", "203.0.113.9"),
        Key::Resolvers { .. } => Answer::Resolvers(Vec::new()),
        Key::GatewayNames { .. } => Answer::Names(vec!["mesh-gateway".into()]),
        // Community Edition: no partitions endpoint (404), no other partition.
        Key::Partitions => Answer::Names(Vec::new()),
        other => panic!("unexpected {other:?}"),
    })
}

/// Enterprise: the gateway routes the other partitions of its datacenter to their gateways'
/// WAN addresses (found by kind, as the documented gateway body is), and none of its own.
#[test]
fn gateway_routes_the_other_partitions_of_its_datacenter() {
    let s = settings(None, Some("mesh-gateway"));
    let (_, w) = gateway_world();
    let w = settle_gateway_world(w, &s).with(
        Key::Partitions,
        Answer::Names(
            crate::consul::api::catalog::partitions(
                r#"[{"Name":"default"},{"Name":"part2"},{"Name":"DEFAULT"}]"#,
            )
            .unwrap(),
        ),
    );
    let part2 = Place::new("dc1", "part2");
    let names = Key::GatewayNames {
        place: part2.clone(),
    };
    let n = w.needed(&s);
    assert!(n.contains(&names));
    assert!(
        !n.iter()
            .any(|k| matches!(k, Key::GatewayNames { place } if place.partition != "part2" && place.datacenter == "dc1")),
        "not its own partition, whatever the case: {n:?}"
    );
    let gw = Key::Gateways {
        place: part2.clone(),
        name: "mesh-gateway".into(),
    };
    let w = w
        .with(names, Answer::Names(vec!["mesh-gateway".into()]))
        .with(
            gw,
            Answer::Instances(
                instances(
                    &example("health-service-mesh-gateway.json"),
                    Some("mesh-gateway"),
                )
                .unwrap()
                .into(),
            ),
        );
    let mut file = base();
    file.gateway = None;
    let (snap, _) = snapshot(&s, &file, &w.known()).unwrap();
    let routes: Vec<(String, Vec<String>)> =
        gateway_routes(&plan(&snap), |k| k != RouteKind::Service)
            .into_iter()
            .map(|(pattern, _, dial)| (pattern, dial))
            .collect();
    assert!(
        routes.contains(&(
            format!("*.part2.dc1.internal-v1.{TD}"),
            vec!["203.0.113.10:443".to_string()]
        )),
        "{routes:?}"
    );
}

/// Another datacenter's gateways are found by kind: every name the agent lists as a
/// `mesh-gateway` is followed, the configured name only while the list is refused.
#[test]
fn gateway_finds_other_datacenters_gateways_by_kind() {
    let s = settings(None, Some("mesh-gateway"));
    let (_, w) = gateway_world();
    let names = Key::GatewayNames {
        place: Place::new("dc2", "default"),
    };
    let gw = |name: &str| Key::Gateways {
        place: Place::new("dc2", "default"),
        name: name.into(),
    };
    let w = settle_gateway_world(w, &s).with(
        names.clone(),
        Answer::Names(vec!["edge-gw".into(), "gw-b".into()]),
    );
    let n = w.needed(&s);
    assert!(n.contains(&names) && n.contains(&gw("edge-gw")) && n.contains(&gw("gw-b")));
    assert!(!n.contains(&gw("mesh-gateway")), "not by its name");
    let mut w = w
        .with(gw("edge-gw"), gateway_instances("10.1.0.7", "203.0.113.7"))
        .with(gw("gw-b"), gateway_instances("10.1.0.8", "203.0.113.8"));
    // The follower drops the answer of a key no longer needed.
    w.answers.remove(&gw("mesh-gateway"));
    let mut file = base();
    file.gateway = None;
    let (snap, _) = snapshot(&s, &file, &w.known()).unwrap();
    let routes = gateway_routes(&plan(&snap), |k| k != RouteKind::Service);
    assert_eq!(
        routes
            .into_iter()
            .map(|(pattern, _, dial)| (pattern, dial))
            .collect::<Vec<_>>(),
        [(
            format!("*.dc2.internal.{TD}"),
            vec!["203.0.113.7:443".to_string(), "203.0.113.8:443".to_string()]
        )]
    );

    let mut answers = w.answers.clone();
    answers.remove(&names);
    let refused = BTreeMap::from([(names.clone(), "HTTP 403: Permission denied".to_string())]);
    let known = Known {
        answers: &answers,
        refused: &refused,
    };
    let n = needed(&s, &known);
    assert!(n.contains(&gw("mesh-gateway")) && !n.contains(&gw("edge-gw")));
}

/// The gateway reads its partition's resolvers: one route per subset, to the instances its
/// filter selects (the sidecars carry their service's meta), the plain name to the default
/// subset's; with the resolvers known an undefined subset is refused, and while the agent
/// refuses them any label passes (as before resolvers were read), with a warning.
#[test]
fn gateway_routes_the_subsets_of_its_partitions_resolvers() {
    let s = settings(None, Some("mesh-gateway"));
    let (_, w) = gateway_world();
    let resolvers = Key::Resolvers {
        partition: "default".into(),
    };
    let w = settle_gateway_world(w, &s);
    assert!(w.needed(&s).contains(&resolvers));
    let two = r#"[
      {"Node":{"Node":"n1","Address":"10.0.0.5"},"Service":{"Kind":"connect-proxy","ID":"db1","Port":21000,"Meta":{"version":"v1"}},"Checks":[]},
      {"Node":{"Node":"n2","Address":"10.0.0.6"},"Service":{"Kind":"connect-proxy","ID":"db2","Port":21000,"Meta":{"version":"v2"},"Tags":["canary"]},"Checks":[{"Status":"warning"}]}
    ]"#;
    let db = Key::Connect {
        service: "db".into(),
        namespace: "default".into(),
        place: Place::new("dc1", "default"),
    };
    let body = r#"[{"Kind":"service-resolver","Name":"db","DefaultSubset":"v1",
        "Subsets":{"v1":{"Filter":"Service.Meta.version == v1"},
                   "v2":{"Filter":"canary in Service.Tags"},
                   "v2-passing":{"Filter":"canary in Service.Tags","OnlyPassing":true}}}]"#;
    let entries = crate::consul::api::resolver::entries(body).unwrap();
    let w = w
        .with(
            db.clone(),
            Answer::Instances(instances(two, None).unwrap().into()),
        )
        .with(resolvers.clone(), Answer::Resolvers(entries));
    let mut file = base();
    file.gateway = None;
    let (snap, _) = snapshot(&s, &file, &w.known()).unwrap();
    let p = plan(&snap);
    let routes: Vec<(String, Vec<String>)> = gateway_routes(&p, |k| k == RouteKind::Service)
        .into_iter()
        .map(|(pattern, _, dial)| (pattern, dial))
        .collect();
    let db = |subset: &str| format!("{subset}db.default.dc1.internal.{TD}");
    assert_eq!(
        routes,
        [
            (db(""), vec!["10.0.0.5:21000".to_string()]),
            (db("v1."), vec!["10.0.0.5:21000".to_string()]),
            (db("v2."), vec!["10.0.0.6:21000".to_string()]),
            // Its one instance has a warning check.
            (db("v2-passing."), vec![]),
        ]
    );
    assert!(!p.gateway.as_ref().unwrap().routes.pass_any_subset);

    // Refused (no service:read): not known, so any label passes, and the log says why.
    let mut refused = BTreeMap::new();
    refused.insert(resolvers.clone(), "HTTP 403: Permission denied".to_string());
    let mut answers = w.answers.clone();
    answers.remove(&resolvers);
    let known = Known {
        answers: &answers,
        refused: &refused,
    };
    let (snap, warnings) = snapshot(&s, &file, &known).unwrap();
    assert!(plan(&snap).gateway.unwrap().routes.pass_any_subset);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("service-resolver") && w.contains("403")),
        "{warnings:?}"
    );
}

#[test]
fn gateway_routes_its_partition_and_other_datacenters() {
    let s = settings(None, Some("mesh-gateway"));
    let (_, w) = gateway_world();
    let n = w.needed(&s);
    assert!(!n.contains(&Key::FederationStates) && !n.contains(&Key::Servers));
    assert!(n.contains(&Key::Services {
        place: Place::new("dc1", "default")
    }));
    assert!(n.contains(&Key::Datacenters));
    let w = settle_gateway_world(w, &s);
    assert!(w.needed(&s).contains(&gateways("dc2")));
    assert!(
        !w.needed(&s).contains(&gateways("dc1")),
        "not our own place"
    );
    let mut file = base();
    file.gateway = None;
    let (snap, _) = snapshot(&s, &file, &w.known()).unwrap();
    let gw = snap.gateway.as_ref().unwrap();
    let listen: Vec<String> = gw.listen.iter().map(ToString::to_string).collect();
    assert_eq!(listen, ["10.0.1.5:8443", "198.51.100.5:443"]);
    assert_eq!(gw.connect_timeout, std::time::Duration::from_millis(5000));
    let routes: Vec<(String, Vec<String>)> = gateway_routes(&plan(&snap), |_| true)
        .into_iter()
        .map(|(pattern, _, dial)| (pattern, dial))
        .collect();
    assert_eq!(
        routes,
        [
            (
                format!("db.default.dc1.internal.{TD}"),
                vec!["10.0.0.5:21000".to_string()]
            ),
            (
                format!("*.dc2.internal.{TD}"),
                vec!["203.0.113.9:443".to_string()]
            ),
        ]
    );
    // The file's listen replaces the registration's addresses.
    let mut file = base();
    file.gateway = Some(GatewaySettings {
        listen: vec!["127.0.0.1:9443".parse().unwrap()],
        ..default_gateway()
    });
    let (snap, _) = snapshot(&s, &file, &w.known()).unwrap();
    assert_eq!(
        snap.gateway.unwrap().listen,
        ["127.0.0.1:9443".parse().unwrap()]
    );
}

#[test]
fn gateway_file_settings_override_the_registration_key_by_key() {
    let s = settings(None, Some("mesh-gateway"));
    let (gw_key, w) = gateway_world();
    let mut w = settle_gateway_world(w, &s);
    // The file's [gateway] overrides the registration key by key: a file that sets only
    // max_connections keeps the registration's connect_timeout_ms; one that sets it wins.
    let Some(Answer::Service(Some(reg))) = w.answers.get_mut(&gw_key) else {
        panic!("no registration")
    };
    reg.proxy
        .config
        .insert("connect_timeout_ms".into(), serde_json::json!(1234));
    let mut file = base();
    file.gateway = Some(GatewaySettings {
        max_connections: 7,
        ..default_gateway()
    });
    let (snap, _) = snapshot(&s, &file, &w.known()).unwrap();
    let gw = snap.gateway.unwrap();
    assert_eq!(gw.connect_timeout, std::time::Duration::from_millis(1234));
    assert_eq!(gw.max_connections, 7);
    file.gateway = Some(GatewaySettings {
        connect_timeout: std::time::Duration::from_millis(900),
        connect_timeout_set: true,
        ..default_gateway()
    });
    let (snap, _) = snapshot(&s, &file, &w.known()).unwrap();
    assert_eq!(
        snap.gateway.unwrap().connect_timeout,
        std::time::Duration::from_millis(900)
    );
}

#[test]
fn invisible_gateways_of_another_partition_say_export_them() {
    let s = settings(Some("web-sidecar-proxy"), None);
    let w = web_with(registration("agent-service-sidecar.json")).settle(&s, |k| match k {
        Key::Connect { .. } => db_instances("10.1.0.5", "203.0.113.5"),
        Key::Gateways { .. } => Answer::Instances(Vec::new().into()),
        Key::ProxyDefaults { partition } if partition == "finance" => proxy_defaults("remote"),
        Key::ProxyDefaults { .. } => Answer::ProxyDefaults(None),
        _ => Answer::ServiceDefaults(None),
    });
    let mut w = w;
    // billing goes remote through finance's gateways, which this token cannot see.
    let finance = Key::Gateways {
        place: Place::new("dc1", "finance"),
        name: "mesh-gateway".into(),
    };
    let Some(Answer::Service(Some(svc))) = w.answers.get_mut(&Key::Service {
        id: "web-sidecar-proxy".into(),
    }) else {
        unreachable!()
    };
    svc.proxy.upstreams[1].mesh_gateway.mode = "remote".into();
    w = w.settle(&s, |_| Answer::Instances(Vec::new().into()));
    assert!(w.needed(&s).contains(&finance));
    let (_, warnings) = snapshot(&s, &base(), &w.known()).unwrap();
    assert!(
        warnings.iter().any(|w| w.contains(
            "partition finance must export the mesh-gateway service to partition default"
        )),
        "{warnings:?}"
    );
}

#[test]
fn a_huge_catalog_is_capped_not_followed_thread_by_thread() {
    let s = settings(None, Some("mesh-gateway"));
    let names: Vec<String> = (0..MAX_ROUTED_SERVICES + 5)
        .map(|i| format!("svc{i:05}"))
        .collect();
    let w = World::new()
        .with(Key::Roots, roots())
        .with(
            Key::Service {
                id: "mesh-gateway".into(),
            },
            registration("agent-service-mesh-gateway.json"),
        )
        .with(
            Key::Services {
                place: Place::new("dc1", "default"),
            },
            Answer::Names(names),
        )
        .settle(&s, |k| match k {
            Key::Datacenters => Answer::Names(vec!["dc1".into()]),
            _ => Answer::Instances(Vec::new().into()),
        });
    let watched = w
        .needed(&s)
        .iter()
        .filter(|k| matches!(k, Key::Connect { .. }))
        .count();
    assert_eq!(watched, MAX_ROUTED_SERVICES);
    let (_, warnings) = snapshot(&s, &base(), &w.known()).unwrap();
    assert!(
        warnings.iter().any(|w| w.contains("routes the first 1000")),
        "{warnings:?}"
    );
}

/// A gateway registered with `consul-wan-federation = "1"` follows this datacenter's servers,
/// the federation states and the agent's domain, and routes Consul's server names: its own
/// servers by node, other datacenters' through their gateways — the federation states' ones
/// where they list the datacenter (dc2 here, though the catalog says otherwise; dc3 only
/// they know).
#[test]
fn a_wan_federation_gateway_routes_servers() {
    let s = settings(None, Some("mesh-gateway"));
    let w = World::new()
        .with(Key::Roots, roots())
        .with(
            Key::Service {
                id: "mesh-gateway".into(),
            },
            registration("agent-service-mesh-gateway.json"),
        )
        .settle(&s, |k| match k {
            Key::Services { .. } => Answer::Names(vec!["mesh-gateway".into()]),
            Key::Datacenters => Answer::Names(vec!["dc1".into(), "dc2".into()]),
            Key::Gateways { .. } => gateway_instances("10.1.0.9", "203.0.113.9"),
            Key::Domain => Answer::AgentSelf {
                datacenter: "dc1".into(),
                domain: "Example.".into(),
            },
            Key::Servers => Answer::Instances(
                instances(
                    r#"[{"Node":{"Node":"srv1","Address":"10.0.0.11"},"Service":{"ID":"consul","Service":"consul","Port":8300}},
                        {"Node":{"Node":"srv2","Address":"10.0.0.12"},"Service":{"ID":"consul","Service":"consul","Port":8300}}]"#,
                    None,
                )
                .unwrap()
                .into(),
            ),
            Key::FederationStates => Answer::Federated(
                federation::mesh_gateways(&federation_states()).unwrap(),
            ),
            _ => Answer::Instances(Vec::new().into()),
        });
    for key in [Key::Servers, Key::FederationStates, Key::Domain] {
        assert!(w.needed(&s).contains(&key), "{key:?}");
    }
    let (snap, _) = snapshot(&s, &base(), &w.known()).unwrap();
    let p = plan(&snap);
    let routes = gateway_routes(&p, |kind| kind == RouteKind::Server);
    let want = [
        ("srv1.server.dc1.example", vec!["10.0.0.11:8300"]),
        ("srv2.server.dc1.example", vec!["10.0.0.12:8300"]),
        (
            "server.dc1.example",
            vec!["10.0.0.11:8300", "10.0.0.12:8300"],
        ),
        ("*.server.dc2.example", vec!["198.51.100.20:443"]),
        ("server.dc2.example", vec!["198.51.100.20:443"]),
        ("*.server.dc3.example", vec!["198.51.100.30:443"]),
        ("server.dc3.example", vec!["198.51.100.30:443"]),
    ];
    let got: Vec<(&str, Vec<&str>)> = routes
        .iter()
        .map(|(m, _, d)| (m.as_str(), d.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(got, want);
    // dc3's service traffic goes to the same gateways.
    let mut gws = p.gateway.as_ref().unwrap().routes.routes();
    assert!(gws.any(|r| r.pattern == format!("*.dc3.internal.{TD}")));

    // A token without agent:read: the domain is Consul's default, said in a warning; the
    // snapshot does not wait for it.
    let mut w = w;
    w.answers.remove(&Key::Domain);
    w.refused
        .insert(Key::Domain, "HTTP 403: Permission denied".into());
    let (snap, warnings) = snapshot(&s, &base(), &w.known()).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("DNS domain is not known")),
        "{warnings:?}"
    );
    let p = plan(&snap);
    let mut gws = p.gateway.as_ref().unwrap().routes.routes();
    assert!(gws.any(|r| r.pattern == "srv1.server.dc1.consul"));
}

/// The reference example's dc2 gateway at another WAN address, and a copy of it for dc3.
fn federation_states() -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&example("federation-states-mesh-gateways.json")).unwrap();
    let dc2 = v["dc2"].to_string();
    v["dc2"] = serde_json::from_str(&dc2.replace("203.0.113.10", "198.51.100.20")).unwrap();
    v["dc3"] = serde_json::from_str(&dc2.replace("203.0.113.10", "198.51.100.30")).unwrap();
    v.to_string()
}

/// db's chain as Consul 1.8.7 compiles it for a resolver with default subset v1 (`filter`,
/// `only_passing`) and failover to dc2 through this place's gateways.
fn db_chain(filter: &str) -> Answer {
    let target = |dc: &str, mode: &str| {
        serde_json::json!({"ID": format!("v1.db.default.{dc}"), "Service": "db", "ServiceSubset": "v1",
            "Namespace": "default", "Datacenter": dc, "MeshGateway": {"Mode": mode},
            "Subset": {"Filter": filter, "OnlyPassing": true},
            "SNI": format!("v1.db.default.{dc}.internal.{TD}")})
    };
    let body = serde_json::json!({"Chain": {"ServiceName": "db", "StartNode": "resolver:v1.db.default.dc1",
        "Nodes": {"resolver:v1.db.default.dc1": {"Type": "resolver", "Name": "v1.db.default.dc1",
            "Resolver": {"ConnectTimeout": "3s", "Target": "v1.db.default.dc1",
                "Failover": {"Targets": ["v1.db.default.dc2"]}}}},
        "Targets": {"v1.db.default.dc1": target("dc1", ""), "v1.db.default.dc2": target("dc2", "local")}}});
    Answer::Chain(Box::new(
        crate::consul::api::discovery_chain::parse(&body.to_string()).unwrap(),
    ))
}

/// dc1's db instances: v1 passing, v2 passing, v1 warning.
fn db_versions() -> Answer {
    let one = |ip: &str, version: &str, status: &str| {
        format!(
            r#"{{"Node":{{"Node":"n{ip}","Address":"10.0.0.{ip}"}},"Service":{{"Kind":"connect-proxy","ID":"db-sidecar-proxy-{ip}","Service":"db-sidecar-proxy","Address":"10.0.0.{ip}","Port":21000,"Meta":{{"version":"{version}"}},"Tags":null}},"Checks":[{{"CheckID":"c","Status":"{status}"}}]}}"#
        )
    };
    let body = format!(
        "[{},{},{}]",
        one("5", "v1", "passing"),
        one("6", "v2", "passing"),
        one("7", "v1", "warning")
    );
    Answer::Instances(instances(&body, None).unwrap().into())
}

fn web_with_chain(s: &Settings, chain: Answer) -> World {
    web_with(registration("agent-service-sidecar-1.8.7.json")).settle(s, |k| match k {
        Key::Connect { place, .. } if place.datacenter == "dc1" => db_versions(),
        Key::Connect { .. } => db_instances("10.2.0.5", "203.0.113.5"),
        Key::ProxyDefaults { .. } => Answer::ProxyDefaults(None),
        Key::ServiceDefaults { .. } => Answer::ServiceDefaults(None),
        Key::Gateways { .. } => gateway_instances("10.1.0.9", "203.0.113.9"),
        Key::Chain { .. } => chain.clone(),
        other => panic!("unexpected {other:?}"),
    })
}

/// With `[consul]` the upstream's chain is Consul's: each target's instances and gateways
/// are followed, the subset's filter and `only_passing` select the instances, and the
/// failover target's mode is the one Consul compiled.
#[test]
fn an_upstream_dials_the_chain_consul_compiled() {
    let s = settings(Some("web-sidecar-proxy"), None);
    let w = web_with_chain(&s, db_chain("Service.Meta.version == v1"));
    let n = w.needed(&s);
    let chains = n.iter().filter(|k| matches!(k, Key::Chain { .. })).count();
    assert_eq!(chains, 1, "one chain watch per upstream: {n:?}");
    assert!(n.contains(&connect("db", "dc2")), "{n:?}");
    assert!(n.contains(&Key::Gateways {
        place: Place::new("dc1", "default"),
        name: "mesh-gateway".into()
    }));
    let (snap, warnings) = snapshot(&s, &base(), &w.known()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let p = plan(&snap);
    let db = &p.upstreams[0];
    assert_eq!(db.connect_timeout, std::time::Duration::from_secs(3));
    let rows: Vec<(String, Mode, Vec<String>)> = db
        .targets
        .iter()
        .map(|t| {
            (
                t.sni.clone(),
                t.mode,
                t.dial.as_slice().iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                format!("v1.db.default.dc1.internal.{TD}"),
                Mode::None,
                vec!["10.0.0.5:21000".to_owned()]
            ),
            (
                format!("v1.db.default.dc2.internal.{TD}"),
                Mode::Local,
                vec!["10.1.0.9:8443".to_owned()]
            ),
        ]
    );

    // Consul filters the sidecars' registrations: `Service.Service` is the proxy's name.
    let dial_of = |filter: &str| -> Vec<String> {
        let w = web_with_chain(&s, db_chain(filter));
        let (snap, _) = snapshot(&s, &base(), &w.known()).unwrap();
        let p = plan(&snap);
        let first = &p.upstreams[0].targets[0];
        first
            .dial
            .as_slice()
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        dial_of(r#"Service.Service == "db-sidecar-proxy" and Service.ID != "db-sidecar-proxy-6""#),
        ["10.0.0.5:21000"]
    );
    assert!(dial_of("Service.Service == db").is_empty());

    // A filter outside sidegate's language selects nothing, with a warning, never all.
    let w = web_with_chain(&s, db_chain("Service.Meta.version matches \"v1.*\""));
    let (snap, _) = snapshot(&s, &base(), &w.known()).unwrap();
    let p = plan(&snap);
    assert!(p.upstreams[0].targets[0].dial.as_slice().is_empty());
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("cannot be evaluated") && w.contains("matches")),
        "{:?}",
        p.warnings
    );
}

/// On Enterprise the fleet names each service in its namespace (`<ns>/<name>`): each is
/// followed and routed in that namespace; a part that is no DNS label is dropped, a bare
/// name is in the gateway's own namespace. The agent is Enterprise when its registrations
/// carry their namespace or partition, which Community Edition leaves out.
#[test]
fn a_gateway_follows_each_service_in_its_namespace() {
    let s = settings(None, Some("mesh-gateway"));
    let (gw_key, w) = gateway_world();
    // As an Enterprise agent answers: the registration in its namespace and partition.
    let mut reg = registration("agent-service-mesh-gateway.json");
    if let Answer::Service(Some(svc)) = &mut reg {
        svc.meta.remove(federation::META_WAN_FEDERATION);
        svc.namespace = "default".into();
        svc.partition = "default".into();
    }
    let w = w.with(gw_key, reg);
    let names = [
        "default/db",
        "team-a/api",
        "team-a/bad name",
        "x.y/web",
        "cache",
    ];
    let w = w
        .with(
            Key::Services {
                place: Place::new("dc1", "default"),
            },
            Answer::Names(names.iter().map(|n| (*n).to_owned()).collect()),
        )
        .settle(&s, |k| match k {
            Key::Connect {
                service, namespace, ..
            } if service == "api" && namespace == "team-a" => {
                db_instances("10.0.0.7", "203.0.113.7")
            }
            Key::Datacenters | Key::Partitions | Key::GatewayNames { .. } => {
                Answer::Names(Vec::new())
            }
            Key::Resolvers { .. } => Answer::Resolvers(Vec::new()),
            _ => Answer::Instances(Vec::new().into()),
        });
    let mut followed: Vec<(String, String)> = w
        .needed(&s)
        .into_iter()
        .filter_map(|k| match k {
            Key::Connect {
                service, namespace, ..
            } => Some((namespace, service)),
            _ => None,
        })
        .collect();
    followed.sort();
    let want = [("default", "cache"), ("default", "db"), ("team-a", "api")];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(ns, n)| ((*ns).to_owned(), (*n).to_owned()))
        .collect();
    assert_eq!(followed, want);
    assert!(enterprise(&s, &w.known()), "an ENT-style registration");
    let (snap, _) = snapshot(&s, &base(), &w.known()).unwrap();
    let api = snap
        .catalog
        .services
        .iter()
        .find(|c| c.name == "api")
        .unwrap();
    assert_eq!(api.namespace, "team-a");

    // Community Edition: the registration says neither namespace nor partition.
    let (_, ce) = gateway_world();
    assert!(!enterprise(&s, &ce.known()));
}
