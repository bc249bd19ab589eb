"""``tessera operator``: watch ElasticJobs and InferenceServices and schedule them.

Runs kopf (watches, finalizers, handlers) and the single scheduling loop side by side in
one event loop; the loop's blocking work happens in a worker thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket

import kopf

from tessera.engine import Engine
from tessera.operator.kube import Kube
from tessera.operator.lease import LeaderElector
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.scheduler import Scheduler, WallClock
from tessera.policy import Policy, PolicyLoadError, load_policy

log = logging.getLogger("tessera.operator")

DEFAULT_POLICY = "cpsat"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then in-cluster)")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument("--policy", default=DEFAULT_POLICY,
                        help="placement policy by name (see `tessera policies list`); `hybrid`: CP-SAT seeded by the "
                             "learned dispatcher, whose plan is used when the solver's budget runs out")
    parser.add_argument("--interval-seconds", type=float, default=2.0,
                        help="longest pause between scheduling cycles (changes wake it earlier)")
    parser.add_argument("--time-budget-seconds", type=float, default=1.0, help="time a policy may take per decision")
    parser.add_argument("--seed", type=int, default=0, help="seed of the policy's random generator")
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0 disables)")
    parser.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                        help="namespace of the scheduler Lease (default: $POD_NAMESPACE or default)")
    parser.add_argument("--lease-name", default="tessera-scheduler", help="name of the scheduler Lease")
    parser.add_argument("--lease-duration-seconds", type=int, default=15,
                        help="how long a crashed leader blocks a successor")
    parser.add_argument("--identity", default=f"{socket.gethostname()}-{os.getpid()}",
                        help="this replica's name in the Lease")
    parser.add_argument("--liveness", default=None, metavar="URL",
                        help="serve kopf's health probe here, e.g. http://0.0.0.0:8080/healthz (the chart's probes)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    try:
        policy = load_policy(args.policy)
    except PolicyLoadError as err:
        log.error("%s", err)
        return 2
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's login reads it too
    kube = Kube.connect(args.kubeconfig, args.context)
    metrics = OperatorMetrics()
    metrics.instrument(kube.api)  # tessera_api_errors_total
    metrics.serve(args.metrics_port)
    engine = build_engine(policy, args, metrics)
    elector = LeaderElector(kube, args.lease_namespace, args.lease_name, args.identity,
                            args.lease_duration_seconds)
    scheduler = Scheduler(kube, engine, elector, metrics, interval_seconds=args.interval_seconds)
    log.info("tessera operator starting: policy %s %s, identity %s", policy.name, policy.version, args.identity)
    asyncio.run(_serve(scheduler, kube, args.liveness))
    return 0


def build_engine(policy: Policy, args: argparse.Namespace, metrics: OperatorMetrics) -> Engine:
    """The operator's engine: wall-clock decisions within ``--time-budget-seconds``.

    What happens when the budget runs out is the policy's: ``cpsat`` keeps its best-fit plan,
    ``hybrid`` the learned dispatcher's plan (its hint), and the engine reports the learned
    artifact (``policy_artifact`` in the cycle stats, ``tessera_policy_artifact_info``) and
    which plan was kept (``tessera_plan_source_total``).
    """
    return Engine(policy, WallClock(), seed=args.seed, time_budget_seconds=args.time_budget_seconds,
                  metrics=metrics)


async def _serve(scheduler: Scheduler, kube: Kube, liveness: str | None = None) -> None:
    # importing the handler modules registers them with kopf's default registry
    from tessera.operator import elasticjob, handlers, inferenceservice  # noqa: F401

    stop = asyncio.Event()
    wake = asyncio.Event()
    memo = kopf.Memo(kube=kube, wake=wake)
    loop_task = asyncio.create_task(scheduler.loop(stop, wake), name="tessera-scheduler")
    try:
        # standalone: exclusion is the scheduler Lease, not kopf peering (no peering CRDs needed)
        await kopf.operator(clusterwide=True, standalone=True, memo=memo, liveness_endpoint=liveness)
    finally:
        stop.set()
        wake.set()
        try:
            await asyncio.wait_for(loop_task, timeout=10)
        except (TimeoutError, asyncio.CancelledError):
            loop_task.cancel()
