#!/usr/bin/env bash
# Fault benchmark through the SIP front: one MariaDB copy dies (kill -9) or
# hangs (SIGSTOP) under steady REGISTER + INVITE load, and we count what the
# phones saw. All on 127.0.0.1, ports picked at run time.
#
#   benches/faults.sh [OUT_DIR]
#
# Layout: benches/sip/layout.sh (master with locdb; server a = member 1 of
# groups 1 and 2, server b = member 2 of both). For each run 1..RUNS and each
# fault of FAULT:
#   1. layout.sh truncate (empty location tables, pristine locdb); start
#      `locsvc serve --master-url` (partition.hash LOCSVC_HASH) and
#      `proxy-shim --mode redirect --domain example.com $SHIM_ARGS`.
#   2. Pre-register USERS users f-1..f-USERS at PRE_RATE from port P (scenario
#      faults/register.xml; contact = sip:f-<i>@127.0.0.1:P).
#   3. For DURATION s, at once: sipp re-REGISTERs the same users, cycling, at
#      REG_RATE/s from port P (same contact, new Call-ID per call; expects
#      200), and sipp INVITEs them at INV_RATE/s (sip/scenarios/invite302.xml;
#      expects 302). FAULT_AT s after the start, server a gets the fault:
#        none  nothing (baseline)
#        kill  kill -9; after the load, `layout.sh up` starts it again (and
#              so rewrites locdb to its pristine rows)
#        stop  SIGSTOP; SIGCONT after the load
#      The master's locdb is polled every second meanwhile (locdb.tsv).
#   4. After the load: `locsvc groups list` (before a comes back), a brought
#      back, then `locsvc ul dump`: every user must still have a binding.
# A call fails when its final answer is not the expected one, or has not come
# CALL_TIMEOUT_MS after the request was first sent (sipp -recv_timeout; UDP
# retransmissions at 500 ms, 1 s ... stay on, as a phone's). Every sipp run is
# bounded by -m and -timeout.
#
# Output in OUT_DIR: summary.tsv (one line per run), summary.md, and per run
# <fault>-<run>/: report.txt, sipp files of pre/, reg/, inv/ (stats.csv,
# *_rtt.csv, *_errors.log, *_error_codes.csv), locdb.tsv, groups.json,
# dump.json, the shim's metrics before/after the load, the logs.
#
# Environment knobs (defaults in brackets):
#   FAULT [kill] (none|kill|stop; several, space-separated, run in turn)  RUNS [1]
#   FAULT_AT [15] s after the load starts   WINDOW [5] s: the fault window
#   DURATION [60] s   REG_RATE [300]  INV_RATE [300] calls/s   USERS [10000]
#   PRE_RATE [500] calls/s   CALL_TIMEOUT_MS [2000] (pre-registration: 10000)
#   LOCSVC [${CARGO_TARGET_DIR:-<repo>/target}/release/locsvc]
#   SHIM [${CARGO_TARGET_DIR:-<repo>/target}/release/proxy-shim]
#   LOCSVC_HASH [crc32-mod]  RUST_LOG [info for locsvc, warn for the shim]
#   SIPP [sipp]  BENCH_DB_DIR (layout.sh's state dir)
#   SHIM_ARGS [--rate-limit 0 --auth off]: each sipp stands for thousands of phones on
#             one address; empty for a shim built before those flags existed
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${1:-$(mktemp -d /tmp/faults.XXXXXX)}
FAULT=${FAULT:-kill}
RUNS=${RUNS:-1}
FAULT_AT=${FAULT_AT:-15}
WINDOW=${WINDOW:-5}
DURATION=${DURATION:-60}
REG_RATE=${REG_RATE:-300}
INV_RATE=${INV_RATE:-300}
USERS=${USERS:-10000}
PRE_RATE=${PRE_RATE:-500}
CALL_TIMEOUT_MS=${CALL_TIMEOUT_MS:-2000}
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
LOCSVC=${LOCSVC:-$BIN/locsvc}
SHIM=${SHIM:-$BIN/proxy-shim}
LOCSVC_HASH=${LOCSVC_HASH:-crc32-mod}
SIPP=${SIPP:-sipp}
SHIM_ARGS=${SHIM_ARGS---rate-limit 0 --auth off}
read -ra SHIM_ARGV <<<"$SHIM_ARGS"
LAYOUT=$HERE/sip/layout.sh
PREFIX=f-
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# shellcheck disable=SC2034 # LOG_TAG: read by die and say (lib/common.sh)
LOG_TAG=faults
# shellcheck source=SCRIPTDIR/lib/common.sh
source "$HERE/lib/common.sh"

