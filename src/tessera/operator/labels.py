"""Labels, annotations and names the operator writes. Everything it needs after a restart
is recorded on the objects themselves (pods and workload status), never only in memory."""

from __future__ import annotations

PREFIX = "tessera.dev"
SCHEDULER_NAME = "tessera"
FIELD_MANAGER = "tessera-operator"
COMPONENT = "tessera-operator"

#: name of the workload a pod belongs to (human-friendly selector)
WORKLOAD = f"{PREFIX}/workload"
#: kind of that workload (ElasticJob or InferenceService)
WORKLOAD_KIND = f"{PREFIX}/workload-kind"
#: uid of that workload (the authoritative link; names can be reused)
WORKLOAD_UID = f"{PREFIX}/workload-uid"
#: replica index of the pod (0-based)
REPLICA = f"{PREFIX}/replica"
#: status.placementGeneration of the decision that created the pod
PLACEMENT_GENERATION = f"{PREFIX}/placement-generation"
#: annotation: the node the pod is to be bound to (written before binding)
TARGET_NODE = f"{PREFIX}/node"
#: annotation: the accelerator type of that node
ACCELERATOR_TYPE = f"{PREFIX}/accelerator-type"

FINALIZER = f"{PREFIX}/finalizer"


def pod_name(workload_name: str, replica: int) -> str:
    """Deterministic pod name: creating it twice gives AlreadyExists, never a second pod."""
    return f"{workload_name}-{replica}"


def selector(uid: str) -> str:
    """Label selector of one workload's pods."""
    return f"{WORKLOAD_UID}={uid}"
