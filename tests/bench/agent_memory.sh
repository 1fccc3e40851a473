#!/usr/bin/env bash
# Memory through a real agent: a mesh gateway (`sidegate run`, `[consul] gateway_service_id`)
# following a Consul 1.8.7 `-dev` agent that holds SERVICES connect services of INSTANCES
# sidecar-proxy instances each, measured as an operator sees it (VmRSS of the process):
#
#   1. at start: once `/config` shows every route and the process is idle, RSS settled;
#   2. after each of ANSWERS unchanged answers, idle again, RSS settled.
#
# An unchanged answer: one instance's check is re-registered passing with a new output. That
# moves the agent's check index, so the gateway's blocking query on /v1/health/state/any
# returns (every check in the datacenter, several MB of JSON at 10,000 services) and the
# gateway fetches /v1/health/connect/<that service> once more; nothing it routes on changed.
# Each answer is waited for in the agent's debug log (its "Request finished" lines for
# /v1/health/state/any with an index, i.e. a blocking query that returned).
#
#   tests/bench/agent_memory.sh                          # the shipped static x86_64 build
#   SIDEGATE_BINARY=/path/to/sidegate tests/bench/agent_memory.sh
#
# Environment: SERVICES (9999: with the agent's own `consul` service the partition holds
# 10,000 names, the most a gateway routes; more and the last ones are left out, by design), INSTANCES (3), ANSWERS (20), GROWTH_PCT (5),
# REGISTER_BUDGET (300: seconds for registering; services are registered 1,000 at a time and
# the script stops adding when the next thousand would not fit, and says so), SIDEGATE_TARGET
# (x86_64-unknown-linux-musl, or "host"), SIDEGATE_BINARY (build nothing).
# The services are registered through the catalog API (as tests/consul_agent/scale.rs does:
# each service on one of 50 nodes, each instance a `<name>-sidecar-proxy` with one check)
# over four keep-alive connections, before the gateway starts. Exit 1 when RSS after the
# answers is more than GROWTH_PCT above the start.
set -euo pipefail
cd "$(dirname "$0")/../.."

SERVICES=${SERVICES:-9999}
INSTANCES=${INSTANCES:-3}
ANSWERS=${ANSWERS:-20}
GROWTH_PCT=${GROWTH_PCT:-5}
REGISTER_BUDGET=${REGISTER_BUDGET:-300}
SIDEGATE_TARGET=${SIDEGATE_TARGET:-x86_64-unknown-linux-musl}

log() { echo "agent_memory: $*" >&2; }

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

# Free loopback ports (TCP; the serf ports also UDP), from the kernel.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
held, out = [], []
while len(out) < int(sys.argv[1]):
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p))
    except OSError:
        continue
    held += [t, u]; out.append(p)
print(*out)
EOF
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Waits (at most 600 s) until the process is idle: under 5 ticks of CPU in 2 s. Routes are in
# service before the gateway has digested the first answers (at 10,000 services its fleet
# thread works for a minute or more after them, with later answers queued), and RSS taken
# then is not the state at rest.
idle() {
    local pid=$1 a b i
    a=$(cpu_ticks "$pid")
    for ((i = 0; i < 300; i++)); do
        sleep 2
        b=$(cpu_ticks "$pid")
        ((b - a < 5)) && return 0
        a=$b
    done
    log "process $pid still busy after 600 s"
}

# RSS once it holds still: the same (±16 KiB) over two samples a second apart, at most 20 s.
settled_rss() {
    local pid=$1 a b i
    a=$(rss_kib "$pid")
    for ((i = 0; i < 20; i++)); do
        sleep 1
        b=$(rss_kib "$pid")
        ((b - a <= 16 && a - b <= 16)) && break
        a=$b
    done
    echo "$b"
}

