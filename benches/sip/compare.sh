#!/usr/bin/env bash
# Side-by-side SIP benchmark: Kamailio (registrar + p_usrloc) versus
# proxy-shim + locsvc, on the same MariaDB layout (layout.sh), driven by sipp,
# all on 127.0.0.1 with ports picked at run time.
#
#   benches/sip/compare.sh [OUT_DIR]
#
# Starts the layout (layout.sh up; stopped again at the end if this script
# started it). Then, for each run 1..RUNS and each target of TARGETS (targets
# interleaved within a run, so a drift of the machine's load hits all alike):
#   REGISTER ladder   truncate the location tables (and reset locdb), start
#                     the target, WARMUP registrations (not counted), then for
#                     each rate of REG_RATES, ascending, one sipp run of
#                     rate*STEP_SECS calls, one REGISTER per call for a user
#                     never registered before; a call succeeds on the 200.
#                     Rows per member database are counted after every step
#                     and once the target has stopped (rows.tsv).
#   INVITE ladder     truncate again and start the target afresh (so the
#                     overload that ended the REGISTER ladder cannot leak into
#                     it), register USERS users at PRE_RATE from the UAS's
#                     port (their contacts = the UAS), start the UAS
#                     (scenarios/uas.xml) on that port, then for each rate of
#                     INV_RATES one sipp run of rate*STEP_SECS INVITEs to those
#                     users (cycling): one lookup per call.
#                       relay targets: the INVITE is relayed to the UAS, which
#                         answers 200; the call succeeds on the 200, then the
#                         ACK goes end-to-end (scenarios/invite.xml)
#                       redirect targets: the call succeeds on the 302, then
#                         the ACK (scenarios/invite302.xml)
# Latency probe  before each ladder's sipp steps (after its warm-up or its
#                     pre-registration, while the target is fresh, and
#                     after `layout.sh settle` has flushed the servers), for each
#                     rate of PROBE_RATES one sip-probe run of PROBE_SECS
#                     seconds: the same requests open-loop, each send and
#                     final answer timed with microsecond resolution (sipp's
#                     response times move in 4 ms steps here). REGISTERs are
#                     new users; INVITEs go to the pre-registered users, in
#                     relay mode to the probe's own UAS on the port they
#                     registered from (probe.tsv).
# A call fails when its final response (200, or 302) has not arrived
# CALL_TIMEOUT_MS after the request was first sent (sipp -recv_timeout), or
# when anything else arrives instead. A ladder stops at its first step with a
# failed or missing call. Every sipp run is bounded by its call count (-m)
# and a global -timeout.
#
# Targets:
#   kamailio           kamailio.cfg, stateless forward() (like the shim's proxy mode)
#   kamailio-tm        kamailio.cfg -A WITH_TM: stateful t_relay()
#   kamailio-redirect  kamailio.cfg -A WITH_REDIRECT: 302 with the contact
#   shim-proxy         locsvc serve --master-url ... + proxy-shim --mode proxy
#   shim-redirect      locsvc serve --master-url ... + proxy-shim --mode redirect
#   shim-auth          as shim-redirect, but the shim runs with --auth digest
#                      and does not trust 127.0.0.1 (a trusted source is never
#                      challenged): before its REGISTER ladder the master's
#                      `subscriber` table is emptied and holds a row for every
#                      user the ladder will register (password AUTH_PW), and
#                      each call is REGISTER, 401, REGISTER with the digest
#                      answer, 200 (scenarios/register_auth.xml): one
#                      registration with its challenge. No INVITE ladder (an
#                      INVITE from a served domain would need its own 407
#                      answer); the shim targets without -auth run --auth off.
#
# Output in OUT_DIR: steps.tsv (one line per sipp run), probe.tsv (one line
# per sip-probe run: latencies in µs; CPU µs and context switches per request
# of the target's processes, and CPU µs per request of the three MariaDB
# servers, read from /proc around the probe), rows.tsv (rows per
# member after each REGISTER ladder), machine.txt, summary.md, logs/ (with
# the shim's and locsvc's /metrics at the end of each shim ladder, and around
# each shim probe in logs/TARGET-RUN-KIND-RATE.{shim,locsvc}-{before,after}.prom:
# their per-stage latency histograms, from which summary.md tells in which
# stage the probe's slow answers spent their time).
#
# Environment knobs (defaults in brackets):
#   TARGETS ["kamailio shim-proxy shim-redirect"]  RUNS [3]
#   REG_RATES ["250 500 750 1000 1500 2000 2500 3000"]
#   INV_RATES ["500 1000 1500 2000 3000 4000 5000 6000"]
#   PROBE_RATES ["500 1000 2000 3000"] (empty: no probe)  PROBE_SECS [10]
#   PROBE_SLOW_MS [20] (each probe answer this slow is listed, with when it
#   was sent, in logs/TARGET-RUN-KIND-RATE.slow; empty: none listed)
#   PROBE [${CARGO_TARGET_DIR:-<repo>/target}/release/sip-probe]
#   STEP_SECS [5]  USERS [10000]  PRE_RATE [500]  WARMUP [500 calls at 250/s]
#   CALL_TIMEOUT_MS [1000] (warm-up and pre-registration: 10000)
#   LOCSVC [${CARGO_TARGET_DIR:-<repo>/target}/release/locsvc]
#   SHIM [${CARGO_TARGET_DIR:-<repo>/target}/release/proxy-shim]
#   A/B: shim-proxy@NAME or shim-redirect@NAME (shim-redirect@base) runs the
#   locsvc and proxy-shim in the directory BINDIR_NAME (NAME upper-cased:
#   BINDIR_BASE) instead, and/or locsvc with the settings in ENV_NAME
#   (ENV_CACHE="LOCSVC_CLUSTER__LOOKUP_CACHE_MS=30000", space-separated
#   variable assignments), and/or the shim with those in SHIM_ENV_NAME
#   (PROXY_SHIM_*; both also take TOKIO_WORKER_THREADS=N, the binary's
#   runtime threads), so two builds or two configurations are
#   interleaved within each run like any two targets.
#   LOCSVC_HASH [crc32-mod: p_usrloc's hash, so both place a user alike]
#   KAM_CHILDREN [4]  KAM_SHM_MB [512]  KAM_PKG_MB [32]  SIPP [sipp]
#   AUTH_PW [pw] (shim-auth's subscribers' password)
#   BENCH_DB_DIR (layout.sh's state dir)  KEEP_WORK=1 (keep sipp's files)
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-$(mktemp -d /tmp/sip-compare.XXXXXX)}
TARGETS=${TARGETS:-"kamailio shim-proxy shim-redirect"}
RUNS=${RUNS:-3}
REG_RATES=${REG_RATES:-"250 500 750 1000 1500 2000 2500 3000"}
INV_RATES=${INV_RATES:-"500 1000 1500 2000 3000 4000 5000 6000"}
STEP_SECS=${STEP_SECS:-5}
USERS=${USERS:-10000}
PRE_RATE=${PRE_RATE:-500}
WARMUP=${WARMUP:-500}
WARMUP_RATE=${WARMUP_RATE:-250}
CALL_TIMEOUT_MS=${CALL_TIMEOUT_MS:-1000}
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
LOCSVC=${LOCSVC:-$BIN/locsvc}
SHIM=${SHIM:-$BIN/proxy-shim}
PROBE=${PROBE:-$BIN/sip-probe}
PROBE_RATES=${PROBE_RATES-"500 1000 2000 3000"}
PROBE_SECS=${PROBE_SECS:-10}
PROBE_SLOW_MS=${PROBE_SLOW_MS-20}
CLK_TCK=$(getconf CLK_TCK)
LOCSVC_HASH=${LOCSVC_HASH:-crc32-mod}
KAM_CHILDREN=${KAM_CHILDREN:-4}
KAM_SHM_MB=${KAM_SHM_MB:-512}
KAM_PKG_MB=${KAM_PKG_MB:-32}
AUTH_PW=${AUTH_PW:-pw}
SIPP=${SIPP:-sipp}
LAYOUT=$HERE/layout.sh
SCEN=$HERE/scenarios
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# shellcheck disable=SC2034 # LOG_TAG: read by die and say (lib/common.sh)
LOG_TAG=compare
# shellcheck source=SCRIPTDIR/../lib/common.sh
source "$HERE/../lib/common.sh"

