//! sidegate against real Consul agents (Consul 1.8.7 on loopback; `tests/consul/install.sh`):
//! the agent's Connect CA, Consul's built-in proxy, the `[consul]` source as a library and in
//! the real binary, HTTPS and ACLs. One test binary (each links the whole crate); the harness
//! is `tests/consul/`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../consul/mod.rs"]
mod consul;
#[path = "../ops/mod.rs"]
mod ops;

mod builtin_proxy;
mod follow;
mod https;
mod mesh;
mod source;
