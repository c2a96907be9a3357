#!/usr/bin/env bash
# Smoke test of the images deploy/container/build.sh made: locsvc and
# proxy-shim containers on a network of their own; the host's `locsvc`
# CLI saves and reads a binding through locsvc's published port, adds a
# digest subscriber, sipp registers it through the shim's published UDP
# port (401, then 200 OK), and the CLI sees the binding; locsvc is then
# stopped (it must drain and exit 0) and started again, and still has
# both bindings in its volume. Everything it starts is removed on exit.
#
# Environment: TAG (default latest), BIN_DIR (the host's locsvc CLI,
# default target/release), DOCKER (default docker).
set -euo pipefail
cd "$(dirname "$0")/../.."

TAG=${TAG:-latest}
BIN_DIR=${BIN_DIR:-target/release}
DOCKER=${DOCKER:-docker}
cli="$BIN_DIR/locsvc"
scenario="$PWD/proxy-shim/tests/scenarios/register_auth.xml"
# Only the client settings set below reach the CLI.
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(LOCSVC|PROXY_SHIM)_' || true)
[ -x "$cli" ] || { echo "smoke.sh: $cli not found (set BIN_DIR)" >&2; exit 1; }
command -v sipp >/dev/null || { echo "smoke.sh: sipp not found (Debian: sip-tester)" >&2; exit 1; }

run_id="locsvc-smoke-$$"
net="$run_id"
loc="$run_id-locsvc"
shim="$run_id-shim"
work=$(mktemp -d)
cleanup() {
  "$DOCKER" rm -f -v "$shim" "$loc" >/dev/null 2>&1 || true
  "$DOCKER" network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "smoke.sh: FAILED: $*" >&2
  for c in "$loc" "$shim"; do
    if "$DOCKER" container inspect "$c" >/dev/null 2>&1; then
      echo "--- logs of $c" >&2
      "$DOCKER" logs --tail 40 "$c" >&2 || true
    fi
  done
  exit 1
}

running() {
  [ "$("$DOCKER" container inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" = true ]
}

# The host address:port docker published container port $2 of $1 on.
published() {
  "$DOCKER" port "$1" "$2" | head -n1
}

# Tokens: locsvc refuses a non-loopback listener without one (or TLS).
export LOCSVC_TOKEN="smoke-data-$RANDOM$RANDOM"
export LOCSVC_ADMIN_TOKEN="smoke-admin-$RANDOM$RANDOM"

"$DOCKER" network create "$net" >/dev/null
"$DOCKER" run -d --name "$loc" --network "$net" --network-alias locsvc \
  -p 127.0.0.1::50051/tcp \
  -e LOCSVC_GRPC__TOKEN="$LOCSVC_TOKEN" -e LOCSVC_GRPC__ADMIN_TOKEN="$LOCSVC_ADMIN_TOKEN" \
  "locsvc:$TAG" >/dev/null

# Waits (bounded) until locsvc answers through its published port.
wait_locsvc() {
  local i
  LOCSVC_SERVER="http://$(published "$loc" 50051/tcp)" || fail "locsvc port not published"
  export LOCSVC_SERVER
  for i in $(seq 1 120); do
    running "$loc" || fail "locsvc container exited"
    "$cli" ul stats >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  fail "locsvc did not answer within 60 s"
}
wait_locsvc
echo "smoke.sh: locsvc answers on $LOCSVC_SERVER"

"$cli" ul save sip:bob@example.com sip:bob@192.0.2.20:5060 --expires 600 >/dev/null \
  || fail "ul save"
"$cli" ul show sip:bob@example.com | tee "$work/bob" >&2
grep -q 'sip:bob@192.0.2.20:5060' "$work/bob" || fail "ul show lacks the saved binding"
"$cli" subscriber add sip:alice@example.com s3cret >/dev/null || fail "subscriber add"

# The shim finds locsvc by its name on the network (DNS in a scratch image).
"$DOCKER" run -d --name "$shim" --network "$net" -p 127.0.0.1::5060/udp \
  -e PROXY_SHIM_LOCSVC_TOKEN="$LOCSVC_TOKEN" \
  "proxy-shim:$TAG" --locsvc http://locsvc:50051 --domain example.com \
  --advertise 127.0.0.1 >/dev/null
for i in $(seq 1 60); do
  running "$shim" || fail "proxy-shim container exited"
  grep -q 'proxy-shim serving' < <("$DOCKER" logs "$shim" 2>&1) && break
  [ "$i" -lt 60 ] || fail "proxy-shim did not start within 30 s"
  sleep 0.5
done
sip=$(published "$shim" 5060/udp) || fail "shim port not published"
echo "smoke.sh: proxy-shim listens on udp $sip"

# sipp's own port, picked free now (other processes may hold 5060 and
# its neighbours).
lport=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'SEQUENTIAL\nalice;[authentication username=alice password=s3cret]\n' >"$work/alice.csv"
(cd "$work" && timeout 60 sipp -sf "$scenario" \
  -inf alice.csv -i 127.0.0.1 -p "$lport" -m 1 -nostdin -trace_err \
  -timeout 30s -timeout_error "$sip" >sipp.out 2>&1) \
  || { cat "$work/sipp.out" "$work"/*errors.log >&2 2>/dev/null; fail "sipp REGISTER (401, then 200 OK)"; }
echo "smoke.sh: REGISTER through the shim: 401, then 200 OK"
"$cli" ul show sip:alice@example.com | tee "$work/alice" >&2
grep -q "sip:alice@127.0.0.1:$lport" "$work/alice" || fail "ul show lacks the registered binding"

# A stop drains and exits 0; the bindings survive in the volume.
"$DOCKER" stop -t 40 "$loc" >/dev/null
code=$("$DOCKER" container inspect --format '{{.State.ExitCode}}' "$loc")
[ "$code" = 0 ] || fail "locsvc exited $code on SIGTERM"
"$DOCKER" start "$loc" >/dev/null
wait_locsvc
# Output captured first: under pipefail, `ul show | grep -q` fails whenever
# grep exits on its match before ul show has written its last line.
after=$("$cli" ul show sip:alice@example.com)
grep -qF "sip:alice@127.0.0.1:$lport" <<<"$after" || fail "binding lost across a restart: $after"
after=$("$cli" ul show sip:bob@example.com)
grep -qF 'sip:bob@192.0.2.20:5060' <<<"$after" || fail "binding lost across a restart: $after"
echo "smoke.sh: locsvc drained on stop (exit 0) and kept its bindings across the restart"
echo "smoke.sh: OK"
