#!/usr/bin/env bash
# Regenerates cross/link-order.txt: the functions a running sidegate executes, in the order the
# static builds lay them out (cross/ordered-cc explains why).
#
#   cross/link-order.sh [BINARY/MODULE...]   default: the integration tests that run every role
#
# Each argument names one test file, tests/BINARY/MODULE.rs: the tests `MODULE::` of the test
# binary BINARY (e.g. proxy/gateway).
#
# Not part of tests/run.sh: the list is data, committed, and a stale list only costs memory
# (functions it misses are placed after the listed ones). Rerun it when the code a role runs
# has changed much, then compare idle RSS (tests/operations/budgets.rs prints it). ~5 minutes.
#
# How: the shipped x86_64 musl binary is linked with its symbols (cross/ordered-cc:
# SIDEGATE_LINK_KEEP_SYMBOLS; the code is the shipped code) and run under callgrind, which
# records every function a process executes:
#   1. idle: each example role (config/gateway.toml, config/sidecar.toml) started, probed with
#      one connection and stopped, as tests/operations/budgets.rs measures them;
#   2. traffic: the chosen integration tests, with every `sidegate` they start replaced by that
#      binary under callgrind (through the runner hook the tests use for emulators:
#      tests/common, sidegate_command). Some may fail under callgrind's slowdown; the
#      processes they started still ran their code, which is all that is needed here.
# The order (fault-around maps 64 KiB windows, so what matters is how many windows a process
# touches): the idle code of both roles, then the gateway's, then the sidecar's, so that an
# idle process of either role touches as few windows as its code needs; then the code that
# traffic runs, most widely run first, functions run by the same processes next to each other.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/targets.sh

tests=("$@")
((${#tests[@]})) || tests=(operations/operations proxy/sidecar_mesh proxy/gateway
    consul_agent/builtin_proxy consul_agent/source)
command -v valgrind >/dev/null || cross_apt valgrind

target=x86_64-unknown-linux-musl
work="${CARGO_TARGET_DIR:-target}/link-order"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
rm -f "$work"/cg.* "$work"/idle-*

cross_install "$target"
(
    cross_env "$target"
    SIDEGATE_LINK_KEEP_SYMBOLS=1 CARGO_TARGET_DIR="$work/build" \
        cargo build --locked --release --target "$target"
)
bin="$work/build/$target/release/sidegate"
callgrind=(valgrind -q --tool=callgrind --demangle=no)

# 1. Idle roles. A stop by SIGTERM lets callgrind write its profile.
for role in gateway sidecar; do
    log="$work/idle-$role.log"
    "${callgrind[@]}" --callgrind-out-file="$work/idle-$role.cg" \
        "$bin" run --config "config/$role.toml" 2>"$log" &
    pid=$!
    for _ in $(seq 120); do
        grep -q 'listening on' "$log" && break
        sleep 0.5
    done
    addr=$(grep -oE 'listening on [0-9.]+:[0-9]+' "$log" | head -1 | cut -d' ' -f3)
    [ -n "$addr" ] || { echo "link-order: $role did not start:" >&2; cat "$log" >&2; exit 1; }
    sleep 1
    # The budget test's probe: a few bytes that are not TLS, refused and closed.
    exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}"
    printf '\0\0\0\0\0\0\0\0' >&3
    sleep 2
    exec 3>&-
    kill -TERM "$pid"
    wait "$pid" || true
done

# 2. Traffic. Tests end their processes with SIGKILL, so callgrind also writes a partial
# profile every few million blocks; together those cover all but a process's last moments.
cat >"$work/runner" <<EOF
#!/bin/sh
case "\$1" in
*/sidegate) shift; exec ${callgrind[*]} --dump-every-bb=2000000 \
    --callgrind-out-file="$work/cg.%p" "$bin" "\$@" ;;
