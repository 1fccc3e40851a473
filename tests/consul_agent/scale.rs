//! A mesh gateway following a datacenter of 1,000 connect services (1–3 instances each) on a
//! real agent: the connections it keeps to the agent and its threads are constants, not a
//! function of the mesh size, and a new instance, an instance going critical, a new service
//! and a removed service reach its routes quickly. `consul_scale_benchmark` (ignored; run by
//! `tests/bench/consul_scale.sh`) measures the same with memory and propagation percentiles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::consul;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually_within, free_port, http_get};
use consul::{gateway_toml, Agent, Scratch, Sidegate};
use serde_json::{json, Value};

/// The bound the issue sets on sidegate's connections to the agent.
const MAX_AGENT_CONNECTIONS: usize = 8;
/// Generous bounds for the test on a loaded machine; the benchmark measures the real times.
const FOLLOW_WITHIN: Duration = Duration::from_secs(10);
const RAMP_WITHIN: Duration = Duration::from_secs(90);

/// The agent's HTTP API over one keep-alive connection: registering thousands of instances
/// one connection each would spend most of the time in TCP set-up.
struct Api {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl Api {
    fn new(addr: SocketAddr) -> Api {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.set_nodelay(true).unwrap();
        Api {
            addr,
            reader: BufReader::new(s),
        }
    }

