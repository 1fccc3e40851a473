//! Real Consul agents for integration tests: `consul agent -dev` (or a single persistent server
//! for restarts) on loopback ports chosen per agent, ready when it has a leader and a Connect
//! CA; the API calls tests need (registrations, intentions, config entries, leaf certificates,
//! roots, CA rotation); WAN federation; `consul connect proxy` and `sidegate run`; everything
//! ends with the test. Consul is Debian's 1.8.7 (`tests/consul/install.sh`, run by
//! `tests/run.sh`).
// Each test binary uses a part of the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod builtin_proxy;
pub mod files;
mod http;
mod listening;
mod process;
mod sidegate;
pub mod traffic;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::common::poll_within;
pub use crate::common::Scratch;
pub use api::{passing_check, service_with_sidecar, TlsFiles};
pub use builtin_proxy::BuiltinProxy;
pub use listening::{listening, wait_listening, wait_not_listening};
use process::Watched;
pub use sidegate::{
    gateway_toml, saved_unix, set_saved_unix, sidecar_toml, Sidegate, SERVING_WITHIN,
};

/// Text that `eventually`'s failure message shows as it is (a log, a process's output), not
/// escaped onto one line as a `String` would be.
pub struct Shown(pub String);

impl std::fmt::Debug for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent is ready well within this (dev: ~0.3 s; persistent server: ~2 s).
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Attempts at starting an agent when a port picked for it was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// How an agent runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub datacenter: String,
    /// The Connect primary datacenter; a secondary signs with an intermediate from it.
    pub primary: String,
    /// Another agent's serf WAN port to join at start.
    pub join_wan: Option<u16>,
    /// A single server with its state on disk instead of `-dev`'s memory, so that a restart
    /// keeps the CA, the catalog and the intentions — as the servers do when a node's agent
    /// restarts. Takes ~2 s to elect itself instead of ~0.3 s.
    pub persistent: bool,
    /// More agent configuration, one `-hcl` argument each (HTTPS, ACLs, ...).
    pub hcl: Vec<String>,
    /// The ACL token the harness's own API calls carry, for an agent with ACLs enabled.
    pub token: Option<String>,
}

impl Options {
    pub fn dev(datacenter: &str) -> Options {
        Options {
            datacenter: datacenter.to_owned(),
            primary: datacenter.to_owned(),
            join_wan: None,
            persistent: false,
            hcl: Vec::new(),
            token: None,
        }
    }
}

pub struct Agent {
    pub options: Options,
    /// The HTTP API, as sidegate's `[consul] address` takes it.
    pub http: SocketAddr,
    pub serf_wan: u16,
    args: Vec<String>,
    data_dir: Option<Scratch>,
    process: Option<Watched>,
}

/// Loopback ports for an agent, below the ephemeral range (`common::free_port`); serf
/// gossips over UDP as well, so its ports must be free for both.
struct Ports(Vec<u16>);

impl Ports {
    fn pick(udp: &[bool]) -> Ports {
        let mut ports: Vec<u16> = Vec::new();
        for &with_udp in udp {
            loop {
                let port = crate::common::free_port();
                if ports.contains(&port) {
                    continue;
                }
                if !with_udp || UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                    ports.push(port);
                    break;
                }
            }
        }
        Ports(ports)
    }

    fn port(&self, i: usize) -> u16 {
        self.0[i]
    }
}

fn consul_binary() -> &'static str {
    static CHECKED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    CHECKED.get_or_init(|| {
        let out = std::process::Command::new("consul").arg("version").output();
        let first = out
            .as_ref()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default();
        assert!(
            first.starts_with("Consul v"),
            "no `consul` on PATH ({out:?}); tests/consul/install.sh installs Debian's 1.8.7"
        );
    });
    "consul"
}

static NODES: AtomicUsize = AtomicUsize::new(0);

impl Agent {
    /// A `-dev` agent (a server with its own CA, in memory) for `datacenter`.
    pub fn dev(datacenter: &str) -> Agent {
        Agent::start(Options::dev(datacenter))
    }

    /// A `-dev` server of `datacenter`, WAN-joined to `primary` (a dev agent of the primary
    /// datacenter), ready when its CA carries the primary's trust domain.
    pub fn secondary(datacenter: &str, primary: &Agent) -> Agent {
        let agent = Agent::start(Options {
            join_wan: Some(primary.serf_wan),
            primary: primary.options.datacenter.clone(),
            ..Options::dev(datacenter)
        });
        let td = primary.roots().trust_domain;
        assert_eq!(agent.roots().trust_domain, td, "secondary CA not federated");
        for a in [primary, &agent] {
            a.wait_until("both datacenters in the WAN pool", || {
                let dcs = a.get("/v1/catalog/datacenters").json();
                let dcs: Vec<&str> = dcs.as_array()?.iter().filter_map(Value::as_str).collect();
                (dcs.contains(&datacenter) && dcs.contains(&primary.options.datacenter.as_str()))
                    .then_some(())
            });
        }
        agent
    }

