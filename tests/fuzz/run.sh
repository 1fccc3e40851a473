#!/usr/bin/env bash
# Fuzzes sidegate's hostile-input parsers with cargo-fuzz (libFuzzer), one target after the
# other under `nice`, SECONDS each (default 600), then minimizes each corpus in place.
#
#   tests/fuzz/run.sh [SECONDS]
#
# Targets (tests/fuzz/fuzz_targets, checks in tests/fuzz/checks.rs):
#   hello        sni::inspect on arbitrary client bytes under every limit
#   hello_split  the same bytes in TCP-like segments and re-framed TLS records
#   config_text  config::parse_in on arbitrary text
#   config_edit  valid configurations edited as TOML trees, then validated
# Seeds: tests/fixtures/hellos/*.bin, config/*.toml, tests/fuzz/bases/*.toml. A crash's input
# is copied to tests/fuzz/regressions/TARGET/ (commit it with the fix); `cargo test` replays
# tests/fuzz/corpus and tests/fuzz/regressions (tests/inputs/fuzz_corpus.rs). Exit 1 if any crashed.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"
targets=(${FUZZ_TARGETS:-hello hello_split config_text config_edit})

# What cargo-fuzz needs: a nightly toolchain and the cargo-fuzz command.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
fuzz() { nice cargo +nightly fuzz "$1" --fuzz-dir . "${@:2}"; }

seeds="$(mktemp -d)"
trap 'rm -rf "$seeds"' EXIT
mkdir -p "$seeds"/{hello,hello_split,config_text,config_edit}
for f in ../fixtures/hellos/*.bin; do
    cp "$f" "$seeds/hello/"
    # hello_split's input: segment seed, largest segment, limit selector (7: 32768), the bytes.
    n=0
    for ctl in '\001\001\000\007' '\007\040\000\007' '\377\377\000\010'; do
        { printf "$ctl"; cat "$f"; } >"$seeds/hello_split/$(basename "$f" .bin)-$((n += 1))"
    done
done
cp ../../config/*.toml bases/*.toml "$seeds/config_text/"
for i in 0 1 2 3 4 5 6 7; do printf "\\00$i\\000\\00$i" >"$seeds/config_edit/seed$i"; done

# Optimized with debug assertions (overflow checks) and AddressSanitizer: cargo-fuzz's default.
fuzz build
crashed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "regressions/$t" "artifacts/$t"
    opts=(-max_total_time="$secs" -timeout=10 -print_final_stats=1)
    case "$t" in
        hello | hello_split) opts+=(-max_len=20000) ;;
        config_text) opts+=(-max_len=8192 -dict=config.dict) ;;
        config_edit) opts+=(-max_len=512) ;;
    esac
    echo "== $t: ${secs}s"
    if ! fuzz run "$t" "corpus/$t" "$seeds/$t" -- "${opts[@]}" 2>&1 | tee "artifacts/$t.log" | grep -E '^(#[0-9]+ +DONE|Done|stat::|==[0-9]+==|SUMMARY|artifact_prefix|Test unit written)'; then
        :
    fi
    if ls "artifacts/$t"/{crash,oom,timeout,leak}-* >/dev/null 2>&1; then
        cp "artifacts/$t"/{crash,oom,timeout,leak}-* "regressions/$t/" 2>/dev/null || true
        crashed+=("$t")
    fi
    echo "== $t: minimizing corpus ($(ls "corpus/$t" | wc -l) files)"
    fuzz cmin "$t" "corpus/$t" -- -max_len=20000 >"artifacts/$t.cmin.log" 2>&1
    echo "== $t: $(ls "corpus/$t" | wc -l) files, $(du -sh "corpus/$t" | cut -f1)"
done
if ((${#crashed[@]})); then
    echo "crashed: ${crashed[*]} (inputs in tests/fuzz/regressions/)"
    exit 1
fi
