//! `[runtime] threads`: connections spread over the event loops, each served on its loop's
//! thread, with the connection limit holding for the process as a whole.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{Read, Write};

use common::*;

/// A dc1 gateway for db on `threads` event loops, with extra `[gateway]` keys.
fn gateway_on(db: &Backend, threads: usize, extra: &str) -> String {
    let toml = gateway_toml(
        "dc1",
        "default",
        LOOPBACK,
        &[("db", vec![db.addr])],
        "",
        extra,
    );
    format!("{toml}\n[runtime]\nthreads = {threads}\n")
}

/// (opened, active) of event loop `index` in `/metrics`' per-loop counters.
fn on_loop(gw: &sidegate::proxy::Running, index: usize) -> Option<(u64, u64)> {
    let want = index.to_string();
    gw.metrics
        .loops
        .entries()
        .into_iter()
        .find(|(labels, _)| labels.first() == Some(&want))
        .map(|(_, s)| (s.opened.get(), s.active.get()))
}

/// A routed connection through `gw`, proven relayed by one echo.
fn held(addr: std::net::SocketAddr, pki: &Pki) -> Client {
    let mut c = tls_connect(addr, &service_sni("db", "dc1"), &pki.client_config()).unwrap();
    c.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    c.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
    c
}

#[test]
fn concurrent_connections_are_spread_over_both_loops() {
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let gw = start(&gateway_on(&db, 2, ""));
    assert_eq!(gw.threads(), 2);
    let addr = gw.gateway_addrs[0];
    let conns: Vec<Client> = (0..4).map(|_| held(addr, &pki)).collect();
    // Each goes to the loop holding the fewest: two each. `opened` is counted by the loop
    // itself as it takes the connection up, so loop 1 counting two means its thread has them.
    assert_eq!(on_loop(&gw, 0), Some((2, 2)));
    assert_eq!(on_loop(&gw, 1), Some((2, 2)));
    assert_eq!(gw.metrics.gateway.active.get(), 4);
    for c in conns {
        assert_eq!(echo_and_finish(c, b"bye").unwrap(), db.name);
    }
    eventually("every loop's connections closed", || {
        on_loop(&gw, 0) == Some((2, 0)) && on_loop(&gw, 1) == Some((2, 0))
    });
    assert_eq!(on_loop(&gw, 2), None, "only two loops");
}

#[test]
fn one_thread_serves_everything_on_the_first_loop() {
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let gw = start(&gateway_on(&db, 1, ""));
    assert_eq!(gw.threads(), 1);
    let conns: Vec<Client> = (0..3).map(|_| held(gw.gateway_addrs[0], &pki)).collect();
    assert_eq!(on_loop(&gw, 0), Some((3, 3)));
    assert_eq!(on_loop(&gw, 1), None);
    drop(conns);
}

/// The limit is checked where connections are accepted, before they go to a loop: the
/// connections held on both loops count together.
#[test]
fn max_connections_holds_for_the_process_across_loops() {
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let gw = start(&gateway_on(&db, 2, "max_connections = 3"));
    let addr = gw.gateway_addrs[0];
    let conns: Vec<Client> = (0..3).map(|_| held(addr, &pki)).collect();
    assert_eq!(on_loop(&gw, 0).map(|s| s.1), Some(2));
    assert_eq!(on_loop(&gw, 1).map(|s| s.1), Some(1));
    let mut extra = raw(addr);
    assert_closed(&mut extra);
    let m = &gw.metrics.gateway;
    eventually("the refusal counted", || m.refused_limit.get() == 1);
    assert_eq!(m.active.get(), 3);
    drop(conns);
    eventually("the held connections closed", || m.active.get() == 0);
    let again = held(addr, &pki);
    assert_eq!(echo_and_finish(again, b"room again").unwrap(), db.name);
    assert_eq!(m.refused_limit.get(), 1);
}

/// `sidegate run` with `threads = 2`: two loop threads, and each of two connections relayed
/// by its own one (the thread relaying a connection's bytes is the one whose CPU time grows
/// most while they move), as `/metrics` says too.
#[test]
fn a_process_serves_on_as_many_loop_threads_as_configured() {
    let pki = Pki::new();
    let db = Backend::start(&pki, &service_sni("db", "dc1"));
    let dir = std::env::temp_dir().join(format!("sidegate-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    let toml = gateway_on(&db, 2, "");
    std::fs::write(
        &config,
        format!("{toml}[admin]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let mut sg = run_binary(&config, 1);
    let admin = sg.serving().expect("sidegate did not serve");
    let pid = sg.child.id();
    let addr = sg.gateway_addrs[0];

    let mut first = held(addr, &pki);
    let mut second = held(addr, &pki);
    assert_eq!(
        metric(admin, "sidegate_loop_connections_active{loop=\"0\"}"),
        1
    );
    assert_eq!(
        metric(admin, "sidegate_loop_connections_active{loop=\"1\"}"),
        1
    );
    assert_eq!(
        metric(admin, "sidegate_loop_connections_opened_total{loop=\"1\"}"),
        1
    );

    // Under an emulator the guest's threads are the emulator's: names and switches are not
    // the binary's own to read.
    if runner().is_none() {
        let loops = loop_threads(pid);
        let names: Vec<&str> = loops.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["sidegate-loop", "sidegate-loop1"], "{loops:?}");
        let (zero, one) = (&loops[0].1, &loops[1].1);
        for (conn, busy, idle, which) in [(&mut second, one, zero, 1), (&mut first, zero, one, 0)] {
            let before = (cpu_ns(busy), cpu_ns(idle));
            pump(conn, 2 << 20);
            let (busy, idle) = (cpu_ns(busy) - before.0, cpu_ns(idle) - before.1);
            assert!(
                busy > 5 * idle,
                "loop {which} relayed its connection in {busy} ns of CPU, the other loop spent {idle} ns"
            );
        }
    }
    assert_eq!(echo_and_finish(second, b"bye").unwrap(), db.name);
    assert_eq!(echo_and_finish(first, b"bye").unwrap(), db.name);
    sg.child.kill().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The process's event-loop threads: (name, its /proc task directory), by name.
fn loop_threads(pid: u32) -> Vec<(String, std::path::PathBuf)> {
    let mut found: Vec<(String, std::path::PathBuf)> =
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter_map(|t| {
                let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
                let name = name.trim().to_owned();
                name.starts_with("sidegate-loop").then(|| (name, t.path()))
            })
            .collect();
    found.sort();
    found
}

/// The CPU time a thread has run, in nanoseconds (the first field of its `schedstat`).
fn cpu_ns(task: &std::path::Path) -> u64 {
    let stat = std::fs::read_to_string(task.join("schedstat")).unwrap();
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

/// Sends `total` bytes through the echo backend in 64 KiB round trips, checking each echo.
fn pump(conn: &mut Client, total: usize) {
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut echoed = vec![0u8; chunk.len()];
    for _ in 0..total / chunk.len() {
        conn.write_all(&chunk).unwrap();
        conn.read_exact(&mut echoed).unwrap();
        assert!(echoed == chunk, "the echo differs");
    }
}
