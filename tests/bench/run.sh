#!/usr/bin/env bash
# The benchmark: sidegate against the proxies Debian ships, on loopback, with one load client
# and the same TLS backends for every path (tests/bench/loadgen.rs). Two scenarios:
#
#   passthrough  TLS routed by SNI without decrypting: sidegate's gateway, HAProxy
#                (req.ssl_sni), sniproxy, nginx (stream ssl_preread); direct = client → backend.
#   origination  a local app's plaintext carried over mTLS: sidegate's upstream listener,
#                HAProxy (server ... ssl crt ... verify required), nginx (stream proxy_ssl with a
#                client certificate), stunnel (client mode); direct = the load client doing the
#                mTLS itself. The backend requires and verifies a client certificate and
#                presents a leaf with the target's SPIFFE URI SAN (sidegate checks that ID; the
#                others check the chain and the DNS name, the most they can).
#
#   tests/bench/run.sh                  # as root or with sudo on Debian 12: ~8 min (+2.5 to build)
#   ROUNDS=1 BULK_MB=64 RATE_SECONDS=2 LAT_SECONDS=1 HOLD_COUNT=300 tests/bench/run.sh   # quick look
#   REPORT_FROM=target/bench/bench-raw.tsv tests/bench/run.sh     # re-render a saved run
#
# Rounds are interleaved (every path once per round, each proxy freshly started) and the
# tables report medians over rounds. Each round starts one path further down the list, so no
# path always follows the same one (the one before leaves its TIME_WAIT sockets and its cache
# footprint behind). Per round and path:
#   idle RSS → WARM_COUNT connections held and closed, then HOLD_COUNT held (RSS per held
#   connection) → bulk (MB/s, proxy CPU per GB) → new-connection rate (conn/s) → latency
#   without load (connection setup from one client connecting serially; small-request round
#   trip on one established connection).
# Every event-loop proxy gets PROXY_THREADS loop threads/processes (1 by default), sidegate
# included (`[runtime] threads`, whose own default would be every CPU); stunnel has no such
# setting (a thread per connection). tests/bench/cores.sh runs this at PROXY_THREADS=1 and 2,
# each with BULK_CONNS=1 and 4, and renders the multi-core table.
#
# Environment: ROUNDS (3), BULK_MB (256 MiB per connection and direction), BULK_CONNS (4),
# RATE_SECONDS (5), RATE_PARALLEL (8), LAT_SECONDS (2), HOLD_COUNT (1000), WARM_COUNT (100),
# PROXY_THREADS (1),
# SCENARIOS ("passthrough origination"), PASSTHROUGH ("direct sidegate haproxy sniproxy nginx"),
# ORIGINATION ("direct sidegate haproxy nginx stunnel"), BASE_PORT (19400),
# SIDEGATE_TARGET (x86_64-unknown-linux-musl, the shipped static build; a target of
# cross/targets.sh, which installs its toolchain; "host" for the host toolchain's default),
# SIDEGATE_BINARY (measure this prebuilt binary instead of building one), SIDEGATE_RUNTIME_KEY
# (1; 0 for a binary that predates `[runtime] threads`).
# Duration: 8 min 3 s of measuring at the defaults on a quiet 2-core machine (the last run, at
# d2484ca; tests/bench/RESULTS.md), plus about 2.5 min of release builds when not yet built.
# Output: Markdown on stdout and in $CARGO_TARGET_DIR/bench/bench.md, raw samples beside it
# (bench-raw.tsv: scenario, path, round, metric, value; "meta" rows describe the run).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
BULK_MB=${BULK_MB:-256}
BULK_CONNS=${BULK_CONNS:-4}
RATE_SECONDS=${RATE_SECONDS:-5}
RATE_PARALLEL=${RATE_PARALLEL:-8}
LAT_SECONDS=${LAT_SECONDS:-2}
HOLD_COUNT=${HOLD_COUNT:-1000}
WARM_COUNT=${WARM_COUNT:-100}
PROXY_THREADS=${PROXY_THREADS:-1}
SCENARIOS=${SCENARIOS:-"passthrough origination"}
PASSTHROUGH=${PASSTHROUGH:-"direct sidegate haproxy sniproxy nginx"}
ORIGINATION=${ORIGINATION:-"direct sidegate haproxy nginx stunnel"}
BASE_PORT=${BASE_PORT:-19400}
SIDEGATE_TARGET=${SIDEGATE_TARGET:-x86_64-unknown-linux-musl}

TD=11111111-2222-3333-4444-555555555555.consul
SNI="db.default.dc1.internal.$TD"
DB_SPIFFE="spiffe://$TD/ns/default/dc/dc1/svc/db"
WEB_SPIFFE="spiffe://$TD/ns/default/dc/dc1/svc/web"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# cross_install, cross_env, cross_binary: the toolchain of SIDEGATE_TARGET, as for the boards.
source cross/targets.sh
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT_DIR=$TARGET_DIR/bench
LOADGEN=$TARGET_DIR/release/examples/loadgen
NGINX_STREAM_SO=/usr/lib/nginx/modules/ngx_stream_module.so

log() { echo "[bench] $*" >&2; }
die() { log "error: $*"; exit 1; }

