#!/usr/bin/env bash
# Build the operator's OCI image without a Docker engine (`make image`).
#
#   layer 1  a minimal Debian root filesystem (debootstrap --variant=minbase) with Python 3.11
#            and the unprivileged user 65532; cached under $TESSERA_IMAGE_CACHE
#   layer 2  /opt/tessera: a venv holding the dependencies pinned in operator/requirements.txt
#            (wheels only, --no-deps) and tessera itself, built like operator/Dockerfile does
#
# The layers, the image config, the manifest and the index are written by hack/oci_image.py
# as an OCI image layout (build/image/tessera-operator by default; tag = the project version),
# deterministically: sorted entries, numeric owners, mtimes clamped to SOURCE_DATE_EPOCH
# (default: the last commit that changed the image's inputs), gzip without a timestamp.
# Given the same cached base, building twice gives the same image digest.  Push it with skopeo:
#   skopeo copy oci:build/image/tessera-operator:0.1.0 docker://REGISTRY/tessera-operator:0.1.0
#
# Needs root (debootstrap and chroot); installs debootstrap and umoci from Debian when they
# are missing.  The venv is built inside the cached base, which is mounted read-only in a
# private mount namespace, so nothing but /opt/tessera can change.
#
# Environment:
#   TESSERA_IMAGE_CACHE    cache folder (default ~/.cache/tessera/image)
#   TESSERA_IMAGE_OUT      OCI layout folder (default build/image/tessera-operator)
#   TESSERA_DEBIAN_MIRROR  Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   TESSERA_DEBIAN_SECURITY_MIRROR  for the security updates (default .../debian-security)
#   SOURCE_DATE_EPOCH      latest mtime in the image (default: time of the last commit that
#                          changed src/, pyproject.toml, README.md, the pins or these scripts)
# Options: --base-only (only build/reuse the cached base), --rebuild-base,
#          --tools-only (only install the Debian tools: debootstrap, umoci)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE=bookworm
MIRROR="${TESSERA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${TESSERA_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# the packages of the base beyond minbase: the interpreter, /etc/services & co for sockets
BASE_PACKAGES=(python3.11 netbase)
PIP_VERSION=26.3        # the pip that installs the wheels; it is not left in the image
UID_GID=65532
CACHE="${TESSERA_IMAGE_CACHE:-$HOME/.cache/tessera/image}"
OUT="${TESSERA_IMAGE_OUT:-$ROOT/build/image/tessera-operator}"
PYTHON="${PYTHON:-python3}"
log() { printf '[build-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

base_only=0 rebuild_base=0 tools_only=0
for arg in "$@"; do
  case "$arg" in
    --base-only) base_only=1 ;;
    --rebuild-base) rebuild_base=1 ;;
    --tools-only) tools_only=1 ;;
    *) die "unknown option $arg (--base-only, --rebuild-base, --tools-only)" ;;
  esac
done

