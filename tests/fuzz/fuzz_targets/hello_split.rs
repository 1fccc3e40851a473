//! `client_hello::inspect` fed a hello in segments and re-framed records (see checks.rs). Input: two
//! control bytes, a limit selector, then the client's bytes.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::hello_split(data));
