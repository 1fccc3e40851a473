//! `client_hello::inspect` on arbitrary client bytes under every limit (see checks.rs).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::hello(data));
