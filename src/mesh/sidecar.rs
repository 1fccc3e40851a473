//! The sidecar role's desired state: which service it speaks for, its upstreams, its inbound
//! listener and who may call it. Filled from `[sidecar]` today, from the agent's registration
//! of the sidecar later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

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
}

impl SidecarSpec {
    /// Consul's default for `local_connect_timeout_ms`.
    pub const DEFAULT_LOCAL_CONNECT_TIMEOUT_MS: u64 = 5_000;
    pub const DEFAULT_LOCAL_SERVICE_ADDRESS: &'static str = "127.0.0.1:8080";
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
}

impl UpstreamSpec {
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
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
