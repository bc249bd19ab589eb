#!/usr/bin/env bash
# Start (or reuse) a local Kubernetes control plane with fake accelerator nodes:
#   etcd + kube-apiserver (+ kube-controller-manager when built) + kwok, all on loopback.
# No container runtime is needed: kwok plays the kubelets, so bound pods become Running.
#
# Environment:
#   TESSERA_CLUSTER_DIR   state folder (default: <repo>/.local-cluster); holds kubeconfig,
#                         certificates, logs, pids and etcd data
#   TESSERA_NODES         node fixture files or folders to apply, separated by spaces (default:
#                         examples/nodes, the extended-resource pools, and examples/nodes/dra,
#                         a pool whose GPUs are published as DRA ResourceSlices)
#   TESSERA_PORT_BASE     first of three consecutive loopback ports (default: chosen free)
#   TESSERA_NO_CONTROLLER_MANAGER=1  do not start kube-controller-manager
#   TESSERA_APISERVER_ARGS  extra kube-apiserver flags (e.g. "--max-mutating-requests-inflight=1"
#                         to make it answer 429 under load, as tests/operator/test_throttled_apiserver.py does)
#   TESSERA_KUEUE=1       also start the real Kueue controller (hack/kueue-up.sh, docs/kueue.md)
#   TESSERA_KUBE_SCHEDULER=1  also start the real kube-scheduler (hack/kube-scheduler-up.sh; `make cluster-up` and `make demo` set it);
#                         off by default: then only Tessera binds pods
# Idempotent: when the cluster in TESSERA_CLUSTER_DIR answers, it is reused.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${TESSERA_CLUSTER_DIR:-$ROOT/.local-cluster}"
BIN="${TESSERA_BIN_DIR:-$ROOT/.local-cluster/bin}"
NODES="${TESSERA_NODES:-$ROOT/examples/nodes $ROOT/examples/nodes/dra}"
apply_nodes() { local path; for path in $NODES; do kubectl apply -f "$path" >/dev/null; done; }
mkdir -p "$DIR"/{pki,logs,pids}
DIR="$(cd "$DIR" && pwd)"
KUBECONFIG_PATH="$DIR/kubeconfig"
log() { printf '[cluster-up] %s\n' "$*" >&2; }
kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# openssl (certificates) and curl (etcd health) come from Debian on a bare machine
missing_pkgs=()
command -v openssl >/dev/null 2>&1 || missing_pkgs+=(openssl)
command -v curl >/dev/null 2>&1 || missing_pkgs+=(curl)
if (( ${#missing_pkgs[@]} )); then
  [[ "$(id -u)" == 0 ]] || { log "missing ${missing_pkgs[*]}: install them (apt-get install ${missing_pkgs[*]})"; exit 1; }
  log "installing ${missing_pkgs[*]} from Debian"
  apt-get update -qq && apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
fi

for b in etcd kube-apiserver kubectl kwok; do
  [[ -x "$BIN/$b" ]] || { log "missing $BIN/$b: run 'make tools' (hack/build-tools.sh) first"; exit 1; }
done

running() { [[ -f "$DIR/pids/$1" ]] && kill -0 "$(cat "$DIR/pids/$1")" 2>/dev/null; }

if [[ -f "$KUBECONFIG_PATH" ]] && running kube-apiserver && running etcd && running kwok \
   && kubectl get --raw /readyz >/dev/null 2>&1; then
  log "reusing the running cluster in $DIR"
  apply_nodes
  if [[ "${TESSERA_KUEUE:-}" == 1 ]]; then
    TESSERA_CLUSTER_DIR="$DIR" TESSERA_BIN_DIR="$BIN" bash "$ROOT/hack/kueue-up.sh" >/dev/null
  fi
  if [[ "${TESSERA_KUBE_SCHEDULER:-}" == 1 ]]; then
    TESSERA_CLUSTER_DIR="$DIR" TESSERA_BIN_DIR="$BIN" bash "$ROOT/hack/kube-scheduler-up.sh" >/dev/null
  fi
  echo "$KUBECONFIG_PATH"
  exit 0
fi
# something is half up: stop it cleanly before starting again (data is kept)
TESSERA_CLUSTER_DIR="$DIR" bash "$ROOT/hack/cluster-down.sh" --keep-data >/dev/null 2>&1 || true

free_port() {
  python3 - "$@" <<'PY'
import socket, sys
base = int(sys.argv[1]) if len(sys.argv) > 1 else 0
def ok(p):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p)); return True
        except OSError:
            return False
if base:
    print(base if all(ok(base + i) for i in range(3)) else 0)
else:
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
        if p < 65000 and all(ok(p + i) for i in range(3)):
            print(p); break
PY
}
if [[ -f "$DIR/ports" ]]; then
  # shellcheck disable=SC1091
  source "$DIR/ports"
  [[ "$(free_port "$PORT_BASE")" == "$PORT_BASE" ]] || PORT_BASE=""
fi
PORT_BASE="${TESSERA_PORT_BASE:-${PORT_BASE:-}}"
[[ -n "$PORT_BASE" ]] || PORT_BASE="$(free_port)"
ETCD_PORT=$PORT_BASE; ETCD_PEER_PORT=$((PORT_BASE + 1)); API_PORT=$((PORT_BASE + 2))
echo "PORT_BASE=$PORT_BASE" > "$DIR/ports"

# --- certificates and tokens (once per cluster folder) ---------------------------------
PKI="$DIR/pki"
if [[ ! -f "$PKI/ca.crt" ]]; then
  log "generating certificates in $PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=tessera-local-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' > "$PKI/san.ext"
  openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$PKI/san.ext" -out "$PKI/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  ADMIN_TOKEN="$(openssl rand -hex 24)"
  echo "$ADMIN_TOKEN,tessera-admin,tessera-admin,system:masters" > "$PKI/tokens.csv"
  chmod 600 "$PKI"/*.key "$PKI/tokens.csv"
fi
ADMIN_TOKEN="$(cut -d, -f1 "$PKI/tokens.csv")"

write_kubeconfig() { # write_kubeconfig PATH USER TOKEN
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: tessera-local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    token: $3
contexts:
- name: tessera-local
  context: {cluster: tessera-local, user: $2}
current-context: tessera-local
KC
  chmod 600 "$1"
}
write_kubeconfig "$KUBECONFIG_PATH" tessera-admin "$ADMIN_TOKEN"

start() { # start NAME CMD...: run in the background, log and remember the pid
  local name="$1"; shift
  nohup "$@" >"$DIR/logs/$name.log" 2>&1 &
  echo $! > "$DIR/pids/$name"
}
wait_for() { # wait_for WHAT SECONDS CMD...
  local what="$1" limit="$2"; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS > deadline )); then
      log "timed out waiting for $what; last log lines:"; tail -n 20 "$DIR/logs/$what.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

log "starting etcd on 127.0.0.1:$ETCD_PORT"
start etcd "$BIN/etcd" --name tessera --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "tessera=http://127.0.0.1:$ETCD_PEER_PORT" \
  --quota-backend-bytes 4294967296 --unsafe-no-fsync --log-level warn
wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

log "starting kube-apiserver on https://127.0.0.1:$API_PORT"
start kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --token-auth-file "$PKI/tokens.csv" \
  --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --enable-priority-and-fairness=false \
  --profiling=false --v=1 ${TESSERA_APISERVER_ARGS:-}
wait_for kube-apiserver 90 kubectl get --raw /readyz

if [[ -x "$BIN/kube-controller-manager" && -z "${TESSERA_NO_CONTROLLER_MANAGER:-}" ]]; then
  # garbage collection, namespace deletion, service account "default" objects, node lifecycle
  log "starting kube-controller-manager"
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG_PATH" --authentication-kubeconfig "$KUBECONFIG_PATH" \
    --authorization-kubeconfig "$KUBECONFIG_PATH" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --use-service-account-credentials=false \
    --controllers '*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle,-route,-persistentvolume-binder,-attachdetach,-ttl' \
    --v=1
fi

log "starting kwok (fake kubelets for nodes annotated kwok.x-k8s.io/node=fake)"
# node Leases are kwok's heartbeat: without them it writes node status only on changes, so
# the node lifecycle controller sees no heartbeat for 40 s, marks every node NotReady and
# every pod not Ready (a flap about once a minute) until kwok patches the status back
start kwok "$BIN/kwok" --kubeconfig "$KUBECONFIG_PATH" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom \
  --cidr=10.0.0.1/16 --node-ip=10.0.0.1 \
  --node-lease-duration-seconds 40 \
  --server-address "127.0.0.1:0"

# pods need the "default" ServiceAccount; without the controller manager, create it ourselves
kubectl get serviceaccount default -n default >/dev/null 2>&1 \
  || kubectl create serviceaccount default -n default >/dev/null 2>&1 || true

log "applying node fixtures from $NODES"
apply_nodes
wait_for kwok 60 bash -c "! '$BIN/kubectl' --kubeconfig '$KUBECONFIG_PATH' get nodes --no-headers | grep -v ' Ready '"
if [[ "${TESSERA_KUEUE:-}" == 1 ]]; then
  TESSERA_CLUSTER_DIR="$DIR" TESSERA_BIN_DIR="$BIN" bash "$ROOT/hack/kueue-up.sh" >/dev/null
fi
if [[ "${TESSERA_KUBE_SCHEDULER:-}" == 1 ]]; then
  TESSERA_CLUSTER_DIR="$DIR" TESSERA_BIN_DIR="$BIN" bash "$ROOT/hack/kube-scheduler-up.sh" >/dev/null
fi
log "cluster ready: export KUBECONFIG=$KUBECONFIG_PATH"
kubectl get nodes -L nvidia.com/gpu.product,accelerator,topology.kubernetes.io/zone >&2
echo "$KUBECONFIG_PATH"
