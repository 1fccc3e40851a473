#!/usr/bin/env bash
# Every core: the benchmark (run.sh) at one and at two event loops per proxy, each with one and
# with four concurrent bulk streams, rendered as one table with the multi-core targets.
#
#   tests/bench/cores.sh                          # as root or with sudo: ~35 min on 2 cores
#   SIDEGATE_BASELINE=path tests/bench/cores.sh   # also sidegate at threads = 1 against that
#                                                 # binary (an older commit's), +10 min
#   REPORT_FROM=DIR tests/bench/cores.sh          # re-render the runs saved in DIR
#   CORES_RUNS=baseline SIDEGATE_BASELINE=path tests/bench/cores.sh   # only the baseline runs,
#                                                 # beside the saved matrix runs
#   CORES_RUNS=rate tests/bench/cores.sh          # only the rate series (~8 min)
#
# The four runs are run.sh at PROXY_THREADS=1 and 2 (HAProxy nbthread, nginx worker_processes,
# sidegate `[runtime] threads`; sniproxy runs one process and stunnel a thread per connection),
# each with BULK_CONNS=1 and 4; every other knob of run.sh passes through. Targets that compare
# contenders are judged within one run (the proxies interleaved round by round). With
# SIDEGATE_BASELINE, sidegate alone runs at threads = 1 against the baseline binary, the two
# alternating run by run for three rounds, for "threads = 1 no slower than before".
# The rate series is one more run for "new conn/s through the gateway ≥ the best peer's": the
# passthrough paths alone at two loops, RATE_ROUNDS rounds (8) with short bulk, hold and
# latency steps. In the matrix runs that target rests on six rate samples per proxy, taken
# minutes apart on a VM whose rate moves ±7 % from round to round; the series gives it eight,
# a minute apart, judged as every target is (medians within the run), with each round's
# ratio to the best peer beside them to show how far apart the rounds are.
# Output: Markdown on stdout and in $CARGO_TARGET_DIR/bench/cores/cores.md; each run's raw
# samples (run.sh's bench-raw.tsv) beside it as t<threads>-c<streams>.tsv, base-*.tsv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${REPORT_FROM:-$TARGET_DIR/bench/cores}
log() { echo "[cores] $*" >&2; }

# run NAME [VAR=VALUE...]: one run.sh run, its raw samples saved as $OUT/NAME.tsv.
run() {
    local name=$1
    shift
    log "$name: $*"
    env "$@" tests/bench/run.sh >/dev/null
    cp "$TARGET_DIR/bench/bench-raw.tsv" "$OUT/$name.tsv"
}

CORES_RUNS=${CORES_RUNS:-matrix rate${SIDEGATE_BASELINE:+ baseline}}
if [[ -z ${REPORT_FROM:-} ]]; then
    mkdir -p "$OUT"
    if [[ " $CORES_RUNS " == *" matrix "* ]]; then
        rm -f "$OUT"/t*.tsv
        for threads in 1 2; do
            for conns in 1 4; do
                run "t$threads-c$conns" PROXY_THREADS=$threads BULK_CONNS=$conns
            done
        done
    fi
    if [[ " $CORES_RUNS " == *" rate "* ]]; then
        rm -f "$OUT"/rate.tsv
        run rate PROXY_THREADS=2 SCENARIOS=passthrough ROUNDS="${RATE_ROUNDS:-8}" BULK_CONNS=4 \
            BULK_MB=16 WARM_COUNT=20 HOLD_COUNT=100 LAT_SECONDS=1
    fi
    if [[ " $CORES_RUNS " == *" baseline "* ]]; then
        rm -f "$OUT"/base-*.tsv
        [[ -n ${SIDEGATE_BASELINE:-} ]] || { log "CORES_RUNS=baseline needs SIDEGATE_BASELINE"; exit 1; }
        only=(PASSTHROUGH=sidegate ORIGINATION=sidegate PROXY_THREADS=1 ROUNDS=1)
        for round in 1 2 3; do
            for conns in 1 4; do
                # A binary older than `[runtime]` refuses the key; it has one loop anyway.
                run "base-old-c$conns-r$round" "${only[@]}" BULK_CONNS=$conns \
                    SIDEGATE_BINARY="$SIDEGATE_BASELINE" SIDEGATE_RUNTIME_KEY=0
                run "base-new-c$conns-r$round" "${only[@]}" BULK_CONNS=$conns
            done
        done
    fi
fi

python3 - "$OUT" >"$OUT/cores.md" <<'PY'
import csv, glob, os, statistics, sys

out = sys.argv[1]
runs = {}  # name -> list of (scenario, path, round, metric, value)
for f in sorted(glob.glob(os.path.join(out, "*.tsv"))):
    with open(f) as fh:
        runs[os.path.basename(f)[:-4]] = list(csv.reader(fh, delimiter="\t"))

