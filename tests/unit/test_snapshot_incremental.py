"""A snapshot built from the previous one (``previous=``) equals one built from scratch.

The operator builds a snapshot every cycle from its watch cache and passes the last one,
so only the nodes that changed are counted again (issue: "building a decision's snapshot
costs what changed").  These tests change a random cluster step by step (nodes added,
removed and edited; allocations added, removed, moved, reordered; shared devices; devices
given or left for the ledger to choose) and compare every field with a fresh build.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from tessera.core import (
    Allocation,
    ClusterSnapshot,
    Node,
    ReplicaDemand,
    ReplicaPlacement,
    Workload,
    WorkloadKind,
)


def _node(i: int, cpu: int = 64_000) -> Node:
    return Node(name=f"n{i}", accelerator_type="H100" if i % 2 else "A100", accelerator_count=8,
                cpu_milli=cpu, memory_mib=512_000)


def _allocation(rng: random.Random, key: str, nodes: list[Node]) -> Allocation:
    shared = rng.random() < 0.2
    demand = ReplicaDemand(accelerators=0, shared_milli=rng.choice([250, 500])) if shared \
        else ReplicaDemand(accelerators=rng.choice([0, 1, 2, 4]), cpu_milli=rng.choice([0, 1000, 8000]),
                           memory_mib=rng.choice([0, 1024]))
    workload = Workload(key, WorkloadKind.TRAINING, demand, max_replicas=3)
    replicas = []
    for i in range(rng.randint(1, 3)):
        node = rng.choice(nodes).name if rng.random() > 0.05 else "gone-node"
        devices: tuple[int, ...] = ()
        if not shared and demand.accelerators and rng.random() < 0.3:
            devices = tuple(rng.sample(range(8), demand.accelerators))
        replicas.append(ReplicaPlacement(i, node, None, devices))
    return Allocation(workload, tuple(replicas), started_at_seconds=rng.random())


def _same(a: ClusterSnapshot, b: ClusterSnapshot) -> None:
    assert dict(a.nodes) == dict(b.nodes)
    assert dict(a.allocations) == dict(b.allocations)
    assert list(a.allocations) == list(b.allocations)
    for name in a.nodes:
        assert a.free(name) == b.free(name), name


@pytest.mark.parametrize("seed", range(20))
def test_a_snapshot_built_from_the_last_equals_a_fresh_one(seed: int) -> None:
    rng = random.Random(seed)
    nodes = [_node(i) for i in range(12)]
    allocations = {f"ns/w{i}": _allocation(rng, f"ns/w{i}", nodes) for i in range(30)}
    previous = ClusterSnapshot(nodes, allocations.values(), 1.0)
    counter = 30
    for _step in range(40):
        change = rng.randrange(7)
        if change == 0 and allocations:  # a workload ends
            allocations.pop(rng.choice(sorted(allocations)))
        elif change == 1:  # a workload starts
            counter += 1
            allocations[f"ns/w{counter}"] = _allocation(rng, f"ns/w{counter}", nodes)
        elif change == 2 and allocations:  # a replica moves (a new but equal object elsewhere)
            key = rng.choice(sorted(allocations))
            a = allocations[key]
            moved = replace(a.replicas[0], node=rng.choice(nodes).name, devices=())
            allocations[key] = replace(a, replicas=(moved, *a.replicas[1:]))
        elif change == 3:  # a node is edited, added or removed
            i = rng.randrange(len(nodes))
            what = rng.randrange(3)
            if what == 0:
                nodes[i] = _node(int(nodes[i].name[1:]), cpu=rng.choice([32_000, 64_000]))
            elif what == 1:
                counter += 1
                nodes.append(_node(1000 + counter))
            elif len(nodes) > 2:
                nodes.pop(i)
        elif change == 4:  # the same allocations as new, equal objects (the operator's views)
            allocations = {k: replace(a) for k, a in allocations.items()}
        elif change == 5 and len(allocations) > 1:  # order changes (device choice depends on it)
            keys = sorted(allocations)
            rng.shuffle(keys)
            allocations = {k: allocations[k] for k in keys}
        else:  # the same nodes as new, equal objects
            nodes = [replace(n) for n in nodes]
        fresh = ClusterSnapshot(nodes, allocations.values(), 2.0)
        reused = ClusterSnapshot(nodes, allocations.values(), 2.0, previous=previous)
        _same(fresh, reused)
        previous = reused


def test_only_changed_nodes_are_counted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [_node(i) for i in range(50)]
    demand = ReplicaDemand(accelerators=1)
    allocations = [Allocation(Workload(f"ns/w{i}", WorkloadKind.TRAINING, demand),
                              (ReplicaPlacement(0, f"n{i}", None),)) for i in range(50)]
    first = ClusterSnapshot(nodes, allocations)
    counted: list[str] = []
    from tessera.core import snapshot as module
    real_hold = module.CapacityLedger.hold

    def hold(self: object, node: str, *args: object) -> tuple[int, ...]:
        counted.append(node)
        return real_hold(self, node, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(module.CapacityLedger, "hold", hold)
    changed = [*allocations[:-1], Allocation(Workload("ns/new", WorkloadKind.TRAINING, demand),
                                             (ReplicaPlacement(0, "n3", None),))]
    second = ClusterSnapshot(nodes, changed, previous=first)
    assert sorted(set(counted)) == ["n3"]  # n49 lost its workload: counted again, holding nothing
    assert second.free("n49").whole_devices == 8
    assert second.free("n3").whole_devices == 6
    assert second.free("n10").whole_devices == 7
    _same(second, ClusterSnapshot(nodes, changed))


@pytest.mark.parametrize("seed", range(20))
def test_a_derived_snapshot_equals_a_fresh_one(seed: int) -> None:
    """``derive`` (copy-on-write: allocations removed and appended) equals a fresh build of
    the same list, field by field and in order, step after step of a lineage."""
    rng = random.Random(seed)
    nodes = [_node(i) for i in range(12)]
    allocations = {f"ns/w{i}": _allocation(rng, f"ns/w{i}", nodes) for i in range(20)}
    snapshot = ClusterSnapshot(nodes, allocations.values(), 1.0)
    counter = 20
    for step in range(40):
        removed = set(rng.sample(sorted(allocations), min(len(allocations), rng.randrange(3))))
        added = []
        for _ in range(rng.randrange(4)):
            counter += 1
            added.append(_allocation(rng, f"ns/w{counter}", nodes))
        if allocations and rng.random() < 0.2:  # a running workload replaced (same key, moved)
            key = rng.choice(sorted(allocations))
            added.append(_allocation(rng, key, nodes))
        kept = {k: a for k, a in allocations.items() if k not in removed and k not in {a.key for a in added}}
        allocations = {**kept, **{a.key: a for a in added}}
        child = snapshot.derive(added, removed, now_seconds=float(step))
        _same(child, ClusterSnapshot(nodes, allocations.values(), float(step)))
        assert child.now_seconds == float(step)
        delta = child.delta
        assert delta is not None and delta.parent == snapshot.version and delta.nodes_same
        assert delta.added == tuple(a.key for a in added)
        assert {a.key for a in delta.removed} == removed & set(snapshot.allocations) | (
            set(delta.added) & set(snapshot.allocations))
        changed = {n for n in child.nodes if child.free(n) != snapshot.free(n)}
        assert changed <= delta.nodes
        # the parent is unchanged (copy-on-write) and a later full rebuild agrees with the lineage
        assert snapshot.version != child.version
        snapshot = child
    _same(snapshot, ClusterSnapshot(nodes, allocations.values(), snapshot.now_seconds))


def test_a_previous_snapshot_records_the_delta() -> None:
    nodes = [_node(i) for i in range(4)]
    demand = ReplicaDemand(accelerators=1)
    a = Allocation(Workload("ns/a", WorkloadKind.TRAINING, demand), (ReplicaPlacement(0, "n1", None),))
    b = Allocation(Workload("ns/b", WorkloadKind.TRAINING, demand), (ReplicaPlacement(0, "n2", None),))
    first = ClusterSnapshot(nodes, [a])
    assert first.delta is None
    second = ClusterSnapshot(nodes, [b], previous=first)
    delta = second.delta
    assert delta is not None and delta.parent == first.version and delta.nodes_same
    assert delta.nodes == {"n1", "n2"} and delta.added == ("ns/b",)
    assert [r.key for r in delta.removed] == ["ns/a"]
    third = ClusterSnapshot([*nodes, _node(9)], [b], previous=second)
    assert third.delta is not None and not third.delta.nodes_same
