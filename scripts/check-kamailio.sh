#!/usr/bin/env bash
# check-kamailio.sh: locsvc with a real Kamailio 5.6 (docs/kamailio.md), what
# CI runs after the test suite. Everything on loopback, ports picked at run time:
#
#   sipp ──▶ Kamailio front (deploy/kamailio/front.cfg, 127.0.0.2)
#              ──▶ proxy-shim --mode redirect --trusted 127.0.0.2/32 --nat never
#                    ──gRPC──▶ locsvc (partition.hash = crc32-mod) ─┐
#   sipp ──▶ Kamailio p_usrloc node (benches/sip/kamailio.cfg, db_mode 3) ─┤
#                                       MariaDB: master (locdb) + a, b (loc_1, loc_2)
#
# 1. Front proxy: FRONT_USERS users register through the front (relayed to the
#    shim, saved by locsvc); `locsvc ul show` finds each binding; INVITEs to
#    them through the front get the shim's 302, which the front follows
#    (uac_redirect get_redirects) to the sipp UAS: every call must get its 200.
# 2. Side by side on the same member databases: NODE_USERS users register
#    through the p_usrloc node; locsvc finds them (`ul show`, and INVITEs
#    through front + shim reach the UAS); the front's users are found by the
#    node's lookup() (INVITEs through the node reach the UAS). Both members of
#    each group hold the same rows.
# The UAS answers exactly the calls made (sipp -m) and must exit 0: every
# INVITE and its ACK reached it.
#
# Usage (as root: apt-get, MariaDB servers):
#   scripts/check-kamailio.sh                   BIN=target/release (built if missing)
#   BIN=target/debug scripts/check-kamailio.sh  the binaries the tests built (CI)
#
# Knobs: FRONT_USERS (20), NODE_USERS (10), CHECK_KAMAILIO_DIR (state,
# default target/kamailio-check: db/ keeps the MariaDB data dirs between runs,
# run/ the logs of the last run; delete the directory to reclaim ~1 GB),
# CHECK_KAMAILIO_TIMEOUT (60: bound of each sipp run, seconds; every other
# wait has its own bound). Takes about 20 s once the packages are installed.
# Exit 0 when every step passed, 1 otherwise.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
REPO=$(pwd)
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

t0=$SECONDS
say() { printf 'check-kamailio: [%d s] %s\n' "$((SECONDS - t0))" "$*" >&2; }
pass() { printf 'check-kamailio: PASS %s\n' "$*"; }
FAILED=
fail() {
	printf 'check-kamailio: FAIL %s\n' "$*"
	FAILED=1
	exit 1
}

# The processes started here are configured here only: an inherited
# LOCSVC_*/PROXY_SHIM_* setting must not leak into them (locsvc refuses
# unknown LOCSVC_* names; scripts/testdb.sh exports LOCSVC_TEST_*).
while read -r v; do
	unset "$v"
done < <(compgen -e | grep -E '^(LOCSVC|PROXY_SHIM)_' || true)