# Registers services `svc-<i>` with INSTANCES proxy instances each (catalog API, four
# keep-alive connections), 1,000 at a time within REGISTER_BUDGET seconds; prints the count.
register() {
    python3 - "$1" "$SERVICES" "$INSTANCES" "$REGISTER_BUDGET" <<'EOF'
import http.client, json, sys, threading, time
port, services, instances, budget = (int(a) for a in sys.argv[1:])

def bodies(i):
    name = f"svc-{i}"
    out = [{"Node": f"node-{i % 50}", "Address": "127.0.0.1",
            "Service": {"ID": name, "Service": name, "Port": 8080, "Address": "127.0.0.1"}}]
    for j in range(instances):
        pid = f"{name}-sidecar-proxy-{j}"
        out.append({
            "Node": f"node-{(i * instances + j) % 50}", "Address": "127.0.0.1",
            "Service": {"ID": pid, "Service": f"{name}-sidecar-proxy", "Kind": "connect-proxy",
                        "Port": 20000 + j, "Address": f"10.{j + 1}.{i // 250}.{i % 250 + 1}",
                        "Proxy": {"DestinationServiceName": name, "DestinationServiceID": name}},
            "Check": {"CheckID": f"{pid}:alive", "Name": "alive", "Status": "passing",
                      "ServiceID": pid}})
    return out

def worker(chunk):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for b in chunk:
        c.request("PUT", "/v1/catalog/register", json.dumps(b),
                  {"Content-Type": "application/json"})
        r = c.getresponse(); body = r.read()
        if r.status != 200:
            sys.exit(f"register: {r.status} {body!r}")

start, done, step = time.monotonic(), 0, 1000
while done < services:
    n = min(step, services - done)
    t = time.monotonic()
    chunks = [[] for _ in range(4)]
    for i in range(done, done + n):
        chunks[i % 4].extend(bodies(i))
    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for th in threads: th.start()
    for th in threads: th.join()
    done += n
    took = time.monotonic() - t
    print(f"agent_memory: {done} services registered, {time.monotonic() - start:.0f} s "
          f"(last thousand {took:.1f} s)", file=sys.stderr)
    if done < services and time.monotonic() - start + took * 1.2 > budget:
        print(f"agent_memory: stopping at {done} services: the next thousand would pass "
              f"REGISTER_BUDGET={budget} s", file=sys.stderr)
        break
print(done)
EOF
}

# The routes of `svc-*` in the gateway's plan in service.
routes() {
    curl -fsS "$1/config" | python3 -c '
import json, sys
plan = json.load(sys.stdin)
print(sum(1 for r in plan.get("gateway", {}).get("routes", []) if str(r.get("match", "")).startswith("svc-")))'
}

# One instance's check re-registered passing with another output.
touch_check() {
    local http=$1 i=$2 k=$3 pid="svc-$2-sidecar-proxy-0"
    curl -fsS -X PUT "$http/v1/catalog/register" -d "{
        \"Node\": \"node-$(((i * INSTANCES) % 50))\", \"Address\": \"127.0.0.1\",
        \"Service\": {\"ID\": \"$pid\", \"Service\": \"svc-$i-sidecar-proxy\", \"Kind\": \"connect-proxy\",
            \"Port\": 20000, \"Address\": \"10.1.$((i / 250)).$((i % 250 + 1))\",
            \"Proxy\": {\"DestinationServiceName\": \"svc-$i\", \"DestinationServiceID\": \"svc-$i\"}},
        \"Check\": {\"CheckID\": \"$pid:alive\", \"Name\": \"alive\", \"Status\": \"passing\",
            \"ServiceID\": \"$pid\", \"Output\": \"unchanged answer $k\"}}" >/dev/null
}

# Blocking queries on the checks that the agent answered so far.
answered() { grep -c 'Request finished.*url=/v1/health/state/any?.*index=' "$1" || true; }

work="" gateway="" agent=""
cleanup() {
    [[ -z $gateway ]] || kill "$gateway" 2>/dev/null || true
    [[ -z $agent ]] || kill "$agent" 2>/dev/null || true
    wait 2>/dev/null || true
    [[ -z $work ]] || rm -rf "$work"
}
trap cleanup EXIT

