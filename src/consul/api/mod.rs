//! The agent's answers, one file per endpoint: the JSON as Consul emits it (Go field names in
//! CamelCase, `null` for empty lists) parsed into typed values, and mapped into the mesh's own
//! types. Fields are read only where sidegate uses them; unknown ones are ignored, because
//! every Consul release adds some.
//!
//! The same types are written to the last-known-good state, so they serialize back to the
//! shape they were read from.

pub mod authorize;
pub mod ca;
pub mod catalog;
pub mod config_entry;
pub mod discovery_chain;
pub mod federation;
pub mod health;
pub mod resolver;
pub mod service;

use serde::{Deserialize, Deserializer};

use crate::mesh::mode::{Mode, UnknownMode};

/// Go encodes an empty slice or map as `null`; read it as empty.
pub fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `MeshGateway: {"Mode": ""}`, present on many objects; empty means "inherit".
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct MeshGatewayConfig {
    #[serde(rename = "Mode", deserialize_with = "nullable")]
    pub mode: String,
}

impl MeshGatewayConfig {
    /// The mode, `Ok(None)` when unset; an unknown word is an error naming it (shown by
    /// the caller after "mesh gateway mode", with the object it is on).
    pub fn parsed(&self) -> Result<Option<Mode>, UnknownMode> {
        Mode::level(&self.mode)
    }
}

/// Reads an example body from `tests/data/consul/` (copies of the reference examples).
#[cfg(test)]
pub fn example(name: &str) -> String {
    let path = format!("{}/tests/data/consul/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
