//! The memory budget a small board holds sidegate to: each role idles in ≤ 3 MiB of resident
//! memory, running the example configurations (config/gateway.toml with its admin endpoint,
//! config/sidecar.toml with its identity and four upstreams). Measured on the binary that ships — the static, stripped release build of
//! cross/build.sh — not on a debug test build, so these tests need its path:
//!
//!   SIDEGATE_BUDGET_BINARY=target/x86_64-unknown-linux-musl/release/sidegate \
//!       cargo test --test operations -- --ignored --nocapture budgets::
//!
//! tests/run.sh runs them that way for x86_64 musl, and cross/test.sh for each ARM target under
//! qemu-user. There the process is the emulator, whose own RSS (≈16 MiB, plus its cache of
//! translated code, which grows in 2 MiB huge pages) would swamp the figure. So the guest is
//! given a fixed address range (qemu's -B base, -R size) and its resident memory is the sum of
//! the host pages inside that range: the program's own pages, as on the board. The emulator's
//! total and its baseline (the same binary blocked before reading its configuration) are
//! printed beside it for comparison.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;

use common::*;

const RSS_BUDGET_KIB: u64 = 3 * 1024;

#[test]
#[ignore = "measures the release binary named by SIDEGATE_BUDGET_BINARY (tests/run.sh, cross/test.sh)"]
fn gateway_role_idles_within_budget() {
    let config = example(
        "gateway",
        &[
            (
                "listen = [\"127.0.0.1:8443\"]",
                "listen = [\"127.0.0.1:0\"]".into(),
            ),
            (
                "listen = \"127.0.0.1:19100\"",
                "listen = \"127.0.0.1:0\"".into(),
            ),
        ],
    );
    check_idle_rss("gateway", &config, 2);
}

#[test]
#[ignore = "measures the release binary named by SIDEGATE_BUDGET_BINARY (tests/run.sh, cross/test.sh)"]
fn sidecar_role_idles_within_budget() {
    let fixtures = repo("tests/fixtures/tls");
    let socket = scratch("sidecar").join("search.sock");
    let port = || format!("local_bind_port = {}", dead_addr().port());
    let config = example(
        "sidecar",
        &[
            (
                "\"../tests/fixtures/tls/",
                format!("\"{}/", fixtures.display()),
            ),
            (
                "public_listener = \"127.0.0.1:21002\"",
                "public_listener = \"127.0.0.1:0\"".into(),
            ),
            ("local_bind_port = 9191", port()),
            ("local_bind_port = 9192", port()),
            ("local_bind_port = 9193", port()),
            (
                "/tmp/sidegate-web-search.sock",
                socket.display().to_string(),
            ),
        ],
    );
    check_idle_rss("sidecar", &config, 5);
}