main() {
    local bin ports http admin lan n i before start after rss worst
    command -v consul >/dev/null || bash tests/consul/install.sh
    bin=$(realpath "$(build)")
    work=$(mktemp -d "${TMPDIR:-/tmp}/sidegate-agent-memory.XXXXXX")
    read -r -a ports <<<"$(free_ports 6)"
    http="http://127.0.0.1:${ports[0]}"
    lan=${ports[4]}
    admin="http://127.0.0.1:${ports[5]}"
    log "binary $bin; $(consul version | head -1); load average $(cut -d' ' -f1-3 /proc/loadavg)"

    consul agent -dev -datacenter=dc1 -node=agent-memory -bind=127.0.0.1 -client=127.0.0.1 \
        -http-port="${ports[0]}" -serf-lan-port="${ports[1]}" -serf-wan-port="${ports[2]}" \
        -server-port="${ports[3]}" -dns-port=-1 -grpc-port=-1 \
        -hcl='disable_update_check = true' -log-level=debug >"$work/consul.log" 2>&1 &
    agent=$!
    for ((i = 0; i < 300; i++)); do
        curl -fsS "$http/v1/agent/connect/ca/roots" 2>/dev/null | grep -q '"RootCert"' && break
        kill -0 "$agent" 2>/dev/null || { tail -20 "$work/consul.log" >&2; return 1; }
        sleep 0.2
    done

    n=$(register "${ports[0]}")
    curl -fsS -X PUT "$http/v1/agent/service/register" -d "{
        \"Kind\": \"mesh-gateway\", \"ID\": \"mesh-gateway\", \"Name\": \"mesh-gateway\",
        \"Address\": \"127.0.0.1\", \"Port\": $lan,
        \"TaggedAddresses\": {\"lan\": {\"Address\": \"127.0.0.1\", \"Port\": $lan},
                              \"wan\": {\"Address\": \"127.0.0.1\", \"Port\": $lan}},
        \"Check\": {\"CheckID\": \"mesh-gateway-alive\", \"Name\": \"alive\", \"TTL\": \"24h\",
                    \"Status\": \"passing\"}}"
    mkdir "$work/state"
    chmod 700 "$work/state"
    printf '[consul]\naddress = "http://127.0.0.1:%d"\ngateway_service_id = "mesh-gateway"\nstate_dir = "%s"\n[gateway]\n[admin]\nlisten = "127.0.0.1:%d"\n' \
        "${ports[0]}" "$work/state" "${ports[5]}" >"$work/gateway.toml"

    local t0=$SECONDS
    "$bin" run --config "$work/gateway.toml" 2>"$work/sidegate.log" &
    gateway=$!
    # A gateway routes at most 10,000 names, by name; a proxy's name not yet known as one
    # can hold a place for a while, so at the cap the count may settle a little below n.
    local got last=-1 same=0
    for ((i = 0; ; i++)); do
        kill -0 "$gateway" 2>/dev/null || { tail -20 "$work/sidegate.log" >&2; return 1; }
        got=$(routes "$admin" 2>/dev/null || echo 0)
        ((got == n)) && break
        if ((got == last && got > 0)) && grep -q "by name only" "$work/sidegate.log"; then
            ((++same >= 5)) && { log "at the gateway's cap: $got of $n services routed"; n=$got; break; }
        else
            same=0
        fi
        last=$got
        ((SECONDS - t0 < 600)) || { log "no $n routes within 600 s"; return 1; }
        sleep 2
    done
    log "$n routes in service $((SECONDS - t0)) s after start"
    idle "$gateway"
    log "idle $((SECONDS - t0)) s after start"
    start=$(settled_rss "$gateway")
    worst=$start
    log "RSS at start $start KiB"

    for ((k = 1; k <= ANSWERS; k++)); do
        before=$(answered "$work/consul.log")
        touch_check "$http" $(((k * 7919) % n)) "$k"
        for ((i = 0; i < 600; i++)); do
            (($(answered "$work/consul.log") > before)) && break
            sleep 0.1
        done
        (($(answered "$work/consul.log") > before)) ||
            { log "answer $k: the gateway's blocking query did not return"; return 1; }
        idle "$gateway"
        rss=$(settled_rss "$gateway")
        ((rss > worst)) && worst=$rss
        log "answer $k: RSS $rss KiB"
    done
    after=$rss
    # Nothing it routes changed: still every route, and the agent answered each time.
    local still
    still=$(routes "$admin")
    ((still == n)) || { log "routes after the answers: $still, not $n"; return 1; }

    local growth=$(((after - start) * 1000 / start))
    local pct
    pct=$(printf '%+d.%d' $((growth / 10)) $(((growth < 0 ? -growth : growth) % 10)))
    printf '\n| services | instances | RSS at start (KiB) | after %d unchanged answers (KiB) | highest (KiB) | growth |\n' "$ANSWERS"
    printf '|---:|---:|---:|---:|---:|---:|\n'
    printf '| %d | %d | %d | %d | %d | %s %% |\n' "$n" $((n * INSTANCES)) "$start" "$after" "$worst" "$pct"
    printf '\nblocking queries on /v1/health/state/any answered: %d; load average %s\n' \
        "$(answered "$work/consul.log")" "$(cut -d' ' -f1-3 /proc/loadavg)"
    ((growth <= GROWTH_PCT * 10)) || { log "grew more than $GROWTH_PCT %"; return 1; }
}

main "$@"
