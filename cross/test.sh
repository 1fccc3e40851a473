#!/usr/bin/env bash
# The whole test suite for other architectures, run under qemu-user:
#
#   cross/test.sh [TRIPLE...]     default: aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf
#
# Unit and integration tests run as ARM programs on emulated board CPUs (cortex-a53,
# cortex-a7); the end-to-end tests start the ARM `sidegate` binary through the same runner
# (tests/common: sidegate_command) and call the host's openssl and curl as they do natively.
# Built with the `emulated` profile (Cargo.toml): optimized, debug assertions and overflow
# checks kept. Then the memory budget tests hold the target's release binary (cross/build.sh),
# run under the emulator, to the budget (tests/operations/budgets.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/targets.sh

targets=("$@")
((${#targets[@]})) || targets=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf)

cross/build.sh "${targets[@]}"
for target in "${targets[@]}"; do
    (
        cross_env "$target"
        test=("${CARGO[@]}" test --locked --profile emulated --target "$target"
            ${ZFLAGS[@]+"${ZFLAGS[@]}"})
        # The library, the binary and the test suites; not the examples (the benchmark's load
        # client and tools, built and linted natively): three optimized builds fewer per target.
        suites=(--lib --bins --tests)
        start=$SECONDS
        "${test[@]}" "${suites[@]}" --no-run
        built=$SECONDS
        "${test[@]}" "${suites[@]}"
        SIDEGATE_BUDGET_BINARY="$(cross_binary "$target")" \
            "${test[@]}" --test operations -- --ignored --nocapture budgets::
        echo "cross: $target tests built in $((built - start)) s, ran in $((SECONDS - built)) s" >&2
    )
done
