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
# has changed much, then compare idle RSS (tests/operations/budgets.rs prints it). ~6 minutes.
#
# How: the shipped x86_64 musl binary is linked with its symbols (cross/ordered-cc:
# SIDEGATE_LINK_KEEP_SYMBOLS; the code is the shipped code) and run two ways:
#   1. first moments, natively under gdb (cross/first-calls.py: a breakpoint on every function,
#      each recorded at its first call):
#      - idle: each example role (config/gateway.toml, config/sidecar.toml) started, probed
#        with one connection and stopped, as tests/operations/budgets.rs measures them;
#      - first connections: a sidecar's upstream listener carrying three connections to an
#        mTLS backend (the benchmark's origination path, tests/bench/loadgen.rs as the backend);
#   2. traffic, under callgrind, which records every function a process executes: the chosen
#      integration tests, with every `sidegate` they start replaced by that binary under
#      callgrind (through the runner hook the tests use for emulators: tests/common,
#      sidegate_command). Some may fail under callgrind's slowdown; the processes they started
#      still ran their code, which is all that is needed here.
# The order (fault-around maps 64 KiB windows, so what matters is how many windows a process
# touches): the idle code of both roles, then the gateway's, then the sidecar's, so that an
# idle process of either role touches as few windows as its code needs; then what a sidecar's
# first connection adds (its client handshake, the record layer), so that a sidecar which has
# carried a connection and gone idle again stays in few windows too; then the code that
# traffic runs, most widely run first, functions run by the same processes next to each other.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/targets.sh

