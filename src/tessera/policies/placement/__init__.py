"""Pod placement policies from the FGD paper (ATC'23): Random, DotProduct, GpuClustering,
GpuPacking, BestFit and FGD, vectorised over nodes (see :mod:`.arrays`)."""

from tessera.policies.placement.arrays import (
    Choice,
    NodeScorer,
    PlacementArrays,
    PodShape,
    ScoreCache,
    TargetArrays,
    TargetWorkload,
    choose_node,
    node_order,
)
from tessera.policies.placement.base import (
    NODE_ORDER_PARAM,
    TARGET_WORKLOAD_PARAM,
    TIE_BREAK_PARAM,
    PlacementPolicy,
    TieBreak,
)
from tessera.policies.placement.fgd import FgdPolicy, FragmentationMeter
from tessera.policies.placement.heuristics import (
    DotProductPolicy,
    GpuClusteringPolicy,
    GpuPackingPolicy,
    RandomFitPolicy,
    ResourceBestFitPolicy,
)

__all__ = [
    "NODE_ORDER_PARAM",
    "TARGET_WORKLOAD_PARAM",
    "TIE_BREAK_PARAM",
    "Choice",
    "DotProductPolicy",
    "FgdPolicy",
    "FragmentationMeter",
    "GpuClusteringPolicy",
    "GpuPackingPolicy",
    "NodeScorer",
    "PlacementArrays",
    "PlacementPolicy",
    "PodShape",
    "RandomFitPolicy",
    "ResourceBestFitPolicy",
    "ScoreCache",
    "TargetArrays",
    "TargetWorkload",
    "TieBreak",
    "choose_node",
    "node_order",
]
