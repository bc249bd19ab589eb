"""Real PyTorch elastic training under Tessera's plans (CPU, gloo, DDP).

A small MLP regresses a generated, seeded data set.  Every optimiser step consumes exactly
the plan's global batch: DP rank ``r`` runs ``rank_micro_batches[r]`` micro-batches of
``micro_batch`` samples (gradient accumulation under ``DDP.no_sync``), and the gradients are
summed (not averaged) across ranks by a DDP communication hook, because each micro-batch's
loss is already ``sum(per-sample loss) / global_batch``.  Which samples a step uses depends
only on the global sample index (``step * global_batch + position``), so the loss curve does
not depend on the world size and stays comparable across a shrink or a grow (float64: the
only difference between world sizes is the summation order of the all-reduce).

Two ways to follow a reshard (docs/elastic.md, "Following a reshard"):

* **In place** (run the script as the container command, one process per pod): the script
  watches ``$TESSERA_PLAN_DIR/generation`` between steps.  On a new generation it drops the
  process group, re-forms it on the new plan's ``master_addr``/``master_port`` with its new
  rank (its position in ``replicas``) and goes on with the state it holds in memory; a
  replica that joins (grow, replacement) receives the state from a survivor by broadcast.
  ``--reshard-from checkpoint`` reloads the last checkpoint instead (for DP-sharded state).
  A collective that fails because a peer died drops the in-flight step (parameters change
  only after every collective of the step) and waits for the operator's new plan.
* **torchrun** (``torchrun examples/torch/train.py`` with the pod's ``PET_*`` env): torchrun
  restarts the worker on every membership change; the script resumes from the last
  checkpoint, and maps torchrun's ranks onto the plan by the replica indices it gathers.

Output: one JSON line per optimiser step on stdout (and appended to ``--loss-log`` by the
group's rank 0): ``step``, ``loss``, ``world_size``, ``generation``, ``path``, ``t``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

PLAN_DIR_DEFAULT = "/etc/tessera/plan"


def process_started_at() -> float:
    """Wall-clock time this process was started (Linux /proc; now elsewhere): a worker that
    torchrun restarts spends seconds starting Python and importing torch, part of recovery."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


# --- data: a function of the global sample index only --------------------------------------