[[ "$(id -u)" == 0 ]] || die "run as root: debootstrap and chroot need it (CI runs as root)"
missing_pkgs=()
command -v debootstrap >/dev/null 2>&1 || missing_pkgs+=(debootstrap)
command -v umoci >/dev/null 2>&1 || missing_pkgs+=(umoci)   # unpacks the image in tests/run-image.sh
command -v unshare >/dev/null 2>&1 || missing_pkgs+=(util-linux)
if (( ${#missing_pkgs[@]} )); then
  log "installing ${missing_pkgs[*]} from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
fi
(( tools_only )) && exit 0
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "$PYTHON is not Python 3.11: the wheels are chosen for the image's Python 3.11"

# the time of the last commit that changed what goes into /opt/tessera, so commits to docs
# or tests leave the layer (and its cache entry) as it is
INPUTS=(src pyproject.toml README.md operator/requirements.txt operator/requirements-build.txt
        hack/build-image.sh hack/oci_image.py)
if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
  SOURCE_DATE_EPOCH="$(git -C "$ROOT" log -1 --format=%ct -- "${INPUTS[@]}" 2>/dev/null || true)"
fi
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-0}"
mkdir -p "$CACHE" "$(dirname "$OUT")"

# --- layer 1: the base root filesystem (cached) --------------------------------------
# Its key names everything that goes into it; the script's base steps changing means a
# new key too (BASE_REVISION).
BASE_REVISION=2
base_key="$(printf '%s\n' "$SUITE" "$MIRROR" "$SECURITY_MIRROR" "${BASE_PACKAGES[*]}" "$UID_GID" "$BASE_REVISION" | sha256sum | cut -c1-12)"
BASE="$CACHE/base-$SUITE-$base_key"

build_base() {
  local tmp="$BASE.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp"
  log "debootstrap $SUITE (minbase + ${BASE_PACKAGES[*]}) from $MIRROR; about 2 minutes, once"
  local include; include="$(IFS=,; echo "${BASE_PACKAGES[*]}")"
  debootstrap --variant=minbase --include="$include" "$SUITE" "$tmp/rootfs" "$MIRROR" \
    >"$tmp/debootstrap.log" 2>&1 || { tail -n 30 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }
  local r="$tmp/rootfs"
  # debootstrap installs the release's packages; bring in bookworm-updates and the
  # security updates too (a private mount namespace gives apt its /proc)
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
    "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SECURITY_MIRROR" "$SUITE" > "$r/etc/apt/sources.list"
  unshare --mount --propagation private bash -euc 'mount -t proc proc "$1/proc"
    chroot "$1" env DEBIAN_FRONTEND=noninteractive sh -c "apt-get update -qq && apt-get -y -qq upgrade"' \
    upgrade "$r" >>"$tmp/debootstrap.log" 2>&1 || { tail -n 30 "$tmp/debootstrap.log" >&2; die "apt-get upgrade failed"; }
  # the operator's user: fixed numeric ids, so runAsNonRoot can check them without lookups
  chroot "$r" groupadd --system --gid "$UID_GID" tessera
  chroot "$r" useradd --system --no-log-init --uid "$UID_GID" --gid "$UID_GID" --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin tessera
  chroot "$r" dpkg-query -W -f '${Package}=${Version}\n' | LC_ALL=C sort > "$tmp/packages.txt"
  # what only the build needed, and what differs between two bootstraps (logs, caches)
  chroot "$r" apt-get clean
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
    "$r"/var/cache/ldconfig/aux-cache "$r"/var/log/* "$r"/usr/share/doc/* "$r"/usr/share/man/* \
    "$r"/usr/share/info/* "$r"/tmp/* "$r"/var/tmp/* "$r"/root/.bash_history
  : > "$r/etc/machine-id"
  # the build host's name and resolver are not the image's (a runtime mounts its own)
  : > "$r/etc/hostname"; rm -f "$r/etc/resolv.conf"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$r/etc/hosts"
  mkdir -p "$r/opt/tessera"        # the mount point of layer 2 while it is built
  # device nodes and mounted filesystems are the runtime's, not the image's
  find "$r/dev" -mindepth 1 -delete
  "$PYTHON" "$ROOT/hack/oci_image.py" layer "$r" "$tmp/layer" --exclude opt/tessera >/dev/null
  rm -rf "$BASE"; mv "$tmp" "$BASE"
}
if [[ $rebuild_base == 1 || ! -f "$BASE/layer.json" ]]; then
  build_base
else
  log "base $SUITE: cached ($BASE)"
fi
(( base_only )) && { echo "$BASE"; exit 0; }

# --- layer 2: /opt/tessera ------------------------------------------------------------
WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS"
download() {
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$WHEELS" -r "$ROOT/operator/requirements.txt" -r "$ROOT/operator/requirements-build.txt" \
    "pip==$PIP_VERSION" "$@"
}
# every pin already in the cache: no index is asked
if download --no-index --find-links "$WHEELS" >/dev/null 2>&1; then
  log "wheels: cached ($WHEELS)"
else
  log "wheels: downloading the pinned dependencies, build backend and pip into $WHEELS"
  download
fi

# The layer is cached under a key of everything it is made from (the base, the pins, the
# source, this script, the OCI writer, the epoch): an unchanged tree is not rebuilt.
# TESSERA_IMAGE_NO_CACHE=1 rebuilds it anyway (the reproducibility test compares both).
app_key="$(
  cd "$ROOT"
  {
    cat "$BASE/layer.json" operator/requirements.txt operator/requirements-build.txt \
      hack/build-image.sh hack/oci_image.py pyproject.toml README.md
    echo "$PIP_VERSION $SOURCE_DATE_EPOCH"
    find src -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)"
APP="$CACHE/app-$app_key"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tessera-image.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
build_app() {
  local started=$SECONDS
  mkdir -p "$WORK/opt-tessera" "$WORK/src" "$WORK/mnt"
  cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$WORK/src/"
  cp -r "$ROOT/src" "$WORK/src/src"
  find "$WORK/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  cp "$ROOT/operator/requirements.txt" "$ROOT/operator/requirements-build.txt" "$WORK/"

  # inside a private mount namespace: the base read-only, /opt/tessera and /tmp writable,
  # the wheels and the source read-only; no network is needed (--no-index)
  log "building the venv in /opt/tessera"
  unshare --mount --propagation private bash -euo pipefail -c '
    base="$1" work="$2" wheels="$3"
    m="$work/mnt"
    mount --bind "$base/rootfs" "$m"; mount -o remount,bind,ro "$m"
    mount --bind "$work/opt-tessera" "$m/opt/tessera"
    mount -t tmpfs -o size=512m tmpfs "$m/tmp"
    mount -t proc proc "$m/proc"
    mount --bind /dev "$m/dev"
    mkdir "$m/tmp/wheels" "$m/tmp/src"
    mount --bind -o ro "$wheels" "$m/tmp/wheels"
    mount --bind "$work/src" "$m/tmp/src"
    cp "$work/requirements.txt" "$work/requirements-build.txt" "$m/tmp/"
    pipwhl="$(cd "$wheels" && ls pip-"$4"-*.whl)"
    run() { chroot "$m" env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
          PIP_ROOT_USER_ACTION=ignore "$@"; }
    pip() { run /opt/tessera/bin/python "/tmp/wheels/$pipwhl/pip" --disable-pip-version-check \
              --no-cache-dir --no-input "$@"; }
    run /usr/bin/python3.11 -m venv --without-pip /opt/tessera
    pip install --quiet --no-index --find-links /tmp/wheels --no-deps --only-binary=:all: --no-compile \
      -r /tmp/requirements.txt -r /tmp/requirements-build.txt
    pip install --quiet --no-index --no-deps --no-build-isolation --no-compile /tmp/src
    pip uninstall --quiet --yes setuptools wheel
    # bytecode compiled now, with hashes instead of mtimes (valid whatever the clamped
    # mtimes, and identical between builds): the root filesystem is read-only at run time
    run /opt/tessera/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/tessera/lib
    run /opt/tessera/bin/python -c "import tessera.cli, kopf, ortools, prometheus_client"
    run /opt/tessera/bin/tessera --help >/dev/null
  ' build "$BASE" "$WORK" "$WHEELS" "$PIP_VERSION"
  log "venv built in $((SECONDS - started)) s"; started=$SECONDS
  mkdir -p "$WORK/app"
  "$PYTHON" "$ROOT/hack/oci_image.py" layer "$WORK/opt-tessera" "$WORK/app/layer" --prefix opt/tessera >/dev/null
  log "layer written in $((SECONDS - started)) s"
}
if [[ -f "$APP/layer.json" && "${TESSERA_IMAGE_NO_CACHE:-}" != 1 ]]; then
  log "/opt/tessera: cached ($APP)"
elif [[ "${TESSERA_IMAGE_NO_CACHE:-}" == 1 ]]; then
  build_app; APP="$WORK/app"
else
  build_app
  rm -rf "$APP"; mv "$WORK/app" "$APP"
  # keep the layers of the three newest trees
  ls -dt "$CACHE"/app-* 2>/dev/null | tail -n +4 | xargs -r rm -rf
fi

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)"
"$PYTHON" "$ROOT/hack/oci_image.py" assemble "$OUT" --tag "$VERSION" \
  --layer "$BASE/layer" --layer "$APP/layer" \
  --user "$UID_GID:$UID_GID" \
  --env PATH=/opt/tessera/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1 --env LANG=C.UTF-8 \
  --entrypoint tessera \
  --cmd=operator --cmd=--all-namespaces --cmd=--liveness=http://0.0.0.0:8080/healthz --cmd=--metrics-port=9090 \
  --port 8080/tcp --port 9090/tcp \
  --label "org.opencontainers.image.title=tessera-operator" \
  --label "org.opencontainers.image.version=$VERSION" \
  --label "org.opencontainers.image.revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
  --label "org.opencontainers.image.base.name=debian:$SUITE (debootstrap minbase)" \
  --history "debootstrap --variant=minbase --include=$(IFS=,; echo "${BASE_PACKAGES[*]}") $SUITE; user $UID_GID" \
  --history "python3.11 -m venv /opt/tessera; pip install --no-deps operator/requirements.txt + tessera" \
  > "$OUT.digest"
# beside the layout (not in it): the Debian packages of the base, for audits
cp "$BASE/packages.txt" "$OUT.debian-packages.txt"
log "image $OUT:$VERSION, manifest $(cat "$OUT.digest")"
echo "$OUT"
