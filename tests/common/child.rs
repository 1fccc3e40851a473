//! `sidegate run` as a child process of the test, with its log as it comes, and its memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use super::{sidegate_argv, IO_TIMEOUT};

/// A `sidegate run` child process, killed when dropped.
pub struct Child {
    pub child: std::process::Child,
    #[allow(
        dead_code,
        reason = "the proxy tests read it; the soak (operations) does not"
    )]
    pub gateway_addrs: Vec<SocketAddr>,
    /// Every line it has logged so far.
    #[allow(
        dead_code,
        reason = "the proxy tests read it; the soak (operations) does not"
    )]
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the real binary on a config file and waits until it says every gateway listener is
/// bound (it logs `gateway listening on ADDR` once per listener).
pub fn run_binary(config: &std::path::Path, listeners: usize) -> Child {
    run_binary_with(&[], &[], config, listeners)
}

/// `run_binary` started through `wrapper` (e.g. `prlimit --nofile=64:64 --`, which execs it in
/// the same process) with extra environment variables.
pub fn run_binary_with(
    wrapper: &[&str],
    env: &[(&str, &str)],
    config: &std::path::Path,
    listeners: usize,
) -> Child {
    use std::io::BufRead;
    // The tests' number of event loops goes into the file the child reads (and stays there:
    // a test that rewrites it for a reload keeps the process's loops, with a warning).
    if let Some(threaded) = std::fs::read_to_string(config)
        .ok()
        .and_then(|t| with_test_threads(&t))
    {
        std::fs::write(config, threaded).unwrap();
    }
    // The wrapper first, then the runner when emulated (tests/common: sidegate_argv).
    let argv: Vec<String> = wrapper
        .iter()
        .map(|w| (*w).to_owned())
        .chain(sidegate_argv())
        .collect();
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]);
    let mut child = command
        .args(["run", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = line.split("gateway listening on ").nth(1) {
                let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
            }
            kept.lock().unwrap().push(line);
        }
    });
    let gateway_addrs = (0..listeners)
        .map(|_| rx.recv_timeout(IO_TIMEOUT).expect("sidegate did not start"))
        .collect();
    Child {
        child,
        gateway_addrs,
        log,
    }
}

/// Configuration text for a `sidegate run` child: as written, plus `[runtime] threads` from
/// `SIDEGATE_TEST_THREADS` when that is set and the text has no `[runtime]` of its own.
pub fn with_test_threads(toml: &str) -> Option<String> {
    std::env::var_os("SIDEGATE_TEST_THREADS")?;
    if toml.contains("[runtime]") {
        return None;
    }
    Some(format!(
        "{toml}\n[runtime]\nthreads = {}\n",
        super::test_threads()
    ))
}

/// Resident memory of process `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