    pub fn start(options: Options) -> Agent {
        let data_dir = options.persistent.then(|| Scratch::new("consul-data"));
        let node = format!(
            "sidegate-{}-{}-{}",
            options.datacenter,
            std::process::id(),
            NODES.fetch_add(1, Ordering::SeqCst)
        );
        for attempt in 1..=PORT_ATTEMPTS {
            // http, serf_lan, serf_wan, server
            let ports = Ports::pick(&[false, true, true, false]);
            let args = agent_args(&options, &node, &ports, data_dir.as_ref());
            let mut agent = Agent {
                http: SocketAddr::from(([127, 0, 0, 1], ports.port(0))),
                serf_wan: ports.port(2),
                options: options.clone(),
                args,
                data_dir: None,
                process: None,
            };
            agent.spawn();
            match agent.wait_ready() {
                Ok(()) => {
                    agent.data_dir = data_dir;
                    return agent;
                }
                Err(tail) if attempt < PORT_ATTEMPTS && tail.contains("address already in use") => {
                }
                Err(tail) => panic!(
                    "consul agent for {} did not become ready:\n{tail}",
                    options.datacenter
                ),
            }
        }
        unreachable!()
    }

    fn spawn(&mut self) {
        let name = format!("consul agent {}", self.options.datacenter);
        self.process = Some(Watched::spawn(&name, consul_binary(), &self.args));
    }

    /// Waits for a leader and an initialised Connect CA, or returns the agent's output.
    fn wait_ready(&mut self) -> Result<(), String> {
        let polled = poll_within(READY_WITHIN, || {
            let process = self.process.as_mut().expect("agent running");
            if process.has_exited() {
                return Ok(Err(process.tail()));
            }
            if self.is_ready() {
                Ok(Ok(()))
            } else {
                Err(())
            }
        });
        polled.unwrap_or_else(|()| {
            Err(format!(
                "not ready within {READY_WITHIN:?}\n{}",
                self.output_tail()
            ))
        })
    }

    fn is_ready(&self) -> bool {
        let leader = http::request(self.http, "GET", "/v1/status/leader", "", None);
        let has_leader = matches!(leader, Ok(r) if r.status == 200 && r.body.trim() != "\"\"");
        let roots = http::request(self.http, "GET", "/v1/agent/connect/ca/roots", "", None);
        has_leader
            && matches!(roots, Ok(r) if r.status == 200
                && serde_json::from_str::<Value>(&r.body).ok()
                    .and_then(|v| v["Roots"].as_array().map(|a| !a.is_empty()))
                    .unwrap_or(false))
    }

    /// `consul agent` as a crash: SIGKILL, no leave.
    pub fn kill(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.kill();
        }
    }

    /// A clean stop (SIGTERM).
    pub fn stop(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.stop();
        }
    }

    /// Starts the agent again on the same ports (and data, when persistent) after `stop` or
    /// `kill`, and waits until it is ready.
    pub fn restart(&mut self) {
        self.process = None;
        self.spawn();
        if let Err(tail) = self.wait_ready() {
            panic!("consul agent did not come back:\n{tail}");
        }
    }

    pub fn address(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn output_tail(&self) -> String {
        self.process.as_ref().map(Watched::tail).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The process first: it writes into the data directory until it ends.
        self.process = None;
        self.data_dir = None;
    }
}

fn agent_args(options: &Options, node: &str, ports: &Ports, data: Option<&Scratch>) -> Vec<String> {
    let mut a: Vec<String> = vec!["agent".into()];
    match data {
        None => a.push("-dev".into()),
        Some(dir) => a.extend([
            "-server".into(),
            "-bootstrap-expect=1".into(),
            format!("-data-dir={}", dir.0.display()),
            "-hcl=connect { enabled = true }".into(),
            // The fastest election a persistent server allows.
            "-hcl=performance { raft_multiplier = 1 }".into(),
        ]),
    }
    a.extend([
        format!("-datacenter={}", options.datacenter),
        format!("-node={node}"),
        "-bind=127.0.0.1".into(),
        "-client=127.0.0.1".into(),
        format!("-http-port={}", ports.port(0)),
        format!("-serf-lan-port={}", ports.port(1)),
        format!("-serf-wan-port={}", ports.port(2)),
        format!("-server-port={}", ports.port(3)),
        // No DNS and no gRPC (xDS is Envoy's): fewer ports to collide.
        "-dns-port=-1".into(),
        "-grpc-port=-1".into(),
        format!("-hcl=primary_datacenter = \"{}\"", options.primary),
        "-hcl=disable_update_check = true".into(),
        "-log-level=info".into(),
    ]);
    if let Some(port) = options.join_wan {
        a.push(format!("-retry-join-wan=127.0.0.1:{port}"));
    }
    a.extend(options.hcl.iter().map(|h| format!("-hcl={h}")));
    a
}
