#!/usr/bin/env bash
# Memory under a large mesh state: a gateway serving SERVICES services of INSTANCES instances
# each, from a file, measured the way an operator would see it (VmRSS of the process):
#
#   1. at start, once /ready answers;
#   2. after RELOADS SIGHUPs of the same file, each waited for ("new plan in service");
#   3. after SCRAPES scrapes each of /metrics and /config.
#
#   tests/bench/memory.sh                          # the shipped static x86_64 build
#   SIDEGATE_TARGET=host tests/bench/memory.sh     # the host toolchain's default target
#   SIDEGATE_BINARY=/path/to/sidegate tests/bench/memory.sh   # e.g. another commit's build
#
# Environment: VERBOSE (set: RSS after every reload), SERVICES (10000), INSTANCES (3), RELOADS (20), SCRAPES (20), BASE_PORT (19700),
# SIDEGATE_TARGET (x86_64-unknown-linux-musl; a target of cross/targets.sh, which installs
# its toolchain; "host" for the host's), SIDEGATE_BINARY (measure this binary, build nothing).
# Prints one line per measurement point and a verdict against the budget: at most
# BUDGET_KIB (24 MiB) anywhere, and the end within GROWTH_PCT (5 %) of the start.
#
# Results (x86_64 musl, cross/targets.sh's build, 2-core VM shared with other work), KiB of
# VmRSS at start → after 20 reloads → after 20 scrapes of each:
#   before the compact route table and streamed bodies (59091db): 16,684 → 20,100 → 20,232 (+21.2 %)
#   with them (this script's commit):                             13,492 → 14,028 → 14,048 (+4.1 %)
# The bodies were 5.3 MB (/metrics) and 3.6 MB (/config) in both; RSS after the first reload
# stays flat to the end (VERBOSE=1 shows each step).
set -euo pipefail
cd "$(dirname "$0")/../.."

SERVICES=${SERVICES:-10000}
INSTANCES=${INSTANCES:-3}
RELOADS=${RELOADS:-20}
SCRAPES=${SCRAPES:-20}
BASE_PORT=${BASE_PORT:-19700}
BUDGET_KIB=${BUDGET_KIB:-$((24 * 1024))}
GROWTH_PCT=${GROWTH_PCT:-5}
SIDEGATE_TARGET=${SIDEGATE_TARGET:-x86_64-unknown-linux-musl}

log() { echo "memory: $*" >&2; }

build() {
    if [[ -n ${SIDEGATE_BINARY:-} ]]; then
        echo "$SIDEGATE_BINARY"
    elif [[ $SIDEGATE_TARGET == host ]]; then
        cargo build --release --locked --quiet --bin sidegate >&2
        echo "${CARGO_TARGET_DIR:-target}/release/sidegate"
    else
        # shellcheck source=../../cross/targets.sh
        source cross/targets.sh
        cross_install "$SIDEGATE_TARGET" >&2
        (
            cross_env "$SIDEGATE_TARGET"
            "${CARGO[@]}" build --release --locked --quiet --bin sidegate \
                --target "$SIDEGATE_TARGET" ${ZFLAGS[@]+"${ZFLAGS[@]}"} >&2
        )
        cross_binary "$SIDEGATE_TARGET"
    fi
}

# The configuration: every service in the gateway's own place (one exact route each), with
# distinct instance addresses, as a large catalog has.
write_config() {
    local file=$1 i j instances
    {
        printf '[mesh]\ndatacenter = "dc1"\ntrust_domain = "11111111-2222-3333-4444-555555555555.consul"\n\n'
        printf '[gateway]\nlisten = ["127.0.0.1:%d"]\n\n' "$BASE_PORT"
        printf '[admin]\nlisten = "127.0.0.1:%d"\n\n' $((BASE_PORT + 1))
        for ((i = 0; i < SERVICES; i++)); do
            instances=""
            for ((j = 0; j < INSTANCES; j++)); do
                instances+="${instances:+, }\"10.$((j + 1)).$((i / 250)).$((i % 250 + 1)):21000\""
            done
            printf '[[catalog.services]]\nname = "service-%05d"\ninstances = [%s]\n\n' "$i" "$instances"
        done
    } >"$file"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Waits (up to 60 s) until the log holds `count` lines matching `pattern`.
wait_log() {
    local pattern=$1 count=$2 file=$3 i
    for ((i = 0; i < 600; i++)); do
        (($(grep -c -- "$pattern" "$file" || true) >= count)) && return 0
        sleep 0.1
    done
    log "timed out waiting for $count × '$pattern' in $file"
    return 1
}

work="" pid=""
cleanup() {
    [[ -z $pid ]] || kill "$pid" 2>/dev/null || true
    [[ -z $work ]] || rm -rf "$work"
}
trap cleanup EXIT

main() {
    local bin admin start after_reloads after_scrapes worst i bytes_m bytes_c
    bin=$(build)
    work=$(mktemp -d "${TMPDIR:-/tmp}/sidegate-memory.XXXXXX")
    write_config "$work/gateway.toml"
    log "$SERVICES services × $INSTANCES instances: $(stat -c %s "$work/gateway.toml") bytes of config; binary $bin"
    admin="http://127.0.0.1:$((BASE_PORT + 1))"

    "$bin" run --config "$work/gateway.toml" 2>"$work/log" &
    pid=$!
    for ((i = 0; i < 600; i++)); do
        curl -fsS "$admin/ready" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { cat "$work/log" >&2; return 1; }
        sleep 0.1
    done
    sleep 1
    start=$(rss_kib "$pid")
    worst=$start
    printf 'start           %6d KiB\n' "$start"

    for ((i = 1; i <= RELOADS; i++)); do
        kill -HUP "$pid"
        wait_log "new plan in service" "$i" "$work/log"
        worst=$(($(rss_kib "$pid") > worst ? $(rss_kib "$pid") : worst))
        [[ -z ${VERBOSE:-} ]] || printf '  reload %2d     %6d KiB\n' "$i" "$(rss_kib "$pid")"
    done
    sleep 1
    after_reloads=$(rss_kib "$pid")
    printf 'after %2d reloads %6d KiB\n' "$RELOADS" "$after_reloads"

    for ((i = 1; i <= SCRAPES; i++)); do
        bytes_m=$(curl -fsS "$admin/metrics" | wc -c)
        bytes_c=$(curl -fsS "$admin/config" | wc -c)
        worst=$(($(rss_kib "$pid") > worst ? $(rss_kib "$pid") : worst))
    done
    sleep 1
    after_scrapes=$(rss_kib "$pid")
    printf 'after %2d scrapes %6d KiB   (/metrics %d bytes, /config %d bytes)\n' \
        "$SCRAPES" "$after_scrapes" "$bytes_m" "$bytes_c"
    printf 'highest seen    %6d KiB\n' "$worst"

    local growth=$(((after_scrapes - start) * 1000 / start))
    printf 'growth          %+d.%d %%\n' $((growth / 10)) $(((growth < 0 ? -growth : growth) % 10))
    local fail=0
    ((after_scrapes <= BUDGET_KIB && start <= BUDGET_KIB)) || { log "over the budget of $BUDGET_KIB KiB"; fail=1; }
    ((growth <= GROWTH_PCT * 10)) || { log "grew more than $GROWTH_PCT %"; fail=1; }
    return $fail
}

main "$@"