def samples(names, scenario, path, metric):
    vals = []
    for n in names:
        for row in runs.get(n, []):
            if len(row) == 5 and row[0] == scenario and row[1] == path and row[3] == metric and row[4]:
                vals.append(float(row[4]))
    return vals

def med(names, scenario, path, metric):
    vals = samples(names, scenario, path, metric)
    return statistics.median(vals) if vals else None

def meta(name, key):
    for row in runs.get(name, []):
        if len(row) == 5 and row[0] == "meta" and row[1] == key:
            return row[4]
    return ""

def f(v, d=0):
    return "—" if v is None else f"{v:.{d}f}"

matrix = [f"t{t}-c{c}" for t in (1, 2) for c in (1, 4)]
missing = [n for n in matrix if n not in runs]
if missing:
    sys.exit(f"cores: runs missing in {out}: {' '.join(missing)}")

print(f"Measured {meta('t2-c4', 'date')} on {meta('t2-c4', 'machine')}: {meta('t2-c4', 'versions')}.")
print("Four runs of `tests/bench/run.sh` (`tests/bench/cores.sh`): loops = PROXY_THREADS (HAProxy "
      "`nbthread`, nginx `worker_processes`, sidegate `[runtime] threads`), "
      "streams = BULK_CONNS; every other knob at its default. Medians of each run's rounds; new conn/s, "
      "idle RSS and per held connection pool the two runs of a loop count (the same measurement). "
      "sniproxy runs one process and stunnel a thread per connection in every run.")
LABEL = {"haproxy": "HAProxy", "nginx": "nginx", "sniproxy": "sniproxy", "stunnel": "stunnel",
         "sidegate": "**sidegate**", "direct": "direct"}
for sc, title in (("passthrough", "SNI passthrough"), ("origination", "mTLS origination")):
    paths = []
    for row in runs["t2-c4"]:
        if row[0] == sc and row[1] not in paths:
            paths.append(row[1])
    print(f"\n**{title}**\n")
    print("| path | loops | bulk MB/s, 1 stream | bulk MB/s, 4 streams | proxy CPU s/GB, 1 / 4 streams "
          "| new conn/s | idle RSS MiB | RSS per held conn KiB |")
    print("|---|---|---|---|---|---|---|---|")
    for p in paths:
        for t in ((1,) if p == "direct" else (1, 2)):
            one, four, both = [f"t{t}-c1"], [f"t{t}-c4"], [f"t{t}-c1", f"t{t}-c4"]
            idle = med(both, sc, p, "idle_rss_kib")
            # sniproxy (one process) and stunnel (a thread per connection) have no loop setting.
            loops = "—" if p == "direct" else f"— (the {t}-loop runs)" if p in ("sniproxy", "stunnel") else str(t)
            print(f"| {LABEL.get(p, p)} | {loops} | {f(med(one, sc, p, 'bulk_mbps'))} | "
                  f"{f(med(four, sc, p, 'bulk_mbps'))} | {f(med(one, sc, p, 'cpu_s_per_gb'), 2)} / "
                  f"{f(med(four, sc, p, 'cpu_s_per_gb'), 2)} | {f(med(both, sc, p, 'cps'))} | "
                  f"{f(None if idle is None else idle / 1024, 2)} | {f(med(both, sc, p, 'per_conn_kib'), 2)} |")

rows = []
def target(label, value, held):
    rows.append(f"| {label} | {value} | {'**yes**' if held else '**no**'} |")

