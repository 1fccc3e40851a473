//! `client_hello::inspect` fed a hello in segments and re-framed records (see checks.rs). Input: two
//! control bytes, a limit selector, then the client's bytes.
#![no_main]

#[allow(
    dead_code,
    reason = "each fuzz target runs some of the checks; tests/inputs/fuzz_corpus.rs runs them all"
)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::hello_split(data));