for f in $FAULT; do
    [[ $f == none || $f == kill || $f == stop ]] || die "unknown fault '$f' (none kill stop)"
done
for n in RUNS FAULT_AT WINDOW DURATION REG_RATE INV_RATE USERS PRE_RATE CALL_TIMEOUT_MS; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive number, not '${!n}'"
done
((FAULT_AT < DURATION)) || die "FAULT_AT ($FAULT_AT) must come before the end of DURATION ($DURATION)"
for bin in "$LOCSVC" "$SHIM"; do
    [[ -x $bin ]] || die "not executable: $bin (set LOCSVC and SHIM)"
done
command -v python3 >/dev/null || die "python3 is needed to pick ports and summarise"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/faults-work.XXXXXX)
PIDS=()
LAYOUT_STARTED=
A_PID=
A_STATE=up # up | stopped | killed

# Puts server a back: SIGCONT, or a new mariadbd through layout.sh up.
restore_a() {
    case $A_STATE in
    stopped) kill -CONT "$A_PID" 2>/dev/null || true ;;
    killed) "$LAYOUT" up >/dev/null ;;
    esac
    A_STATE=up
}

# Ends only the processes this script started, by pid.
cleanup() {
    end_all_pids
    if [[ -n $LAYOUT_STARTED ]]; then
        "$LAYOUT" down || true # SIGCONTs a stopped server first
    else
        restore_a || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ layout

layout_up
command -v "$SIPP" >/dev/null || die "sipp not found (layout.sh up installs sip-tester)"

# ------------------------------------------------------------------ helpers (more in lib/common.sh)

# Waits for a sipp to end by itself (exit 1 = some calls failed: counted
# from its files; -m and -timeout bound it).
wait_sipp() {
    wait "$1" || true
    forget_pids "$1"
}

# start_sipp DIR SCENARIO RATE CALLS LOCAL_PORT RECV_TIMEOUT_MS: one bounded
# sipp run in the background, pid in SIPP_PID. -l: twice the calls a stall
# of RECV_TIMEOUT_MS + 1 s can pile up, so a stall never throttles the load.
start_sipp() {
    local dir=$1 scenario=$2 rate=$3 calls=$4 lport=$5 rto=$6
    mkdir -p "$dir"
    (cd "$dir" && exec "$SIPP" -sf "$scenario" -inf "$WORK/users.csv" -key prefix "$PREFIX" \
        -i 127.0.0.1 -p "$lport" -nostdin -r "$rate" -m "$calls" -l "$((rate * (rto + 1000) / 500))" \
        -default_behaviors all,-bye -recv_timeout "$rto" \
        -timeout "$((calls * 2 / rate + rto / 1000 + 30))s" -timeout_error \
        -trace_stat -stf stats.csv -fd 1 -trace_rtt -rtt_freq 1 -trace_err -trace_error_codes \
        "127.0.0.1:$SIP_PORT" >sipp.out 2>&1) &
    SIPP_PID=$!
    PIDS+=("$SIPP_PID")
}

# One line per second: epoch, then "group,no=status/errors" of every member.
poll_locdb() {
    while :; do
        printf '%s\t%s\n' "$EPOCHREALTIME" "$(MYSQL_PWD=$BENCH_DB_PW timeout 5 mariadb --no-defaults \
            --protocol=tcp -h127.0.0.1 -P"$BENCH_MASTER_PORT" -u"$BENCH_DB_USER" -N -B \
            -e "SELECT GROUP_CONCAT(CONCAT(id, ',', no, '=', status, '/', errors) ORDER BY id, no SEPARATOR ' ') FROM locdb" \
            "${BENCH_MASTER_URL##*/}" 2>&1 | tr '\n' ' ')"
        sleep 1
    done
}

sleep_until() { # epoch
    sleep "$(awk -v t="$1" -v n="$EPOCHREALTIME" 'BEGIN { d = t - n; print (d > 0 ? d : 0) }')"
}

# ------------------------------------------------------------------ one run

{
    echo "SEQUENTIAL"
    for i in $(seq 1 "$USERS"); do echo "$i;"; done
} >"$WORK/users.csv"

printf 'fault\trun\treg_calls\treg_ok\treg_failed\treg_timed_out\treg_unexpected\treg_503\tinv_calls\tinv_ok\tinv_failed\tinv_timed_out\tinv_unexpected\tinv_503\treg_p50\treg_p99\treg_max\treg_win_p50\treg_win_p99\treg_win_max\treg_win_failed\tinv_p50\tinv_p99\tinv_max\tinv_win_p50\tinv_win_p99\tinv_win_max\tinv_win_failed\tmember_off\tmissing_bindings\n' >"$OUT/summary.tsv"

one_run() {
    local fault=$1 run=$2 dir=$OUT/$1-$2 lport mport sport reg_port t0 pre_ok locsvc_pid shim_pid poll_pid reg_pid
    mkdir -p "$dir"
    [[ $("$LAYOUT" status | awk '$1 == "a" { print $4 }') == up ]] || "$LAYOUT" up >/dev/null
    "$LAYOUT" truncate
    A_PID=$("$LAYOUT" status | awk '$1 == "a" { print $3 }')
    [[ $A_PID =~ ^[0-9]+$ ]] || die "no pid for server a"

    lport=$(free_port)
    mport=$(free_port)
    sport=$(free_port)
    SIP_PORT=$(free_port)
    LOCSVC_PARTITION__HASH=$LOCSVC_HASH LOCSVC_PARTITION__USE_DOMAIN=true RUST_LOG=${RUST_LOG:-info} \
        "$LOCSVC" serve --master-url "$BENCH_MASTER_URL" --listen "127.0.0.1:$lport" \
        --metrics-listen "127.0.0.1:$mport" >"$dir/locsvc.log" 2>&1 &
    locsvc_pid=$!
    PIDS+=("$locsvc_pid")
    wait_tcp "$lport"
    wait_tcp "$mport"
    RUST_LOG=${RUST_LOG:-warn} "$SHIM" --listen "127.0.0.1:$SIP_PORT" --locsvc "http://127.0.0.1:$lport" \
        --domain example.com "${SHIM_ARGV[@]}" --mode redirect --metrics-listen "127.0.0.1:$sport" >"$dir/shim.log" 2>&1 &
    shim_pid=$!
    PIDS+=("$shim_pid")
    wait_sip "$SIP_PORT"

    say "$fault run $run: pre-registering $USERS users at $PRE_RATE/s"
    reg_port=$(free_port)
    start_sipp "$dir/pre" "$HERE/faults/register.xml" "$PRE_RATE" "$USERS" "$reg_port" 10000
    wait_sipp "$SIPP_PID"
    pre_ok=$(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "SuccessfulCall(C)") c = i } END { print $c + 0 }' \
        "$dir/pre/stats.csv" 2>/dev/null || echo 0)
    ((pre_ok == USERS)) || die "pre-registration: $pre_ok of $USERS users registered (see $dir/pre)"
    metrics "$sport" >"$dir/shim-metrics-before.txt"

    say "$fault run $run: ${DURATION}s of REGISTER $REG_RATE/s + INVITE $INV_RATE/s; fault '$fault' on a (pid $A_PID) at ${FAULT_AT}s"
    poll_locdb >"$dir/locdb.tsv" 2>&1 &
    poll_pid=$!
    PIDS+=("$poll_pid")
    t0=$EPOCHREALTIME
    start_sipp "$dir/reg" "$HERE/faults/register.xml" "$REG_RATE" "$((REG_RATE * DURATION))" "$reg_port" "$CALL_TIMEOUT_MS"
    reg_pid=$SIPP_PID
    start_sipp "$dir/inv" "$HERE/sip/scenarios/invite302.xml" "$INV_RATE" "$((INV_RATE * DURATION))" "$(free_port)" "$CALL_TIMEOUT_MS"
    sleep_until "$(awk -v t="$t0" -v d="$FAULT_AT" 'BEGIN { printf "%.6f", t + d }')"
    echo "$EPOCHREALTIME" >"$dir/fault_epoch"
    case $fault in
    kill)
        kill -KILL "$A_PID"
        A_STATE=killed
        ;;
    stop)
        kill -STOP "$A_PID"
        A_STATE=stopped
        ;;
    esac
    wait_sipp "$reg_pid"
    wait_sipp "$SIPP_PID"
    stop_pids "$poll_pid"

    timeout 20 "$LOCSVC" groups list --server "http://127.0.0.1:$lport" --json >"$dir/groups.json" 2>&1 || true
    metrics "$sport" >"$dir/shim-metrics-after.txt"
    say "$fault run $run: bringing a back"
    restore_a 2>>"$dir/layout.log"
    timeout 120 "$LOCSVC" ul dump --server "http://127.0.0.1:$lport" --json >"$dir/dump.json" 2>"$dir/dump.err" || true
    metrics "$mport" >"$dir/locsvc-metrics.txt"
    stop_pids "$shim_pid" "$locsvc_pid"

    analyse "$dir" "$fault" "$run" >"$dir/report.txt"
    cat "$dir/report.txt"
}