T4 = ["t2-c4"]
peers_o = [p for p in ("haproxy", "nginx", "stunnel") if med(T4, "origination", p, "bulk_mbps")]
sg = med(T4, "origination", "sidegate", "bulk_mbps")
best = max(peers_o, key=lambda p: med(T4, "origination", p, "bulk_mbps"))
bv = med(T4, "origination", best, "bulk_mbps")
target(f"origination, 4 streams, 2 loops: ≥ 1.1× the best peer ({best})", f"{sg:.0f} vs {bv:.0f} MB/s: ×{sg / bv:.2f}", sg >= 1.1 * bv)
sc_, st_ = med(T4, "origination", "sidegate", "cpu_s_per_gb"), med(T4, "origination", "stunnel", "cpu_s_per_gb")
target("origination, 4 streams: proxy CPU per GB ≤ stunnel's", f"{sc_:.2f} vs {st_:.2f} s/GB", sc_ <= st_)
sg, ha = med(T4, "passthrough", "sidegate", "bulk_mbps"), med(T4, "passthrough", "haproxy", "bulk_mbps")
target("passthrough, 4 streams: ≥ 1.1× HAProxy `nbthread 2`", f"{sg:.0f} vs {ha:.0f} MB/s: ×{sg / ha:.2f}", sg >= 1.1 * ha)
T2 = ["t2-c1", "t2-c4"]
peers_p = [p for p in ("haproxy", "sniproxy", "nginx") if med(T2, "passthrough", p, "cps")]
cbest = max(peers_p, key=lambda p: med(T2, "passthrough", p, "cps"))
sg, cv = med(T2, "passthrough", "sidegate", "cps"), med(T2, "passthrough", cbest, "cps")
if "rate" in runs:
    R = ["rate"]
    rbest = max(peers_p, key=lambda p: med(R, "passthrough", p, "cps") or 0)
    by_round = lambda p: {row[2]: float(row[4]) for row in runs["rate"]
                          if row[0] == "passthrough" and row[1] == p and row[3] == "cps" and row[4]}
    s_ = by_round("sidegate")
    def round_ratios(p):  # sidegate's rate over p's, round by round, sorted
        mine = by_round(p)
        return sorted(s_[r] / mine[r] for r in s_ if r in mine and mine[r] > 0)
    ratios = round_ratios(rbest)
    rr = statistics.median(ratios)
    print(f"\n**Rate series** (2 loops, passthrough, {len(ratios)} interleaved rounds; "
          f"measured {meta('rate', 'date')}, "
          f"{next((v.strip() for v in meta('rate', 'versions').split(';') if 'sidegate' in v), '')}; "
          "medians; CPU per connection over the rate step):\n")
    print("| path | new conn/s | proxy CPU µs per conn | whole path CPU µs per conn | per-round ×sidegate / this |")
    print("|---|---|---|---|---|")
    for p in [q for q in ("direct", "sidegate", *peers_p) if med(R, "passthrough", q, "cps")]:
        rs = round_ratios(p)
        span = "—" if p == "sidegate" or not rs else f"×{statistics.median(rs):.2f} (×{rs[0]:.2f} – ×{rs[-1]:.2f})"
        print(f"| {LABEL.get(p, p)} | {f(med(R, 'passthrough', p, 'cps'))} | "
              f"{f(med(R, 'passthrough', p, 'cpu_us_per_conn'))} | "
              f"{f(med(R, 'passthrough', p, 'path_cpu_us_per_conn'))} | {span} |")
    sg_r, best_r = med(R, "passthrough", "sidegate", "cps"), med(R, "passthrough", rbest, "cps")
    ahead = sum(1 for r in ratios if r >= 1)
    target(f"new conn/s through the gateway, 2 loops: ≥ the best peer's ({rbest}), rate series",
           f"{sg_r:.0f} vs {best_r:.0f}: ×{sg_r / best_r:.2f}; round by round ×{rr:.2f} "
           f"(×{ratios[0]:.2f} – ×{ratios[-1]:.2f}), ahead in {ahead} of {len(ratios)}",
           sg_r >= best_r)
    target(f"(the same in the matrix runs, 6 samples each: ≥ {cbest})", f"{sg:.0f} vs {cv:.0f}: ×{sg / cv:.2f}", sg >= cv)
else:
    target(f"new conn/s through the gateway, 2 loops: ≥ the best peer's ({cbest})", f"{sg:.0f} vs {cv:.0f}: ×{sg / cv:.2f}", sg >= cv)
for sc, role in (("passthrough", "gateway"), ("origination", "upstream listener")):
    v = med(T2, sc, "sidegate", "idle_rss_kib") / 1024
    target(f"idle RSS at threads = 2 ≤ 2 MiB ({role})", f"{v:.2f} MiB", v <= 2)
for sc in ("passthrough", "origination"):
    one, two = med(["t1-c1", "t1-c4"], sc, "sidegate", "per_conn_kib"), med(T2, sc, "sidegate", "per_conn_kib")
    target(f"RSS per held {sc} connection unchanged at 2 loops (within 5 %)", f"{two:.2f} vs {one:.2f} KiB", two <= one * 1.05)
base = [n for n in runs if n.startswith("base-old-")]
if base:
    for sc in ("passthrough", "origination"):
        for c in (1, 4):
            old = med([n for n in runs if n.startswith(f"base-old-c{c}-")], sc, "sidegate", "bulk_mbps")
            new = med([n for n in runs if n.startswith(f"base-new-c{c}-")], sc, "sidegate", "bulk_mbps")
            target(f"threads = 1 no slower than the baseline: {sc} bulk, {c} stream{'s' if c > 1 else ''} (within 5 %)",
                   f"{new:.0f} vs {old:.0f} MB/s: ×{new / old:.2f}", new >= 0.95 * old)
        old = med([n for n in runs if n.startswith("base-old-")], sc, "sidegate", "cps")
        new = med([n for n in runs if n.startswith("base-new-")], sc, "sidegate", "cps")
        target(f"threads = 1 no slower than the baseline: {sc} new conn/s (within 5 %)",
               f"{new:.0f} vs {old:.0f}: ×{new / old:.2f}", new >= 0.95 * old)
print("\n**Targets** (issue 17; within one run, the proxies interleaved):\n")
print("| target | measured | held? |")
print("|---|---|---|")
print("\n".join(rows))
PY
cat "$OUT/cores.md"
echo
log "written to $OUT/cores.md"
