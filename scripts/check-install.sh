#!/usr/bin/env bash
# Checks what docs/install.md installs, with the built binaries:
#   1. the systemd units pass `systemd-analyze verify` (in a scratch root
#      holding the units and binaries at their install paths) and keep
#      their sandbox (`systemd-analyze security` exposure at most 2.0);
#   2. deploy/config/*.toml are exactly `locsvc config defaults` and
#      `proxy-shim config defaults`;
#   3. both binaries tell $NOTIFY_SOCKET READY=1 once their listeners
#      answer, and STOPPING=1 then exit 0 on SIGTERM (Type=notify); locsvc
#      re-reads locdb at once on SIGHUP (ExecReload);
#   4. the container images build (deploy/container/build.sh), run as a
#      numeric non-root user without a shell, and pass
#      deploy/container/smoke.sh (a REGISTER through both containers).
# Installs its tools with apt-get; starts dockerd when no daemon answers
# (and stops it again); removes the images and containers it made.
#
# Environment:
#   PROFILE  release (default) or debug: which build to check; built
#            with cargo when a binary is missing
#   BIN_DIR  where the binaries are (default target/$PROFILE; CI passes
#            the ones its tests built); not rebuilt when stale
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-release}
case "$PROFILE" in
  release) cargo_profile=(--release) ;;
  debug) cargo_profile=() ;;
  *) echo "check-install: PROFILE is release or debug, not $PROFILE" >&2; exit 2 ;;
esac
BIN_DIR=${BIN_DIR:-target/$PROFILE}
TAG="check-install-$$"
# The binaries run with the settings under test alone: each refuses a
# LOCSVC_*/PROXY_SHIM_* variable it does not know, such as the test
# databases' LOCSVC_TEST_* that scripts/test exports.
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(LOCSVC|PROXY_SHIM)_' || true)
started=$SECONDS
step() { echo "== check-install: $* ($((SECONDS - started)) s)"; }

# Tools: systemd-analyze, a container engine, sipp (the smoke test's
# phone), python3 (free ports, the notify socket), strip (smaller images).
need=()
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v sipp >/dev/null || need+=(sip-tester)
command -v python3 >/dev/null || need+=(python3)
command -v strip >/dev/null || need+=(binutils)
if ! timeout 20 docker info >/dev/null 2>&1; then
  { command -v dockerd >/dev/null && command -v docker >/dev/null; } || need+=(docker.io)
fi
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 900 apt-get install -y --no-install-recommends "${need[@]}" >&2 \
    || { timeout 300 apt-get update >&2 \
      && timeout 900 apt-get install -y --no-install-recommends "${need[@]}" >&2; }
fi