paths_of() { case $1 in passthrough) echo "$PASSTHROUGH" ;; origination) echo "$ORIGINATION" ;; *) die "unknown scenario $1" ;; esac; }
# rotated N WORD...: the words from the Nth on, then the rest (round N's order of paths).
rotated() {
    local k=$(($1 - 1))
    shift
    (($#)) || return 0
    k=$((k % $#))
    printf '%s\n' "${@:k+1}" "${@:1:k}"
}

TMP=$(mktemp -d /tmp/sidegate-bench.XXXXXX)
chmod 755 "$TMP" # sniproxy drops to nobody after start
RAW=$TMP/raw.tsv
: >"$RAW"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$RAW"; }
meta() { record meta "$1" - - "$2"; }

# ------------------------------------------------------------------ prerequisites

install_missing() {
    local missing=() all
    all=" $PASSTHROUGH $ORIGINATION "
    [[ $all == *" haproxy "* ]] && ! command -v haproxy >/dev/null && missing+=(haproxy)
    [[ $all == *" sniproxy "* ]] && ! command -v sniproxy >/dev/null && missing+=(sniproxy)
    [[ $all == *" nginx "* ]] && ! command -v nginx >/dev/null && missing+=(nginx)
    [[ $all == *" nginx "* && ! -e $NGINX_STREAM_SO ]] && missing+=(libnginx-mod-stream)
    [[ $all == *" stunnel "* ]] && ! command -v stunnel4 >/dev/null && missing+=(stunnel4)
    command -v ss >/dev/null || missing+=(iproute2)
    command -v ps >/dev/null || missing+=(procps)
    ((${#missing[@]})) || return 0
    log "installing: ${missing[*]}"
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
        $sudo apt-get update -qq >&2
        $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
    # Debian starts packaged daemons on install; this benchmark runs its own instances.
    for svc in haproxy sniproxy nginx stunnel4; do
        $sudo systemctl stop "$svc" >/dev/null 2>&1 || true
    done
}

build() {
    command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"
    log "building sidegate ($SIDEGATE_TARGET) and loadgen (release)"
    if [[ -n ${SIDEGATE_BINARY:-} ]]; then
        SIDEGATE=$SIDEGATE_BINARY   # a prebuilt binary, e.g. another commit's, for an A/B run
    elif [[ $SIDEGATE_TARGET == host ]]; then
        SIDEGATE=$TARGET_DIR/release/sidegate
        cargo build --release --locked --quiet --bin sidegate
    else
        # The shipped binary, built as cross/build.sh builds it: cross_install adds what the
        # target needs (for x86_64 musl the rustup target and Debian's musl-dev, whose
        # x86_64-linux-musl-gcc compiles ring's C), cross_env the compilers cargo is to use.
        cross_install "$SIDEGATE_TARGET"
        SIDEGATE=$(cross_binary "$SIDEGATE_TARGET")
        (
            cross_env "$SIDEGATE_TARGET"
            "${CARGO[@]}" build --release --locked --quiet --bin sidegate --target "$SIDEGATE_TARGET" \
                ${ZFLAGS[@]+"${ZFLAGS[@]}"}
        )
    fi
    cargo build --release --locked --quiet --example loadgen
    [[ -x $SIDEGATE && -x $LOADGEN ]] || die "build outputs missing under $TARGET_DIR"
}

# ------------------------------------------------------------------ processes

PIDS=()
cleanup() {
    local rc=$?
    exec 5>&- || true
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
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

forget_pid() {
    local keep=() p
    for p in ${PIDS[@]+"${PIDS[@]}"}; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=(${keep[@]+"${keep[@]}"})
}
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_free() { ! ss -Htln "sport = :$1" | grep -q .; }

# wait_for PID PORT: up to 10 s for the port to accept.
wait_for() {
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || return 1
        port_open "$2" && return 0
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
cpu_ticks() { # "user system" clock ticks of every process of the tree (all their threads)
    local user=0 sys=0 p u s
    for p in $(tree_pids "$1"); do
        read -r u s < <(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12, $13}') || true
        user=$((user + ${u:-0})) sys=$((sys + ${s:-0}))
    done
    echo "$user $sys"
}
CLK_TCK=$(getconf CLK_TCK)

TLS_BACKEND=127.0.0.1:$BASE_PORT
MTLS_BACKEND=127.0.0.1:$((BASE_PORT + 1))
declare -A PORT=(
    [passthrough/sidegate]=$((BASE_PORT + 11)) [passthrough/haproxy]=$((BASE_PORT + 12))
    [passthrough/sniproxy]=$((BASE_PORT + 13)) [passthrough/nginx]=$((BASE_PORT + 14))
    [origination/sidegate]=$((BASE_PORT + 21)) [origination/haproxy]=$((BASE_PORT + 22))
    [origination/nginx]=$((BASE_PORT + 24)) [origination/stunnel]=$((BASE_PORT + 25)))
CERTS=$TMP/certs
declare -A BACKEND_PID

write_configs() {
    local p=passthrough o=origination re
    # sidegate's loops; SIDEGATE_RUNTIME_KEY=0 leaves the section out for a binary older than
    # `[runtime]` (one loop, and it refuses unknown keys).
    local runtime=""
    [[ ${SIDEGATE_RUNTIME_KEY:-1} == 0 ]] || runtime=$'[runtime]\nthreads = '"$PROXY_THREADS"$'\n'
    cat >"$TMP/$p-sidegate.toml" <<EOF
$runtime
[mesh]
datacenter = "dc1"
trust_domain = "$TD"

[gateway]
listen = ["127.0.0.1:${PORT[$p/sidegate]}"]
max_connections = 20000

[[catalog.services]]
name = "db"
instances = ["$TLS_BACKEND"]
EOF

    cat >"$TMP/$o-sidegate.toml" <<EOF
$runtime
[mesh]
datacenter = "dc1"
trust_domain = "$TD"

[tls]
cert_file = "$CERTS/client.pem"
key_file = "$CERTS/client-key.pem"
ca_file = "$CERTS/ca.pem"

[sidecar]
service = "web"

[[sidecar.upstreams]]
destination_name = "db"
local_bind_port = ${PORT[$o/sidegate]}

[[catalog.services]]
name = "db"
instances = ["$MTLS_BACKEND"]
EOF

    local haproxy_head="global
    nbthread $PROXY_THREADS
    maxconn 9000

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
"
    cat >"$TMP/$p-haproxy.cfg" <<EOF
$haproxy_head
frontend gw
    bind 127.0.0.1:${PORT[$p/haproxy]}
    tcp-request inspect-delay 10s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend db if { req.ssl_sni -i $SNI }

backend db
    server db1 $TLS_BACKEND
EOF
    # Full handshakes like everyone else (no-ssl-reuse); the server's chain and name verified.
    cat >"$TMP/$o-haproxy.cfg" <<EOF
$haproxy_head
frontend up
    bind 127.0.0.1:${PORT[$o/haproxy]}
    default_backend db

backend db
    server db1 $MTLS_BACKEND ssl crt $CERTS/client-combined.pem ca-file $CERTS/ca.pem verify required sni str($SNI) verifyhost $SNI no-ssl-reuse
EOF

    re="^$(sed 's/\./\\./g' <<<"$SNI")\$"
    cat >"$TMP/$p-sniproxy.conf" <<EOF
user nobody
pidfile $TMP/sniproxy.pid

error_log {
    filename $TMP/sniproxy-error.log
    priority notice
}

listen 127.0.0.1:${PORT[$p/sniproxy]} {
    proto tls
    table gw
}

table gw {
    $re $TLS_BACKEND
}
EOF

    # proxy_half_close: nginx's default closes both connections at the first FIN, dropping what
    # the other side still sends (here the backend's close_notify, after the client's). sidegate
    # and HAProxy pass the FIN on and keep relaying the other way: the same job for all three.
    local nginx_head="load_module $NGINX_STREAM_SO;
worker_processes $PROXY_THREADS;
worker_rlimit_nofile 20000;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;

events { worker_connections 10000; }
"
    cat >"$TMP/$p-nginx.conf" <<EOF
$nginx_head
stream {
    map_hash_bucket_size 128; # the Consul SNI is longer than the default bucket
    map \$ssl_preread_server_name \$gw_upstream {
        $SNI $TLS_BACKEND;
        default 127.0.0.1:1;
    }
    server {
        listen 127.0.0.1:${PORT[$p/nginx]};
        ssl_preread on;
        preread_timeout 10s;
        proxy_connect_timeout 5s;
        proxy_timeout 120s;
        proxy_half_close on;
        proxy_pass \$gw_upstream;
    }
}
EOF
    cat >"$TMP/$o-nginx.conf" <<EOF
$nginx_head
stream {
    server {
        listen 127.0.0.1:${PORT[$o/nginx]};
        proxy_connect_timeout 5s;
        proxy_timeout 120s;
        proxy_half_close on;
        proxy_pass $MTLS_BACKEND;
        proxy_ssl on;
        proxy_ssl_certificate $CERTS/client.pem;
        proxy_ssl_certificate_key $CERTS/client-key.pem;
        proxy_ssl_trusted_certificate $CERTS/ca.pem;
        proxy_ssl_verify on;
        proxy_ssl_name $SNI;
        proxy_ssl_server_name on;
        proxy_ssl_session_reuse off;
    }
}
EOF

    cat >"$TMP/$o-stunnel.conf" <<EOF
foreground = yes
pid =
debug = 3
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1

[db]
client = yes
accept = 127.0.0.1:${PORT[$o/stunnel]}
connect = $MTLS_BACKEND
sni = $SNI
cert = $CERTS/client.pem
key = $CERTS/client-key.pem
CAfile = $CERTS/ca.pem
verifyChain = yes
checkHost = $SNI
EOF
}

start_backends() {
    "$LOADGEN" certs --cert-dir "$CERTS" --client-spiffe "$WEB_SPIFFE" >/dev/null
    "$LOADGEN" backend --listen "$TLS_BACKEND" --name "$SNI" --cert-dir "$CERTS" 2>"$TMP/backend-tls.log" &
    BACKEND_PID[passthrough]=$!
    PIDS+=("$!")
    wait_for "$!" "$BASE_PORT" || die "TLS backend did not start: $(cat "$TMP/backend-tls.log")"
    "$LOADGEN" backend --listen "$MTLS_BACKEND" --name "$SNI" --spiffe "$DB_SPIFFE" --cert-dir "$CERTS" \
        2>"$TMP/backend-mtls.log" &
    BACKEND_PID[origination]=$!
    PIDS+=("$!")
    wait_for "$!" $((BASE_PORT + 1)) || die "mTLS backend did not start: $(cat "$TMP/backend-mtls.log")"
}

PROXY_PID=
# start_proxy SCENARIO NAME: sets PROXY_PID (empty for direct), ADDR and CLIENT.
start_proxy() {
    local sc=$1 name=$2 cfg
    PROXY_PID=
    CLIENT=tls
    [[ $sc == origination ]] && CLIENT=plain
    if [[ $name == direct ]]; then
        case $sc in
            passthrough) ADDR=$TLS_BACKEND ;;
            origination) ADDR=$MTLS_BACKEND CLIENT=mtls ;;
        esac
        return 0
    fi
    local port=${PORT[$sc/$name]:-}
    [[ -n $port ]] || die "no $name in the $sc scenario"
    cfg=$TMP/$sc-$name
    case $name in
        sidegate) "$SIDEGATE" run --config "$cfg.toml" 2>"$cfg.log" & ;;
        haproxy) haproxy -db -f "$cfg.cfg" 2>"$cfg.log" & ;;
        sniproxy) sniproxy -f -c "$cfg.conf" 2>"$cfg.log" & ;;
        nginx) nginx -e "$TMP/nginx-error.log" -c "$cfg.conf" -g 'daemon off; master_process on;' 2>"$cfg.log" & ;;
        stunnel) stunnel4 "$cfg.conf" 2>"$cfg.log" & ;;
        *) die "unknown proxy $name" ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_for "$PROXY_PID" "$port" ||
        die "$name did not start: $(cat "$cfg.log" "$TMP"/*-error.log 2>/dev/null | tail -5)"
    ADDR=127.0.0.1:$port
    # The accept loop is up; give worker processes/threads a moment to finish starting.
    sleep 0.5
}

# ------------------------------------------------------------------ measurements

kv() { sed -n "/ $1=/{s/.* $1=\([^ ]*\).*/\1/p;q;}"; }
client_args() { echo --connect "$ADDR" --sni "$SNI" --cert-dir "$CERTS" --client "$CLIENT"; }

# Holds COUNT connections through the proxy; prints "HELD RSS_KIB" while they are held.
hold_session() {
    local sc=$1 name=$2 count=$3
    local fifo=$TMP/hold.fifo out=$TMP/hold.out
    rm -f "$fifo" "$out"
    mkfifo "$fifo"
    # shellcheck disable=SC2046
    timeout 300 "$LOADGEN" hold $(client_args) --count "$count" --timeout-secs 120 \
        <"$fifo" >"$out" 2>>"$TMP/loadgen.err" &
    local hp=$!
    PIDS+=("$hp")
    exec 5>"$fifo"
    for _ in $(seq 1200); do
        grep -q '^READY' "$out" 2>/dev/null && break
        kill -0 "$hp" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^READY' "$out" || die "hold did not get ready via $sc/$name: $(tail -3 "$TMP/loadgen.err")"
    local held rss
    held=$(kv held <"$out")
    sleep 1 # let the proxy finish any deferred work for the last connections
    rss=$(rss_kib "$PROXY_PID")
    exec 5>&-
    wait "$hp" || die "hold via $sc/$name failed"
    forget_pid "$hp"
    [[ $held -gt 0 ]] || die "no connection held via $sc/$name"
    echo "$held $rss"
}

# RSS per held connection is the marginal cost: what HOLD_COUNT more connections add to a
# proxy that has already carried some (WARM_COUNT held and let go), so that a proxy's one-time
# costs of its first connections (code paged in, pools grown) are not spread over them. The
# RSS at that point is recorded too (warm_idle_rss_kib).
measure_hold() {
    local sc=$1 name=$2 round=$3 idle=$4
    local warm held rss
    hold_session "$sc" "$name" "$WARM_COUNT" >/dev/null
    sleep 1
    warm=$(rss_kib "$PROXY_PID")
    read -r held rss < <(hold_session "$sc" "$name" "$HOLD_COUNT")
    record "$sc" "$name" "$round" warm_idle_rss_kib "$warm"
    record "$sc" "$name" "$round" held "$held"
    record "$sc" "$name" "$round" held_rss_kib "$rss"
    record "$sc" "$name" "$round" per_conn_kib "$(awk -v a="$rss" -v b="$warm" -v n="$held" 'BEGIN {printf "%.2f", (a - b) / n}')"
    log "  $held held, RSS $rss KiB (idle $idle KiB, $warm KiB after $WARM_COUNT held and closed)"
}

# Seconds of CPU between two cpu_ticks readings, per GB of `bytes` (or µs per `conns`).
per_gb() { awk -v t="$1" -v hz="$CLK_TCK" -v b="$2" 'BEGIN {printf "%.3f", t / hz / (b / 1e9)}'; }
per_conn_us() { awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}'; }

# Bulk throughput, and where the CPU went: the proxy's (user and kernel) and the whole
# path's (client + backend + proxy), which on a machine whose cores are all busy bounds what
# any path can reach.
measure_bulk() {
    local sc=$1 name=$2 round=$3 res mbps bytes p0=(0 0) p1=(0 0) b0 b1 client
    [[ -n $PROXY_PID ]] && read -ra p0 <<<"$(cpu_ticks "$PROXY_PID")"
    read -r b0 _ <<<"$(cpu_ticks "${BACKEND_PID[$sc]}" | awk '{print $1 + $2}')"
    # shellcheck disable=SC2046
    res=$( { TIMEFORMAT='CLIENT_CPU %U %S'; time timeout 600 "$LOADGEN" bulk $(client_args) \
        --bytes $((BULK_MB * 1048576)) --conns "$BULK_CONNS" --dir both 2>>"$TMP/loadgen.err"; } 2>&1) ||
        die "bulk via $sc/$name failed: $(tail -3 "$TMP/loadgen.err")"
    [[ -n $PROXY_PID ]] && read -ra p1 <<<"$(cpu_ticks "$PROXY_PID")"
    read -r b1 _ <<<"$(cpu_ticks "${BACKEND_PID[$sc]}" | awk '{print $1 + $2}')"
    mbps=$(kv mbps <<<"$res")
    bytes=$(kv bytes <<<"$res")
    client=$(awk -v hz="$CLK_TCK" '/^CLIENT_CPU/ {printf "%d", ($2 + $3) * hz}' <<<"$res")
    record "$sc" "$name" "$round" bulk_mbps "$mbps"
    local proxy=$((p1[0] + p1[1] - p0[0] - p0[1]))
    record "$sc" "$name" "$round" path_cpu_s_per_gb "$(per_gb $((client + b1 - b0 + proxy)) "$bytes")"
    if [[ -n $PROXY_PID ]]; then
        record "$sc" "$name" "$round" cpu_s_per_gb "$(per_gb "$proxy" "$bytes")"
        record "$sc" "$name" "$round" cpu_user_s_per_gb "$(per_gb $((p1[0] - p0[0])) "$bytes")"
    fi
    log "  bulk $mbps MB/s"
}

measure_rate() {
    local sc=$1 name=$2 round=$3 res p0=(0 0) p1=(0 0) conns b0 b1 client
    [[ -n $PROXY_PID ]] && read -ra p0 <<<"$(cpu_ticks "$PROXY_PID")"
    read -r b0 _ <<<"$(cpu_ticks "${BACKEND_PID[$sc]}" | awk '{print $1 + $2}')"
    # shellcheck disable=SC2046
    res=$( { TIMEFORMAT='CLIENT_CPU %U %S'; time timeout $((RATE_SECONDS + 120)) "$LOADGEN" rate $(client_args) \
        --seconds "$RATE_SECONDS" --parallel "$RATE_PARALLEL" 2>>"$TMP/loadgen.err"; } 2>&1) ||
        die "rate via $sc/$name failed: $(tail -3 "$TMP/loadgen.err")"
    [[ -n $PROXY_PID ]] && read -ra p1 <<<"$(cpu_ticks "$PROXY_PID")"
    read -r b1 _ <<<"$(cpu_ticks "${BACKEND_PID[$sc]}" | awk '{print $1 + $2}')"
    client=$(awk -v hz="$CLK_TCK" '/^CLIENT_CPU/ {printf "%d", ($2 + $3) * hz}' <<<"$res")
    conns=$(kv conns <<<"$res")
    [[ $conns -gt 0 ]] && record "$sc" "$name" "$round" path_cpu_us_per_conn \
        "$(per_conn_us $((client + b1 - b0 + p1[0] + p1[1] - p0[0] - p0[1])) "$conns")"
    record "$sc" "$name" "$round" cps "$(kv cps <<<"$res")"
    record "$sc" "$name" "$round" rate_p50_ms "$(kv p50_ms <<<"$res")"
    record "$sc" "$name" "$round" rate_errors "$(kv errors <<<"$res")"
    if [[ -n $PROXY_PID && $conns -gt 0 ]]; then
        record "$sc" "$name" "$round" cpu_us_per_conn "$(per_conn_us $((p1[0] + p1[1] - p0[0] - p0[1])) "$conns")"
        record "$sc" "$name" "$round" cpu_user_us_per_conn "$(per_conn_us $((p1[0] - p0[0])) "$conns")"
    fi
    log "  $(kv cps <<<"$res") conn/s (p50 $(kv p50_ms <<<"$res") ms under load), errors $(kv errors <<<"$res")"
}

measure_latency() {
    local sc=$1 name=$2 round=$3 res m
    # shellcheck disable=SC2046
    res=$(timeout $((2 * LAT_SECONDS + 120)) "$LOADGEN" latency $(client_args) --seconds "$LAT_SECONDS" \
        2>>"$TMP/loadgen.err") || die "latency via $sc/$name failed: $(tail -3 "$TMP/loadgen.err")"
    for m in setup_p50_ms setup_p99_ms rtt_p50_ms rtt_p99_ms; do
        record "$sc" "$name" "$round" "$m" "$(kv "$m" <<<"$res")"
    done
    log "  setup p50 $(kv setup_p50_ms <<<"$res") ms, p99 $(kv setup_p99_ms <<<"$res") ms; RTT p50 $(kv rtt_p50_ms <<<"$res") ms"
}

run_one() {
    local sc=$1 name=$2 round=$3 idle
    start_proxy "$sc" "$name"
    if [[ -n $PROXY_PID ]]; then
        idle=$(rss_kib "$PROXY_PID")
        record "$sc" "$name" "$round" idle_rss_kib "$idle"
        measure_hold "$sc" "$name" "$round" "$idle"
    fi
    measure_bulk "$sc" "$name" "$round"
    measure_rate "$sc" "$name" "$round"
    measure_latency "$sc" "$name" "$round"
    [[ -n $PROXY_PID ]] && stop_pid "$PROXY_PID"
    PROXY_PID=
    sleep 1 # let TIME_WAIT and stray threads settle between paths
}

# Each reads its input to the end: a reader that quits early (head -1, grep -m1) can kill the
# writer with SIGPIPE, and under pipefail that ends the whole run.
version_of() {
    case $1 in
        sidegate) echo "sidegate $(git rev-parse --short HEAD 2>/dev/null || echo '?') ($SIDEGATE_TARGET)" ;;
        haproxy) haproxy -v 2>/dev/null | awk 'NR == 1 {print $1, $2, $3}' ;;
        sniproxy) sniproxy -V 2>&1 | sed -n 1p ;;
        nginx) nginx -v 2>&1 | sed 's/.*: //' ;;
        stunnel) stunnel4 -version 2>&1 | awk '/^stunnel/ && !seen++ {print $1, $2}' ;;
    esac
}

