"""An in-memory cluster behind the operator's own Kube port (tessera.operator.ports.KubePort).

For fast unit tests of the write protocols and their crash points.  It answers the way the
API server does where the operator's safety depends on it: resourceVersions and uids,
AlreadyExists on a second create of a name (the create returns the existing pod), a uid
precondition on delete, a Binding refused (409) once a pod is bound, status merge patches
where null removes a field.  Pods deleted here are gone at once (no kubelet to wait for).
Failures are injected per call with :meth:`FakeKube.fail`.  The real-cluster tests
(tests/operator) check the same protocols against a real kube-apiserver.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

from tessera.api.dra import DraObjects
from tessera.operator.kube import KubeError

_uids = itertools.count(1)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def gpu_node(name: str, gpus: int = 8, product: str = "NVIDIA-H100-80GB-HBM3") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"node-{name}",
                     "labels": {"nvidia.com/gpu.product": product, "kubernetes.io/hostname": name}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi", "pods": "110"},
                   "capacity": {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }


def elasticjob(name: str, namespace: str = "ns", *, replicas: int = 2, min_replicas: int | None = None,
               accelerators: int = 4,
               types: tuple[str, ...] = ("H100",), priority: int = 0, created: str = "2026-01-01T00:00:00Z",
               container: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tessera.dev/v1alpha1", "kind": "ElasticJob",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}-{next(_uids)}", "generation": 1,
                     "creationTimestamp": created, "resourceVersion": "1"},
        "spec": {"replicas": {"min": replicas if min_replicas is None else min_replicas, "max": replicas},
                 "acceleratorsPerReplica": accelerators,
                 "acceleratorTypes": [{"name": t} for t in types], "priority": priority,
                 "template": {"spec": {"containers": [container or {"name": "trainer", "image": "trainer:1"}]}},
                 **spec},
    }


class FakeKube:
    def __init__(self, nodes: list[dict[str, Any]] | None = None) -> None:
        self.nodes: dict[str, dict[str, Any]] = {n["metadata"]["name"]: n for n in nodes or []}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.workloads: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str, str]] = []
        self.calls: Counter[str] = Counter()
        #: pod uid -> how many Bindings were accepted for it (a double bind shows as 2)
        self.binds: Counter[str] = Counter()
        self._rv = itertools.count(10)
        self._faults: list[tuple[str, Callable[..., bool], BaseException]] = []
        #: the dry-run answer: a problem string makes it refuse (422) like the API server
        self.refuse_pod: Callable[[dict[str, Any]], str] = lambda body: ""
        #: Queue objects (cluster-scoped) by name, and namespace labels
        self.queues: dict[str, dict[str, Any]] = {}
        self.namespace_labels: dict[str, dict[str, str]] = {}
        #: PriorityClasses by name
        self.priority_classes: dict[str, dict[str, Any]] = {}

    # -- test control ----------------------------------------------------------------------

    def fail(self, verb: str, when: Callable[..., bool], error: BaseException) -> None:
        """Raise ``error`` from ``verb`` whenever ``when(*args)`` is true."""
        self._faults.append((verb, when, error))

    def _call(self, verb: str, *args: Any) -> None:
        self.calls[verb] += 1
        for name, when, error in self._faults:
            if name == verb and when(*args):
                raise error

    def add(self, raw: dict[str, Any]) -> dict[str, Any]:
        kind = raw["kind"]
        meta = raw["metadata"]
        self.workloads[(kind, meta["namespace"], meta["name"])] = raw
        return raw

    def workload(self, name: str, namespace: str = "ns", kind: str = "ElasticJob") -> dict[str, Any]:
        return self.workloads[(kind, namespace, name)]

    def condition(self, name: str, type_: str = "Scheduled", kind: str = "ElasticJob") -> dict[str, Any]:
        status = self.workload(name, kind=kind).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})

    def pods_of(self, name: str) -> list[dict[str, Any]]:
        return [p for p in self.pods.values() if p["metadata"]["labels"].get("tessera.dev/workload") == name]

    def _version(self) -> str:
        return str(next(self._rv))

    # -- reads -----------------------------------------------------------------------------

    def list_nodes(self) -> list[dict[str, Any]]:
        self._call("list_nodes")
        return copy.deepcopy(list(self.nodes.values()))

    def list_pods(self) -> list[dict[str, Any]]:
        self._call("list_pods")
        return copy.deepcopy([p for p in self.pods.values()
                              if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")])

    def list_workloads(self) -> list[tuple[str, dict[str, Any]]]:
        self._call("list_workloads")
        return [(kind, copy.deepcopy(raw)) for (kind, _, _), raw in self.workloads.items()]

    def list_queues(self) -> list[dict[str, Any]]:
        self._call("list_queues")
        return copy.deepcopy(list(self.queues.values()))

    def list_priority_classes(self) -> list[dict[str, Any]]:
        self._call("list_priority_classes")
        return copy.deepcopy(list(self.priority_classes.values()))

    def list_kueue(self) -> None:
        """No Kueue here: tests/operator/test_kueue.py runs the real one."""
        return None

    def list_dra(self) -> DraObjects:
        """No DRA here: its claims are exercised against the real API server (tests/operator/test_dra.py)."""
        return DraObjects()

    def list_namespace_labels(self) -> dict[str, dict[str, str]]:
        self._call("list_namespace_labels")
        return copy.deepcopy(self.namespace_labels)

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._call("read_pod", namespace, name)
        pod = self.pods.get((namespace, name))
        return copy.deepcopy(pod) if pod is not None else None

    # -- writes ----------------------------------------------------------------------------

    def create_pod(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        meta = body["metadata"]
        self._call("create_pod", body)
        key = (meta["namespace"], meta["name"])
        if key in self.pods:
            return copy.deepcopy(self.pods[key]), False
        pod = copy.deepcopy(body)
        pod["metadata"]["uid"] = f"pod-{meta['name']}-{next(_uids)}"
        pod["metadata"]["resourceVersion"] = self._version()
        pod["status"] = {"phase": "Pending"}
        if pod["spec"].get("nodeName"):  # created bound: a bind without the Binding subresource
            pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            self.binds[pod["metadata"]["uid"]] += 1
        self.pods[key] = pod
        return copy.deepcopy(pod), True

    def dry_run_pod(self, body: dict[str, Any]) -> None:
        self._call("dry_run_pod", body)
        problem = self.refuse_pod(body)
        if problem:
            raise KubeError(f"pod {body['metadata']['name']} would be refused: 422 Unprocessable Entity: {problem}",
                            422)

    def bind_pod(self, namespace: str, name: str, node: str, pod_uid: str) -> None:
        self._call("bind_pod", namespace, name, node)
        pod = self.pods.get((namespace, name))
        if pod is None or pod["metadata"]["uid"] != pod_uid:
            raise KubeError(f"bind pod {namespace}/{name}: 404 Not Found", 404)
        if pod["spec"].get("nodeName"):
            raise KubeError(f"bind pod {namespace}/{name} to {node}: 409 Conflict: already assigned", 409)
        if node not in self.nodes:
            raise KubeError(f"bind pod {namespace}/{name}: node {node} not found", 404)
        pod["spec"]["nodeName"] = node
        pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        pod["metadata"]["resourceVersion"] = self._version()
        self.binds[pod_uid] += 1

    def delete_pod(self, namespace: str, name: str, uid: str = "", grace_period_seconds: int | None = None) -> None:
        self._call("delete_pod", namespace, name)
        pod = self.pods.get((namespace, name))
        if pod is None or (uid and pod["metadata"]["uid"] != uid):
            return
        del self.pods[(namespace, name)]

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._call("patch_status", kind, namespace, name, status)
        raw = self.workloads.get((kind, namespace, name))
        if raw is None:
            raise KubeError(f"patch status of {kind} {namespace}/{name}: 404 Not Found", 404)
        raw["status"] = _merge(raw.get("status") or {}, status)
        raw["metadata"]["resourceVersion"] = self._version()

    def patch_queue_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self._call("patch_queue_status", name, status)
        raw = self.queues.get(name)
        if raw is None:
            raise KubeError(f"patch status of Queue {name}: 404 Not Found", 404)
        raw["status"] = _merge(raw.get("status") or {}, status)
        raw["metadata"]["resourceVersion"] = self._version()
        return copy.deepcopy(raw)

    def post_event(self, kind: str, raw: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        self.events.append((raw["metadata"]["name"], event_type, reason, message))

    def apply_configmap(self, body: dict[str, Any]) -> bool:
        self._call("apply_configmap", body)
        meta = body["metadata"]
        self.configmaps[(meta["namespace"], meta["name"])] = copy.deepcopy(body)
        return True

    def ensure_service(self, body: dict[str, Any]) -> bool:
        self._call("ensure_service", body)
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        created = key not in self.services
        self.services.setdefault(key, copy.deepcopy(body))
        return created

    # -- leases ----------------------------------------------------------------------------

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        lease = self.leases.get((namespace, name))
        return copy.deepcopy(lease) if lease is not None else None

    def create_lease(self, namespace: str, body: dict[str, Any]) -> bool:
        key = (namespace, body["metadata"]["name"])
        if key in self.leases:
            return False
        lease = copy.deepcopy(body)
        lease["metadata"]["resourceVersion"] = self._version()
        self.leases[key] = lease
        return True

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> bool:
        current = self.leases.get((namespace, name))
        if current is None or current["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            return False
        lease = copy.deepcopy(body)
        lease["metadata"]["resourceVersion"] = self._version()
        self.leases[(namespace, name)] = lease
        return True


def inferenceservice(name: str, namespace: str = "ns", *, replicas: int = 2, accelerators: int = 8,
                     types: tuple[str, ...] = ("H100",), spread: str = "Node",
                     created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "apiVersion": "tessera.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}-{next(_uids)}", "generation": 1,
                     "creationTimestamp": created, "resourceVersion": "1"},
        "spec": {"replicas": replicas, "acceleratorsPerReplica": accelerators, "spread": spread,
                 "acceleratorTypes": [{"name": t} for t in types],
                 "template": {"spec": {"containers": [{"name": "server", "image": "server:1"}]}}},
    }


def queue(name: str, parent: str = "", weight: float = 1.0, namespaces: dict[str, str] | None = None,
          **nominal: int) -> dict[str, Any]:
    """A Queue object; ``nominal``: accelerator type -> quota (e.g. H100=8)."""
    return {
        "apiVersion": "tessera.dev/v1alpha1", "kind": "Queue",
        "metadata": {"name": name, "uid": f"uid-queue-{name}-{next(_uids)}", "generation": 1, "resourceVersion": "1"},
        "spec": {"parent": parent, "weight": weight, "namespaceSelector": namespaces or {},
                 "quotas": [{"acceleratorType": t, "nominal": n} for t, n in nominal.items()]},
    }


def priority_class(name: str, value: int, preemption_policy: str = "PreemptLowerPriority") -> dict[str, Any]:
    return {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name, "uid": f"uid-pc-{name}", "resourceVersion": "1"},
            "value": value, "preemptionPolicy": preemption_policy}
