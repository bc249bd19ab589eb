"""Property: whatever a policy proposes, the plan the engine accepts is safe to carry out.

Random clusters (nodes with devices, cpu and memory, some not ready; running gangs with
whole or shared devices, some on deleted nodes) and random plans mixing placements,
preemptions, resizes and migrations, many of them invalid (unknown nodes, disallowed
types, too big, wrong replica counts, stale replica indices).  The accepted plan is
applied to the snapshot here, independently of the validator, and every node must stay
within its capacity; gangs start whole or not at all; the validator's ledger must be
exactly the snapshot's capacity minus what the accepted plan runs (so a rejected action
leaves nothing behind).  Derandomized and without an example database: CI runs the same
examples every time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.core import (
    MILLI_PER_DEVICE,
    AcceleratorOption,
    Allocation,
    CapacityError,
    CapacityLedger,
    ClusterSnapshot,
    Migration,
    Node,
    Placement,
    Plan,
    Preemption,
    ReplicaAssignment,
    ReplicaDemand,
    ReplicaPlacement,
    Resize,
    Spread,
    Topology,
    Workload,
    WorkloadKind,
    validate_plan,
)

TYPES = ("H100", "A100")
GHOST = "ns/ghost"  # neither running nor pending
NOWHERE = "nowhere"  # not a node


@dataclass(frozen=True)
class Scenario:
    snapshot: ClusterSnapshot
    pending: tuple[Workload, ...]
    plan: Plan


def _workload(draw: st.DrawFn, key: str) -> Workload:
    if draw(st.integers(0, 3)) == 0:
        demand = ReplicaDemand(accelerators=0, shared_milli=draw(st.sampled_from([250, 300, 500, 700])),
                               cpu_milli=draw(st.sampled_from([0, 1000])), memory_mib=draw(st.sampled_from([0, 4096])))
    else:
        demand = ReplicaDemand(accelerators=draw(st.sampled_from([0, 1, 2, 4, 4])),
                               cpu_milli=draw(st.sampled_from([0, 1000, 8000])),
                               memory_mib=draw(st.sampled_from([0, 4096, 32768])))
    lo = draw(st.integers(0, 2))
    hi = draw(st.integers(max(1, lo), 3))
    types: list[str] = []
    if draw(st.booleans()):
        types = draw(st.lists(st.sampled_from([*TYPES, "MI300X"]), unique=True, min_size=1, max_size=2))
    return Workload(
        key=key,
        kind=WorkloadKind.TRAINING,
        demand=demand,
        min_replicas=lo,
        max_replicas=hi,
        options=tuple(AcceleratorOption(t) for t in types),
        allow_mixed_types=draw(st.booleans()),
        spread=draw(st.sampled_from([Spread.NONE, Spread.NONE, Spread.NODE, Spread.ZONE])),
        preemptible=draw(st.sampled_from([True, True, False])),
    )


def _assignment(draw: st.DrawFn, names: Sequence[str]) -> ReplicaAssignment:
    node = draw(st.sampled_from([*names, *names, NOWHERE]))
    devices: tuple[int, ...] = ()
    if draw(st.integers(0, 4)) == 0:
        devices = tuple(draw(st.lists(st.integers(0, 8), max_size=4)))
    return ReplicaAssignment(node, devices)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    nodes = []
    for i in range(draw(st.integers(1, 3))):
        count = draw(st.sampled_from([0, 1, 2, 4, 8, 8]))
        nodes.append(Node(
            name=f"n{i}",
            accelerator_type=draw(st.sampled_from(TYPES)) if count else None,
            accelerator_count=count,
            cpu_milli=draw(st.sampled_from([2000, 16000, 64000])),
            memory_mib=draw(st.sampled_from([8192, 65536, 262144])),
            topology=Topology(zone=draw(st.sampled_from(["z1", "z2"]))),
            ready=draw(st.sampled_from([True, True, True, True, True, False])),
        ))
    names = [n.name for n in nodes]

    # running gangs, placed for real on a scratch ledger so the snapshot is within capacity
    scratch = CapacityLedger.empty(nodes)
    allocations = []
    for i in range(draw(st.integers(0, 5))):
        workload = _workload(draw, f"ns/run{i}")
        replicas = []
        for r in range(draw(st.integers(workload.gang_min, workload.max_replicas))):
            fitting = [n.name for n in nodes if workload.allows(n.accelerator_type)] or names
            node = draw(st.sampled_from([*fitting, *fitting, "gone"]))  # "gone": a deleted node
            if node == "gone":
                replicas.append(ReplicaPlacement(r, node, None, ()))
                continue
            try:
                devices = scratch.take(node, workload.demand)
            except CapacityError:
                break
            replicas.append(ReplicaPlacement(r, node, scratch.nodes[node].accelerator_type, devices))
        else:
            allocations.append(Allocation(workload, tuple(replicas)))
            continue
        for rp in replicas:  # did not fit: this one is not running
            if rp.node != "gone":
                scratch.give_back(rp.node, workload.demand, rp.devices)
    if draw(st.booleans()):  # a full cluster: new work fits only where the plan makes room
        for node in nodes:
            whole, cpu = scratch.whole_free(node.name), scratch.cpu_free(node.name)
            if whole or cpu:
                filler = Workload(f"ns/full-{node.name}", WorkloadKind.TRAINING,
                                  ReplicaDemand(accelerators=whole, cpu_milli=cpu), preemptible=False)
                devices = scratch.take(node.name, filler.demand)
                allocations.append(Allocation(filler, (ReplicaPlacement(0, node.name, node.accelerator_type, devices),)))
    # pending work, often shaped like running work so that it fits where that work leaves
    pending = []
    for i in range(draw(st.sampled_from([1, 1, 2, 3, 0]))):
        workload = _workload(draw, f"ns/new{i}")
        if allocations and draw(st.booleans()):
            like = draw(st.sampled_from(allocations)).workload
            workload = replace(like, key=workload.key, min_replicas=1, max_replicas=1, options=(),
                               spread=Spread.NONE, preemptible=True)
        pending.append(workload)

    running = [a.key for a in allocations if not a.key.startswith("ns/full-")]
    keys = [w.key for w in pending]
    # mostly the right kind of workload for each action, sometimes the wrong one
    running_keys = st.sampled_from([*running, *running, *running, *keys, GHOST])
    pending_keys = st.sampled_from([*keys, *keys, *keys, *running, GHOST])
    replicas_of = {a.key: {rp.replica: rp.node for rp in a.replicas} for a in allocations}
    freed: list[str] = []  # nodes where the plan frees room: where a policy would place

    def replica_of(key: str) -> int:
        return draw(st.sampled_from([*replicas_of.get(key, {}), *replicas_of.get(key, {}), 3]))

    def resize() -> Resize:
        key = draw(running_keys)
        remove = [replica_of(key) for _ in range(draw(st.integers(0, 2)))]
        freed.extend(replicas_of.get(key, {}).get(i, NOWHERE) for i in remove)
        add = tuple(_assignment(draw, names if draw(st.booleans()) else [NOWHERE])
                    for _ in range(draw(st.integers(0, 2))))
        return Resize(key, remove=tuple(remove), add=add)

    def preemption() -> Preemption:
        key = draw(running_keys)
        freed.extend(replicas_of.get(key, {}).values())
        return Preemption(key, "test", beneficiary=draw(st.sampled_from(["", *keys])),
                          after_failure=draw(st.booleans()))

    def migration() -> Migration:
        key = draw(running_keys)
        replica = replica_of(key)
        freed.append(replicas_of.get(key, {}).get(replica, NOWHERE))
        return Migration(key, replica, _assignment(draw, names))

    def placement() -> Placement:
        key = draw(pending_keys)
        workload = next((w for w in pending if w.key == key), None)
        valid = [1, 2] if workload is None else list(range(workload.gang_min, workload.max_replicas + 1))
        sizes = [*valid, *valid, *valid, 0, 4]
        targets = [*freed, *freed, *freed] or names
        replicas = tuple(
            ReplicaAssignment(draw(st.sampled_from(targets))) if draw(st.booleans()) else _assignment(draw, names)
            for _ in range(draw(st.sampled_from(sizes)))
        )
        return Placement(key, replicas)

    resizes = tuple(resize() for _ in range(draw(st.integers(0, 3))))
    preemptions = tuple(preemption() for _ in range(draw(st.integers(0, 2))))
    migrations = tuple(migration() for _ in range(draw(st.integers(0, 2))))
    placements = tuple(placement() for _ in range(draw(st.integers(0, 3))))
    plan = Plan(placements=placements, preemptions=preemptions, resizes=resizes, migrations=migrations)
    return Scenario(ClusterSnapshot(nodes, allocations), tuple(pending), plan)


# --- the accepted plan, applied independently of the validator ---------------------------

Replica = tuple[str, tuple[int, ...], ReplicaDemand]  # node, devices (() = any), demand


def apply(snapshot: ClusterSnapshot, pending: Sequence[Workload], plan: Plan) -> dict[str, list[Replica]]:
    """What runs on each node once ``plan`` is carried out."""
    running: dict[str, dict[object, Replica]] = {
        key: {rp.replica: (rp.node, rp.devices, a.workload.demand) for rp in a.replicas}
        for key, a in snapshot.allocations.items()
    }
    by_key = {w.key: w for w in pending}
    for pre in plan.preemptions:
        del running[pre.workload]
    for n, rs in enumerate(plan.resizes):
        demand = snapshot.allocations[rs.workload].workload.demand
        for idx in rs.remove:
            del running[rs.workload][idx]
        for k, a in enumerate(rs.add):
            running[rs.workload][("added", n, k)] = (a.node, a.devices, demand)
    for mig in plan.migrations:
        _, _, demand = running[mig.workload][mig.replica]
        running[mig.workload][mig.replica] = (mig.to.node, mig.to.devices, demand)
    for pl in plan.placements:
        assert pl.workload not in running
        running[pl.workload] = {k: (a.node, a.devices, by_key[pl.workload].demand) for k, a in enumerate(pl.replicas)}
    per_node: dict[str, list[Replica]] = {}
    for replicas in running.values():
        for replica in replicas.values():
            per_node.setdefault(replica[0], []).append(replica)
    return per_node


def devices_fit(count: int, replicas: Sequence[Replica]) -> bool:
    """Whether the replicas' device demands fit ``count`` devices (exact, small search)."""
    used = [0] * count
    loose_whole = 0
    loose_shared: list[int] = []
    for _, devices, demand in replicas:
        per_device = MILLI_PER_DEVICE if demand.accelerators else demand.shared_milli
        if not demand.needs_accelerator:
            continue
        if not devices:
            if demand.accelerators:
                loose_whole += demand.accelerators
            else:
                loose_shared.append(demand.shared_milli)
            continue
        expected = demand.accelerators or 1
        if len(devices) != expected or len(set(devices)) != expected:
            return False
        for i in devices:
            if not 0 <= i < count:
                return False
            used[i] += per_device
    if any(u > MILLI_PER_DEVICE for u in used):
        return False
    free = [MILLI_PER_DEVICE - u for u in used]
    whole_free = sum(1 for f in free if f == MILLI_PER_DEVICE)
    if loose_whole > whole_free:
        return False
    # whole devices are interchangeable: the loose whole demands take any of them
    rooms = sorted([f for f in free if f < MILLI_PER_DEVICE] + [MILLI_PER_DEVICE] * (whole_free - loose_whole))
    return _pack(sorted(loose_shared, reverse=True), rooms)


