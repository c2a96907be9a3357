#!/usr/bin/env bash
# The raw MariaDB ceiling of the statements behind one Lookup and one Save,
# sent by mysqlslap (C client, no locsvc, no gRPC) to the bench layout's two
# member servers at once, for comparison with locsvc's gRPC ceiling
# (locsvc-load). Same statement text as locsvc's unbatched path, literal
# values instead of parameters.
#
#   benches/raw-ceiling.sh            # needs `benches/sip/layout.sh up` data
#
# Lookup = one SELECT of an AoR's valid rows on one member: both servers
#   serve lookups, so the ceiling is the sum of both servers' SELECT rates.
# Save = one SELECT on one member + one upsert of a new row on each member:
#   server a runs "SELECT; INSERT … ON DUPLICATE KEY UPDATE" and server b the
#   upsert alone, concurrently, each N times; saves/s = N / the slower one.
# Knobs: CONCURRENCY [32] N [100000].
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONCURRENCY=${CONCURRENCY:-32}
N=${N:-100000}
eval "$("$HERE/sip/layout.sh" env)"

COLS="ruid, username, domain, contact, received, path, expires, q, callid, cseq, last_modified, flags, cflags, user_agent, socket, methods, instance, reg_id"
SELECT="SELECT $COLS FROM location WHERE username = 's1' AND domain = 'example.com' AND expires > UTC_TIMESTAMP()"
UPSERT="INSERT INTO location ($COLS) VALUES (UUID(), UUID(), 'example.com', 'sip:raw@192.0.2.10:5060', NULL, NULL, UTC_TIMESTAMP() + INTERVAL 1 HOUR, -1, UUID(), 1, UTC_TIMESTAMP(), 0, 0, 'raw', NULL, NULL, NULL, 0) ON DUPLICATE KEY UPDATE expires = VALUES(expires)"

slap() { # port query count -> seconds
    mysqlslap --host=127.0.0.1 --port="$1" --user="$BENCH_DB_USER" --password="$BENCH_DB_PW" \
        --create-schema=loc_1 --no-drop --concurrency="$CONCURRENCY" --iterations=1 \
        --number-of-queries="$3" --delimiter=";" --query="$2" 2>/dev/null |
        awk '/Average number of seconds/ {print $(NF-1)}'
}

# Lookup: both servers at once, N SELECTs each.
slap "$BENCH_A_PORT" "$SELECT" "$N" >/tmp/raw-a.$$ &
slap "$BENCH_B_PORT" "$SELECT" "$N" >/tmp/raw-b.$$
wait
ta=$(cat /tmp/raw-a.$$)
tb=$(cat /tmp/raw-b.$$)
python3 -c "print(f'raw lookup: {$N/$ta + $N/$tb:.0f} SELECT/s (a {$N/$ta:.0f}/s in {$ta}s, b {$N/$tb:.0f}/s in {$tb}s, concurrency $CONCURRENCY each)')"

# Save: a = SELECT + upsert, b = upsert, N saves each (mysqlslap counts statements).
slap "$BENCH_A_PORT" "$SELECT;$UPSERT" "$((2 * N))" >/tmp/raw-a.$$ &
slap "$BENCH_B_PORT" "$UPSERT" "$N" >/tmp/raw-b.$$
wait
ta=$(cat /tmp/raw-a.$$)
tb=$(cat /tmp/raw-b.$$)
rm -f /tmp/raw-a.$$ /tmp/raw-b.$$
python3 -c "t=max($ta,$tb); print(f'raw save: {$N/t:.0f} saves/s (a: SELECT+upsert in {$ta}s, b: upsert in {$tb}s, concurrency $CONCURRENCY each)')"
