//! `Snapshot`: the whole desired mesh state as one immutable value.
//!
//! The file source builds it today; the Consul source will build the same value, so the plan
//! and the data path never know where the state came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::config_entries::ConfigEntries;
use super::sidecar::SidecarSpec;
use super::{Endpoint, Place};
use crate::tls::Identity;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    pub here: Here,
    /// This host's leaf, key and roots (the sidecar's identity).
    pub identity: Option<Arc<Identity>>,
    pub gateway: Option<GatewaySettings>,
    pub sidecar: Option<SidecarSpec>,
    pub config_entries: ConfigEntries,
    pub catalog: Catalog,
}

/// Where this host sits and which trust domain names are built in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Here {
    pub place: Place,
    pub namespace: String,
    pub trust_domain: String,
}

/// The gateway role's knobs (`[gateway]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewaySettings {
    pub listen: Vec<SocketAddr>,
    #[serde(rename = "connect_timeout_ms", serialize_with = "as_millis")]
    pub connect_timeout: Duration,
    #[serde(rename = "handshake_timeout_ms", serialize_with = "as_millis")]
    pub handshake_timeout: Duration,
    #[serde(rename = "idle_timeout_ms", serialize_with = "as_millis")]
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Connections still waiting for their ClientHello, of `max_connections`; past it the
    /// oldest waiting one is shed.
    pub max_pending_handshakes: usize,
    pub max_client_hello_bytes: usize,
    pub splice: Splice,
    /// Whether the file set `connect_timeout_ms`: with [consul], what the file leaves out
    /// comes from the gateway's registration, key by key.
    #[serde(skip)]
    pub connect_timeout_set: bool,
}

impl GatewaySettings {
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
    pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
    /// Envoy's tcp_proxy default, which Consul's gateways inherit.
    pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 3_600_000;
    /// Sized for a 512 MB board: each held connection costs two sockets.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4_096;
    /// Fits the 17 KB two-record hellos post-quantum key shares produce, with room to spare.
    pub const DEFAULT_MAX_CLIENT_HELLO_BYTES: usize = 32_768;

    /// A quarter of `max_connections` (at least 1): silent connections can take no more than
    /// that from routed ones, and a real client's hello takes a round trip, so the quarter is
    /// far more than honest clients ever have in flight at once.
    pub fn default_max_pending_handshakes(max_connections: usize) -> usize {
        (max_connections / 4).max(1)
    }
}

/// When the gateway's relay moves a direction's bulk bytes with splice(2) instead of copying
/// them through a buffer (`[gateway] splice`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Splice {
    /// Only bytes whose sender is on another host, when several event loops run. A splice
    /// keeps the sender's pages until the receiver has read them; a sender on this host then
    /// writes into ever new, cold memory, which cost a local TLS backend a third more CPU per
    /// GB than a copy did. With one loop everything is spliced (`Serving::gateway_splice`).
    #[default]
    Auto,
    Always,
    Never,
}

impl Splice {
    pub fn parse(s: &str) -> Option<Splice> {
        match s {
            "auto" => Some(Splice::Auto),
            "always" => Some(Splice::Always),
            "never" => Some(Splice::Never),
            _ => None,
        }
    }
}

pub(crate) fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

/// Where each service's mesh endpoints and each place's gateways are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Catalog {
    pub services: Vec<CatalogService>,
    pub gateways: Vec<CatalogGateways>,
    /// Set when this gateway carries Consul's WAN-federation server traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wan_federation: Option<WanFederation>,
}

/// What a gateway needs to route Consul servers' own traffic between datacenters (WAN
/// federation through mesh gateways): the names servers dial are
/// `<node>.server.<dc>.<domain>` and `server.<dc>.<domain>`, in the agents' DNS domain (not the
/// trust domain). Other datacenters' servers are reached through their gateways
/// (`Catalog::gateways`); this datacenter's are listed here.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct WanFederation {
    /// The agents' DNS `domain` (Consul's default `consul`).
    pub domain: String,
    /// This datacenter's Consul servers, at their server RPC address (port 8300 by default),
    /// which also carries their WAN gossip when it comes through gateways.
    pub servers: Vec<CatalogServer>,
}

/// One Consul server: its node name (as the servers name each other) and RPC address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CatalogServer {
    pub node: String,
    pub address: Endpoint,
}

/// Consul's default DNS domain, which server names end in unless the agents set `domain`.
pub const DEFAULT_DOMAIN: &str = "consul";

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CatalogService {
    pub name: String,
    pub namespace: String,
    pub place: Place,
    /// The instances, each at its inbound (public) listener.
    pub instances: Vec<Instance>,
}

/// One instance of a service: where it listens and what subset filters select on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Instance {
    pub address: Endpoint,
    /// The registration's service name where it is not the catalog entry's: with Consul the
    /// sidecar proxy's (`db-sidecar-proxy`), which is what Consul's subset filters see as
    /// `Service.Service`. Empty: the entry's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub health: Health,
}

impl Instance {
    /// An instance known only by its address: passing, no meta.
    pub fn at(address: Endpoint) -> Instance {
        Instance {
            address,
            service: String::new(),
            id: String::new(),
            node: String::new(),
            meta: BTreeMap::new(),
            node_meta: BTreeMap::new(),
            tags: Vec::new(),
            health: Health::Passing,
        }
    }

    /// What a subset filter sees of this instance of `service`.
    pub fn fields<'a>(&'a self, service: &'a str) -> super::chain::filter::Fields<'a> {
        super::chain::filter::Fields {
            service: if self.service.is_empty() {
                service
            } else {
                &self.service
            },
            id: &self.id,
            tags: &self.tags,
            meta: &self.meta,
            node: &self.node,
            node_meta: &self.node_meta,
        }
    }
}

/// An instance's aggregated health, as Consul's health endpoints report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Passing,
    Warning,
    Critical,
}

/// The mesh gateways of one (datacenter, partition).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CatalogGateways {
    pub place: Place,
    /// Used from the same place (mode `local`).
    pub lan: Vec<Endpoint>,
    /// Used from other places (mode `remote`, gateway to gateway).
    pub wan: Vec<Endpoint>,
}

/// Snapshots for tests.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// A gateway in dc1's default partition with these services (namespace `default`, in
    /// its place), each with `instances` instances; no sidecar, no identity.
    pub fn gateway(trust_domain: &str, names: &[String], instances: u8) -> Snapshot {
        let place = Place::new("dc1", "");
        Snapshot {
            here: Here {
                place: place.clone(),
                namespace: "default".into(),
                trust_domain: trust_domain.into(),
            },
            identity: None,
            gateway: Some(GatewaySettings {
                listen: vec![],
                connect_timeout: Duration::from_secs(1),
                handshake_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
                max_connections: 1,
                max_pending_handshakes: 1,
                max_client_hello_bytes: 4096,
                splice: Splice::Auto,
                connect_timeout_set: false,
            }),
            sidecar: None,
            config_entries: Default::default(),
            catalog: Catalog {
                services: names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| CatalogService {
                        name: name.clone(),
                        namespace: "default".into(),
                        place: place.clone(),
                        instances: (1..=instances)
                            .map(|j| {
                                let ip = [10, j, (i / 250) as u8, 1];
                                Instance::at(Endpoint::Addr((ip, 21000).into()))
                            })
                            .collect(),
                    })
                    .collect(),
                gateways: vec![],
                wan_federation: None,
            },
        }
    }
}