def _pack(items: list[int], rooms: list[int]) -> bool:
    if not items:
        return True
    first, rest = items[0], items[1:]
    tried = set()
    for i, room in enumerate(rooms):
        if room >= first and room not in tried:
            tried.add(room)
            rooms[i] -= first
            if _pack(rest, rooms):
                return True
            rooms[i] += first
    return False


def check(scenario: Scenario) -> None:
    snapshot, pending, plan = scenario.snapshot, scenario.pending, scenario.plan
    result = validate_plan(snapshot, pending, plan)
    accepted = result.accepted

    # every proposed action is either accepted or rejected, exactly once
    for kind in ("placements", "preemptions", "resizes", "migrations"):
        proposed = Counter(map(repr, getattr(plan, kind)))
        decided = Counter(map(repr, getattr(accepted, kind)))
        decided.update(repr(r.action) for r in result.rejected if repr(r.action) in proposed)
        assert decided == proposed, kind

    # gangs: whole, on usable nodes of allowed types, started at most once
    by_key = {w.key: w for w in pending}
    started = [pl.workload for pl in accepted.placements]
    assert len(started) == len(set(started))
    for pl in accepted.placements:
        workload = by_key[pl.workload]
        assert pl.workload not in snapshot.allocations
        assert workload.gang_min <= len(pl.replicas) <= workload.max_replicas
        for a in pl.replicas:
            assert snapshot.nodes[a.node].usable and workload.allows(snapshot.nodes[a.node].accelerator_type)
    preempted = {pre.workload for pre in accepted.preemptions}
    proposed_for = {pl.workload for pl in plan.placements}
    for pre in accepted.preemptions:
        # a preemption for a beneficiary placed in this plan stands only with that placement
        assert pre.beneficiary not in proposed_for or pre.beneficiary in started
    for rs in accepted.resizes:
        assert rs.workload not in preempted
    resized = Counter(rs.workload for rs in accepted.resizes)
    for key in resized:
        allocation = snapshot.allocations[key]
        count = len(allocation.replicas) + sum(len(rs.add) - len(rs.remove) for rs in accepted.resizes
                                               if rs.workload == key)
        assert allocation.workload.gang_min <= count <= allocation.workload.max_replicas

    # capacity: the accepted plan, carried out, over-commits no node
    per_node = apply(snapshot, pending, accepted)
    for name, node in snapshot.nodes.items():
        replicas = per_node.get(name, [])
        cpu = sum(d.cpu_milli for _, _, d in replicas)
        memory = sum(d.memory_mib for _, _, d in replicas)
        milli = sum(d.accelerator_milli for _, _, d in replicas)
        assert cpu <= node.cpu_milli, f"{name}: {cpu} cpu milli on {node.cpu_milli}"
        assert memory <= node.memory_mib, f"{name}: {memory} MiB on {node.memory_mib}"
        assert devices_fit(node.accelerator_count, replicas), f"{name}: devices over-committed"
        # the validator's ledger is exactly what is left: rejected actions left nothing behind
        free = result.ledger.free(name)
        assert free.cpu_milli == node.cpu_milli - cpu
        assert free.memory_mib == node.memory_mib - memory
        assert free.accelerator_milli == node.accelerator_count * MILLI_PER_DEVICE - milli
        assert min(free.devices_milli, default=0) >= 0


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_accepted_plans_never_overcommit_and_start_whole_gangs(scenario: Scenario) -> None:
    check(scenario)
