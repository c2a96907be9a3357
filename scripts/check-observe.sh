#!/usr/bin/env bash
# check-observe.sh: the observability checks CI runs after the test suite
# (docs/operate.md):
#
#   1. promtool check rules deploy/prometheus/alerts.yml
#   2. promtool test rules deploy/prometheus/alerts_test.yml (every alert firing and not)
#   3. the structure of deploy/grafana/locsvc.json (scripts/lab/dashboard-check.py)
#   4. the lab with the binaries in BIN (scripts/lab.sh up), its smoke (a member
#      server killed and brought back, the alert firing and clearing, every
#      dashboard query returning data), then the lab down again, whatever happened
#
# Usage (as root; installs its Debian packages when missing):
#   scripts/check-observe.sh                  BIN=target/release (built if missing)
#   BIN=target/debug scripts/check-observe.sh the binaries the tests built (CI)
#   CHECK_OBSERVE_LAB=0 scripts/check-observe.sh   steps 1-3 only (no root needed
#                                             once prometheus is installed)
#
# The lab lives in LAB_DIR (default target/lab-check, apart from a developer's
# target/lab) and is stopped at the end; `LAB_DIR=target/lab-check
# scripts/lab.sh clean` deletes it. Every step is bounded: `up` by
# UP_TIMEOUT (default 300 s), the smoke by SMOKE_TIMEOUT (default 420 s).
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$SECONDS
say() { printf 'check-observe: [%d s] %s\n' "$((SECONDS - t0))" "$*" >&2; }

need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
	say "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q --no-install-recommends "${need[@]}" >&2 </dev/null ||
		{ apt-get update -q >&2 </dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >&2 </dev/null; }
fi

say "promtool check rules"
promtool check rules deploy/prometheus/alerts.yml
say "promtool test rules"
promtool test rules deploy/prometheus/alerts_test.yml
say "dashboard structure"
python3 scripts/lab/dashboard-check.py deploy/grafana/locsvc.json

if [ "${CHECK_OBSERVE_LAB:-1}" = 0 ]; then
	say "ok (lab skipped: CHECK_OBSERVE_LAB=0)"
	exit 0
fi

export LAB_DIR=${LAB_DIR:-target/lab-check}
export BIN=${BIN:-target/release}
down() {
	local rc=$?
	say "lab down"
	timeout 180 scripts/lab.sh down >&2 || say "warning: 'scripts/lab.sh down' failed"
	exit "$rc"
}
trap down EXIT

say "lab up (BIN=$BIN, LAB_DIR=$LAB_DIR)"
timeout "${UP_TIMEOUT:-300}" scripts/lab.sh up >/dev/null
say "lab smoke"
timeout "${SMOKE_TIMEOUT:-420}" scripts/lab.sh smoke
say "ok"
