//! sidegate against real Consul agents (Consul 1.8.7 on loopback; `tests/consul/install.sh`):
//! the agent's Connect CA, Consul's built-in proxy, the `[consul]` source as a library and in
//! the real binary, HTTPS and ACLs. One test binary (each links the whole crate); the harness
//! is `tests/consul/`.

/// The parts of the shared harness (tests/common) these tests use.
#[path = "../common"]
mod common {
    mod base;
    mod inprocess;
    mod runner;
    mod scrape;
    mod tls;
    mod wait;
    pub use base::*;
    pub use inprocess::*;
    pub use runner::*;
    pub use scrape::*;
    pub use tls::*;
    pub use wait::*;

    pub mod apps {
        mod echo;
        pub use echo::*;
    }

    pub mod sidecars {
        mod check;
        pub use check::*;
    }
}

#[path = "../consul/mod.rs"]
mod consul;

/// The parts of the operations harness (tests/ops) these tests use: sidegate as systemd
/// starts it.
#[path = "../ops"]
mod ops {
    mod process;
    pub use process::*;
}

mod builtin_proxy;
mod chain;
mod environment;
mod follow;
mod gateway_consul;
mod gateway_enterprise;
mod https;
mod mesh;
mod onboarding;
mod scale;
mod source;
mod wanfed;