# shim_bins TARGET: the locsvc and proxy-shim binaries of a shim target,
# one per line: LOCSVC and SHIM, or for TARGET@NAME (an A/B variant) those
# in the directory BINDIR_NAME if set (NAME upper-cased; not LOCSVC_NAME,
# which locsvc would read as one of its settings).
shim_bins() {
    local variant dir env shim_env
    if [[ $1 != *@* ]]; then
        printf '%s\n%s\n' "$LOCSVC" "$SHIM"
        return
    fi
    variant=${1#*@}
    dir=BINDIR_${variant^^}
    env=ENV_${variant^^}
    shim_env=SHIM_ENV_${variant^^}
    [[ -n ${!dir:-} || -n ${!env:-} || -n ${!shim_env:-} ]] ||
        die "target $1 needs $dir (a directory with locsvc and proxy-shim), $env (locsvc's environment) or $shim_env (the shim's)"
    if [[ -n ${!dir:-} ]]; then
        printf '%s\n%s\n' "${!dir}/locsvc" "${!dir}/proxy-shim"
    else
        printf '%s\n%s\n' "$LOCSVC" "$SHIM"
    fi
}

# variant_env TARGET [PREFIX]: the assignments of TARGET@NAME's
# {PREFIX}ENV_NAME (locsvc's: ENV_NAME, the shim's: SHIM_ENV_NAME), one per
# line (none for other targets); each must set one of the binary's settings
# (LOCSVC_KEY or PROXY_SHIM_KEY) or TOKIO_WORKER_THREADS.
variant_env() {
    local env a own
    [[ $1 == *@* ]] || return 0
    env=${2:-}ENV_${1#*@}
    env=${env^^}
    own=LOCSVC
    [[ -n ${2:-} ]] && own=PROXY_SHIM
    for a in ${!env:-}; do
        [[ $a =~ ^(${own}_[A-Z0-9_]+|TOKIO_WORKER_THREADS)=[^[:space:]]*$ ]] ||
            die "$env: '$a' is not ${own}_KEY=VALUE or TOKIO_WORKER_THREADS=N"
        echo "$a"
    done
}

for t in $TARGETS; do
    case $t in
    kamailio | kamailio-tm | kamailio-redirect) NEED_KAM=1 ;;
    shim-proxy | shim-redirect | shim-proxy@?* | shim-redirect@?*) NEED_SHIM=1 ;;
    shim-auth) NEED_SHIM=1 NEED_SUBSCRIBERS=1 ;;
    *) die "unknown target '$t' (kamailio kamailio-tm kamailio-redirect shim-proxy shim-redirect shim-auth; shim-proxy@NAME shim-redirect@NAME)" ;;
    esac
    if [[ $t == shim-* ]]; then
        mapfile -t bins < <(shim_bins "$t")
        variant_env "$t" >/dev/null
        for bin in "${bins[@]}"; do
            [[ -x $bin ]] || die "not executable: $bin (set LOCSVC and SHIM, or the variant's)"
        done
    fi
