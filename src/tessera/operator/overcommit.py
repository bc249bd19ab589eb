"""Nodes over their allocatable: another scheduler bound to the same devices.

Tessera counts every bound pod, whoever bound it. What it cannot see is a pod another
scheduler (kube-scheduler on shared nodes) has decided but not yet bound: when both bind to
the same devices at once, the node holds more than it has. A kubelet would reject the pod
that reaches it second (``OutOf<resource>``); Tessera does not wait for that. Each cycle it
checks every node's bound accelerator requests against its allocatable and, on a node over
it, steps back: the Tessera workload whose pod there was created last is rolled back (its
pods deleted, ``Scheduled=False`` with reason ``PlacementRolledBack`` and a message naming the
node, a Warning Event) and placed again; then the next, until the node fits. Only Tessera's own
pods are touched: a node over its allocatable from other pods alone is reported, never
repaired by deleting someone else's pods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from tessera.core import MILLI_PER_DEVICE, ReplicaDemand
from tessera.operator.views import NodeView, PodView, WorkloadView


def step_back(views: Iterable[WorkloadView], bound: Iterable[PodView], nodes: Mapping[str, NodeView],
              demand: Callable[[PodView, NodeView], ReplicaDemand]) -> dict[str, str]:
    """Roll back the latest Tessera workloads on nodes over their accelerator allocatable.

    ``views`` are the reconciled workloads (their ``pods`` are Tessera's bound pods),
    ``bound`` every pod bound to a node. Sets ``rollback_reason`` on the workloads it steps
    back and returns node -> a warning for nodes still over it (from pods that are not Tessera's).
    ``demand``: what a pod takes from its node (the state builder's memoised one, so a
    steady cycle over thousands of pods parses none).
    """
    used: dict[str, int] = {}
    for pod in bound:
        node = nodes.get(pod.node_name)
        if node is not None and not pod.finished:
            used[pod.node_name] = used.get(pod.node_name, 0) + demand(pod, node).accelerators * MILLI_PER_DEVICE
    # against what the kubelet enforces (the resource's allocatable), not Tessera's own count
    # (a label may say 8 GPUs where a time-slicing device plugin advertises 32)
    capacity_of = {name: (nodes[name].allocatable_devices or 0) * MILLI_PER_DEVICE for name in used
                   if nodes[name].allocatable_devices is not None}
    over = {name: milli for name, milli in used.items() if name in capacity_of and milli > capacity_of[name]}
    warnings: dict[str, str] = {}
    if not over:
        return warnings
    ours: dict[str, list[tuple[str, PodView, WorkloadView]]] = {}
    for view in views:
        if view.workload is None or view.rollback_reason:
            continue
        for pod in view.pods:
            if pod.node_name in over:
                created = str((pod.raw.get("metadata") or {}).get("creationTimestamp") or "")
                ours.setdefault(pod.node_name, []).append((created, pod, view))
    for name in sorted(over):
        capacity = capacity_of[name]
        # the latest first: the pod a kubelet would most likely have refused
        for _, _, view in sorted(ours.get(name, []), key=lambda t: (t[0], t[1].name), reverse=True):
            if used[name] <= capacity:
                break
            if view.rollback_reason:
                continue
            view.rollback_reason = (
                f"node {name} holds {used[name] / MILLI_PER_DEVICE:g} accelerators for its {capacity // MILLI_PER_DEVICE} "
                "(another scheduler bound pods to the same devices); this workload's pods were the latest "
                "there and are placed again")
            for pod in view.pods:  # all its pods go, on every node
                if pod.node_name in used and (target := nodes.get(pod.node_name)) is not None:
                    used[pod.node_name] -= demand(pod, target).accelerators * MILLI_PER_DEVICE
        if used[name] > capacity:
            warnings[name] = (f"holds {used[name] / MILLI_PER_DEVICE:g} accelerators for its "
                              f"{capacity // MILLI_PER_DEVICE} from pods Tessera does not manage")
    return warnings
