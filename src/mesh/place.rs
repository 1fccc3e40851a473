//! Where things sit in a Consul mesh: a (datacenter, admin partition) pair.
//!
//! Consul keys gateways, SNI suffixes and the "is a gateway needed at all?" decision on this
//! pair (`GatewayKey` in Consul's proxycfg), so it is one value here too.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The partition every Community Edition object lives in, and the value an empty one means.
pub const DEFAULT_PARTITION: &str = "default";
/// The namespace an empty one means.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Place {
    pub datacenter: String,
    pub partition: String,
}

impl Place {
    /// Builds a place, turning an empty partition into `default` as Consul does.
    pub fn new(datacenter: &str, partition: &str) -> Self {
        Place {
            datacenter: datacenter.to_owned(),
            partition: if partition.is_empty() {
                DEFAULT_PARTITION
            } else {
                partition
            }
            .to_owned(),
        }
    }

    pub fn is_default_partition(&self) -> bool {
        self.partition == DEFAULT_PARTITION
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "datacenter {} partition {}",
            self.datacenter, self.partition
        )
    }
}
