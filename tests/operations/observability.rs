//! What monitoring reads, checked against the running binary: the standard `process_*`
//! metrics and the configured limits as Prometheus' own parser reads them, and the alert
//! rules (config/alerts.yml) and Grafana dashboard (config/grafana-dashboard.json) naming
//! only metrics a live sidegate exports, in its file-configured roles (gateway, sidecar) and
//! following Consul. `promtool check rules` is run on the rules by tests/ops/alerts.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::ops;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use common::sidecars::WEB;
use common::*;
use ops::*;
use rustix::process::Signal;

/// gateway + sidecar (inbound listener, one upstream), from a file, with an admin endpoint.
/// `api` is a TLS service behind the gateway at `api`.
fn file_roles(
    scratch: &Scratch,
    app: SocketAddr,
    upstream_port: u16,
    api: SocketAddr,
) -> std::path::PathBuf {
    let text = format!(
        r#"{header}
public_listener = "127.0.0.1:0"
local_service_address = "{app}"
max_connections = 30
[[sidecar.upstreams]]
destination_name = "db"
local_bind_port = {upstream_port}
max_connections = 7
[gateway]
listen = ["127.0.0.1:0"]
max_connections = 40
max_pending_handshakes = 9
[[catalog.services]]
name = "db"
instances = ["{app}"]
[[catalog.services]]
name = "api"
instances = ["{api}"]
[admin]
listen = "127.0.0.1:0"
"#,
        header = WEB.header(),
    );
    let path = scratch.path("roles.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Following a Consul agent that is not there: the admin endpoint serves the Consul
/// family before any state arrives.
fn consul_role(scratch: &Scratch) -> std::path::PathBuf {
    let text = format!(
        "[consul]\naddress = \"http://{}\"\ngateway_service_id = \"mesh-gateway\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        dead_addr()
    );
    let path = scratch.path("consul.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Open descriptors of `pid`, counted from outside.
fn fds_of(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

/// A number from a `Name:   value ...` line of /proc/PID/status or limits.
fn proc_field(pid: u32, file: &str, name: &str, column: usize) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    let line = text.lines().find(|l| l.starts_with(name)).unwrap();
    line[name.len()..]
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn process_metrics_and_limits_are_what_the_kernel_and_the_file_say() {
    let scratch = Scratch::new("process-metrics");
    let app = common::apps::app("web");
    let upstream_port = free_port();
    let pki = Pki::new();
    let api = Backend::start(&pki, &service_sni("api", "dc1"));
    let before = unix_now();
    let config = file_roles(&scratch, app, upstream_port, api.addr);
    let mut sg = Sidegate::spawn(&config, &[]);
    let gateway = sg.wait_addr("gateway listening on ");
    let admin = sg.wait_addr("admin endpoint listening on ");
    let pid = sg.pid();

    let samples = scrape(admin);
    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    let bind = format!("127.0.0.1:{upstream_port}");
    assert_eq!(v("sidegate_connections_limit", &[("role", "gateway")]), 40);
    assert_eq!(v("sidegate_connections_limit", &[("role", "inbound")]), 30);
    assert_eq!(v("sidegate_gateway_pending_handshakes_limit", &[]), 9);
    assert_eq!(
        v(
            "sidegate_upstream_connections_limit",
            &[("upstream", "db"), ("bind", &bind)]
        ),
        7
    );
    let not_after = WEB.identity().not_after.duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(
        v("sidegate_leaf_expiry_timestamp_seconds", &[]),
        not_after.as_secs()
    );

    let start = v("process_start_time_seconds", &[]);
    assert!(
        before.saturating_sub(1) <= start && start <= unix_now(),
        "started at {start}, spawned at {before}"
    );
    let rss = v("process_resident_memory_bytes", &[]);
    let vsize = v("process_virtual_memory_bytes", &[]);
    assert!(rss > 0 && vsize >= rss, "rss {rss}, vsize {vsize}");
    if runner().is_none() {
        // Under qemu-user, /proc/PID is the emulator's: these are checked natively only.
        assert_eq!(
            v("process_max_fds", &[]),
            proc_field(pid, "limits", "Max open files", 0),
            "the soft limit, as sidegate raised it"
        );
        let status_rss = proc_field(pid, "status", "VmRSS:", 0) * 1024;
        assert!(
            rss.abs_diff(status_rss) < status_rss / 4,
            "{rss} bytes resident, /proc says {status_rss}"
        );
        // While scraped, the admin connection is open too; then it is closed.
        let idle = fds_of(pid);
        let scraped = v("process_open_fds", &[]);
        assert!(
            (idle..=idle + 1).contains(&scraped),
            "{scraped} open while scraped, {idle} counted after"
        );
        // Connections held through the gateway are counted: each holds at least its own
        // socket and the one to the backend.
        let mut held = Vec::new();
        for _ in 0..3 {
            let sni = service_sni("api", "dc1");
            let mut c = tls_connect(gateway, &sni, &pki.client_config())
                .map(Live::tls)
                .unwrap();
            c.round(b"ping").unwrap();
            held.push(c);
        }
        let busy = value(&scrape(admin), "process_open_fds", &[]);
        assert!(
            busy >= scraped + 6,
            "3 relayed connections: {scraped} open before, {busy} with them"
        );
        drop(held);
    }
    sg.signal(Signal::TERM);
    assert_eq!(sg.wait_exit(IO_TIMEOUT).code(), Some(0));
}

/// Every `sidegate_…` and `process_…` name in `text`. A name ending in `_` (a family
/// prefix written as `sidegate_route_*`) is kept as is.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for prefix in ["sidegate_", "process_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix).map(|i| i + from) {
            let end = text[at..]
                .bytes()
                .position(|b| !word(b))
                .map_or(text.len(), |n| at + n);
            if at == 0 || !word(bytes[at - 1]) {
                names.insert(text[at..end].to_owned());
            }
            from = end;
        }
    }
    names
}

#[test]
fn metric_names_are_found_whole() {
    let names = metric_names(
        "expr: rate(sidegate_bytes_total{role=\"x\"}[5m]) / process_max_fds\n\
         not_sidegate_this, sidegate_route_* and SidegateAlert",
    );
    let want = ["process_max_fds", "sidegate_bytes_total", "sidegate_route_"];
    assert_eq!(names.into_iter().collect::<Vec<_>>(), want);
}

/// The sample names of a live gateway + sidecar and of a Consul-following sidegate.
fn live_names() -> BTreeSet<String> {
    let scratch = Scratch::new("alert-names");
    let app = common::apps::app("web");
    let pki = Pki::new();
    let api = Backend::start(&pki, &service_sni("api", "dc1"));
    let mut names = BTreeSet::new();
    // Each role's log line once it serves what the test needs.
    for (config, follows_consul, ready) in [
        (
            file_roles(&scratch, app, free_port(), api.addr),
            false,
            "inbound listening on ",
        ),
        (consul_role(&scratch), true, "consul: following agent"),
    ] {
        let mut sg = Sidegate::spawn(&config, &[]);
        let admin = sg.wait_addr("admin endpoint listening on ");
        // Either order: the line may have come before the admin endpoint's.
        if !sg.log().iter().any(|line| line.contains(ready)) {
            sg.wait_log(ready);
        }
        // Every family is written whether or not traffic has passed; the Consul family once
        // the follower is handed to the admin endpoint, just after it starts.
        let samples = scrape_when_idle(admin, |s| {
            !follows_consul || s.iter().any(|s| s.name == "sidegate_consul_stale")
        });
        names.extend(samples.into_iter().map(|s| s.name));
        sg.signal(Signal::TERM);
        assert_eq!(sg.wait_exit(IO_TIMEOUT).code(), Some(0));
    }
    names
}

fn assert_all_exported(what: &str, used: &BTreeSet<String>, live: &BTreeSet<String>) {
    let missing: Vec<_> = used
        .iter()
        .filter(|name| match name.strip_suffix('_') {
            Some(_) => !live.iter().any(|l| l.starts_with(name.as_str())),
            None => !live.contains(*name),
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{what} names metrics no live sidegate exports: {missing:?}\nexported: {live:?}"
    );
}

#[test]
fn alert_rules_and_dashboard_name_only_metrics_sidegate_exports() {
    let read = |name: &str| {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/").to_owned() + name)
            .unwrap()
    };
    let rules = read("alerts.yml");
    let dashboard_text = read("grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text)
        .unwrap_or_else(|e| panic!("config/grafana-dashboard.json is not JSON: {e}"));

    // The dashboard's queries, each panel with at least one.
    let panels = dashboard["panels"].as_array().unwrap();
    let mut exprs = String::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let rule_names = metric_names(&rules);
    let dashboard_names = metric_names(&dashboard_text);
    assert!(
        metric_names(&exprs).len() >= 25 && rule_names.len() >= 12,
        "fewer names than written: rules {rule_names:?}, dashboard {exprs}"
    );
    // The alerts the README explains are all there.
    for alert in [
        "SidegateConsulStateStale",
        "SidegateReloadFailed",
        "SidegateIdentityFailures",
        "SidegateHandshakeFailures",
        "SidegateNoEndpoint",
        "SidegateConnectionsRefused",
        "SidegateLeafExpiring",
    ] {
        assert!(rules.contains(&format!("- alert: {alert}\n")), "{alert}");
    }
    // The deprecated name is for old dashboards only.
    assert!(!rules.contains("sidegate_consul_last_success_seconds"));
    assert!(!dashboard_text.contains("sidegate_consul_last_success_seconds"));

    let live = live_names();
    for name in [
        "process_open_fds",
        "sidegate_leaf_expiry_timestamp_seconds",
        "sidegate_consul_last_success_timestamp_seconds",
    ] {
        assert!(live.contains(name), "{name} not scraped: {live:?}");
    }
    assert_all_exported("config/alerts.yml", &rule_names, &live);
    assert_all_exported("config/grafana-dashboard.json", &dashboard_names, &live);
}
