#!/usr/bin/env bash
# Gateway benchmark: sidegate vs HAProxy, sniproxy and nginx (stream + ssl_preread), all
# routing TLS by SNI without decrypting, against the direct client → backend path.
#
#   tests/bench/gateway.sh                      # as root on Debian 12; ~3-4 minutes
#   ROUNDS=5 BULK_MB=512 RATE_SECONDS=10 tests/bench/gateway.sh
#
# Every proxy is measured with the same client and TLS backend (tests/bench/loadgen.rs),
# on loopback only, in interleaved rounds; the table reports medians over rounds.
# Per round and proxy, on a freshly started proxy:
#   idle RSS → hold HOLD_COUNT connections (RSS per held connection) → bulk (MB/s, proxy CPU
#   per GB) → new-connection rate (conn/s, setup p50/p99 = TCP connect → handshake done).
# Each proxy gets one event-loop thread/process (PROXY_THREADS), like sidegate's single loop.
#
# Environment: ROUNDS (3), BULK_MB (256 MiB per connection and direction), BULK_CONNS (4),
# RATE_SECONDS (5), RATE_PARALLEL (8), HOLD_COUNT (1000), PROXY_THREADS (1),
# PROXIES ("direct sidegate haproxy sniproxy nginx"), BASE_PORT (19400);
# REPORT_FROM=FILE re-renders the table from a saved gateway-raw.tsv without measuring.
# Output: a Markdown table on stdout and in target/bench/gateway.md (raw samples beside it).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
BULK_MB=${BULK_MB:-256}
BULK_CONNS=${BULK_CONNS:-4}
RATE_SECONDS=${RATE_SECONDS:-5}
RATE_PARALLEL=${RATE_PARALLEL:-8}
HOLD_COUNT=${HOLD_COUNT:-1000}
PROXY_THREADS=${PROXY_THREADS:-1}
PROXIES=${PROXIES:-"direct sidegate haproxy sniproxy nginx"}
BASE_PORT=${BASE_PORT:-19400}

TD=11111111-2222-3333-4444-555555555555.consul
SNI="db.default.dc1.internal.$TD"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT_DIR=$TARGET_DIR/bench
SIDEGATE=$TARGET_DIR/release/sidegate
LOADGEN=$TARGET_DIR/release/examples/loadgen

log() { echo "[bench] $*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------------ prerequisites

NGINX_STREAM_SO=/usr/lib/nginx/modules/ngx_stream_module.so
need_pkgs() {
    local missing=()
    for p in $PROXIES; do
        case $p in
            haproxy) command -v haproxy >/dev/null || missing+=(haproxy) ;;
            sniproxy) command -v sniproxy >/dev/null || missing+=(sniproxy) ;;
            nginx) command -v nginx >/dev/null || missing+=(nginx)
                   [[ -e $NGINX_STREAM_SO ]] || missing+=(libnginx-mod-stream) ;;
        esac
    done
    command -v ss >/dev/null || missing+=(iproute2)
    command -v ps >/dev/null || missing+=(procps)
    echo "${missing[@]}"
}
install_missing() {
    local missing
    missing=$(need_pkgs)
    [[ -z $missing ]] && return
    log "installing: $missing"
    [[ $(id -u) -eq 0 ]] || die "need root to install $missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    if ! apt-get install -y --no-install-recommends $missing >&2; then
        apt-get update >&2
        apt-get install -y --no-install-recommends $missing >&2
    fi
    # Debian starts packaged daemons on install; this benchmark runs its own instances.
    for svc in haproxy sniproxy nginx; do
        systemctl stop "$svc" >/dev/null 2>&1 || true
    done
}
install_missing
command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"

# 1000 held connections through a proxy are 2000+ descriptors per process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[[ $(ulimit -n) == unlimited || $(ulimit -n) -ge $((2 * HOLD_COUNT + 100)) ]] ||
    die "open-file limit $(ulimit -n) too low for HOLD_COUNT=$HOLD_COUNT"
if [[ $(cat /proc/sys/net/ipv4/tcp_tw_reuse 2>/dev/null || echo 0) == 0 ]]; then
    log "warning: net.ipv4.tcp_tw_reuse=0; the rate test may run out of local ports"
fi

log "building sidegate and loadgen (release)"
cargo build --release --quiet
cargo build --release --quiet --example loadgen
[[ -x $SIDEGATE && -x $LOADGEN ]] || die "build outputs missing under $TARGET_DIR"

# ------------------------------------------------------------------ processes

