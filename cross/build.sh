#!/usr/bin/env bash
# Static, stripped release binaries for the boards sidegate runs on:
#
#   cross/build.sh [TRIPLE...]      default: aarch64-unknown-linux-musl,
#                                   armv7-unknown-linux-musleabihf, x86_64-unknown-linux-musl
#
# Each lands at $CARGO_TARGET_DIR/<triple>/release/sidegate (target/ by default). Installs what
# a target needs when missing (rustup targets, pinned nightly + rust-src for armv7, Debian's
# cross compilers, musl-dev:armhf, qemu-user), then proves each binary is what a device needs:
# statically linked, stripped, within the size budget, and it runs (under qemu-user for ARM)
# reporting its own triple.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/targets.sh

# Budget per binary (issue 6): 3 MiB for the boards' targets (aarch64, armv7). The x86_64 build
# (tests, benchmarks, amd64 hosts) holds more of ring's and std's x86 code and went past 3 MiB
# with the discovery chain, the Consul fleet, onboarding and fd-store restarts (3.26 MiB at
# 2026-12-06): its budget is 3.5 MiB until it is brought back under 3 (cross/README.md).
# Raising either needs a reason in the commit.
budget_bytes() {
    case "$1" in
    x86_64-*) echo $((7 * 512 * 1024)) ;;
    *) echo $((3 * 1024 * 1024)) ;;
    esac
}

targets=("$@")
((${#targets[@]})) || targets=("${CROSS_DEFAULT_TARGETS[@]}")

for target in "${targets[@]}"; do
    cross_install "$target"
done

fail=0
for target in "${targets[@]}"; do
    (
        cross_env "$target"
        start=$SECONDS
        "${CARGO[@]}" build --locked --release --target "$target" ${ZFLAGS[@]+"${ZFLAGS[@]}"}
        echo "cross: $target built in $((SECONDS - start)) s" >&2
    )
    bin="$(cross_binary "$target")"
    size=$(stat -c %s "$bin")
    BUDGET_BYTES=$(budget_bytes "$target")
    headers="$(readelf -lW "$bin")"
    problems=()
    grep -q 'Requesting program interpreter' <<<"$headers" && problems+=("dynamically linked")
    readelf -dW "$bin" | grep -q '(NEEDED)' && problems+=("needs shared libraries")
    readelf -SW "$bin" | grep -q ' \.symtab ' && problems+=("not stripped")
    ((size <= BUDGET_BYTES)) || problems+=("$size bytes is over the budget of $BUDGET_BYTES")
    runner="$(cross_runner "$target")"
    # shellcheck disable=SC2086 # the runner is a command with its flags
    version="$($runner "$bin" --version 2>&1)" || problems+=("--version failed: $version")
    grep -q "$target" <<<"$version" || problems+=("--version does not name $target: $version")
    if ((${#problems[@]})); then
        printf 'cross: %s: %s\n' "$bin" "${problems[@]}" >&2
        fail=1
    else
        printf 'cross: %s: %d bytes (%.2f MiB of %.1f MiB), static, stripped, runs: %s\n' \
            "$target" "$size" "$(awk "BEGIN{print $size / 1048576}")" "$(awk "BEGIN{print $BUDGET_BYTES / 1048576}")" "$version" >&2
    fi
done
exit $fail
