#!/usr/bin/env bash
# Builds the container images of locsvc and proxy-shim FROM scratch: for
# each binary, a build context holding the binary, the shared libraries
# `ldd` names (glibc's loader, libc, libm, libgcc_s) at their paths, the
# image's settings file and a writable /tmp; then `docker build`.
#
#   deploy/container/build.sh [locsvc] [proxy-shim]     (default: both)
#
# Environment:
#   BIN_DIR  where the built binaries are (default target/release, built
#            with `cargo build --release` when missing there)
#   TAG      image tag (default latest): images locsvc:TAG, proxy-shim:TAG
#   DOCKER   the container CLI (default docker; podman works too)
#   STRIP    1 (default) drops debug info from the image's copy (function
#            names stay for backtraces); 0 keeps the binary as built
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN_DIR=${BIN_DIR:-}
TAG=${TAG:-latest}
DOCKER=${DOCKER:-docker}
STRIP=${STRIP:-1}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(locsvc proxy-shim)
for n in "${names[@]}"; do
  case "$n" in
    locsvc | proxy-shim) ;;
    *) echo "build.sh: unknown image $n (locsvc or proxy-shim)" >&2; exit 2 ;;
  esac
done

if [ -z "$BIN_DIR" ]; then
  BIN_DIR=target/release
  missing=()
  for n in "${names[@]}"; do [ -x "$BIN_DIR/$n" ] || missing+=(-p "$n"); done
  if [ ${#missing[@]} -gt 0 ]; then
    cargo build --release --locked "${missing[@]}" >&2
  fi
fi

# BuildKit needs the buildx plugin with recent clients; without it the
# classic builder builds this Containerfile the same.
if [ -z "${DOCKER_BUILDKIT:-}" ] && [ "$DOCKER" = docker ] \
  && ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# Copies file $1 to the same path under directory $2, following symlinks
# (the loader finds libraries by path; no ld.so.cache in the image).
put() {
  mkdir -p "$2$(dirname "$1")"
  cp -L "$1" "$2$1"
}

for n in "${names[@]}"; do
  bin="$BIN_DIR/$n"
  [ -x "$bin" ] || { echo "build.sh: $bin not found (build it, or set BIN_DIR)" >&2; exit 1; }
  rm -rf "${ctx:?}"/*
  root="$ctx/rootfs"
  mkdir -p "$root/usr/local/bin" "$root/etc/locsvc" "$root/tmp" "$ctx/data"
  if [ "$STRIP" = 1 ] && command -v strip >/dev/null; then
    strip --strip-debug -o "$root/usr/local/bin/$n" "$bin"
  else
    cp "$bin" "$root/usr/local/bin/$n"
  fi
  # Every absolute path ldd prints: libraries and the loader (a static
  # binary has none; ldd then fails, which is fine).
  libs=$(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true)
  for lib in $libs; do put "$lib" "$root"; done
  # Host names: /etc/hosts first (container links and networks), then DNS.
  # glibc ≥ 2.34 has both lookups built in, no NSS module to load.
  echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
  cp "deploy/container/$n.toml" "$root/etc/locsvc/$n.toml"
  chmod -R go-w,a+rX "$root"
  # SQLite's temporary files go to /tmp.
  chmod 1777 "$root/tmp"
  cp "deploy/container/$n.Containerfile" "$ctx/Containerfile"
  echo "build.sh: $n:$TAG from $bin (libraries: ${libs//$'\n'/, })" >&2
  "$DOCKER" build --quiet --file "$ctx/Containerfile" --tag "$n:$TAG" \
    --label "org.opencontainers.image.title=$n" \
    --label "org.opencontainers.image.version=$("$bin" --version | awk '{print $2}')" \
    "$ctx" >/dev/null
  "$DOCKER" image inspect --format "{{.RepoTags}} {{.Size}} bytes" "$n:$TAG"
done
