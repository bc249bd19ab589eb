"""Admission: a workload's pods are checked with the API server's own rules first.

Before a pending workload reaches the policy (so before any capacity is reserved for it
or anyone is preempted for it), the pod the operator would create for its first replica
is sent to the API server as a server-side dry run (``dryRun=All``): schema validation,
Pod Security Admission, ResourceQuota and webhooks all answer as they would for the real
create, and nothing is stored.  A refusal becomes ``Scheduled=False`` with reason
``InvalidSpec`` and the server's message, which names the field (e.g.
``spec.containers[0].resources.requests: Invalid value: "2x"``).  Why a dry run rather
than a validating webhook: it needs no certificate, no extra Deployment and no failure
policy decision, it checks exactly the pod Tessera will send (template plus what Tessera
adds), and it runs every admission plugin of the cluster, not only the schema.

Before the dry run, :func:`tessera.api.admission.workload_problems` checks what the API
server cannot see in a preserved template (typos such as ``resource:``), names whose child
objects would be invalid, and the spec's size.  The answer is kept per (uid,
metadata.generation): a new spec is checked again. An acceptance is also shared for
``ACCEPTED_TTL_SECONDS`` by workloads of the same kind in the same namespace whose pod
template, accelerators per replica and accelerator types are identical (a burst of
identical jobs costs one dry run, not one each); the pods differ only in the names Tessera
gives them, which :func:`~tessera.api.admission.workload_problems` checks. Refusals are
never shared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from tessera.api.admission import workload_problems
from tessera.operator import labels as L
from tessera.operator.kube import KubeError
from tessera.operator.pods import build_pod
from tessera.operator.ports import KubePort
from tessera.operator.state import NodeView, WorkloadView

log = logging.getLogger("tessera.operator.admission")

#: API statuses that say the pod itself is wrong (not that the API server is unwell)
REFUSALS = frozenset({400, 403, 409, 413, 422})
#: how long an acceptance is shared by identical templates (a namespace's quota, Pod
#: Security level or webhooks may change meanwhile)
ACCEPTED_TTL_SECONDS = 60.0


class Admission:
    def __init__(self, kube: KubePort, *, memory: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.memory = memory
        self.clock = clock
        self._answers: OrderedDict[tuple[str, int], str] = OrderedDict()
        #: template key -> when the API server last accepted a pod of that template
        self._accepted: OrderedDict[str, float] = OrderedDict()
        #: template key -> held while that template is being asked about
        self._asking: dict[str, threading.Lock] = {}
        self.dry_runs = 0
        self._lock = threading.Lock()  # checked from a pool of threads

    def problem(self, view: WorkloadView, nodes: Mapping[str, NodeView]) -> str:
        """Why the API server would refuse ``view``'s pods ("" when it accepts them).

        Raises KubeError when the server could not answer (retried next cycle).
        """
        key = (view.uid, view.generation)
        with self._lock:
            if key in self._answers:
                self._answers.move_to_end(key)
                return self._answers[key]
        answer = self._ask(view, nodes)
        with self._lock:
            self._answers[key] = answer
            while len(self._answers) > self.memory:
                self._answers.popitem(last=False)
        return answer

    def _ask(self, view: WorkloadView, nodes: Mapping[str, NodeView]) -> str:
        assert view.workload is not None
        # first what Tessera itself can tell (names its child objects could not take,
        # template typos the preserved schema lets through, an oversized spec)
        problems = workload_problems(view.raw)
        if problems:
            return "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        # the pod as it would be on a node of the first allowed type present (extended
        # resource and toleration included); any node when none is present
        allowed = set(view.workload.allowed_types)
        node = next((n for n in nodes.values() if n.node.accelerator_type and
                     (not allowed or n.node.accelerator_type in allowed)), None)
        try:
            body = build_pod(view, 0, node.node.name if node else "", node.node.accelerator_type if node else None,
                             node.discovery.resource_name if node else None, view.placement_generation)
        except Exception as err:  # a template Tessera itself cannot turn into a pod
            return f"the pod template cannot be turned into a pod: {type(err).__name__}: {err}"
        body["metadata"]["annotations"].pop(L.TARGET_NODE, None)
        template = template_key(view)
        with self._lock:
            asking = self._asking.setdefault(template, threading.Lock())
        # one question per template at a time: a burst of identical jobs checked on a pool of
        # threads waits for the first answer instead of sending one dry run each
        with asking:
            with self._lock:
                accepted_at = self._accepted.get(template)
                if accepted_at is not None and self.clock() - accepted_at < ACCEPTED_TTL_SECONDS:
                    return ""
            try:
                with self._lock:
                    self.dry_runs += 1
                self.kube.dry_run_pod(body)
            except KubeError as err:
                if err.status in REFUSALS:
                    return f"the API server refuses this workload's pods: {err}"
                raise
            with self._lock:
                self._accepted[template] = self.clock()
                self._accepted.move_to_end(template)
                while len(self._accepted) > self.memory:
                    self._accepted.popitem(last=False)
                if len(self._asking) > 2 * self.memory:  # forget idle locks (a holder keeps its own)
                    self._asking = {k: v for k, v in self._asking.items() if k in self._accepted or v.locked()}
        return ""


def template_key(view: WorkloadView) -> str:
    """What decides whether the API server accepts a workload's pods, besides their names."""
    assert view.model is not None
    spec = view.model.spec
    what = {"kind": view.kind, "namespace": view.namespace, "template": view.raw.get("spec", {}).get("template"),
            "accelerators": spec.acceleratorsPerReplica,
            "types": sorted(view.workload.allowed_types) if view.workload is not None else []}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
