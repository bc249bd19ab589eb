#!/usr/bin/env bash
# Build (or reuse) the pinned binaries of the local control plane:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, kwokctl, helm,
#   and the Kueue controller (with its CRDs, for hack/kueue-up.sh).
# They are built from source through the Go module proxy (no prebuilt downloads are
# reachable on our machines) and cached per version under $TESSERA_TOOLS_CACHE
# (default ~/.cache/tessera/tools), outside the work tree, so a fresh clone on the same
# machine reuses them.  They are then linked into .local-cluster/bin/.
# Idempotent: a binary already in the cache is never rebuilt.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TESSERA_TOOLS_CACHE:-$HOME/.cache/tessera/tools}"
BIN="$ROOT/.local-cluster/bin"
mkdir -p "$CACHE" "$BIN"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED=0

log() { printf '[build-tools] %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
  log "error: 'go' is not on PATH; install Go 1.24+ to build the local control plane binaries"
  exit 1
fi

# link NAME CACHED_PATH: expose a cached binary in .local-cluster/bin
link() { ln -sf "$2" "$BIN/$1"; }

# --- Kubernetes: the control plane binaries and kubectl from k8s.io/kubernetes ---------
# Each binary is cached on its own: a cache built before a command joined the list only
# builds the new one (the others are reused as they are).
build_kube() {
  local out="$CACHE/kubernetes-$KUBE_VERSION"
  local cmds=(kube-apiserver kubectl kube-controller-manager kube-scheduler) missing=() c
  for c in "${cmds[@]}"; do [[ -x "$out/$c" ]] || missing+=("$c"); done
  if [[ ${#missing[@]} == 0 ]]; then
    log "kubernetes $KUBE_VERSION: cached"
  else
    log "kubernetes $KUBE_VERSION: building ${missing[*]} (several minutes each on 2 cores)"
    local mod; mod="$(mktemp -d)"
    local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
    local staging="v0.${KUBE_VERSION#v1.}"
    mkdir -p "$out"
    (
      cd "$mod"
      go mod init tessera.local/kubetools >/dev/null 2>&1
      # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
      # local paths; a consumer module must replace each with the matching v0.X.Y tag.
      local gomod
      gomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
      {
        echo "require k8s.io/kubernetes $KUBE_VERSION"
        grep -E '^\s*k8s\.io/[A-Za-z0-9._-]+ => \./staging/' "$gomod" \
          | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
      } >> go.mod
      {
        echo '//go:build tools'; echo; echo 'package tools'; echo; echo 'import ('
        for c in "${cmds[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
        echo ')'
      } > tools.go
      go mod tidy >/dev/null 2>&1 || go mod tidy
      local date; date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
      local ld=""
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date -X $pkg.gitCommit=tessera-$KUBE_VERSION"
      done
      for c in "${missing[@]}"; do
        go build -trimpath -ldflags "-s -w $ld" -o "$out/$c.tmp" "k8s.io/kubernetes/cmd/$c"
        mv "$out/$c.tmp" "$out/$c"
      done
    )
    rm -rf "$mod"
  fi
  for c in "${cmds[@]}"; do link "$c" "$out/$c"; done
}

# build_module NAME VERSION_DIR MODULE@VERSION PACKAGE...: build main packages through a
# throwaway wrapper module (go install cannot build modules whose go.mod has replaces).
build_module() {
  local name="$1" out="$2" modver="$3"; shift 3
  local want=() pkg
  for pkg in "$@"; do want+=("$out/$(basename "$pkg")"); done
  local missing=0 f
  for f in "${want[@]}"; do [[ -x "$f" ]] || missing=1; done
  if [[ $missing == 0 ]]; then
    log "$name: cached"
  else
    log "$name: building $modver"
    local mod; mod="$(mktemp -d)"
    (
      cd "$mod"
      go mod init "tessera.local/$name" >/dev/null 2>&1
      echo "require ${modver%@*} ${modver#*@}" >> go.mod
      {
        echo '//go:build tools'; echo; echo 'package tools'; echo; echo 'import ('
        for pkg in "$@"; do echo "	_ \"$pkg\""; done
        echo ')'
      } > tools.go
      go mod tidy >/dev/null 2>&1 || go mod tidy
      mkdir -p "$out.tmp"
      for pkg in "$@"; do
        go build -trimpath -ldflags "-s -w ${EXTRA_LDFLAGS:-}" -o "$out.tmp/$(basename "$pkg")" "$pkg"
      done
    )
    rm -rf "$mod" "$out"
    mv "$out.tmp" "$out"
  fi
  for pkg in "$@"; do link "$(basename "$pkg")" "$out/$(basename "$pkg")"; done
}

build_etcd() {
  build_module etcd "$CACHE/etcd-$ETCD_VERSION" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
    go.etcd.io/etcd/server/v3
  # the package basename is "v3"; give it its real name
  if [[ -x "$CACHE/etcd-$ETCD_VERSION/v3" ]]; then
    ln -sf "$CACHE/etcd-$ETCD_VERSION/v3" "$BIN/etcd"; rm -f "$BIN/v3"
  fi
}

build_kwok() {
  EXTRA_LDFLAGS="-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$KUBE_VERSION" \
  build_module kwok "$CACHE/kwok-$KWOK_VERSION" "sigs.k8s.io/kwok@$KWOK_VERSION" \
    sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
}

# helm's default Kubernetes version (used by `helm template` and `helm lint` without
# --kube-version, and checked against a chart's kubeVersion) comes from ldflags; without
# them it is v1.20.0 and our chart (kubeVersion >= 1.27) refuses to render.  Stamp the
# pinned Kubernetes minor, like helm's own release Makefile does from its client-go.  The
# cache folder names the stamp, so an older unstamped helm in the cache is never reused.
build_helm() {
  local major="${KUBE_VERSION#v}"; major="${major%%.*}"
  local minor="${KUBE_VERSION#v*.}"; minor="${minor%%.*}"
  local ld="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" pkg
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ld+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
  done
  EXTRA_LDFLAGS="$ld" \
  build_module helm "$CACHE/helm-$HELM_VERSION-k8s$major.$minor" "helm.sh/helm/v3@$HELM_VERSION" \
    helm.sh/helm/v3/cmd/helm
}

# Kueue's controller manager (sigs.k8s.io/kueue, cmd/kueue) and its CRDs, copied from the
# module (config/components/crd/bases) next to the binary: hack/kueue-up.sh applies them.
build_kueue() {
  local out="$CACHE/kueue-$KUEUE_VERSION"
  build_module kueue "$out" "sigs.k8s.io/kueue@$KUEUE_VERSION" sigs.k8s.io/kueue/cmd/kueue
  if [[ ! -f "$out/crds/.complete" ]]; then
    local dir; dir="$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    rm -rf "$out/crds" && mkdir -p "$out/crds"
    cp "$dir"/config/components/crd/bases/*.yaml "$out/crds/" && chmod -R u+w "$out/crds"
    touch "$out/crds/.complete"
  fi
  ln -sfn "$out/crds" "$ROOT/.local-cluster/kueue-crds"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(etcd kube kwok helm kueue)
for t in "${targets[@]}"; do
  case "$t" in
    etcd) build_etcd ;;
    kube) build_kube ;;
    kwok) build_kwok ;;
    helm) build_helm ;;
    kueue) build_kueue ;;
    *) log "unknown target $t (etcd, kube, kwok, helm, kueue)"; exit 2 ;;
  esac
done
log "binaries in $BIN"
