//! Enterprise-only paths of a gateway following Consul, against an **agent stand-in**: no
//! Enterprise binary is available here, so a small HTTP server answers the endpoints a
//! gateway in admin partition `part1` asks, with Consul's documented bodies
//! (tests/data/consul/, see its README) adapted to this place. The real binary follows it:
//! the other partition of its datacenter (`default`, listed by `/v1/partitions`) is routed
//! to that partition's gateway — found by kind in the service summary — on its WAN address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::consul;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use common::{eventually_within, free_port, http_get};
use consul::{Scratch, Sidegate};
use serde_json::{json, Value};

fn example(name: &str) -> Value {
    let path = format!("{}/tests/data/consul/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The stand-in's answer to one request line's path and query, `None` for a 404.
type Answers = fn(&str, &str) -> Option<Value>;

/// A stand-in for an Enterprise agent: every request answered from `answers`, with a fixed
/// `X-Consul-Index`; a blocking query at that index waits a little first, as a real agent
/// holds it until something changes.
fn stand_in(answers: Answers) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn, answers));
        }
    });
    addr
}

fn serve(conn: TcpStream, answers: Answers) {
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
        if query.split('&').any(|q| q == "index=7") {
            std::thread::sleep(Duration::from_millis(500));
        }
        let (status, body) = match answers(path, query) {
            Some(v) => ("200 OK", v.to_string()),
            None => ("404 Not Found", String::new()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Consul-Index: 7\r\n\
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
fn part1_gateway() -> Value {
    let mut reg = example("agent-service-mesh-gateway.json");
    let port = *GATEWAY_PORT.get().unwrap();
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
        "/v1/agent/service/mesh-gateway" => part1_gateway(),
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

#[test]
fn a_gateway_routes_the_other_partitions_of_its_datacenter_enterprise_stand_in() {
    let port = *GATEWAY_PORT.get_or_init(free_port);
    let agent = stand_in(enterprise_agent);
    let dir = Scratch::new("consul-enterprise-stand-in");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = format!(
        "[consul]\naddress = \"{agent}\"\ngateway_service_id = \"mesh-gateway\"\nstate_dir = \"{}\"\n\
         [gateway]\n[admin]\nlisten = \"{admin}\"\n",
        dir.path("state").display()
    );
    let mut gateway = Sidegate::run("gateway", &dir.0, &toml);
    gateway.serving(&[port, admin.port()]);

    let td = "a1499528-fbf6-df7b-05e5-ae81e1873fc4.consul";
    let routes = || -> Vec<(String, String)> {
        let (code, body) = http_get(admin, "/config");
        assert_eq!(code, 200, "{body}");
        let plan: Value = serde_json::from_str(&body).unwrap();
        plan["gateway"]["routes"]
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
            .collect()
    };
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
        let mut seen = routes();
        seen.sort();
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
