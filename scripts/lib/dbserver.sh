# shellcheck shell=bash
# dbserver.sh: database servers of our own on loopback, for the scripts that
# start them (scripts/testdb.sh for the tests, benches/sip/layout.sh for the
# SIP benchmark). Sourced, not run; it sets no shell options:
#
#   LOG_TAG=name
#   source "$(dirname "${BASH_SOURCE[0]}")/<path to>/scripts/lib/dbserver.sh"
#
# Each server is an instance NAME with its state in $STATE_DIR/NAME/ (data/,
# port, server.log, install.log; a MariaDB instance also sock and pid). The
# caller sets, before calling what needs them:
#   LOG_TAG           prefix of every message (log, die)
#   SCRIPT_PATH       the script, whose header comment `usage` prints
#   DB_USER, DB_PW    the account every server gets, over TCP and locally
#   INIT_MARKER       file in a datadir saying its initialisation finished
#   START_TIMEOUT, STOP_TIMEOUT, LOCK_TIMEOUT, APT_LOCK_TIMEOUT (seconds)
#   ALLOW_REPICK=1    where a remembered port taken by another process may be
#                     replaced by a new one (see resolve_port)
# and defines two functions:
#   pid_file NAME     the file the server writes its main PID to
#   answers NAME      whether the server answers DB_USER over TCP now
# Everything binds or probes 127.0.0.1 only.

# log MESSAGE: "LOG_TAG: MESSAGE" on stderr.
log() { printf '%s: %s\n' "$LOG_TAG" "$*" >&2; }

# die MESSAGE: "LOG_TAG: error: MESSAGE" on stderr, exit 1.
die() {
	log "error: $*"
	exit 1
}

