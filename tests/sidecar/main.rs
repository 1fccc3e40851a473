//! The sidecar's listeners end to end, and the whole mesh on loopback with every hop its own
//! `sidegate run` process. One test binary (each links the whole crate).

#[path = "../common/mod.rs"]
mod common;

mod sidecar;
mod sidecar_mesh;
