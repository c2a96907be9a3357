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
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # LOG_TAG: read by die and say (lib/common.sh)
LOG_TAG=sipp-rates
# shellcheck source=SCRIPTDIR/../../benches/lib/common.sh
source "$HERE/../../benches/lib/common.sh"

for bin in "$LOCSVC" "$SHIM"; do
    [[ -x $bin ]] || die "not executable: $bin"
done
command -v "$SIPP" >/dev/null || die "sipp not found (apt-get install sip-tester)"
command -v python3 >/dev/null || die "python3 is needed to pick ports and summarise"

mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/sipp-rates-work.XXXXXX)
PIDS=()
cleanup() {
    end_all_pids # only the processes this script started, by pid
    if [[ -n ${KEEP_WORK:-} ]]; then
        echo "sipp logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT INT TERM

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
    wait_tcp "$LOCSVC_PORT"
    RUST_LOG=warn "$SHIM" --listen "127.0.0.1:$SHIM_PORT" --locsvc "http://127.0.0.1:$LOCSVC_PORT" \
        --domain example.com --rate-limit 0 --auth off --mode redirect --metrics-listen "127.0.0.1:$METRICS_PORT" \
        >"$OUT/shim-$tag.log" 2>&1 &
    SHIM_PID=$!
    PIDS+=("$SHIM_PID")
    wait_tcp "$SHIM_PORT"
    wait_tcp "$METRICS_PORT"
}

stop_stack() {
    local tag=$1
    curl -s "http://127.0.0.1:$METRICS_PORT/metrics" >"$OUT/shim-metrics-$tag.txt" || true
    stop_pids "$SHIM_PID" "$LOCSVC_PID"
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
    local result ok failed retrans cps p50 p99 secs
    result=$(sipp_step "$WORK/$kind-$rate-$run" "$SHIM_PORT" "$HERE/$scenario" "$WORK/users.csv" "$prefix" \
        "$(free_port)" "$rate" "$calls" "$((STEP_SECS * 4 + 30))")
    IFS=$'\t' read -r ok failed retrans _ _ cps p50 p99 secs <<<"$result"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$rate" "$run" "$calls" \
        "$ok" "$failed" "$retrans" "$secs" "$cps" "$p50" "$p99" >>"$OUT/steps.tsv"
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
