//! The sidecar role's desired state: which service it speaks for, its upstreams, its inbound
//! listener and who may call it. Filled from `[sidecar]` today, from the agent's registration
//! of the sidecar later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::authority::SharedAuthority;
use super::mode::Mode;
use super::{Endpoint, Place};
use crate::names::SpiffeId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SidecarSpec {
    pub service: String,
    pub public_listener: Option<SocketAddr>,
    pub local_service_address: Endpoint,
    #[serde(skip)]
    pub local_connect_timeout: Duration,
    /// Proxy-level mode (`[sidecar] mesh_gateway`).
    pub mesh_gateway: Option<Mode>,
    pub intentions: Intentions,
    pub upstreams: Vec<UpstreamSpec>,
    /// Set with the Consul source: callers are authorized by the agent, not `intentions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<SharedAuthority>,
    /// Inbound connections held at once; more are refused at accept.
    pub max_connections: usize,
}

impl SidecarSpec {
    /// Consul's default for `local_connect_timeout_ms`.
    pub const DEFAULT_LOCAL_CONNECT_TIMEOUT_MS: u64 = 5_000;
    pub const DEFAULT_LOCAL_SERVICE_ADDRESS: &'static str = "127.0.0.1:8080";
    /// Inbound: a busy service's callers, two descriptors each, under a 10k fd limit.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpstreamSpec {
    pub destination_name: String,
    pub destination_namespace: String,
    /// The target's (datacenter, partition).
    pub place: Place,
    pub bind: Bind,
    #[serde(skip)]
    pub connect_timeout: Duration,
    /// Upstream-level mode, the highest precedence.
    pub mesh_gateway: Option<Mode>,
    /// Local app connections held at once on this upstream; more are refused at accept.
    pub max_connections: usize,
}

impl UpstreamSpec {
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
    /// One local app rarely needs more; a runaway one cannot take the whole fd table.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
}

/// Where the local app connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Bind {
    Tcp(SocketAddr),
    Unix { path: PathBuf, mode: Option<u32> },
}

impl std::fmt::Display for Bind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bind::Tcp(a) => write!(f, "{a}"),
            Bind::Unix { path, .. } => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
}

/// File-source authorization of inbound callers (`[sidecar.intentions]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Intentions {
    pub default: Action,
    pub rules: Vec<IntentionRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IntentionRule {
    pub source: String,
    pub source_namespace: String,
    pub source_partition: String,
    pub action: Action,
}

impl Intentions {
    /// Whether `caller` may connect, and why. A rule naming the caller's service beats a `*`
    /// rule (Consul's precedence: exact before wildcard); no rule → `default`. Callers from
    /// another trust domain are not of this mesh and are denied.
    pub fn authorize(&self, caller: &SpiffeId, trust_domain: &str) -> (Action, String) {
        let SpiffeId::Service {
            trust_domain: td,
            partition,
            namespace,
            service,
            ..
        } = caller
        else {
            return (Action::Deny, format!("{caller} is not a service identity"));
        };
        if !td.eq_ignore_ascii_case(trust_domain) {
            return (
                Action::Deny,
                format!("{caller} is from trust domain {td}, not {trust_domain}"),
            );
        }
        let same_place = |r: &&IntentionRule| {
            r.source_namespace == *namespace && r.source_partition == *partition
        };
        let exact = self
            .rules
            .iter()
            .filter(same_place)
            .find(|r| r.source == *service);
        let wildcard = || {
            self.rules
                .iter()
                .filter(same_place)
                .find(|r| r.source == "*")
        };
        match exact.or_else(wildcard) {
            Some(rule) => (
                rule.action,
                format!("intention {} => {:?}", rule.source, rule.action),
            ),
            None => (self.default, format!("default {:?}", self.default)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "td.consul";

    fn rule(source: &str, action: Action) -> IntentionRule {
        IntentionRule {
            source: source.into(),
            source_namespace: "default".into(),
            source_partition: "default".into(),
            action,
        }
    }

    #[test]
    fn exact_beats_wildcard_beats_default() {
        let svc = |name: &str| SpiffeId::service(TD, "default", "default", "dc1", name);
        let intentions = Intentions {
            default: Action::Deny,
            rules: vec![rule("*", Action::Allow), rule("api", Action::Deny)],
        };
        let cases = [
            (svc("web"), Action::Allow),
            (svc("api"), Action::Deny),
            (
                SpiffeId::service(TD, "part2", "default", "dc1", "web"),
                Action::Deny,
            ),
            (
                SpiffeId::service("other.consul", "default", "default", "dc1", "web"),
                Action::Deny,
            ),
        ];
        for (caller, want) in cases {
            assert_eq!(intentions.authorize(&caller, TD).0, want, "{caller}");
        }
        let open = Intentions {
            default: Action::Allow,
            rules: vec![],
        };
        assert_eq!(open.authorize(&svc("anyone"), TD).0, Action::Allow);
        assert_eq!(
            open.authorize(&SpiffeId::signing_for_cluster("td"), TD).0,
            Action::Deny
        );
    }
}
