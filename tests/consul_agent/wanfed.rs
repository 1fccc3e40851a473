//! WAN federation through sidegate gateways only (Consul 1.8.7): dc1 (primary) and dc2
//! (secondary) each run one server with `enable_mesh_gateway_wan_federation`, TLS from
//! `consul tls`, and no `retry_join_wan`: dc2 knows nothing of dc1 but `primary_gateways`,
//! the address of dc1's sidegate gateway. Each datacenter's gateway is `sidegate run`
//! following its agent (`[consul] gateway_service_id`), registered with
//! `consul-wan-federation = "1"`. The servers then gossip and forward RPC to each other only
//! through the gateways (`<node>.server.<dc>.consul` names), and a dc1 sidecar reaches a dc2
//! service through the same two gateways.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::apps::{app, echo_intact};
use crate::common::{eventually_within, free_port, http_get, start, IO_TIMEOUT};
use crate::consul::files::{header, inbound};
use crate::consul::traffic::connect;
use crate::consul::{gateway_toml, service_with_sidecar, Agent, Options, Scratch, Shown, Sidegate};

/// Federation settles within this: dc2's WAN join through dc1's gateway, dc2's federation
/// state reaching the primary, and both servers seeing each other alive over gateways.
const FEDERATED_WITHIN: Duration = Duration::from_secs(60);

/// The TLS files every server of the federation uses (one CA, one server cert per dc), as
/// `consul tls ca create` / `consul tls cert create -server` make them.
struct ServerTls {
    ca: PathBuf,
    dir: PathBuf,
}

impl ServerTls {
    fn create(dir: &Path) -> ServerTls {
        let run = |args: &[&str]| {
            let out = Command::new("consul")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "consul {args:?}: {out:?}");
        };
        run(&["tls", "ca", "create"]);
        // Servers dial each other through gateways as `<node>.server.<dc>.consul` and
        // verify that name: `-node <name>` adds it; a wildcard serves any node of the dc
        // (the harness names nodes itself).
        for dc in ["dc1", "dc2"] {
            let any_node = format!("*.server.{dc}.consul");
            run(&[
                "tls",
                "cert",
                "create",
                "-server",
                "-dc",
                dc,
                "-additional-dnsname",
                &any_node,
            ]);
        }
        ServerTls {
            ca: dir.join("consul-agent-ca.pem"),
            dir: dir.to_owned(),
        }
    }

    /// What WAN federation through mesh gateways asks of a server: Connect with the
    /// federation switch, and TLS on RPC verified both ways with server host names.
    fn server_hcl(&self, dc: &str, primary_gateway: Option<SocketAddr>) -> Vec<String> {
        let file = |name: String| self.dir.join(name).display().to_string();
        let mut hcl = vec![
            "connect { enabled = true\nenable_mesh_gateway_wan_federation = true }".to_owned(),
            format!("ca_file = \"{}\"", self.ca.display()),
            format!(
                "cert_file = \"{}\"",
                file(format!("{dc}-server-consul-0.pem"))
            ),
            format!(
                "key_file = \"{}\"",
                file(format!("{dc}-server-consul-0-key.pem"))
            ),
            "verify_incoming_rpc = true".to_owned(),
            "verify_outgoing = true".to_owned(),
            "verify_server_hostname = true".to_owned(),
        ];
        if let Some(gw) = primary_gateway {
            hcl.push(format!("primary_gateways = [\"{gw}\"]"));
            hcl.push("primary_gateways_interval = \"2s\"".to_owned());
        }
        hcl
    }
}

