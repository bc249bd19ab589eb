"""CP-SAT models (OR-Tools) as classes with named variable containers and one ``_add_*``
method per constraint family.  Imports only :mod:`tessera.core` and ``ortools``.

* :class:`PlacementModel` — which pending gangs start, on which type, in which node pools;
* :class:`PreemptionModel` — which lower-priority work shrinks or is evicted for one gang;
* :class:`RoundModel` — every job's (type, replica count) for the next round (round mode);
* :func:`build_instance` / :class:`Packer` — the pool decomposition around them;
* :class:`BatchPackingModel` — node-level, per-device packing of a batch of single pods
  (the FGD protocol's batch step, options and fragmentation penalties given by the caller).
"""

from tessera.solver.batch_packing import (
    BatchNode,
    BatchPackingModel,
    BatchPackingSolution,
    BatchPod,
    PodOption,
)
from tessera.solver.hint import greedy_units, units_from_placements
from tessera.solver.instance import (
    GangSpec,
    NodeShape,
    ObjectiveWeights,
    PlacementInstance,
    Pool,
    build_instance,
    build_pools,
    node_fullness,
    replicas_fitting,
    restrict_candidates,
    shape_of,
    unit_replicas,
)
from tessera.solver.limits import SolveOutcome, SolverLimits, run_solver
from tessera.solver.moves import MoveCandidate, MoveChoice, MoveModel, move_candidates
from tessera.solver.packing import Packer, PackResult, pool_counts
from tessera.solver.placement import PlacementModel, PlacementSolution
from tessera.solver.preemption import (
    PreemptionChoice,
    PreemptionModel,
    VictimSpec,
    candidate_nodes,
    lost_work_seconds,
    victims_on,
)
from tessera.solver.quota import QueueState, QuotaTerms
from tessera.solver.rounds import RoundChoice, RoundConfig, RoundJob, RoundModel, config_value

__all__ = [
    "BatchNode",
    "BatchPackingModel",
    "BatchPackingSolution",
    "BatchPod",
    "GangSpec",
    "MoveCandidate",
    "MoveChoice",
    "MoveModel",
    "NodeShape",
    "ObjectiveWeights",
    "PackResult",
    "Packer",
    "PlacementInstance",
    "PlacementModel",
    "PlacementSolution",
    "PodOption",
    "Pool",
    "PreemptionChoice",
    "PreemptionModel",
    "QueueState",
    "QuotaTerms",
    "RoundChoice",
    "RoundConfig",
    "RoundJob",
    "RoundModel",
    "SolveOutcome",
    "SolverLimits",
    "VictimSpec",
    "build_instance",
    "build_pools",
    "candidate_nodes",
    "config_value",
    "greedy_units",
    "lost_work_seconds",
    "move_candidates",
    "node_fullness",
    "pool_counts",
    "replicas_fitting",
    "restrict_candidates",
    "run_solver",
    "shape_of",
    "unit_replicas",
    "units_from_placements",
    "victims_on",
]