done
if [[ -n $PROBE_RATES ]]; then
    [[ -x $PROBE ]] || die "not executable: $PROBE (cargo build --release -p locsvc-bench; or PROBE_RATES=)"
fi
for n in RUNS STEP_SECS PROBE_SECS USERS PRE_RATE WARMUP WARMUP_RATE KAM_CHILDREN CALL_TIMEOUT_MS; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a number, not '${!n}'"
done
for r in $REG_RATES $INV_RATES $PROBE_RATES; do
    [[ $r =~ ^[1-9][0-9]*$ ]] || die "rates must be positive numbers, not '$r'"
done
command -v python3 >/dev/null || die "python3 is needed to pick ports and summarise"
[[ $AUTH_PW =~ ^[A-Za-z0-9._-]+$ ]] || die "AUTH_PW may only contain [A-Za-z0-9._-]"

mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/sip-compare-work.XXXXXX)
PIDS=()
LAYOUT_STARTED=

# Ends only the processes this script started, by pid.
cleanup() {
    end_all_pids
    if [[ -n $LAYOUT_STARTED ]]; then
        "$LAYOUT" down || true
    fi
    if [[ -n ${KEEP_WORK:-} ]]; then
        say "sipp files kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ layout

layout_up
if [[ -n ${NEED_KAM:-} ]]; then
    command -v kamailio >/dev/null || die "kamailio not found (layout.sh up installs it)"
fi
command -v "$SIPP" >/dev/null || die "sipp not found (layout.sh up installs sip-tester)"

# master_sql ARGS...: the mariadb client on the master database, as the bench user over TCP.
master_sql() {
    MYSQL_PWD=$BENCH_DB_PW mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$BENCH_MASTER_PORT" \
        -u"$BENCH_DB_USER" --connect-timeout=5 "${BENCH_MASTER_URL##*/}" "$@"
}

if [[ -n ${NEED_SUBSCRIBERS:-} ]]; then
    # layout.sh up applies migrations/mysql/master/ (0002_subscriber.sql
    # included); should the table be missing all the same, locsvc makes it.
    if ! master_sql -Nse 'SELECT 1 FROM subscriber LIMIT 0' >/dev/null 2>&1; then
        say "no subscriber table on the master: locsvc migrate"
        "$LOCSVC" migrate --master-url "$BENCH_MASTER_URL" >"$OUT/logs/locsvc-migrate.log" 2>&1 ||
            die "locsvc migrate failed (see $OUT/logs/locsvc-migrate.log)"
    fi
    master_sql -Nse 'SELECT 1 FROM seq_1_to_1' >/dev/null ||
        die "the master has no Sequence engine (seq_1_to_N tables)"
fi

# ------------------------------------------------------------------ helpers (more in ../lib/common.sh)

kind_of() {
    case ${1%@*} in
    *redirect) echo invite-302 ;;
    *) echo invite-relay ;;
    esac
}

