//! `config::parse_in` on arbitrary text; file names resolve in tests/fixtures/tls.
#![no_main]

#[allow(
    dead_code,
    reason = "each fuzz target runs some of the checks; tests/inputs/fuzz_corpus.rs runs them all"
)]
#[path = "../checks.rs"]
mod checks;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn tls_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tls"))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config_text(data, tls_dir()));