TMP=$(mktemp -d /tmp/sidegate-bench.XXXXXX)
chmod 755 "$TMP" # sniproxy drops to nobody after start
PIDS=()
cleanup() {
    local rc=$?
    exec 5>&- || true
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        log "failed (exit $rc); logs kept in $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_free() { ! ss -Htln "sport = :$1" | grep -q .; }

# wait_for PID PORT [LOGFILE PATTERN]: up to 10 s for the port (and the log line).
wait_for() {
    local pid=$1 port=$2 file=${3:-} pat=${4:-}
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if [[ -n $file ]]; then
            grep -q "$pat" "$file" 2>/dev/null && port_open "$port" && return 0
        else
            port_open "$port" && return 0
        fi
        sleep 0.1
    done
    return 1
}

# All processes of a proxy: the started one and its descendants (nginx workers, ...).
tree_pids() {
    local p
    echo "$1"
    for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree_pids "$p"; done
}
rss_kib() {
    local total=0 p v
    for p in $(tree_pids "$1"); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
cpu_ticks() {
    local total=0 p v
    for p in $(tree_pids "$1"); do
        # Fields after "pid (comm) ": state is 1st, utime 12th, stime 13th.
        v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}' || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

BACKEND_PORT=$BASE_PORT
declare -A PORT=([sidegate]=$((BASE_PORT + 1)) [haproxy]=$((BASE_PORT + 2))
                 [sniproxy]=$((BASE_PORT + 3)) [nginx]=$((BASE_PORT + 4)))
for p in $BACKEND_PORT "${PORT[@]}"; do
    port_free "$p" || die "port $p is in use (set BASE_PORT)"
done
CERTS=$TMP/certs
BACKEND=127.0.0.1:$BACKEND_PORT

write_configs() {
    cat >"$TMP/sidegate.toml" <<EOF
[mesh]
datacenter = "dc1"
trust_domain = "$TD"

[gateway]
listen = ["127.0.0.1:${PORT[sidegate]}"]
connect_timeout_ms = 5000
handshake_timeout_ms = 10000
max_connections = 20000

[[catalog.services]]
name = "db"
instances = ["$BACKEND"]
EOF

    cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread $PROXY_THREADS
    maxconn 9000

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s

frontend gw
    bind 127.0.0.1:${PORT[haproxy]}
    tcp-request inspect-delay 10s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend db if { req.ssl_sni -i $SNI }

backend db
    server db1 $BACKEND
EOF

    local re
    re="^$(sed 's/\./\\./g' <<<"$SNI")\$"
    cat >"$TMP/sniproxy.conf" <<EOF
user nobody
pidfile $TMP/sniproxy.pid

error_log {
    filename $TMP/sniproxy-error.log
    priority notice
}

listen 127.0.0.1:${PORT[sniproxy]} {
    proto tls
    table gw
}

table gw {
    $re $BACKEND
}
EOF

    cat >"$TMP/nginx.conf" <<EOF
load_module $NGINX_STREAM_SO;
worker_processes $PROXY_THREADS;
worker_rlimit_nofile 20000;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;

events { worker_connections 10000; }

stream {
    map_hash_bucket_size 128; # the Consul SNI is longer than the default bucket
    map \$ssl_preread_server_name \$gw_upstream {
        $SNI $BACKEND;
        default 127.0.0.1:1;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]};
        ssl_preread on;
        preread_timeout 10s;
        proxy_connect_timeout 5s;
        proxy_timeout 120s;
        proxy_pass \$gw_upstream;
    }
}
EOF
}

PROXY_PID=
# start_proxy NAME: sets PROXY_PID (empty for direct) and ADDR.
start_proxy() {
    local name=$1
    PROXY_PID=
    case $name in
        direct) ADDR=$BACKEND; return 0 ;;
        sidegate)
            "$SIDEGATE" run --config "$TMP/sidegate.toml" 2>"$TMP/sidegate.log" &
            PROXY_PID=$!
            PIDS+=("$PROXY_PID")
            wait_for "$PROXY_PID" "${PORT[sidegate]}" "$TMP/sidegate.log" "gateway listening on" ||
                die "sidegate did not start: $(cat "$TMP/sidegate.log")"
            ;;
        haproxy)
            haproxy -db -f "$TMP/haproxy.cfg" 2>"$TMP/haproxy.log" &
            PROXY_PID=$!
            PIDS+=("$PROXY_PID")
            wait_for "$PROXY_PID" "${PORT[haproxy]}" || die "haproxy did not start: $(cat "$TMP/haproxy.log")"
            ;;
        sniproxy)
            sniproxy -f -c "$TMP/sniproxy.conf" 2>"$TMP/sniproxy.log" &
            PROXY_PID=$!
            PIDS+=("$PROXY_PID")
            wait_for "$PROXY_PID" "${PORT[sniproxy]}" ||
                die "sniproxy did not start: $(cat "$TMP/sniproxy.log" "$TMP/sniproxy-error.log" 2>/dev/null)"
            ;;
        nginx)
            nginx -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" -g 'daemon off; master_process on;' 2>"$TMP/nginx.log" &
            PROXY_PID=$!
            PIDS+=("$PROXY_PID")
            wait_for "$PROXY_PID" "${PORT[nginx]}" ||
                die "nginx did not start: $(cat "$TMP/nginx.log" "$TMP/nginx-error.log" 2>/dev/null)"
            ;;
        *) die "unknown proxy $name" ;;
    esac
    ADDR=127.0.0.1:${PORT[$name]}
    # The accept loop is up; give worker processes/threads a moment to finish starting.
    sleep 0.5
}

