#!/usr/bin/env bash
# layout.sh: the MariaDB layout that Kamailio p_usrloc and locsvc share in
# the SIP benchmark (benches/sip/compare.sh), on loopback only.
#
# Three MariaDB servers with identical settings, each on a random loopback
# port picked at start-up:
#   master  database `locmaster` holding `locdb` (migrations/mysql/master/)
#   a       databases loc_1, loc_2: member 1 of groups 1 and 2 (risk group 1)
#   b       databases loc_1, loc_2: member 2 of groups 1 and 2 (risk group 2)
# Each member database has the `location` table (migrations/mysql/location/,
# `{table}` = location) and a kamctl `version` table saying location = 9.
#
# Usage (as root):
#   benches/sip/layout.sh up        install what is missing, start the three servers,
#                                   create schema and locdb, print the env
#   benches/sip/layout.sh down      stop the three servers (data is kept)
#   benches/sip/layout.sh env       print the env written by the last `up`
#   benches/sip/layout.sh truncate  TRUNCATE every location table and put locdb back
#                                   to its pristine rows (status 1, errors 0)
#   benches/sip/layout.sh counts    rows of every location table: "a loc_1 123"
#   benches/sip/layout.sh locdb     print the master's locdb
#   benches/sip/layout.sh status    one line per server: name port pid up|down
#
#   eval "$(benches/sip/layout.sh up)"   # everything but the env goes to stderr
#
# The env exports BENCH_MASTER_URL (mysql://user:pw@127.0.0.1:PORT/locmaster,
# good for Kamailio's db_mysql and for locsvc's sqlx alike), BENCH_{MASTER,A,B}_PORT,
# BENCH_DB_USER, BENCH_DB_PW, BENCH_DB_DIR and BENCH_LAYOUT_SCRIPT.
#
# Knobs: BENCH_DB_DIR (state dir, default /tmp/locsvc-bench-db),
# BENCH_BUFFER_POOL (innodb_buffer_pool_size of each server, default 1G),
# BENCH_MAX_CONNECTIONS (default 2000), BENCH_INSTALL=0 (never run apt-get).
# Every server runs with innodb_flush_log_at_trx_commit=2 and the same flags.
# State: $BENCH_DB_DIR/<name>/{data,sock,pid,port,server.log}; a server's
# port is kept in <name>/port and re-picked only if something else took it
# (locdb is rewritten by every `up`, so the URLs follow).
set -euo pipefail
shopt -s inherit_errexit

readonly SERVERS=(master a b)
readonly DB_USER=bench
readonly DB_PW=bench-pw
readonly MASTER_DB=locmaster
readonly GROUPS_N=2
readonly START_TIMEOUT=60
readonly STOP_TIMEOUT=60
readonly APT_LOCK_TIMEOUT=300
readonly BUFFER_POOL=${BENCH_BUFFER_POOL:-1G}
readonly MAX_CONNECTIONS=${BENCH_MAX_CONNECTIONS:-2000}

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
readonly SCRIPT_PATH
REPO=$(cd "$(dirname "$SCRIPT_PATH")/../.." && pwd)
readonly REPO
readonly MIGRATIONS=${BENCH_MIGRATIONS:-$REPO/migrations/mysql}

