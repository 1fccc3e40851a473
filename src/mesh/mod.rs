//! The mesh domain: places, endpoints, modes, the desired state (`Snapshot`) and what
//! the data path serves (`Plan`).

pub mod chain;
pub mod config_entries;
pub mod endpoint;
pub mod endpoints;
pub mod explain;
pub mod intentions;
pub mod mode;
pub mod place;
pub mod plan;
pub mod routes;
pub mod sidecar;
pub mod snapshot;

pub use endpoint::Endpoint;
pub use place::Place;
pub use plan::{plan, Plan};