BIN=${BIN:-target/release}
[[ $BIN == /* ]] || BIN=$REPO/$BIN
LOCSVC=$BIN/locsvc
SHIM=$BIN/proxy-shim
FRONT_USERS=${FRONT_USERS:-20}
NODE_USERS=${NODE_USERS:-10}
DOMAIN=example.com
FRONT_IP=127.0.0.2 # the front alone is --trusted by the shim; sipp is 127.0.0.1
STATE=${CHECK_KAMAILIO_DIR:-$REPO/target/kamailio-check}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
RUN=$STATE/run
SCEN=$REPO/scripts/kamailio
LAYOUT=$REPO/benches/sip/layout.sh

# ---------------------------------------------------------------- setup

need=()
for p in mariadb-server mariadb-client kamailio kamailio-mysql-modules sip-tester python3; do
	[[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) == installed ]] || need+=("$p")
done
if ((${#need[@]})); then
	say "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q --no-install-recommends "${need[@]}" >&2 </dev/null ||
		{ apt-get update -q >&2 </dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >&2 </dev/null; } ||
		fail "apt-get install ${need[*]}"
fi
for c in kamailio sipp mariadbd python3 timeout; do
	command -v "$c" >/dev/null || fail "'$c' not found"
done

if [[ ! -x $LOCSVC || ! -x $SHIM ]]; then
	profile=()
	case $BIN in
	"$REPO/target/release") profile=(--release) ;;
	"$REPO/target/debug") ;;
	*) fail "no locsvc or proxy-shim in BIN=$BIN" ;;
	esac
	say "building locsvc and proxy-shim into $BIN"
	cargo build "${profile[@]}" --locked -p locsvc -p proxy-shim >&2 || fail "cargo build"
fi

rm -rf "$RUN"
mkdir -p "$RUN/kam-front" "$RUN/kam-node"

PIDS=()
LAYOUT_UP=
cleanup() {
	local rc=$? p kids=()
	trap - EXIT
	# Kamailio's children too, should one outlive its main process.
	for p in "${PIDS[@]}"; do
		mapfile -t -O "${#kids[@]}" kids < <(pgrep -P "$p" 2>/dev/null || true)
	done
	for p in "${PIDS[@]}" "${kids[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	local deadline=$((SECONDS + 15))
	for p in "${PIDS[@]}" "${kids[@]}"; do
		while kill -0 "$p" 2>/dev/null && [[ $(ps -o stat= -p "$p" 2>/dev/null) != Z* ]]; do
			if ((SECONDS >= deadline)); then
				kill -KILL "$p" 2>/dev/null || true
				break
			fi
			sleep 0.1
		done
		wait "$p" 2>/dev/null || true
	done
	if [[ -n $LAYOUT_UP ]]; then
		BENCH_DB_DIR=$STATE/db timeout 120 "$LAYOUT" down >"$RUN/layout-down.log" 2>&1 ||
			say "warning: layout.sh down failed (see $RUN/layout-down.log)"
	fi
	if ((rc != 0)) || [[ -n $FAILED ]]; then
		say "logs in $RUN"
		printf 'check-kamailio: FAILED after %d s\n' "$((SECONDS - t0))"
		exit 1
	fi
	printf 'check-kamailio: all passed in %d s\n' "$((SECONDS - t0))"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port IP: a port free on UDP and TCP at IP right now.
free_port() {
	python3 - "$1" <<'PY'
import socket, sys
for _ in range(100):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((sys.argv[1], 0))
    port = u.getsockname()[1]
    t = socket.socket()
    try:
        t.bind((sys.argv[1], port))
        print(port)
        break
    except OSError:
        pass
    finally:
        t.close()
        u.close()
PY
}

# sip_ping IP PORT SECONDS PID: until something answers 200 to an OPTIONS
# there (bounded); gives up at once when PID (the server) is gone.
sip_ping() {
	python3 - "$@" <<'PY'
import os, socket, sys, time
ip, port, secs, pid = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
me = s.getsockname()[1]
s.settimeout(0.5)
deadline, n = time.time() + secs, 0
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    n += 1
    msg = (f"OPTIONS sip:{ip}:{port} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-ping-{n};rport\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:ping@127.0.0.1>;tag=ping\r\n"
           f"To: <sip:{ip}:{port}>\r\nCall-ID: ping-{n}@127.0.0.1\r\n"
           "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    try:
        s.sendto(msg.encode(), (ip, port))
        if s.recv(65535).startswith(b"SIP/2.0 200"):
            sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
PY
}

# alive NAME PID: dies with NAME's log when PID is gone.
alive() {
	if ! kill -0 "$2" 2>/dev/null; then
		tail -n 30 "$RUN/$1.log" >&2 || true
		fail "$1 exited (log: $RUN/$1.log)"
	fi
}

# ---------------------------------------------------------------- databases

say "MariaDB layout (benches/sip/layout.sh, state in $STATE/db)"
LAYOUT_UP=1
eval "$(BENCH_DB_DIR=$STATE/db BENCH_BUFFER_POOL=64M BENCH_MAX_CONNECTIONS=300 BENCH_INSTALL=0 \
	timeout 300 "$LAYOUT" up 2>"$RUN/layout-up.log")" || {
	tail -n 30 "$RUN/layout-up.log" >&2
	fail "layout.sh up"
}
# Empty location tables, pristine locdb (2 groups x 2 members), no locsvc
# instance or layout epoch of an earlier run.
BENCH_DB_DIR=$STATE/db timeout 60 "$LAYOUT" truncate 2>>"$RUN/layout-up.log" || fail "layout.sh truncate"
pass "MariaDB master + 2 member servers up, locdb: 2 groups x 2 members ($BENCH_MASTER_URL)"

# ---------------------------------------------------------------- processes

LOCSVC_PORT=$(free_port 127.0.0.1)
SHIM_PORT=$(free_port 127.0.0.1)
SHIM_METRICS=$(free_port 127.0.0.1)
FRONT_PORT=$(free_port "$FRONT_IP")
NODE_PORT=$(free_port 127.0.0.1)
UAS_PORT=$(free_port 127.0.0.1)
LOCSVC_URL=http://127.0.0.1:$LOCSVC_PORT

say "locsvc on $LOCSVC_URL (partition.hash = crc32-mod, as p_usrloc)"
(cd "$RUN" && exec env LOCSVC_PARTITION__HASH=crc32-mod LOCSVC_PARTITION__USE_DOMAIN=true RUST_LOG=warn \
	"$LOCSVC" serve --master-url "$BENCH_MASTER_URL" --listen "127.0.0.1:$LOCSVC_PORT" \
	--metrics-listen off >"$RUN/locsvc.log" 2>&1) &
LOCSVC_PID=$!
PIDS+=("$LOCSVC_PID")
deadline=$((SECONDS + 60))
until "$LOCSVC" groups list --server "$LOCSVC_URL" >"$RUN/groups.txt" 2>&1; do
	alive locsvc "$LOCSVC_PID"
	((SECONDS < deadline)) || fail "locsvc not answering after 60 s (log: $RUN/locsvc.log)"
	sleep 0.3
done

say "proxy-shim on udp 127.0.0.1:$SHIM_PORT (redirect mode, trusts only $FRONT_IP)"
(cd "$RUN" && exec env RUST_LOG=warn "$SHIM" --listen "127.0.0.1:$SHIM_PORT" --locsvc "$LOCSVC_URL" \
	--domain "$DOMAIN" --mode redirect --trusted "$FRONT_IP/32" --nat never \
	--metrics-listen "127.0.0.1:$SHIM_METRICS" >"$RUN/shim.log" 2>&1) &
SHIM_PID=$!
PIDS+=("$SHIM_PID")
sip_ping 127.0.0.1 "$SHIM_PORT" 30 "$SHIM_PID" || { alive shim "$SHIM_PID"; fail "proxy-shim does not answer OPTIONS"; }

# -DD: foreground, so $! is the main process; -E: log to stderr; -Y: its own
# runtime directory (no /run/kamailio needed).
say "Kamailio front (deploy/kamailio/front.cfg) on udp $FRONT_IP:$FRONT_PORT"
kamailio -f "$REPO/deploy/kamailio/front.cfg" -DD -E -m 64 -M 8 -Y "$RUN/kam-front" \
	-A "LISTEN=udp:$FRONT_IP:$FRONT_PORT" -A "SHIM_URI=\"sip:127.0.0.1:$SHIM_PORT\"" -A CHILDREN=2 \
	>"$RUN/kamailio-front.log" 2>&1 &
FRONT_PID=$!
PIDS+=("$FRONT_PID")

# The benchmark's p_usrloc node (db_mode 3 on the same locdb), filled in as
# benches/sip/compare.sh does.
say "Kamailio p_usrloc node (benches/sip/kamailio.cfg) on udp 127.0.0.1:$NODE_PORT"
sed -e "s|@LISTEN_IP@|127.0.0.1|g" -e "s|@LISTEN_PORT@|$NODE_PORT|g" \
	-e "s|@MASTER_URL@|$BENCH_MASTER_URL|g" -e "s|@CHILDREN@|2|g" \
	"$REPO/benches/sip/kamailio.cfg" >"$RUN/kamailio-node.cfg"
kamailio -f "$RUN/kamailio-node.cfg" -DD -E -m 64 -M 8 -Y "$RUN/kam-node" \
	>"$RUN/kamailio-node.log" 2>&1 &
NODE_PID=$!
PIDS+=("$NODE_PID")

sip_ping "$FRONT_IP" "$FRONT_PORT" 30 "$FRONT_PID" || { alive kamailio-front "$FRONT_PID"; fail "Kamailio front does not answer OPTIONS"; }
sip_ping 127.0.0.1 "$NODE_PORT" 30 "$NODE_PID" || { alive kamailio-node "$NODE_PID"; fail "Kamailio p_usrloc node does not answer OPTIONS"; }
pass "locsvc, proxy-shim, Kamailio front and Kamailio p_usrloc node answer"

# ---------------------------------------------------------------- sipp

SIPP_TIMEOUT=${CHECK_KAMAILIO_TIMEOUT:-60}

# sipp_run NAME SCENARIO TARGET LOCAL_PORT CALLS PREFIX: CALLS calls at 20/s
# from 127.0.0.1:LOCAL_PORT, each bounded (5 s without an answer fails it),
# the run bounded by SIPP_TIMEOUT; PASS when every call succeeded.
sipp_run() {
	local name=$1 scenario=$2 target=$3 lport=$4 calls=$5 prefix=$6 rc=0 ok
	(cd "$RUN" && timeout "$((SIPP_TIMEOUT + 30))" sipp -sf "$SCEN/$scenario" -key prefix "$prefix" \
		-i 127.0.0.1 -p "$lport" -m "$calls" -r 20 -nostdin -recv_timeout 5000 \
		-timeout "${SIPP_TIMEOUT}s" -timeout_error \
		-trace_err -error_file "$RUN/$name.err" -trace_screen -screen_file "$RUN/$name.screen" \
		"$target" >"$RUN/$name.out" 2>&1) || rc=$?
	ok=$(awk '/Successful call/ { print $(NF) }' "$RUN/$name.screen" 2>/dev/null | tail -n 1)
	if ((rc != 0)) || [[ $ok != "$calls" ]]; then
		tail -n 25 "$RUN/$name.screen" "$RUN/$name.err" >&2 2>/dev/null || true
		fail "$name: ${ok:-0} of $calls calls succeeded (sipp exit $rc; $RUN/$name.*)"
	fi
}

# binding_of AOR: the contacts `locsvc ul show` lists for AOR.
binding_of() {
	"$LOCSVC" ul show "$1" --server "$LOCSVC_URL" 2>&1 | sed -n 's/^ *Contact: <\([^>]*\)>.*/\1/p'
}

# all_found PREFIX COUNT: every PREFIX1..COUNT@DOMAIN has exactly its UAS contact in locsvc.
all_found() {
	local prefix=$1 count=$2 i got want
	for ((i = 1; i <= count; i++)); do
		want="sip:$prefix$i@127.0.0.1:$UAS_PORT"
		got=$(binding_of "sip:$prefix$i@$DOMAIN")
		[[ $got == "$want" ]] || fail "locsvc ul show sip:$prefix$i@$DOMAIN: '${got//$'\n'/, }', want '$want'"
	done
}

FRONT=$FRONT_IP:$FRONT_PORT
NODE=127.0.0.1:$NODE_PORT

# The users register from the port the UAS will then listen on: their
# contacts are the UAS.
say "1. REGISTER $FRONT_USERS users through the Kamailio front"
sipp_run front-register register.xml "$FRONT" "$UAS_PORT" "$FRONT_USERS" fr-
pass "$FRONT_USERS REGISTERs through the Kamailio front answered 200 (relayed from the shim)"
all_found fr- "$FRONT_USERS"
pass "locsvc ul show: every front user bound to sip:fr-N@127.0.0.1:$UAS_PORT"

say "2. REGISTER $NODE_USERS users through the Kamailio p_usrloc node"
sipp_run node-register register.xml "$NODE" "$UAS_PORT" "$NODE_USERS" ku-
pass "$NODE_USERS REGISTERs through the p_usrloc node answered 200 (saved by p_usrloc)"
all_found ku- "$NODE_USERS"
pass "locsvc ul show: every user p_usrloc saved is found by locsvc (same group, same rows)"

# Every binding on both members of its group, in the group both hash to.
counts=$(BENCH_DB_DIR=$STATE/db "$LAYOUT" counts 2>/dev/null) || fail "layout.sh counts"
python3 - "$FRONT_USERS" "$NODE_USERS" "$counts" <<'PY' || fail "member row counts: $(tr '\n' ' ' <<<"$counts")"
import sys
n = int(sys.argv[1]) + int(sys.argv[2])
rows = {}
for line in sys.argv[3].splitlines():
    s, db, c = line.split()
    rows[(s, db)] = int(c)
same = all(rows[("a", db)] == rows[("b", db)] for db in ("loc_1", "loc_2"))
total = rows[("a", "loc_1")] + rows[("a", "loc_2")]
sys.exit(0 if same and total == n and min(rows.values()) > 0 else 1)
PY
pass "location rows per member: $(tr '\n' ' ' <<<"$counts")(both members of each group equal, both groups used)"

INVITES=$((FRONT_USERS + NODE_USERS + FRONT_USERS))
say "sipp UAS on 127.0.0.1:$UAS_PORT for $INVITES calls"
(cd "$RUN" && exec timeout "$((3 * SIPP_TIMEOUT + 60))" sipp -sf "$SCEN/uas.xml" -i 127.0.0.1 -p "$UAS_PORT" \
	-m "$INVITES" -nostdin -timeout "$((3 * SIPP_TIMEOUT + 30))s" -timeout_error \
	-trace_err -error_file "$RUN/uas.err" -trace_screen -screen_file "$RUN/uas.screen" \
	>"$RUN/uas.out" 2>&1) &
UAS_PID=$!
PIDS+=("$UAS_PID")
deadline=$((SECONDS + 15))
until grep -qx "$(printf '%04X' "$UAS_PORT")" < <(awk 'FNR > 1 { split($2, a, ":"); print a[2] }' /proc/net/udp); do
	alive uas "$UAS_PID"
	((SECONDS < deadline)) || fail "the sipp UAS did not bind 127.0.0.1:$UAS_PORT"
	sleep 0.1
done

say "3. INVITE the front's users through the Kamailio front (shim 302 -> get_redirects -> UAS)"
sipp_run front-invite invite.xml "$FRONT" "$(free_port 127.0.0.1)" "$FRONT_USERS" fr-
pass "$FRONT_USERS INVITEs through the front: 302 from the shim followed, 200 from the UAS"

say "4. INVITE the p_usrloc node's users through the front (locsvc finds p_usrloc's rows)"
sipp_run node-users-via-front invite.xml "$FRONT" "$(free_port 127.0.0.1)" "$NODE_USERS" ku-
pass "$NODE_USERS INVITEs to users p_usrloc saved, through front + shim + locsvc: 200 from the UAS"

say "5. INVITE the front's users through the p_usrloc node (lookup() finds locsvc's rows)"
sipp_run front-users-via-node invite.xml "$NODE" "$(free_port 127.0.0.1)" "$FRONT_USERS" fr-
pass "$FRONT_USERS INVITEs to users locsvc saved, through the p_usrloc node's lookup(): 200 from the UAS"

# The UAS exits 0 once it has answered all INVITES calls, each with its ACK.
rc=0
timeout 30 tail --pid="$UAS_PID" -f /dev/null || true
if kill -0 "$UAS_PID" 2>/dev/null; then
	fail "the UAS has not seen all $INVITES calls within 30 s ($RUN/uas.screen)"
fi
wait "$UAS_PID" || rc=$?
((rc == 0)) || fail "the UAS: a call failed (sipp exit $rc; $RUN/uas.screen, $RUN/uas.err)"
pass "the UAS answered all $INVITES calls and got every ACK"

# The shim answered each call through the front with a 302 (never relayed it).
m=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
	"http://127.0.0.1:$SHIM_METRICS/metrics") || fail "cannot read the shim's metrics"
n302=$(awk '/^proxy_shim_responses_total\{/ && /method="INVITE"/ && /status="302"/ { s += $NF } END { print s + 0 }' <<<"$m")
((n302 == FRONT_USERS + NODE_USERS)) || fail "the shim sent $n302 INVITE 302s, want $((FRONT_USERS + NODE_USERS))"
pass "the shim answered $n302 INVITEs from the front with 302 (redirect mode)"

for p in "$FRONT_PID" "$NODE_PID" "$SHIM_PID" "$LOCSVC_PID"; do
	kill -0 "$p" 2>/dev/null || fail "a process (pid $p) died during the check (logs in $RUN)"
done
