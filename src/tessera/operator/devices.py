"""DRA devices in one cycle: who holds which, what Tessera may still claim, and the claim it writes.

Nodes whose accelerators are published as ResourceSlices (:mod:`tessera.api.dra`) are
counted in the snapshot like any other node: the number of devices in their pool.  What
those devices are doing is read from every ResourceClaim's ``status.allocation``, whoever
wrote it (kube-scheduler allocates a claim in its PreBind step, before the pod is bound, so
a claim is seen taken earlier than a pod would be):

* a claim reserved for a pod that a Tessera workload's allocation already counts adds
  nothing (its devices are that allocation's);
* every other allocated claim (another scheduler's pods, a claim allocated for a pod not yet
  bound, a Tessera pod on its way out) holds its devices on the node, as a foreign pod holds
  its extended resources;
* a device allocated in two claims (two schedulers chose it at the same moment) is a
  conflict: the Tessera workload whose claim came later is rolled back and placed again,
  as :mod:`tessera.operator.overcommit` does for extended resources.

Placing a pod on such a node (:func:`allocate`): the pod is created unbound and names its
claim ``<pod>-accelerators``; the claim is created (owned by the pod, so the garbage
collector deletes it with the pod), its ``status.allocation`` (the devices chosen, the node)
and ``reservedFor`` (the pod) are written with the claim's resourceVersion, and only then is
the pod bound.  A claim written meanwhile by someone else answers 409, which fails the bind
like any bind conflict: the decision is undone and retried next cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tessera.api import dra
from tessera.api.dra import DraObjects, DraPool
from tessera.core import Allocation, ReplicaDemand, ReplicaPlacement, Workload, WorkloadKind
from tessera.operator import labels as L
from tessera.operator.kube_base import KubeError
from tessera.operator.views import NodeView, WorkloadView

if TYPE_CHECKING:
    from tessera.operator.kube_dra import DraApi


@dataclass
class DraState:
    """The DRA side of one cycle: pools per node, devices taken, the claims by key."""

    pools: dict[str, DraPool] = field(default_factory=dict)
    #: (driver, pool) -> devices allocated in some claim (or chosen by this cycle)
    taken: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    #: "namespace/name" -> claim
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Tessera's claims whose pod is gone (the garbage collector may not run): deleted
    stale: list[dict[str, Any]] = field(default_factory=list)
    #: node -> warning for devices allocated twice in claims Tessera does not own
    warnings: dict[str, str] = field(default_factory=dict)

    def free(self, pool: DraPool) -> list[str]:
        taken = self.taken.get((pool.driver, pool.pool), set())
        return [d for d in pool.devices if d not in taken]

    def take(self, pool: DraPool, devices: Iterable[str]) -> None:
        self.taken.setdefault((pool.driver, pool.pool), set()).update(devices)


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def dra_state(objects: DraObjects | None) -> DraState:
    """Index ``objects``: the pools per node, and every device some claim holds."""
    if objects is None:
        return DraState()
    state = DraState(pools=dra.pools_by_node(objects.slices, objects.classes))
    for claim in objects.claims:
        state.claims[_key(claim)] = claim
        for driver, pool, device in dra.allocated(claim):
            state.taken.setdefault((driver, pool), set()).add(device)
    return state


def stale_claims(state: DraState, live_pods: set[str]) -> list[dict[str, Any]]:
    """Tessera's claims whose owner pod is not among ``live_pods`` (uids): deleted by the loop
    (the garbage collector does it too where it runs)."""
    out = []
    for claim in state.claims.values():
        meta = claim.get("metadata") or {}
        owners = [o.get("uid") for o in meta.get("ownerReferences") or [] if o.get("kind") == "Pod"]
        if (meta.get("labels") or {}).get(L.WORKLOAD_UID) and owners and not any(u in live_pods for u in owners) \
                and not meta.get("deletionTimestamp"):
            out.append(claim)
    return out


def claim_holds(state: DraState, counted: set[str], nodes: Mapping[str, NodeView]) -> list[Allocation]:
    """What allocated claims hold beyond Tessera's counted pods (``counted``: their uids)."""
    # only nodes counted through their pool (an extended resource wins; no DeviceClass: none)
    where = {(p.driver, p.pool): node for node, p in state.pools.items()
             if node in nodes and nodes[node].dra is not None and nodes[node].node.accelerator_count}
    out: list[Allocation] = []
    for key, claim in sorted(state.claims.items()):
        if any(uid in counted for uid in dra.reserved_for(claim)):
            continue
        per_node: dict[str, int] = {}
        for driver, pool, _ in dra.allocated(claim):
            node = where.get((driver, pool))
            if node is not None:
                per_node[node] = per_node.get(node, 0) + 1
        for node, count in sorted(per_node.items()):
            workload = Workload(key=f"claim:{key}@{node}", kind=WorkloadKind.POD,
                                demand=ReplicaDemand(accelerators=count, cpu_milli=0, memory_mib=0), preemptible=False)
            out.append(Allocation(workload, (ReplicaPlacement(0, node, nodes[node].node.accelerator_type),)))
    return out


