#!/usr/bin/env bash
# lab.sh: the whole stack on this machine in one command, as local processes
# on loopback (docs/operate.md): three MariaDB servers (a locdb master and
# two member servers), two locsvc instances on that locdb, one proxy-shim in
# front of both, Prometheus scraping the three (and itself) with
# deploy/prometheus/alerts.yml loaded, and otlp-sink receiving the traces of
# all three (OTLP/gRPC, every request traced; spans as JSON lines).
#
#   master  database `locmaster`: locdb, subscriber, locsvc's own tables
#   a       databases loc_1, loc_2: member 1 of groups 1 and 2 (risk group 1)
#   b       databases loc_1, loc_2: member 2 of groups 1 and 2 (risk group 2)
#
# Usage (as root; Debian 12):
#   scripts/lab.sh up      install what is missing (apt-get), build the binaries if
#                          missing, start everything, print the env (also in status)
#   scripts/lab.sh status  the env, then one line per process: name port pid up|down
#   scripts/lab.sh smoke   against a running lab: REGISTER and INVITE through the shim,
#                          the binding through both instances, each request's trace
#                          (shim -> locsvc -> members) in otlp-sink, kill member server `a`
#                          and see LocsvcMemberOff fire, restart it and see the alert
#                          clear and every member readable again, then check every
#                          dashboard query (scripts/lab/dashboard-check.py); exit 1 on
#                          any failure
#   scripts/lab.sh down    stop everything the lab started (data is kept)
#   scripts/lab.sh clean   down, then delete the state directory
#   scripts/lab.sh env     print the env file of the last `up`
#
#   eval "$(scripts/lab.sh env)"; locsvc groups list --server "$LAB_LOCSVC1"
#
# Every port is picked at run time (loopback only). `up` starts what is not
# running: the databases are kept, and unless every process is up already the
# processes are (re)started on a fresh cluster (databases recreated, schema
# by `locsvc migrate`). Knobs:
#   BIN                   binaries: locsvc, proxy-shim, otlp-sink (default
#                         target/release; target/debug works too); a missing one
#                         is built with cargo
#   LAB_DIR               state (default target/lab; at most 70 characters)
#   LAB_SCRAPE_INTERVAL   Prometheus scrape and rule evaluation interval (1s)
#   LAB_ALERT_FOR_DIVISOR every `for:` of the alert rules is divided by this in
#                         the lab (default 12: 1m -> 5s); 1 loads them as written
#   LAB_CENSUS_MS         cluster.census_interval_ms of both instances (3000)
#   LAB_SWEEP_MS          expiry.interval_ms of both instances (5000)
#   LAB_TRACE_RATIO       trace sample ratio of the shim and both instances (1:
#                         every request; 0 turns the smoke's trace checks off)
#   LAB_USERS             subscribers the smoke registers (20)
#   LAB_FAULT             signal the smoke sends member server `a`: KILL (default)
#                         or STOP (a hang; the restart is then a SIGCONT)
#   LAB_INSTALL=0         never run apt-get
set -euo pipefail
shopt -s inherit_errexit

readonly DB_SERVERS=(master a b)
readonly MEMBER_SERVERS=(a b) # a: member 1 of every group, b: member 2
readonly PROCS=(prometheus shim locsvc2 locsvc1 otlp) # stop order: otlp last (the others flush their spans to it at SIGTERM)
readonly DB_USER=lab
readonly DB_PW=lab-pw
readonly MASTER_DB=locmaster
readonly GROUPS_N=2
readonly DOMAIN=example.com
readonly START_TIMEOUT=60
readonly STOP_TIMEOUT=60
readonly LOCK_TIMEOUT=600
readonly APT_LOCK_TIMEOUT=300
readonly INIT_MARKER=.lab-initialized
readonly LOG_TAG=lab
readonly READY_TIMEOUT=90  # a locsvc instance or the shim answering after start
readonly TRACE_TIMEOUT=20  # the smoke's wait for a request's trace in otlp-sink (exports every ~1 s)
readonly FIRE_TIMEOUT=120  # the smoke's alert waits
readonly CLEAR_TIMEOUT=240 # back on, resynced, readable, alert gone
ALLOW_REPICK=1             # `up` may move a database whose port was taken (locdb is rewritten)

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
readonly SCRIPT_PATH
REPO=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)
readonly REPO
cd "$REPO"
readonly TOOL=$REPO/scripts/lab/labtool.py
# log, die, usage, ports, processes, MariaDB: shared with scripts/testdb.sh.
# shellcheck source=SCRIPTDIR/lib/dbserver.sh
source "$REPO/scripts/lib/dbserver.sh"

# The lab's processes are configured here only: settings of the caller's
# environment must not leak into them (an unknown LOCSVC_* is even an error).
while read -r v; do
	unset "$v"
done < <(compgen -e | grep -E '^(LOCSVC|PROXY_SHIM)_' || true)

