#!/usr/bin/env bash
# The one test command (README, .ci/run): installs whatever the tests need on a fresh Debian
# machine, then runs formatting, lints and every test, natively and under emulation for ARM.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests call: real TLS clients for the end-to-end tests.
need=()
for tool in openssl curl; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
if ((${#need[@]})); then
    echo "tests/run.sh: installing ${need[*]}"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked

# The boards' builds (cross/): static release binaries for aarch64, armv7 and x86_64 musl, each
# checked static, stripped and within the size budget; the memory budget on the x86_64 one; the
# whole suite under qemu-user for aarch64 and armv7; the .deb packages, the amd64 one installed
# into a scratch root.
cross/build.sh
SIDEGATE_BUDGET_BINARY="$(source cross/targets.sh && cross_binary x86_64-unknown-linux-musl)" \
    cargo test --locked --test budgets -- --ignored --nocapture
cross/test.sh aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf
cross/deb.sh
tests/deb.sh
