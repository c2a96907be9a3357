#!/usr/bin/env bash
# Stepped-rate load test of proxy-shim + locsvc with sipp, all on 127.0.0.1.
#
#   proxy-shim/bench/sipp-rates.sh LOCSVC_BIN SHIM_BIN [OUT_DIR]
#
# For each of RUNS runs, starts a fresh locsvc (embedded SQLite layout in a
# new data dir) and shim (redirect mode) on free loopback ports, then:
#   - REGISTER: for each rate in REG_RATES, ascending, min(rate*STEP_SECS,
#     USERS) calls, one REGISTER per call, each for a user never registered
#     before (CSV of USERS names, prefixed per run and step); expects 200.
# and again a fresh pair, where the USERS names are registered under `inv-`
# at PRE_RATE, then:
#   - INVITE: for each rate in INV_RATES, ascending, the same count of INVITEs
#     to those users; expects 302, sends the ACK.
# A ladder stops at its first step with a failed call.
# Every sipp run is bounded by its call count (-m) and a global -timeout.
# Results: OUT_DIR/steps.tsv (one line per sipp run) and OUT_DIR/summary.md
# (median over runs per step, and the highest rate with zero failures).
# Environment knobs: REG_RATES, INV_RATES, STEP_SECS, USERS, RUNS, PRE_RATE,
# SIPP (path to sipp), KEEP_WORK=1 (keep sipp's logs and the data dir).
set -euo pipefail

LOCSVC=${1:?usage: $0 LOCSVC_BIN SHIM_BIN [OUT_DIR]}
SHIM=${2:?usage: $0 LOCSVC_BIN SHIM_BIN [OUT_DIR]}
OUT=${3:-$(mktemp -d /tmp/sipp-rates.XXXXXX)}
REG_RATES=${REG_RATES:-"500 1000 1500 2000 2250 2500 3000"}
INV_RATES=${INV_RATES:-"1000 2000 3000 4000 5000 6000"}
STEP_SECS=${STEP_SECS:-5}
USERS=${USERS:-10000}
RUNS=${RUNS:-3}
PRE_RATE=${PRE_RATE:-1000}
SIPP=${SIPP:-sipp}
HERE=$(cd "$(dirname "$0")" && pwd)

for bin in "$LOCSVC" "$SHIM"; do
    [[ -x $bin ]] || { echo "not executable: $bin" >&2; exit 2; }
done
command -v "$SIPP" >/dev/null || { echo "sipp not found (apt-get install sip-tester)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed to pick ports and summarise" >&2; exit 2; }

mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/sipp-rates-work.XXXXXX)
PIDS=()
cleanup() {
    # Only the processes this script started, by pid.
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${KEEP_WORK:-} ]]; then
        echo "sipp logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT INT TERM

# A loopback port free on both UDP and TCP right now (the shim binds both).
free_port() {
    python3 - <<'PY'
import socket
for _ in range(100):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    port = u.getsockname()[1]
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", port))
        print(port)
        break
    except OSError:
        pass
    finally:
        t.close()
        u.close()
PY
}

# Waits (bounded) until something accepts TCP on 127.0.0.1:$1.
wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1 after 10 s" >&2
    exit 1
}

# start_stack TAG: a fresh locsvc (new data dir) and shim, on free ports.
# Each run gets its own, so an overloaded step cannot degrade the next run.
start_stack() {
    local tag=$1
    LOCSVC_PORT=$(free_port)
    SHIM_PORT=$(free_port)
    METRICS_PORT=$(free_port)
    RUST_LOG=warn "$LOCSVC" serve --data-dir "$WORK/data-$tag" --listen "127.0.0.1:$LOCSVC_PORT" \
        --metrics-listen off >"$OUT/locsvc-$tag.log" 2>&1 &
    LOCSVC_PID=$!
    PIDS+=("$LOCSVC_PID")
    wait_port "$LOCSVC_PORT"
    RUST_LOG=warn "$SHIM" --listen "127.0.0.1:$SHIM_PORT" --locsvc "http://127.0.0.1:$LOCSVC_PORT" \
        --domain example.com --mode redirect --metrics-listen "127.0.0.1:$METRICS_PORT" \
        >"$OUT/shim-$tag.log" 2>&1 &
    SHIM_PID=$!
    PIDS+=("$SHIM_PID")
    wait_port "$SHIM_PORT"
    wait_port "$METRICS_PORT"
}

stop_stack() {
    local tag=$1
    curl -s "http://127.0.0.1:$METRICS_PORT/metrics" >"$OUT/shim-metrics-$tag.txt" || true
    kill -TERM "$SHIM_PID" "$LOCSVC_PID" 2>/dev/null || true
    wait "$SHIM_PID" "$LOCSVC_PID" 2>/dev/null || true
}

{
    echo "SEQUENTIAL"
    for i in $(seq 0 $((USERS - 1))); do echo "u$i;"; done
} >"$WORK/users.csv"

printf 'kind\trate\trun\tcalls\tsuccessful\tfailed\tretransmissions\tseconds\tachieved_cps\tp50_ms\tp99_ms\n' >"$OUT/steps.tsv"

