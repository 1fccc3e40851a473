//! `client_hello::inspect` on arbitrary client bytes under every limit (see checks.rs).
#![no_main]

#[allow(
    dead_code,
    reason = "each fuzz target runs some of the checks; tests/inputs/fuzz_corpus.rs runs them all"
)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::hello(data));
