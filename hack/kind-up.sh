#!/usr/bin/env bash
# The kind path, for users with a Docker engine (docs/kind.md):
#   1. create a kind cluster (hack/kind-config.yaml)
#   2. build the operator image (operator/Dockerfile) and load it into the kind node
#   3. install kwok inside the cluster and add the fake GPU/NPU nodes from examples/nodes/
#      (the same fixtures the local control plane uses)
#   4. install the chart (helm/tessera, CRDs included) with hack/kind-values.yaml
#   5. apply the examples and wait until Tessera has placed them
#
#   bash hack/kind-up.sh               everything above (idempotent: reuses the cluster)
#   bash hack/kind-up.sh --tools-only  only build kind into the tools cache and link it
#
# Environment: KIND_CLUSTER_NAME (default tessera), KIND_VERSION, KWOK_VERSION,
# TESSERA_IMAGE (default tessera-operator:kind), KIND_NODE_IMAGE (kindest/node:...; empty:
# kind's default for its version), TESSERA_NAMESPACE (default tessera-system).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIND_CLUSTER_NAME:-tessera}"
KIND_VERSION="${KIND_VERSION:-v0.30.0}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
IMAGE="${TESSERA_IMAGE:-tessera-operator:kind}"
NAMESPACE="${TESSERA_NAMESPACE:-tessera-system}"
CACHE="${TESSERA_TOOLS_CACHE:-$HOME/.cache/tessera/tools}"
BIN="$ROOT/.local-cluster/bin"
log() { printf '[kind-up] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# kind is built like the other tools: from the Go module proxy, cached per version
ensure_kind() {
  local out="$CACHE/kind-$KIND_VERSION"
  if [[ ! -x "$out/kind" ]]; then
    command -v go >/dev/null || die "'go' is needed to build kind (or put kind $KIND_VERSION on PATH)"
    log "building kind $KIND_VERSION"
    mkdir -p "$out"
    GOBIN="$out" GOFLAGS=-buildvcs=false CGO_ENABLED=0 go install "sigs.k8s.io/kind@$KIND_VERSION"
  fi
  mkdir -p "$BIN"
  ln -sf "$out/kind" "$BIN/kind"
}

ensure_kind
[[ "${1:-}" == "--tools-only" ]] && { log "kind linked in $BIN"; exit 0; }

export PATH="$BIN:$PATH"
for tool in docker kubectl helm; do
  command -v "$tool" >/dev/null || die "$tool not found (kubectl and helm: 'make tools'; docker: install a Docker engine)"
done
docker info >/dev/null 2>&1 || die "the Docker engine does not answer ('docker info' failed)"

# --- 1. cluster ------------------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "reusing kind cluster $CLUSTER"
else
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config "$ROOT/hack/kind-config.yaml" \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s
fi
KUBECONFIG_PATH="$ROOT/.local-cluster/kind-$CLUSTER.kubeconfig"
kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG_PATH"
chmod 600 "$KUBECONFIG_PATH"
export KUBECONFIG="$KUBECONFIG_PATH"

# --- 2. image --------------------------------------------------------------------------
log "building $IMAGE from operator/Dockerfile"
docker build --file "$ROOT/operator/Dockerfile" --tag "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"

# --- 3. kwok and the fake accelerator nodes --------------------------------------------
log "installing kwok $KWOK_VERSION in the cluster"
KWOK_RELEASE="https://github.com/kubernetes-sigs/kwok/releases/download/$KWOK_VERSION"
kubectl apply -f "$KWOK_RELEASE/kwok.yaml"
# without Stage objects kwok does nothing: stage-fast makes nodes Ready and bound pods Running
kubectl apply -f "$KWOK_RELEASE/stage-fast.yaml"
kubectl -n kube-system rollout status deployment/kwok-controller --timeout=180s
log "adding fake GPU/NPU nodes from examples/nodes/"
kubectl apply -f "$ROOT/examples/nodes/"
kubectl wait --for=condition=Ready node -l type=kwok --timeout=120s

# --- 4. the chart ----------------------------------------------------------------------
log "installing the chart into $NAMESPACE"
# Helm installs crds/ only on first install; apply them so a re-run also upgrades them
kubectl apply --server-side --force-conflicts -f "$ROOT/helm/tessera/crds/"
repo="${IMAGE%:*}"; tag="${IMAGE##*:}"
helm upgrade --install tessera "$ROOT/helm/tessera" --namespace "$NAMESPACE" --create-namespace \
  --values "$ROOT/hack/kind-values.yaml" --set image.repository="$repo" --set image.tag="$tag" \
  --wait --timeout 5m

# --- 5. the examples -------------------------------------------------------------------
shopt -s nullglob
examples=("$ROOT"/examples/*.yaml)
if [[ ${#examples[@]} == 0 ]]; then
  log "no examples in examples/*.yaml yet; the cluster is ready"
else
  log "applying ${#examples[@]} example(s)"
  for f in "${examples[@]}"; do kubectl apply -f "$f"; done
  log "waiting for Tessera to bind the examples' pods"
  tessera_pods() { kubectl get pods -A --field-selector "spec.schedulerName=tessera$1" -o name | wc -l; }
  deadline=$((SECONDS + 180))
  until (( $(tessera_pods "") > 0 && $(tessera_pods ",spec.nodeName=") == 0 )); do
    if (( SECONDS > deadline )); then
      kubectl get elasticjobs,inferenceservices,pods -A -o wide >&2
      die "the examples' pods were not all bound within 180s"
    fi
    sleep 2
  done
  kubectl get elasticjobs,inferenceservices -A
  kubectl get pods -A --field-selector spec.schedulerName=tessera -o wide
fi
log "done: export KUBECONFIG=$KUBECONFIG_PATH"
