//! `Snapshot`: the whole desired mesh state as one immutable value.
//!
//! The file source builds it today; the Consul source will build the same value, so the plan
//! and the data path never know where the state came from.

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
    pub max_client_hello_bytes: usize,
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
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

/// Where each service's mesh endpoints and each place's gateways are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Catalog {
    pub services: Vec<CatalogService>,
    pub gateways: Vec<CatalogGateways>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CatalogService {
    pub name: String,
    pub namespace: String,
    pub place: Place,
    /// The instances' inbound (public) listeners.
    pub instances: Vec<Endpoint>,
}

/// The mesh gateways of one (datacenter, partition).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
                max_client_hello_bytes: 4096,
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
                            .map(|j| Endpoint::Addr(([10, j, (i / 250) as u8, 1], 21000).into()))
                            .collect(),
                    })
                    .collect(),
                gateways: vec![],
            },
        }
    }
}
