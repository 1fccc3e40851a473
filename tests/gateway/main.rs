//! The gateway, the listeners over a process's life, real TLS clients through `sidegate run`,
//! and faults and abuse against the gateway and the sidecar's listeners. One test binary for
//! them all: each binary links the whole crate, which is slow on two cores and under emulation
//! (cross/test.sh).

#[path = "../common/mod.rs"]
mod common;
#[path = "../ops/mod.rs"]
mod ops;

mod faults;
mod gateway;
mod listeners;
mod real_clients;
