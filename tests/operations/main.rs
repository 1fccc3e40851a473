//! The binary as an operator and systemd meet it: the command line, signals, sd_notify, the
//! admin endpoint and the log, and the soak (ignored in `cargo test`; `tests/soak.sh`). One
//! test binary (each links the whole crate); `tests/ops/syscalls.sh` runs the `operations::`
//! tests under strace.

#[path = "../common/mod.rs"]
mod common;
#[path = "../ops/mod.rs"]
mod ops;

mod cli;
mod operations;
mod soak;