BIN=${BIN:-target/release}
[[ $BIN == /* ]] || BIN=$REPO/$BIN
LOCSVC=$BIN/locsvc SHIM=$BIN/proxy-shim OTLP_SINK=$BIN/otlp-sink
TRACE_RATIO=${LAB_TRACE_RATIO:-1}

# Every server and process NAME has $STATE_DIR/NAME/{pid,port,data/}; a
# process runs with data/ as its cwd, which server_pid checks.
pid_file() { echo "$STATE_DIR/$1/pid"; }
answers() { mariadb_answers_tcp "$1"; }

open_state_dir() {
	init_state_dir "${LAB_DIR:-$REPO/target/lab}"
}

# ---------------------------------------------------------------- setup

ensure_packages() {
	local missing
	mapfile -t missing < <(missing_packages mariadb-server mariadb-client prometheus sip-tester python3)
	if ((${#missing[@]})); then
		[[ ${LAB_INSTALL:-1} != 0 ]] || die "missing packages: ${missing[*]} (LAB_INSTALL=0)"
		[[ $EUID -eq 0 ]] || die "need root to install: ${missing[*]}"
		log "installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		local apt=(apt-get -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT")
		"${apt[@]}" install -y -q --no-install-recommends "${missing[@]}" </dev/null >&2 ||
			{ "${apt[@]}" update -q </dev/null >&2 &&
				"${apt[@]}" install -y -q --no-install-recommends "${missing[@]}" </dev/null >&2; } ||
			die "apt-get install ${missing[*]} failed"
	fi
	require_commands mariadbd mariadb-install-db mariadb mariadb-admin prometheus promtool sipp python3 flock setsid timeout
}

ensure_binaries() {
	[[ -x $LOCSVC && -x $SHIM && -x $OTLP_SINK ]] && return 0
	local profile=()
	case $BIN in
	"$REPO/target/release") profile=(--release) ;;
	"$REPO/target/debug") ;;
	*) die "no locsvc, proxy-shim or otlp-sink in BIN=$BIN" ;;
	esac
	if ! [[ -x $LOCSVC && -x $SHIM ]]; then
		log "building locsvc and proxy-shim into $BIN"
		cargo build "${profile[@]}" --locked -p locsvc -p proxy-shim >&2 || die "cargo build failed"
	fi
	if ! [[ -x $OTLP_SINK ]]; then
		log "building otlp-sink (the lab's trace receiver) into $BIN"
		cargo build "${profile[@]}" --locked -p locsvc-bench --bin otlp-sink >&2 || die "cargo build of otlp-sink failed"
	fi
	[[ -x $LOCSVC && -x $SHIM && -x $OTLP_SINK ]] || die "cargo build left no binaries in $BIN"
}

# ---------------------------------------------------------------- databases

db_launch() {
	mariadb_launch "$1" \
		--innodb-buffer-pool-size=64M \
		--innodb-log-file-size=48M \
		--max-connections=500 \
		--performance-schema=OFF \
		--character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
		--default-time-zone=+00:00
}

# dbs_start NAME...: starts those not running (all at once), waits for each.
dbs_start() {
	local s
	declare -A launched=()
	for s in "$@"; do
		mkdir -p "$STATE_DIR/$s"
		[[ -n $(server_pid "$s") ]] && continue
		db_launch "$s"
		launched[$s]=$LAUNCHED_PID
	done
	for s in "$@"; do
		LAUNCHED_PID=${launched[$s]:-}
		[[ -z $LAUNCHED_PID ]] && mark_log "$STATE_DIR/$s/server.log"
		mariadb_finish "$s"
		log "$s: MariaDB up on 127.0.0.1:$(port_of "$s") (pid $(server_pid "$s"))"
	done
}

db_url() { # server database
	printf 'mysql://%s:%s@127.0.0.1:%s/%s' "$DB_USER" "$DB_PW" "$(port_of "$1")" "$2"
}

master_url() { db_url master "$MASTER_DB"; }

locdb_rows_sql() {
	local g sep=''
	printf 'DELETE FROM locdb;\nINSERT INTO locdb (id, no, url, status, errors, failover, spare, rg) VALUES\n'
	for ((g = 1; g <= GROUPS_N; g++)); do
		printf "%s  (%d, 1, '%s', 1, 0, '1900-01-01 00:00:01', 0, 1),\n" "$sep" "$g" "$(db_url a "loc_$g")"
		printf "  (%d, 2, '%s', 1, 0, '1900-01-01 00:00:01', 0, 2)" "$g" "$(db_url b "loc_$g")"
		sep=$',\n'
	done
	printf ';\n'
}

# A fresh cluster: empty databases, the schema made by locsvc itself (master
# first, then the members locdb names), the pristine locdb rows.
reset_cluster() {
	local s g
	log "creating a fresh cluster (locdb: $GROUPS_N groups x 2 members)"
	mariadb_root master -e "DROP DATABASE IF EXISTS $MASTER_DB; CREATE DATABASE $MASTER_DB"
	for s in "${MEMBER_SERVERS[@]}"; do
		for ((g = 1; g <= GROUPS_N; g++)); do
			mariadb_root "$s" -e "DROP DATABASE IF EXISTS loc_$g; CREATE DATABASE loc_$g"
		done
	done
	"$LOCSVC" migrate --master-url "$(master_url)" >&2 || die "locsvc migrate (master) failed"
	locdb_rows_sql | mariadb_root master "$MASTER_DB" || die "writing locdb failed"
	"$LOCSVC" migrate --master-url "$(master_url)" >&2 || die "locsvc migrate (members) failed"
}

# ---------------------------------------------------------------- processes

# proc_launch NAME CMD...: CMD in its own session, cwd NAME/data, output
# appended to NAME/log, its PID in NAME/pid.
proc_launch() {
	local name=$1 dir=$STATE_DIR/$1
	shift
	mkdir -p "$dir/data"
	mark_log "$dir/log"
	(
		close_inherited_fds
		cd "$dir/data"
		exec setsid "$@" </dev/null >>"$dir/log" 2>&1
	) &
	echo "$!" >"$dir/pid"
	log "$name: started pid $!"
}

# proc_wait NAME WHAT CMD...: runs CMD (which waits, bounded) and dies with
# NAME's log if it fails or the process is gone.
proc_wait() {
	local name=$1 what=$2
	shift 2
	"$@" || fail_with_log "$STATE_DIR/$name/log" "$name: $what"
	[[ -n $(server_pid "$name") ]] || fail_with_log "$STATE_DIR/$name/log" "$name exited"
}

read_port() { # NAME [FILE]
	local f=$STATE_DIR/$1/${2:-port}
	[[ -r $f ]] && tr -dc 0-9 <"$f"
	return 0
}

proc_up() { # NAME: running and listening on its port
	local pid port
	pid=$(server_pid "$1")
	port=$(read_port "$1")
	[[ -n $pid && -n $port ]] && ! is_stopped "$pid" && port_listened "$port"
}

# The lab's trace receiver: otlp-sink appends every span it gets to
# otlp/spans.jsonl, one JSON object a line. A fresh cluster gets a fresh
# file, as Prometheus gets a fresh TSDB. otlp/ratio: the sample ratio the
# processes started now run at (the env file says it even when a later `up`
# finds them running).
otlp_start() {
	local dir=$STATE_DIR/otlp port
	read -r port < <(python3 "$TOOL" free-ports 1)
	mkdir -p "$dir"
	echo "$port" >"$dir/port"
	echo "$TRACE_RATIO" >"$dir/ratio"
	rm -f "$dir/spans.jsonl"
	proc_launch otlp "$OTLP_SINK" --listen "127.0.0.1:$port" --out "$dir/spans.jsonl"
	proc_wait otlp "not listening" log_says "$dir/log" "listening on 127.0.0.1:$port"
	log "otlp: otlp-sink receiving OTLP/gRPC on 127.0.0.1:$port, spans in $dir/spans.jsonl"
}

# log_says FILE TEXT: until FILE has a line with TEXT since mark_log (bounded).
log_says() {
	local deadline=$((SECONDS + READY_TIMEOUT))
	# Not `tail | grep -q`: under pipefail a tail cut off by grep's early exit
	# would read as "not yet" on a log longer than a pipe's buffer.
	until grep -qF -- "$2" < <(tail -c +"$((LOG_OFFSET + 1))" "$1" 2>/dev/null); do
		((SECONDS < deadline)) || return 1
		sleep 0.2
	done
}

otlp_endpoint() { echo "http://127.0.0.1:$(read_port otlp)"; }

running_trace_ratio() { cat "$STATE_DIR/otlp/ratio" 2>/dev/null || echo "$TRACE_RATIO"; }

locsvc_start() { # NAME
	local name=$1 grpc metrics
	read -r grpc metrics < <(python3 "$TOOL" free-ports 2)
	mkdir -p "$STATE_DIR/$name"
	echo "$grpc" >"$STATE_DIR/$name/port"
	echo "$metrics" >"$STATE_DIR/$name/metrics_port"
	proc_launch "$name" env \
		LOCSVC_MASTER_URL="$(master_url)" \
		LOCSVC_GRPC__LISTEN="127.0.0.1:$grpc" \
		LOCSVC_METRICS__LISTEN="127.0.0.1:$metrics" \
		LOCSVC_CLUSTER__CENSUS_INTERVAL_MS="${LAB_CENSUS_MS:-3000}" \
		LOCSVC_EXPIRY__INTERVAL_MS="${LAB_SWEEP_MS:-5000}" \
		LOCSVC_LOG__LEVEL=info \
		LOCSVC_TRACE__OTLP_ENDPOINT="$(otlp_endpoint)" \
		LOCSVC_TRACE__SAMPLE_RATIO="$TRACE_RATIO" \
		LOCSVC_TRACE__SERVICE_NAME="$name" \
		"$LOCSVC" serve
}

locsvc_wait() { # NAME
	local name=$1
	proc_wait "$name" "metrics not served" python3 "$TOOL" http-ok "http://127.0.0.1:$(read_port "$name" metrics_port)/metrics" "$READY_TIMEOUT"
	proc_wait "$name" "gRPC not answering" grpc_wait "http://127.0.0.1:$(read_port "$name")"
	log "$name: locsvc serving gRPC on 127.0.0.1:$(read_port "$name"), metrics on :$(read_port "$name" metrics_port)"
}

# grpc_wait URL: until `groups list` answers (bounded).
grpc_wait() {
	local deadline=$((SECONDS + READY_TIMEOUT))
	until "$LOCSVC" groups list --server "$1" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 0.5
	done
}

shim_start() {
	local sip metrics
	read -r sip metrics < <(python3 "$TOOL" free-ports 2)
	mkdir -p "$STATE_DIR/shim"
	echo "$sip" >"$STATE_DIR/shim/port"
	echo "$metrics" >"$STATE_DIR/shim/metrics_port"
	# Redirect mode: a call is answered 302 after a locsvc Lookup, so the
	# lab needs no callee. No rate limit: the smoke sends from one address.
	# The shim decides which requests are traced; locsvc follows it.
	proc_launch shim env \
		PROXY_SHIM_TRACE_OTLP_ENDPOINT="$(otlp_endpoint)" \
		PROXY_SHIM_TRACE_SAMPLE_RATIO="$TRACE_RATIO" \
		PROXY_SHIM_TRACE_SERVICE_NAME=proxy-shim \
		"$SHIM" \
		--listen "127.0.0.1:$sip" \
		--metrics-listen "127.0.0.1:$metrics" \
		--locsvc "http://127.0.0.1:$(read_port locsvc1)" \
		--locsvc "http://127.0.0.1:$(read_port locsvc2)" \
		--domain "$DOMAIN" \
		--mode redirect \
		--rate-limit 0
	proc_wait shim "no SIP answer" python3 "$TOOL" sip-ping "$sip" "$READY_TIMEOUT"
	log "shim: proxy-shim on udp/tcp 127.0.0.1:$sip, metrics on :$metrics"
}

# scaled_rules SRC DST DIVISOR: SRC with every `for:` divided by DIVISOR.
scaled_rules() {
	python3 - "$@" <<'PY'
import re, sys
src, dst, div = sys.argv[1], sys.argv[2], float(sys.argv[3])
unit = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000, "w": 604800000, "y": 31536000000}
def ms(d):
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", d)
    if not parts or "".join(n + u for n, u in parts) != d:
        sys.exit(f"cannot read duration {d!r}")
    return sum(int(n) * unit[u] for n, u in parts)
def line(l):
    m = re.match(r"^(\s*for:\s*)(\S+)(\s*)$", l)
    if not m or div == 1:
        return l
    return f"{m.group(1)}{max(1, round(ms(m.group(2)) / div))}ms{m.group(3)}"
with open(src) as f, open(dst, "w") as out:
    out.write(f"# {src} with every `for:` divided by {sys.argv[3]} (scripts/lab.sh)\n")
    out.writelines(line(l) for l in f)
PY
}

prometheus_start() {
	local dir=$STATE_DIR/prometheus port every=${LAB_SCRAPE_INTERVAL:-1s}
	read -r port < <(python3 "$TOOL" free-ports 1)
	# A fresh cluster gets a fresh TSDB: series of the previous run's
	# instances (other ports) would otherwise look current for 5 minutes
	# after a restart and hide what the new ones report.
	rm -rf "$dir/data/tsdb"
	mkdir -p "$dir/data"
	echo "$port" >"$dir/port"
	scaled_rules "$REPO/deploy/prometheus/alerts.yml" "$dir/alerts.yml" "${LAB_ALERT_FOR_DIVISOR:-12}" ||
		die "cannot prepare the alert rules"
	cat >"$dir/prometheus.yml" <<EOF
# Written by scripts/lab.sh up.
global:
  scrape_interval: $every
  scrape_timeout: $every
  evaluation_interval: $every
rule_files:
  - alerts.yml
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['127.0.0.1:$port']
  - job_name: locsvc
    static_configs:
      - targets: ['127.0.0.1:$(read_port locsvc1 metrics_port)', '127.0.0.1:$(read_port locsvc2 metrics_port)']
  - job_name: proxy-shim
    static_configs:
      - targets: ['127.0.0.1:$(read_port shim metrics_port)']
EOF
	promtool check config "$dir/prometheus.yml" >&2 || die "promtool check config $dir/prometheus.yml failed"
	proc_launch prometheus prometheus \
		--config.file="$dir/prometheus.yml" \
		--storage.tsdb.path="$dir/data/tsdb" \
		--storage.tsdb.retention.time=2d \
		--web.listen-address="127.0.0.1:$port"
	proc_wait prometheus "not ready" python3 "$TOOL" http-ok "http://127.0.0.1:$port/-/ready" "$READY_TIMEOUT"
	proc_wait prometheus "targets not all up" python3 "$TOOL" targets "http://127.0.0.1:$port" 4 "$READY_TIMEOUT"
	log "prometheus: http://127.0.0.1:$port (4 targets up, rules loaded)"
}

procs_stop() {
	local p
	for p in "${PROCS[@]}"; do
		mkdir -p "$STATE_DIR/$p"
		[[ -n $(server_pid "$p") ]] && stop_server "$p" TERM
	done
	return 0
}

write_env() {
	write_env_file "$STATE_DIR/env" <<EOF
export LAB_DIR=$STATE_DIR
export LAB_BIN=$BIN
export LAB_MASTER_URL=$(master_url)
export LAB_MASTER_PORT=$(port_of master)
export LAB_A_PORT=$(port_of a)
export LAB_B_PORT=$(port_of b)
export LAB_LOCSVC1=http://127.0.0.1:$(read_port locsvc1)
export LAB_LOCSVC2=http://127.0.0.1:$(read_port locsvc2)
export LAB_LOCSVC1_METRICS=http://127.0.0.1:$(read_port locsvc1 metrics_port)/metrics
export LAB_LOCSVC2_METRICS=http://127.0.0.1:$(read_port locsvc2 metrics_port)/metrics
export LAB_SHIM=127.0.0.1:$(read_port shim)
export LAB_SHIM_METRICS=http://127.0.0.1:$(read_port shim metrics_port)/metrics
export LAB_PROMETHEUS=http://127.0.0.1:$(read_port prometheus)
export LAB_OTLP=$(otlp_endpoint)
export LAB_TRACES=$STATE_DIR/otlp/spans.jsonl
export LAB_TRACE_RATIO=$(running_trace_ratio)
export LAB_DOMAIN=$DOMAIN
EOF
}

all_procs_up() {
	local p
	for p in "${PROCS[@]}"; do
		proc_up "$p" || return 1
	done
}

cmd_up() {
	local started=$SECONDS
	[[ $EUID -eq 0 ]] || die "must run as root"
	python3 -c 'import sys; r = float(sys.argv[1]); sys.exit(0 if 0 <= r <= 1 else 1)' "$TRACE_RATIO" 2>/dev/null ||
		die "LAB_TRACE_RATIO must be a number from 0 to 1 (got '$TRACE_RATIO')"
	open_state_dir
	take_lock
	ensure_packages
	ensure_binaries
	dbs_start "${DB_SERVERS[@]}"
	if all_procs_up; then
		log "every process is up already"
		[[ $(running_trace_ratio) == "$TRACE_RATIO" ]] ||
			log "note: the lab runs at trace ratio $(running_trace_ratio), not LAB_TRACE_RATIO=$TRACE_RATIO ('down' and 'up' to change it)"
	else
		procs_stop
		reset_cluster
		otlp_start
		locsvc_start locsvc1
		locsvc_start locsvc2
		locsvc_wait locsvc1
		locsvc_wait locsvc2
		shim_start
		prometheus_start
	fi
	write_env
	log "lab up in $((SECONDS - started)) s (state in $STATE_DIR)"
	cat "$STATE_DIR/env"
}

cmd_down() {
	open_state_dir
	take_lock
	procs_stop
	local s
	for s in b a master; do
		mkdir -p "$STATE_DIR/$s"
		stop_server "$s" TERM
	done
	log "lab down"
}

cmd_status() {
	open_state_dir
	[[ -r $STATE_DIR/env ]] && cat "$STATE_DIR/env"
	local s p state pid
	for s in "${DB_SERVERS[@]}"; do
		mkdir -p "$STATE_DIR/$s"
		status_line "$s"
	done
	for p in otlp locsvc1 locsvc2 shim prometheus; do
		mkdir -p "$STATE_DIR/$p"
		pid=$(server_pid "$p")
		state=down
		proc_up "$p" && state=up
		printf '%s %s %s %s\n' "$p" "$(read_port "$p" || true)" "${pid:--}" "$state"
	done
}

# ---------------------------------------------------------------- smoke

SMOKE_PIDS=()
SMOKE_STEP=
SMOKE_T0=$SECONDS

step() {
	SMOKE_STEP=$*
	log "[$((SECONDS - SMOKE_T0)) s] $*"
}

fail() {
	log "SMOKE FAILED at \"$SMOKE_STEP\": $*"
	exit 1
}

smoke_cleanup() {
	local p
	for p in "${SMOKE_PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	# A member server the smoke stopped or killed is brought back.
	if [[ -n ${SMOKE_FAULTED:-} ]]; then
		local pid
		pid=$(server_pid "$SMOKE_FAULTED")
		[[ -n $pid ]] && kill -CONT "$pid" 2>/dev/null
		[[ -n $pid ]] || (dbs_start "$SMOKE_FAULTED") || true
	fi
	return 0
}

# sipp_run NAME SCENARIO CALLS RATE [SIPP_OPTION...]: one sipp run against
# the shim for the lab's users, in the foreground; failure (or a timeout) is
# reported with sipp's own error log.
sipp_cmd() {
	local name=$1 scenario=$2 calls=$3 rate=$4 port cport
	shift 4
	read -r port cport < <(python3 "$TOOL" free-ports 2)
	SIPP=(sipp -sf "$REPO/scripts/lab/$scenario" -inf "$SMOKE_DIR/users.csv"
		-i 127.0.0.1 -p "$port" -cp "$cport" -m "$calls" -r "$rate" -nostdin
		-trace_err -error_file "$SMOKE_DIR/$name.err"
		-trace_screen -screen_file "$SMOKE_DIR/$name.screen"
		"$@" "$LAB_SHIM")
	SIPP_CP=$cport
}

sipp_run() {
	local name=$1
	sipp_cmd "$@" -timeout 60s -timeout_error
	if ! timeout 90 "${SIPP[@]}" >"$SMOKE_DIR/$name.out" 2>&1; then
		log "---- $SMOKE_DIR/$name.screen / .err ----"
		tail -n 30 "$SMOKE_DIR/$name.screen" "$SMOKE_DIR/$name.err" >&2 2>/dev/null || true
		fail "sipp $name: not every call succeeded"
	fi
	log "sipp $name: $(calls_summary "$SMOKE_DIR/$name.screen")"
}

# calls_summary SCREEN_FILE: "N successful, M failed" from sipp's final screen.
calls_summary() {
	awk '/Successful call/ { s = $(NF) } /Failed call/ { f = $(NF) } END { printf "%s successful, %s failed", s, f }' "$1" 2>/dev/null
}

# prom ARGS...: labtool against the lab's Prometheus.
prom() {
	local cmd=$1
	shift
	python3 "$TOOL" "$cmd" "$LAB_PROMETHEUS" "$@"
}

# members_readable URL: whether `groups list` on URL shows every member on and readable.
members_readable() {
	"$LOCSVC" groups list --json --server "$1" 2>/dev/null | python3 -c '
import json, sys
m = json.load(sys.stdin)["members"]
sys.exit(0 if m and all(x["status"] == "on" and x["readable"] for x in m if not x["spare"]) else 1)'
}

# member_state URL GROUP NO: "status readable" of one member per `groups list`.
member_state() {
	"$LOCSVC" groups list --json --server "$1" | python3 -c '
import json, sys
g, n = int(sys.argv[1]), int(sys.argv[2])
for x in json.load(sys.stdin)["members"]:
    if x["group"] == g and x["no"] == n:
        print(x["status"], "readable" if x["readable"] else "unreadable")' "$2" "$3"
}

no_alert_firing() {
	local active
	active=$(prom alerts) || return 1
	if grep -q '^firing' <<<"$active"; then
		[[ $active == "${LAST_ACTIVE:-}" ]] || log "firing:"$'\n'"$(grep '^firing' <<<"$active")"
		LAST_ACTIVE=$active
		return 1
	fi
}

wait_until() { # TIMEOUT WHAT CMD...: bounded polling of CMD
	local timeout=$1 what=$2 deadline
	shift 2
	deadline=$((SECONDS + timeout))
	until "$@"; do
		((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for $what"
		sleep 0.5
	done
}

# traces_size: how far otlp-sink's spans file is written now (bytes): a later
# trace_shown looks only past it, at the spans of what the smoke sent since.
traces_size() {
	stat -c %s "$LAB_TRACES" 2>/dev/null || echo 0
}

# trace_shown METHOD STATUS RPC FROM: waits (TRACE_TIMEOUT) until the spans
# file, past byte FROM, holds one trace across the shim and locsvc of a
# smoke user's METHOD answered STATUS: the shim's `SIP METHOD` root, its
# client span RPC, one lab instance's server span RPC below that, member
# operations below that; prints it (labtool.py trace) or fails the smoke.
trace_shown() {
	local method=$1 status=$2 rpc=$3 from=$4
	if [[ -z $SMOKE_TRACE_AORS ]]; then
		log "LAB_TRACE_RATIO=$LAB_TRACE_RATIO: nothing is traced, no trace to check"
		return 0
	fi
	python3 "$TOOL" trace "$LAB_TRACES" "$from" "$method" "$status" "$rpc" proxy-shim locsvc1,locsvc2 \
		"$SMOKE_TRACE_AORS" "$TRACE_TIMEOUT" >&2 ||
		fail "no complete trace of the $method ($rpc) in $LAB_TRACES"
}

binding_shown() { # SERVER AOR
	local out
	out=$("$LOCSVC" ul show "$2" --server "$1" 2>&1) || fail "locsvc ul show $2 --server $1: $out"
	grep -q "Contact: <sip:" <<<"$out" || fail "no binding for $2 through $1: $out"
	log "ul show $2 via $1: $(grep -c 'Contact: <sip:' <<<"$out") contact(s), $(head -n 1 <<<"$out")"
}

cmd_smoke() {
	local users=${LAB_USERS:-20} fault=${LAB_FAULT:-KILL} i u
	[[ $fault == KILL || $fault == STOP ]] || die "LAB_FAULT must be KILL or STOP"
	open_state_dir
	take_lock
	[[ -r $STATE_DIR/env ]] || die "no lab: run '$SCRIPT_PATH up' first"
	# shellcheck source=/dev/null
	source "$STATE_DIR/env"
	LOCSVC=$LAB_BIN/locsvc # the CLI of the binaries the lab runs
	all_procs_up || die "the lab is not (fully) up: run '$SCRIPT_PATH up'"
	local s
	for s in "${DB_SERVERS[@]}"; do
		[[ $(status_line "$s") == *" up" ]] || die "MariaDB $s is not up: run '$SCRIPT_PATH up'"
	done
	# Whose requests' traces count: the first user's when every request is
	# traced; any user's at a lower ratio; none at 0.
	SMOKE_TRACE_AORS=sip:lab0001@$DOMAIN
	if ! python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= 1 else 1)' "${LAB_TRACE_RATIO:-1}"; then
		SMOKE_TRACE_AORS=
		if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "$LAB_TRACE_RATIO"; then
			for ((i = 1; i <= users; i++)); do
				SMOKE_TRACE_AORS+=${SMOKE_TRACE_AORS:+,}$(printf 'sip:lab%04d@%s' "$i" "$DOMAIN")
			done
		fi
	fi
	SMOKE_DIR=$STATE_DIR/smoke
	rm -rf "$SMOKE_DIR"
	mkdir -p "$SMOKE_DIR"
	trap smoke_cleanup EXIT
	SMOKE_T0=$SECONDS

	step "subscribers: $users accounts through $LAB_LOCSVC1"
	echo SEQUENTIAL >"$SMOKE_DIR/users.csv"
	for ((i = 1; i <= users; i++)); do
		u=$(printf 'lab%04d' "$i")
		"$LOCSVC" subscriber add "sip:$u@$DOMAIN" "pw-$u" --server "$LAB_LOCSVC1" >/dev/null 2>&1 ||
			"$LOCSVC" subscriber passwd "sip:$u@$DOMAIN" "pw-$u" --server "$LAB_LOCSVC1" >/dev/null ||
			fail "cannot add subscriber $u"
		echo "$u;[authentication username=$u password=pw-$u]" >>"$SMOKE_DIR/users.csv"
	done

	local traces_from
	traces_from=$(traces_size)
	step "REGISTER with digest auth through the shim ($LAB_SHIM)"
	sipp_run register register.xml "$users" 20
	step "the REGISTER's trace: shim -> locsvc Save -> members (otlp-sink, $LAB_OTLP)"
	trace_shown REGISTER 200 locsvc.v1.Location/Save "$traces_from"
	step "the bindings through both instances"
	binding_shown "$LAB_LOCSVC1" "sip:lab0001@$DOMAIN"
	binding_shown "$LAB_LOCSVC2" "sip:lab$(printf %04d "$users")@$DOMAIN"
	traces_from=$(traces_size)
	step "INVITE -> 302 through the shim (locsvc Lookup)"
	sipp_run invite invite.xml "$users" 20
	step "the INVITE's trace: shim -> locsvc Lookup -> members"
	trace_shown INVITE 302 locsvc.v1.Location/Lookup "$traces_from"
	step "Prometheus sees the census (every contact counted)"
	prom wait-expr "sum(max by (group) (locsvc_group_contacts{table=\"location\"})) >= $users" 60 ||
		fail "locsvc_group_contacts never reached $users"
	step "no alert firing before the fault"
	local active
	active=$(prom alerts) || fail "cannot read the alerts"
	[[ -n $active ]] && log "active alerts:"$'\n'"$active"
	if grep -q '^firing' <<<"$active"; then
		fail "alerts firing before the fault"
	fi

	step "background load: REGISTER and INVITE at 5/s each while member server a fails"
	local bg
	for bg in register invite; do
		sipp_cmd "bg-$bg" "$bg.xml" 1000000 5 -timeout 600s
		"${SIPP[@]}" >"$SMOKE_DIR/bg-$bg.out" 2>&1 &
		SMOKE_PIDS+=($!)
		echo "$SIPP_CP" >"$SMOKE_DIR/bg-$bg.cp"
	done
	local apid
	apid=$(server_pid a)
	[[ -n $apid ]] || fail "member server a is not running"
	step "SIG$fault member server a (pid $apid): member 1 of groups 1 and 2"
	SMOKE_FAULTED=a
	kill -"$fault" "$apid"
	local fault_at=$SECONDS
	for i in 1 2; do
		prom wait-alert LocsvcMemberOff "group=$i,member=1" firing "$FIRE_TIMEOUT" ||
			fail "LocsvcMemberOff{group=$i,member=1} did not fire"
		log "LocsvcMemberOff{group=$i,member=1} firing $((SECONDS - fault_at)) s after the fault"
	done
	log "member 1/1 per locsvc1: $(member_state "$LAB_LOCSVC1" 1 1); per locsvc2: $(member_state "$LAB_LOCSVC2" 1 1)"
	prom alerts >&2 || true
	step "REGISTER and INVITE through the shim while member server a is down"
	sipp_run register-fault register.xml "$users" 20
	sipp_run invite-fault invite.xml "$users" 20

	step "bring member server a back"
	local back_at=$SECONDS
	if [[ $fault == STOP ]]; then
		kill -CONT "$apid"
	else
		(ALLOW_REPICK=0 dbs_start a) || fail "member server a did not come back"
	fi
	SMOKE_FAULTED=
	for i in 1 2; do
		prom wait-alert LocsvcMemberOff "group=$i,member=1" inactive "$CLEAR_TIMEOUT" ||
			fail "LocsvcMemberOff{group=$i,member=1} did not clear"
		log "LocsvcMemberOff{group=$i,member=1} cleared $((SECONDS - back_at)) s after the restart"
	done
	wait_until "$CLEAR_TIMEOUT" "every member on and readable on locsvc1" members_readable "$LAB_LOCSVC1"
	wait_until "$CLEAR_TIMEOUT" "every member on and readable on locsvc2" members_readable "$LAB_LOCSVC2"
	log "every member on and readable on both instances $((SECONDS - back_at)) s after the restart"
	if [[ -n $(prom query 'count(locsvc_member_readable)') ]]; then
		prom wait-expr 'min(locsvc_member_readable) == 1' "$CLEAR_TIMEOUT" ||
			fail "locsvc_member_readable did not return to 1 everywhere"
		prom wait-alert LocsvcGroupNoReadableMember "" inactive 30 || fail "LocsvcGroupNoReadableMember is active"
	else
		log "note: locsvc_member_readable not exported by this build; readability checked through groups list"
	fi

	step "stop the background load (every call must have succeeded)"
	for bg in register invite; do
		python3 -c 'import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"q", ("127.0.0.1", int(sys.argv[1])))' \
			"$(cat "$SMOKE_DIR/bg-$bg.cp")"
	done
	local rc bad=
	for i in 0 1; do
		bg=$([[ $i == 0 ]] && echo register || echo invite)
		rc=0
		if ! timeout 60 tail --pid="${SMOKE_PIDS[$i]}" -f /dev/null; then
			log "background $bg: sipp did not quit within 60 s; killing it"
			kill "${SMOKE_PIDS[$i]}" 2>/dev/null || true
		fi
		wait "${SMOKE_PIDS[$i]}" || rc=$?
		log "background $bg: $(calls_summary "$SMOKE_DIR/bg-$bg.screen") (sipp exit $rc)"
		if ((rc != 0)); then
			tail -n 20 "$SMOKE_DIR/bg-$bg.err" >&2 2>/dev/null || true
			bad+=" $bg"
		fi
	done
	SMOKE_PIDS=()
	[[ -z $bad ]] || fail "background load had failed calls:$bad"

	step "REGISTER and INVITE after the recovery"
	sipp_run register-after register.xml "$users" 20
	sipp_run invite-after invite.xml "$users" 20
	binding_shown "$LAB_LOCSVC2" "sip:lab0001@$DOMAIN"
	step "no alert firing after the recovery"
	wait_until 60 "every alert to stop firing" no_alert_firing

	step "dashboard: structure, and every panel query returns data"
	python3 "$REPO/scripts/lab/dashboard-check.py" --prometheus "$LAB_PROMETHEUS" \
		${LAB_DASHBOARD_ALLOW_ABSENT:+--allow-absent "$LAB_DASHBOARD_ALLOW_ABSENT"} \
		"$REPO/deploy/grafana/locsvc.json" || fail "dashboard check failed"

	step "done"
	log "SMOKE PASSED in $((SECONDS - SMOKE_T0)) s"
}

main() {
	[[ $# -eq 1 ]] || usage
	case $1 in
	up) cmd_up ;;
	down) cmd_down ;;
	status) cmd_status ;;
	smoke) cmd_smoke ;;
	env)
		open_state_dir
		print_env_file "$STATE_DIR/env"
		;;
	clean)
		cmd_down
		log "deleting $STATE_DIR"
		rm -rf -- "$STATE_DIR"
		;;
	*) usage ;;
	esac
}

main "$@"
