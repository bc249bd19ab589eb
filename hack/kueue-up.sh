#!/usr/bin/env bash
# Start (or stop) the real Kueue controller (sigs.k8s.io/kueue, built by `make tools`) against
# a control plane from hack/cluster-up.sh.
#
#   bash hack/kueue-up.sh          apply Kueue's CRDs and start its controller manager (reused
#                                  when running); prints its health URL once /healthz answers
#   bash hack/kueue-up.sh --down   stop it (its CRDs and objects stay)
#
# A local-cluster setup, not Kueue's production install: the controller runs as a process
# with the admin kubeconfig, no leader election, and without its admission webhooks (the
# local API server cannot reach an in-cluster webhook Service); objects it would default
# through them must be complete (docs/kueue.md shows complete ones).  Its metrics server
# reads a certificate from a fixed path, /etc/kueue/metrics/certs, so a self-signed one is
# written there when none is (this is why the script wants to run as root).
#
# Environment (the same as hack/cluster-up.sh):
#   TESSERA_CLUSTER_DIR   the cluster's state folder (default: <repo>/.local-cluster); the pid
#                         goes to pids/kueue, the log to logs/kueue.log, so hack/cluster-down.sh
#                         stops it too
#   TESSERA_BIN_DIR       where kueue is (default: <repo>/.local-cluster/bin)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${TESSERA_CLUSTER_DIR:-$ROOT/.local-cluster}"
BIN="${TESSERA_BIN_DIR:-$ROOT/.local-cluster/bin}"
CRDS="$(readlink -f "$(cd "$BIN/.." && pwd)/kueue-crds" || true)"
KUBECONFIG_PATH="$DIR/kubeconfig"
PIDFILE="$DIR/pids/kueue"
LOG="$DIR/logs/kueue.log"
METRICS_CERTS=/etc/kueue/metrics/certs
log() { printf '[kueue-up] %s\n' "$*" >&2; }
kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# shellcheck source=hack/pidfile.sh
source "$ROOT/hack/pidfile.sh"
running() { pid_running "$PIDFILE"; }

if [[ "${1:-}" == "--down" ]]; then
  running && log "stopping"
  stop_pid "$PIDFILE"
  exit 0
fi

[[ -x "$BIN/kueue" && -d "$CRDS" ]] || { log "missing $BIN/kueue or $CRDS: run 'make tools' (hack/build-tools.sh)"; exit 1; }
[[ -f "$KUBECONFIG_PATH" ]] || { log "no cluster in $DIR (run hack/cluster-up.sh first)"; exit 1; }
mkdir -p "$DIR/pids" "$DIR/logs" "$DIR/kueue"

if running && [[ -f "$DIR/kueue/health.port" ]]; then
  port="$(cat "$DIR/kueue/health.port")"
  if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
    log "reusing the running Kueue (pid $(cat "$PIDFILE"))"
    echo "http://127.0.0.1:$port/healthz"
    exit 0
  fi
fi

kubectl apply --server-side --force-conflicts -f "$CRDS" >/dev/null
for crd in workloads clusterqueues localqueues resourceflavors; do
  # a CRD just created may have no status yet, which kubectl wait takes as an error
  for attempt in $(seq 60); do
    kubectl wait --for=condition=Established "crd/$crd.kueue.x-k8s.io" --timeout=30s >/dev/null 2>&1 && break
    (( attempt < 60 )) || { log "crd/$crd.kueue.x-k8s.io not Established"; exit 1; }
    sleep 0.5
  done
done
kubectl get namespace kueue-system >/dev/null 2>&1 || kubectl create namespace kueue-system >/dev/null

# the serving certificate of its webhook server (not registered with the API server) and,
# at the path Kueue reads it from, of its metrics server
certs="$DIR/kueue/certs"
if [[ ! -f "$certs/tls.crt" ]]; then
  mkdir -p "$certs"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kueue-local" \
    -keyout "$certs/tls.key" -out "$certs/tls.crt" 2>/dev/null
fi
if [[ ! -f "$METRICS_CERTS/tls.crt" ]]; then
  mkdir -p "$METRICS_CERTS" && cp "$certs/tls.crt" "$certs/tls.key" "$METRICS_CERTS/"
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)"
echo "$port" > "$DIR/kueue/health.port"
cat > "$DIR/kueue/config.yaml" <<EOF
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
manageJobsWithoutQueueName: false
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
webhook:
  port: $(free_port)
  host: 127.0.0.1
  certDir: $certs
metrics:
  bindAddress: "0"
health:
  healthProbeBindAddress: 127.0.0.1:$port
integrations:
  frameworks: []
featureGates:
  VisibilityOnDemand: false
EOF
nohup "$BIN/kueue" --config "$DIR/kueue/config.yaml" --kubeconfig "$KUBECONFIG_PATH" >"$LOG" 2>&1 &
echo $! > "$PIDFILE"

deadline=$((SECONDS + 90))
until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
  if ! running || (( SECONDS > deadline )); then
    log "Kueue did not become ready; last log lines:"; tail -n 20 "$LOG" >&2 || true
    exit 1
  fi
  sleep 0.2
done
log "Kueue running (pid $(cat "$PIDFILE"), log $LOG)"
echo "http://127.0.0.1:$port/healthz"