*) exec "\$@" ;;
esac
EOF
chmod +x "$work/runner"
host=$(rustc -vV | sed -n 's/^host: //p')
runner_var="CARGO_TARGET_$(tr 'a-z.-' 'A-Z__' <<<"$host")_RUNNER"
# Test names are MODULE::test; a filter is matched in every binary given, and no two of the
# default files' modules share a name.
declare -A binaries=()
filters=()
for t in "${tests[@]}"; do
    [[ $t == */* ]] || { echo "link-order: $t: expected BINARY/MODULE" >&2; exit 2; }
    binaries[${t%%/*}]=1
    filters+=("${t#*/}::")
done
test_args=()
for b in "${!binaries[@]}"; do test_args+=(--test "$b"); done
env "$runner_var=$work/runner" cargo test --locked --no-fail-fast "${test_args[@]}" \
    -- --test-threads=1 "${filters[@]}" ||
    echo "link-order: some tests failed under callgrind (expected; their processes still ran)" >&2

# 3. The list. Names as the linker wrapper sees them: demangled (v0), without hashes.
nm -p --defined-only "$bin" | awk '{print $3}' >"$work/raw"
nm -p --defined-only -C "$bin" | sed -E 's/^[^ ]+ [^ ]+ //; s/::h[0-9a-f]+$//' >"$work/dem"
nm -n --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ { print $1 "\t" $3 }' >"$work/addrs"
# Assembly without a symbol size (musl's memcpy, memset, __clone...): callgrind cannot tell
# when it runs, and much of it runs everywhere; it goes with the code every role runs.
nm -S --defined-only "$bin" | awk 'NF == 3 && $2 ~ /^[tTwW]$/ { print $3 }' >"$work/sizeless"
python3 - "$work" "${tests[*]}" "$(git rev-parse --short HEAD)" >"$work/link-order.txt" <<'EOF'
import bisect, collections, glob, re, sys

work, tests, commit = sys.argv[1:]
name = dict(zip(open(f"{work}/raw").read().splitlines(), open(f"{work}/dem").read().splitlines()))
# Code without symbol sizes (musl's assembly memcpy, memset...) is named by callgrind by its
# address only: it belongs to the symbol at or below that address.
symbols = [(int(a, 16), s) for a, s in (l.split("\t") for l in open(f"{work}/addrs"))]
starts = [a for a, _ in symbols]

def function(symbol):
    if symbol.startswith("0x"):
        addr = int(symbol, 16)
        i = bisect.bisect_right(starts, addr) - 1
        if i < 0 or addr - starts[i] > 4096:  # not ours (the vDSO, valgrind's own code)
            return None
        symbol = symbols[i][1]
    return name.get(symbol)

def ran(paths):
    """The functions (by name) that the profiles in `paths` executed."""
    out = set()
    for path in paths:
        for line in open(path, errors="replace"):
            # callgrind marks the depth of a recursive call as a suffix, 'N.
            m = re.match(r"c?fn=\(\d+\) (.+?)(?:'\d+)?$", line.rstrip("\n"))
            if m and function(m.group(1)):
                out.add(function(m.group(1)))
    return out

sizeless = set(open(f"{work}/sizeless").read().split())
gateway = ran([f"{work}/idle-gateway.cg"]) | sizeless
sidecar = ran([f"{work}/idle-sidecar.cg"]) | sizeless
# cg.<pid> and its partial dumps cg.<pid>.<n>: one process.
by_pid = collections.defaultdict(list)
for path in glob.glob(f"{work}/cg.*"):
    by_pid[path.split("/")[-1].split(".")[1]].append(path)
processes = {pid: ran(paths) for pid, paths in by_pid.items()}
if not processes or not gateway or not sidecar:
    sys.exit("link-order: missing profiles")
users = collections.defaultdict(list)
for pid in sorted(processes):
    for f in processes[pid]:
        users[f].append(pid)

def key(f):
    group = 0 if f in gateway and f in sidecar else 1 if f in gateway else 2 if f in sidecar else 3
    return (group, -len(users[f]), users[f], f)

print("# Functions a running sidegate executes, in the order cross/ordered-cc lays them out.")
print(f"# Generated by cross/link-order.sh at {commit}: the idle example roles, then the tests")
print(f"# {tests} ({len(processes)} processes).")
for f in sorted(gateway | sidecar | set(users), key=key):
    print(f)
EOF
mv "$work/link-order.txt" cross/link-order.txt
echo "link-order: $(grep -vc '^#' cross/link-order.txt) functions" >&2
