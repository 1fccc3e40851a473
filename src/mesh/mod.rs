//! The mesh domain: places, endpoints, Consul names, the desired state (`Snapshot`) and what
//! the data path serves (`Plan`).

pub mod endpoint;
pub mod names;
pub mod place;

pub use endpoint::Endpoint;
pub use place::Place;
