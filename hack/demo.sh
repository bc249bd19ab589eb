#!/usr/bin/env bash
# The main job on an embedded default: a local control plane with fake H100, A100 and
# Ascend 910B nodes (and L40S nodes whose GPUs are DRA devices), Tessera's CRDs, the operator, and the examples; then a table of
# where every replica landed.  Safe to run again: everything is reused.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
DIR="$ROOT/.local-cluster"
# the real kube-scheduler runs beside Tessera, as in a real cluster (TESSERA_KUBE_SCHEDULER=0: not)
KUBECONFIG="$(TESSERA_KUBE_SCHEDULER="${TESSERA_KUBE_SCHEDULER:-1}" bash hack/cluster-up.sh)"
export KUBECONFIG
kubectl() { "$DIR/bin/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing the CRDs (kubectl apply -f crds/)"
kubectl apply -f crds/
kubectl wait --for=condition=Established crd/elasticjobs.tessera.dev crd/inferenceservices.tessera.dev --timeout=60s >/dev/null

pidfile="$DIR/pids/operator"
if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  say "the operator is already running (pid $(cat "$pidfile"))"
else
  say "starting the operator (log: .local-cluster/logs/operator.log)"
  nohup "$PY" -m tessera operator --kubeconfig "$KUBECONFIG" --metrics-port 0 --interval-seconds 2 \
    >"$DIR/logs/operator.log" 2>&1 &
  echo $! > "$pidfile"
fi

say "applying the examples"
kubectl apply -f examples/elasticjob-basic.yaml -f examples/elasticjob-ascend.yaml \
  -f examples/inferenceservice-basic.yaml -f examples/elasticjob-too-big.yaml \
  -f examples/elasticjob-l40s-dra.yaml
if [[ "${TESSERA_KUBE_SCHEDULER:-1}" == 1 ]]; then
  say "and a plain Deployment, placed by kube-scheduler on the same GPU nodes"
  kubectl apply -f examples/kube-scheduler/inference-deployment.yaml
fi

say "waiting for the placements"
deadline=$((SECONDS + 90))
until [[ "$(kubectl get elasticjob llm-pretrain -o jsonpath='{.status.phase}' 2>/dev/null)" == Running \
      && "$(kubectl get elasticjob npu-finetune -o jsonpath='{.status.phase}' 2>/dev/null)" == Running \
      && "$(kubectl get elasticjob l40s-finetune -o jsonpath='{.status.phase}' 2>/dev/null)" == Running \
      && "$(kubectl get inferenceservices.tessera.dev chat-server -o jsonpath='{.status.phase}' 2>/dev/null)" == Running ]]; do
  if (( SECONDS > deadline )); then
    echo "the examples did not reach Running in 90 s; operator log:" >&2
    tail -n 40 "$DIR/logs/operator.log" >&2
    exit 1
  fi
  sleep 1
done

say "where each replica landed"
"$PY" hack/placement_table.py \
  <(kubectl get elasticjobs.tessera.dev,inferenceservices.tessera.dev -A -o json) \
  <(kubectl get pods -A -l tessera.dev/workload -o json) \
  <(kubectl get nodes -o json)

if [[ "${TESSERA_KUBE_SCHEDULER:-1}" == 1 ]]; then
  kubectl rollout status deployment/plain-inference --timeout=60s >/dev/null
  say "the plain Deployment's pods, bound by kube-scheduler (Tessera counts their GPUs)"
  kubectl get pods -l app=plain-inference -o custom-columns='POD:.metadata.name,NODE:.spec.nodeName,SCHEDULER:.spec.schedulerName,GPUS:.spec.containers[0].resources.limits.nvidia\.com/gpu,PHASE:.status.phase'
fi

say "the DRA claims of the L40S pods (devices Tessera allocated before binding)"
kubectl get resourceclaims -o custom-columns='CLAIM:.metadata.name,DEVICES:.status.allocation.devices.results[*].device,RESERVED FOR:.status.reservedFor[*].name'

cat <<MSG

The cluster and the operator keep running. Try:
  export KUBECONFIG=$KUBECONFIG PATH=$DIR/bin:\$PATH
  kubectl get ej,tisvc -A            # ElasticJobs and (Tessera's) InferenceServices
  kubectl describe ej giant-pretrain  # why a gang that does not fit waits
  kubectl scale inferenceservices.tessera.dev/chat-server --replicas=4
  make cluster-down                   # stops the operator and the cluster
MSG
