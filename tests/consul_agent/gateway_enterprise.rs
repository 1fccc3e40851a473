//! Enterprise-only paths of a gateway following Consul, against an **agent stand-in**: no
//! Enterprise binary is available here, so a small HTTP server answers the endpoints a
//! gateway in admin partition `part1` asks, with Consul's documented bodies
//! (tests/data/consul/, see its README) adapted to this place. The real binary follows it:
//! the other partition of its datacenter (`default`, listed by `/v1/partitions`) is routed
//! to that partition's gateway — found by kind in the service summary — on its WAN address;
//! and every namespace of its own partition is routed, each service under its namespace's
//! name, from one wildcard (`ns=*`) poll per list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::consul;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{eventually_within, free_port, http_get};
use consul::{Scratch, Sidegate};
use serde_json::{json, Value};

fn example(name: &str) -> Value {
    let path = format!("{}/tests/data/consul/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The stand-in's answer to one request line's path and query, `None` for a 404.
type Answers = Arc<dyn Fn(&str, &str) -> Option<Value> + Send + Sync>;

/// A stand-in for an Enterprise agent: every request answered from `answers`, with
/// `X-Consul-Index` from `index` (7 unless a test moves it); a blocking query at that index
/// waits a little first, as a real agent holds it until something changes.
fn stand_in(answers: Answers, index: Arc<AtomicU64>) -> SocketAddr {
    stand_in_counted(answers, index).0
}

/// [`stand_in`], with the most connections it held open at once so far.
fn stand_in_counted(answers: Answers, index: Arc<AtomicU64>) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (open, peak) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let seen = peak.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (answers, index, open) = (answers.clone(), index.clone(), open.clone());
            seen.fetch_max(open.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            std::thread::spawn(move || {
                serve(conn, &*answers, &index);
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, peak)
}

fn serve(
    conn: TcpStream,
    answers: &(dyn Fn(&str, &str) -> Option<Value> + Send + Sync),
    index: &AtomicU64,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        // Headers, up to the blank line (GET requests: no body).
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let now = index.load(Ordering::SeqCst);
        if has(query, &format!("index={now}")) {
            std::thread::sleep(Duration::from_millis(500));
        }
        let (status, body) = match answers(path, query) {
            Some(v) => ("200 OK", v.to_string()),
            None => ("404 Not Found", String::new()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Consul-Index: {now}\r\n\
             X-Consul-ContentHash: 7\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if conn.write_all(head.as_bytes()).is_err() || conn.write_all(body.as_bytes()).is_err() {
            return;
        }
    }
}

fn has(query: &str, param: &str) -> bool {
    query.split('&').any(|q| q == param)
}

/// Where the gateway registration in partition `part1` listens.
static GATEWAY_PORT: OnceLock<u16> = OnceLock::new();

/// The gateway's registration: the documented one, moved to partition `part1` and to a
/// loopback port, not carrying WAN federation (a non-default partition never does).
fn part1_gateway(port: u16) -> Value {
    let mut reg = example("agent-service-mesh-gateway.json");
    let at = json!({"Address": "127.0.0.1", "Port": port});
    reg["Partition"] = json!("part1");
    reg["Namespace"] = json!("default");
    reg["Meta"] = json!({});
    reg["Address"] = json!("127.0.0.1");
    reg["Port"] = json!(port);
    reg["TaggedAddresses"] = json!({"lan": at, "wan": at});
    reg
}

fn enterprise_agent(path: &str, query: &str) -> Option<Value> {
    let part1 = has(query, "partition=part1");
    Some(match path {
        "/v1/agent/service/mesh-gateway" => part1_gateway(*GATEWAY_PORT.get().unwrap()),
        "/v1/agent/connect/ca/roots" => example("agent-connect-ca-roots.json"),
        "/v1/partitions" => json!([
            {"Name": "default", "Description": "Builtin Default Partition"},
            {"Name": "part1", "Description": ""},
        ]),
        // Its own partition's one service, db, and no checks to diff.
        "/v1/catalog/services" if part1 => json!({"db": []}),
        "/v1/health/state/any" if part1 => json!([]),
        "/v1/health/connect/db" if part1 => example("health-connect.json"),
        "/v1/config/service-resolver" if part1 => json!([]),
        // The default partition's gateway, under the documented body's name.
        "/v1/internal/ui/services" if !part1 => json!([
            {"Name": "consul"},
            {"Kind": "mesh-gateway", "Name": "mesh-gateway"},
        ]),
        "/v1/health/service/mesh-gateway" if !part1 => example("health-service-mesh-gateway.json"),
        _ => return None,
    })
}

/// A sidegate gateway following the stand-in at `agent`, serving on `port` (its
/// registration's) and on its admin endpoint; the scratch directory lives as long as it.
fn gateway_following(agent: SocketAddr, port: u16, name: &str) -> (Scratch, Sidegate, SocketAddr) {
    let dir = Scratch::new(name);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = format!(
        "[consul]\naddress = \"{agent}\"\ngateway_service_id = \"mesh-gateway\"\nstate_dir = \"{}\"\n\
         [gateway]\n[admin]\nlisten = \"{admin}\"\n",
        dir.path("state").display()
    );
    let mut gateway = Sidegate::run("gateway", &dir.0, &toml);
    gateway.serving(&[port, admin.port()]);
    gateway.plan(admin);
    (dir, gateway, admin)
}

#[test]
fn a_gateway_routes_the_other_partitions_of_its_datacenter_enterprise_stand_in() {
    let port = *GATEWAY_PORT.get_or_init(free_port);
    let agent = stand_in(Arc::new(enterprise_agent), Arc::new(AtomicU64::new(7)));
    let (_dir, mut gateway, admin) = gateway_following(agent, port, "consul-enterprise-stand-in");

    let td = "a1499528-fbf6-df7b-05e5-ae81e1873fc4.consul";
    let want = vec![
        (
            format!("db.default.part1.dc1.internal-v1.{td}"),
            json!(["10.1.2.7:21000"]).to_string(),
        ),
        (
            format!("*.dc1.internal.{td}"),
            json!(["203.0.113.10:443"]).to_string(),
        ),
    ];
    eventually_within(Duration::from_secs(20), "the stand-in's routes", || {
        let seen = gateway_routes(admin);
        let mut w = want.clone();
        w.sort();
        if seen == w {
            Ok(())
        } else {
            Err(seen)
        }
    });
    assert!(gateway.is_running(), "{}", gateway.output_tail());
}

/// The gateway's routes as its admin endpoint shows them: SNI match → endpoints, sorted.
fn gateway_routes(admin: SocketAddr) -> Vec<(String, String)> {
    let (code, body) = http_get(admin, "/config");
    assert_eq!(code, 200, "{body}");
    let plan: Value = serde_json::from_str(&body).unwrap();
    let mut routes: Vec<(String, String)> = plan["gateway"]["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            (
                r["match"].as_str().unwrap().to_owned(),
                r["endpoints"].to_string(),
            )
        })
        .collect();
    routes.sort();
    routes
}

/// A documented `/v1/health/connect/:service` body moved to `namespace` of partition
/// `part1`, its one proxy instance (fronting `service`) at `address`.
fn connect_in(service: &str, namespace: &str, address: &str) -> Value {
    let mut list = example("health-connect.json");
    let node = &mut list[0];
    node["Node"]["Address"] = json!(address);
    node["Node"]["Datacenter"] = json!("dc1");
    node["Node"]["Partition"] = json!("part1");
    let svc = &mut node["Service"];
    let proxy = format!("{service}-sidecar-proxy");
    let at = json!({"Address": address, "Port": 21000});
    svc["ID"] = json!(proxy);
    svc["Service"] = json!(proxy);
    svc["Address"] = json!(address);
    svc["TaggedAddresses"] = json!({"lan_ipv4": at, "wan_ipv4": at});
    svc["Proxy"]["DestinationServiceName"] = json!(service);
    svc["Proxy"]["DestinationServiceID"] = json!(service);
    svc["Namespace"] = json!(namespace);
    svc["Partition"] = json!("part1");
    for c in node["Checks"].as_array_mut().unwrap() {
        c["Namespace"] = json!(namespace);
        c["Partition"] = json!("part1");
    }
    list
}

/// One partition, two namespaces: `db` in `default`, `api` in `team-a` (the documented
/// wildcard bodies). The lists are answered only to `ns=*` and each service only in its own
/// namespace, so a gateway that asked without the wildcard, or fetched a service in the
/// wrong namespace, sees nothing. Once the stand-in's `index` passes 7, `api`'s instance has
/// moved and its sidecar's checks say so.
fn namespaced_agent(port: u16, index: &AtomicU64, path: &str, query: &str) -> Option<Value> {
    // The agent's own endpoints take no partition; every other one is asked in part1's.
    match path {
        "/v1/agent/service/mesh-gateway" => return Some(part1_gateway(port)),
        "/v1/agent/connect/ca/roots" => return Some(example("agent-connect-ca-roots.json")),
        "/v1/partitions" => return Some(json!([{"Name": "part1", "Description": ""}])),
        _ if !has(query, "partition=part1") => return None,
        _ => {}
    }
    let moved = index.load(Ordering::SeqCst) > 7;
    let wildcard = has(query, "ns=*");
    let in_ns = |ns: &str| has(query, &format!("ns={ns}"));
    Some(match path {
        "/v1/config/service-resolver" => json!([]),
        "/v1/catalog/services" if wildcard => example("catalog-services-ns-wildcard.json"),
        "/v1/health/state/any" if wildcard => {
            let mut checks = example("health-state-any-ns-wildcard.json");
            if moved {
                for c in checks.as_array_mut().unwrap() {
                    if c["ServiceName"] == "api-sidecar-proxy" {
                        c["ModifyIndex"] = json!(40);
                    }
                }
            }
            checks
        }
        "/v1/catalog/service/api-sidecar-proxy" if in_ns("team-a") => {
            example("catalog-service-proxy-ns.json")
        }
        "/v1/catalog/service/db-sidecar-proxy" if in_ns("default") => {
            let mut list = example("catalog-service-proxy-ns.json");
            list[0]["ServiceName"] = json!("db-sidecar-proxy");
            list[0]["ServiceProxy"]["DestinationServiceName"] = json!("db");
            list[0]["Namespace"] = json!("default");
            list
        }
        "/v1/health/connect/api" if in_ns("team-a") => {
            connect_in("api", "team-a", if moved { "10.1.3.9" } else { "10.1.3.8" })
        }
        "/v1/health/connect/db" if in_ns("default") => connect_in("db", "default", "10.1.2.7"),
        // Anything else of a namespace (a proxy's own connect list, a name in a namespace
        // it is not in): nothing there, as Consul answers.
        "/v1/health/connect/api"
        | "/v1/health/connect/db"
        | "/v1/health/connect/api-sidecar-proxy"
        | "/v1/health/connect/db-sidecar-proxy"
        | "/v1/catalog/service/api"
        | "/v1/catalog/service/db"
            if query.contains("ns=") =>
        {
            json!([])
        }
        _ => return None,
    })
}

#[test]
fn a_gateway_routes_every_namespace_of_its_partition_enterprise_stand_in() {
    let port = free_port();
    let index = Arc::new(AtomicU64::new(7));
    let seen = index.clone();
    let (agent, peak) = stand_in_counted(
        Arc::new(move |path: &str, query: &str| namespaced_agent(port, &seen, path, query)),
        index.clone(),
    );
    let (_dir, mut gateway, admin) = gateway_following(agent, port, "consul-enterprise-namespaces");

    let td = "a1499528-fbf6-df7b-05e5-ae81e1873fc4.consul";
    let want = |api: &str| {
        let mut w = vec![
            (
                format!("api.team-a.part1.dc1.internal-v1.{td}"),
                json!([format!("{api}:21000")]).to_string(),
            ),
            (
                format!("db.default.part1.dc1.internal-v1.{td}"),
                json!(["10.1.2.7:21000"]).to_string(),
            ),
        ];
        w.sort();
        w
    };
    let settle = |w: Vec<(String, String)>, what: &str| {
        eventually_within(Duration::from_secs(20), what, || {
            let seen = gateway_routes(admin);
            if seen == w {
                Ok(())
            } else {
                Err(seen)
            }
        })
    };
    settle(want("10.1.3.8"), "a route per namespace's service");
    // A change in one namespace: api's instance moves, and the checks' index with it.
    index.store(8, Ordering::SeqCst);
    settle(want("10.1.3.9"), "the namespace's change followed");
    // However many namespaces: the fleet's two wildcard polls and its two workers, with the
    // registration's, the roots', the partitions' and the resolvers' queries.
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 8, "{peak} agent connections at once");
    assert!(gateway.is_running(), "{}", gateway.output_tail());
}
