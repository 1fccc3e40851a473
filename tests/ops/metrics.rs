//! The admin endpoint's `/metrics` as Prometheus reads it: parsed by its own Python parser.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::common::http_get as get;

/// One sample of `/metrics`, as Prometheus' own Python parser read it.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Scrapes `/metrics` and parses it with `prometheus_client` (tests/ops/prometheus_parse.py).
pub fn scrape(admin: SocketAddr) -> Vec<Sample> {
    let (code, text) = get(admin, "/metrics");
    assert_eq!(code, 200);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ops/prometheus_parse.py");
    let mut py = Command::new("/usr/bin/python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (tests/run.sh installs python3-prometheus-client)");
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap().to_owned(),
            labels: s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            value: s["value"].as_f64().unwrap(),
        })
        .collect()
}

/// The value of the sample `name` with exactly these labels; panics when absent.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> u64 {
    let found = samples.iter().find(|s| {
        s.name == name
            && s.labels.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
    });
    match found {
        Some(s) => s.value as u64,
        None => panic!("no sample {name}{labels:?} in /metrics"),
    }
}