    fn put(&mut self, path: &str, body: &Value) {
        let body = body.to_string();
        let s = self.reader.get_mut();
        write!(
            s,
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut status = String::new();
        self.reader.read_line(&mut status).unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut answer = vec![0u8; length];
        self.reader.read_exact(&mut answer).unwrap();
        assert!(
            status.contains(" 200 "),
            "PUT {path}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
}

/// Services `svc-<i>` registered in the catalog as Consul's agents would (each instance a
/// sidecar proxy `svc-<i>-sidecar-proxy` on its node, with a check), on nodes of their own:
/// the dev agent would remove services registered on its own node that it does not know.
pub struct Fleet {
    api: Api,
    /// Instances per service: (node, proxy ID, port).
    pub instances: BTreeMap<String, Vec<(String, String, u16)>>,
    /// The node each service itself is registered on.
    homes: BTreeMap<String, String>,
    next_port: u16,
    next_instance: usize,
}

impl Fleet {
    pub fn new(agent: &Agent) -> Fleet {
        Fleet {
            api: Api::new(agent.http),
            instances: BTreeMap::new(),
            homes: BTreeMap::new(),
            next_port: 30_000,
            next_instance: 0,
        }
    }

    /// `svc-<i>` with 1 + i % 3 instances, registered over four connections at once (the
    /// agent commits concurrent registrations together).
    pub fn add_services(&mut self, range: std::ops::Range<usize>) {
        let mut bodies: Vec<Vec<Value>> = vec![Vec::new(); 4];
        for i in range {
            let name = format!("svc-{i}");
            bodies[i % 4].extend(self.service_bodies(&name, 1 + i % 3));
        }
        let addr = self.api.addr;
        let threads: Vec<_> = bodies
            .into_iter()
            .map(|chunk| {
                std::thread::spawn(move || {
                    let mut api = Api::new(addr);
                    for b in chunk {
                        api.put("/v1/catalog/register", &b);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    pub fn add_service(&mut self, name: &str, instances: usize) {
        for b in self.service_bodies(name, instances) {
            self.api.put("/v1/catalog/register", &b);
        }
    }

    /// The registrations of a service and its instances, in order, recorded as registered.
    fn service_bodies(&mut self, name: &str, instances: usize) -> Vec<Value> {
        let node = format!("node-{}", self.next_instance % 50);
        let mut out = vec![json!({
            "Node": node, "Address": "127.0.0.1",
            "Service": {"ID": name, "Service": name, "Port": 8080, "Address": "127.0.0.1"},
        })];
        self.homes.insert(name.to_owned(), node);
        for _ in 0..instances {
            out.push(self.instance_body(name));
        }
        out
    }

    fn instance_body(&mut self, service: &str) -> Value {
        self.next_instance += 1;
        let node = format!("node-{}", self.next_instance % 50);
        let id = format!("{service}-sidecar-proxy-{}", self.next_instance);
        let port = self.next_port;
        self.next_port += 1;
        let body = proxy_body(service, &node, &id, port, "passing");
        self.instances
            .entry(service.to_owned())
            .or_default()
            .push((node, id, port));
        body
    }

    pub fn add_instance(&mut self, service: &str) -> u16 {
        let body = self.instance_body(service);
        self.api.put("/v1/catalog/register", &body);
        self.next_port - 1
    }

    fn proxy(&mut self, service: &str, node: &str, id: &str, port: u16, status: &str) {
        let body = proxy_body(service, node, id, port, status);
        self.api.put("/v1/catalog/register", &body);
    }

    /// Marks `service`'s first instance critical; returns its port.
    pub fn make_critical(&mut self, service: &str) -> u16 {
        let (node, id, port) = self.instances[service][0].clone();
        self.proxy(service, &node, &id, port, "critical");
        port
    }

    /// Deregisters `service` and every instance of it.
    pub fn remove_service(&mut self, service: &str) {
        for (node, id, _) in self.instances.remove(service).unwrap_or_default() {
            self.api.put(
                "/v1/catalog/deregister",
                &json!({"Node": node, "ServiceID": id}),
            );
        }
        if let Some(node) = self.homes.remove(service) {
            self.api.put(
                "/v1/catalog/deregister",
                &json!({"Node": node, "ServiceID": service}),
            );
        }
    }
}

/// A sidecar proxy instance of `service`, with one check in `status`.
fn proxy_body(service: &str, node: &str, id: &str, port: u16, status: &str) -> Value {
    json!({
        "Node": node, "Address": "127.0.0.1",
        "Service": {
            "ID": id, "Service": format!("{service}-sidecar-proxy"),
            "Kind": "connect-proxy", "Port": port, "Address": "127.0.0.1",
            "Proxy": {"DestinationServiceName": service, "DestinationServiceID": service},
        },
        "Check": {
            "CheckID": format!("{id}:alive"), "Name": "alive",
            "Status": status, "ServiceID": id,
        },
    })
}

/// The gateway's routes in service: service name → endpoints.
pub fn routes(admin: SocketAddr) -> BTreeMap<String, Vec<String>> {
    let (code, body) = http_get(admin, "/config");
    assert_eq!(code, 200, "{body}");
    let plan: Value = serde_json::from_str(&body).unwrap();
    let mut out = BTreeMap::new();
    for r in plan["gateway"]["routes"].as_array().into_iter().flatten() {
        let Some(sni) = r["match"].as_str() else {
            continue;
        };
        let Some(name) = sni.split('.').next() else {
            continue;
        };
        let endpoints = r["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect();
        out.insert(name.to_owned(), endpoints);
    }
    out
}

/// Established TCP connections from `pid` to `port` on the loopback: its sockets' inodes
/// (from /proc/<pid>/fd) looked up in /proc/<pid>/net/tcp.
pub fn connections_to(pid: i32, port: u16) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: std::collections::HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let remote = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9 && f[2].ends_with(&remote) && f[3] == "01" && inodes.contains(f[9])
        })
        .count()
}

/// The process's threads at rest: the fewest seen over half a second, so that a
/// short-lived helper thread caught at the wrong moment does not count.
pub fn threads(pid: i32) -> usize {
    (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(Iterator::count)
                .unwrap_or(0)
        })
        .min()
        .unwrap_or(0)
}

pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Samples the connection count every few milliseconds until dropped; the highest seen.
pub struct Sampler {
    max: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: i32, port: u16) -> Sampler {
        let max = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (m, d) = (max.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                m.fetch_max(connections_to(pid, port), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Sampler {
            max,
            done,
            thread: Some(thread),
        }
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An agent with a mesh gateway registration, and `sidegate run` following it (`argv`: the
/// binary), with its admin endpoint.
pub struct Setup {
    pub agent: Agent,
    pub gateway: Sidegate,
    pub admin: SocketAddr,
    _dir: Scratch,
}

impl Setup {
    pub fn start(argv: Vec<String>) -> Setup {
        Setup::start_with(argv, "")
    }

    /// `start` with `extra` appended to the gateway's configuration.
    pub fn start_with(argv: Vec<String>, extra: &str) -> Setup {
        let agent = Agent::dev("dc1");
        let dir = Scratch::new("consul-scale");
        let lan = SocketAddr::from(([127, 0, 0, 1], free_port()));
        agent.register_mesh_gateway("mesh-gateway", lan, lan, &["lan"]);
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let toml = gateway_toml(&agent, "mesh-gateway", &dir.0)
            + &format!("[admin]\nlisten = \"{admin}\"\n")
            + extra;
        let mut gateway = Sidegate::run_with(argv, "gateway", &dir.0, &toml);
        gateway.serving(&[lan.port(), admin.port()]);
        gateway.plan(admin);
        Setup {
            agent,
            gateway,
            admin,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.gateway.pid()
    }

    /// Waits until the routes of `svc-*` number `n`.
    pub fn wait_routes(&self, n: usize, within: Duration) {
        eventually_within(within, &format!("{n} service routes"), || {
            let got = routes(self.admin)
                .keys()
                .filter(|k| k.starts_with("svc-"))
                .count();
            if got == n {
                Ok(())
            } else {
                Err(got)
            }
        });
    }

    /// How long until `cond` holds of the plan in service (`/config` as text, polled every
    /// 10 ms: a substring test costs the harness little, so the poll keeps its pace),
    /// within `within`.
    pub fn time_until(
        &self,
        what: &str,
        within: Duration,
        cond: impl Fn(&str) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let (code, body) = http_get(self.admin, "/config");
            assert_eq!(code, 200, "{body}");
            if cond(&body) {
                return start.elapsed();
            }
            assert!(start.elapsed() < within, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What one round of `changes` measured.
pub struct Round {
    /// How long each change took to reach the plan in service.
    pub times: [Duration; 4],
    /// The most agent connections counted right after each change reached the plan: the
    /// follower has just reconciled its watches with the new names.
    pub connections: usize,
}

/// The four changes the issue names, each timed from the agent's answer to the change until
/// the gateway's plan in service shows it. `k` makes names unique per round.
pub fn changes(s: &Setup, fleet: &mut Fleet, k: usize, within: Duration) -> Round {
    let (pid, port) = (s.pid(), s.agent.http.port());
    let mut connections = 0;
    let mut count = || connections = connections.max(connections_to(pid, port));
    // Every instance has a port of its own, so its endpoint in the plan is its route's; the
    // routes are checked in full at the end of the test.
    let endpoint = |port: u16| format!("\"127.0.0.1:{port}\"");
    // A new instance of a service with one.
    let svc = format!("svc-{}", 3 * k);
    let port = fleet.add_instance(&svc);
    let new_instance = s.time_until("a new instance", within, |c| c.contains(&endpoint(port)));
    count();
    // A service with two instances: its first one goes critical and leaves the route.
    let svc = format!("svc-{}", 3 * k + 1);
    let port = fleet.make_critical(&svc);
    let critical = s.time_until("an instance going critical", within, |c| {
        !c.contains(&endpoint(port))
    });
    count();
    let svc = format!("new-{k}");
    fleet.add_service(&svc, 1);
    let port = fleet.instances[&svc][0].2;
    let new_service = s.time_until("a new service", within, |c| c.contains(&endpoint(port)));
    count();
    let svc = format!("svc-{}", 3 * k + 2);
    let route = format!("\"svc-{}.default.", 3 * k + 2);
    fleet.remove_service(&svc);
    let removed = s.time_until("a removed service", within, |c| !c.contains(&route));
    count();
    Round {
        times: [new_instance, critical, new_service, removed],
        connections,
    }
}

/// Sidegate's connections to the agent now, held to the bound; `when` names the moment.
fn assert_bound(s: &Setup, when: &str) {
    let n = connections_to(s.pid(), s.agent.http.port());
    assert!(
        n <= MAX_AGENT_CONNECTIONS,
        "{n} agent connections {when} (bound {MAX_AGENT_CONNECTIONS})"
    );
}

#[test]
fn a_gateway_follows_a_thousand_services_with_a_few_connections() {
    // What this holds sidegate to (agent connections, threads, propagation) is not about the
    // instruction set, and under qemu-user the binary is an order of magnitude slower than
    // the agent it follows, so its timing bounds would measure the emulator. The native run
    // of the same suite checks it.
    if let Some(runner) = common::runner() {
        eprintln!("not run under {runner}: the native run checks the follower at scale");
        return;
    }
    // Each watch it starts is logged at debug level, so the log tells whether any service
    // got a watch (an agent connection) of its own, however short-lived.
    let s = Setup::start_with(common::sidegate_argv(), "[log]\nlevel = \"debug\"\n");
    let (pid, port) = (s.pid(), s.agent.http.port());
    // Sampled from the first service on: the follower reconciles its watches with every
    // new names list, and the bound holds at every moment, not only at rest.
    let sampler = Sampler::start(pid, port);
    let mut fleet = Fleet::new(&s.agent);
    fleet.add_services(0..10);
    s.wait_routes(10, RAMP_WITHIN);
    assert_bound(&s, "right after the first 10 services were routed");
    let threads_at_10 = threads(pid);

    let started = Instant::now();
    fleet.add_services(10..1000);
    let registered = started.elapsed();
    assert_bound(&s, "right after 990 services were registered");
    s.wait_routes(1000, RAMP_WITHIN);
    let followed = started.elapsed();
    assert_bound(&s, "right after 1,000 services were routed");
    let round = changes(&s, &mut fleet, 0, FOLLOW_WITHIN);
    eprintln!(
        "1,000 services: registered in {registered:?}, routed after {followed:?}; changes (new instance, critical, new service, removed): {:?}, {} agent connections right after them; at most {} agent connections; threads {threads_at_10} → {}",
        round.times,
        round.connections,
        sampler.max(),
        threads(pid)
    );
    assert!(
        round.connections <= MAX_AGENT_CONNECTIONS,
        "{} agent connections right after a change",
        round.connections
    );
    assert!(sampler.max() >= 2, "the sampler sees the blocking queries");
    assert!(
        sampler.max() <= MAX_AGENT_CONNECTIONS,
        "{} connections to the agent",
        sampler.max()
    );
    assert_eq!(threads(pid), threads_at_10, "threads grew with the mesh");
    // The routes are the catalog's, instance by instance.
    let r = routes(s.admin);
    for (name, instances) in &fleet.instances {
        let mut want: Vec<String> = instances
            .iter()
            .map(|(_, _, p)| format!("127.0.0.1:{p}"))
            .collect();
        if name == "svc-1" {
            want.remove(0);
        }
        want.sort();
        let mut got = r.get(name).cloned().unwrap_or_default();
        got.sort();
        assert_eq!(got, want, "{name}");
    }
    restarted_from_its_saved_state(s, r.len());
}

/// The watches a gateway's log says it started for `what` (`Services`: a fleet, `Connect`: a
/// service of its own).
fn watching(log: &[String], what: &str) -> usize {
    log.iter()
        .filter(|l| l.contains(&format!("consul: watching {what}")))
        .count()
}

/// Restarted with the agent up, the gateway knows its names from its saved state before its
/// fleet runs; still no service gets a watch (an agent connection) of its own.
fn restarted_from_its_saved_state(mut s: Setup, routes_before: usize) {
    let log = s.gateway.stop();
    assert_eq!(watching(&log, "Services"), 1, "one fleet: {log:#?}");
    assert_eq!(
        watching(&log, "Connect"),
        0,
        "services watched one by one while 1,000 came and changed"
    );
    s.gateway.restart();
    // The restarted gateway reconciles its saved names first: sampled from its start.
    let sampler = Sampler::start(s.pid(), s.agent.http.port());
    s.gateway.serving(&[s.admin.port()]);
    eventually_within(RAMP_WITHIN, "the routes again after a restart", || {
        // 503 until the saved state is in service.
        let (code, _) = http_get(s.admin, "/config");
        if code != 200 {
            return Err(format!("/config answers {code}"));
        }
        let n = routes(s.admin).len();
        if n == routes_before {
            Ok(())
        } else {
            Err(format!("{n} routes"))
        }
    });
    assert_bound(&s, "right after a restart routed the saved names");
    assert!(
        sampler.max() <= MAX_AGENT_CONNECTIONS,
        "{} connections to the agent after a restart",
        sampler.max()
    );
    drop(sampler);
    let log = s.gateway.stop();
    assert!(
        watching(&log, "Services") >= 1,
        "no fleet started: {log:#?}"
    );
    assert_eq!(
        watching(&log, "Connect"),
        0,
        "services watched one by one after a restart"
    );
}

/// `tests/bench/consul_scale.sh` runs this with `SIDEGATE_BENCH_BIN` (the release build):
/// agent connections, threads and RSS at 0, 400 and 1,000 services, and propagation
/// percentiles over `ROUNDS` (default 15) rounds of the four changes.
#[test]
#[ignore = "a benchmark: tests/bench/consul_scale.sh"]
fn consul_scale_benchmark() {
    let argv = match std::env::var("SIDEGATE_BENCH_BIN") {
        Ok(bin) => vec![bin],
        Err(_) => common::sidegate_argv(),
    };
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15);
    let s = Setup::start(argv.clone());
    let (pid, port) = (s.pid(), s.agent.http.port());
    let settle = || std::thread::sleep(Duration::from_secs(3));
    let mut fleet = Fleet::new(&s.agent);
    let sampler = Sampler::start(pid, port);
    let mut rows = Vec::new();
    let mut row = |n: usize, fleet_time: Option<Duration>| {
        settle();
        rows.push((
            n,
            connections_to(pid, port),
            threads(pid),
            rss_kib(pid),
            fleet_time,
        ));
    };
    s.wait_routes(0, RAMP_WITHIN);
    row(0, None);
    let t = Instant::now();
    fleet.add_services(0..400);
    s.wait_routes(400, RAMP_WITHIN);
    row(400, Some(t.elapsed()));
    let t = Instant::now();
    fleet.add_services(400..1000);
    s.wait_routes(1000, RAMP_WITHIN);
    row(1000, Some(t.elapsed()));

    let ramp_max = sampler.max();
    drop(sampler);
    let sampler = Sampler::start(pid, port);
    let mut kinds: [Vec<Duration>; 4] = Default::default();
    let mut after_changes = 0;
    for k in 0..rounds {
        let round = changes(&s, &mut fleet, k, Duration::from_secs(30));
        after_changes = after_changes.max(round.connections);
        for (all, t) in kinds.iter_mut().zip(round.times) {
            all.push(t);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        ms(v[i])
    };
    println!("\nsidegate: {}", argv.join(" "));
    println!(
        "| services | agent connections | threads | RSS (KiB) | RSS over none (KiB) | registered → routed |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let base = rows[0].3;
    for (n, c, t, rss, took) in &rows {
        println!(
            "| {n} | {c} | {t} | {rss} | {} | {} |",
            rss.saturating_sub(base),
            took.map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
    }
    println!(
        "\nMost agent connections seen at once (sampled every 5 ms): {ramp_max} while the services were registered, {} during the changes ({after_changes} counted right after a change); threads after the changes: {}",
        sampler.max(),
        threads(pid)
    );
    println!("\n| change (1,000 services) | n | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---:|---:|---:|---:|");
    let names = [
        "new instance",
        "instance critical",
        "new service",
        "removed service",
    ];
    let mut all = Vec::new();
    for (name, v) in names.iter().zip(kinds.iter_mut()) {
        all.extend(v.iter().copied());
        let (p50, p99, max) = (pct(v, 0.5), pct(v, 0.99), pct(v, 1.0));
        println!("| {name} | {} | {p50:.0} | {p99:.0} | {max:.0} |", v.len());
    }
    let n = all.len();
    let (p50, p99) = (pct(&mut all, 0.5), pct(&mut all, 0.99));
    println!(
        "| all | {n} | {p50:.0} | {p99:.0} | {:.0} |",
        pct(&mut all, 1.0)
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\nload average at the end: {}", load.trim());
}