def conflicts(state: DraState, views: Iterable[WorkloadView]) -> dict[str, str]:
    """Devices allocated in two claims: the Tessera workload whose claim is the later one is
    rolled back (``rollback_reason`` set).  Returns node -> warning for conflicts between
    claims Tessera does not own (reported, never repaired by deleting others' pods)."""
    by_device: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for claim in state.claims.values():
        for held in dra.allocated(claim):
            by_device.setdefault(held, []).append(claim)
    clashes = {d: cs for d, cs in by_device.items() if len(cs) > 1}
    if not clashes:
        return {}
    owner = {pod.uid: view for view in views if view.workload is not None for pod in view.pods}
    node_of = {(p.driver, p.pool): node for node, p in state.pools.items()}
    warnings: dict[str, str] = {}
    for (driver, pool, device), claims in sorted(clashes.items()):
        node = node_of.get((driver, pool), pool)
        ordered = sorted(claims, key=lambda c: (str(c["metadata"].get("creationTimestamp", "")), _key(c)))
        for late in ordered[1:]:
            view = next((owner[u] for u in dra.reserved_for(late) if u in owner), None)
            if view is None:
                warnings[node] = f"device {device} of {driver}/{pool} is allocated in more than one claim not Tessera's"
                continue
            if not view.rollback_reason:
                view.rollback_reason = (
                    f"device {device} on node {node} was also allocated to claim {_key(ordered[0])} "
                    "(another scheduler chose it at the same time); this workload's claim was the later one "
                    "and it is placed again")
    return warnings


def counted_pods(views: Iterable[WorkloadView]) -> set[str]:
    """Uids of the pods whose devices a workload allocation counts (not rolled back, not
    being deleted by this cycle)."""
    out: set[str] = set()
    for view in views:
        if view.workload is None or view.rollback_reason:
            continue
        going = {p.uid for p in view.to_delete}
        out.update(p.uid for p in view.pods if p.uid not in going)
    return out


def allocate(kube: DraApi, state: DraState, view: WorkloadView, pod: Mapping[str, Any], node: NodeView,
             count: int) -> None:
    """Create the claim of ``pod`` (created unbound on ``node``) and allocate ``count`` of
    the node's free devices to it, reserved for the pod; KubeError when it cannot be done
    (no free device, the claim taken meanwhile: the bind fails and is retried)."""
    pool = node.dra
    assert pool is not None
    meta = pod["metadata"]
    labels = {L.WORKLOAD: view.name, L.WORKLOAD_UID: view.uid, L.REPLICA: (meta.get("labels") or {}).get(L.REPLICA, "")}
    claim, _ = kube.create_claim(dra.claim_body(pod, pool.device_class, count, labels))
    found = claim.get("metadata") or {}
    if meta["uid"] not in [o.get("uid") for o in found.get("ownerReferences") or []]:
        if (found.get("labels") or {}).get(L.WORKLOAD_UID) != view.uid:
            raise KubeError(f"a resourceclaim named {found.get('name')} that Tessera did not create for this "
                            f"{view.kind} exists in namespace {meta['namespace']}; delete or rename it", 409)
        # the claim of an earlier pod of that name: gone with that pod, or removed here
        kube.delete_claim(meta["namespace"], found.get("name", ""), found.get("uid", ""))
        raise KubeError(f"claim {found.get('name')} of an earlier pod still exists; retrying next cycle")
    held = dra.allocated(claim)
    if held:
        if meta["uid"] in dra.reserved_for(claim):
            return  # allocated before a restart: done
        raise KubeError(f"claim {claim['metadata']['name']} is allocated but not to pod {meta['name']}")
    free = state.free(pool)
    if len(free) < count:
        raise KubeError(f"node {pool.node} has {len(free)} unclaimed {pool.driver} device(s), {count} needed "
                        "(claimed meanwhile by pods Tessera does not manage)")
    chosen = free[:count]
    state.take(pool, chosen)  # before the write: a failed write only makes this cycle careful
    kube.allocate_claim(meta["namespace"], claim["metadata"]["name"], claim["metadata"].get("resourceVersion", ""),
                        dra.allocation_status(pool, chosen, pod))


def pod_is_dra(node: NodeView | None) -> bool:
    """Whether a pod on ``node`` gets its accelerators through a claim."""
    return node is not None and node.dra is not None and node.discovery.resource_name is None \
        and node.node.accelerator_count > 0