/// A sidegate mesh gateway registered in `agent`'s datacenter at `addr` (its `lan` and
/// `wan` tagged addresses), carrying WAN federation, run by `sidegate run` with an admin
/// endpoint.
fn federation_gateway(
    agent: &Agent,
    dir: &Path,
    name: &str,
    addr: SocketAddr,
) -> (Sidegate, SocketAddr) {
    let tagged = json!({"Address": addr.ip().to_string(), "Port": addr.port()});
    agent.register(&json!({
        "Kind": "mesh-gateway",
        "ID": "mesh-gateway",
        "Name": "mesh-gateway",
        "Address": addr.ip().to_string(),
        "Port": addr.port(),
        "TaggedAddresses": {"lan": tagged, "wan": tagged},
        "Meta": {"consul-wan-federation": "1"},
        "Checks": [crate::consul::passing_check()],
    }));
    let state = dir.join(format!("{name}-state"));
    std::fs::create_dir_all(&state).unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut gw = Sidegate::run(
        name,
        dir,
        &format!(
            "{}[admin]\nlisten = \"{admin}\"\n",
            gateway_toml(agent, "mesh-gateway", &state)
        ),
    );
    gw.serving(&[addr.port(), admin.port()]);
    (gw, admin)
}

/// The gateway's routes as its admin endpoint shows the served plan: (match, kind, dial).
fn routes(admin: SocketAddr) -> Vec<(String, String, Vec<String>)> {
    let (code, body) = http_get(admin, "/config");
    if code != 200 {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["gateway"]["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let dial = r["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e.as_str().unwrap_or_default().to_owned())
                .collect();
            (
                r["match"].as_str().unwrap_or_default().to_owned(),
                r["kind"].as_str().unwrap_or_default().to_owned(),
                dial,
            )
        })
        .collect()
}

/// Connections the gateway routed by route (`sidegate_route_connections_total`-style
/// counters from `/metrics`), summed over the routes whose match contains `needle`.
fn routed_matching(admin: SocketAddr, needle: &str) -> u64 {
    let (_, body) = http_get(admin, "/metrics");
    body.lines()
        .filter(|l| l.starts_with("sidegate_route") && l.contains(needle) && l.contains("opened"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `consul members -wan` on `agent`: (node, status, datacenter) of each line.
fn wan_members(agent: &Agent) -> Vec<(String, String, String)> {
    let out = Command::new("consul")
        .args([
            "members",
            "-wan",
            &format!("-http-addr={}", agent.address()),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // Node  Address  Status  Type  Build  Protocol  DC  Segment
            (cols.len() >= 7).then(|| (cols[0].to_owned(), cols[2].to_owned(), cols[6].to_owned()))
        })
        .collect()
}

/// The peers of the TCP connections the `consul agent` of node `node` holds established
/// (read from /proc: its socket inodes in /proc/net/tcp).
fn tcp_peers_of(node: &str) -> Vec<SocketAddr> {
    let flag = format!("-node={node}");
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            // The agent itself, not the shell that watches it.
            args.first().is_some_and(|a| a.ends_with(b"consul")) && args.contains(&flag.as_bytes())
        })
        .unwrap_or_else(|| panic!("no consul process for {node}"));
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // rem_address is HEXIP:HEXPORT (the IP little-endian); state 01 is ESTABLISHED.
            if cols.len() < 10 || cols[3] != "01" || !inodes.iter().any(|i| i == cols[9]) {
                return None;
            }
            let (ip, port) = cols[2].split_once(':')?;
            let ip = u32::from_str_radix(ip, 16).ok()?.to_le_bytes();
            Some(SocketAddr::from((ip, u16::from_str_radix(port, 16).ok()?)))
        })
        .collect()
}

/// A server's RPC address as its own catalog has it (the `consul` service).
fn server_rpc(agent: &Agent) -> SocketAddr {
    let v = agent.get("/v1/health/service/consul").json();
    let port = v[0]["Service"]["Port"].as_u64().unwrap();
    SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).unwrap()))
}

