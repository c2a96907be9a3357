# shellcheck shell=bash
# Helpers shared by the SIP benchmark scripts (benches/faults.sh,
# benches/sip/compare.sh, proxy-shim/bench/sipp-rates.sh). Sourced, not run:
#
#   LOG_TAG=name
#   source "<path to>/benches/lib/common.sh"
#
# It sets no shell options. The caller keeps the pids of the processes it
# started in the array PIDS, and sets LAYOUT (benches/sip/layout.sh) before
# calling layout_up. Everything binds or probes 127.0.0.1 only.

# die MESSAGE: prints "LOG_TAG: error: MESSAGE" to stderr and exits 2.
die() {
    echo "${LOG_TAG:-${0##*/}}: error: $*" >&2
    exit 2
}

# say MESSAGE: prints "LOG_TAG: MESSAGE" to stderr.
say() { echo "${LOG_TAG:-${0##*/}}: $*" >&2; }

# free_port: prints a loopback port free on both UDP and TCP right now (the shim binds both).
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

# wait_tcp PORT: waits (bounded, 10 s) until something accepts TCP on 127.0.0.1:PORT, else dies.
wait_tcp() {
    local _
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 after 10 s"
}

# wait_sip PORT: waits (bounded, 20 s) until a SIP server answers an OPTIONS on UDP 127.0.0.1:PORT, else dies.
wait_sip() {
    python3 - "$1" <<'PY' || die "no SIP answer on udp 127.0.0.1:$1 after 20 s"
import socket, sys, time
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
me = s.getsockname()[1]
s.settimeout(0.5)
deadline = time.time() + 20
n = 0
while time.time() < deadline:
    n += 1
    msg = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-probe-{n}\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=probe\r\n"
           f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: probe-{n}@127.0.0.1\r\n"
           "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    try:
        s.sendto(msg.encode(), ("127.0.0.1", port))
        if s.recv(65535).startswith(b"SIP/2.0 "):
            sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
PY
}

# forget_pids PID...: removes these pids from PIDS (they have ended, or are someone else's to stop).
forget_pids() {
    local keep=() p q drop
    for p in "${PIDS[@]}"; do
        drop=
        for q in "$@"; do [[ $p == "$q" ]] && drop=1; done
        [[ -n $drop ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# stop_pids PID...: stops these pids (TERM, then KILL after 15 s), waits for them and forgets them.
stop_pids() {
    local pid deadline
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 15))
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && [[ $(ps -o stat= -p "$pid" 2>/dev/null) != Z* ]]; do
            if ((SECONDS >= deadline)); then
                say "pid $pid ignores TERM; sending KILL"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
        wait "$pid" 2>/dev/null || true
    done
    forget_pids "$@"
}

# end_all_pids: sends TERM to every pid still in PIDS, then waits for each (for an EXIT trap; only our own processes).
end_all_pids() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}

# layout_up: starts $LAYOUT's MariaDB servers (LAYOUT_STARTED=1 unless all were up) and takes its BENCH_* variables.
layout_up() {
    if ! "$LAYOUT" status 2>/dev/null | awk '$4 != "up" { bad = 1 } END { exit bad }'; then
        # shellcheck disable=SC2034 # the caller's cleanup reads it
        LAYOUT_STARTED=1
    fi
    eval "$("$LAYOUT" up)"
    [[ -n ${BENCH_MASTER_URL:-} ]] || die "layout.sh up printed no BENCH_MASTER_URL"
}

# sipp_step DIR TARGET_PORT SCENARIO INF PREFIX LOCAL_PORT RATE CALLS TIMEOUT_SECS [SIPP_OPTION...]:
# one sipp run in DIR (made if missing) of CALLS calls of SCENARIO at RATE per second from
# 127.0.0.1:LOCAL_PORT to 127.0.0.1:TARGET_PORT, users from the injection file INF (key `prefix` =
# PREFIX), bounded by TIMEOUT_SECS, with its statistics and response times in DIR; prints its
# sipp_result line. $SIPP (default sipp) is the sipp to run.
sipp_step() {
    local dir=$1 target=$2 scenario=$3 inf=$4 prefix=$5 lport=$6 rate=$7 calls=$8 secs=$9 started ended
    shift 9
    mkdir -p "$dir"
    started=$(date +%s.%N)
    # Exit 1 = some calls failed: sipp_result counts them.
    (cd "$dir" && "${SIPP:-sipp}" -sf "$scenario" -inf "$inf" -key prefix "$prefix" \
        -i 127.0.0.1 -p "$lport" -nostdin -r "$rate" -m "$calls" \
        -default_behaviors all,-bye "$@" \
        -timeout "${secs}s" -timeout_error \
        -trace_stat -stf stats.csv -fd 1 -trace_rtt -rtt_freq 100 \
        "127.0.0.1:$target" >sipp.out 2>&1) || true
    ended=$(date +%s.%N)
    sipp_result "$dir" "$calls" "$started" "$ended"
}

# sipp_result DIR CALLS STARTED ENDED: prints "ok failed retrans timed_out unexpected achieved_cps p50_ms p99_ms secs" (tab-separated) of the sipp run in DIR; without stats.csv, CALLS failed.
sipp_result() {
    python3 - "$@" <<'PY'
import glob, sys
d, calls, t0, t1 = sys.argv[1:]
try:
    rows = [l.rstrip("\n").split(";") for l in open(f"{d}/stats.csv") if l.strip()]
    head, last = rows[0], rows[-1]
    col = lambda name: last[head.index(name)]
    ok, failed, retrans = int(col("SuccessfulCall(C)")), int(col("FailedCall(C)")), col("Retransmissions(C)")
    # Why calls failed: no final answer in time, or another answer (e.g. 503).
    timed_out = int(col("FailedTimeoutOnRecv(C)")) + int(col("FailedMaxUDPRetrans(C)"))
    unexpected = int(col("FailedUnexpectedMessage(C)")) + int(col("FailedCallRejected(C)"))
except (OSError, IndexError, ValueError):
    ok, failed, retrans, timed_out, unexpected = 0, int(calls), "nan", 0, 0   # sipp did not run
# Every response time sipp measured (1 ms resolution).
rtt = sorted(float(l.split(";")[1]) for f in glob.glob(f"{d}/*_rtt.csv")
             for l in list(open(f))[1:] if l.strip())
pct = lambda p: rtt[min(len(rtt) - 1, int(p * len(rtt)))] if rtt else float("nan")
secs = float(t1) - float(t0)
print(f"{ok}\t{failed}\t{retrans}\t{timed_out}\t{unexpected}\t{ok / secs:.0f}\t{pct(0.5):.0f}\t{pct(0.99):.0f}\t{secs:.2f}")
PY
}
