//! Replays the fuzzers' committed corpus and every crash reproducer (tests/fuzz) through the
//! same checks the fuzz targets run, so what fuzzing found stays fixed in every `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every input of one target: its minimized corpus, then its reproducers.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = repo().join("tests/fuzz").join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).unwrap();
            out.push((p, bytes));
        }
    }
    assert!(
        out.len() >= 10,
        "{target}: only {} committed inputs; run tests/fuzz/run.sh",
        out.len()
    );
    out
}

/// Runs `check` on each input, naming the file that fails.
fn replay(target: &str, check: impl Fn(&[u8])) {
    for (path, bytes) in inputs(target) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&bytes)));
        assert!(outcome.is_ok(), "{} fails its checks", path.display());
    }
}

#[test]
fn hello_corpus_and_reproducers_hold() {
    replay("hello", checks::hello);
}

#[test]
fn hello_split_corpus_and_reproducers_hold() {
    replay("hello_split", checks::hello_split);
}

#[test]
fn config_text_corpus_and_reproducers_hold() {
    let tls = repo().join("tests/fixtures/tls");
    replay("config_text", |data| checks::config_text(data, &tls));
}

#[test]
fn config_edit_corpus_and_reproducers_hold() {
    let bases = checks::bases(repo());
    replay("config_edit", |data| checks::config_edit(data, &bases));
}

/// The structure-aware fuzzer starts from valid configurations, and its TOML writer keeps
/// them intact: otherwise it would only ever test "not valid TOML".
#[test]
fn config_edit_bases_are_valid_and_survive_the_writer() {
    let bases = checks::bases(repo());
    assert!(
        bases.len() >= 2,
        "config/*.toml and tests/fuzz/bases/*.toml"
    );
    for (text, dir) in &bases {
        let doc: toml::Table = text.parse().unwrap();
        let written = checks::emit(&doc);
        assert_eq!(written.parse::<toml::Table>().unwrap(), doc);
        let config = sidegate::config::parse_in(&written, dir, &|_| None);
        assert!(config.is_ok(), "{written}\n{config:?}");
    }
}

/// The captured hellos, the fuzzers' seeds, pass the checks whole and in every prefix.
#[test]
fn captured_hellos_pass_the_checks() {
    let dir = repo().join("tests/fixtures/hellos");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "bin") {
            let bytes = std::fs::read(&path).unwrap();
            checks::hello(&bytes);
            for seed in [0u8, 1, 7, 255] {
                checks::hello_split(&[&[seed, seed, 7][..], &bytes].concat());
            }
            seen += 1;
        }
    }
    assert!(seen >= 5);
}