# ------------------------------------------------------------------ targets

TARGET_PORT=
TARGET_PIDS=()

start_target() {
    local target=$1 tag=$2 mode define cfg lport mport auth bins venv senv
    TARGET_PORT=$(free_port)
    TARGET_PIDS=()
    case $target in
    kamailio*)
        define=()
        [[ $target == kamailio-tm ]] && define=(-A WITH_TM)
        [[ $target == kamailio-redirect ]] && define=(-A WITH_REDIRECT)
        cfg=$WORK/kamailio-$tag.cfg
        sed -e "s|@LISTEN_IP@|127.0.0.1|g" -e "s|@LISTEN_PORT@|$TARGET_PORT|g" \
            -e "s|@MASTER_URL@|$BENCH_MASTER_URL|g" -e "s|@CHILDREN@|$KAM_CHILDREN|g" \
            "$HERE/kamailio.cfg" >"$cfg"
        mkdir -p "$WORK/kamrun-$tag"
        # -DD: stays in the foreground, so $! is the main process; -E: log
        # to stderr; -Y: its own runtime dir (no /run/kamailio needed).
        kamailio -f "$cfg" -DD -E -m "$KAM_SHM_MB" -M "$KAM_PKG_MB" -Y "$WORK/kamrun-$tag" \
            "${define[@]}" >"$OUT/logs/$tag.kamailio.log" 2>&1 &
        TARGET_PIDS+=($!)
        PIDS+=($!)
        ;;
    shim-*)
        mode=${target#shim-}
        mode=${mode%@*}
        mapfile -t bins < <(shim_bins "$target")
        # shim-auth: redirect mode, digest auth, and no trusted source (a
        # trusted one would pass unchallenged).
        auth=(--auth off --trusted 127.0.0.1)
        if [[ $mode == auth ]]; then
            mode=redirect
            auth=(--auth digest)
        fi
        lport=$(free_port)
        mport=$(free_port)
        LOCSVC_METRICS_PORT=$(free_port)
        mapfile -t venv < <(variant_env "$target")
        mapfile -t senv < <(variant_env "$target" SHIM_)
        env "${venv[@]}" LOCSVC_PARTITION__HASH="$LOCSVC_HASH" LOCSVC_PARTITION__USE_DOMAIN=true RUST_LOG=warn \
            "${bins[0]}" serve --master-url "$BENCH_MASTER_URL" --listen "127.0.0.1:$lport" \
            --metrics-listen "127.0.0.1:$LOCSVC_METRICS_PORT" >"$OUT/logs/$tag.locsvc.log" 2>&1 &
        TARGET_PIDS+=($!)
        PIDS+=($!)
        wait_tcp "$lport"
        # sipp stands for many phones on one address (no per-source rate
        # limit) and, in proxy mode, for a trusted edge: the shim does not
        # Record-Route, so its ACKs through the shim are in-dialog relays.
        env "${senv[@]}" RUST_LOG=warn "${bins[1]}" --listen "127.0.0.1:$TARGET_PORT" --locsvc "http://127.0.0.1:$lport" \
            --domain example.com --mode "$mode" --metrics-listen "127.0.0.1:$mport" \
            --rate-limit 0 "${auth[@]}" \
            >"$OUT/logs/$tag.shim.log" 2>&1 &
        TARGET_PIDS+=($!)
        PIDS+=($!)
        SHIM_METRICS_PORT=$mport
        ;;
    esac
    wait_sip "$TARGET_PORT"
}

