//! TLS: this host's mesh identity and, with the sidecar, the rustls configurations built on it.

pub mod configs;
pub mod identity;
pub mod record;
mod san;
pub mod session;
pub mod verify;

pub use identity::{Identity, IdentityError};

/// The test fixtures' identities (tests/fixtures/tls, made by its gen.sh), for unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    pub const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    /// The identity of a fixture leaf and key, under the fixtures' CA.
    pub fn identity(cert: &str, key: &str) -> super::Identity {
        let read = |n: &str| {
            std::fs::read(format!(
                "{}/tests/fixtures/tls/{n}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        super::Identity::from_pem(&read(cert), &read(key), &read("ca.pem")).unwrap()
    }
}
