//! Structure-aware: valid configurations (config/*.toml, tests/fuzz/bases/*.toml) edited as
//! TOML trees by the input's choices, then validated (see checks.rs).
#![no_main]

#[allow(
    dead_code,
    reason = "each fuzz target runs some of the checks; tests/inputs/fuzz_corpus.rs runs them all"
)]
#[path = "../checks.rs"]
mod checks;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn bases() -> &'static [(String, PathBuf)] {
    static BASES: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    BASES.get_or_init(|| checks::bases(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config_edit(data, bases()));
