"""``tessera operator``: watch ElasticJobs and InferenceServices and schedule them.

Runs kopf (watches, finalizers, handlers) and the single scheduling loop side by side in
one event loop; the loop's blocking work happens in a worker thread.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from tessera.engine import Engine
from tessera.operator.cache import CachedKube, WatchCache
from tessera.operator.elastic import DEFAULT_FAILURE_GRACE_SECONDS, GRACE_ENV, ElasticSettings
from tessera.operator.faults import NO_FAULTS, ExitAfter, FaultHooks
from tessera.operator.kube import Kube
from tessera.operator.lease import LeaderElector
from tessera.operator.load_prometheus import DEFAULT_QUERY, PrometheusLoadSource
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.ports import KubePort
from tessera.operator.rebalance import Rebalancer
from tessera.operator.scheduler import Scheduler
from tessera.operator.timing import WallClock
from tessera.policy import (
    DecidesInRounds,
    Policy,
    PolicyLoadError,
    capabilities_of,
    load_policy,
    registered_policy,
    with_failure_handling,
)

log = logging.getLogger("tessera.operator")

DEFAULT_POLICY = "cpsat"
DEFAULT_REBALANCE_POLICY = "rebalance-cost-aware"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then in-cluster)")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument("--policy", default=DEFAULT_POLICY,
                        help="placement policy by name (see `tessera policies list`); `hybrid`: CP-SAT seeded by the "
                             "learned dispatcher, whose plan is used when the solver's budget runs out")
    parser.add_argument("--interval-seconds", type=float, default=2.0,
                        help="longest pause between scheduling cycles (changes wake it earlier)")
    parser.add_argument("--workers", type=int, default=48,
                        help="threads writing to the API server for different workloads at once (pod creates, "
                             "Bindings, admission dry runs); 1 acts on one workload after another. Each write "
                             "waits for the API server, so a burst binds faster with more (bench throughput: "
                             "2,000 one-pod jobs 60 s with 48, 74-84 s with 16)")
    parser.add_argument("--namespace", action="append", default=[], dest="namespaces", metavar="NAME",
                        help="schedule the workloads of this namespace only (repeatable; default: all). Pods "
                             "elsewhere still count on their nodes. The chart sets one per rbac.namespaces entry")
    parser.add_argument("--default-queue", default="default", metavar="NAME",
                        help="Queue of workloads without spec.queueName whose namespace no queue selects, when "
                             "a Queue of that name exists (else they are not limited by quota); '' for none")
    parser.add_argument("--reclaim-min-runtime-seconds", type=float, default=60.0, metavar="SECONDS",
                        help="a workload borrowing another queue's quota runs at least this long (since it started "
                             "or was last resized) before that queue reclaims it (docs/queues.md)")
    parser.add_argument("--watch-cache", action=argparse.BooleanOptionalAction, default=True,
                        help="read the cluster from a LIST-then-WATCH cache with the operator's own writes applied "
                             "at once, instead of LISTing it every cycle (default: on)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="pending workloads decided per cycle at most (highest priority, then oldest first); "
                             "the rest are decided right after, so a burst starts binding early (0: no limit)")
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
    parser.add_argument("--failure-grace-seconds", type=float,
                        default=float(os.environ.get(GRACE_ENV) or DEFAULT_FAILURE_GRACE_SECONDS),
                        help=f"elastic jobs: how long a node must stay NotReady/tainted before its replicas "
                             f"are resharded away (default: ${GRACE_ENV} or {DEFAULT_FAILURE_GRACE_SECONDS:g})")
    parser.add_argument("--failure-handling", action=argparse.BooleanOptionalAction, default=True,
                        help="elastic failure handling on top of any --policy: reshard a training job's lost "
                             "replicas away (shrink within min..max keeping the global batch), requeue it below "
                             "min, grow it back after the hysteresis (default: on)")
    # crash points for the restart tests (tessera.operator.faults); not for production use
    parser.add_argument("--fault-exit-after", action="append", default=[], metavar="POINT=N", help=argparse.SUPPRESS)
    parser.add_argument("--fault-pause-at", action="append", default=[], metavar="POINT=SECONDS",
                        help=argparse.SUPPRESS)
    parser.add_argument("--policy-param", action="append", default=[], metavar="KEY=VALUE",
                        help="a policy parameter, repeatable: in PolicyContext.params (numbers as floats), e.g. "
                             "elastic_hysteresis_seconds=300, and also a constructor argument when the policy "
                             "takes one of that name, e.g. round_seconds=60 turns on cpsat's round mode")
    rebalancing = parser.add_argument_group("rebalancing (docs/rebalancing.md)")
    rebalancing.add_argument(
        "--rebalance-period-seconds", type=float,
        default=float(os.environ.get("TESSERA_REBALANCE_PERIOD_SECONDS", "0") or 0),
        help="run a rebalancing round this often; 0 (the default) turns rebalancing off "
             "(default: $TESSERA_REBALANCE_PERIOD_SECONDS or 0)")
    rebalancing.add_argument("--rebalance-policy", default=DEFAULT_REBALANCE_POLICY,
                             help="rebalancing policy by name (rebalance-cost-aware, rebalance-cost-blind, defrag, ...)")
    rebalancing.add_argument("--rebalance-param", action="append", default=[], metavar="NAME=VALUE",
                             help="a rebalance setting, e.g. cooldown_seconds=600 (repeatable; passed as rebalance.NAME)")
    rebalancing.add_argument("--migration-ready-timeout-seconds", type=float, default=300.0,
                             help="undo a move whose new replica is not Ready within this")
    rebalancing.add_argument("--load-prometheus-url", default=os.environ.get("TESSERA_LOAD_PROMETHEUS_URL", ""),
                             help="Prometheus base URL to read service load from; without it no load-driven moves "
                                  "(default: $TESSERA_LOAD_PROMETHEUS_URL)")
    rebalancing.add_argument("--load-query", default=DEFAULT_QUERY,
                             help="PromQL instant query giving requests/s per service")
    rebalancing.add_argument("--load-key-labels", default="namespace,service",
                             help="labels of the query's result forming the workload key namespace/name")


def rebalance_params(pairs: list[str]) -> dict[str, str]:
    """``["cooldown_seconds=60"]`` -> ``{"rebalance.cooldown_seconds": "60"}``."""
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--rebalance-param expects NAME=VALUE, got {pair!r}")
        params[f"rebalance.{name.strip()}"] = value.strip()
    return params


def build_rebalancer(args: argparse.Namespace, kube: KubePort, metrics: OperatorMetrics,
                     elector: LeaderElector) -> Rebalancer:
    """The move executor, with a rebalancing engine when a period is set."""
    engine = None
    load_source = None
    if args.rebalance_period_seconds > 0:
        policy = load_policy(args.rebalance_policy)
        engine = Engine(policy, WallClock(), seed=args.seed, time_budget_seconds=args.time_budget_seconds,
                        params=rebalance_params(args.rebalance_param), metrics=metrics)
        if args.load_prometheus_url:
            labels = tuple(label.strip() for label in args.load_key_labels.split(",") if label.strip())
            load_source = PrometheusLoadSource(args.load_prometheus_url, args.load_query, key_labels=labels)
        log.info("rebalancing every %.0fs with %s; load from %s", args.rebalance_period_seconds, policy.name,
                 args.load_prometheus_url or "nowhere (no load-driven moves)")
    return Rebalancer(kube, metrics, elector, engine=engine, load_source=load_source,
                      period_seconds=args.rebalance_period_seconds,
                      ready_timeout_seconds=args.migration_ready_timeout_seconds)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    params = policy_params(args.policy_param)
    try:
        arguments = constructor_arguments(args.policy, params)
        policy = load_policy(args.policy, **arguments)
        hooks: FaultHooks = (ExitAfter.parse(args.fault_exit_after, args.fault_pause_at)
                             if args.fault_exit_after or args.fault_pause_at else NO_FAULTS)
    except (PolicyLoadError, ValueError) as err:
        log.error("%s", err)
        return 2
    if args.failure_handling:
        policy = with_failure_handling(policy)
    kube = Kube.connect(args.kubeconfig, args.context, connections=args.workers + 8)
    metrics = OperatorMetrics()
    metrics.instrument(kube.api)  # tessera_api_errors_total
    metrics.serve(args.metrics_port)
    wake_hook = WakeHook()
    cache = WatchCache(kube, on_change=wake_hook) if args.watch_cache else None
    port: KubePort = CachedKube(kube, cache) if cache is not None else kube
    engine = build_engine(policy, args, metrics)
    elector = LeaderElector(port, args.lease_namespace, args.lease_name, args.identity,
                            args.lease_duration_seconds)
    try:
        rebalancer = build_rebalancer(args, port, metrics, elector)
    except (PolicyLoadError, ValueError) as err:
        log.error("%s", err)
        return 2
    scheduler = Scheduler(port, engine, elector, metrics, interval_seconds=args.interval_seconds,
                          rebalancer=rebalancer, hooks=hooks, workers=args.workers, event_threads=4,
                          batch_size=args.batch_size, namespaces=frozenset(args.namespaces),
                          default_queue=args.default_queue,
                          elastic=ElasticSettings(failure_grace_seconds=max(0.0, args.failure_grace_seconds)))
    log.info("tessera operator starting: policy %s %s%s, capabilities %s, identity %s", policy.name, policy.version,
             f" {arguments}" if arguments else "", ", ".join(capabilities_of(policy)) or "none", args.identity)
    rounds = policy.round_seconds if isinstance(policy, DecidesInRounds) else 0
    if rounds:
        log.info("round mode: every %gs the policy re-decides every running and waiting job", rounds)
    if cache is not None:
        cache.start()
    try:
        asyncio.run(_serve(scheduler, kube, args.liveness, wake_hook, namespaces=list(args.namespaces),
                           watch_nodes_and_pods=cache is None))
    finally:
        if cache is not None:
            cache.stop()
    return 0


def policy_params(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings to a params dict (numbers as floats, the rest as strings)."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--policy-param wants KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            out[key.strip()] = value
    return out


def constructor_arguments(name: str, params: Mapping[str, object]) -> dict[str, Any]:
    """The ``params`` that the policy's constructor takes by name, converted to the type of
    that argument's default (bool, int, float or str), e.g. ``round_seconds=60`` for cpsat.

    A constructor that takes only ``**kwargs`` gets nothing this way (its keys are unknown).
    """
    factory = registered_policy(name).factory
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C factory: no introspectable arguments
        return {}
    out: dict[str, Any] = {}
    for key, value in params.items():
        parameter = signature.parameters.get(key)
        if parameter is None or parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            continue
        try:
            out[key] = _as_type_of(parameter.default, value)
        except ValueError as err:
            raise PolicyLoadError(f"--policy-param {key}={value}: {err}") from err
    return out


def _as_type_of(default: object, value: object) -> object:
    """``value`` (a float or a string from the command line) as the type of ``default``."""
    if isinstance(default, bool):
        text = str(value).strip().lower()
        if text in ("1", "1.0", "true", "yes", "on"):
            return True
        if text in ("0", "0.0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if isinstance(default, int):
        number = float(value)  # type: ignore[arg-type]
        if not number.is_integer():
            raise ValueError("expected a whole number")
        return int(number)
    if isinstance(default, float) or (default is None and isinstance(value, float)):
        return float(value)  # type: ignore[arg-type]
    return value


def build_engine(policy: Policy, args: argparse.Namespace, metrics: OperatorMetrics) -> Engine:
    """The operator's engine: wall-clock decisions within ``--time-budget-seconds``.

    What happens when the budget runs out is the policy's: ``cpsat`` keeps its best-fit plan,
    ``hybrid`` the learned dispatcher's plan (its hint), and the engine reports the learned
    artifact (``policy_artifact`` in the cycle stats, ``tessera_policy_artifact_info``) and
    which plan was kept (``tessera_plan_source_total``).
    """
    return Engine(policy, WallClock(), seed=args.seed, time_budget_seconds=args.time_budget_seconds,
                  metrics=metrics, params=policy_params(getattr(args, "policy_param", None) or []),
                  reclaim_min_runtime_seconds=max(0.0, getattr(args, "reclaim_min_runtime_seconds", 60.0)))


class WakeHook:
    """Wakes the scheduling loop from the watch cache's threads (set once the loop runs)."""

    def __init__(self) -> None:
        self.target: Callable[[], None] | None = None

    def __call__(self) -> None:
        if self.target is not None:
            self.target()


