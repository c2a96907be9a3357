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
#   benches/sip/layout.sh settle    flush every server's dirty pages (waits until
#                                   none is left, at most SETTLE_SECS, default 120)
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
readonly MEMBERS=(a b)
readonly DB_USER=bench
readonly DB_PW=bench-pw
readonly MASTER_DB=locmaster
readonly GROUPS_N=2
readonly START_TIMEOUT=60
readonly STOP_TIMEOUT=60
readonly LOCK_TIMEOUT=900
readonly APT_LOCK_TIMEOUT=300
readonly INIT_MARKER=.bench-initialized
readonly LOG_TAG=layout
readonly ALLOW_REPICK=1 # locdb is rewritten by every `up`: the URLs follow
readonly BUFFER_POOL=${BENCH_BUFFER_POOL:-1G}
readonly MAX_CONNECTIONS=${BENCH_MAX_CONNECTIONS:-2000}

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
readonly SCRIPT_PATH
REPO=$(cd "$(dirname "$SCRIPT_PATH")/../.." && pwd)
readonly REPO
readonly MIGRATIONS=${BENCH_MIGRATIONS:-$REPO/migrations/mysql}
# log, die, usage, ports, processes, MariaDB: shared with scripts/testdb.sh.
# shellcheck source=SCRIPTDIR/../../scripts/lib/dbserver.sh
source "$(dirname "$SCRIPT_PATH")/../../scripts/lib/dbserver.sh"

pid_file() { echo "$STATE_DIR/$1/pid"; }
answers() { mariadb_answers_tcp "$1"; }

open_state_dir() {
	init_state_dir "${BENCH_DB_DIR:-/tmp/locsvc-bench-db}"
	take_lock
}

