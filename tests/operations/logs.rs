//! The log as a shipper reads it: `[log] format = "json"` gives one JSON object per line, and
//! the libraries' records (rustls here) arrive through the bridge, never at trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use common::apps::app;
use common::sidecars::fixture;
use common::*;
use rustix::process::Signal;

/// A TLS record of application data where a ClientHello must come first: rustls refuses it
/// and logs a warning ("Received a ApplicationData message while expecting [Handshake]").
const DATA_BEFORE_HELLO: &[u8] = &[0x17, 0x03, 0x03, 0x00, 0x01, 0x00];

#[test]
fn json_lines_carry_rustls_warnings_and_never_trace() {
    let scratch = Scratch::new("json-log");
    let public = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = scratch.path("sidegate.toml");
    std::fs::write(
        &config,
        format!(
            "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
             [sidecar]\nservice = \"web\"\npublic_listener = \"{public}\"\n\
             local_service_address = \"{}\"\n\
             [log]\nformat = \"json\"\nlevel = \"debug\"\n",
            fixture("web.pem"),
            fixture("web-key-sec1.pem"),
            fixture("ca.pem"),
            app("web"),
        ),
    )
    .unwrap();
    let log_path = scratch.path("stderr.log");
    let mut child = sidegate_command()
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("SIDEGATE_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut conn = eventually("the public listener", || TcpStream::connect(public));
    conn.write_all(DATA_BEFORE_HELLO).unwrap();
    let read = || std::fs::read_to_string(&log_path).unwrap();
    eventually("rustls' warning in the log", || {
        read().contains("while expecting")
    });
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), Signal::TERM).unwrap();
    eventually("the exit after SIGTERM", || {
        child.try_wait().unwrap().is_some()
    });

    let log = read();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {log}")))
        .collect();
    for r in &records {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(r[field].is_string(), "{field} missing: {r}");
        }
        assert_ne!(r["level"], "trace", "{r}");
    }
    let warning = records
        .iter()
        .find(|r| r["message"].as_str().unwrap().contains("while expecting"))
        .unwrap();
    assert_eq!(warning["level"], "warn", "{warning}");
    assert!(
        warning["target"].as_str().unwrap().starts_with("rustls"),
        "{warning}"
    );
    // sidegate's own lines name their module.
    assert!(
        records
            .iter()
            .any(|r| r["target"].as_str().unwrap().starts_with("sidegate")),
        "{log}"
    );
}
