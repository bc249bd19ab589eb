"""A watch cache: nodes, pods, ElasticJobs, InferenceServices (and Queues, PriorityClasses,
DRA slices, claims and classes) kept in memory.

Each resource is mirrored by one thread doing LIST, then WATCH from the list's
resourceVersion (bookmarks on), applying every event to a dict keyed by uid.  A cycle
reads the mirrors instead of LISTing the cluster.  When a watch ends (the server's
timeout, a cut connection, an API server restart) the thread resumes from the last
resourceVersion it saw; when that version is too old (410 Gone) it LISTs again.  A full
re-LIST also runs every ``resync_seconds``, off the cycle's path.

**Own writes the watch has not shown yet** (kube-scheduler's "assumed" pods).  The
operator must never decide on a view that lacks its own last decision, or it could place
a workload twice or bind two gangs onto the same devices.  So every write it makes is
applied to the mirror at once:

* a status patch: the API server's answer (the whole object at its new resourceVersion)
  replaces the cached object;
* a pod (or a DRA claim, or its allocation) it created: the answer goes into the mirror;
* a bind: the pod is marked bound to its node until the watch shows it bound;
* a delete: the pod is marked going until the watch shows it gone.

Events older than what the mirror already holds (a smaller resourceVersion for that
object) are ignored, so an event in flight can never undo an assumed write.  The
resourceVersions compared are etcd revisions, which kube-apiserver hands out increasing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException

from tessera.api.dra import DraObjects
from tessera.api.kueue import FLAVORS, WORKLOADS, KueueObjects
from tessera.api.models import GROUP, VERSION
from tessera.operator.kube import PLURALS, Kube, KubeError
from tessera.operator.kube_dra import CLAIMS, CLASSES, SLICES, DraApi
from tessera.operator.kube_kueue import KueueApi
from tessera.operator.views import node_fingerprint

log = logging.getLogger("tessera.operator.cache")

POD_FIELD_SELECTOR = "status.phase!=Succeeded,status.phase!=Failed"


def _rv(obj: dict[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class Mirror:
    """One resource's objects by uid, kept by LIST + WATCH on a thread."""

    def __init__(self, name: str, list_call: Callable[..., Any], *, resync_seconds: float,
                 watch_timeout_seconds: int = 240, on_change: Callable[[], None] | None = None,
                 optional: bool = False, tolerate: tuple[int, ...] = (404,),
                 relevant: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None) -> None:
        self.name = name
        #: (held, new) -> whether a modification should wake the loop (None: every one)
        self.relevant = relevant
        #: a resource that may not exist (its CRD not installed) or not be readable (an older
        #: chart's RBAC): an answer in ``tolerate`` is an empty mirror
        self.optional = optional
        self.tolerate = tolerate
        self.on_change = on_change
        self.list_call = list_call
        self.resync_seconds = resync_seconds
        self.watch_timeout_seconds = watch_timeout_seconds
        self.objects: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()
        self.stopped = threading.Event()
        self.lists = 0
        self.error = ""
        #: an optional resource the API server does not serve (or lets us read): none
        self.absent = False
        self._thread = threading.Thread(target=self._run, name=f"tessera-watch-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def items(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.objects.values())

    def put(self, obj: dict[str, Any]) -> bool:
        """Apply an object unless the mirror holds a newer version of it; returns whether the
        change matters to a decision (always, unless ``relevant`` says it does not)."""
        uid = (obj.get("metadata") or {}).get("uid")
        if not uid:
            return False
        with self.lock:
            held = self.objects.get(uid)
            if held is None or _rv(obj) >= _rv(held):
                self.objects[uid] = obj
                return held is None or self.relevant is None or self.relevant(held, obj)
        return False

    def drop(self, obj: dict[str, Any]) -> None:
        uid = (obj.get("metadata") or {}).get("uid")
        with self.lock:
            held = self.objects.get(uid or "")
            if held is not None and _rv(obj) >= _rv(held):
                del self.objects[uid or ""]

    def _list(self) -> str:
        response = self.list_call(_preload_content=False)
        body = json.loads(response.data)
        fresh = {o["metadata"]["uid"]: o for o in body.get("items") or []}
        with self.lock:
            self.objects = fresh
        self.absent = False
        self.lists += 1
        self.synced.set()
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _run(self) -> None:
        version = ""
        listed_at = 0.0
        failures = 0
        while not self.stopped.is_set():
            try:
                if not version or time.monotonic() - listed_at > self.resync_seconds:
                    version = self._list()
                    listed_at = time.monotonic()
                version = self._watch(version)
                failures = 0
                self.error = ""
            except _Gone:
                version = ""  # too old: LIST again
            except ApiException as err:
                if not (self.optional and err.status in self.tolerate):
                    failures = self._failed(err, failures)
                    continue
                # not installed, or not readable: nothing to mirror; look again later
                with self.lock:
                    self.objects = {}
                self.absent = True
                if not self.synced.is_set():
                    log.warning("%s: the API server answers %s; taken as none, looking again every 30s",
                                self.name, err.status)
                self.synced.set()
                self.error = ""
                version = ""
                self.stopped.wait(30.0)
            except Exception as err:  # a cut connection, a restarting API server
                failures = self._failed(err, failures)

    def _failed(self, err: Exception, failures: int) -> int:
        failures += 1
        self.error = f"{type(err).__name__}: {err}"
        log.warning("watch of %s failed (%s); resuming", self.name, self.error)
        self.stopped.wait(min(5.0, 0.2 * 2 ** min(failures, 5)))
        return failures

    def _watch(self, version: str) -> str:
        response = self.list_call(watch=True, resource_version=version, allow_watch_bookmarks=True,
                                  timeout_seconds=self.watch_timeout_seconds, _preload_content=False)
        try:
            buffer = b""
            for chunk in response.stream(amt=None, decode_content=False):
                if self.stopped.is_set():
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        version = self._apply(json.loads(line), version)
        finally:
            response.release_conn()
        return version

    def _apply(self, event: dict[str, Any], version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise KubeError(f"watch of {self.name}: {obj.get('message', obj)}", int(obj.get("code") or 0))
        new_version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
        if kind in ("ADDED", "MODIFIED"):
            if not self.put(obj):
                return new_version  # e.g. a node's heartbeat: nothing to decide again
        elif kind == "DELETED":
            self.drop(obj)
        else:
            return new_version  # BOOKMARK: only the version moves
        if self.on_change is not None:
            self.on_change()
        return new_version


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): LIST again."""


class WatchCache:
    """Mirrors of the resources a cycle reads, plus the operator's own writes."""

    def __init__(self, kube: Kube, *, resync_seconds: float = 300.0,
                 on_change: Callable[[], None] | None = None) -> None:
        core, custom = kube.core, kube.custom
        # kubelets (and kwok) rewrite a node's status every few seconds for heartbeats alone:
        # only a change of what a node's view reads wakes the loop
        self.nodes = Mirror("nodes", core.list_node, resync_seconds=resync_seconds, on_change=on_change,
                            relevant=lambda held, new: node_fingerprint(held) != node_fingerprint(new))
        self.pods = Mirror("pods", lambda **kw: core.list_pod_for_all_namespaces(
            field_selector=POD_FIELD_SELECTOR, **kw), resync_seconds=resync_seconds, on_change=on_change)
        self.workloads = {
            kind: Mirror(plural, _custom_list(custom, plural), resync_seconds=resync_seconds, on_change=on_change)
            for kind, plural in PLURALS.items()
        }
        #: Queue objects (tessera.operator.queues); an API server without the Queue CRD has none
        self.queues = Mirror("queues", _custom_list(custom, "queues"), resync_seconds=resync_seconds,
                             on_change=on_change, optional=True)
        #: PriorityClasses (a workload's pod template may name one)
        self.priority_classes = Mirror("priorityclasses", kube.scheduling.list_priority_class,
                                       resync_seconds=resync_seconds, on_change=on_change, optional=True,
                                       tolerate=(403, 404))  # an older chart's RBAC: classes not read
        #: DRA (resource.k8s.io/v1): an API server without it, or an older chart's RBAC, has none
        dra = kube.dra
        self.dra = {plural: Mirror(plural, dra.list_call(plural), resync_seconds=resync_seconds, on_change=on_change,
                                   optional=True, tolerate=(403, 404)) for plural in (SLICES, CLAIMS, CLASSES)}
        #: Kueue (kueue.x-k8s.io/v1beta2): Workloads and ResourceFlavors, where Kueue runs
        kueue = kube.kueue
        self.kueue = {plural: Mirror(f"{plural}.kueue", kueue.list_call(plural), resync_seconds=resync_seconds,
                                     on_change=on_change, optional=True, tolerate=(403, 404))
                      for plural in (WORKLOADS, FLAVORS)}
        self.mirrors = [self.nodes, self.pods, *self.workloads.values(), self.queues, self.priority_classes,
                        *self.dra.values(), *self.kueue.values()]
        #: (namespace, name) -> (pod uid, node) for pods bound by us, not yet seen bound
        self._bound: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        for mirror in self.mirrors:
            mirror.start()

    def stop(self) -> None:
        for mirror in self.mirrors:
            mirror.stop()

    def synced(self) -> bool:
        return all(m.synced.is_set() for m in self.mirrors)

    def lists(self) -> int:
        """Full LISTs made so far (the initial ones and resyncs)."""
        return sum(m.lists for m in self.mirrors)

    # -- what a cycle reads ------------------------------------------------------------

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.nodes.items()

    def list_workloads(self) -> list[tuple[str, dict[str, Any]]]:
        return [(kind, obj) for kind, mirror in self.workloads.items() for obj in mirror.items()]

    def list_queues(self) -> list[dict[str, Any]]:
        return self.queues.items()

    def list_dra(self) -> DraObjects:
        return DraObjects(self.dra[SLICES].items(), self.dra[CLAIMS].items(), self.dra[CLASSES].items())

    def list_kueue(self) -> KueueObjects | None:
        """None while Kueue's CRDs are not served (or not readable)."""
        if any(m.absent for m in self.kueue.values()):
            return None
        return KueueObjects(self.kueue[WORKLOADS].items(), self.kueue[FLAVORS].items())

    def list_pods(self) -> list[dict[str, Any]]:
        pods = self.pods.items()
        with self._lock:
            if not self._bound:
                return pods
            out = []
            for pod in pods:
                meta = pod["metadata"]
                assumed = self._bound.get((meta.get("namespace", ""), meta.get("name", "")))
                if assumed is not None and assumed[0] == meta.get("uid"):
                    if (pod.get("spec") or {}).get("nodeName"):
                        del self._bound[(meta.get("namespace", ""), meta.get("name", ""))]  # seen bound
                    else:
                        pod = {**pod, "spec": {**(pod.get("spec") or {}), "nodeName": assumed[1]}}
                out.append(pod)
            return out

    # -- the operator's own writes -----------------------------------------------------

    def wrote_workload(self, kind: str, obj: dict[str, Any]) -> None:
        mirror = self.workloads.get(kind)
        if mirror is not None and obj.get("metadata"):
            mirror.put(obj)

    def wrote_pod(self, obj: dict[str, Any]) -> None:
        if obj.get("metadata"):
            self.pods.put(obj)

    def wrote_kueue_workload(self, obj: dict[str, Any]) -> None:
        if obj.get("metadata"):
            self.kueue[WORKLOADS].put(obj)

    def wrote_claim(self, obj: dict[str, Any]) -> None:
        if obj.get("metadata"):
            self.dra[CLAIMS].put(obj)

    def bound(self, namespace: str, name: str, uid: str, node: str) -> None:
        with self._lock:
            self._bound[(namespace, name)] = (uid, node)

    def deleted(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            self._bound.pop((namespace, name), None)
        with self.pods.lock:
            held = self.pods.objects.get(uid)
            if held is not None:
                # on its way out: it keeps its room until the watch shows it gone
                meta = {**held["metadata"], "deletionTimestamp": held["metadata"].get("deletionTimestamp")
                        or "1970-01-01T00:00:00Z"}
                self.pods.objects[uid] = {**held, "metadata": meta}


def _custom_list(custom: Any, plural: str) -> Callable[..., Any]:
    def call(**kwargs: Any) -> Any:
        return custom.list_cluster_custom_object(GROUP, VERSION, plural, **kwargs)
    return call


class CachedKube:
    """The Kube port reading from a :class:`WatchCache`; every write goes to the API
    server and, once it succeeded, into the cache (the assumed overlay)."""

    def __init__(self, kube: Kube, cache: WatchCache) -> None:
        self.kube = kube
        self.cache = cache
        self._namespaces: tuple[float, dict[str, dict[str, str]]] | None = None

    def __getattr__(self, name: str) -> Any:  # leases, events, ConfigMaps, Services, dry runs
        return getattr(self.kube, name)

    def _synced(self) -> None:
        # an empty mirror would show every node free: never decide on one
        if not self.cache.synced():
            errors = "; ".join(m.error for m in self.cache.mirrors if m.error)
            raise KubeError("the watch cache is not synced yet" + (f" ({errors})" if errors else ""))

    def list_nodes(self) -> list[dict[str, Any]]:
        self._synced()
        return self.cache.list_nodes()

    def list_pods(self) -> list[dict[str, Any]]:
        self._synced()
        return self.cache.list_pods()

    def list_workloads(self) -> list[tuple[str, dict[str, Any]]]:
        self._synced()
        return self.cache.list_workloads()

    def list_queues(self) -> list[dict[str, Any]]:
        self._synced()
        return self.cache.list_queues()

    def list_priority_classes(self) -> list[dict[str, Any]]:
        self._synced()
        return self.cache.priority_classes.items()

    def list_dra(self) -> DraObjects:
        self._synced()
        return self.cache.list_dra()

    @property
    def dra(self) -> DraApi:
        """Claims written go into the cache at once, like pods (the assumed overlay)."""
        return DraApi(self.kube.custom, wrote=self.cache.wrote_claim)

    def list_kueue(self) -> KueueObjects | None:
        self._synced()
        return self.cache.list_kueue()

    @property
    def kueue(self) -> KueueApi:
        """Kueue Workloads written go into the cache at once (the assumed overlay)."""
        return KueueApi(self.kube.custom, wrote=self.cache.wrote_kueue_workload)

    def list_namespace_labels(self) -> dict[str, dict[str, str]]:
        """Namespace labels, read at most every 10 s (only queues' namespaceSelector needs them)."""
        now = time.monotonic()
        if self._namespaces is None or now - self._namespaces[0] > 10.0:
            self._namespaces = (now, self.kube.list_namespace_labels())
        return self._namespaces[1]

    def patch_queue_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        obj = self.kube.patch_queue_status(name, status)
        if obj.get("metadata"):
            self.cache.queues.put(obj)
        return obj

    def create_pod(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        pod, fresh = self.kube.create_pod(body)
        self.cache.wrote_pod(pod)
        return pod, fresh

    def bind_pod(self, namespace: str, name: str, node: str, pod_uid: str) -> None:
        self.kube.bind_pod(namespace, name, node, pod_uid)
        self.cache.bound(namespace, name, pod_uid, node)

    def delete_pod(self, namespace: str, name: str, uid: str = "", grace_period_seconds: int | None = None) -> None:
        self.kube.delete_pod(namespace, name, uid, grace_period_seconds)
        if uid:
            self.cache.deleted(namespace, name, uid)

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        obj = self.kube.patch_status(kind, namespace, name, status)
        self.cache.wrote_workload(kind, obj)
        return obj