# run_sipp KIND SCENARIO RATE RUN PREFIX: one bounded sipp run, one TSV line.
run_sipp() {
    local kind=$1 scenario=$2 rate=$3 run=$4 prefix=$5
    local calls=$((rate * STEP_SECS))
    ((calls > USERS)) && calls=$USERS
    local dir="$WORK/$kind-$rate-$run"
    mkdir -p "$dir"
    local started ended
    started=$(date +%s.%N)
    (cd "$dir" && "$SIPP" -sf "$HERE/$scenario" -inf "$WORK/users.csv" -key prefix "$prefix" \
        -i 127.0.0.1 -p "$(free_port)" -nostdin -r "$rate" -m "$calls" \
        -default_behaviors all,-bye \
        -timeout "$((STEP_SECS * 4 + 30))s" -timeout_error \
        -trace_stat -stf stats.csv -fd 1 -trace_rtt -rtt_freq 100 \
        "127.0.0.1:$SHIM_PORT" >sipp.out 2>&1) || true  # exit 1 = some calls failed: counted below
    ended=$(date +%s.%N)
    python3 - "$dir" "$kind" "$rate" "$run" "$calls" "$started" "$ended" >>"$OUT/steps.tsv" <<'PY'
import glob, sys
d, kind, rate, run, calls, t0, t1 = sys.argv[1:]
rows = [l.rstrip("\n").split(";") for l in open(f"{d}/stats.csv") if l.strip()]
head, last = rows[0], rows[-1]
col = lambda name: last[head.index(name)]
ok, failed = int(col("SuccessfulCall(C)")), int(col("FailedCall(C)"))
# sipp's response times have a resolution of 1 ms.
rtt = sorted(float(l.split(";")[1]) for f in glob.glob(f"{d}/*_rtt.csv")
             for l in list(open(f))[1:] if l.strip())
pct = lambda p: rtt[min(len(rtt) - 1, int(p * len(rtt)))] if rtt else float("nan")
secs = float(t1) - float(t0)
print(f"{kind}\t{rate}\t{run}\t{calls}\t{ok}\t{failed}\t{col('Retransmissions(C)')}\t"
      f"{secs:.2f}\t{ok / secs:.0f}\t{pct(0.5):.0f}\t{pct(0.99):.0f}")
PY
    tail -n1 "$OUT/steps.tsv" >&2
}

# failed_last: whether the last sipp run had a failed or missing call. A
# ladder stops at its first failing step: overload makes locsvc's failover
# act, and what follows would measure that, not the rate.
failed_last() {
    tail -n1 "$OUT/steps.tsv" | awk -F'\t' '{ exit !($6 != 0 || $5 != $4) }'
}

for run in $(seq 1 "$RUNS"); do
    start_stack "register-$run"
    for rate in $REG_RATES; do
        run_sipp register register.xml "$rate" "$run" "r${run}s${rate}-"
        failed_last && break
    done
    stop_stack "register-$run"
done

for run in $(seq 1 "$RUNS"); do
    start_stack "invite-$run"
    # The INVITE targets, registered first at a rate known to be safe.
    steps=$STEP_SECS
    STEP_SECS=$(((USERS + PRE_RATE - 1) / PRE_RATE))
    run_sipp preregister register.xml "$PRE_RATE" "$run" "inv-"
    STEP_SECS=$steps
    for rate in $INV_RATES; do
        run_sipp invite302 invite.xml "$rate" "$run" "inv-"
        failed_last && break
    done
    stop_stack "invite-$run"
done

python3 - "$OUT/steps.tsv" >"$OUT/summary.md" <<'PY'
import statistics, sys
from collections import defaultdict
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
steps = defaultdict(list)
for r in rows:
    steps[(r[0], int(r[1]))].append(r)
for kind in ("register", "invite302"):
    rates = sorted(rate for (k, rate) in steps if k == kind)
    if not rates:
        continue
    runs = max(len(steps[(kind, r)]) for r in rates)
    print(f"\n### {kind} (median over the runs that reached each step; a run stops at its first failing step)\n")
    print("| target cps | calls | successful | failed | retransmissions | achieved cps | p50 ms | p99 ms | runs with 0 failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    med = lambda rs, i: statistics.median(float(r[i]) for r in rs)
    for rate in rates:
        rs = steps[(kind, rate)]
        clean = sum(1 for r in rs if r[5] == "0" and r[4] == r[3])
        print(f"| {rate} | {rs[0][3]} | {med(rs, 4):.0f} | {med(rs, 5):.0f} | {med(rs, 6):.0f} | "
              f"{med(rs, 8):.0f} | {med(rs, 9):.0f} | {med(rs, 10):.0f} | {clean}/{runs} |")
    per_run = defaultdict(int)
    for rate in rates:
        for r in steps[(kind, rate)]:
            if r[5] == "0" and r[4] == r[3]:
                per_run[r[2]] = max(per_run[r[2]], rate)
    best = [per_run[str(i)] for i in range(1, runs + 1)]
    print(f"\nHighest target rate with zero failures, per run: {best}; median {statistics.median(best):.0f} cps")
PY
cat "$OUT/summary.md"
echo "results in $OUT" >&2
