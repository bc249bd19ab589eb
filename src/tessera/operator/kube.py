"""A small, blocking Kubernetes API facade (the official client, raw JSON in and out).

Every call here blocks; the scheduler runs them in a worker thread, never on kopf's
event loop.  Responses are read with ``_preload_content=False`` and parsed as JSON so
the rest of the operator sees the same camelCase objects ``kubectl get -o json`` shows
(and so ``create_namespaced_pod_binding`` does not trip over the client's known
response-deserialisation bug, kubernetes-client/python#825).

API verbs used (the Helm chart's ClusterRole mirrors this list; see docs/operator.md).
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tessera.api.dra import DraObjects
from tessera.api.kueue import KueueObjects
from tessera.api.models import GROUP, VERSION, ElasticJob, InferenceService
from tessera.operator import labels as L
from tessera.operator.kube_base import KubeError, _drain, _error, _json, now_rfc3339
from tessera.operator.kube_dra import DraApi
from tessera.operator.kube_kueue import KueueApi

log = logging.getLogger("tessera.operator")

PLURALS = {ElasticJob.kind: ElasticJob.plural, InferenceService.kind: InferenceService.plural}


def _check_owned(current: dict[str, Any], wanted: dict[str, Any], kind: str) -> None:
    """Raise unless ``current`` is owned by the owner of ``wanted`` (never adopt another's object)."""
    want = {o.get("uid") for o in wanted["metadata"].get("ownerReferences") or []}
    have = {o.get("uid") for o in (current.get("metadata") or {}).get("ownerReferences") or []}
    if not want & have:
        meta = wanted["metadata"]
        raise KubeError(f"a {kind} named {meta['name']} that this workload does not own exists in namespace "
                        f"{meta['namespace']}; Tessera does not adopt it: delete or rename it", 409)


class Throttled:
    """Retries requests the API server refused with 429 (Too Many Requests), as client-go does.

    A 429 from kube-apiserver's in-flight limit or from priority and fairness is sent before
    the request is processed, so retrying any verb is safe. Waits the server's Retry-After
    (capped at ``max_wait_seconds``, with jitter), at most ``attempts`` times, then lets the
    error through: the caller's ordinary error handling (undo, backoff) takes over.
    Refusals are counted and logged at most every ``report_seconds``.
    """

    def __init__(self, request: Callable[..., Any], attempts: int = 5, max_wait_seconds: float = 2.0,
                 report_seconds: float = 30.0) -> None:
        self.request, self.attempts, self.max_wait_seconds = request, attempts, max_wait_seconds
        self.report_seconds = report_seconds
        self.refused = 0
        self._unreported = 0
        self._reported_at = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # kubernetes>=33 returns non-2xx answers as responses (ApiException comes later, when
        # the caller deserialises); older clients raise ApiException here. Both are retried.
        for attempt in range(self.attempts + 1):
            last = attempt == self.attempts
            try:
                response = self.request(*args, **kwargs)
            except ApiException as err:
                if err.status != 429 or last:
                    raise
                headers = err.headers
            else:
                if getattr(response, "status", 200) != 429 or last:
                    return response
                headers = getattr(response, "headers", None)
                with contextlib.suppress(Exception):  # drain it: the connection goes back to the pool
                    response.read()
            self._count()
            time.sleep(self._wait(headers, attempt))
        raise AssertionError("unreachable")

    def _wait(self, headers: Any, attempt: int) -> float:
        retry_after = None
        with contextlib.suppress(AttributeError, TypeError):
            retry_after = headers.get("Retry-After")
        try:
            wait = float(retry_after) if retry_after else 0.2 * 2 ** attempt
        except ValueError:
            wait = 0.2 * 2 ** attempt
        return min(wait, self.max_wait_seconds) * random.uniform(0.5, 1.0)

    def _count(self) -> None:
        with self._lock:
            self.refused += 1
            self._unreported += 1
            now = time.monotonic()
            if now - self._reported_at >= self.report_seconds or self.refused == 1:
                log.warning("the API server refused %d request(s) with 429 Too Many Requests since the last "
                            "report; retrying them after its Retry-After", self._unreported)
                self._unreported, self._reported_at = 0, now


def retry_throttled(rest_client: Any) -> Throttled:
    """Make ``rest_client`` (a kubernetes ``RESTClientObject``) retry 429s."""
    throttled = Throttled(rest_client.request)
    rest_client.request = throttled
    return throttled


@dataclass
class Kube:
    """Typed helpers over the generated client."""

    api: client.ApiClient
    _groups: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None, *, connections: int = 32) -> Kube:
        """From ``kubeconfig`` (or $KUBECONFIG / ~/.kube/config), else the in-cluster service account.

        ``connections``: kept-alive connections to the API server (the worker pool, the
        watches and the Lease share them; too few and every write pays a new TLS handshake).
        """
        try:
            configuration = client.Configuration()
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        except (config.ConfigException, FileNotFoundError, TypeError):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, connections)
        api = client.ApiClient(configuration)
        retry_throttled(api.rest_client)
        return cls(api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def scheduling(self) -> client.SchedulingV1Api:
        return client.SchedulingV1Api(self.api)

    @property
    def dra(self) -> DraApi:  # resource.k8s.io: slices, classes, claims (tessera.operator.kube_dra)
        return cast(DraApi, self._groups.setdefault("dra", DraApi(self.custom)))

    def list_dra(self) -> DraObjects:  # resourceslices, resourceclaims, deviceclasses: list
        return self.dra.list()

    @property
    def kueue(self) -> KueueApi:  # kueue.x-k8s.io: Workloads, ResourceFlavors (tessera.operator.kube_kueue)
        return cast(KueueApi, self._groups.setdefault("kueue", KueueApi(self.custom)))

    def list_kueue(self) -> KueueObjects | None:  # workloads, resourceflavors (kueue.x-k8s.io): list
        return self.kueue.list()

    # --- reads ---------------------------------------------------------------------

    def list_nodes(self) -> list[dict[str, Any]]:  # nodes: list
        try:
            return list(_json(self.core.list_node(_preload_content=False))["items"])
        except ApiException as err:
            raise _error(err, "list nodes") from err

    def list_pods(self) -> list[dict[str, Any]]:  # pods: list (all namespaces)
        try:
            response = self.core.list_pod_for_all_namespaces(
                field_selector="status.phase!=Succeeded,status.phase!=Failed", _preload_content=False
            )
        except ApiException as err:
            raise _error(err, "list pods") from err
        return list(_json(response)["items"])

    def list_workloads(self) -> list[tuple[str, dict[str, Any]]]:  # elasticjobs, inferenceservices: list
        out: list[tuple[str, dict[str, Any]]] = []
        for kind, plural in PLURALS.items():
            try:
                response = self.custom.list_cluster_custom_object(GROUP, VERSION, plural, _preload_content=False)
            except ApiException as err:
                raise _error(err, f"list {plural}.{GROUP}") from err
            out.extend((kind, item) for item in _json(response)["items"])
        return out

    def list_queues(self) -> list[dict[str, Any]]:  # queues: list
        """The Queue objects; none when the Queue CRD is not installed (an older chart)."""
        try:
            response = self.custom.list_cluster_custom_object(GROUP, VERSION, "queues", _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return []
            raise _error(err, f"list queues.{GROUP}") from err
        return list(_json(response)["items"])

    def list_priority_classes(self) -> list[dict[str, Any]]:  # priorityclasses: list
        """The PriorityClasses (a workload's pod template may name one: its value is the
        workload's priority)."""
        try:
            return list(_json(self.scheduling.list_priority_class(_preload_content=False))["items"])
        except ApiException as err:
            if err.status in (403, 404):  # an older chart's RBAC: classes are not read (logged)
                log.warning("cannot list priorityclasses (%s): workloads' PriorityClasses are not applied", err.status)
                return []
            raise _error(err, "list priorityclasses") from err

    def list_namespace_labels(self) -> dict[str, dict[str, str]]:  # namespaces: list
        """Namespace name -> its labels (queues' namespaceSelector)."""
        try:
            items = _json(self.core.list_namespace(_preload_content=False))["items"]
        except ApiException as err:
            raise _error(err, "list namespaces") from err
        return {i["metadata"]["name"]: dict(i["metadata"].get("labels") or {}) for i in items}

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:  # pods: get
        try:
            return dict(_json(self.core.read_namespaced_pod(name, namespace, _preload_content=False)))
        except ApiException as err:
            if err.status == 404:
                return None
            raise _error(err, f"get pod {namespace}/{name}") from err

    # --- writes --------------------------------------------------------------------

    def create_pod(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:  # pods: create
        """Create ``body``; on AlreadyExists return the existing pod and False."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            created = self.core.create_namespaced_pod(
                namespace, cast(Any, body), field_manager=L.FIELD_MANAGER, _preload_content=False
            )
            return dict(_json(created)), True
        except ApiException as err:
            if err.status != 409:
                raise _error(err, f"create pod {namespace}/{name}") from err
        existing = self.read_pod(namespace, name)
        if existing is None:
            raise KubeError(f"create pod {namespace}/{name}: exists but vanished; retry", 409)
        return existing, False

    def dry_run_pod(self, body: dict[str, Any]) -> None:  # pods: create (dryRun=All: nothing is stored)
        """Ask the API server to validate ``body`` as it would a real create, admission
        (Pod Security, quotas, webhooks) included; raises KubeError with its answer."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            _drain(self.core.create_namespaced_pod(namespace, cast(Any, body), dry_run="All",
                                                   field_manager=L.FIELD_MANAGER, _preload_content=False))
        except ApiException as err:
            if err.status == 409:  # a pod of that name exists: the spec itself was accepted
                return
            raise _error(err, f"pod {namespace}/{name} would be refused") from err
        except (TypeError, ValueError) as err:  # the client refused to serialise it
            raise KubeError(f"pod {namespace}/{name} cannot be sent: {err}", 422) from err

    def bind_pod(self, namespace: str, name: str, node: str, pod_uid: str) -> None:  # pods/binding: create
        """Bind through the Binding subresource. The API server refuses a second binding (409)."""
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": pod_uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        try:
            _drain(self.core.create_namespaced_pod_binding(name, namespace, cast(Any, body), _preload_content=False))
        except ApiException as err:
            raise _error(err, f"bind pod {namespace}/{name} to {node}") from err

    def delete_pod(self, namespace: str, name: str, uid: str = "", grace_period_seconds: int | None = None) -> None:
        """Delete one pod (pods: delete); a uid precondition never deletes a newer pod of that name."""
        options: dict[str, Any] = {}
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        try:
            _drain(self.core.delete_namespaced_pod(name, namespace, body=cast(Any, options), _preload_content=False))
        except ApiException as err:
            if err.status in (404, 409):  # gone already, or replaced by a newer pod
                return
            raise _error(err, f"delete pod {namespace}/{name}") from err

    def delete_workload_pods(self, namespace: str, uid: str) -> int:  # pods: list, delete
        """Delete every pod of the workload with ``uid``; returns how many were still there."""
        try:
            response = self.core.list_namespaced_pod(namespace, label_selector=L.selector(uid), _preload_content=False)
        except ApiException as err:
            raise _error(err, f"list pods of {uid}") from err
        pods = _json(response)["items"]
        for pod in pods:
            meta = pod["metadata"]
            if not meta.get("deletionTimestamp"):
                self.delete_pod(namespace, meta["name"], meta["uid"])
        return len(pods)

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource (elasticjobs/status, inferenceservices/status:
        patch); returns the object as the API server stored it."""
        try:
            response = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURALS[kind], name, {"status": status}, _preload_content=False
            )
        except ApiException as err:
            raise _error(err, f"patch status of {kind} {namespace}/{name}") from err
        return dict(_json(response))

    def patch_queue_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch a Queue's status subresource (queues/status: patch); returns the object."""
        try:
            response = self.custom.patch_cluster_custom_object_status(GROUP, VERSION, "queues", name,
                                                                      {"status": status}, _preload_content=False)
        except ApiException as err:
            raise _error(err, f"patch status of Queue {name}") from err
        return dict(_json(response))

    def post_event(self, kind: str, raw: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event on the workload (events: create). Failures are logged, never raised."""
        meta = raw["metadata"]
        now = now_rfc3339()
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace", "default")},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": kind,
                "name": meta["name"],
                "namespace": meta.get("namespace", "default"),
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": L.COMPONENT},
            "reportingComponent": f"{GROUP}/operator",
            "reportingInstance": socket.gethostname(),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            _drain(self.core.create_namespaced_event(body["metadata"]["namespace"], cast(Any, body),
                                                     _preload_content=False))
        except ApiException as err:
            log.warning("could not post event %s on %s %s: %s", reason, kind, meta["name"], err.reason)

    # --- elastic jobs: plan ConfigMap and headless Service --------------------------

    def apply_configmap(self, body: dict[str, Any]) -> bool:  # configmaps: get, create, patch
        """Create the ConfigMap ``body`` or bring an existing one's ``data`` in line; True when written."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            _drain(self.core.create_namespaced_config_map(namespace, cast(Any, body), field_manager=L.FIELD_MANAGER,
                                                          _preload_content=False))
            return True
        except ApiException as err:
            if err.status != 409:
                raise _error(err, f"create configmap {namespace}/{name}") from err
        try:
            current = _json(self.core.read_namespaced_config_map(name, namespace, _preload_content=False))
            _check_owned(current, body, "ConfigMap")
            if current.get("data") == body.get("data"):
                return False
            _drain(self.core.patch_namespaced_config_map(name, namespace, {"data": body.get("data") or {}},
                                                         field_manager=L.FIELD_MANAGER, _preload_content=False))
            return True
        except ApiException as err:
            raise _error(err, f"update configmap {namespace}/{name}") from err

    def ensure_service(self, body: dict[str, Any]) -> bool:  # services: create, get
        """Create the Service ``body`` unless this workload's own exists; True when created.

        A Service of that name owned by anything else raises KubeError (never adopted)."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            _drain(self.core.create_namespaced_service(namespace, cast(Any, body), field_manager=L.FIELD_MANAGER,
                                                       _preload_content=False))
            return True
        except ApiException as err:
            if err.status != 409:
                raise _error(err, f"create service {namespace}/{name}") from err
        try:
            current = _json(self.core.read_namespaced_service(name, namespace, _preload_content=False))
        except ApiException as err:
            raise _error(err, f"get service {namespace}/{name}") from err
        _check_owned(current, body, "Service")
        return False

    # --- leases (coordination.k8s.io) ------------------------------------------------

    @property
    def coordination(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self.api)

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:  # leases: get
        try:
            return dict(_json(self.coordination.read_namespaced_lease(name, namespace, _preload_content=False)))
        except ApiException as err:
            if err.status == 404:
                return None
            raise _error(err, f"get lease {namespace}/{name}") from err

    def create_lease(self, namespace: str, body: dict[str, Any]) -> bool:  # leases: create
        try:
            _drain(self.coordination.create_namespaced_lease(namespace, cast(Any, body), _preload_content=False))
            return True
        except ApiException as err:
            if err.status == 409:
                return False
            raise _error(err, "create lease") from err

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> bool:  # leases: update
        """Replace with the resourceVersion in ``body``; False when someone else wrote it first."""
        try:
            _drain(self.coordination.replace_namespaced_lease(name, namespace, cast(Any, body),
                                                              _preload_content=False))
            return True
        except ApiException as err:
            if err.status == 409:
                return False
            raise _error(err, "update lease") from err
