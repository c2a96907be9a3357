#!/usr/bin/env bash
# locsvc's gRPC ceiling on the bench MariaDB layout (benches/sip/layout.sh),
# driven by locsvc-load in a closed loop, for several coalescing settings:
# the step-by-step effect of group commit and coalesced reads.
#
#   benches/grpc-ceiling.sh [OUT_DIR]
#
# For each variant and each of RUNS runs: a fresh locsvc with the variant's
# settings, SECS of Save (new registrations) then SECS of Lookup (users
# registered by the first Save run), at CONCURRENCY. Prints one line per
# run and the medians; the JSON reports stay in OUT_DIR.
# Knobs: RUNS [3] SECS [8] CONCURRENCY [64] BIN [target/release]
# VARIANTS (names below) ["none reads writes both-4w8r both"].
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${1:-$(mktemp -d /tmp/grpc-ceiling.XXXXXX)}
RUNS=${RUNS:-3}
SECS=${SECS:-8}
CONCURRENCY=${CONCURRENCY:-64}
BIN=${BIN:-$REPO/target/release}
VARIANTS=${VARIANTS:-"none reads writes both-4w8r both"}
mkdir -p "$OUT"

# Settings of each variant (environment of locsvc serve).
settings() {
    case $1 in
    none) echo LOCSVC_CLUSTER__WRITE_BATCH_ROWS=0 LOCSVC_CLUSTER__READ_BATCH_AORS=0 ;;
    reads) echo LOCSVC_CLUSTER__WRITE_BATCH_ROWS=0 ;;
    writes) echo LOCSVC_CLUSTER__READ_BATCH_AORS=0 ;;
    both-4w8r) echo LOCSVC_CLUSTER__BATCH_WRITERS=4 LOCSVC_CLUSTER__BATCH_READERS=8 ;;
    both) echo "" ;; # the defaults: 1 writer, 2 readers
    *)
        echo "unknown variant $1" >&2
        exit 2
        ;;
    esac
}

eval "$("$HERE/sip/layout.sh" up)"
"$HERE/sip/layout.sh" truncate >&2

LP=
cleanup() { [[ -z $LP ]] || { kill "$LP" 2>/dev/null || true; wait "$LP" 2>/dev/null || true; }; }
trap cleanup EXIT INT TERM

field() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(j['ops_per_s'], j['latency_ms']['p99'], j['errors'])" "$1"; }

for v in $VARIANTS; do
    for r in $(seq 1 "$RUNS"); do
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        # shellcheck disable=SC2046
        env $(settings "$v") RUST_LOG=warn "$BIN/locsvc" serve --master-url "$BENCH_MASTER_URL" \
            --listen "127.0.0.1:$port" --metrics-listen off >"$OUT/locsvc-$v-$r.log" 2>&1 &
        LP=$!
        for _ in $(seq 1 50); do
            (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.1
        done
        "$BIN/locsvc-load" save --target "http://127.0.0.1:$port" --fresh --prefix "c$v$r-" \
            --users 10000000 --concurrency "$CONCURRENCY" --duration "$SECS" --json >"$OUT/save-$v-$r.json" || true
        "$BIN/locsvc-load" lookup --target "http://127.0.0.1:$port" --prefix "c$v$r-" \
            --users 10000 --concurrency "$CONCURRENCY" --duration "$SECS" --json >"$OUT/lookup-$v-$r.json" || true
        kill "$LP"
        wait "$LP" || true
        LP=
        echo "$v run $r: save $(field "$OUT/save-$v-$r.json") | lookup $(field "$OUT/lookup-$v-$r.json")  (ops/s p99_ms errors)"
    done
done | tee "$OUT/runs.txt"

python3 - "$OUT" "$VARIANTS" "$RUNS" <<'PY'
import json, sys, statistics, pathlib
out, variants, runs = pathlib.Path(sys.argv[1]), sys.argv[2].split(), int(sys.argv[3])
print("| variant | Save/s (median) | Save p99 ms | Lookup/s (median) | Lookup p99 ms | errors |")
print("|---|---|---|---|---|---|")
for v in variants:
    s = [json.loads((out / f"save-{v}-{r}.json").read_text()) for r in range(1, runs + 1)]
    l = [json.loads((out / f"lookup-{v}-{r}.json").read_text()) for r in range(1, runs + 1)]
    med = lambda xs, f: statistics.median(f(x) for x in xs)
    print(f"| {v} | {med(s, lambda j: j['ops_per_s']):.0f} | {med(s, lambda j: j['latency_ms']['p99']):.1f} | "
          f"{med(l, lambda j: j['ops_per_s']):.0f} | {med(l, lambda j: j['latency_ms']['p99']):.1f} | "
          f"{sum(j['errors'] for j in s + l)} |")
PY