work=$(mktemp -d)
dockerd_pid=""
cleanup() {
  local rc=$?
  docker rmi -f "locsvc:$TAG" "proxy-shim:$TAG" >/dev/null 2>&1 || true
  if [ -n "$dockerd_pid" ]; then
    kill -TERM "$dockerd_pid" 2>/dev/null || true
    # Bounded: dockerd stops its containerd and exits within seconds.
    for _ in $(seq 1 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$dockerd_pid" 2>/dev/null && kill -KILL "$dockerd_pid" 2>/dev/null
  fi
  rm -rf "$work"
  [ "$rc" = 0 ] || echo "== check-install: FAILED after $((SECONDS - started)) s" >&2
}
trap cleanup EXIT

missing=()
for b in locsvc proxy-shim; do [ -x "$BIN_DIR/$b" ] || missing+=(-p "$b"); done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$BIN_DIR" = "target/$PROFILE" ] || { echo "check-install: no binaries in $BIN_DIR" >&2; exit 1; }
  step "building ${missing[*]} ($PROFILE)"
  cargo build --locked "${cargo_profile[@]}" "${missing[@]}"
fi

step "systemd units"
# A scratch root: the units and the binaries at their install paths, and
# the host's own units (for the targets ours name).
root="$work/root"
mkdir -p "$root/etc/systemd/system" "$root/usr/local/bin" "$root/usr/lib/systemd"
for d in /usr/lib/systemd/system /lib/systemd/system; do
  [ -d "$d" ] && { cp -a "$d" "$root/usr/lib/systemd/"; break; }
done
cp deploy/systemd/locsvc.service deploy/systemd/proxy-shim.service "$root/etc/systemd/system/"
# ExecReload runs /bin/kill: verify wants it there too.
mkdir -p "$root/bin" && cp "$(type -P kill)" "$root/bin/kill"
# Not a symlink: systemd resolves links inside --root. A hard link costs
# nothing when the build is on the same file system.
for b in locsvc proxy-shim; do
  ln "$BIN_DIR/$b" "$root/usr/local/bin/$b" 2>/dev/null || cp "$BIN_DIR/$b" "$root/usr/local/bin/$b"
done
units=("$root/etc/systemd/system/locsvc.service" "$root/etc/systemd/system/proxy-shim.service")
# verify warns (exit 0) about unknown keys and bad values: any output fails.
out=$(timeout 120 systemd-analyze verify --root="$root" "${units[@]}" 2>&1) \
  || { echo "$out" >&2; exit 1; }
[ -z "$out" ] || { echo "$out" >&2; echo "check-install: systemd-analyze verify complained" >&2; exit 1; }
echo "systemd-analyze verify: both units clean"
for u in "${units[@]}"; do
  timeout 60 systemd-analyze security --offline=true --root="$root" --threshold=20 "$u" \
    | grep 'Overall exposure' \
    || { echo "check-install: $(basename "$u") exposure above 2.0 (or no report)" >&2; exit 1; }
done

step "example configuration"
diff -u deploy/config/locsvc.toml <("$BIN_DIR/locsvc" config defaults) \
  || { echo "check-install: deploy/config/locsvc.toml is not \`locsvc config defaults\` (regenerate it)" >&2; exit 1; }
diff -u deploy/config/proxy-shim.toml <("$BIN_DIR/proxy-shim" config defaults) \
  || { echo "check-install: deploy/config/proxy-shim.toml is not \`proxy-shim config defaults\` (regenerate it)" >&2; exit 1; }
echo "deploy/config/*.toml equal \`config defaults\`"

step "readiness notification"
# systemd's side of Type=notify: a datagram socket in $NOTIFY_SOCKET. The
# STATUS line names the bound address, which must accept a connection.
# With HUP_DATA (locsvc's data dir), also `systemctl reload` (ExecReload:
# SIGHUP): locdb is edited and must be re-read at once; run it with an
# hour's poll so only the signal can show the edit.
notify_check() {
  python3 - "$work/notify-$1" "$@" <<'EOF'
import json, os, re, signal, socket, sqlite3, subprocess, sys, time
path, name, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
sock.settimeout(60)
log = open(path + ".log", "w")
proc = subprocess.Popen(argv, env=dict(os.environ, NOTIFY_SOCKET=path), stdout=log, stderr=log)
def fail(why):
    proc.kill()
    proc.wait()
    sys.stderr.write(open(path + ".log").read())
    sys.exit(f"{name}: {why}")
try:
    ready = sock.recv(4096).decode()
except socket.timeout:
    fail("no READY=1 within 60 s")
if "READY=1" not in ready.split("\n"):
    fail(f"first notification is not READY=1: {ready!r}")
m = re.search(r"on (\S+):(\d+)", ready)
if not m:
    fail(f"no address in {ready!r}")
socket.create_connection((m.group(1), int(m.group(2))), timeout=5).close()
def status(server):
    out = subprocess.run([argv[0], "groups", "list", "--json", "--server", server],
                         capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        fail(f"groups list: {out.stderr}")
    return {(m["group"], m["no"]): m["status"] for m in json.loads(out.stdout)["members"]}
data = os.environ.get("HUP_DATA")
if data:
    server = f"http://{m.group(1)}:{m.group(2)}"
    if status(server).get((1, 2)) != "on":
        fail(f"member 1/2 not on at start: {status(server)}")
    db = sqlite3.connect(os.path.join(data, "master.db"))
    db.execute("UPDATE locdb SET status = 2 WHERE id = 1 AND no = 2")
    db.commit()
    db.close()
    proc.send_signal(signal.SIGHUP)
    end = time.monotonic() + 10
    while status(server).get((1, 2)) != "maintenance":
        if proc.poll() is not None:
            fail(f"ended by SIGHUP (exit {proc.returncode})")
        if time.monotonic() > end:
            fail("locdb edit not seen 10 s after SIGHUP")
        time.sleep(0.1)
    print(f"{name}: SIGHUP re-read locdb at once (member 1/2 in maintenance)")
proc.send_signal(signal.SIGTERM)
try:
    stopping = sock.recv(4096).decode()
except socket.timeout:
    fail("no STOPPING=1 within 60 s of SIGTERM")
if "STOPPING=1" not in stopping.split("\n"):
    fail(f"notification after SIGTERM is not STOPPING=1: {stopping!r}")
try:
    code = proc.wait(timeout=60)
except subprocess.TimeoutExpired:
    fail("still running 60 s after SIGTERM")
if code != 0:
    fail(f"exited {code} after SIGTERM")
print(f"{name}: {ready.splitlines()!r}, then {stopping.splitlines()!r}, exit 0")
EOF
}
HUP_DATA="$work/data" LOCSVC_CLUSTER__POLL_INTERVAL_MS=3600000 \
  notify_check locsvc "$BIN_DIR/locsvc" serve --data-dir "$work/data" \
  --listen 127.0.0.1:0 --metrics-listen off
# The shim connects to locsvc lazily: none needs to run.
notify_check proxy-shim "$BIN_DIR/proxy-shim" --listen 127.0.0.1:0 --metrics-listen off \
  --domain example.com --locsvc http://127.0.0.1:9

step "container engine"
if ! timeout 20 docker info >/dev/null 2>&1; then
  dockerd >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for i in $(seq 1 60); do
    timeout 10 docker info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { cat "$work/dockerd.log" >&2; exit 1; }
    [ "$i" -lt 60 ] || { tail -20 "$work/dockerd.log" >&2; echo "check-install: dockerd not up in 30 s" >&2; exit 1; }
    sleep 0.5
  done
  echo "started dockerd (pid $dockerd_pid)"
fi

step "container images"
BIN_DIR="$BIN_DIR" TAG="$TAG" timeout 300 deploy/container/build.sh
for n in locsvc proxy-shim; do
  user=$(docker image inspect --format '{{.Config.User}}' "$n:$TAG")
  [[ "$user" =~ ^[1-9][0-9]*(:[0-9]+)?$ ]] \
    || { echo "check-install: $n image runs as '$user', not a numeric non-root user" >&2; exit 1; }
  cid=$(docker create "$n:$TAG")
  files=$(docker export "$cid" | tar -t)
  docker rm -v "$cid" >/dev/null
  if grep -qE '^(usr/)?s?bin/(sh|bash|busybox)$' <<<"$files"; then
    echo "check-install: $n image has a shell" >&2
    exit 1
  fi
  echo "$n:$TAG: user $user, no shell, $(docker image inspect --format '{{.Size}}' "$n:$TAG" \
    | awk '{printf "%.1f MB", $1 / 1e6}')"
done

step "container smoke test"
BIN_DIR="$BIN_DIR" TAG="$TAG" timeout 240 deploy/container/smoke.sh

step "done"
