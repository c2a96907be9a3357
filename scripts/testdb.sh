#!/usr/bin/env bash
# testdb.sh: real database servers for locsvc's tests, on loopback only.
#
# Starts two independent MariaDB servers (m1, m2, so a failover test can kill
# one) and one PostgreSQL server (pg). Installs the Debian packages it needs,
# and is idempotent: run it as often as you like, by hand or from CI (root on
# Debian 12).
#
# Usage (as root):
#   scripts/testdb.sh up               install if needed, start all three, print env
#   scripts/testdb.sh start <m1|m2|pg> start one (same port, same data) and wait for it
#   scripts/testdb.sh pid <m1|m2|pg>   print the server's main PID
#   scripts/testdb.sh stop [<name>]    stop one or all
#   scripts/testdb.sh status           one line per instance: name port pid up|down
#   scripts/testdb.sh env              print the env written by the last `up`
#
#   eval "$(scripts/testdb.sh up)"     # everything but the env goes to stderr
#
# The env exports LOCSVC_TEST_MYSQL1_URL, LOCSVC_TEST_MYSQL2_URL,
# LOCSVC_TEST_PG_URL, LOCSVC_TESTDB_DIR and LOCSVC_TESTDB_SCRIPT.
#
# State lives in ${LOCSVC_TESTDB_DIR:-/tmp/locsvc-testdb}/<name>/ (data/, sock, pid,
# server.log, port). Each instance's port is picked once, at random among free
# ports below the kernel's ephemeral range, and kept in <name>/port so a
# restarted server comes back where the tests expect it. Delete the state dir
# to start over from nothing (`stop` first).
set -euo pipefail
# Without this, a failure inside $(...) would not stop the function it runs.
shopt -s inherit_errexit

readonly INSTANCES=(m1 m2 pg)
readonly DB_USER=locsvc
readonly DB_PW=locsvc-test-pw
readonly START_TIMEOUT=60  # crash recovery after a SIGKILL fits well inside this
readonly STOP_TIMEOUT=60
readonly LOCK_TIMEOUT=900  # another caller may be in the middle of a cold install
readonly APT_LOCK_TIMEOUT=300
ALLOW_REPICK=0 # set by `up` only; see resolve_port

# mariadbd and runuser live in sbin, which a CI shell's PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
readonly SCRIPT_PATH

log() { printf 'testdb: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

usage() {
	sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

kind_of() {
	case $1 in
	m1 | m2) echo mariadb ;;
	pg) echo pg ;;
	*) die "unknown instance '$1' (expected one of: ${INSTANCES[*]})" ;;
	esac
}

# ---------------------------------------------------------------- state dir