# usage: the script's header comment (line 2 up to `set -euo`), exit 2.
usage() {
	sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

# ---------------------------------------------------------------- state dir

# init_state_dir DIR: creates DIR and sets STATE_DIR (readonly) to its
# canonical path, which must be plain and short: it goes unquoted into env
# files and into pg_ctl's -o string (which a shell re-parses), and the
# sockets under it must fit in sun_path (108 bytes).
init_state_dir() {
	mkdir -p -- "$1"
	STATE_DIR=$(readlink -f -- "$1")
	[[ $STATE_DIR =~ ^[A-Za-z0-9._/-]+$ ]] ||
		die "state dir '$STATE_DIR' may only contain [A-Za-z0-9._/-]"
	((${#STATE_DIR} <= 70)) || die "state dir '$STATE_DIR' is too long for unix socket paths (max 70 chars)"
	readonly STATE_DIR
}

# take_lock: holds $STATE_DIR/.lock (fd 9) until the script exits, waiting
# at most LOCK_TIMEOUT for another caller (which may be in a cold install).
take_lock() {
	exec 9>>"$STATE_DIR/.lock"
	flock -w "$LOCK_TIMEOUT" 9 || die "timed out after ${LOCK_TIMEOUT}s waiting for $STATE_DIR/.lock (another ${SCRIPT_PATH##*/} running?)"
}

# ---------------------------------------------------------------- packages

# apt_run ARGS...: apt-get that waits (bounded) for a concurrent apt/dpkg
# instead of failing. DPkg::Lock::Timeout covers the dpkg lock only;
# `update` needs the retry.
apt_run() {
	local deadline=$((SECONDS + APT_LOCK_TIMEOUT)) out rc
	out=$(mktemp)
	while :; do
		rc=0
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT" "$@" </dev/null 2>&1 |
			tee "$out" >&2 || rc=$?
		if ((rc == 0)); then
			rm -f "$out"
			return 0
		fi
		if grep -qiE 'could not get lock|unable to (acquire|lock)' "$out" && ((SECONDS < deadline)); then
			log "apt/dpkg is locked by another process; retrying in 5s"
			sleep 5
			continue
		fi
		rm -f "$out"
		die "apt-get $* failed (exit $rc)"
	done
}

# missing_packages PKG...: prints those of the Debian packages that are not
# installed, one a line (none where there is no dpkg-query). "installed"
# only once postinst is done: a package that a concurrent apt has merely
# unpacked counts as missing, so apt-get waits for it.
missing_packages() {
	local p st
	command -v dpkg-query >/dev/null || return 0
	for p in "$@"; do
		st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
		[[ $st == installed ]] || echo "$p"
	done
}

# install_packages PKG...: installs these Debian packages (as root), if any.
install_packages() {
	(($#)) || return 0
	[[ $EUID -eq 0 ]] || die "need root to install: $*"
	log "installing $*"
	apt_run update -q
	apt_run install -y -q --no-install-recommends "$@"
}

# require_commands CMD...: dies naming the first command not on PATH.
require_commands() {
	local b
	for b in "$@"; do
		command -v "$b" >/dev/null || die "'$b' not found after package installation"
	done
}

# ---------------------------------------------------------------- processes

# proc_state PID: the process state letter (R, S, T, Z, ...), or failure if
# gone. The comm field may contain spaces, so split after its closing
# parenthesis.
proc_state() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	s=${s##*) }
	printf '%s' "${s%% *}"
}

# pid_alive PID: PID 1 here may not reap orphans, so a killed server can
# linger as a zombie: that counts as dead.
pid_alive() {
	local st
	st=$(proc_state "$1") || return 1
	[[ $st != Z && $st != X ]]
}

# is_stopped PID: whether PID is stopped (SIGSTOP).
is_stopped() {
	local st
	st=$(proc_state "$1") || return 1
	[[ $st == T || $st == t ]]
}

# server_pid NAME: the main PID of NAME's server, or nothing. Servers chdir
# into their datadir, so matching the cwd rules out a stale pid file whose
# PID now belongs to someone else (e.g. the system's own mariadb).
server_pid() {
	local f pid
	f=$(pid_file "$1")
	[[ -r $f ]] || return 0
	pid=$(head -n 1 "$f" 2>/dev/null | tr -dc 0-9)
	[[ -n $pid ]] || return 0
	pid_alive "$pid" || return 0
	[[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$STATE_DIR/$1/data" ]] || return 0
	echo "$pid"
}

# close_inherited_fds: for a subshell about to exec a server (or what starts
# one), keeps only stdin/out/err. A server outlives the script, and any pipe
# it kept open from our caller (`$(testdb.sh up)`, a test's
# Command::output(), a CI runner's own descriptors) would make that reader
# wait for EOF forever; fd 9 is our lock, which a server must not hold.
close_inherited_fds() {
	local fd
	for fd in /proc/"$BASHPID"/fd/*; do
		fd=${fd##*/}
		if ((fd > 2)); then
			eval "exec $fd>&-" || true
		fi
	done
	return 0
}

# stop_server NAME SIGNAL: sends SIGNAL to NAME's server and waits
# STOP_TIMEOUT for it to end, then SIGKILLs it.
stop_server() {
	local name=$1 sig=$2 pid deadline
	pid=$(server_pid "$name")
	if [[ -z $pid ]]; then
		log "$name is not running"
		return 0
	fi
	log "$name: stopping pid $pid"
	# A SIGSTOPped process would only act on the signal once continued.
	kill -CONT "$pid" 2>/dev/null || true
	kill -"$sig" "$pid" 2>/dev/null || true
	deadline=$((SECONDS + STOP_TIMEOUT))
	while pid_alive "$pid"; do
		if ((SECONDS >= deadline)); then
			log "$name: pid $pid still alive after ${STOP_TIMEOUT}s; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			sleep 1
			pid_alive "$pid" && die "$name: pid $pid survives SIGKILL"
			break
		fi
		sleep 0.1
	done
}

# ---------------------------------------------------------------- ports

# tcp_ports [STATE]: hex ports of all local TCP sockets in STATE (0A =
# LISTEN), or in any state.
tcp_ports() {
	awk -v want="${1:-}" 'FNR > 1 && (want == "" || $4 == want) { split($2, a, ":"); print a[2] }' \
		/proc/net/tcp /proc/net/tcp6 2>/dev/null || true
}

# port_listened PORT: whether something listens on TCP PORT.
port_listened() {
	grep -qx "$(printf '%04X' "$1")" < <(tcp_ports 0A)
}

# pick_port: a random port below the ephemeral range (so that no outgoing
# connection can be sitting on it when the server is restarted later), not
# in use, not remembered by a sibling instance.
pick_port() {
	local eph_lo eph_hi lo hi used others p i
	read -r eph_lo eph_hi </proc/sys/net/ipv4/ip_local_port_range
	if ((eph_lo > 21000)); then
		lo=20000 hi=$((eph_lo - 1))
	else
		lo=$((eph_hi + 1)) hi=65000
		((lo < hi)) || die "no port range left outside the ephemeral range $eph_lo-$eph_hi"
	fi
	used=$(tcp_ports)
	others=$(cat "$STATE_DIR"/*/port 2>/dev/null || true)
	for ((i = 0; i < 500; i++)); do
		p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
		grep -qx "$(printf '%04X' "$p")" <<<"$used" && continue
		grep -qx "$p" <<<"$others" && continue
		echo "$p"
		return 0
	done
	die "found no free TCP port in $lo-$hi"
}

# port_of NAME: NAME's remembered port, or nothing.
port_of() {
	local f=$STATE_DIR/$1/port
	[[ -r $f ]] && tr -dc 0-9 <"$f"
	return 0
}

# resolve_port NAME: the port to start NAME on (call only while it is down),
# picked once and remembered. A remembered port that something else now
# listens on is replaced only where ALLOW_REPICK=1 says so: otherwise the
# server must come back on the same port or fail.
resolve_port() {
	local name=$1 port
	port=$(port_of "$name")
	if [[ -n $port ]] && port_listened "$port"; then
		[[ ${ALLOW_REPICK:-0} == 1 ]] ||
			die "$name's port $port is taken by another process; free it, or remove $STATE_DIR/$name/port and run 'up' (clients will see a new URL)"
		log "$name's port $port is taken by another process; picking a new one"
		port=
	fi
	if [[ -z $port ]]; then
		port=$(pick_port)
		echo "$port" >"$STATE_DIR/$name/port"
	fi
	echo "$port"
}

# ---------------------------------------------------------------- logs

LOG_OFFSET=0

# mark_log FILE: what fail_with_log shows starts after FILE's present end.
mark_log() {
	LOG_OFFSET=$(stat -c %s "$1" 2>/dev/null || echo 0)
}

# fail_with_log FILE MESSAGE: dies with MESSAGE and the last lines FILE got
# since mark_log.
fail_with_log() {
	local logf=$1
	shift
	log "error: $*"
	if [[ -s $logf ]]; then
		log "---- last lines of $logf ----"
		tail -c +"$((LOG_OFFSET + 1))" "$logf" | tail -n 40 >&2 || true
		log "----"
	fi
	exit 1
}

# init_datadir NAME WHAT CMD...: runs CMD (WHAT, for the message) to
# initialise $STATE_DIR/NAME/data unless INIT_MARKER says that was done. A
# datadir without the marker is a half-done init: it starts over.
init_datadir() {
	local name=$1 what=$2 dir=$STATE_DIR/$1
	shift 2
	[[ -e $dir/data/$INIT_MARKER ]] && return 0
	rm -rf "$dir/data"
	log "$name: initialising $dir/data"
	LOG_OFFSET=0
	# One retry from scratch: a failed init leaves nothing worth keeping, and
	# a second failure is reported with its log.
	if ! "$@" >"$dir/install.log" 2>&1 </dev/null; then
		log "$name: $what failed; last lines of its log, then one retry:"
		tail -n 5 "$dir/install.log" >&2
		rm -rf "$dir/data"
		"$@" >"$dir/install.log" 2>&1 </dev/null || fail_with_log "$dir/install.log" "$name: $what failed twice"
	fi
	touch "$dir/data/$INIT_MARKER"
}

# write_env_file FILE: FILE (mode 644) gets stdin, all at once.
write_env_file() {
	local tmp
	tmp=$(mktemp "$STATE_DIR/.env.XXXXXX")
	cat >"$tmp"
	chmod 644 "$tmp"
	mv -f "$tmp" "$1"
}

# print_env_file FILE: prints FILE, which the last `up` wrote.
print_env_file() {
	[[ -r $1 ]] || die "no env file at $1: run '$SCRIPT_PATH up' first"
	cat "$1"
}

# status_line NAME: "NAME PORT PID up|down" ("-" for an unknown port or PID).
status_line() {
	local name=$1 port pid state=down
	port=$(port_of "$name")
	pid=$(server_pid "$name")
	# A SIGSTOPped server would only make the query hang until its timeout.
	if [[ -n $pid ]] && ! is_stopped "$pid" && answers "$name"; then
		state=up
	fi
	printf '%s %s %s %s\n' "$name" "${port:--}" "${pid:--}" "$state"
}

# ---------------------------------------------------------------- mariadb

# mariadb_root NAME ARGS...: the mariadb client as root over NAME's socket.
mariadb_root() {
	local name=$1
	shift
	mariadb --no-defaults --protocol=socket --socket="$STATE_DIR/$name/sock" -uroot --connect-timeout=5 "$@"
}

# mariadb_answers_tcp NAME: whether DB_USER can log in to NAME over TCP.
mariadb_answers_tcp() {
	local port
	port=$(port_of "$1")
	[[ -n $port ]] || return 1
	MYSQL_PWD=$DB_PW timeout 10 mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$port" \
		-u"$DB_USER" --connect-timeout=5 -Nse 'select 1' >/dev/null 2>&1
}

LAUNCHED_PID=

# mariadb_launch NAME [MARIADBD_OPTION...]: initialises NAME's datadir if
# needed and starts mariadbd on 127.0.0.1 at NAME's port, in the background
# (LAUNCHED_PID), with these options after the common ones.
mariadb_launch() {
	local name=$1 dir=$STATE_DIR/$1 port
	shift
	# --no-defaults keeps Debian's /etc/mysql config (datadir, socket, port)
	# out of it; --skip-name-resolve avoids resolveip, which fails on hosts
	# whose hostname does not resolve; --user=root because the bootstrap
	# server refuses to run as root otherwise.
	# A private --tmpdir: in /tmp, a bootstrap once lost its own temporary
	# table file ("Could not remove temporary table '/tmp/#sql-temptable-…',
	# error: 2", then "Unknown table 'mysql.tmp_user_sys'") on a CI machine
	# where other servers and tests share /tmp.
	mkdir -p "$dir/tmp"
	init_datadir "$name" mariadb-install-db \
		mariadb-install-db --no-defaults --datadir="$dir/data" --user=root \
		--auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
		--tmpdir="$dir/tmp"
	port=$(resolve_port "$name")
	rm -f "$dir/pid" "$dir/sock"
	mark_log "$dir/server.log"
	log "$name: starting mariadbd on 127.0.0.1:$port"
	# setsid: the server must outlive the caller's process group (a test
	# harness may kill it). No job control here, so the subshell is no group
	# leader and setsid execs in place: $! is mariadbd itself.
	(
		close_inherited_fds
		exec setsid mariadbd --no-defaults --user=root \
			--datadir="$dir/data" --bind-address=127.0.0.1 --port="$port" \
			--socket="$dir/sock" --pid-file="$dir/pid" --log-error="$dir/server.log" \
			--tmpdir="$dir/tmp" --skip-name-resolve --skip-log-bin --innodb-flush-log-at-trx-commit=2 "$@" \
			</dev/null >>"$dir/server.log" 2>&1
	) &
	LAUNCHED_PID=$!
}

# mariadb_finish NAME [GRANT_OPTION]: waits (START_TIMEOUT) until NAME
# answers on its socket, then makes sure DB_USER exists with every
# privilege (GRANT_OPTION: appended to the GRANTs, e.g. WITH GRANT OPTION)
# and can log in over TCP.
mariadb_finish() {
	local name=$1 grant=${2:-} dir=$STATE_DIR/$1 deadline=$((SECONDS + START_TIMEOUT))
	until timeout 5 mariadb-admin --no-defaults --protocol=socket --socket="$dir/sock" -uroot \
		--connect-timeout=2 ping >/dev/null 2>&1; do
		if [[ -z $(server_pid "$name") ]] && ! { [[ -n $LAUNCHED_PID ]] && pid_alive "$LAUNCHED_PID"; }; then
			fail_with_log "$dir/server.log" "$name: mariadbd exited during startup"
		fi
		((SECONDS < deadline)) || fail_with_log "$dir/server.log" "$name: mariadbd not ready after ${START_TIMEOUT}s"
		sleep 0.2
	done
	# Every start, not only after init: cheap, and repairs a setup whose
	# first run died between init and this point.
	mariadb_root "$name" -e "
		CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PW';
		CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PW';
		ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PW';
		ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PW';
		GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'127.0.0.1' $grant;
		GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost' $grant;
	" || fail_with_log "$dir/server.log" "$name: creating user $DB_USER failed"
	mariadb_answers_tcp "$name" || fail_with_log "$dir/server.log" "$name: up, but $DB_USER cannot log in over TCP"
}