fn node_name(agent: &Agent) -> String {
    agent.get("/v1/agent/self").json()["Config"]["NodeName"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn two_datacenters_federate_only_through_sidegate_gateways() {
    let began = Instant::now();
    let dir = Scratch::new("consul-wanfed");
    let tls = ServerTls::create(&dir.0);
    // Distinct loopback hosts for the gateways, so their addresses read apart from the
    // servers' (127.0.0.1).
    let gw1_addr = SocketAddr::from(([127, 0, 0, 2], free_port()));
    let gw2_addr = SocketAddr::from(([127, 0, 0, 3], free_port()));

    let dc1 = Agent::start(Options {
        persistent: true,
        hcl: tls.server_hcl("dc1", None),
        ..Options::dev("dc1")
    });
    let (gw1, admin1) = federation_gateway(&dc1, &dir.0, "gw1", gw1_addr);
    let dc1_node = node_name(&dc1);
    // dc1's gateway routes its own server by node name, and any of them by `server.dc1`.
    eventually_within(Duration::from_secs(20), "gw1 routes dc1's server", || {
        let r = routes(admin1);
        let want = format!("{dc1_node}.server.dc1.consul");
        if r.iter().any(|(m, k, _)| *m == want && k == "server") {
            Ok(())
        } else {
            Err(Shown(format!("{r:?}\n{}", gw1.output_tail())))
        }
    });

    // dc2 knows dc1 only by its gateway: the harness waits for dc2's leader and its Connect
    // CA, which a secondary gets signed by the primary — over that gateway.
    let dc2 = Agent::start(Options {
        persistent: true,
        primary: "dc1".into(),
        hcl: tls.server_hcl("dc2", Some(gw1_addr)),
        ..Options::dev("dc2")
    });
    let (gw2, admin2) = federation_gateway(&dc2, &dir.0, "gw2", gw2_addr);
    let dc2_node = node_name(&dc2);

    // Both servers alive in both WAN pools, without ever being told each other's address.
    let alive_both = |agent: &Agent| {
        let m = wan_members(agent);
        let alive = |node: &str, dc: &str| {
            m.iter()
                .any(|(n, s, d)| n.starts_with(node) && s == "alive" && d == dc)
        };
        (alive(&dc1_node, "dc1") && alive(&dc2_node, "dc2"))
            .then_some(())
            .ok_or(m)
    };
    for (agent, gw) in [(&dc1, &gw1), (&dc2, &gw2)] {
        eventually_within(
            FEDERATED_WITHIN,
            "consul members -wan shows both servers alive",
            || {
                alive_both(agent).map_err(|m| {
                    Shown(format!(
                        "{m:?}\n--- agent\n{}\n--- gateway\n{}",
                        agent.output_tail(),
                        gw.output_tail()
                    ))
                })
            },
        );
    }

    // dc1's agent answers for dc2 (the RPC forwarded through both gateways).
    let services = eventually_within(FEDERATED_WITHIN, "catalog ?dc=dc2 from dc1", || {
        let r = dc1.get("/v1/catalog/services?dc=dc2");
        if r.status == 200 {
            Ok(r.json())
        } else {
            Err(Shown(format!("{} {}", r.status, r.body)))
        }
    });
    assert!(services["mesh-gateway"].is_array(), "{services}");

    // Each gateway carried server traffic: dc1's to dc2's servers (through gw2) and to its
    // own; dc2's to its own server and to dc1's.
    let dc2_names = "server.dc2.consul".to_owned();
    let dc1_names = "server.dc1.consul".to_owned();
    for (admin, local, remote) in [
        (admin1, &dc1_names, &dc2_names),
        (admin2, &dc2_names, &dc1_names),
    ] {
        let r = routes(admin);
        assert!(
            r.iter().any(|(m, k, dial)| m == &format!("*.{remote}")
                && k == "server"
                && !dial.is_empty()),
            "{r:?}"
        );
        assert!(routed_matching(admin, local) > 0, "{r:?}");
    }
    assert!(routed_matching(admin1, &format!("*.{dc2_names}")) > 0);
    // dc1's gateway sends dc2's server names to dc2's gateway, and the other way round.
    let r1 = routes(admin1);
    assert!(
        r1.iter()
            .any(|(m, _, dial)| *m == format!("*.{dc2_names}") && dial == &[gw2_addr.to_string()]),
        "{r1:?}"
    );
    let r2 = routes(admin2);
    assert!(
        r2.iter()
            .any(|(m, _, dial)| *m == format!("*.{dc1_names}") && dial == &[gw1_addr.to_string()]),
        "{r2:?}"
    );

    // The primary's federation states list dc2's gateway (Consul 1.8.7 serves them), and
    // dc1's gateway learned dc2's gateways from them: the catalog's `?dc=dc2` would have
    // been asked through the route it was to provide.
    let fed = dc1
        .get("/v1/internal/federation-states/mesh-gateways")
        .json();
    assert_eq!(
        fed["dc2"][0]["Service"]["TaggedAddresses"]["wan"]["Port"],
        gw2_addr.port(),
        "{fed}"
    );
    let saved = sidegate::consul::state_dir::read(
        &dir.0.join("gw1-state"),
        sidegate::consul::follow::STATE_FILE,
    )
    .unwrap();
    let saved = String::from_utf8_lossy(&saved);
    assert!(
        saved.contains("federation_states") && saved.contains("127.0.0.3"),
        "{saved}"
    );

    // No connection between the servers: each holds its cross-datacenter connections to a
    // gateway, none to the other server's RPC or serf WAN port.
    let (rpc1, rpc2) = (server_rpc(&dc1), server_rpc(&dc2));
    let direct = |other: &Agent, rpc: SocketAddr| {
        vec![rpc, SocketAddr::from(([127, 0, 0, 1], other.serf_wan))]
    };
    for (node, other, rpc) in [(&dc1_node, &dc2, rpc2), (&dc2_node, &dc1, rpc1)] {
        let peers = tcp_peers_of(node);
        let forbidden = direct(other, rpc);
        assert!(
            !peers.iter().any(|p| forbidden.contains(p)),
            "{node}: {peers:?}"
        );
        assert!(
            peers.iter().any(|p| *p == gw1_addr || *p == gw2_addr),
            "{node} holds no connection to a gateway: {peers:?}"
        );
    }

    // Service traffic through the same gateways: web in dc1 (mode local: dc1's gateway)
    // to db in dc2, whose identity comes from dc2's intermediate of dc1's CA.
    let td = dc1.roots().trust_domain;
    assert_eq!(
        dc2.roots().trust_domain,
        td,
        "one trust domain across the federation"
    );
    let db_app = app("db");
    let db = inbound(&dc2, &dc2.identity_files("db", &dir.0), db_app, "");
    let db_in = db.inbound_addr.unwrap();
    dc2.register(&service_with_sidecar(
        "db",
        db_app,
        db_in.port(),
        json!([]),
        "",
    ));
    let port = free_port();
    let web = start(&format!(
        "{}[[sidecar.upstreams]]\ndestination_name = \"db\"\ndatacenter = \"dc2\"\n\
         local_bind_port = {port}\nmesh_gateway = {{ mode = \"local\" }}\n\
         [[catalog.gateways]]\nlan = [\"{gw1_addr}\"]\n",
        header(&dc1, &dc1.identity_files("web", &dir.0))
    ));
    let db_sni = format!("db.default.dc2.internal.{td}");
    eventually_within(Duration::from_secs(20), "gw2 routes db", || {
        let r = routes(admin2);
        r.iter()
            .any(|(m, _, dial)| *m == db_sni && dial == &[db_in.to_string()])
            .then_some(())
            .ok_or(Shown(format!("{r:?}")))
    });
    assert_eq!(echo_intact(connect(port), 1 << 20, IO_TIMEOUT), b"app:db\n");
    assert!(routed_matching(admin1, &format!("*.dc2.internal.{td}")) >= 1);
    assert!(routed_matching(admin2, &db_sni) >= 1);
    assert_eq!(web.metrics.upstream.handshake_failures.get(), 0);
    assert!(
        began.elapsed() < Duration::from_secs(150),
        "{:?}",
        began.elapsed()
    );
}
