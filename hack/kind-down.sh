#!/usr/bin/env bash
# Delete the kind cluster made by hack/kind-up.sh (and its kubeconfig).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIND_CLUSTER_NAME:-tessera}"
export PATH="$ROOT/.local-cluster/bin:$PATH"
kind delete cluster --name "$CLUSTER"
rm -f "$ROOT/.local-cluster/kind-$CLUSTER.kubeconfig"