measure_all() {
    install_missing
    build
    # 1000 held connections through a proxy are 2000+ descriptors per process.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    [[ $(ulimit -n) == unlimited || $(ulimit -n) -ge $((2 * HOLD_COUNT + 100)) ]] ||
        die "open-file limit $(ulimit -n) too low for HOLD_COUNT=$HOLD_COUNT"
    if [[ $(cat /proc/sys/net/ipv4/tcp_tw_reuse 2>/dev/null || echo 0) == 0 ]]; then
        log "warning: net.ipv4.tcp_tw_reuse=0; the rate test may run out of local ports"
    fi
    local p
    for p in $BASE_PORT $((BASE_PORT + 1)) "${PORT[@]}"; do
        port_free "$p" || die "port $p is in use (set BASE_PORT)"
    done
    write_configs
    start_backends

    local versions="" name started=$SECONDS
    for name in $(printf '%s\n' $PASSTHROUGH $ORIGINATION | grep -v direct | sort -u); do
        versions+="${versions:+; }$(version_of "$name")"
    done
    meta date "$(date -u +%Y-%m-%d)"
    meta machine "$(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r), loopback"
    meta versions "$versions"
    meta command "ROUNDS=$ROUNDS BULK_MB=$BULK_MB BULK_CONNS=$BULK_CONNS RATE_SECONDS=$RATE_SECONDS RATE_PARALLEL=$RATE_PARALLEL LAT_SECONDS=$LAT_SECONDS HOLD_COUNT=$HOLD_COUNT PROXY_THREADS=$PROXY_THREADS tests/bench/run.sh"
    meta rounds "$ROUNDS"
    meta warm "$WARM_COUNT"
    meta bulk "$BULK_CONNS connections each sending then receiving $BULK_MB MiB"
    meta rate "${RATE_SECONDS} s, $RATE_PARALLEL parallel clients"
    meta hold "$HOLD_COUNT"

    log "rounds=$ROUNDS bulk=${BULK_CONNS}x${BULK_MB}MiB each way rate=${RATE_SECONDS}s x$RATE_PARALLEL latency=${LAT_SECONDS}s hold=$HOLD_COUNT"
    local round sc
    for round in $(seq "$ROUNDS"); do
        for sc in $SCENARIOS; do
            # shellcheck disable=SC2046
            for name in $(rotated "$round" $(paths_of "$sc")); do
                log "round $round/$ROUNDS: $sc $name"
                run_one "$sc" "$name" "$round"
            done
        done
    done
    meta duration "$(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s"
}

