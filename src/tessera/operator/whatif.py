"""``tessera whatif``: what would a policy do on my cluster now?

Reads the live cluster (nodes, pods, ElasticJobs, InferenceServices, Queues, PriorityClasses; read-only, the same
``get``/``list`` rights ``kubectl`` needs) or a snapshot saved earlier with ``--save``, builds
the cycle's input exactly as the operator does (:func:`tessera.operator.state.build_state`:
the same accounting of running pods, lost replicas and decision state kept in status) and
asks each ``--policy`` for its plan. Nothing is written to the cluster.

    tessera whatif --policy cpsat --policy best-fit            # the live cluster, two policies
    tessera whatif --save now.json                              # keep a snapshot ...
    tessera whatif --snapshot now.json --policy cpsat --policy-param round_seconds=600 --json plan.json

The snapshot is a JSON file of the raw objects (``kubectl get -o json`` form); it holds pod
specs, so treat it like the cluster's own data. Server-side checks the operator makes before
placing (dry-run admission, backoff of failing workloads) are not repeated here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tessera.api.dra import DraObjects
from tessera.api.kueue import KueueObjects
from tessera.core import Plan
from tessera.engine import Engine
from tessera.operator.main import constructor_arguments, policy_params
from tessera.operator.queues import DEFAULT_QUEUE, queue_tree
from tessera.operator.state import build_state
from tessera.operator.views import priority_classes
from tessera.policy import PolicyLoadError, load_policy, with_failure_handling

SNAPSHOT_VERSION = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--kubeconfig", default=None, help="read this cluster (default: $KUBECONFIG, in-cluster)")
    source.add_argument("--snapshot", type=Path, default=None, help="read a snapshot saved with --save instead")
    parser.add_argument("--context", default=None)
    parser.add_argument("--save", type=Path, default=None, help="write the snapshot read to this file")
    parser.add_argument("--policy", action="append", default=[], help="policy to ask (repeatable; default cpsat)")
    parser.add_argument("--policy-param", action="append", default=[], metavar="KEY=VALUE",
                        help="constructor or context parameter for every --policy (as `tessera operator`)")
    parser.add_argument("--no-failure-handling", dest="failure_handling", action="store_false",
                        help="ask the policies without Tessera's elastic failure handling (the operator's default is on)")
    parser.add_argument("--namespace", dest="namespaces", action="append", default=[],
                        help="only workloads of this namespace (repeatable; default all)")
    parser.add_argument("--time-budget-seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", type=Path, default=None, help="write the plans as JSON here")


def read_cluster(kubeconfig: str | None, context: str | None) -> dict[str, Any]:
    """The raw objects a cycle reads, from the live cluster."""
    from tessera.operator.kube import Kube  # the Kubernetes client only when a cluster is read

    kube = Kube.connect(kubeconfig, context, connections=4)
    queues = kube.list_queues()
    dra = kube.list_dra()
    kueue = kube.list_kueue()
    return {"version": SNAPSHOT_VERSION, "takenAt": time.time(), "nodes": kube.list_nodes(),
            "pods": kube.list_pods(), "workloads": [[kind, raw] for kind, raw in kube.list_workloads()],
            # what decides a workload's queue and priority, as in the operator
            "queues": queues, "priorityClasses": kube.list_priority_classes(),
            "namespaceLabels": kube.list_namespace_labels() if queue_tree(queues).needs_namespace_labels() else {},
            # accelerators published as DRA devices, and the claims holding them
            "resourceSlices": dra.slices, "resourceClaims": dra.claims, "deviceClasses": dra.classes,
            # Kueue's decisions on Kueue-managed workloads (None: Kueue not installed)
            "kueue": None if kueue is None else {"workloads": kueue.workloads, "flavors": kueue.flavors}}


def load_snapshot(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"{path}: not a tessera whatif snapshot (version {SNAPSHOT_VERSION})")
    return data


def plan_record(plan: Plan, nodes: Mapping[str, Any]) -> dict[str, Any]:
    """A plan as plain data: where each placed workload goes, who is stopped or resized, who waits and why."""
    def where(assignments: Sequence[Any]) -> list[str]:
        return [f"{a.node} ({nodes[a.node].accelerator_type or 'cpu'})" if a.node in nodes else a.node
                for a in assignments]

    return {
        "placements": [{"workload": p.workload, "replicas": where(p.replicas), "reason": p.reason}
                       for p in plan.placements],
        "preemptions": [{"workload": p.workload, "reason": p.reason} for p in plan.preemptions],
        "resizes": [{"workload": r.workload, "remove": list(r.remove), "add": where(r.add), "reason": r.reason}
                    for r in plan.resizes],
        "migrations": [{"workload": m.workload, "replica": m.replica, "to": where([m.to])[0]} for m in plan.migrations],
        "waiting": dict(sorted(plan.unplaced.items())),
    }


def decide(snapshot: Mapping[str, Any], policies: Sequence[str], params: Mapping[str, object], *,
           failure_handling: bool = True, namespaces: frozenset[str] = frozenset(), seed: int = 0,
           time_budget_seconds: float = 10.0, default_queue: str = DEFAULT_QUEUE) -> list[dict[str, Any]]:
    """Each policy's plan for ``snapshot`` (raw objects), as :func:`plan_record` records; with
    the Queues and PriorityClasses of the snapshot applied as the operator applies them."""
    now = float(snapshot.get("takenAt") or time.time())
    state = build_state(snapshot["nodes"], snapshot["pods"], [(k, r) for k, r in snapshot["workloads"]], now,
                        keep_lost=failure_handling, namespaces=namespaces,
                        queues=queue_tree(snapshot.get("queues") or []),
                        namespace_labels=snapshot.get("namespaceLabels") or {}, default_queue=default_queue,
                        classes=priority_classes(snapshot.get("priorityClasses") or []),
                        dra=DraObjects(snapshot.get("resourceSlices") or [], snapshot.get("resourceClaims") or [],
                                       snapshot.get("deviceClasses") or []),
                        kueue=KueueObjects(snapshot["kueue"]["workloads"], snapshot["kueue"]["flavors"])
                        if snapshot.get("kueue") else None)
    nodes = {name: view.node for name, view in state.nodes.items()}
    out = []
    for name in policies:
        policy = load_policy(name, **constructor_arguments(name, params))
        if failure_handling:
            policy = with_failure_handling(policy)

        class At:
            def now(self) -> float:
                return now

        engine = Engine(policy, At(), seed=seed, time_budget_seconds=time_budget_seconds, deterministic=True,
                        params=dict(params))
        result = engine.decide(state.snapshot, state.pending)
        record = {"policy": name, "pending": len(state.pending), "running": len(state.snapshot.allocations),
                  "decision_seconds": round(result.decision_seconds, 3), **plan_record(result.plan, nodes)}
        # the engine's reasons too (a queue's quota, a policy's refused proposal)
        record["waiting"] = dict(sorted({**result.waiting, **record["waiting"]}.items()))
        if result.error:
            record["error"] = result.error
        out.append(record)
    return out


def _print(records: Sequence[Mapping[str, Any]]) -> None:
    for record in records:
        print(f"== {record['policy']}: {record['pending']} waiting, {record['running']} running "
              f"(decided in {record['decision_seconds']} s)")
        for p in record["placements"]:
            print(f"  place   {p['workload']} -> {', '.join(p['replicas'])}")
        for p in record["preemptions"]:
            print(f"  stop    {p['workload']}: {p['reason']}")
        for r in record["resizes"]:
            print(f"  resize  {r['workload']}: remove {r['remove'] or '-'}, add {', '.join(r['add']) or '-'}")
        for m in record["migrations"]:
            print(f"  move    {m['workload']} replica {m['replica']} -> {m['to']}")
        for key, why in record["waiting"].items():
            print(f"  waits   {key}: {why}")
        if record.get("error"):
            print(f"  error   {record['error']}")


def run(args: argparse.Namespace) -> int:
    try:
        snapshot = load_snapshot(args.snapshot) if args.snapshot else read_cluster(args.kubeconfig, args.context)
    except (OSError, ValueError) as err:
        print(f"tessera whatif: {err}", file=sys.stderr)
        return 2
    if args.save:
        args.save.write_text(json.dumps(snapshot))
        print(f"saved {len(snapshot['nodes'])} nodes, {len(snapshot['pods'])} pods, "
              f"{len(snapshot['workloads'])} workloads to {args.save}")
        if not args.policy:
            return 0
    try:
        records = decide(snapshot, args.policy or ["cpsat"], policy_params(args.policy_param),
                         failure_handling=args.failure_handling, namespaces=frozenset(args.namespaces),
                         seed=args.seed, time_budget_seconds=args.time_budget_seconds)
    except PolicyLoadError as err:
        print(f"tessera whatif: {err}", file=sys.stderr)
        return 2
    _print(records)
    if args.json_path:
        args.json_path.write_text(json.dumps(records, indent=2))
    return 0