# Prometheus text of 127.0.0.1:$1 (empty if it does not answer).
metrics() { curl -s --max-time 5 "http://127.0.0.1:$1/metrics" 2>/dev/null || true; }

# ------------------------------------------------------------------ analysis

analyse() {
    python3 - "$@" "$FAULT_AT" "$WINDOW" "$USERS" "$PREFIX" "$OUT" <<'PY'
import glob, json, math, re, sys
d, fault, run, fault_at, window, users, prefix, out = sys.argv[1:]
window, users = float(window), int(users)
t_fault = float(open(f"{d}/fault_epoch").read())

def epoch(field):  # sipp writes "date<TAB>time<TAB>epoch"
    return float(field.split("\t")[-1])

def pct(xs, p):
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")

def sipp(kind):
    sd = f"{d}/{kind}"
    rows = [l.rstrip("\n").split(";") for l in open(f"{sd}/stats.csv") if l.strip()]
    head, data = rows[0], rows[1:]
    col = lambda r, name: r[head.index(name)]
    last = data[-1]
    c = lambda name: int(col(last, name))
    r = {"calls": c("TotalCallCreated"), "ok": c("SuccessfulCall(C)")}
    r["failed"] = r["calls"] - r["ok"]          # an unfinished call counts as failed
    r["timed_out"] = c("FailedTimeoutOnRecv(C)") + c("FailedMaxUDPRetrans(C)")
    r["unexpected"] = c("FailedUnexpectedMessage(C)") + c("FailedCallRejected(C)")
    # Failed calls per second around the fault, by when sipp gave up on them
    # (a timed-out call counts when its timer fires); a periodic row covers
    # the second before its CurrentTime, so it goes to its midpoint's second.
    per_sec = {}
    for row in data:
        b = math.floor(epoch(col(row, "CurrentTime")) - 0.5 - t_fault)
        per_sec[b] = per_sec.get(b, 0) + int(col(row, "FailedCall(P)"))
    r["per_sec"] = per_sec
    r["win_failed"] = sum(v for b, v in per_sec.items() if 0 <= b < window)
    # Response times: Date_ms is when the answer came, in ms since sipp's start.
    start = epoch(col(data[0], "StartTime"))
    rtt, win = [], []
    for f in glob.glob(f"{sd}/*_rtt.csv"):
        for line in list(open(f))[1:]:
            if not line.strip():
                continue
            date_ms, ms = (float(x) for x in line.split(";")[:2])
            rtt.append(ms)
            if 0 <= start + (date_ms - ms) / 1000 - t_fault < window:
                win.append(ms)
    rtt.sort()
    win.sort()
    r["rt"] = [pct(rtt, .5), pct(rtt, .99), rtt[-1] if rtt else float("nan")]
    r["win_rt"] = [pct(win, .5), pct(win, .99), win[-1] if win else float("nan")]
    r["win_ok"] = len(win)
    # Final answers that were not the expected one, by status code.
    codes = {}
    for f in glob.glob(f"{sd}/*_errors.log"):
        for m in re.finditer(r"received 'SIP/2\.0 (\d{3})", open(f, errors="replace").read()):
            codes[m.group(1)] = codes.get(m.group(1), 0) + 1
    r["codes"] = codes
    return r

reg, inv = sipp("reg"), sipp("inv")

# The shim's answers during the load, by method and status (retransmissions
# answered too): its counters after minus before.
def answers(name):
    n = {}
    for line in open(f"{d}/{name}"):
        m = re.match(r'proxy_shim_responses_total\{(.*)\} (\S+)', line)
        if m:
            lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            n[(lab.get("method"), lab.get("status"))] = float(m.group(2))
    return n
before, after = answers("shim-metrics-before.txt"), answers("shim-metrics-after.txt")
shim = {k: int(v - before.get(k, 0)) for k, v in sorted(after.items()) if v - before.get(k, 0)}

# locdb timeline: when member 1 of a group left status 1.
off, last = [], ""
for line in open(f"{d}/locdb.tsv"):
    t, _, state = line.rstrip("\n").partition("\t")
    last = state
    for m in re.finditer(r"(\d+),1=(\d+)/(\d+)", state):
        if m.group(2) != "1" and not any(o[0] == m.group(1) for o in off):
            off.append((m.group(1), float(t) - t_fault, m.group(2)))
member_off = ";".join(f"({g},1)->{s}@{t:+.1f}s" for g, t, s in off) or "no"

try:
    present = {re.sub(r"^sips?:", "", b["aor"]).split("@")[0] for b in json.load(open(f"{d}/dump.json"))}
    missing = str(sum(1 for i in range(1, users + 1) if f"{prefix}{i}" not in present))
except (OSError, ValueError, KeyError, TypeError):
    missing = "dump-failed"

f0 = lambda xs: [f"{x:.0f}" for x in xs]
cells = [fault, run]
for r in (reg, inv):
    cells += [str(r[k]) for k in ("calls", "ok", "failed", "timed_out", "unexpected")] + [str(r["codes"].get("503", 0))]
for r in (reg, inv):
    cells += f0(r["rt"]) + f0(r["win_rt"]) + [str(r["win_failed"])]
cells += [member_off, missing]
with open(f"{out}/summary.tsv", "a") as f:
    print("\t".join(cells), file=f)

print(f"== fault={fault} run={run} at +{fault_at}s (window {window:.0f}s)")
for name, r in (("REGISTER", reg), ("INVITE", inv)):
    codes = " ".join(f"{k}:{v}" for k, v in sorted(r["codes"].items())) or "none"
    print(f"{name:8} calls {r['calls']}, ok {r['ok']}, failed {r['failed']} "
          f"(timed out {r['timed_out']}, unexpected answer {r['unexpected']}; codes {codes})")
    print(f"{'':8} response ms p50/p99/max: whole run {'/'.join(f0(r['rt']))}, "
          f"window {'/'.join(f0(r['win_rt']))} ({r['win_ok']} ok calls started in it, "
          f"{r['win_failed']} failed)")
    print(f"{'':8} failed per second from the fault, -2..+{window + 3:.0f}: "
          + " ".join(str(r["per_sec"].get(b, 0)) for b in range(-2, int(window) + 3)))
print("shim answers during the load: " + (" ".join(f"{m} {c}:{n}" for (m, c), n in shim.items()) or "none"))
print(f"locdb: member 1 switched off: {member_off}; at the end: {last}")
print(f"users without a binding after the run: {missing} of {users}")
PY
}