init_state_dir() {
	local raw=${LOCSVC_TESTDB_DIR:-/tmp/locsvc-testdb}
	mkdir -p -- "$raw"
	STATE_DIR=$(readlink -f -- "$raw")
	# The path goes unquoted into the env file and into pg_ctl's -o string
	# (which a shell re-parses), and the sockets under it must fit in
	# sun_path (108 bytes): keep it plain and short.
	[[ $STATE_DIR =~ ^[A-Za-z0-9._/-]+$ ]] ||
		die "state dir '$STATE_DIR' may only contain [A-Za-z0-9._/-]"
	((${#STATE_DIR} <= 70)) || die "state dir '$STATE_DIR' is too long for unix socket paths (max 70 chars)"
	# The postgres user must be able to reach its subdir.
	chmod 755 "$STATE_DIR"
	readonly STATE_DIR
}

take_lock() {
	exec 9>>"$STATE_DIR/.lock"
	flock -w "$LOCK_TIMEOUT" 9 || die "timed out after ${LOCK_TIMEOUT}s waiting for $STATE_DIR/.lock (another testdb.sh running?)"
}

# ---------------------------------------------------------------- packages

pg_bindir() {
	local d
	d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
	[[ -n $d && -x $d/postgres && -x $d/initdb ]] || return 1
	echo "$d"
}

# apt-get that waits (bounded) for a concurrent apt/dpkg instead of failing.
# DPkg::Lock::Timeout covers the dpkg lock only; `update` needs the retry.
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

ensure_packages() {
	local pkgs=(mariadb-server mariadb-client postgresql) missing=() p st
	if command -v dpkg-query >/dev/null; then
		# "installed" only once postinst is done: a package that a concurrent
		# apt has merely unpacked counts as missing, so apt-get waits for it.
		for p in "${pkgs[@]}"; do
			st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
			[[ $st == installed ]] || missing+=("$p")
		done
	fi
	if ((${#missing[@]})); then
		[[ $EUID -eq 0 ]] || die "need root to install: ${missing[*]}"
		log "installing ${missing[*]}"
		apt_run update -q
		apt_run install -y -q --no-install-recommends "${missing[@]}"
	fi
	local b
	for b in mariadbd mariadb-install-db mariadb mariadb-admin runuser flock setsid timeout; do
		command -v "$b" >/dev/null || die "'$b' not found after package installation"
	done
	PGBIN=$(pg_bindir) || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
	id postgres >/dev/null 2>&1 || die "system user 'postgres' does not exist (should come with the postgresql package)"
}

# ---------------------------------------------------------------- processes

# Process state letter (R, S, T, Z, ...), or failure if gone. The comm field
# may contain spaces, so split after its closing parenthesis.
proc_state() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	s=${s##*) }
	printf '%s' "${s%% *}"
}

# PID 1 here may not reap orphans, so a killed server can linger as a zombie:
# count that as dead.
pid_alive() {
	local st
	st=$(proc_state "$1") || return 1
	[[ $st != Z && $st != X ]]
}

is_stopped() {
	local st
	st=$(proc_state "$1") || return 1
	[[ $st == T || $st == t ]]
}

pid_file() {
	case $(kind_of "$1") in
	mariadb) echo "$STATE_DIR/$1/pid" ;;
	pg) echo "$STATE_DIR/$1/data/postmaster.pid" ;;
	esac
}

# Main PID of the instance's server, or empty. Both servers chdir into their
# datadir, so matching the cwd rules out a stale pid file whose PID now belongs
# to someone else (e.g. the system's own mariadb or postgres).
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

# Processes left over from a server whose main process was SIGKILLed
# (postgres backends outlive their postmaster for a moment).
procs_in_dir() {
	local p
	for p in /proc/[0-9]*; do
		[[ $(readlink "$p/cwd" 2>/dev/null) == "$1" ]] || continue
		pid_alive "${p#/proc/}" && echo "${p#/proc/}"
	done
	return 0
}

wait_dir_empty() {
	local dir=$1 deadline=$((SECONDS + 30)) left=()
	while mapfile -t left < <(procs_in_dir "$dir") && ((${#left[@]})); do
		if ((SECONDS >= deadline)); then
			log "killing leftover processes in $dir: ${left[*]}"
			kill -CONT "${left[@]}" 2>/dev/null || true
			kill -KILL "${left[@]}" 2>/dev/null || true
			sleep 1
			mapfile -t left < <(procs_in_dir "$dir")
			((${#left[@]} == 0)) || die "leftover processes in $dir would not die: ${left[*]}"
			return 0
		fi
		sleep 0.2
	done
}

# For a subshell about to exec a server (or what starts one): keep only
# stdin/out/err. A server outlives this script, and any pipe it kept open from
# our caller (`$(testdb.sh up)`, a test's Command::output(), a CI runner's
# own descriptors) would make that reader wait for EOF forever; fd 9 is our
# lock, which a server must not hold either.
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

# ---------------------------------------------------------------- ports

# Hex ports of all local TCP sockets in the given state (0A = LISTEN), or in
# any state when no state is given.
tcp_ports() {
	awk -v want="${1:-}" 'FNR > 1 && (want == "" || $4 == want) { split($2, a, ":"); print a[2] }' \
		/proc/net/tcp /proc/net/tcp6 2>/dev/null || true
}

port_listened() {
	tcp_ports 0A | grep -qx "$(printf '%04X' "$1")"
}

# A random port below the ephemeral range, so that no outgoing connection can
# be sitting on it when the server is restarted later.
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

port_of() {
	local f=$STATE_DIR/$1/port
	[[ -r $f ]] && tr -dc 0-9 <"$f"
	return 0
}

# The port to start $1 on (call only while it is down). A remembered port
# that something else now listens on is replaced only where ALLOW_REPICK says
# so (`up`): `start` must come back on the same port or fail.
resolve_port() {
	local name=$1 port
	port=$(port_of "$name")
	if [[ -n $port ]] && port_listened "$port"; then
		[[ ${ALLOW_REPICK:-0} == 1 ]] ||
			die "$name's port $port is taken by another process; free it, or remove $STATE_DIR/$name/port and run 'up' (tests will see a new URL)"
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
mark_log() {
	LOG_OFFSET=$(stat -c %s "$1" 2>/dev/null || echo 0)
}

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

# ---------------------------------------------------------------- mariadb

my_socket() {
	local name=$1
	shift
	mariadb --no-defaults --protocol=socket --socket="$STATE_DIR/$name/sock" -uroot --connect-timeout=5 "$@"
}

my_answers_tcp() {
	local port
	port=$(port_of "$1")
	[[ -n $port ]] || return 1
	MYSQL_PWD=$DB_PW timeout 10 mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$port" \
		-u"$DB_USER" --connect-timeout=5 -Nse 'select 1' >/dev/null 2>&1
}

my_init() {
	local name=$1 dir=$STATE_DIR/$1
	[[ -e $dir/data/.locsvc-initialized ]] && return 0
	# A datadir without the marker is a half-done init: start it over.
	rm -rf "$dir/data"
	log "$name: initialising $dir/data"
	LOG_OFFSET=0
	# --no-defaults keeps Debian's /etc/mysql config (datadir, socket, port)
	# out of it; --skip-name-resolve avoids resolveip, which fails on hosts
	# whose hostname does not resolve; --user=root because the bootstrap
	# server refuses to run as root otherwise.
	mariadb-install-db --no-defaults --datadir="$dir/data" --user=root \
		--auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
		>"$dir/install.log" 2>&1 </dev/null ||
		fail_with_log "$dir/install.log" "$name: mariadb-install-db failed"
	touch "$dir/data/.locsvc-initialized"
}

LAUNCHED_PID=
my_launch() {
	local name=$1 dir=$STATE_DIR/$1 port
	my_init "$name"
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
			--skip-name-resolve --innodb-buffer-pool-size=128M \
			--innodb-flush-log-at-trx-commit=2 --max-connections=1000 --skip-log-bin \
			</dev/null >>"$dir/server.log" 2>&1
	) &
	LAUNCHED_PID=$!
}

my_finish() {
	local name=$1 dir=$STATE_DIR/$1 deadline=$((SECONDS + START_TIMEOUT))
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
	my_socket "$name" -e "
		CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PW';
		CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PW';
		ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PW';
		ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PW';
		GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'127.0.0.1' WITH GRANT OPTION;
		GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost' WITH GRANT OPTION;
	" || fail_with_log "$dir/server.log" "$name: creating user $DB_USER failed"
	my_answers_tcp "$name" || fail_with_log "$dir/server.log" "$name: up, but $DB_USER cannot log in over TCP"
}

# ---------------------------------------------------------------- postgres

# postgres refuses to run as root. cd / because root's cwd may be unreadable
# for postgres.
as_pg() {
	(
		cd /
		close_inherited_fds
		exec runuser -u postgres -- "$@"
	)
}

pg_answers_tcp() {
	local port
	port=$(port_of "$1")
	[[ -n $port ]] || return 1
	PGPASSWORD=$DB_PW PGCONNECT_TIMEOUT=5 timeout 10 "$PGBIN/psql" -X -A -t -q \
		"postgres://$DB_USER@127.0.0.1:$port/postgres" -c 'select 1' >/dev/null 2>&1
}

pg_init() {
	local name=$1 dir=$STATE_DIR/$1
	[[ -e $dir/data/.locsvc-initialized ]] && return 0
	rm -rf "$dir/data"
	log "$name: initialising $dir/data"
	LOG_OFFSET=0
	# Fixed C locale: a fresh Debian may have no other locale generated.
	as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -E UTF8 --locale=C \
		--auth-local=trust --auth-host=scram-sha-256 \
		>"$dir/install.log" 2>&1 </dev/null ||
		fail_with_log "$dir/install.log" "$name: initdb failed"
	touch "$dir/data/.locsvc-initialized"
}

pg_launch() {
	local name=$1 dir=$STATE_DIR/$1 port
	pg_init "$name"
	# A SIGKILLed postmaster leaves backends that still hold its shared
	# memory; a new postmaster refuses to start until they are gone.
	wait_dir_empty "$dir/data"
	# The server is dead, but a killed postmaster can linger as an unreaped
	# zombie, which passes postgres's own kill(pid, 0) liveness test on its
	# lock files and makes it refuse to start: drop them.
	rm -f "$dir/data/postmaster.pid" "$dir"/.s.PGSQL.*
	port=$(resolve_port "$name")
	mark_log "$dir/server.log"
	log "$name: starting postgres on 127.0.0.1:$port"
	# pg_ctl detaches the postmaster (setsid, stdio to the log) and, with -w,
	# waits until it accepts connections.
	as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t "$START_TIMEOUT" -o \
		"-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=500 -c synchronous_commit=off -c shared_buffers=128MB" \
		start </dev/null >&2 ||
		fail_with_log "$dir/server.log" "$name: pg_ctl start failed"
	LAUNCHED_PID=
}

pg_finish() {
	local name=$1 dir=$STATE_DIR/$1 port deadline=$((SECONDS + START_TIMEOUT))
	port=$(port_of "$name")
	until "$PGBIN/pg_isready" -q -h "$dir" -p "$port" -U postgres -d postgres -t 2 >/dev/null 2>&1; do
		[[ -n $(server_pid "$name") ]] || fail_with_log "$dir/server.log" "$name: postgres exited during startup"
		((SECONDS < deadline)) || fail_with_log "$dir/server.log" "$name: postgres not ready after ${START_TIMEOUT}s"
		sleep 0.2
	done
	as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres <<SQL >&2 ||
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE $DB_USER LOGIN SUPERUSER;
  END IF;
END \$\$;
ALTER ROLE $DB_USER LOGIN SUPERUSER PASSWORD '$DB_PW';
SQL
		fail_with_log "$dir/server.log" "$name: creating role $DB_USER failed"
	pg_answers_tcp "$name" || fail_with_log "$dir/server.log" "$name: up, but $DB_USER cannot log in over TCP"
}

# ---------------------------------------------------------------- instances

prepare_dir() {
	local dir=$STATE_DIR/$1
	mkdir -p "$dir"
	if [[ $(kind_of "$1") == pg ]]; then
		chown postgres:postgres "$dir"
		chmod 755 "$dir"
		as_pg test -w "$dir" ||
			die "user postgres cannot write $dir: make every parent of $STATE_DIR searchable (o+x) or set LOCSVC_TESTDB_DIR elsewhere"
	fi
}

answers() {
	case $(kind_of "$1") in
	mariadb) my_answers_tcp "$1" ;;
	pg) pg_answers_tcp "$1" ;;
	esac
}

ensure_up() {
	local name=$1 kind pid
	kind=$(kind_of "$name")
	prepare_dir "$name"
	LAUNCHED_PID=
	pid=$(server_pid "$name")
	if [[ -n $pid ]]; then
		if is_stopped "$pid"; then
			log "$name (pid $pid) was left SIGSTOPped; sending SIGCONT"
			kill -CONT "$pid"
		fi
		if answers "$name"; then
			log "$name already up on 127.0.0.1:$(port_of "$name") (pid $pid)"
			return 0
		fi
		log "$name (pid $pid) runs but does not answer yet; waiting"
		mark_log "$STATE_DIR/$name/server.log"
	else
		case $kind in
		mariadb) my_launch "$name" ;;
		pg) pg_launch "$name" ;;
		esac
	fi
	case $kind in
	mariadb) my_finish "$name" ;;
	pg) pg_finish "$name" ;;
	esac
	log "$name up on 127.0.0.1:$(port_of "$name") (pid $(server_pid "$name"))"
}

stop_instance() {
	local name=$1 kind pid sig deadline
	kind=$(kind_of "$name")
	pid=$(server_pid "$name")
	if [[ -z $pid ]]; then
		log "$name is not running"
		return 0
	fi
	# postgres: SIGINT is its "fast" shutdown; SIGTERM ("smart") would wait
	# for every client, and tests keep pools open.
	sig=TERM
	[[ $kind == pg ]] && sig=INT
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
	[[ $kind == pg ]] && wait_dir_empty "$STATE_DIR/$name/data"
	log "$name stopped"
}

write_env() {
	local f=$STATE_DIR/env tmp
	tmp=$(mktemp "$STATE_DIR/.env.XXXXXX")
	cat >"$tmp" <<EOF
export LOCSVC_TEST_MYSQL1_URL=mysql://$DB_USER:$DB_PW@127.0.0.1:$(port_of m1)
export LOCSVC_TEST_MYSQL2_URL=mysql://$DB_USER:$DB_PW@127.0.0.1:$(port_of m2)
export LOCSVC_TEST_PG_URL=postgres://$DB_USER:$DB_PW@127.0.0.1:$(port_of pg)/postgres
export LOCSVC_TESTDB_DIR=$STATE_DIR
export LOCSVC_TESTDB_SCRIPT=$SCRIPT_PATH
EOF
	chmod 644 "$tmp"
	mv -f "$tmp" "$f"
}

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

need_root() {
	[[ $EUID -eq 0 ]] || die "must run as root (postgres runs via runuser, mariadbd as root)"
}

need_name() {
	[[ $# -eq 1 ]] || usage
	kind_of "$1" >/dev/null
}

main() {
	[[ $# -ge 1 ]] || usage
	local cmd=$1 name
	shift
	case $cmd in
	up)
		[[ $# -eq 0 ]] || usage
		need_root
		init_state_dir
		take_lock
		ensure_packages
		ALLOW_REPICK=1
		for name in "${INSTANCES[@]}"; do
			ensure_up "$name"
		done
		write_env
		cat "$STATE_DIR/env"
		;;
	start)
		need_name "$@"
		need_root
		init_state_dir
		take_lock
		ensure_packages
		ensure_up "$1"
		;;
	stop)
		[[ $# -le 1 ]] || usage
		[[ $# -eq 0 ]] || kind_of "$1" >/dev/null
		need_root
		init_state_dir
		take_lock
		local names=("${INSTANCES[@]}")
		[[ $# -eq 0 ]] || names=("$1")
		for name in "${names[@]}"; do
			stop_instance "$name"
		done
		;;
	pid)
		need_name "$@"
		need_root
		init_state_dir
		name=$1
		local pid
		pid=$(server_pid "$name")
		[[ -n $pid ]] || die "$name is not running"
		echo "$pid"
		;;
	status)
		[[ $# -eq 0 ]] || usage
		need_root
		init_state_dir
		PGBIN=$(pg_bindir) || PGBIN=/nonexistent
		for name in "${INSTANCES[@]}"; do
			status_line "$name"
		done
		;;
	env)
		[[ $# -eq 0 ]] || usage
		local f=${LOCSVC_TESTDB_DIR:-/tmp/locsvc-testdb}/env
		[[ -r $f ]] || die "no env file at $f: run '$SCRIPT_PATH up' first"
		cat "$f"
		;;
	-h | --help | help) usage ;;
	*) usage ;;
	esac
}

main "$@"
