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
readonly INIT_MARKER=.locsvc-initialized
readonly LOG_TAG=testdb
ALLOW_REPICK=0 # set by `up` only; see resolve_port

# mariadbd and runuser live in sbin, which a CI shell's PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
readonly SCRIPT_PATH
# log, die, usage, ports, processes, MariaDB: shared with benches/sip/layout.sh.
# shellcheck source=SCRIPTDIR/lib/dbserver.sh
source "$(dirname "$SCRIPT_PATH")/lib/dbserver.sh"

kind_of() {
	case $1 in
	m1 | m2) echo mariadb ;;
	pg) echo pg ;;
	*) die "unknown instance '$1' (expected one of: ${INSTANCES[*]})" ;;
	esac
}

open_state_dir() {
	init_state_dir "${LOCSVC_TESTDB_DIR:-/tmp/locsvc-testdb}"
	# The postgres user must be able to reach its subdir.
	chmod 755 "$STATE_DIR"
}

# ---------------------------------------------------------------- packages

pg_bindir() {
	local d
	d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
	[[ -n $d && -x $d/postgres && -x $d/initdb ]] || return 1
	echo "$d"
}

ensure_packages() {
	local missing
	mapfile -t missing < <(missing_packages mariadb-server mariadb-client postgresql)
	install_packages "${missing[@]}"
	require_commands mariadbd mariadb-install-db mariadb mariadb-admin runuser flock setsid timeout
	PGBIN=$(pg_bindir) || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
	id postgres >/dev/null 2>&1 || die "system user 'postgres' does not exist (should come with the postgresql package)"
}

# ---------------------------------------------------------------- processes

pid_file() {
	case $(kind_of "$1") in
	mariadb) echo "$STATE_DIR/$1/pid" ;;
	pg) echo "$STATE_DIR/$1/data/postmaster.pid" ;;
	esac
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

pg_launch() {
	local name=$1 dir=$STATE_DIR/$1 port
	# Fixed C locale: a fresh Debian may have no other locale generated.
	init_datadir "$name" initdb \
		as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -E UTF8 --locale=C \
		--auth-local=trust --auth-host=scram-sha-256
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
	mariadb) mariadb_answers_tcp "$1" ;;
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
		mariadb) mariadb_launch "$name" --innodb-buffer-pool-size=128M --max-connections=1000 ;;
		pg) pg_launch "$name" ;;
		esac
	fi
	case $kind in
	mariadb) mariadb_finish "$name" 'WITH GRANT OPTION' ;;
	pg) pg_finish "$name" ;;
	esac
	log "$name up on 127.0.0.1:$(port_of "$name") (pid $(server_pid "$name"))"
}

stop_instance() {
	local name=$1
	case $(kind_of "$name") in
	mariadb) stop_server "$name" TERM ;;
	pg)
		# SIGINT is postgres's "fast" shutdown; SIGTERM ("smart") would wait
		# for every client, and tests keep pools open.
		stop_server "$name" INT
		wait_dir_empty "$STATE_DIR/$name/data"
		;;
	esac
	log "$name stopped"
}

write_env() {
	write_env_file "$STATE_DIR/env" <<EOF
export LOCSVC_TEST_MYSQL1_URL=mysql://$DB_USER:$DB_PW@127.0.0.1:$(port_of m1)
export LOCSVC_TEST_MYSQL2_URL=mysql://$DB_USER:$DB_PW@127.0.0.1:$(port_of m2)
export LOCSVC_TEST_PG_URL=postgres://$DB_USER:$DB_PW@127.0.0.1:$(port_of pg)/postgres
export LOCSVC_TESTDB_DIR=$STATE_DIR
export LOCSVC_TESTDB_SCRIPT=$SCRIPT_PATH
EOF
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
		open_state_dir
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
		open_state_dir
		take_lock
		ensure_packages
		ensure_up "$1"
		;;
	stop)
		[[ $# -le 1 ]] || usage
		[[ $# -eq 0 ]] || kind_of "$1" >/dev/null
		need_root
		open_state_dir
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
		open_state_dir
		name=$1
		local pid
		pid=$(server_pid "$name")
		[[ -n $pid ]] || die "$name is not running"
		echo "$pid"
		;;
	status)
		[[ $# -eq 0 ]] || usage
		need_root
		open_state_dir
		PGBIN=$(pg_bindir) || PGBIN=/nonexistent
		for name in "${INSTANCES[@]}"; do
			status_line "$name"
		done
		;;
	env)
		[[ $# -eq 0 ]] || usage
		print_env_file "${LOCSVC_TESTDB_DIR:-/tmp/locsvc-testdb}/env"
		;;
	-h | --help | help) usage ;;
	*) usage ;;
	esac
}

main "$@"
