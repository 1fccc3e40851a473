#!/usr/bin/env bash
# The one test command (README, .ci/run): installs whatever the tests need on a fresh Debian
# machine, then runs formatting, lints and every test, natively and under emulation for ARM.
set -euo pipefail
cd "$(dirname "$0")/.."

# step CMD...: runs CMD and says how long it took. The whole run must stay within CI's 45
# minutes on 2 cores, on a machine where everything below is still to be installed: the log
# shows which step to look at.
step() {
    local start=$SECONDS
    "$@"
    echo "tests/run.sh: $((SECONDS - start)) s: $*"
}

# Debian packages the tests call: real TLS clients for the end-to-end tests.
need=()
for tool in openssl curl; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
# prlimit (util-linux) starts the fault tests' binary with few file descriptors.
command -v prlimit >/dev/null || need+=(util-linux)
# systemd-analyze checks the unit (tests/ops/unit.sh) and strace the calls its filter must
# allow (tests/ops/syscalls.sh); Prometheus' own Python parser reads /metrics in
# tests/operations/operations.rs.
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v strace >/dev/null || need+=(strace)   # tests/ops/syscalls.sh
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || need+=(python3-prometheus-client)
command -v promtool >/dev/null || need+=(prometheus)   # tests/ops/alerts.sh: the alert rules
command -v lintian >/dev/null || need+=(lintian)       # tests/deb.sh: the packages
# libfuzzer-sys compiles libFuzzer's C++ in its build script, even for the fuzz check below.
command -v c++ >/dev/null || need+=(g++)
if ((${#need[@]})); then
    echo "tests/run.sh: installing ${need[*]}"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # Without recommends: prometheus alone would pull in a web UI's worth of packages.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Real Consul agents for the Consul tests: Debian's consul 1.8.7 (from bullseye) when missing.
step bash tests/consul/install.sh

rustup component add rustfmt clippy >/dev/null 2>&1 || true

# The docs: README within 20 KB, every relative link resolving, no citation of documents
# outside the repository, no conflict markers (under a second).
bash tests/docs.sh
cargo fmt --all -- --check
step cargo clippy --all-targets --locked -- -D warnings
# The fuzz targets (tests/fuzz, a workspace of its own) are otherwise built only by
# tests/fuzz/run.sh: a check keeps them and their lock file in step with the crate, without
# cargo-fuzz or nightly. In the main target dir it reuses the crate's dependencies (~25 s;
# ~75 s cold on 2 cores).
step cargo check --locked --manifest-path tests/fuzz/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}"
step cargo test --locked
# The data path again on two event loops ([runtime] threads = 2): gateway, sidecars, faults,
# listeners, the mesh of processes (~45 s).
step env SIDEGATE_TEST_THREADS=2 cargo test --locked --test proxy
bash tests/ops/unit.sh "${CARGO_TARGET_DIR:-target}/debug/sidegate"
step bash tests/ops/syscalls.sh
bash tests/ops/alerts.sh

# The boards' builds (cross/): static release binaries for aarch64, armv7 and x86_64 musl, each
# checked static, stripped and within the size budget; the memory budget on the x86_64 one; the
# whole suite under qemu-user for aarch64 and armv7; the .deb packages, the amd64 one installed
# into a scratch root.
step cross/build.sh
# The unit's system-call filter must also allow every call of the static musl build the
# packages ship (musl's calls differ from glibc's).
step env CARGO_BUILD_TARGET=x86_64-unknown-linux-musl bash tests/ops/syscalls.sh
SIDEGATE_BUDGET_BINARY="$(source cross/targets.sh && cross_binary x86_64-unknown-linux-musl)" \
    cargo test --locked --test operations -- --ignored --nocapture budgets::
step cross/test.sh aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf
step cross/deb.sh
step tests/deb.sh
echo "tests/run.sh: passed in $SECONDS s"