# ------------------------------------------------------------------ main

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "locsvc: $LOCSVC; proxy-shim: $SHIM; sipp: $("$SIPP" -v 2>&1 | awk '/SIPp v/ { print $2; exit }')"
    echo "settings: FAULT=\"$FAULT\" RUNS=$RUNS FAULT_AT=$FAULT_AT WINDOW=$WINDOW DURATION=$DURATION" \
        "REG_RATE=$REG_RATE INV_RATE=$INV_RATE USERS=$USERS PRE_RATE=$PRE_RATE" \
        "CALL_TIMEOUT_MS=$CALL_TIMEOUT_MS LOCSVC_HASH=$LOCSVC_HASH"
} >"$OUT/machine.txt"

for run in $(seq 1 "$RUNS"); do
    for fault in $FAULT; do
        one_run "$fault" "$run"
    done
done

python3 - "$OUT/summary.tsv" >"$OUT/summary.md" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("| fault | run | REGISTER failed/calls (503) | INVITE failed/calls (503) "
      "| REG ms p50/p99/max | REG window | INV ms p50/p99/max | INV window "
      "| failed in window REG/INV | member 1 off | users without binding |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    t = lambda k: "/".join(r[f"{k}_{p}"] for p in ("p50", "p99", "max"))
    print(f"| {r['fault']} | {r['run']} | {r['reg_failed']}/{r['reg_calls']} ({r['reg_503']}) "
          f"| {r['inv_failed']}/{r['inv_calls']} ({r['inv_503']}) | {t('reg')} | {t('reg_win')} "
          f"| {t('inv')} | {t('inv_win')} | {r['reg_win_failed']}/{r['inv_win_failed']} "
          f"| {r['member_off']} | {r['missing_bindings']} |")
PY
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
cat "$OUT/summary.md"
say "results in $OUT"
