//! The data path end to end: the gateway, the sidecar's listeners, the whole mesh on loopback
//! with every hop its own `sidegate run` process, the listeners over a process's life, real TLS
//! clients, and faults and abuse. One test binary for them all: each binary links the whole
//! crate, which is slow on two cores and under emulation (cross/test.sh).

/// The shared harness (tests/common): each test binary names the parts it uses, so that what
/// none of its tests use is not compiled into it (and unused code still warns).
#[path = "../common"]
mod common {
    mod backends;
    mod base;
    mod child;
    mod closes;
    mod inprocess;
    mod proxy;
    mod runner;
    mod scrape;
    mod serving;
    mod tls;
    mod wait;
    pub use backends::*;
    pub use base::*;
    pub use child::*;
    pub use closes::*;
    pub use inprocess::*;
    pub use proxy::*;
    pub use runner::*;
    pub use scrape::*;
    pub use serving::*;
    pub use tls::*;
    pub use wait::*;

    pub mod apps {
        mod echo;
        mod halfclose;
        pub use echo::*;
        pub use halfclose::*;
    }

    pub mod sidecars {
        mod check;
        mod running;
        mod services;
        pub use check::*;
        pub use running::*;
        pub use services::*;
    }
}

/// The operations harness (tests/ops): the admin endpoint's metrics as Prometheus reads them.
#[path = "../ops"]
mod ops {
    mod metrics;
    pub use metrics::*;
}

mod chain;
mod faults;
mod gateway;
mod listeners;
mod real_clients;
mod sidecar;
mod sidecar_mesh;
mod threads;
