//! The services of the identity fixtures (tests/fixtures/tls), each with its place in the mesh
//! and its leaf.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sidegate::tls::Identity;

use crate::common::TD;

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// One service of the fixtures: its Consul place and its leaf (`<service>.pem`) and key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: &'static str,
    pub dc: &'static str,
    pub partition: &'static str,
    pub key: &'static str,
}

/// `web` in dc1, default partition: the downstream of most tests.
pub const WEB: Service = Service {
    name: "web",
    dc: "dc1",
    partition: "default",
    key: "web-key-sec1.pem",
};

/// `db` in dc1, partition part2 (an RSA leaf).
pub const DB: Service = Service {
    name: "db",
    dc: "dc1",
    partition: "part2",
    key: "db-key-pkcs1.pem",
};

/// `api` in datacenter dc2, default partition.
pub const API: Service = Service {
    name: "api",
    dc: "dc2",
    partition: "default",
    key: "api-key-sec1.pem",
};

impl Service {
    pub fn identity(&self) -> Identity {
        let read = |n: &str| std::fs::read(fixture(n)).unwrap();
        Identity::from_pem(
            &read(&format!("{}.pem", self.name)),
            &read(self.key),
            &read("ca.pem"),
        )
        .unwrap()
    }

    /// Consul's SNI for this service: `<service>.default.<dc>.internal.<trust domain>`, and
    /// `internal-v1` with the partition for a partition other than `default`.
    pub fn sni(&self) -> String {
        match self.partition {
            "default" => format!("{}.default.{}.internal.{TD}", self.name, self.dc),
            p => format!("{}.default.{p}.{}.internal-v1.{TD}", self.name, self.dc),
        }
    }

    /// `[mesh]`, `[tls]` and `[sidecar] service` of this service's sidecar.
    pub fn header(&self) -> String {
        format!(
            "[mesh]\ndatacenter = \"{}\"\npartition = \"{}\"\ntrust_domain = \"{TD}\"\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
             [sidecar]\nservice = \"{}\"",
            self.dc,
            self.partition,
            fixture(&format!("{}.pem", self.name)),
            fixture(self.key),
            fixture("ca.pem"),
            self.name,
        )
    }
}
