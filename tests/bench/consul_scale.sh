#!/usr/bin/env bash
# A mesh gateway following 1,000 Consul connect services (1–3 instances each) on a real
# Consul 1.8.7 agent in -dev mode: the connections sidegate keeps to the agent, its threads
# and RSS at 0, 400 and 1,000 services, and how fast a new instance, an instance going
# critical, a new service and a removed service reach the gateway's routes in service (p50,
# p99 over ROUNDS rounds of the four changes; 15 rounds = 60 changes).
#
#   tests/bench/consul_scale.sh                 # from the repository root; ~3 min + the build
#   ROUNDS=25 tests/bench/consul_scale.sh
#   SIDEGATE_BINARY=path tests/bench/consul_scale.sh   # measure a prebuilt binary
#
# sidegate is the static x86_64-unknown-linux-musl release build (as cross/build.sh builds it,
# toolchain installed by cross/targets.sh); SIDEGATE_TARGET=host measures the host's glibc
# release build instead. The harness (tests/consul_agent/scale.rs, `consul_scale_benchmark`)
# registers the services through the agent's catalog API over one keep-alive connection and
# reads the routes from the gateway's admin endpoint (`/config`, polled every 10 ms). The
# table goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v consul >/dev/null || bash tests/consul/install.sh

target="${SIDEGATE_TARGET:-x86_64-unknown-linux-musl}"
if [ -n "${SIDEGATE_BINARY:-}" ]; then
    bin="$SIDEGATE_BINARY"
elif [ "$target" = host ]; then
    cargo build --locked --release
    bin="${CARGO_TARGET_DIR:-target}/release/sidegate"
else
    source cross/targets.sh
    cross_install "$target"
    (
        cross_env "$target"
        "${CARGO[@]}" build --locked --release --target "$target" ${ZFLAGS[@]+"${ZFLAGS[@]}"}
    )
    bin="$(cross_binary "$target")"
fi
bin="$(realpath "$bin")"
echo "consul_scale: measuring $bin ($(consul version | head -1); load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2

SIDEGATE_BENCH_BIN="$bin" ROUNDS="${ROUNDS:-15}" \
    cargo test --locked --test consul_agent scale::consul_scale_benchmark -- \
    --ignored --exact --nocapture --test-threads=1
