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
    /// Builds a place, turning an empty partition into `default` as Consul does. Both names
    /// are kept in lower case: Consul lowercases a datacenter's name and compares partitions
    /// without regard to case, so `DC1` and `dc1` are one place (a gateway that took them
    /// for two would route to itself).
    pub fn new(datacenter: &str, partition: &str) -> Self {
        Place {
            datacenter: datacenter.to_ascii_lowercase(),
            partition: if partition.is_empty() {
                DEFAULT_PARTITION
            } else {
                partition
            }
            .to_ascii_lowercase(),
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