async def _serve(scheduler: Scheduler, kube: Kube, liveness: str | None = None,
                 wake_hook: WakeHook | None = None, namespaces: list[str] | None = None,
                 watch_nodes_and_pods: bool = True) -> None:
    # importing the handler modules registers them with kopf's default registry
    from tessera.operator import elasticjob, handlers, inferenceservice  # noqa: F401
    if watch_nodes_and_pods:
        # without the watch cache, kopf's node and pod watches wake the loop on failures; with
        # it the cache's own watches do, and kopf watching every node too only doubles the
        # work: at 5,000 nodes kopf's event loop spent most of its time on node heartbeats
        from tessera.operator import nodes  # noqa: F401

    stop = asyncio.Event()
    wake = asyncio.Event()
    if wake_hook is not None:
        loop = asyncio.get_running_loop()
        def wake_from_thread() -> None:
            loop.call_soon_threadsafe(wake.set)

        wake_hook.target = wake_from_thread
    memo = kopf.Memo(kube=kube, wake=wake, checked=handlers.CheckedGenerations())
    loop_task = asyncio.create_task(scheduler.loop(stop, wake), name="tessera-scheduler")
    try:
        # standalone: exclusion is the scheduler Lease, not kopf peering (no peering CRDs needed)
        # with --namespace, kopf handles (finalizers, deletions) only there, where RBAC allows it
        await kopf.operator(clusterwide=not namespaces, namespaces=namespaces or [], standalone=True, memo=memo,
                            liveness_endpoint=liveness)
    finally:
        stop.set()
        wake.set()
        try:
            await asyncio.wait_for(loop_task, timeout=10)
        except (TimeoutError, asyncio.CancelledError):
            loop_task.cancel()