/// config/NAME.toml as shipped, with its fixed ports and paths replaced (ports of the kernel's
/// choosing, so that runs cannot collide). Each replaced text must be there: an example that
/// changes fails here instead of being measured half-rewritten.
fn example(name: &str, replace: &[(&str, String)]) -> PathBuf {
    let mut text = std::fs::read_to_string(repo(&format!("config/{name}.toml"))).unwrap();
    for (from, to) in replace {
        assert!(
            text.contains(from),
            "config/{name}.toml no longer has {from:?}"
        );
        text = text.replace(from, to);
    }
    let path = scratch(name).join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the release binary on `config`, waits until it has bound `listeners` listeners and
/// served one connection (its event loop is running), then reads its resident memory.
fn check_idle_rss(role: &str, config: &Path, listeners: usize) {
    let bin =
        PathBuf::from(std::env::var("SIDEGATE_BUDGET_BINARY").expect(
            "SIDEGATE_BUDGET_BINARY must name the release binary (cross/build.sh builds it)",
        ));
    let mut child = Killed(
        budget_command(&bin)
            .args(["run", "--config"])
            .arg(config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let addr = wait_listening(&mut child.0, listeners);
    // Any connection proves the accept loop runs; garbage is refused (not TLS) and closed.
    let mut probe = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    probe.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    probe.write_all(&[0u8; 8]).unwrap();
    let _ = probe.read(&mut [0u8; 64]);
    let pid = child.0.id();
    let rss = match runner() {
        None => {
            let rss = vm_rss_kib(pid);
            eprintln!(
                "{role}: idle RSS {rss} KiB, of which mapped from the binary {} KiB ({})",
                status_kib(pid, "RssFile:"),
                bin.display()
            );
            rss
        }
        Some(runner) => {
            let guest = guest_rss_kib(pid);
            let (total, base) = (vm_rss_kib(pid), emulator_baseline_kib(&bin));
            eprintln!(
                "{role}: idle RSS under `{runner}`: guest {guest} KiB; emulator total {total} \
                 KiB, baseline {base} KiB, difference {} KiB ({})",
                total.saturating_sub(base),
                bin.display()
            );
            guest
        }
    };
    assert!(
        rss <= RSS_BUDGET_KIB,
        "{role} idles in {rss} KiB, over the budget of {RSS_BUDGET_KIB} KiB"
    );
}

/// Where the guest's memory lies in the emulator: its 4 GiB address space at 16 TiB (qemu-user's
/// -B), far from where a host places its binaries, heap and libraries. A 32-bit guest's whole
/// space is reserved there by default; a 64-bit guest is held to it with -R (which a 32-bit
/// one must not get: below its commpage, qemu-arm 7.2 aborts at exit).
const GUEST_BASE: u64 = 0x1000_0000_0000;
const GUEST_SIZE: u64 = 0x1_0000_0000;

/// `bin` under the tests' runner; for qemu-user, with the guest's memory at a known place.
fn budget_command(bin: &Path) -> std::process::Command {
    budget_command_with(bin, &[])
}

/// As `budget_command`, with `emulator_args` given to the emulator before the binary.
fn budget_command_with(bin: &Path, emulator_args: &[&str]) -> std::process::Command {
    let Some(runner) = runner() else {
        return command_for(bin);
    };
    let mut words = runner.split_whitespace();
    let program = words.next().unwrap_or_default();
    assert!(
        program.contains("qemu-"),
        "the guest's memory can be told apart under qemu-user only, not `{runner}`"
    );
    let mut command = std::process::Command::new(program);
    command
        .args(words)
        .args(["-B", &format!("{GUEST_BASE:#x}")]);
    if cfg!(target_pointer_width = "64") {
        command.args(["-R", &format!("{GUEST_SIZE:#x}")]);
    }
    command.args(emulator_args).arg(bin);
    command
}

/// The resident pages of the emulator's mappings that lie inside the guest's range.
fn guest_rss_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_guest = false;
    let mut total = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _)) = first.split_once('-') {
            if let Ok(start) = u64::from_str_radix(start, 16) {
                in_guest = (GUEST_BASE..GUEST_BASE + GUEST_SIZE).contains(&start);
                continue;
            }
        }
        if let (true, Some(kib)) = (in_guest, line.strip_prefix("Rss:")) {
            total += kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap();
        }
    }
    assert!(
        total > 0,
        "no guest mappings at {GUEST_BASE:#x} in /proc/{pid}/smaps"
    );
    total
}

/// Reads the child's log until `listeners` lines say "listening on"; returns the address of the
/// gateway or inbound listener among them.
fn wait_listening(child: &mut std::process::Child, listeners: usize) -> SocketAddr {
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("  | {line}");
            if line.contains(" listening on ") {
                let _ = tx.send(line);
            }
        }
    });
    let lines: Vec<String> = (0..listeners)
        .map(|_| rx.recv_timeout(IO_TIMEOUT).expect("sidegate did not start"))
        .collect();
    lines
        .iter()
        .filter(|l| l.contains("gateway listening on") || l.contains("inbound listening on"))
        .find_map(|l| {
            let rest = l.split(" listening on ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .expect("no gateway or inbound listener in the log")
}

/// The emulator's own share: the same binary under the same emulator options, held by qemu's gdb
/// stub (`-g PORT`) before the guest's first instruction. (A configuration that is a FIFO held it
/// once; sidegate now refuses a FIFO at once and exits, so that process could be gone before it was
/// measured.) The stub's listening socket is the sign that the binary is loaded and waiting.
fn emulator_baseline_kib(bin: &Path) -> u64 {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let child = Killed(
        budget_command_with(bin, &["-g", &port.to_string()])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while !listening_on(port) {
        assert!(
            std::time::Instant::now() < deadline,
            "the baseline emulator did not open its gdb stub on port {port}"
        );
        std::thread::yield_now();
    }
    vm_rss_kib(child.0.id())
}

/// Whether a TCP socket is listening on `port` (qemu's stub binds every address), read from
/// /proc/net/tcp: connecting to the gdb stub would start the guest.
fn listening_on(port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let mut fields = l.split_whitespace().skip(1);
            fields.next().is_some_and(|local| local.ends_with(&wanted))
                && fields.nth(1) == Some("0A")
        })
}

fn vm_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of /proc/PID/status.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sidegate-budget-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process killed when the test ends, pass or fail.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