class Data:
    """``samples`` seeded (x, y) pairs; sample ``i`` of the stream is a permutation of the set
    drawn per epoch from the seed, so the order is a function of ``i`` alone."""

    def __init__(self, samples: int, features: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(samples, features, generator=gen, dtype=torch.float64)
        w = torch.randn(features, 1, generator=gen, dtype=torch.float64)
        self.y = torch.sin(self.x @ w) + 0.1 * torch.randn(samples, 1, generator=gen, dtype=torch.float64)
        self.samples = samples
        self.seed = seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms[epoch] = torch.randperm(self.samples, generator=torch.Generator().manual_seed(self.seed + 1 + epoch))
        return self._perms[epoch]

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``start .. start+count-1`` of the stream."""
        index = torch.stack([self._perm(i // self.samples)[i % self.samples] for i in range(start, start + count)])
        return self.x[index], self.y[index]


def make_model(features: int, hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, 1)).double()


# --- the plan ------------------------------------------------------------------------------


def plan_dir() -> Path:
    return Path(os.environ.get("TESSERA_PLAN_DIR", PLAN_DIR_DEFAULT))


def read_generation() -> int | None:
    try:
        return int((plan_dir() / "generation").read_text().strip())
    except (OSError, ValueError):
        return None


def read_plan() -> dict[str, Any]:
    """The mounted plan (updated in place); the env's copy when nothing is mounted."""
    try:
        return dict(json.loads((plan_dir() / "plan.json").read_text()))
    except (OSError, ValueError):
        return dict(json.loads(os.environ["TESSERA_PLAN"]))


def rank_offsets(plan: dict[str, Any]) -> list[int]:
    """First sample (within a step) of each DP rank: ranks follow each other in plan order."""
    micro = int(plan["micro_batch"])
    offsets, at = [], 0
    for count in plan["rank_micro_batches"]:
        offsets.append(at)
        at += int(count) * micro
    if at != int(plan["global_batch_size"]):
        raise ValueError(f"plan generation {plan['generation']} covers {at} samples, not its global batch "
                         f"{plan['global_batch_size']}")
    return offsets


# --- state ---------------------------------------------------------------------------------


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data = Data(args.samples, args.features, args.seed)
        self.model = make_model(args.features, args.hidden, args.seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=args.momentum)
        self.step = 0  # the next step to run
        self.has_state = False  # False until initialised, restored or received
        self.ddp: DDP | None = None

    # state as bytes (checkpoint file, broadcast to a joining replica)
    def state_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()},
                   buffer)
        return buffer.getvalue()

    def load_bytes(self, raw: bytes) -> None:
        state = torch.load(io.BytesIO(raw), weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.has_state = True

    def save_checkpoint(self) -> None:
        path = Path(self.args.checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_bytes(self.state_bytes())
        os.replace(tmp, path)  # atomic: a reader sees the old or the new checkpoint

    def load_checkpoint(self) -> bool:
        path = Path(self.args.checkpoint) if self.args.checkpoint else None
        if path is None or not path.exists():
            return False
        self.load_bytes(path.read_bytes())
        return True

    def fresh(self) -> None:
        self.model = make_model(self.args.features, self.args.hidden, self.args.seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.args.lr, momentum=self.args.momentum)
        self.step = 0
        self.has_state = True

    def sync_state(self, source: str) -> str:
        """Make every rank hold the same state: from the most advanced rank holding one in
        memory (``source == "memory"``), else from the checkpoint, else from the seed."""
        rank = dist.get_rank()
        mine = torch.tensor([1 if (self.has_state and source == "memory") else 0, self.step], dtype=torch.int64)
        everyone = [torch.zeros(2, dtype=torch.int64) for _ in range(dist.get_world_size())]
        dist.all_gather(everyone, mine)
        holders = [(int(t[1]), r) for r, t in enumerate(everyone) if int(t[0])]
        if holders:
            best_step = max(s for s, _ in holders)
            src = min(r for s, r in holders if s == best_step)
            payload = [self.state_bytes() if rank == src else None]
            dist.broadcast_object_list(payload, src=src)
            if rank != src:
                assert payload[0] is not None
                self.load_bytes(payload[0])
            return f"memory(rank {src})"
        # nobody holds usable memory: every rank reads the same checkpoint, or starts fresh
        dist.barrier()
        if self.load_checkpoint():
            return "checkpoint"
        self.fresh()
        return "seed"

    def wrap(self) -> None:
        self.ddp = DDP(self.model)
        self.ddp.register_comm_hook(None, _sum_hook)
        # DDP's constructor broadcast rank 0's parameters: equal to ours after sync_state

    def train_step(self, plan: dict[str, Any], dp_rank: int) -> float:
        """One optimiser step under ``plan``; returns the step's loss (sum / global batch).

        Parameters change only in ``optimizer.step()``, after every collective of the step,
        so a step that fails in a collective leaves the state as it was before the step.
        """
        assert self.ddp is not None
        micro = int(plan["micro_batch"])
        global_batch = int(plan["global_batch_size"])
        count = int(plan["rank_micro_batches"][dp_rank])
        start = self.step * global_batch + rank_offsets(plan)[dp_rank]
        self.optimizer.zero_grad(set_to_none=True)
        local = torch.zeros(1, dtype=torch.float64)
        for k in range(count):
            x, y = self.data.batch(start + k * micro, micro)
            # DDP decides in the forward whether the backward all-reduces: both go under no_sync
            # except for the last micro-batch, whose backward sums the accumulated gradients
            with self.ddp.no_sync() if k < count - 1 else contextlib.nullcontext():
                loss = ((self.ddp(x) - y) ** 2).sum() / global_batch
                loss.backward()
            local += loss.detach()
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
        self.optimizer.step()
        self.step += 1
        return float(local.item())


def _sum_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks a real (not string) annotation
    """All-reduce SUM without DDP's division by the world size (losses are / global batch)."""
    fut = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True).get_future()  # type: ignore[union-attr]
    return fut.then(lambda f: f.value()[0])


# --- output --------------------------------------------------------------------------------


def emit(args: argparse.Namespace, record: dict[str, Any], *, log: bool) -> None:
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if log and args.loss_log:
        with open(args.loss_log, "a") as fh:  # one short line per write: O_APPEND keeps lines whole
            fh.write(line + "\n")


# --- in place: re-form the group on every plan generation ------------------------------------


class Stores:
    """The plan's master hosts a TCPStore and keeps it while it stays master (each generation
    uses its own key prefix); everyone else connects anew for each generation (a connection to
    an earlier master may be dead)."""

    def __init__(self) -> None:
        self.servers: dict[tuple[str, int], dist.TCPStore] = {}

    def get(self, host: str, port: int, is_master: bool, timeout_seconds: float) -> dist.TCPStore:
        timeout = timedelta(seconds=timeout_seconds)
        if not is_master:
            return dist.TCPStore(host, port, is_master=False, wait_for_workers=False, timeout=timeout)
        if (host, port) not in self.servers:
            self.servers[(host, port)] = dist.TCPStore(host, port, is_master=True, wait_for_workers=False,
                                                       timeout=timeout)
        return self.servers[(host, port)]


def wait_for_plan(replica: int, newer_than: int, timeout_seconds: float) -> dict[str, Any]:
    """The mounted plan once its generation is > ``newer_than``; exits 0 if ``replica`` left it."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        plan = read_plan()
        if int(plan["generation"]) > newer_than:
            return plan
        if time.monotonic() > deadline:
            raise TimeoutError(f"no plan newer than generation {newer_than} within {timeout_seconds:g} s")
        time.sleep(0.05)


def run_in_place(args: argparse.Namespace) -> int:
    replica = int(os.environ["TESSERA_REPLICA_INDEX"])
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) != 1:
        raise SystemExit("in-place mode runs one process per pod (acceleratorsPerReplica: 1); use torchrun for more")
    trainer = Trainer(args)
    stores = Stores()
    plan = read_plan()
    while trainer.step < args.steps:
        generation = int(plan["generation"])
        if replica not in plan["replicas"]:
            emit(args, {"event": "left", "replica": replica, "generation": generation, "t": time.time()}, log=False)
            return 0
        rank = list(plan["replicas"]).index(replica)
        world = len(plan["replicas"])
        if int(plan.get("world_size", world)) != world:
            raise SystemExit("in-place mode needs one process per replica (plan world_size == replicas)")
        started = time.time()
        try:
            store = stores.get(plan["master_addr"], int(plan["master_port"]), rank == 0, args.timeout_seconds)
            dist.init_process_group("gloo", store=dist.PrefixStore(f"tessera/g{generation}", store), rank=rank,
                                    world_size=world, timeout=timedelta(seconds=args.timeout_seconds))
            source = "memory" if args.reshard_from == "memory" else "checkpoint"
            restored = trainer.sync_state(source)
            trainer.wrap()
            # forming may wait long for a replica that is still starting; a step must not: a
            # peer that died silently (no reset) fails the step after this and we wait for a plan
            dist.set_timeout(timedelta(seconds=args.collective_timeout_seconds))
        except (RuntimeError, dist.DistBackendError, TimeoutError) as err:
            # a peer of this generation died while forming: wait for the operator's next plan
            emit(args, {"event": "form-failed", "generation": generation, "error": str(err)[:200], "t": time.time()},
                 log=False)
            _drop_group(trainer)
            plan = wait_for_plan(replica, generation, args.plan_timeout_seconds)
            continue
        emit(args, {"event": "formed", "generation": generation, "world_size": world, "rank": rank,
                    "restored": restored, "step": trainer.step, "form_seconds": round(time.time() - started, 3),
                    "t": time.time()}, log=rank == 0)
        failed = False
        while trainer.step < args.steps:
            if read_generation() not in (None, generation):
                break
            try:
                loss = trainer.train_step(plan, rank)
            except (RuntimeError, dist.DistBackendError) as err:
                emit(args, {"event": "step-failed", "step": trainer.step, "generation": generation,
                            "error": str(err)[:200], "t": time.time()}, log=False)
                failed = True
                break
            emit(args, {"step": trainer.step - 1, "loss": loss, "world_size": world, "generation": generation,
                        "path": "in_memory" if args.reshard_from == "memory" else "checkpoint", "t": time.time()},
                 log=rank == 0)
            if args.checkpoint and rank == 0 and trainer.step % args.checkpoint_every == 0:
                trainer.save_checkpoint()
            if args.step_delay_seconds:
                time.sleep(args.step_delay_seconds)
        _drop_group(trainer)
        if trainer.step >= args.steps:
            break
        if args.reshard_from == "checkpoint":
            trainer.has_state = False  # DP-sharded state: the checkpoint is the only whole copy
        plan = wait_for_plan(replica, generation, args.plan_timeout_seconds) if failed else read_plan()
    return finish(args)


def _drop_group(trainer: Trainer | None = None) -> None:
    """Destroy the process group and every reference to it (DDP's reducer holds one), so its
    connections close now and peers blocked in a collective with us fail at once instead of
    waiting for the timeout."""
    if trainer is not None:
        trainer.ddp = None
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


# --- torchrun: restart on every membership change ------------------------------------------


def run_under_torchrun(args: argparse.Namespace) -> int:
    """torchrun started us (env://); map its ranks onto the plan, resume from the checkpoint."""
    started, imported = process_started_at(), time.time()
    replica = int(os.environ["TESSERA_REPLICA_INDEX"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout_seconds))
    grouped = time.time()
    world = dist.get_world_size()
    deadline = time.monotonic() + args.plan_timeout_seconds
    while True:
        # torchrun formed a group of `world` processes; Tessera's plan for it may lag a little
        plan = read_plan()
        views: list[Any] = [None] * world
        dist.all_gather_object(views, (replica, local_rank, int(plan["generation"])))
        generations = {g for _, _, g in views}
        replicas = sorted({r for r, _, _ in views})
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if len(generations) == 1 and replicas == sorted(plan["replicas"]) and world == len(replicas) * local:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"torchrun's group {replicas} never matched Tessera's plan {plan['replicas']}")
        time.sleep(0.1)
    # plan order decides the samples: global rank in plan order, then dp_rank (tp = pp = 1 here)
    planned = time.time()
    plan_rank = list(plan["replicas"]).index(replica) * local + local_rank
    tp_pp = int(plan.get("tp", 1)) * int(plan.get("pp", 1))
    dp_rank = plan_rank // tp_pp
    trainer = Trainer(args)
    restored = trainer.sync_state("checkpoint")
    synced = time.time()
    trainer.wrap()
    generation = int(plan["generation"])
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    now = time.time()
    # where a restart's time goes: process start -> torch imported -> process group -> plan
    # matched -> state from the checkpoint -> DDP wrapped
    emit(args, {"event": "formed", "generation": generation, "world_size": world, "rank": dist.get_rank(),
                "restored": restored, "step": trainer.step, "restart_count": restart, "t": now,
                "process_started_at": started, "import_seconds": round(imported - started, 3),
                "group_seconds": round(grouped - imported, 3), "plan_seconds": round(planned - grouped, 3),
                "state_seconds": round(synced - planned, 3), "ddp_seconds": round(now - synced, 3)},
         log=dist.get_rank() == 0)
    while trainer.step < args.steps:
        # a collective failing because a peer died: exit non-zero at once and torchrun restarts
        # us in a new rendezvous (so does a node joining, by SIGTERM).  os._exit skips the
        # interpreter's teardown, where the broken group's threads held the exit up for ~10 s
        try:
            loss = trainer.train_step(plan, dp_rank)
        except (RuntimeError, dist.DistBackendError) as err:
            emit(args, {"event": "step-failed", "step": trainer.step, "error": str(err)[:200], "t": time.time()},
                 log=False)
            sys.stdout.flush()
            os._exit(1)
        emit(args, {"step": trainer.step - 1, "loss": loss, "world_size": world, "generation": generation,
                    "path": "torchrun", "t": time.time()}, log=dist.get_rank() == 0)
        if args.checkpoint and dist.get_rank() == 0 and trainer.step % args.checkpoint_every == 0:
            trainer.save_checkpoint()
        if args.step_delay_seconds:
            time.sleep(args.step_delay_seconds)
    _drop_group()
    return finish(args)


def finish(args: argparse.Namespace) -> int:
    emit(args, {"event": "done", "steps": args.steps, "t": time.time()}, log=False)
    if args.hold:
        # an ElasticJob has no completion phase yet: a pod that exits counts as a lost replica
        # and the job would be placed again; hold until the pod is deleted
        signals = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        signal.sigwait(signals)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--samples", type=int, default=4096, help="size of the generated data set")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--checkpoint", default="", help="checkpoint file (shared by the replicas)")
    parser.add_argument("--checkpoint-every", type=int, default=5, help="steps between checkpoints")
    parser.add_argument("--reshard-from", choices=("memory", "checkpoint"), default="memory",
                        help="in-place mode: keep the in-memory state on a new plan, or reload the checkpoint")
    parser.add_argument("--loss-log", default="", help="append the group rank 0's JSON lines here")
    parser.add_argument("--step-delay-seconds", type=float, default=0.0, help="sleep after each step (demos, tests)")
    parser.add_argument("--timeout-seconds", type=float, default=90.0,
                        help="process-group and store timeout (a joining replica may take a while to import torch)")
    parser.add_argument("--collective-timeout-seconds", type=float, default=15.0,
                        help="in place: timeout of a step's collectives once the group is formed")
    parser.add_argument("--plan-timeout-seconds", type=float, default=120.0,
                        help="how long to wait for a new plan after a failed step")
    parser.add_argument("--hold", action="store_true", help="after the last step, wait for SIGTERM")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # deterministic and polite on a shared CPU
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return run_under_torchrun(args)
    return run_in_place(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
