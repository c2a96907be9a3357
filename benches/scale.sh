#!/usr/bin/env bash
# Scale benchmark: Lookup latency with 10 k and with 10 M bindings, the
# effect of sweeping 1 M expired bindings while serving, and locsvc's
# resident memory, on the MariaDB layout of benches/sip/layout.sh (2 groups
# x 2 members on two servers, locdb on a third).
#
#   benches/scale.sh [OUT_DIR]
#
# Phases (each Lookup run is an open loop at LOOKUP_RATE for LOOKUP_SECS,
# over random users of the phase's population, via locsvc-load):
#   small    preload SMALL users (prefix s), look them up
#   big      preload BIG users (prefix b; the small ones stay), look up the
#            big population
#   sweep    preload EXPIRED already-expired bindings (prefix x), then look
#            up the big population again while locsvc's sweeper deletes them;
#            the run ends when the sweep is done (at most SWEEP_MAX_SECS)
# locsvc's RSS is read from /proc after each phase. Everything goes to
# OUT_DIR: one JSON report per run (locsvc-load --json), summary.md.
#
# Knobs: SMALL [10000] BIG [10000000] EXPIRED [1000000] LOOKUP_RATE [2000]
# LOOKUP_SECS [30] SWEEP_MAX_SECS [600] BIN [target/release]
# PHASES ["small big sweep"]; KEEP_DATA=1 keeps the tables (and skips the
# big preload: the rows of an earlier run are looked up again).
# BENCH_BUFFER_POOL (layout.sh; default 1G per server): 10 M bindings take
# about 5 GB per member server, so with 1G most lookups read the disk; give
# the servers room for the data (BENCH_BUFFER_POOL=6G) to measure locsvc,
# not the disk. Before the lookups, each table is scanned once so the
# buffer pools are warm.
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${1:-$(mktemp -d /tmp/locsvc-scale.XXXXXX)}
SMALL=${SMALL:-10000}
BIG=${BIG:-10000000}
EXPIRED=${EXPIRED:-1000000}
LOOKUP_RATE=${LOOKUP_RATE:-2000}
LOOKUP_SECS=${LOOKUP_SECS:-30}
SWEEP_MAX_SECS=${SWEEP_MAX_SECS:-600}
BIN=${BIN:-$REPO/target/release}
mkdir -p "$OUT"

for b in locsvc locsvc-load; do
    [[ -x $BIN/$b ]] || {
        echo "missing $BIN/$b: cargo build --release -p locsvc -p locsvc-bench" >&2
        exit 2
    }
done

