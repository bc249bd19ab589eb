#!/usr/bin/env bash
# Start (or stop) the real kube-scheduler against a control plane from hack/cluster-up.sh.
#
#   bash hack/kube-scheduler-up.sh          start it (reused when already running); prints its
#                                           health URL once /healthz answers
#   bash hack/kube-scheduler-up.sh --down   stop it
#
# It schedules pods whose schedulerName is "default-scheduler" (the default) onto the kwok
# nodes, like in a real cluster; Tessera's own pods (schedulerName: tessera) are left to it.
# Benchmarks that compare against kube-scheduler start it with this script.
#
# Environment (the same as hack/cluster-up.sh):
#   TESSERA_CLUSTER_DIR   the cluster's state folder (default: <repo>/.local-cluster); the pid
#                         goes to pids/kube-scheduler, the log to logs/kube-scheduler.log, so
#                         hack/cluster-down.sh stops it too
#   TESSERA_BIN_DIR       where kube-scheduler is (default: <repo>/.local-cluster/bin)
#   TESSERA_KUBE_SCHEDULER_ARGS  extra flags (e.g. "--config=my-profile.yaml --v=2")
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${TESSERA_CLUSTER_DIR:-$ROOT/.local-cluster}"
BIN="${TESSERA_BIN_DIR:-$ROOT/.local-cluster/bin}"
KUBECONFIG_PATH="$DIR/kubeconfig"
PIDFILE="$DIR/pids/kube-scheduler"
LOG="$DIR/logs/kube-scheduler.log"
log() { printf '[kube-scheduler-up] %s\n' "$*" >&2; }

# shellcheck source=hack/pidfile.sh
source "$ROOT/hack/pidfile.sh"
running() { pid_running "$PIDFILE"; }

if [[ "${1:-}" == "--down" ]]; then
  running && log "stopping"
  stop_pid "$PIDFILE"
  exit 0
fi

[[ -x "$BIN/kube-scheduler" ]] || { log "missing $BIN/kube-scheduler: run 'make tools' (hack/build-tools.sh)"; exit 1; }
[[ -f "$KUBECONFIG_PATH" ]] || { log "no cluster in $DIR (run hack/cluster-up.sh first)"; exit 1; }
mkdir -p "$DIR/pids" "$DIR/logs"

if running && [[ -f "$DIR/kube-scheduler.port" ]]; then
  port="$(cat "$DIR/kube-scheduler.port")"
  if curl -sfk "https://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
    log "reusing the running kube-scheduler (pid $(cat "$PIDFILE"))"
    echo "https://127.0.0.1:$port/healthz"
    exit 0
  fi
fi

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
echo "$port" > "$DIR/kube-scheduler.port"
# the admin kubeconfig also serves the delegated authentication/authorization of its
# /healthz and /metrics endpoints; no leader election: there is one scheduler
# shellcheck disable=SC2086
nohup "$BIN/kube-scheduler" \
  --kubeconfig "$KUBECONFIG_PATH" \
  --authentication-kubeconfig "$KUBECONFIG_PATH" --authorization-kubeconfig "$KUBECONFIG_PATH" \
  --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port "$port" --cert-dir "$DIR/kube-scheduler-certs" \
  --v=1 ${TESSERA_KUBE_SCHEDULER_ARGS:-} >"$LOG" 2>&1 &
echo $! > "$PIDFILE"

deadline=$((SECONDS + 60))
until curl -sfk "https://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
  if ! running || (( SECONDS > deadline )); then
    log "kube-scheduler did not become healthy; last log lines:"; tail -n 20 "$LOG" >&2 || true
    exit 1
  fi
  sleep 0.2
done
log "kube-scheduler $("$BIN/kube-scheduler" --version 2>/dev/null | awk '{print $2}') running (pid $(cat "$PIDFILE"), log $LOG)"
echo "https://127.0.0.1:$port/healthz"