stop_target() {
    local target=$1 tag=$2 kids=() p
    case $target in
    kamailio*)
        # Kamailio's children, to make sure none outlives its main process.
        mapfile -t kids < <(pgrep -P "${TARGET_PIDS[0]}" || true)
        ;;
    shim-*)
        # Both sides' stage histograms: where the time of the ladder went.
        stage_metrics "$target" "$OUT/logs/$tag" metrics.txt
        ;;
    esac
    # Shim before locsvc: reverse start order.
    local rev=()
    for ((p = ${#TARGET_PIDS[@]} - 1; p >= 0; p--)); do rev+=("${TARGET_PIDS[p]}"); done
    stop_pids "${rev[@]}"
    for p in "${kids[@]}"; do
        kill -0 "$p" 2>/dev/null && stop_pids "$p"
    done
    return 0
}

# ------------------------------------------------------------------ sipp

{
    echo "SEQUENTIAL"
    for i in $(seq 1 "$USERS"); do echo "$i;"; done
} >"$WORK/users.csv"

printf 'target\trun\tkind\trate\tcalls\tok\tfailed\tretrans\tachieved_cps\tp50_ms\tp99_ms\tseconds\ttimed_out\tunexpected\n' >"$OUT/steps.tsv"
printf 'target\trun\tafter\tserver\tdatabase\trows\n' >"$OUT/rows.tsv"
printf 'target\trun\tkind\trate\tsent\tok\tfailed\tachieved\tp50_us\tp90_us\tp99_us\tp999_us\tmax_us\tcpu_us\tswitches\tdb_cpu_us\n' >"$OUT/probe.tsv"

# run_sipp TARGET RUN KIND SCENARIO RATE CALLS PREFIX LOCAL_PORT [CALL_TIMEOUT_MS [INF]]:
# one bounded sipp run against the target, one line of steps.tsv. INF: the
# injection file (default users.csv).
run_sipp() {
    local target=$1 run=$2 kind=$3 scenario=$4 rate=$5 calls=$6 prefix=$7 lport=$8
    local call_timeout=${9:-$CALL_TIMEOUT_MS} inf=${10:-$WORK/users.csv} result
    local ok failed retrans timed_out unexpected cps p50 p99 secs
    result=$(sipp_step "$WORK/$target-$run-$kind-$rate" "$TARGET_PORT" "$SCEN/$scenario" "$inf" "$prefix" \
        "$lport" "$rate" "$calls" "$((calls * 4 / rate + 30))" -recv_timeout "$call_timeout")
    IFS=$'\t' read -r ok failed retrans timed_out unexpected cps p50 p99 secs <<<"$result"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$run" "$kind" "$rate" "$calls" \
        "$ok" "$failed" "$retrans" "$cps" "$p50" "$p99" "$secs" "$timed_out" "$unexpected" >>"$OUT/steps.tsv"
    tail -n1 "$OUT/steps.tsv" >&2
}

# probe_steps TARGET RUN KIND PREFIX [UAS_PORT]: one sip-probe run per rate
# of PROBE_RATES, one line of probe.tsv each. REGISTER users are
# PREFIX<rate>-<n>, new in every run; INVITEs go to PREFIX<n> (n <= USERS).
probe_steps() {
    local target=$1 run=$2 kind=$3 prefix=$4 uas_port=${5:-} rate mode args line slow dbs t0 t1 d0 d1 tc tsw dc
    # Its REGISTERs need digest answers, which the probe does not give.
    [[ $target == shim-auth ]] && return 0
    [[ -n $PROBE_RATES ]] || return 0
    # Every target's probe starts on servers done with earlier writes
    # (another target's overloaded ladder, the truncation, the
    # pre-registration): unflushed pages were still being written out
    # under the first probes of a ladder.
    "$LAYOUT" settle
    # The servers whose CPU each probe also reads.
    mapfile -t dbs < <("$LAYOUT" status 2>/dev/null | awk '$3 ~ /^[0-9]+$/ { print $3 }')
    case $kind in
    register) mode=register ;;
    invite-302) mode=redirect ;;
    *) mode=relay ;;
    esac
    for rate in $PROBE_RATES; do
        args=(--target "127.0.0.1:$TARGET_PORT" --mode "$mode" --rate "$rate" --secs "$PROBE_SECS"
            --users "$USERS" --timeout-ms "$CALL_TIMEOUT_MS")
        if [[ $mode == register ]]; then
            args+=(--prefix "$prefix$rate-")
        else
            args+=(--prefix "$prefix")
        fi
        [[ $mode == relay ]] && args+=(--uas-port "$uas_port")
        [[ -n $PROBE_SLOW_MS ]] && args+=(--slow-ms "$PROBE_SLOW_MS")
        # Exit 1 = some requests failed: the line counts them. The slow
        # answers it lists go to a file of their own.
        slow=$OUT/logs/$target-$run-$kind-$rate.slow
        # What the target (and the databases) spent per request, read from
        # /proc around the probe.
        stage_metrics "$target" "$OUT/logs/$target-$run-$kind-$rate" before.prom
        t0=$(proc_cost "${TARGET_PIDS[@]}")
        d0=$(proc_cost "${dbs[@]}")
        line=$("$PROBE" "${args[@]}" 2>"$WORK/probe.err") || true
        t1=$(proc_cost "${TARGET_PIDS[@]}")
        d1=$(proc_cost "${dbs[@]}")
        stage_metrics "$target" "$OUT/logs/$target-$run-$kind-$rate" after.prom
        grep -v '^slow' "$WORK/probe.err" >>"$OUT/logs/probe.log" || true
        grep '^slow' "$WORK/probe.err" >"$slow" || rm -f "$slow"
        # No line: the probe could not run (see probe.log); all of it failed.
        [[ -n $line ]] || line="$((rate * PROBE_SECS))"$'\t0\t'"$((rate * PROBE_SECS))"$'\t0\tnan\tnan\tnan\tnan\tnan'
        read -r tc tsw < <(per_request "$t0" "$t1" "$((rate * PROBE_SECS))")
        read -r dc _ < <(per_request "$d0" "$d1" "$((rate * PROBE_SECS))")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$run" "$kind" "$rate" "$line" \
            "$tc" "$tsw" "$dc" >>"$OUT/probe.tsv"
        tail -n1 "$OUT/probe.tsv" >&2
    done
}

