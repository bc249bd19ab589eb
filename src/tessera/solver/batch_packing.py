"""Node-level packing of a batch of single-pod workloads with exact per-device capacity.

The pool-level :class:`~tessera.solver.PlacementModel` forgets which device of a node has
how much room, so it cannot pack GPU-sharing pods (fractions of one GPU) well, and its
fragmentation term (a charge per opened node) knows nothing of the pods still to come.
This model is the batch step of the FGD protocol: every pod of the batch picks one of a
few candidate (node, device) *options* chosen by the caller, each carrying the
fragmentation growth it causes (FGD's expected fragmented milli-GPU against the target
workload, measured on the node as it is before the batch).  The model maximises GPU milli
placed, then pods placed, then the least fragmentation growth; the capacity of every
device, CPU and memory is exact.

The per-option fragmentation is measured on each node alone, so two pods sharing a node
interact only through capacity; the caller evaluates the chosen plan exactly afterwards
(see :mod:`tessera.policies.cpsat_fgd`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from tessera.core import MILLI_PER_DEVICE
from tessera.solver.limits import SolveOutcome, SolverLimits, run_solver

#: objective units per GPU milli placed (placing GPU work dominates fragmentation)
ALLOC_WEIGHT = 100
#: objective units per pod placed (CPU-only pods count too; worth 10 milli-GPU)
START_WEIGHT = 1_000


@dataclass(frozen=True, slots=True)
class BatchPod:
    """One pod of the batch: what one replica asks for."""

    cpu_milli: int
    memory_mib: int
    #: devices used: 0 (CPU-only), 1 (whole GPU or a share), k whole GPUs
    gpu_count: int
    #: milli per device (1000 = whole GPUs)
    gpu_milli: int

    @property
    def shares_gpu(self) -> bool:
        return self.gpu_count == 1 and 0 < self.gpu_milli < MILLI_PER_DEVICE

    @property
    def total_gpu_milli(self) -> int:
        return self.gpu_count * self.gpu_milli


@dataclass(frozen=True, slots=True)
class BatchNode:
    """Free capacity of one candidate node before the batch."""

    cpu_milli: int
    memory_mib: int
    #: free milli per device, by device index
    devices_milli: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PodOption:
    """Pod ``pod`` on node ``node`` (and device ``device`` for a share, else -1)."""

    pod: int
    node: int
    device: int
    #: fragmentation growth of this choice alone, in milli-GPU (negative: it shrinks)
    penalty_milli: int


@dataclass(slots=True)
class BatchPackingSolution:
    outcome: SolveOutcome
    #: pod -> (node, devices) of the solution; pods left out are not placed
    chosen: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)


def option_value(pod: BatchPod, penalty_milli: int) -> int:
    """Objective units of placing ``pod`` at a fragmentation growth of ``penalty_milli``."""
    return ALLOC_WEIGHT * pod.total_gpu_milli + START_WEIGHT - penalty_milli


class BatchPackingModel:
    """Which option (if any) each pod of the batch takes: exact per-device packing."""

    def __init__(self, pods: Sequence[BatchPod], nodes: Sequence[BatchNode], options: Sequence[PodOption]) -> None:
        self.pods = list(pods)
        self.nodes = list(nodes)
        self.options = list(options)
        self.model = cp_model.CpModel()
        #: option index -> taken?
        self.take: dict[int, cp_model.IntVar] = {}
        #: (node, device) -> the device goes whole to a multi- or whole-GPU pod
        self.whole: dict[tuple[int, int], cp_model.IntVar] = {}
        self.hint_objective = 0
        self._by_pod: dict[int, list[int]] = defaultdict(list)
        self._by_node: dict[int, list[int]] = defaultdict(list)
        for i, option in enumerate(self.options):
            self.take[i] = self.model.new_bool_var(f"take[{option.pod},{option.node},{option.device}]")
            self._by_pod[option.pod].append(i)
            self._by_node[option.node].append(i)
        self._add_one_option_per_pod()
        self._add_node_capacity()
        self._add_device_capacity()
        self._set_objective()

    def _add_one_option_per_pod(self) -> None:
        for indices in self._by_pod.values():
            self.model.add_at_most_one(self.take[i] for i in indices)

    def _add_node_capacity(self) -> None:
        """CPU and memory of each node."""
        for n, indices in self._by_node.items():
            node = self.nodes[n]
            cpu = [(self.pods[self.options[i].pod].cpu_milli, self.take[i]) for i in indices]
            memory = [(self.pods[self.options[i].pod].memory_mib, self.take[i]) for i in indices]
            if sum(c for c, _ in cpu) > node.cpu_milli:
                self.model.add(sum(c * v for c, v in cpu) <= node.cpu_milli)
            if sum(m for m, _ in memory) > node.memory_mib:
                self.model.add(sum(m * v for m, v in memory) <= node.memory_mib)

    def _add_device_capacity(self) -> None:
        """Shares fit their device; whole-GPU pods take as many fully free devices as they ask."""
        for n, indices in self._by_node.items():
            node = self.nodes[n]
            whole_pods = [i for i in indices if not self.pods[self.options[i].pod].shares_gpu
                          and self.pods[self.options[i].pod].gpu_count]
            if whole_pods:
                for d, free in enumerate(node.devices_milli):
                    if free >= MILLI_PER_DEVICE:
                        self.whole[n, d] = self.model.new_bool_var(f"whole[{n},{d}]")
                self.model.add(
                    sum(self.pods[self.options[i].pod].gpu_count * self.take[i] for i in whole_pods)
                    == sum(v for (m, _), v in self.whole.items() if m == n)
                )
            shares: dict[int, list[int]] = defaultdict(list)
            for i in indices:
                if self.pods[self.options[i].pod].shares_gpu:
                    shares[self.options[i].device].append(i)
            for d, free in enumerate(node.devices_milli):
                terms = [(self.pods[self.options[i].pod].gpu_milli, self.take[i]) for i in shares.get(d, [])]
                whole = self.whole.get((n, d))
                if whole is not None:
                    terms.append((MILLI_PER_DEVICE, whole))
                if sum(c for c, _ in terms) > free:
                    self.model.add(sum(c * v for c, v in terms) <= free)

    def _set_objective(self) -> None:
        self.model.maximize(sum(
            option_value(self.pods[o.pod], o.penalty_milli) * self.take[i] for i, o in enumerate(self.options)
        ))

    def add_hint(self, choice: Mapping[int, tuple[int, tuple[int, ...]]]) -> None:
        """Hint a complete plan: pod -> (node, devices), every other variable hinted too."""
        taken: dict[int, int] = {}
        for i, o in enumerate(self.options):
            placed = choice.get(o.pod)
            if placed is None or placed[0] != o.node:
                continue
            if self.pods[o.pod].shares_gpu and placed[1] != (o.device,):
                continue
            taken.setdefault(o.pod, i)
        whole_used = {(n, d) for p, (n, devices) in choice.items()
                      if not self.pods[p].shares_gpu and p in taken for d in devices}
        hint = self.model.proto.solution_hint
        for i, var in self.take.items():
            hint.vars.append(var.index)
            hint.values.append(int(taken.get(self.options[i].pod) == i))
        for key, var in self.whole.items():
            hint.vars.append(var.index)
            hint.values.append(int(key in whole_used))
        self.hint_objective = sum(option_value(self.pods[self.options[i].pod], self.options[i].penalty_milli)
                                  for i in taken.values())

    def solve(self, limits: SolverLimits) -> BatchPackingSolution:
        solver, outcome = run_solver(self.model, limits)
        solution = BatchPackingSolution(outcome)
        if not outcome.has_solution:
            return solution
        free_whole: dict[int, list[int]] = defaultdict(list)
        for (n, d), var in sorted(self.whole.items()):
            if solver.boolean_value(var):
                free_whole[n].append(d)
        for i, o in enumerate(self.options):
            if not solver.boolean_value(self.take[i]):
                continue
            pod = self.pods[o.pod]
            if pod.shares_gpu:
                devices: tuple[int, ...] = (o.device,)
            elif pod.gpu_count:
                devices = tuple(free_whole[o.node][: pod.gpu_count])
                del free_whole[o.node][: pod.gpu_count]
            else:
                devices = ()
            solution.chosen[o.pod] = (o.node, devices)
        return solution

    @property
    def size(self) -> dict[str, int]:
        return {"batch_pods": len(self.pods), "batch_options": len(self.options), "batch_nodes": len(self._by_node)}


__all__ = ["ALLOC_WEIGHT", "START_WEIGHT", "BatchNode", "BatchPackingModel", "BatchPackingSolution", "BatchPod",
           "PodOption", "option_value"]
