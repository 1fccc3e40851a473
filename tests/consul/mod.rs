//! Real Consul agents for integration tests: `consul agent -dev` (or a single persistent server
//! for restarts) on loopback ports chosen per agent, ready when it has a leader and a Connect
//! CA; the API calls tests need (registrations, intentions, config entries, leaf certificates,
//! roots, CA rotation, WAN join); `consul connect proxy`; everything ends with the test.
//! Consul is Debian's 1.8.7 (`tests/consul/install.sh`, run by `tests/run.sh`).
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

mod builtin_proxy;
pub mod files;
mod http;
mod process;
mod sidegate;
pub mod traffic;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use builtin_proxy::BuiltinProxy;
pub use http::Response;
use process::Watched;
pub use sidegate::{gateway_toml, sidecar_toml, Sidegate};

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
}

impl Options {
    pub fn dev(datacenter: &str) -> Options {
        Options {
            datacenter: datacenter.to_owned(),
            primary: datacenter.to_owned(),
            join_wan: None,
            persistent: false,
            hcl: Vec::new(),
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

/// A scratch directory under cargo's target tmp dir, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
            datacenter: datacenter.to_owned(),
            primary: primary.options.datacenter.clone(),
            join_wan: Some(primary.serf_wan),
            persistent: false,
            hcl: Vec::new(),
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
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let process = self.process.as_mut().expect("agent running");
            if process.has_exited() {
                return Err(process.tail());
            }
            if self.is_ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready within {READY_WITHIN:?}\n{}",
                    self.output_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn is_ready(&self) -> bool {
        let leader = http::request(self.http, "GET", "/v1/status/leader", "");
        let has_leader = matches!(leader, Ok(r) if r.status == 200 && r.body.trim() != "\"\"");
        let roots = http::request(self.http, "GET", "/v1/agent/connect/ca/roots", "");
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

    // ---- the HTTP API ----

    pub fn call(&self, method: &str, path: &str, body: &str) -> Response {
        http::request(self.http, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.http))
    }

    pub fn get(&self, path: &str) -> Response {
        self.call("GET", path, "")
    }

    /// A call that must answer 200; returns the body.
    pub fn ok(&self, method: &str, path: &str, body: &Value) -> Response {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = self.call(method, path, &body);
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
        r
    }

    /// Polls `probe` (bounded) until it answers.
    pub fn wait_until<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(t) = probe() {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} on {}",
                self.http
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `PUT /v1/agent/service/register`, then a TTL pass for the test's check of the
    /// service's sidecar or of a gateway (`passing_check`), as a healthy service's heartbeat:
    /// a status set by a TTL update is kept on disk and survives an agent restart, while the
    /// initial `Status` of a registration is not.
    pub fn register(&self, service: &Value) {
        self.register_without_heartbeat(service);
        let id = service["ID"].as_str().unwrap();
        let check = if service["Connect"]["SidecarService"].is_object() {
            Some(format!("service:{id}-sidecar-proxy"))
        } else {
            service["Checks"]
                .is_array()
                .then(|| format!("service:{id}"))
        };
        if let Some(check) = check {
            self.ok(
                "PUT",
                &format!("/v1/agent/check/pass/{check}"),
                &Value::Null,
            );
        }
    }

    /// `PUT /v1/agent/service/register` alone: the checks are passing from the registration
    /// but, with no heartbeat, critical once the agent restarts — as every check of a
    /// restarted agent is until it runs again.
    pub fn register_without_heartbeat(&self, service: &Value) {
        self.ok("PUT", "/v1/agent/service/register", service);
    }

    /// `PUT /v1/config`: a config entry (`Kind`, `Name`, fields).
    pub fn config_entry(&self, entry: &Value) {
        self.ok("PUT", "/v1/config", entry);
    }

    /// Creates or updates the intention `source → destination` (1.8: `/v1/connect/intentions`).
    pub fn set_intention(&self, source: &str, destination: &str, action: &str) {
        let all = self.get("/v1/connect/intentions").json();
        let existing = all
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["SourceName"] == source && i["DestinationName"] == destination);
        let body = json!({"SourceName": source, "DestinationName": destination, "Action": action});
        match existing.and_then(|i| i["ID"].as_str()) {
            Some(id) => self.ok("PUT", &format!("/v1/connect/intentions/{id}"), &body),
            None => self.ok("POST", "/v1/connect/intentions", &body),
        };
    }

    /// What the agent itself decides for a caller (`consul connect proxy` asks the same).
    pub fn authorized(&self, source: &str, target: &str) -> bool {
        let td = self.roots().trust_domain;
        let uri = format!(
            "spiffe://{td}/ns/default/dc/{}/svc/{source}",
            self.options.datacenter
        );
        let r = self.ok(
            "POST",
            "/v1/agent/connect/authorize",
            &json!({"Target": target, "ClientCertURI": uri, "ClientCertSerial": "01"}),
        );
        r.json()["Authorized"].as_bool().unwrap()
    }

    pub fn leaf(&self, service: &str) -> Leaf {
        let v = self
            .ok(
                "GET",
                &format!("/v1/agent/connect/ca/leaf/{service}"),
                &Value::Null,
            )
            .json();
        Leaf {
            cert_pem: v["CertPEM"].as_str().unwrap().to_owned(),
            key_pem: v["PrivateKeyPEM"].as_str().unwrap().to_owned(),
            uri: v["ServiceURI"].as_str().unwrap().to_owned(),
        }
    }

    pub fn roots(&self) -> Roots {
        let v = self
            .ok("GET", "/v1/agent/connect/ca/roots", &Value::Null)
            .json();
        let roots = v["Roots"].as_array().unwrap();
        let active = v["ActiveRootID"].as_str().unwrap().to_owned();
        Roots {
            trust_domain: v["TrustDomain"].as_str().unwrap().to_owned(),
            active_pem: roots
                .iter()
                .find(|r| r["ID"] == active.as_str())
                .and_then(|r| r["RootCert"].as_str())
                .unwrap()
                .to_owned(),
            pems: roots
                .iter()
                .map(|r| r["RootCert"].as_str().unwrap().to_owned())
                .collect(),
            active_id: active,
        }
    }

    /// Writes `service`'s leaf, key and every root as PEM files for sidegate's file source.
    pub fn identity_files(&self, service: &str, dir: &Path) -> TlsFiles {
        let leaf = self.leaf(service);
        let files = TlsFiles {
            service: service.to_owned(),
            cert: dir.join(format!("{service}.pem")),
            key: dir.join(format!("{service}-key.pem")),
            ca: dir.join(format!("{service}-roots.pem")),
            uri: leaf.uri.clone(),
        };
        std::fs::write(&files.cert, &leaf.cert_pem).unwrap();
        std::fs::write(&files.key, &leaf.key_pem).unwrap();
        std::fs::write(&files.ca, self.roots().pems.concat()).unwrap();
        files
    }

    /// Rotates the built-in CA to a new root key (`PUT /v1/connect/ca/configuration`) and
    /// waits until the agent serves the new active root; the old root stays trusted.
    pub fn rotate_ca(&self) -> Roots {
        let before = self.roots();
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        self.ok(
            "PUT",
            "/v1/connect/ca/configuration",
            &json!({"Provider": "consul", "Config": {"PrivateKey": key, "LeafCertTTL": "72h"}}),
        );
        self.wait_until("the new CA root", || {
            let now = self.roots();
            (now.active_id != before.active_id).then_some(now)
        })
    }

    /// Registers a `mesh-gateway` service reached at `lan` from its own datacenter and at `wan`
    /// from others (its `lan` / `wan` tagged addresses), listening only on the tagged addresses
    /// named in `listen_on` (`envoy_gateway_no_default_bind` + `envoy_gateway_bind_addresses`,
    /// as `consul connect envoy -gateway=mesh -register -bind-address` writes them). A tagged
    /// address it does not listen on makes a test see which address a path took.
    pub fn register_mesh_gateway(
        &self,
        id: &str,
        lan: SocketAddr,
        wan: SocketAddr,
        listen_on: &[&str],
    ) {
        let addr = |a: SocketAddr| json!({"Address": a.ip().to_string(), "Port": a.port()});
        let binds: serde_json::Map<String, Value> = listen_on
            .iter()
            .map(|&name| {
                let a = if name == "lan" { lan } else { wan };
                (
                    name.to_owned(),
                    json!({"address": a.ip().to_string(), "port": a.port()}),
                )
            })
            .collect();
        self.register(&json!({
            "Kind": "mesh-gateway",
            "ID": id,
            "Name": "mesh-gateway",
            "Address": lan.ip().to_string(),
            "Port": lan.port(),
            "TaggedAddresses": {"lan": addr(lan), "wan": addr(wan)},
            "Proxy": {"Config": {
                "envoy_gateway_no_default_bind": true,
                "envoy_gateway_bind_addresses": binds,
            }},
            "Checks": [passing_check()],
        }));
    }
}

impl Agent {
    /// The `wan` tagged address of `datacenter`'s mesh gateways as this agent's catalog
    /// answers across the WAN federation (`/v1/catalog/service/mesh-gateway?dc=`).
    pub fn mesh_gateway_wan(&self, datacenter: &str) -> Vec<SocketAddr> {
        let v = self.ok(
            "GET",
            &format!("/v1/catalog/service/mesh-gateway?dc={datacenter}"),
            &Value::Null,
        );
        let v = v.json();
        v.as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                let wan = &n["ServiceTaggedAddresses"]["wan"];
                format!("{}:{}", wan["Address"].as_str().unwrap(), wan["Port"])
                    .parse()
                    .unwrap()
            })
            .collect()
    }
}