# stage_metrics TARGET PREFIX SUFFIX: a shim target's two /metrics as
# PREFIX.shim-SUFFIX and PREFIX.locsvc-SUFFIX (nothing for Kamailio).
stage_metrics() {
    [[ $1 == shim-* ]] || return 0
    curl -s --max-time 5 "http://127.0.0.1:$SHIM_METRICS_PORT/metrics" >"$2.shim-$3" 2>/dev/null || true
    curl -s --max-time 5 "http://127.0.0.1:$LOCSVC_METRICS_PORT/metrics" >"$2.locsvc-$3" 2>/dev/null || true
}

# proc_cost PID...: "CPU-ticks context-switches" summed over the PIDs, their
# children (Kamailio's workers) and all their threads, as counted so far.
proc_cost() {
    local p all=() ticks=0 sw=0 t n
    for p in "$@"; do
        all+=("$p")
        mapfile -t -O "${#all[@]}" all < <(pgrep -P "$p" || true)
    done
    for p in "${all[@]}"; do
        t=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null) || continue
        n=$(cat "/proc/$p"/task/*/status 2>/dev/null |
            awk '/^(non)?voluntary_ctxt_switches/ { s += $2 } END { print s + 0 }')
        ticks=$((ticks + t)) sw=$((sw + n))
    done
    echo "$ticks $sw"
}

# per_request BEFORE AFTER REQUESTS: from two proc_cost readings, "CPU-µs
# context-switches" per request.
per_request() {
    awk -v b="$1" -v a="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN {
        split(b, x, " "); split(a, y, " ")
        printf "%.0f %.1f\n", (y[1] - x[1]) * 1e6 / hz / n, (y[2] - x[2]) / n
    }'
}

# Whether the last sipp run had a failed or missing call.
failed_last() {
    tail -n1 "$OUT/steps.tsv" | awk -F'\t' '{ exit !($7 != 0 || $6 != $5) }'
}

# record_rows TARGET RUN AFTER: rows of every member database now (one
# second after the step, so writes still in flight to the slower member land).
record_rows() {
    local target=$1 run=$2 after=$3 s db n
    sleep 1
    while read -r s db n; do
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$run" "$after" "$s" "$db" "$n" >>"$OUT/rows.tsv"
    done < <("$LAYOUT" counts)
}

# subscribers PREFIX COUNT: subscriber rows PREFIX1..PREFIXCOUNT @example.com
# with password AUTH_PW on the master (kamctl's ha1 and ha1b), and
# $WORK/auth-PREFIX.csv, sipp's injection file for them in that order
# (register_auth.xml: [field0] user, [field1] its authentication keyword).
subscribers() {
    local prefix=$1 count=$2
    master_sql -e "INSERT INTO subscriber (username, domain, password, ha1, ha1b)
        SELECT CONCAT('$prefix', seq), 'example.com', '$AUTH_PW',
            MD5(CONCAT('$prefix', seq, ':example.com:$AUTH_PW')),
            MD5(CONCAT('$prefix', seq, '@example.com:example.com:$AUTH_PW'))
        FROM seq_1_to_$count"
    {
        echo "SEQUENTIAL"
        for i in $(seq 1 "$count"); do
            echo "$prefix$i;[authentication username=$prefix$i password=$AUTH_PW]"
        done
    } >"$WORK/auth-$prefix.csv"
}

# The users of a REGISTER ladder are [prefix][call_number], call numbers from 1
# up in every sipp run: for shim-auth each has its subscriber row before the
# target starts (the table emptied first), and the runs read them from
# injection files (register_auth.xml) instead.
register_ladder() {
    local target=$1 run=$2 tag=$1-$2-register rate scenario=register.xml inf_w='' inf_r=''
    "$LAYOUT" truncate
    if [[ $target == shim-auth ]]; then
        scenario=register_auth.xml
        master_sql -e 'TRUNCATE TABLE subscriber'
        if ((WARMUP > 0)); then
            subscribers "w$run-" "$WARMUP"
            inf_w=$WORK/auth-w$run-.csv
        fi
        for rate in $REG_RATES; do
            subscribers "r${run}s$rate-" "$((rate * STEP_SECS))"
        done
        say "$target run $run: $(master_sql -Nse 'SELECT COUNT(*) FROM subscriber') subscribers provisioned"
    fi
    start_target "$target" "$tag"
    if ((WARMUP > 0)); then
        run_sipp "$target" "$run" warmup "$scenario" "$WARMUP_RATE" "$WARMUP" "w$run-" "$(free_port)" 10000 "$inf_w"
        record_rows "$target" "$run" warmup
    fi
    probe_steps "$target" "$run" register "p$run-"
    for rate in $REG_RATES; do
        if [[ $target == shim-auth ]]; then
            inf_r=$WORK/auth-r${run}s$rate-.csv
        fi
        run_sipp "$target" "$run" register "$scenario" "$rate" "$((rate * STEP_SECS))" \
            "r${run}s$rate-" "$(free_port)" "$CALL_TIMEOUT_MS" "$inf_r"
        record_rows "$target" "$run" "register-$rate"
        failed_last && break
    done
    stop_target "$target" "$tag"
    record_rows "$target" "$run" stopped
}

invite_ladder() {
    local target=$1 run=$2 tag=$1-$2-invite kind scenario rate uas_port uas_pid total=0 secs=0
    if [[ $target == shim-auth ]]; then
        say "$target run $run: no INVITE ladder (REGISTER with digest auth only)"
        return 0
    fi
    kind=$(kind_of "$target")
    scenario=invite.xml
    [[ $kind == invite-302 ]] && scenario=invite302.xml
    "$LAYOUT" truncate
    start_target "$target" "$tag"
    # The registrations come from the port the UAS will listen on, so the
    # contact is the UAS and equals the packet's source (no `received`).
    uas_port=$(free_port)
    run_sipp "$target" "$run" preregister register.xml "$PRE_RATE" "$USERS" "inv-" "$uas_port" 10000
    if failed_last; then
        say "$target run $run: pre-registration failed; no INVITE ladder"
        stop_target "$target" "$tag"
        return 0
    fi
    probe_steps "$target" "$run" "$kind" "inv-" "$uas_port"
    uas_pid=
    if [[ $kind == invite-relay ]]; then
        # Bounds: twice the ladder's INVITEs, and the sum of its steps' bounds.
        for rate in $INV_RATES; do
            total=$((total + rate * STEP_SECS))
            secs=$((secs + STEP_SECS * 4 + 30))
        done
        (cd "$WORK" && exec "$SIPP" -sf "$SCEN/uas.xml" -i 127.0.0.1 -p "$uas_port" -nostdin \
            -m "$((total * 2))" -timeout "$((secs + 60))s" \
            >"$OUT/logs/$tag.uas.log" 2>&1) &
        uas_pid=$!
        PIDS+=("$uas_pid")
        sleep 0.5
    fi
    for rate in $INV_RATES; do
        run_sipp "$target" "$run" "$kind" "$scenario" "$rate" "$((rate * STEP_SECS))" "inv-" "$(free_port)"
        failed_last && break
    done
    if [[ -n $uas_pid ]]; then
        stop_pids "$uas_pid"
    fi
    stop_target "$target" "$tag"
}

# ------------------------------------------------------------------ machine

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "kernel: $(uname -r)"
    echo "os: $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)"
    echo "kamailio: $(kamailio -v 2>/dev/null | head -n1 | sed 's/^version: //' || echo n/a)"
    echo "mariadb: $(mariadbd --version 2>/dev/null | sed 's/^.*Ver //' || echo n/a)"
    echo "sipp: $("$SIPP" -v 2>&1 | awk '/SIPp v/ { print $2; exit }')"
    echo "locsvc: $LOCSVC ($(stat -c %y "$LOCSVC" 2>/dev/null | cut -d. -f1 || echo missing))"
    echo "proxy-shim: $SHIM ($(stat -c %y "$SHIM" 2>/dev/null | cut -d. -f1 || echo missing))"
    echo "repo (working tree): $(git -C "$HERE" describe --always --dirty 2>/dev/null || echo n/a)"
    echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "settings: TARGETS=\"$TARGETS\" RUNS=$RUNS REG_RATES=\"$REG_RATES\" INV_RATES=\"$INV_RATES\"" \
        "PROBE_RATES=\"$PROBE_RATES\" PROBE_SECS=$PROBE_SECS" \
        "STEP_SECS=$STEP_SECS USERS=$USERS PRE_RATE=$PRE_RATE WARMUP=$WARMUP@$WARMUP_RATE" \
        "CALL_TIMEOUT_MS=$CALL_TIMEOUT_MS" \
        "KAM_CHILDREN=$KAM_CHILDREN KAM_SHM_MB=$KAM_SHM_MB LOCSVC_HASH=$LOCSVC_HASH"
    echo "mariadb servers: master :$BENCH_MASTER_PORT, a :$BENCH_A_PORT, b :$BENCH_B_PORT" \
        "(innodb_flush_log_at_trx_commit=2, buffer pool ${BENCH_BUFFER_POOL:-1G} each)"
} >"$OUT/machine.txt"

# ------------------------------------------------------------------ main

for run in $(seq 1 "$RUNS"); do
    for target in $TARGETS; do
        say "run $run/$RUNS, $target: REGISTER ladder"
        register_ladder "$target" "$run"
        say "run $run/$RUNS, $target: INVITE ladder"
        invite_ladder "$target" "$run"
    done
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

python3 "$HERE/summarize.py" "$OUT" >"$OUT/summary.md"
cat "$OUT/summary.md"
say "results in $OUT"