tests=("$@")
((${#tests[@]})) || tests=(operations/operations proxy/sidecar_mesh proxy/gateway
    consul_agent/builtin_proxy consul_agent/source)
command -v valgrind >/dev/null || cross_apt valgrind
command -v gdb >/dev/null || cross_apt gdb

target=x86_64-unknown-linux-musl
work="${CARGO_TARGET_DIR:-target}/link-order"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
rm -rf "$work"/cg.* "$work"/idle-* "$work"/first-*

cross_install "$target"
(
    cross_env "$target"
    SIDEGATE_LINK_KEEP_SYMBOLS=1 CARGO_TARGET_DIR="$work/build" \
        cargo build --locked --release --target "$target"
)
bin="$work/build/$target/release/sidegate"
callgrind=(valgrind -q --tool=callgrind --demangle=no)

# 1. A role's first moments, natively (cross/first-calls.py says why not under callgrind): the
# binary started under gdb with CONFIG; once it listens, PROBE is called with the address it
# listens on, then the process is stopped. The functions it called: $work/NAME.calls.
nm --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ { print $1 "\t" $3 }' >"$work/functions"

# listening LOG WHAT: waits up to a minute for "listening on ADDRESS" in LOG; prints ADDRESS.
listening() {
    local addr
    for _ in $(seq 240); do
        addr=$(grep -oE 'listening on [0-9.]+:[0-9]+' "$1" | head -1 | cut -d' ' -f3)
        [ -n "$addr" ] && { echo "$addr"; return; }
        sleep 0.25
    done
    echo "link-order: $2 did not start:" >&2
    cat "$1" >&2
    exit 1
}

first_calls() {
    local name=$1 config=$2 probe=$3 log="$work/$1.log" gdb_pid addr
    FIRST_CALLS_SYMBOLS="$work/functions" FIRST_CALLS_OUT="$work/$name.calls" \
        FIRST_CALLS_PID="$work/$name.pid" gdb -q -batch -x cross/first-calls.py \
        --args "$bin" run --config "$config" >"$work/$name.gdb" 2>"$log" &
    gdb_pid=$!
    addr=$(listening "$log" "$name")
    sleep 1
    "$probe" "$addr"
    sleep 2
    kill -TERM "$(cat "$work/$name.pid")"
    wait "$gdb_pid" || true
    [ -s "$work/$name.calls" ] || { echo "link-order: no calls recorded for $name" >&2; exit 1; }
}

# The budget test's probe (tests/operations/budgets.rs): a few bytes that are not TLS, refused
# and closed.
garbage() {
    exec 3<>"/dev/tcp/${1%:*}/${1#*:}"
    printf '\0\0\0\0\0\0\0\0' >&3
    sleep 2
    exec 3>&-
}
first_calls idle-gateway config/gateway.toml garbage
first_calls idle-sidecar config/sidecar.toml garbage

# A sidecar's first connections: the benchmark's upstream listener (tests/bench/run.sh,
# origination) carrying connections to its mTLS backend (tests/bench/loadgen.rs). Accepting
# it dials the backend and makes the client handshake; the benchmark's readiness probe does the
# same, so the idle RSS it reports includes this code.
cargo build --locked --release --quiet --example loadgen
lg="${CARGO_TARGET_DIR:-target}/release/examples/loadgen"
td=11111111-2222-3333-4444-555555555555.consul
sni="db.default.dc1.internal.$td"
first="$work/first-sidecar.d"
rm -rf "$first"
mkdir -p "$first"
"$lg" certs --cert-dir "$first" --client-spiffe "spiffe://$td/ns/default/dc/dc1/svc/web" >/dev/null
"$lg" backend --listen 127.0.0.1:0 --name "$sni" --spiffe "spiffe://$td/ns/default/dc/dc1/svc/db" \
    --cert-dir "$first" 2>"$first/backend.log" &
backend=$!
backend_addr=$(listening "$first/backend.log" "the backend")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$first/sidecar.toml" <<EOF
[mesh]
datacenter = "dc1"
trust_domain = "$td"
[tls]
cert_file = "$first/client.pem"
key_file = "$first/client-key.pem"
ca_file = "$first/ca.pem"
[sidecar]
service = "web"
[[sidecar.upstreams]]
destination_name = "db"
local_bind_port = $port
[[catalog.services]]
name = "db"
instances = ["$backend_addr"]
EOF
# Three connections, one after another: by the second most breakpoints are gone, so it runs at
# nearly native speed and takes the paths a fast connection takes (a dial still in progress
# when its timeout is armed, for one).
upstream() {
    for _ in 1 2 3; do
        "$lg" bulk --connect "$1" --sni "$sni" --cert-dir "$first" --client plain --bytes 1000 \
            --conns 1 --dir both >/dev/null
    done
}
first_calls first-sidecar "$first/sidecar.toml" upstream
kill "$backend"
wait "$backend" 2>/dev/null || true

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

def called(role):
    """The functions (by name) that a role's native run called (cross/first-calls.py)."""
    return {name[s] for s in open(f"{work}/{role}.calls").read().split() if s in name}

gateway, sidecar, first = called("idle-gateway"), called("idle-sidecar"), called("first-sidecar")
# cg.<pid> and its partial dumps cg.<pid>.<n>: one process.
by_pid = collections.defaultdict(list)
for path in glob.glob(f"{work}/cg.*"):
    by_pid[path.split("/")[-1].split(".")[1]].append(path)
processes = {pid: ran(paths) for pid, paths in by_pid.items()}
if not processes or not gateway or not sidecar or not first:
    sys.exit("link-order: missing profiles")
users = collections.defaultdict(list)
for pid in sorted(processes):
    for f in processes[pid]:
        users[f].append(pid)

def group(f):
    if f in gateway:
        # What a sidecar's first connection shares with an idle gateway goes last, next to
        # the sidecar's own code.
        return 0 if f in sidecar else 2 if f in first else 1
    return 3 if f in sidecar else 4 if f in first else 5

def key(f):
    return (group(f), -len(users[f]), users[f], f)

print("# Functions a running sidegate executes, in the order cross/ordered-cc lays them out.")
print(f"# Generated by cross/link-order.sh at {commit}: the idle example roles, a sidecar's first")
print("# connections, then the tests")
print(f"# {tests} ({len(processes)} processes).")
for f in sorted(gateway | sidecar | first | set(users), key=key):
    print(f)
EOF
mv "$work/link-order.txt" cross/link-order.txt
echo "link-order: $(grep -vc '^#' cross/link-order.txt) functions" >&2