ensure_packages() {
	local missing
	mapfile -t missing < <(missing_packages mariadb-server mariadb-client kamailio kamailio-mysql-modules sip-tester)
	if ((${#missing[@]})); then
		[[ ${BENCH_INSTALL:-1} != 0 ]] || die "missing packages: ${missing[*]} (BENCH_INSTALL=0)"
		# The kamailio package enables its systemd unit; where a policy-rc.d
		# forbids starting services (containers) nothing is started, and the
		# benchmark never uses the system instance either way.
		install_packages "${missing[@]}"
	fi
	require_commands mariadbd mariadb-install-db mariadb mariadb-admin kamailio sipp flock setsid timeout
}

# The same settings for the three servers: only paths and port differ.
db_start() {
	local name=$1 pid
	mkdir -p "$STATE_DIR/$name"
	LAUNCHED_PID=
	pid=$(server_pid "$name")
	if [[ -n $pid ]] && answers "$name"; then
		log "$name already up on 127.0.0.1:$(port_of "$name") (pid $pid)"
		return 0
	fi
	if [[ -n $pid ]]; then
		log "$name (pid $pid) runs but does not answer yet; waiting"
		mark_log "$STATE_DIR/$name/server.log"
	else
		mariadb_launch "$name" \
			--innodb-buffer-pool-size="$BUFFER_POOL" \
			--innodb-log-file-size=256M \
			--max-connections="$MAX_CONNECTIONS" \
			--thread-cache-size=256 \
			--performance-schema=OFF \
			--character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
			--default-time-zone=+00:00
	fi
	mariadb_finish "$name"
	log "$name up on 127.0.0.1:$(port_of "$name") (pid $(server_pid "$name"))"
}

db_stop() {
	stop_server "$1" TERM
	log "$1 stopped"
}

member_url() { # server db
	printf 'mysql://%s:%s@127.0.0.1:%s/%s' "$DB_USER" "$DB_PW" "$(port_of "$1")" "$2"
}

# each_member_db CMD...: runs CMD SERVER DATABASE for every member database.
each_member_db() {
	local s g
	for s in "${MEMBERS[@]}"; do
		for ((g = 1; g <= GROUPS_N; g++)); do
			"$@" "$s" "loc_$g"
		done
	done
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

# create_member_db SERVER DATABASE: the database with the location table
# and kamctl's version table.
create_member_db() {
	local s=$1 db=$2 f
	mariadb_root "$s" -e "CREATE DATABASE IF NOT EXISTS $db"
	for f in "$MIGRATIONS"/location/*.sql; do
		sed 's/{table}/location/g' "$f" | mariadb_root "$s" "$db" ||
			die "applying $f on $s $db failed"
	done
	version_sql | mariadb_root "$s" "$db"
}

create_schema() {
	local f
	compgen -G "$MIGRATIONS/master/*.sql" >/dev/null || die "no migrations in $MIGRATIONS/master"
	compgen -G "$MIGRATIONS/location/*.sql" >/dev/null || die "no migrations in $MIGRATIONS/location"
	mariadb_root master -e "CREATE DATABASE IF NOT EXISTS $MASTER_DB"
	# Each file once (an ALTER TABLE ... ADD COLUMN is not repeatable on
	# MySQL), recorded like locsvc's own migrate does in locsvc_schema.
	mariadb_root master "$MASTER_DB" -e \
		'CREATE TABLE IF NOT EXISTS bench_applied (file VARCHAR(255) NOT NULL PRIMARY KEY)'
	for f in "$MIGRATIONS"/master/*.sql; do
		local name=${f##*/}
		[[ -n $(mariadb_root master "$MASTER_DB" -Nse "SELECT 1 FROM bench_applied WHERE file = '$name'") ]] && continue
		mariadb_root master "$MASTER_DB" <"$f" || die "applying $f on master failed"
		mariadb_root master "$MASTER_DB" -e "INSERT INTO bench_applied (file) VALUES ('$name')"
	done
	each_member_db create_member_db
	locdb_rows_sql | mariadb_root master "$MASTER_DB"
}

truncate_location() { mariadb_root "$1" "$2" -e 'TRUNCATE TABLE location'; }

truncate_all() {
	each_member_db truncate_location
	locdb_rows_sql | mariadb_root master "$MASTER_DB"
	# No instance or layout epoch of an earlier run (locsvc only).
	mariadb_root master "$MASTER_DB" -e 'DELETE FROM locsvc_instances; DELETE FROM locsvc_layout'
}

count_location() {
	printf '%s %s %s\n' "$1" "$2" "$(mariadb_root "$1" "$2" -Nse 'SELECT COUNT(*) FROM location')"
}

# settle_server NAME: writes out NAME's dirty pages and waits until none
# is left (or SETTLE_SECS pass), so a measurement starts on a server that
# is not still flushing what the previous one wrote.
settle_server() {
	local name=$1 pct dirty until=$((SECONDS + ${SETTLE_SECS:-120}))
	pct=$(mariadb_root "$name" -Nse 'SELECT @@GLOBAL.innodb_max_dirty_pages_pct')
	mariadb_root "$name" -e 'SET GLOBAL innodb_max_dirty_pages_pct = 0'
	while :; do
		dirty=$(mariadb_root "$name" -Nse \
			"SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_BUFFER_POOL_PAGES_DIRTY'")
		((dirty == 0)) && break
		if ((SECONDS >= until)); then
			log "$name: $dirty dirty pages left after ${SETTLE_SECS:-120} s"
			break
		fi
		sleep 0.2
	done
	mariadb_root "$name" -e "SET GLOBAL innodb_max_dirty_pages_pct = $pct"
}

write_env() {
	write_env_file "$STATE_DIR/env" <<EOF
export BENCH_MASTER_URL=$(member_url master "$MASTER_DB")
export BENCH_MASTER_PORT=$(port_of master)
export BENCH_A_PORT=$(port_of a)
export BENCH_B_PORT=$(port_of b)
export BENCH_DB_USER=$DB_USER
export BENCH_DB_PW=$DB_PW
export BENCH_DB_DIR=$STATE_DIR
export BENCH_LAYOUT_SCRIPT=$SCRIPT_PATH
EOF
}

need_up() {
	local s
	for s in "${SERVERS[@]}"; do
		[[ -n $(server_pid "$s") ]] || die "$s is not running: run '$SCRIPT_PATH up' first"
	done
}

main() {
	[[ $# -eq 1 ]] || usage
	local s
	case $1 in
	up)
		[[ $EUID -eq 0 ]] || die "must run as root"
		open_state_dir
		ensure_packages
		for s in "${SERVERS[@]}"; do
			db_start "$s"
		done
		create_schema
		write_env
		cat "$STATE_DIR/env"
		;;
	down)
		open_state_dir
		for s in "${SERVERS[@]}"; do
			db_stop "$s"
		done
		;;
	env)
		print_env_file "${BENCH_DB_DIR:-/tmp/locsvc-bench-db}/env"
		;;
	truncate)
		open_state_dir
		need_up
		truncate_all
		log "location tables truncated, locdb reset"
		;;
	counts)
		open_state_dir
		need_up
		each_member_db count_location
		;;
	settle)
		open_state_dir
		need_up
		for s in "${SERVERS[@]}"; do
			settle_server "$s"
		done
		log "every server flushed"
		;;
	locdb)
		open_state_dir
		need_up
		mariadb_root master "$MASTER_DB" -e 'SELECT * FROM locdb ORDER BY id, no'
		;;
	status)
		open_state_dir
		for s in "${SERVERS[@]}"; do
			status_line "$s"
		done
		;;
	*) usage ;;
	esac
}

main "$@"
