//! The real `sidegate run` binary following an agent (`[consul]`), as a child process that
//! can be killed and started again on the same configuration and state directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sidegate::consul::follow::STATE_FILE;

use super::process::Watched;
use super::Shown;
use super::{listening, Agent};
use crate::common::eventually_within;

/// Listeners of a sidegate started from Consul are bound within this: the agent answers in
/// milliseconds, the rest is process start-up.
pub const SERVING_WITHIN: Duration = Duration::from_secs(20);

pub struct Sidegate {
    name: String,
    config: PathBuf,
    /// The program and its first words; the binary the tests built unless told otherwise.
    argv: Vec<String>,
    process: Option<Watched>,
}

impl Sidegate {
    /// Runs `sidegate run` on `toml`, written to `<dir>/<name>.toml`.
    pub fn run(name: &str, dir: &Path, toml: &str) -> Sidegate {
        Sidegate::run_with(crate::common::sidegate_argv(), name, dir, toml)
    }

    /// `run` with another binary (a benchmark's release build).
    pub fn run_with(argv: Vec<String>, name: &str, dir: &Path, toml: &str) -> Sidegate {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).unwrap();
        let mut s = Sidegate {
            name: name.to_owned(),
            config,
            argv,
            process: None,
        };
        s.start();
        s
    }

    fn start(&mut self) {
        let mut args = self.argv.clone();
        let program = args.remove(0);
        args.extend([
            "run".to_owned(),
            "--config".to_owned(),
            self.config.display().to_string(),
        ]);
        self.process = Some(Watched::spawn(
            &format!("sidegate {}", self.name),
            &program,
            &args,
        ));
    }

    /// Waits until every port listens; panics with the process's output when it does not,
    /// at once when the process has ended.
    pub fn serving(&mut self, ports: &[u16]) {
        let what = format!("sidegate {} listening on {ports:?}", self.name);
        let process = self.process.as_mut().unwrap();
        eventually_within(SERVING_WITHIN, &what, || {
            let silent: Vec<u16> = ports.iter().copied().filter(|&p| !listening(p)).collect();
            if silent.is_empty() {
                return Ok(());
            }
            let tail = process.tail();
            assert!(!process.has_exited(), "{what}: it exited:\n{tail}");
            Err(Shown(format!("nothing listens on {silent:?}:\n{tail}")))
        });
    }

    /// The plan in service, from `/config` on the admin endpoint at `admin`. The endpoint
    /// answers 503 until the first plan is recorded, which comes a moment after that plan's
    /// listeners are bound (under emulation, after `serving` has seen them). Panics with the
    /// process's output when no plan comes, at once when the process has ended.
    pub fn plan(&mut self, admin: std::net::SocketAddr) -> serde_json::Value {
        let what = format!("a plan in service on sidegate {}'s /config", self.name);
        let process = self.process.as_mut().unwrap();
        let config = eventually_within(SERVING_WITHIN, &what, || {
            match crate::common::http_get(admin, "/config") {
                (200, body) => Ok(body),
                (code, body) => {
                    let tail = process.tail();
                    assert!(!process.has_exited(), "{what}: it exited:\n{tail}");
                    Err(Shown(format!("{code} {body}\n{tail}")))
                }
            }
        });
        serde_json::from_str(&config).unwrap()
    }

    /// A crash (SIGKILL): no drain, no goodbye to the agent.
    pub fn kill(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.kill();
        }
    }

    /// Kills it and runs it again on the same configuration (and so the same state dir).
    pub fn restart(&mut self) {
        self.kill();
        self.process = None;
        self.start();
    }

    /// Waits for a line of its output containing `needle` (from its start); panics with the
    /// output when none comes within `within`.
    pub fn wait_for_line(&mut self, needle: &str, within: Duration) -> String {
        self.process.as_mut().unwrap().wait_for_line(needle, within)
    }

    /// Stops it gracefully (SIGTERM) and returns everything it wrote that `wait_for_line`
    /// has not read.
    pub fn stop(&mut self) -> Vec<String> {
        let process = self.process.as_mut().unwrap();
        process.stop();
        process.unread_output()
    }

    /// The process id of `sidegate run` itself (not its watchdog).
    pub fn pid(&self) -> i32 {
        self.process.as_ref().unwrap().pid
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| !p.has_exited())
    }

    pub fn output_tail(&self) -> String {
        self.process.as_ref().map(Watched::tail).unwrap_or_default()
    }
}

/// When the last-known-good state in `state_dir` says it was saved (seconds since 1970).
pub fn saved_unix(state_dir: &Path) -> u64 {
    saved_state(state_dir)["saved_unix"].as_u64().unwrap()
}

/// Makes the last-known-good state in `state_dir` claim it was saved at `unix`, keeping
/// its checksum right (as an older save would have it).
pub fn set_saved_unix(state_dir: &Path, unix: u64) {
    let mut state = saved_state(state_dir);
    state["saved_unix"] = unix.into();
    let bytes = serde_json::to_vec(&state).unwrap();
    sidegate::consul::state_dir::write(state_dir, STATE_FILE, &bytes).unwrap();
}

fn saved_state(state_dir: &Path) -> serde_json::Value {
    let bytes = sidegate::consul::state_dir::read(state_dir, STATE_FILE)
        .unwrap_or_else(|e| panic!("{}: {e}", state_dir.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// `[consul]` for a sidecar following its registration `sidecar_service_id` on `agent`,
/// keeping its last-known-good state in `state_dir`.
pub fn sidecar_toml(agent: &Agent, sidecar_service_id: &str, state_dir: &Path) -> String {
    format!(
        "[consul]\naddress = \"{}\"\nsidecar_service_id = \"{sidecar_service_id}\"\nstate_dir = \"{}\"\n",
        agent.address(),
        state_dir.display()
    )
}

/// `[consul]` and `[gateway]` for a mesh gateway following its registration
/// `gateway_service_id` on `agent` (the listener is the registration's address and port).
pub fn gateway_toml(agent: &Agent, gateway_service_id: &str, state_dir: &Path) -> String {
    format!(
        "[consul]\naddress = \"{}\"\ngateway_service_id = \"{gateway_service_id}\"\nstate_dir = \"{}\"\n[gateway]\n",
        agent.address(),
        state_dir.display()
    )
}
