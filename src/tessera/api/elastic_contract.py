"""The contract between Tessera and an elastic training pod: env vars and a mounted plan.

Pure (no Kubernetes client): the operator turns these dicts into a pod spec and a
ConfigMap; ``docs/elastic.md`` is the user-facing description and
``examples/train_elastic.py`` a script that honours it.

Naming (the operator creates these objects):

* pod ``<job>-<replica>`` with ``hostname: <job>-<replica>`` and ``subdomain: <job>-headless``
  so it resolves as ``<job>-<replica>.<job>-headless.<namespace>.svc``;
* headless Service ``<job>-headless`` (``clusterIP: None``) selecting the job's pods;
* ConfigMap ``<job>-tessera-plan`` mounted read-only at :data:`PLAN_MOUNT_PATH`.

Process layout (one process per accelerator, torchrun conventions): the replicas of a plan
are numbered 0..NNODES-1 in plan order (their *node rank*); the processes of node rank ``n``
have global ranks ``n*LOCAL_WORLD_SIZE .. n*LOCAL_WORLD_SIZE + LOCAL_WORLD_SIZE-1``; a model
copy is ``tp*pp`` consecutive global ranks, so ``dp_rank = global_rank // (tp*pp)``.
``TESSERA_PLAN.rank_micro_batches[dp_rank]`` is how many micro-batches that rank processes
per optimiser step.

The master is the first replica of the plan (replica 0 unless it was lost), because a
rendezvous endpoint on a dead pod would stall every survivor.
"""

from __future__ import annotations

import json
from typing import Any

from tessera.core.sharding import ShardingPlan

#: where the plan ConfigMap is mounted in every replica
PLAN_MOUNT_PATH = "/etc/tessera/plan"
#: the default rendezvous / process-group port (PyTorch's usual default)
DEFAULT_MASTER_PORT = 29500
#: torchrun's c10d rendezvous port (torchrun's own default; distinct from MASTER_PORT, which a
#: script that re-forms its group in place uses for its own store)
DEFAULT_RDZV_PORT = 29400
#: worker-group restarts torchrun may make after failures (a lost replica costs every survivor
#: one; membership changes such as a grow do not count)
DEFAULT_MAX_RESTARTS = 100
#: ConfigMap keys
PLAN_KEY = "plan.json"
GENERATION_KEY = "generation"


def headless_service_name(job: str) -> str:
    """The headless Service giving each replica a stable DNS name."""
    return f"{job}-headless"


def pod_name(job: str, replica_index: int) -> str:
    """Pod (and hostname) of one replica; the index is stable across reshards."""
    return f"{job}-{replica_index}"


def configmap_name(job: str) -> str:
    """The per-job ConfigMap holding the current plan."""
    return f"{job}-tessera-plan"


def replica_dns(job: str, namespace: str, replica_index: int) -> str:
    return f"{pod_name(job, replica_index)}.{headless_service_name(job)}.{namespace}.svc"


#: the rendezvous address of a job that can never have more than one replica (``single``):
#: the pod itself, so it needs no headless Service (nor a plan ConfigMap: it never reshards)
SINGLE_ADDR = "127.0.0.1"


def master_addr(job: str, namespace: str, plan: ShardingPlan, *, single: bool = False) -> str:
    """``<job>-<first replica of the plan>.<job>-headless.<ns>.svc`` (``<job>-0`` normally);
    SINGLE_ADDR for a ``single`` job (``replicas.max`` 1)."""
    if not plan.replicas_used:
        raise ValueError("a plan without replicas has no master")
    return SINGLE_ADDR if single else replica_dns(job, namespace, plan.replicas_used[0])


def node_rank(plan: ShardingPlan, replica_index: int) -> int:
    """Position of ``replica_index`` in the plan (torchrun's node rank)."""
    try:
        return plan.replicas_used.index(replica_index)
    except ValueError:
        raise ValueError(
            f"replica {replica_index} is not part of plan generation {plan.generation} "
            f"(replicas {list(plan.replicas_used)})"
        ) from None


def plan_document(job: str, namespace: str, plan: ShardingPlan, master_port: int = DEFAULT_MASTER_PORT, *,
                  single: bool = False) -> dict[str, Any]:
    """The TESSERA_PLAN payload: the sharding plan plus where to rendezvous."""
    doc = plan.to_dict()
    doc.update(
        {
            "job": job,
            "namespace": namespace,
            "master_addr": master_addr(job, namespace, plan, single=single),
            "master_port": master_port,
            "nnodes": len(plan.replicas_used),
            "world_size": plan.world_size,
        }
    )
    return doc


def plan_json(job: str, namespace: str, plan: ShardingPlan, master_port: int = DEFAULT_MASTER_PORT, *,
              single: bool = False) -> str:
    return json.dumps(plan_document(job, namespace, plan, master_port, single=single), sort_keys=True,
                      separators=(",", ":"))


def torchrun_nnodes(min_replicas: int, max_replicas: int) -> str:
    """torchrun's ``--nnodes``: ``"min:max"`` for an elastic job, ``"n"`` for a fixed one."""
    if not 1 <= min_replicas <= max_replicas:
        raise ValueError(f"need 1 <= min <= max replicas, got {min_replicas}:{max_replicas}")
    return str(max_replicas) if min_replicas == max_replicas else f"{min_replicas}:{max_replicas}"