# ------------------------------------------------------------------ report

if [[ -n ${REPORT_FROM:-} ]]; then
    cp "$REPORT_FROM" "$RAW"
else
    measure_all
fi

median() { # median SCENARIO PATH METRIC → value or empty
    awk -F'\t' -v s="$1" -v n="$2" -v m="$3" '$1 == s && $2 == n && $4 == m && $5 != "" {print $5}' "$RAW" |
        sort -g | awk '{v[NR] = $1} END {if (NR == 0) exit; if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
# medians_into SCENARIO PATH VAR=METRIC...: sets each (caller's local) VAR to that median.
medians_into() {
    local sc=$1 name=$2 pair
    shift 2
    for pair in "$@"; do
        printf -v "${pair%%=*}" '%s' "$(median "$sc" "$name" "${pair#*=}")"
    done
}
meta_of() { awk -F'\t' -v k="$1" '$1 == "meta" && $2 == k {print $5; exit}' "$RAW"; }
calc() { awk "BEGIN {print $1}"; }
num() { awk "BEGIN {printf \"%.$2f\", $1}"; }
fmt() { awk -v v="$1" -v d="$2" 'BEGIN {if (v == "") print "—"; else printf "%.*f\n", d, v}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "" || b == "" || b == 0) print ""; else printf " (×%.2f)", a / b}'; }
delta() { awk -v a="$1" -v b="$2" -v k="$3" -v d="$4" 'BEGIN {if (a == "" || b == "") print ""; else printf " (%+.*f)", d, (a - b) * k}'; }
scenario_paths() { awk -F'\t' -v s="$1" '$1 == s && !seen[$2]++ {print $2}' "$RAW"; }

table() { # table SCENARIO
    local sc=$1 name d_bulk d_cps d_setup d_rtt
    d_bulk=$(median "$sc" direct bulk_mbps)
    d_cps=$(median "$sc" direct cps)
    d_setup=$(median "$sc" direct setup_p50_ms)
    d_rtt=$(median "$sc" direct rtt_p50_ms)
    [[ -n $d_rtt ]] && d_rtt=$(calc "$d_rtt * 1000")
    echo "| path | bulk MB/s | new conn/s | setup p50 / p99 ms | request RTT p50 µs | idle RSS MiB | RSS per held conn KiB | proxy CPU s/GB |"
    echo "|---|---|---|---|---|---|---|---|"
    for name in $(scenario_paths "$sc"); do
        local bulk cps s50 s99 rtt idle per cpu label=$name
        medians_into "$sc" "$name" bulk=bulk_mbps cps=cps s50=setup_p50_ms s99=setup_p99_ms \
            rtt=rtt_p50_ms idle=idle_rss_kib per=per_conn_kib cpu=cpu_s_per_gb
        [[ -n $idle ]] && idle=$(calc "$idle / 1024")
        [[ -n $rtt ]] && rtt=$(calc "$rtt * 1000")
        if [[ $name == direct ]]; then
            echo "| direct (reference) | $(fmt "$bulk" 0) | $(fmt "$cps" 0) | $(fmt "$s50" 2) / $(fmt "$s99" 2) | $(fmt "$rtt" 0) | — | — | — |"
        else
            [[ $name == sidegate ]] && label="**sidegate**"
            echo "| $label | $(fmt "$bulk" 0)$(ratio "$bulk" "$d_bulk") | $(fmt "$cps" 0)$(ratio "$cps" "$d_cps") | $(fmt "$s50" 2)$(delta "$s50" "$d_setup" 1 2) / $(fmt "$s99" 2) | $(fmt "$rtt" 0)$(delta "$rtt" "$d_rtt" 1 0) | $(fmt "$idle" 2) | $(fmt "$per" 2) | $(fmt "$cpu" 2) |"
        fi
    done
    return 0
}

cpu_table() { # cpu_table SCENARIO
    local sc=$1 name
    echo "| path | whole path CPU s/GB | proxy CPU s/GB (user part) | whole path CPU µs per new conn | proxy CPU µs per new conn (user part) |"
    echo "|---|---|---|---|---|"
    for name in $(scenario_paths "$sc"); do
        local path_gb gb ugb path_c c uc
        medians_into "$sc" "$name" path_gb=path_cpu_s_per_gb gb=cpu_s_per_gb ugb=cpu_user_s_per_gb \
            path_c=path_cpu_us_per_conn c=cpu_us_per_conn uc=cpu_user_us_per_conn
        if [[ $name == direct ]]; then
            echo "| direct | $(fmt "$path_gb" 2) | — | $(fmt "$path_c" 0) | — |"
        else
            echo "| $name | $(fmt "$path_gb" 2) | $(fmt "$gb" 2) ($(fmt "$ugb" 2)) | $(fmt "$path_c" 0) | $(fmt "$c" 0) ($(fmt "$uc" 0)) |"
        fi
    done
    return 0
}

# The ratio to direct a CPU-bound path can reach at most: direct's whole-path CPU over this
# path's (same work, one more process and TCP hop), as text for the targets table.
cpu_bound() { # cpu_bound SCENARIO PATH METRIC
    local d p
    d=$(median "$1" direct "$3")
    p=$(median "$1" "$2" "$3")
    [[ -n $d && -n $p ]] || return 0
    echo "; with every core busy at most ×$(num "$d / $p" 2) (whole-path CPU $(num "$p" 2) vs direct $(num "$d" 2))"
}

# target LABEL VALUE-TEXT CONDITION(awk expression, empty when unmeasured)
target_row() {
    local ok
    if [[ -z $3 ]]; then ok="not measured"
    elif awk "BEGIN {exit !($3)}"; then ok="**yes**"
    else ok="**no**"; fi
    echo "| $1 | $2 | $ok |"
}
targets() {
    local sg ha dir v best=0 bestname="" n
    echo "| target | sidegate | held? |"
    echo "|---|---|---|"
    if [[ -n $(scenario_paths passthrough) ]]; then
        local p=passthrough
        sg=$(median $p sidegate bulk_mbps); ha=$(median $p haproxy bulk_mbps); dir=$(median $p direct bulk_mbps)
        [[ -n $sg && -n $ha ]] && target_row "passthrough bulk ≥ 1.25× HAProxy" "×$(num "$sg / $ha" 2)" "$sg >= 1.25 * $ha"
        [[ -n $sg && -n $dir ]] && target_row "passthrough bulk ≥ 0.9× direct" \
            "×$(num "$sg / $dir" 2)$(cpu_bound $p sidegate path_cpu_s_per_gb)" "$sg >= 0.9 * $dir"
        sg=$(median $p sidegate cps); dir=$(median $p direct cps)
        [[ -n $sg && -n $dir ]] && target_row "new conn/s ≥ 0.95× direct" \
            "×$(num "$sg / $dir" 2)$(cpu_bound $p sidegate path_cpu_us_per_conn)" "$sg >= 0.95 * $dir"
        sg=$(median $p sidegate rtt_p50_ms); ha=$(median $p haproxy rtt_p50_ms); dir=$(median $p direct rtt_p50_ms)
        [[ -n $sg && -n $ha && -n $dir ]] && target_row "request RTT overhead ≤ HAProxy's" \
            "+$(num "($sg - $dir) * 1000" 0) µs (HAProxy +$(num "($ha - $dir) * 1000" 0) µs)" "$sg <= $ha"
        v=$(median $p sidegate idle_rss_kib)
        [[ -n $v ]] && target_row "idle RSS ≤ 2 MiB" "$(num "$v / 1024" 2) MiB" "$v <= 2048"
        v=$(median $p sidegate per_conn_kib)
        [[ -n $v ]] && target_row "≤ 2 KiB per held passthrough connection" "$v KiB" "$v <= 2"
    fi
    if [[ -n $(scenario_paths origination) ]]; then
        local o=origination
        sg=$(median $o sidegate bulk_mbps); dir=$(median $o direct bulk_mbps)
        [[ -n $sg && -n $dir ]] && target_row "origination bulk ≥ 0.6× direct" "×$(num "$sg / $dir" 2)" "$sg >= 0.6 * $dir"
        for n in $(scenario_paths $o); do
            [[ $n == direct || $n == sidegate ]] && continue
            v=$(median $o "$n" bulk_mbps)
            [[ -n $v ]] && awk "BEGIN {exit !($v > $best)}" && best=$v bestname=$n
        done
        [[ -n $sg && -n $bestname ]] && target_row "origination bulk ≥ 1.1× the best peer ($bestname)" "×$(num "$sg / $best" 2)" "$sg >= 1.1 * $best"
        v=$(median $o sidegate per_conn_kib)
        [[ -n $v ]] && target_row "≤ 16 KiB per held originated connection" "$v KiB" "$v <= 16"
        sg=$(median $o sidegate setup_p50_ms); dir=$(median $o direct setup_p50_ms)
        [[ -n $sg && -n $dir ]] && target_row "≤ 1 ms added to connection setup (p50)" "+$(num "$sg - $dir" 2) ms" "$sg - $dir <= 1"
    fi
    return 0
}

mkdir -p "$OUT_DIR"
MD=$OUT_DIR/bench.md
{
    echo "Measured $(meta_of date) on $(meta_of machine): $(meta_of versions)."
    echo "Command: \`$(meta_of command)\`$( [[ -n $(meta_of duration) ]] && echo " ($(meta_of duration))")."
    echo "Medians of $(meta_of rounds) interleaved rounds. (×N) = ratio to direct, (+N) = added to direct."
    echo "Bulk: $(meta_of bulk) (payload MB/s, 1 MB = 10^6 B). New conn/s: $(meta_of rate), each a full"
    echo "handshake (TLS 1.3, ECDSA P-256, no resumption) + one 32-byte echo + orderly close."
    echo "Setup: one client connecting serially, connect → first echo answered (includes the proxy's"
    echo "own handshake when it originates). Request RTT: 32-byte echoes on one open connection."
    echo "RSS: VmRSS of all the proxy's processes; per held conn = (RSS with $(meta_of hold) held − RSS after $(meta_of warm) were held and closed) / held."
    echo "CPU: the proxy's utime+stime during bulk / GB moved."
    for sc in passthrough origination; do
        [[ -n $(scenario_paths $sc) ]] || continue
        echo
        case $sc in
            passthrough) echo "**SNI passthrough** (client → proxy → TLS backend; nothing decrypted):" ;;
            origination) echo "**mTLS origination** (plaintext client → proxy → mTLS backend; direct = the client does the mTLS):" ;;
        esac
        echo
        table "$sc"
    done
    echo
    echo "**Where the CPU goes** (same runs: bulk, and the new-connection test; whole path ="
    echo "client + backend + proxy; the proxy's user-space part in brackets, the rest is kernel):"
    for sc in passthrough origination; do
        [[ -n $(scenario_paths $sc) ]] || continue
        echo
        echo "$sc:"
        echo
        cpu_table "$sc"
    done
    echo
    echo "**Targets** (issues 3 and 7):"
    echo
    targets
} >"$MD"
[[ -z ${REPORT_FROM:-} ]] && cp "$RAW" "$OUT_DIR/bench-raw.tsv"

echo
cat "$MD"
echo
if [[ -n ${REPORT_FROM:-} ]]; then
    log "written to $MD (from $REPORT_FROM)"
else
    log "written to $MD (raw samples: $OUT_DIR/bench-raw.tsv)"
fi
