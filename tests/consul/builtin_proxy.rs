//! `consul connect proxy`: Consul's own built-in proxy, an independent implementation of the
//! same mesh protocol (mTLS with Consul leaves, authorization through the agent), to check
//! sidegate against from both sides.

use std::time::Duration;

use super::process::Watched;
use super::{consul_binary, wait_listening, Agent};

const LISTENING_WITHIN: Duration = Duration::from_secs(20);

pub struct BuiltinProxy {
    process: Watched,
}

impl BuiltinProxy {
    /// The sidecar of a registered service (`-sidecar-for`): its public listener is the
    /// registration's address and port, `public_port`; each caller is authorized by the agent.
    pub fn sidecar_for(agent: &Agent, service: &str, public_port: u16) -> BuiltinProxy {
        let proxy = Self::spawn(agent, &["-sidecar-for".into(), service.into()]);
        proxy.listening(public_port)
    }

    /// A proxy speaking as `service` with one upstream listener at 127.0.0.1:`port` for
    /// `upstream` (`-upstream`), which it resolves through the agent's healthy instances.
    pub fn upstream(agent: &Agent, service: &str, upstream: &str, port: u16) -> BuiltinProxy {
        let proxy = Self::spawn(
            agent,
            &[
                "-service".into(),
                service.into(),
                "-upstream".into(),
                format!("{upstream}:{port}"),
            ],
        );
        proxy.listening(port)
    }

    fn spawn(agent: &Agent, args: &[String]) -> BuiltinProxy {
        let mut all = vec![
            "connect".into(),
            "proxy".into(),
            format!("-http-addr={}", agent.http),
            "-log-level=debug".into(),
        ];
        all.extend_from_slice(args);
        BuiltinProxy {
            process: Watched::spawn("consul connect proxy", consul_binary(), &all),
        }
    }

    fn listening(mut self, port: u16) -> BuiltinProxy {
        assert!(
            wait_listening(port, LISTENING_WITHIN) && !self.process.has_exited(),
            "consul connect proxy is not listening on {port}:\n{}",
            self.process.tail()
        );
        self
    }

    /// Waits for a line of its log, e.g. its authorization decision.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        self.process.wait_for_line(needle, Duration::from_secs(10))
    }
}