PHASES=${PHASES:-"small big sweep"}
eval "$("$HERE/sip/layout.sh" up)"
[[ -n ${KEEP_DATA:-} ]] || "$HERE/sip/layout.sh" truncate >&2
has() { [[ " $PHASES " == *" $1 "* ]]; }
warm() { # read every member table once (clustered and secondary index)
    local port db pids=()
    for port in "$BENCH_A_PORT" "$BENCH_B_PORT"; do
        for db in loc_1 loc_2; do
            mysql -h 127.0.0.1 -P "$port" -u "$BENCH_DB_USER" -p"$BENCH_DB_PW" "$db" -N -e \
                "SELECT SUM(LENGTH(callid)) FROM location; SELECT COUNT(*) FROM location FORCE INDEX (account_contact_idx)" >/dev/null &
            pids+=($!)
        done
    done
    wait "${pids[@]}"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
PORT=$(free_port)
MPORT=$(free_port)
TARGET=http://127.0.0.1:$PORT
LOCSVC_PID=
cleanup() {
    if [[ -n $LOCSVC_PID ]]; then
        kill -TERM "$LOCSVC_PID" 2>/dev/null || true
        wait "$LOCSVC_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT INT TERM

# The sweeper's pace: every SWEEP_INTERVAL_MS, up to SWEEP_BATCHES batches of
# SWEEP_BATCH rows per member. The same settings serve every phase, so the
# baseline is measured with the sweeper running too.
SWEEP_INTERVAL_MS=${SWEEP_INTERVAL_MS:-1000}
SWEEP_BATCH=${SWEEP_BATCH:-2000}
SWEEP_BATCHES=${SWEEP_BATCHES:-50}
LOCSVC_EXPIRY__INTERVAL_MS=$SWEEP_INTERVAL_MS LOCSVC_EXPIRY__BATCH_SIZE=$SWEEP_BATCH \
    LOCSVC_EXPIRY__MAX_BATCHES=$SWEEP_BATCHES \
    LOCSVC_EXPIRY__GRACE_SECS=0 RUST_LOG=warn \
    "$BIN/locsvc" serve --master-url "$BENCH_MASTER_URL" --listen "127.0.0.1:$PORT" \
    --metrics-listen "127.0.0.1:$MPORT" >"$OUT/locsvc.log" 2>&1 &
LOCSVC_PID=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$MPORT/metrics" >/dev/null && break
    sleep 0.1
done

rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$LOCSVC_PID/status"; }
metric() {
    curl -sf "http://127.0.0.1:$MPORT/metrics" | awk -v m="$1" '$1 == m {print $2}'
}
preload() { # prefix users [extra args]
    local prefix=$1 users=$2
    shift 2
    "$BIN/locsvc-load" preload --master-url "$BENCH_MASTER_URL" --prefix "$prefix" \
                --users "$users" --json "$@" >"$OUT/preload-$prefix.json" ||
        # Expired rows racing the sweeper can deadlock and be retried out;
        # the report counts them. Anything else must stop the run.
        [[ $prefix == x ]]
}
lookup() { # name prefix users [extra args]
    local name=$1 prefix=$2 users=$3
    shift 3
    "$BIN/locsvc-load" lookup --target "$TARGET" --prefix "$prefix" --users "$users" \
                --rate "$LOOKUP_RATE" --order random --json "$@" >"$OUT/lookup-$name.json" || true # errors are in the report
}

touch "$OUT/rss.txt"
if has small; then
    echo "small: $SMALL users" >&2
    preload s "$SMALL"
    lookup small s "$SMALL" --duration "$LOOKUP_SECS"
    echo "rss_small_mb $(rss_mb)" >>"$OUT/rss.txt"
fi

if has big; then
    echo "big: $BIG users" >&2
    [[ -n ${KEEP_DATA:-} ]] || preload b "$BIG"
    warm
    lookup big b "$BIG" --duration "$LOOKUP_SECS"
    echo "rss_big_mb $(rss_mb)" >>"$OUT/rss.txt"
fi
has sweep || exit 0


echo "sweep: $EXPIRED expired bindings" >&2
SWEPT0=$(metric locsvc_contacts_swept_total)
preload x "$EXPIRED" --expired-fraction 1.0
SWEEP_START=$(date +%s.%N)
# Look up while the sweep runs, in CHUNK_SECS runs, until it is done: the
# sweeper deleted nothing during a whole run (that run is the first one
# after the sweep). The counter can stay below 2 x EXPIRED (every binding
# is on two members): a DELETE past its deadline still deletes but is not
# counted.
CHUNK_SECS=${CHUNK_SECS:-10}
SWEPT=0
chunk=0
while true; do
    chunk=$((chunk + 1))
    lookup "sweep-$chunk" b "$BIG" --duration "$CHUNK_SECS"
    BEFORE=$SWEPT
    SWEPT=$(($(metric locsvc_contacts_swept_total) - SWEPT0))
    echo "sweep: $SWEPT rows deleted after chunk $chunk" >&2
    if ((chunk > 1 && SWEPT == BEFORE)); then
        mv "$OUT/lookup-sweep-$chunk.json" "$OUT/lookup-after.json"
        break
    fi
    (($(date +%s) - ${SWEEP_START%.*} < SWEEP_MAX_SECS)) || break
done
SWEEP_END=$(date +%s.%N)
{
    echo "rss_sweep_mb $(rss_mb)"
    echo "swept_rows $SWEPT"
    echo "sweep_secs $(python3 -c "print(round($SWEEP_END - $SWEEP_START, 1))")"
} >>"$OUT/rss.txt"

python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for name in ["small", "big", "after"] + sorted(
        (p.stem[len("lookup-"):] for p in out.glob("lookup-sweep-*.json")),
        key=lambda n: int(n.split("-")[1])):
    p = out / f"lookup-{name}.json"
    if p.exists():
        rows.append((name, json.loads(p.read_text())))
extra = dict(l.split() for l in (out / "rss.txt").read_text().splitlines())
lines = ["| phase | lookups ok | errors | achieved/s | p50 ms | p99 ms | p99.9 ms | found |",
         "|---|---|---|---|---|---|---|---|"]
for name, j in rows:
    lat = j.get("latency_ms") or {}
    lines.append(f"| {name} | {j.get('ok')} | {j.get('errors')} | {j.get('ops_per_s')} | "
                 f"{lat.get('p50')} | {lat.get('p99')} | {lat.get('p99_9')} | {j.get('found_ratio')} |")
sweeps = sorted((j.get("latency_ms") or {}).get("p99", 0) for n, j in rows if n.startswith("sweep"))
if sweeps:
    lines.append(f"| sweep, median of {len(sweeps)} runs' p99 | | | | | {sweeps[len(sweeps)//2]} | | |")
lines.append("")
for k, v in extra.items():
    lines.append(f"- {k}: {v}")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
