//! The sidecar role's desired state: which service it speaks for, its upstreams, its inbound
//! listener and who may call it. Filled from `[sidecar]` today, from the agent's registration
//! of the sidecar later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::intentions::{Intentions, SharedAuthority};
use super::mode::Mode;
use super::{Endpoint, Place};

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
    /// `connect_timeout_ms` when set: it wins over the resolver's `connect_timeout` (the
    /// chain's, default 5 s), as Consul's upstream override does.
    #[serde(skip)]
    pub connect_timeout: Option<Duration>,
    /// Upstream-level mode, the highest precedence.
    pub mesh_gateway: Option<Mode>,
    /// Local app connections held at once on this upstream; more are refused at accept.
    pub max_connections: usize,
    /// A chain compiled elsewhere (by Consul's own compiler), taken as it is; `None`: the
    /// plan compiles it from the snapshot's resolvers.
    #[serde(skip)]
    pub chain: Option<super::chain::Chain>,
}

impl UpstreamSpec {
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