def pod_env(
    job: str,
    namespace: str,
    plan: ShardingPlan,
    replica_index: int,
    master_port: int = DEFAULT_MASTER_PORT,
    *,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    rdzv_port: int = DEFAULT_RDZV_PORT,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    single: bool = False,
) -> dict[str, str]:
    """Environment of replica ``replica_index`` under ``plan`` (all values are strings).

    The torchrun launcher variables (``PET_*``) let ``torchrun train.py`` start without
    arguments as an *elastic* run: ``PET_NNODES=min:max`` (the job's replica range; the
    plan's size when not given), c10d rendezvous on the plan's master
    (``PET_RDZV_ENDPOINT=<job>-<first replica>.<job>-headless.<ns>.svc:29400``, the pod
    whose address it is hosts the store), one rendezvous id per job.  The
    ``WORLD_SIZE``/``RANK``/``LOCAL_WORLD_SIZE`` trio serves scripts that spawn their own
    processes (``RANK`` is the global rank of this pod's first process).  Env vars are
    fixed for a pod's life: a script that survives a reshard in place must re-read the
    mounted plan (:func:`configmap_data`), see ``docs/elastic.md``.

    ``single``: a job that can never have more than one replica (``replicas.max`` 1): it
    rendezvous on itself (:data:`SINGLE_ADDR`) and gets no Service and no mounted plan (it
    never reshards: ``TESSERA_PLAN`` is its plan for its whole life).
    """
    rank = node_rank(plan, replica_index)
    nnodes = len(plan.replicas_used)
    low = nnodes if min_replicas is None else min_replicas
    high = max(nnodes, low) if max_replicas is None else max_replicas
    local = plan.devices_per_replica
    address = master_addr(job, namespace, plan, single=single)
    return {
        "WORLD_SIZE": str(plan.world_size),
        "RANK": str(rank * local),
        "LOCAL_WORLD_SIZE": str(local),
        "GROUP_RANK": str(rank),
        "NODE_RANK": str(rank),
        "NNODES": str(nnodes),
        "MASTER_ADDR": address,
        "MASTER_PORT": str(master_port),
        "PET_NNODES": torchrun_nnodes(low, high),
        "PET_NODE_RANK": str(rank),
        "PET_NPROC_PER_NODE": str(local),
        "PET_MASTER_ADDR": address,
        "PET_MASTER_PORT": str(master_port),
        "PET_RDZV_BACKEND": "c10d",
        "PET_RDZV_ENDPOINT": f"{address}:{rdzv_port}",
        "PET_RDZV_ID": f"{namespace}-{job}",
        "PET_MAX_RESTARTS": str(max_restarts),
        "TESSERA_JOB": job,
        "TESSERA_NAMESPACE": namespace,
        "TESSERA_REPLICA_INDEX": str(replica_index),
        "TESSERA_PLAN": plan_json(job, namespace, plan, master_port, single=single),
        "TESSERA_PLAN_GENERATION": str(plan.generation),
        "TESSERA_PLAN_DIR": PLAN_MOUNT_PATH,
    }


def configmap_data(
    job: str, namespace: str, plan: ShardingPlan, master_port: int = DEFAULT_MASTER_PORT
) -> dict[str, str]:
    """The ConfigMap ``data`` for the current plan (one file per key once mounted).

    ``plan.json`` is the same document as TESSERA_PLAN and includes ``generation``; the
    separate ``generation`` key lets a script poll one small file.  Kubelet swaps a
    mounted ConfigMap atomically, so a reader never sees half of an update.
    """
    return {
        PLAN_KEY: plan_json(job, namespace, plan, master_port),
        GENERATION_KEY: str(plan.generation),
    }


def next_generation(previous: ShardingPlan | None, proposed: ShardingPlan) -> ShardingPlan:
    """Number ``proposed``: the previous generation when the layout is unchanged, else +1.

    The operator keeps the generation in the job's status, so numbering survives restarts
    and a no-op recomputation never makes pods restart.
    """
    if previous is None:
        return proposed.with_generation(max(1, proposed.generation))
    if proposed.same_layout(previous):
        return proposed.with_generation(previous.generation)
    return proposed.with_generation(previous.generation + 1)


#: reshard records kept in a job's status (oldest dropped first)
HISTORY_LIMIT = 20


def reshard_record(
    *,
    reason: str,
    from_replicas: int,
    to_replicas: int,
    generation: int,
    detected_at_seconds: float,
    running_at_seconds: float | None = None,
) -> dict[str, Any]:
    """One entry of ``status.reshardHistory``: why, from/to replica counts, time to recover.

    ``detected_at_seconds`` is when the failure (or the growth decision) was seen,
    ``running_at_seconds`` when every replica of the new plan ran again (None until then);
    ``recoverySeconds`` is their difference, the figure the recovery-time histogram takes.
    """
    record: dict[str, Any] = {
        "reason": reason,
        "fromReplicas": from_replicas,
        "toReplicas": to_replicas,
        "generation": generation,
        "detectedAt": detected_at_seconds,
        "runningAt": running_at_seconds,
        "recoverySeconds": None if running_at_seconds is None else max(0.0, running_at_seconds - detected_at_seconds),
    }
    return record


def append_history(
    history: list[dict[str, Any]] | None, record: dict[str, Any], limit: int = HISTORY_LIMIT
) -> list[dict[str, Any]]:
    """``history`` plus ``record``, keeping the newest ``limit`` entries (a new list)."""
    out = [*(history or []), record]
    return out[-limit:] if limit > 0 else []