log() { printf 'layout: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

usage() {
	sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

init_state_dir() {
	local raw=${BENCH_DB_DIR:-/tmp/locsvc-bench-db}
	mkdir -p -- "$raw"
	STATE_DIR=$(readlink -f -- "$raw")
	[[ $STATE_DIR =~ ^[A-Za-z0-9._/-]+$ ]] ||
		die "state dir '$STATE_DIR' may only contain [A-Za-z0-9._/-]"
	# Unix socket paths must fit in sun_path (108 bytes).
	((${#STATE_DIR} <= 70)) || die "state dir '$STATE_DIR' is too long for unix socket paths (max 70 chars)"
	readonly STATE_DIR
	exec 9>>"$STATE_DIR/.lock"
	flock -w 900 9 || die "timed out waiting for $STATE_DIR/.lock"
}

# ---------------------------------------------------------------- packages

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
	local pkgs=(mariadb-server mariadb-client kamailio kamailio-mysql-modules sip-tester) missing=() p st
	for p in "${pkgs[@]}"; do
		st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
		[[ $st == installed ]] || missing+=("$p")
	done
	if ((${#missing[@]})); then
		[[ ${BENCH_INSTALL:-1} != 0 ]] || die "missing packages: ${missing[*]} (BENCH_INSTALL=0)"
		[[ $EUID -eq 0 ]] || die "need root to install: ${missing[*]}"
		log "installing ${missing[*]}"
		apt_run update -q
		# The kamailio package enables its systemd unit; where a policy-rc.d
		# forbids starting services (containers) nothing is started, and the
		# benchmark never uses the system instance either way.
		apt_run install -y -q --no-install-recommends "${missing[@]}"
	fi
	local b
	for b in mariadbd mariadb-install-db mariadb mariadb-admin kamailio sipp flock setsid timeout; do
		command -v "$b" >/dev/null || die "'$b' not found after package installation"
	done
}

# ---------------------------------------------------------------- processes

proc_state() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	s=${s##*) }
	printf '%s' "${s%% *}"
}

pid_alive() {
	local st
	st=$(proc_state "$1") || return 1
	[[ $st != Z && $st != X ]]
}

# The server's main PID, or empty. mariadbd chdirs into its datadir, so the
# cwd check rules out a stale pid file whose PID now belongs to someone else.
server_pid() {
	local f=$STATE_DIR/$1/pid pid
	[[ -r $f ]] || return 0
	pid=$(head -n 1 "$f" 2>/dev/null | tr -dc 0-9)
	[[ -n $pid ]] || return 0
	pid_alive "$pid" || return 0
	[[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$STATE_DIR/$1/data" ]] || return 0
	echo "$pid"
}

# A server outlives this script: it must not keep any descriptor of ours
# (a caller's $(...) pipe would otherwise never see EOF; fd 9 is our lock).
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

tcp_ports() {
	awk -v want="${1:-}" 'FNR > 1 && (want == "" || $4 == want) { split($2, a, ":"); print a[2] }' \
		/proc/net/tcp /proc/net/tcp6 2>/dev/null || true
}

port_listened() {
	tcp_ports 0A | grep -qx "$(printf '%04X' "$1")"
}

# A random port below the ephemeral range (no outgoing connection can sit on
# it when a server restarts), not in use, not taken by a sibling.
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

resolve_port() {
	local name=$1 port
	port=$(port_of "$name")
	if [[ -n $port ]] && port_listened "$port"; then
		log "$name's port $port is taken by another process; picking a new one"
		port=
	fi
	if [[ -z $port ]]; then
		port=$(pick_port)
		echo "$port" >"$STATE_DIR/$name/port"
	fi
	echo "$port"
}

# ---------------------------------------------------------------- mariadb

# Root over the unix socket (admin work).
sql_root() {
	local name=$1
	shift
	mariadb --no-defaults --protocol=socket --socket="$STATE_DIR/$name/sock" -uroot \
		--connect-timeout=5 "$@"
}

answers_tcp() {
	local port
	port=$(port_of "$1")
	[[ -n $port ]] || return 1
	MYSQL_PWD=$DB_PW timeout 10 mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$port" \
		-u"$DB_USER" --connect-timeout=5 -Nse 'select 1' >/dev/null 2>&1
}

fail_with_log() {
	local logf=$1
	shift
	log "error: $*"
	[[ -s $logf ]] && tail -n 40 "$logf" >&2
	exit 1
}

db_init() {
	local name=$1 dir=$STATE_DIR/$1
	[[ -e $dir/data/.bench-initialized ]] && return 0
	rm -rf "$dir/data"
	log "$name: initialising $dir/data"
	mariadb-install-db --no-defaults --datadir="$dir/data" --user=root \
		--auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
		>"$dir/install.log" 2>&1 </dev/null ||
		fail_with_log "$dir/install.log" "$name: mariadb-install-db failed"
	touch "$dir/data/.bench-initialized"
}

# The same settings for the three servers: only paths and port differ.
db_start() {
	local name=$1 dir=$STATE_DIR/$1 port pid deadline
	mkdir -p "$dir"
	pid=$(server_pid "$name")
	if [[ -n $pid ]] && answers_tcp "$name"; then
		log "$name already up on 127.0.0.1:$(port_of "$name") (pid $pid)"
		return 0
	fi
	if [[ -z $pid ]]; then
		db_init "$name"
		port=$(resolve_port "$name")
		rm -f "$dir/pid" "$dir/sock"
		log "$name: starting mariadbd on 127.0.0.1:$port"
		(
			close_inherited_fds
			exec setsid mariadbd --no-defaults --user=root \
				--datadir="$dir/data" --bind-address=127.0.0.1 --port="$port" \
				--socket="$dir/sock" --pid-file="$dir/pid" --log-error="$dir/server.log" \
				--skip-name-resolve --skip-log-bin \
				--innodb-buffer-pool-size="$BUFFER_POOL" \
				--innodb-flush-log-at-trx-commit=2 \
				--innodb-log-file-size=256M \
				--max-connections="$MAX_CONNECTIONS" \
				--thread-cache-size=256 \
				--performance-schema=OFF \
				--character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
				--default-time-zone=+00:00 \
				</dev/null >>"$dir/server.log" 2>&1
		) &
	fi
	deadline=$((SECONDS + START_TIMEOUT))
	until timeout 5 mariadb-admin --no-defaults --protocol=socket --socket="$dir/sock" -uroot \
		--connect-timeout=2 ping >/dev/null 2>&1; do
		((SECONDS < deadline)) || fail_with_log "$dir/server.log" "$name: mariadbd not ready after ${START_TIMEOUT}s"
		sleep 0.2
	done
	sql_root "$name" -e "
		CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PW';
		CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PW';
		ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PW';
		ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PW';
		GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'127.0.0.1';
		GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost';
	" || fail_with_log "$dir/server.log" "$name: creating user $DB_USER failed"
	answers_tcp "$name" || fail_with_log "$dir/server.log" "$name: up, but $DB_USER cannot log in over TCP"
	log "$name up on 127.0.0.1:$(port_of "$name") (pid $(server_pid "$name"))"
}

db_stop() {
	local name=$1 pid deadline
	pid=$(server_pid "$name")
	if [[ -z $pid ]]; then
		log "$name is not running"
		return 0
	fi
	log "$name: stopping pid $pid"
	kill -CONT "$pid" 2>/dev/null || true
	kill -TERM "$pid" 2>/dev/null || true
	deadline=$((SECONDS + STOP_TIMEOUT))
	while pid_alive "$pid"; do
		if ((SECONDS >= deadline)); then
			log "$name: pid $pid still alive after ${STOP_TIMEOUT}s; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			sleep 1
			break
		fi
		sleep 0.1
	done
	log "$name stopped"
}

member_url() { # server db
	printf 'mysql://%s:%s@127.0.0.1:%s/%s' "$DB_USER" "$DB_PW" "$(port_of "$1")" "$2"
}

# The locdb rows, pristine: group g = (a loc_g rg 1, b loc_g rg 2).
locdb_rows_sql() {
	local g sep=''
	printf 'DELETE FROM locdb;\nINSERT INTO locdb (id, no, url, status, errors, failover, spare, rg) VALUES\n'
	for ((g = 1; g <= GROUPS_N; g++)); do
		printf "%s  (%d, 1, '%s', 1, 0, '1900-01-01 00:00:01', 0, 1),\n" "$sep" "$g" "$(member_url a "loc_$g")"
		printf "  (%d, 2, '%s', 1, 0, '1900-01-01 00:00:01', 0, 2)" "$g" "$(member_url b "loc_$g")"
		sep=$',\n'
	done
	printf ';\n'
}

# kamctl's `version` table (standard-create.sql) with location = 9
# (usrloc-create.sql). p_usrloc 5.6 does not check it (see README.md); it
# is here so the members look like a kamctl-made location database.
version_sql() {
	cat <<'SQL'
CREATE TABLE IF NOT EXISTS version (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    table_name VARCHAR(32) NOT NULL,
    table_version INT UNSIGNED DEFAULT 0 NOT NULL,
    CONSTRAINT table_name_idx UNIQUE (table_name)
);
INSERT IGNORE INTO version (table_name, table_version) VALUES ('version', 1), ('location', 9);
SQL
}

create_schema() {
	local f g s
	compgen -G "$MIGRATIONS/master/*.sql" >/dev/null || die "no migrations in $MIGRATIONS/master"
	compgen -G "$MIGRATIONS/location/*.sql" >/dev/null || die "no migrations in $MIGRATIONS/location"
	sql_root master -e "CREATE DATABASE IF NOT EXISTS $MASTER_DB"
	for f in "$MIGRATIONS"/master/*.sql; do
		sql_root master "$MASTER_DB" <"$f" || die "applying $f on master failed"
	done
	for s in a b; do
		for ((g = 1; g <= GROUPS_N; g++)); do
			sql_root "$s" -e "CREATE DATABASE IF NOT EXISTS loc_$g"
			for f in "$MIGRATIONS"/location/*.sql; do
				sed 's/{table}/location/g' "$f" | sql_root "$s" "loc_$g" ||
					die "applying $f on $s loc_$g failed"
			done
			version_sql | sql_root "$s" "loc_$g"
		done
	done
	locdb_rows_sql | sql_root master "$MASTER_DB"
}

truncate_all() {
	local g s
	for s in a b; do
		for ((g = 1; g <= GROUPS_N; g++)); do
			sql_root "$s" "loc_$g" -e 'TRUNCATE TABLE location'
		done
	done
	locdb_rows_sql | sql_root master "$MASTER_DB"
}

counts() {
	local g s
	for s in a b; do
		for ((g = 1; g <= GROUPS_N; g++)); do
			printf '%s loc_%d %s\n' "$s" "$g" "$(sql_root "$s" "loc_$g" -Nse 'SELECT COUNT(*) FROM location')"
		done
	done
}

write_env() {
	local f=$STATE_DIR/env tmp
	tmp=$(mktemp "$STATE_DIR/.env.XXXXXX")
	cat >"$tmp" <<EOF
export BENCH_MASTER_URL=$(member_url master "$MASTER_DB")
export BENCH_MASTER_PORT=$(port_of master)
export BENCH_A_PORT=$(port_of a)
export BENCH_B_PORT=$(port_of b)
export BENCH_DB_USER=$DB_USER
export BENCH_DB_PW=$DB_PW
export BENCH_DB_DIR=$STATE_DIR
export BENCH_LAYOUT_SCRIPT=$SCRIPT_PATH
EOF
	chmod 644 "$tmp"
	mv -f "$tmp" "$f"
}

need_up() {
	local s
	for s in "${SERVERS[@]}"; do
		[[ -n $(server_pid "$s") ]] || die "$s is not running: run '$SCRIPT_PATH up' first"
	done
}

main() {
	[[ $# -eq 1 ]] || usage
	case $1 in
	up)
		[[ $EUID -eq 0 ]] || die "must run as root"
		init_state_dir
		ensure_packages
		local s
		for s in "${SERVERS[@]}"; do
			db_start "$s"
		done
		create_schema
		write_env
		cat "$STATE_DIR/env"
		;;
	down)
		init_state_dir
		local s
		for s in "${SERVERS[@]}"; do
			db_stop "$s"
		done
		;;
	env)
		local f=${BENCH_DB_DIR:-/tmp/locsvc-bench-db}/env
		[[ -r $f ]] || die "no env file at $f: run '$SCRIPT_PATH up' first"
		cat "$f"
		;;
	truncate)
		init_state_dir
		need_up
		truncate_all
		log "location tables truncated, locdb reset"
		;;
	counts)
		init_state_dir
		need_up
		counts
		;;
	locdb)
		init_state_dir
		need_up
		sql_root master "$MASTER_DB" -e 'SELECT * FROM locdb ORDER BY id, no'
		;;
	status)
		init_state_dir
		local s pid state
		for s in "${SERVERS[@]}"; do
			pid=$(server_pid "$s")
			state=down
			[[ -n $pid ]] && answers_tcp "$s" && state=up
			printf '%s %s %s %s\n' "$s" "$(port_of "$s")" "${pid:--}" "$state"
		done
		;;
	*) usage ;;
	esac
}

main "$@"