# ------------------------------------------------------------------ measurements

RAW=$TMP/raw.tsv
: >"$RAW"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RAW"; }
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" | head -1; }

measure_hold() {
    local name=$1 round=$2 idle=$3
    local fifo=$TMP/hold.fifo out=$TMP/hold.out
    rm -f "$fifo" "$out"
    mkfifo "$fifo"
    timeout 300 "$LOADGEN" hold --connect "$ADDR" --sni "$SNI" --cert-dir "$CERTS" \
        --count "$HOLD_COUNT" --timeout-secs 120 <"$fifo" >"$out" 2>>"$TMP/loadgen.err" &
    local hp=$!
    PIDS+=("$hp")
    exec 5>"$fifo"
    for _ in $(seq 1200); do
        grep -q '^READY' "$out" 2>/dev/null && break
        kill -0 "$hp" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^READY' "$out" || die "hold did not get ready via $name: $(tail -3 "$TMP/loadgen.err")"
    local held
    held=$(kv held <"$out")
    sleep 1 # let the proxy finish any deferred work for the last connections
    local rss
    rss=$(rss_kib "$PROXY_PID")
    exec 5>&-
    wait "$hp" || die "hold via $name failed"
    stop_pid_list_only "$hp"
    [[ $held -gt 0 ]] || die "no connection held via $name"
    record "$name" "$round" held "$held"
    record "$name" "$round" held_rss_kib "$rss"
    record "$name" "$round" per_conn_kib "$(awk -v a="$rss" -v b="$idle" -v n="$held" 'BEGIN {printf "%.2f", (a - b) / n}')"
    log "  $name: $held held, RSS $rss KiB (idle $idle KiB)"
}
# Forget a finished helper PID (already waited for).
stop_pid_list_only() {
    local keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

measure_bulk() {
    local name=$1 round=$2 c0=0 c1 res
    [[ -n $PROXY_PID ]] && c0=$(cpu_ticks "$PROXY_PID")
    res=$(timeout 600 "$LOADGEN" bulk --connect "$ADDR" --sni "$SNI" --cert-dir "$CERTS" \
        --bytes $((BULK_MB * 1048576)) --conns "$BULK_CONNS" --dir both 2>>"$TMP/loadgen.err") ||
        die "bulk via $name failed: $(tail -3 "$TMP/loadgen.err")"
    local mbps bytes
    mbps=$(kv mbps <<<"$res")
    bytes=$(kv bytes <<<"$res")
    record "$name" "$round" bulk_mbps "$mbps"
    if [[ -n $PROXY_PID ]]; then
        c1=$(cpu_ticks "$PROXY_PID")
        record "$name" "$round" cpu_s_per_gb \
            "$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v b="$bytes" 'BEGIN {printf "%.3f", t / hz / (b / 1e9)}')"
    fi
    log "  $name: bulk $mbps MB/s"
}

measure_rate() {
    local name=$1 round=$2 res
    res=$(timeout $((RATE_SECONDS + 120)) "$LOADGEN" rate --connect "$ADDR" --sni "$SNI" --cert-dir "$CERTS" \
        --seconds "$RATE_SECONDS" --parallel "$RATE_PARALLEL" 2>>"$TMP/loadgen.err") ||
        die "rate via $name failed: $(tail -3 "$TMP/loadgen.err")"
    local m
    for m in cps p50_ms p99_ms errors; do
        record "$name" "$round" "$m" "$(kv "$m" <<<"$res")"
    done
    log "  $name: $(kv cps <<<"$res") conn/s, p50 $(kv p50_ms <<<"$res") ms, p99 $(kv p99_ms <<<"$res") ms, errors $(kv errors <<<"$res")"
}

run_one() {
    local name=$1 round=$2
    start_proxy "$name"
    if [[ -n $PROXY_PID ]]; then
        local idle
        idle=$(rss_kib "$PROXY_PID")
        record "$name" "$round" idle_rss_kib "$idle"
        measure_hold "$name" "$round" "$idle"
    fi
    measure_bulk "$name" "$round"
    measure_rate "$name" "$round"
    [[ -n $PROXY_PID ]] && stop_pid "$PROXY_PID"
    PROXY_PID=
    sleep 1 # let TIME_WAIT and stray threads settle between proxies
}

# ------------------------------------------------------------------ run

if [[ -n ${REPORT_FROM:-} ]]; then
    # Re-render the table from a earlier run's raw samples (target/bench/gateway-raw.tsv).
    cp "$REPORT_FROM" "$RAW.in"
    mv "$RAW.in" "$RAW"
else
write_configs
"$LOADGEN" backend --listen "$BACKEND" --name "$SNI" --cert-dir "$CERTS" 2>"$TMP/backend.log" &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_for "$BACKEND_PID" "$BACKEND_PORT" || die "backend did not start: $(cat "$TMP/backend.log")"

log "rounds=$ROUNDS bulk=${BULK_CONNS}x${BULK_MB}MiB each way rate=${RATE_SECONDS}s x$RATE_PARALLEL hold=$HOLD_COUNT proxies: $PROXIES"
for round in $(seq "$ROUNDS"); do
    for name in $PROXIES; do
        log "round $round/$ROUNDS: $name"
        run_one "$name" "$round"
    done
done
fi

# ------------------------------------------------------------------ report

median() { # median NAME METRIC → value or empty
    awk -F'\t' -v n="$1" -v m="$2" '$1 == n && $3 == m {print $4}' "$RAW" | sort -g |
        awk '{v[NR] = $1} END {if (NR == 0) exit; if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
fmt() { awk -v v="$1" -v d="$2" 'BEGIN {if (v == "") print "—"; else printf "%.*f\n", d, v}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "" || b == "" || b == 0) print ""; else printf " (×%.2f)", a / b}'; }

mkdir -p "$OUT_DIR"
MD=$OUT_DIR/gateway.md
d_bulk=$(median direct bulk_mbps)
d_cps=$(median direct cps)
d_p50=$(median direct p50_ms)
d_p99=$(median direct p99_ms)
{
    echo "| path | bulk MB/s | new conn/s | setup p50 ms | setup p99 ms | idle RSS MiB | RSS per held conn KiB | proxy CPU s/GB |"
    echo "|---|---|---|---|---|---|---|---|"
    for name in $PROXIES; do
        bulk=$(median "$name" bulk_mbps)
        cps=$(median "$name" cps)
        p50=$(median "$name" p50_ms)
        p99=$(median "$name" p99_ms)
        idle=$(median "$name" idle_rss_kib)
        per=$(median "$name" per_conn_kib)
        cpu=$(median "$name" cpu_s_per_gb)
        idle_mib=
        [[ -n $idle ]] && idle_mib=$(awk -v k="$idle" 'BEGIN {print k / 1024}')
        if [[ $name == direct ]]; then
            echo "| direct (reference) | $(fmt "$bulk" 0) | $(fmt "$cps" 0) | $(fmt "$p50" 3) | $(fmt "$p99" 3) | — | — | — |"
        else
            echo "| $name | $(fmt "$bulk" 0)$(ratio "$bulk" "$d_bulk") | $(fmt "$cps" 0)$(ratio "$cps" "$d_cps") | $(fmt "$p50" 3)$(ratio "$p50" "$d_p50") | $(fmt "$p99" 3)$(ratio "$p99" "$d_p99") | $(fmt "$idle_mib" 2) | $(fmt "$per" 2) | $(fmt "$cpu" 2) |"
        fi
    done
} >"$TMP/table.md"

{
    echo "# sidegate gateway benchmark"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r)"
    echo "- sidegate $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3); $(sniproxy -V 2>&1 | head -1); $(nginx -v 2>&1 | sed 's/.*: //')"
    echo "- command: \`ROUNDS=$ROUNDS BULK_MB=$BULK_MB BULK_CONNS=$BULK_CONNS RATE_SECONDS=$RATE_SECONDS RATE_PARALLEL=$RATE_PARALLEL HOLD_COUNT=$HOLD_COUNT PROXY_THREADS=$PROXY_THREADS tests/bench/gateway.sh\`"
    echo "- medians of $ROUNDS interleaved rounds; (×N) = ratio to direct. Bulk: $BULK_CONNS TLS connections each sending then receiving $BULK_MB MiB (payload MB/s, 1 MB = 10^6 B). Rate: ${RATE_SECONDS}s, $RATE_PARALLEL parallel clients, full handshakes (ECDSA P-256, TLS 1.3, no resumption) + one 32-byte echo + orderly close; setup = connect → handshake complete. RSS: VmRSS of all the proxy's processes, idle after start; per held conn = (RSS with $HOLD_COUNT held − idle) / held. CPU: proxy utime+stime during bulk / GB moved."
    echo
    cat "$TMP/table.md"
} >"$MD"
cp "$RAW" "$OUT_DIR/gateway-raw.tsv"

echo
cat "$MD"
echo
log "written to $MD (raw samples: $OUT_DIR/gateway-raw.tsv)"
