#!/usr/bin/env bash
# What the cross-instance AoR lock costs a REGISTER (issue 9): Save ceiling
# and Save latency at a fixed offered rate, on the bench MariaDB layout
# (benches/sip/layout.sh), with one locsvc instance (no lock: nobody to
# race), two instances (the lock in the master: MariaDB GET_LOCK per Save),
# and two instances with `cluster.aor_lock = "off"` (unsafe; the baseline
# that isolates the lock from the second instance's polling).
#
#   benches/aor-lock.sh [OUT_DIR]
#
# Load goes to the first instance only; the second is live (registered in
# `locsvc_instances`, heartbeating) and idle. Each run: a fresh set of
# instances, SECS of closed-loop refreshes of USERS users at CONCURRENCY
# (the ceiling), then SECS at RATE/s open loop (latency at equal load).
# Knobs: RUNS [3] SECS [10] USERS [10000] CONCURRENCY [64] RATE [1000]
# BIN [target/release] VARIANTS ["one two two-off"].
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${1:-$(mktemp -d /tmp/aor-lock.XXXXXX)}
RUNS=${RUNS:-3}
SECS=${SECS:-10}
USERS=${USERS:-10000}
CONCURRENCY=${CONCURRENCY:-64}
RATE=${RATE:-1000}
BIN=${BIN:-$REPO/target/release}
VARIANTS=${VARIANTS:-"one two two-off"}
mkdir -p "$OUT"

eval "$("$HERE/sip/layout.sh" up)"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts one instance on port $1 (metrics on $2 or "off"), logging to $3,
# with extra environment $4...; waits until it accepts connections, which
# it does only once every live peer knows of it (so the first instance
# takes AoR locks from the first Save of a two-instance run).
start() {
    local port=$1 metrics=$2 log=$3
    shift 3
    env "$@" RUST_LOG=warn "$BIN/locsvc" serve --master-url "$BENCH_MASTER_URL" \
        --listen "127.0.0.1:$port" --metrics-listen "$metrics" >"$log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do
        (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "locsvc on $port did not start; see $log" >&2
    exit 1
}

field() {
    python3 -c "import json,sys; j=json.load(open(sys.argv[1])); l=j['latency_ms']; print(f\"{j['ops_per_s']:.0f}/s p50 {l['p50']:.2f} p99 {l['p99']:.2f} errors {j['errors']}\")" "$1"
}

for v in $VARIANTS; do
    for r in $(seq 1 "$RUNS"); do
        "$HERE/sip/layout.sh" truncate >&2
        extra=()
        case $v in
        two-off) extra=(LOCSVC_CLUSTER__AOR_LOCK=off) ;;
        two-wide) extra=(LOCSVC_CLUSTER__AOR_LOCK_CONNECTIONS=256) ;;
        esac
        p1=$(free_port)
        m1=$(free_port)
        start "$p1" "127.0.0.1:$m1" "$OUT/locsvc-$v-$r-1.log" "${extra[@]}"
        if [[ $v != one ]]; then
            p2=$(free_port)
            start "$p2" off "$OUT/locsvc-$v-$r-2.log" "${extra[@]}"
        fi
        "$BIN/locsvc-load" save --target "http://127.0.0.1:$p1" --prefix "l$v$r-" \
            --users "$USERS" --concurrency "$CONCURRENCY" --duration "$SECS" --json \
            >"$OUT/ceiling-$v-$r.json" || true
        "$BIN/locsvc-load" save --target "http://127.0.0.1:$p1" --prefix "l$v$r-" \
            --users "$USERS" --rate "$RATE" --duration "$SECS" --json \
            >"$OUT/rate-$v-$r.json" || true
        # What the first instance's locks did: proof of which variant ran.
        locks=$(python3 -c 'import sys,urllib.request
t=urllib.request.urlopen(sys.argv[1]).read().decode()
print(" ".join(l.split("{")[1].replace("}","").replace("result=","").replace(chr(34),"") for l in t.splitlines() if l.startswith("locsvc_aor_locks_total{")) or "none")' "http://127.0.0.1:$m1/metrics")
        cleanup
        echo "$v run $r: ceiling $(field "$OUT/ceiling-$v-$r.json") | at $RATE/s $(field "$OUT/rate-$v-$r.json") | locks: $locks"
    done
done | tee "$OUT/runs.txt"

python3 - "$OUT" "$VARIANTS" "$RUNS" "$RATE" <<'PY'
import json, sys, statistics, pathlib
out, variants, runs, rate = pathlib.Path(sys.argv[1]), sys.argv[2].split(), int(sys.argv[3]), sys.argv[4]
print(f"| variant | Save ceiling/s | ceiling p99 ms | p50 at {rate}/s ms | p99 at {rate}/s ms | errors |")
print("|---|---|---|---|---|---|")
for v in variants:
    c = [json.loads((out / f"ceiling-{v}-{r}.json").read_text()) for r in range(1, runs + 1)]
    o = [json.loads((out / f"rate-{v}-{r}.json").read_text()) for r in range(1, runs + 1)]
    med = lambda xs, f: statistics.median(f(x) for x in xs)
    print(f"| {v} | {med(c, lambda j: j['ops_per_s']):.0f} | {med(c, lambda j: j['latency_ms']['p99']):.1f} | "
          f"{med(o, lambda j: j['latency_ms']['p50']):.2f} | {med(o, lambda j: j['latency_ms']['p99']):.2f} | "
          f"{sum(j['errors'] for j in c + o)} |")
PY
