#!/usr/bin/env bash
# Stop the local control plane started by hack/cluster-up.sh.
#   --keep-data   keep etcd's data (the default removes it, so the next start is clean)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${TESSERA_CLUSTER_DIR:-$ROOT/.local-cluster}"
keep=0; [[ "${1:-}" == "--keep-data" ]] && keep=1
[[ -d "$DIR/pids" ]] || { echo "[cluster-down] nothing running in $DIR" >&2; exit 0; }
# reverse start order: the consumers first, etcd last
# shellcheck source=hack/pidfile.sh
source "$ROOT/hack/pidfile.sh"
for name in operator kueue kube-scheduler kwok kube-controller-manager kube-apiserver etcd; do
  stop_pid "$DIR/pids/$name"
done
if [[ $keep == 0 ]]; then rm -rf "$DIR/etcd"; fi
echo "[cluster-down] stopped the cluster in $DIR" >&2