/// A check that is passing from the start, so that `?passing` health queries (what
/// `consul connect proxy` resolves upstreams with) see the instance at once, not after the
/// default TCP check's first interval.
pub fn passing_check() -> Value {
    json!({"Name": "registered by the test", "TTL": "1h", "Status": "passing"})
}

/// A service registration with a Connect sidecar (`connect.sidecar_service`): the app at
/// `app`, the sidecar's public listener at 127.0.0.1:`public_port`, its upstreams (Consul's
/// JSON, e.g. `[{"DestinationName": "db", "LocalBindPort": 9191}]`) and proxy-level
/// `mesh_gateway` mode (`""` for none set).
pub fn service_with_sidecar(
    service: &str,
    app: SocketAddr,
    public_port: u16,
    upstreams: Value,
    mesh_gateway_mode: &str,
) -> Value {
    let mut proxy = json!({
        "LocalServiceAddress": app.ip().to_string(),
        "LocalServicePort": app.port(),
        "Upstreams": upstreams,
    });
    if !mesh_gateway_mode.is_empty() {
        proxy["MeshGateway"] = json!({"Mode": mesh_gateway_mode});
    }
    json!({
        "Name": service,
        "ID": service,
        "Address": app.ip().to_string(),
        "Port": app.port(),
        "Connect": {"SidecarService": {
            "Address": "127.0.0.1",
            "Port": public_port,
            "Proxy": proxy,
            "Checks": [passing_check()],
        }},
    })
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

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// The SPIFFE ID Consul says the leaf carries.
    pub uri: String,
}

pub struct Roots {
    pub trust_domain: String,
    pub active_id: String,
    pub active_pem: String,
    /// Every root, active or not: what a proxy must trust during a rotation.
    pub pems: Vec<String>,
}

/// sidegate's `[tls]` files for one service.
pub struct TlsFiles {
    pub service: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub uri: String,
}

impl TlsFiles {
    pub fn toml(&self) -> String {
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
            self.cert.display(),
            self.key.display(),
            self.ca.display()
        )
    }
}

/// Waits (bounded) until something listens on `port`, read from /proc/net/tcp so that no
/// probe connection reaches the listener (a probe would count as a connection).
pub fn wait_listening(port: u16, within: Duration) -> bool {
    wait_listen_state(port, true, within)
}

/// Waits (bounded) until nothing listens on `port` any more.
pub fn wait_not_listening(port: u16, within: Duration) -> bool {
    wait_listen_state(port, false, within)
}

fn wait_listen_state(port: u16, listening: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let needle = format!(":{port:04X}");
    loop {
        let now = ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
            let table = std::fs::read_to_string(f).unwrap_or_default();
            table.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                // local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                cols.len() > 3 && cols[1].ends_with(&needle) && cols[3] == "0A"
            })
        });
        if now == listening {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
