//! The binary as an operator and systemd meet it: the command line, signals, sd_notify, the
//! admin endpoint and the log, and the soak (ignored in `cargo test`; `tests/soak.sh`). One
//! test binary (each links the whole crate); `tests/ops/syscalls.sh` runs the `operations::`
//! tests under strace.

/// The parts of the shared harness (tests/common) these tests use.
#[path = "../common"]
mod common {
    mod backends;
    mod base;
    mod child;
    mod closes;
    mod fifo;
    mod runner;
    mod serving;
    mod tls;
    mod wait;
    pub use backends::*;
    pub use base::*;
    pub use child::*;
    pub use closes::*;
    pub use fifo::*;
    pub use runner::*;
    pub use tls::*;
    pub use wait::*;

    pub mod apps {
        mod echo;
        pub use echo::*;
    }

    pub mod sidecars {
        mod check;
        mod services;
        pub use check::*;
        pub use services::*;
    }
}

/// The operations harness (tests/ops): sidegate as systemd starts it, its metrics as
/// Prometheus reads them, connections kept open through each role.
#[path = "../ops"]
mod ops {
    mod live;
    mod metrics;
    mod process;
    pub use live::*;
    pub use metrics::*;
    pub use process::*;
}

mod budgets;
mod chain;
mod cli;
mod logs;
mod observability;
mod operations;
mod restarts;
mod soak;
