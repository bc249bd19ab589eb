#!/usr/bin/env python3
"""A tiny training script that honours Tessera's elastic pod contract (docs/elastic.md).

Stdlib only, so it runs anywhere: it fits ``y = w*x + b`` by SGD on a deterministic
synthetic data set.  What it shows is the contract, not the model:

* it reads the plan from the mounted ConfigMap (``$TESSERA_PLAN_DIR/plan.json``), falling
  back to ``$TESSERA_PLAN``;
* each optimiser step consumes exactly ``global_batch_size`` samples: DP rank ``r``
  processes ``rank_micro_batches[r]`` micro-batches of ``micro_batch`` samples and
  accumulates gradients; the summed gradient is divided by the *global* batch (not by
  dp), which is what keeps uneven and heterogeneous splits exact;
* it checkpoints every ``--checkpoint-every`` steps (atomically) and resumes from the
  checkpoint at start (a replica new to the job; a real script may instead receive the
  state from a surviving peer by broadcast);
* before every step it polls ``$TESSERA_PLAN_DIR/generation``; on a change it re-reads the
  plan and carries on under the new plan with the state it holds in memory (every DP
  replica holds the whole model and optimizer state, so a survivor loses nothing: this is
  the in-memory reshard the simulator's ``failures.elastic.rollback: in_memory`` assumes),
  or exits 0 when its replica is no longer part of the plan.  With ``--reshard-from
  checkpoint`` (for state sharded across DP, e.g. ZeRO/FSDP, where a lost replica took
  part of it) it reloads the last checkpoint instead.

Without torch there is no process group, so this script plays every DP rank of the plan in
one process (the "all-reduce" is a sum in memory).  A real script replaces
``train_step``'s loop over ranks with its own rank's share plus an all-reduce(SUM) and
rebuilds its process group (``destroy_process_group`` / ``init_process_group`` with the new
``MASTER_ADDR``, ``WORLD_SIZE``, rank) where this one emits ``reshard``.

Output: one JSON object per line (events ``start``, ``step``, ``reshard``, ``leave``, ``done``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def sample(index: int) -> tuple[float, float]:
    """Sample ``index`` of the data set: the same on every replica, under every plan."""
    rng = random.Random(index)
    x = rng.uniform(-1.0, 1.0)
    return x, 3.0 * x + 1.0 + 0.1 * rng.gauss(0.0, 1.0)


def load_plan(plan_dir: str | None) -> dict[str, Any]:
    """The current plan: the mounted ConfigMap wins over the env var (it can change)."""
    if plan_dir and (Path(plan_dir) / "plan.json").exists():
        return dict(json.loads((Path(plan_dir) / "plan.json").read_text()))
    raw = os.environ.get("TESSERA_PLAN")
    if not raw:
        raise SystemExit("no plan: neither $TESSERA_PLAN_DIR/plan.json nor $TESSERA_PLAN is set")
    return dict(json.loads(raw))


def read_generation(plan_dir: str | None, plan: Mapping[str, Any]) -> int:
    if plan_dir and (Path(plan_dir) / "generation").exists():
        return int((Path(plan_dir) / "generation").read_text().strip())
    return int(plan["generation"])


def train_step(step: int, w: float, b: float, plan: Mapping[str, Any], lr: float) -> tuple[float, float, float]:
    """One optimiser step under ``plan``; returns new (w, b) and the mean loss."""
    micro_batch = int(plan["micro_batch"])
    global_batch = int(plan["global_batch_size"])
    counts = [int(k) for k in plan["rank_micro_batches"]]
    if micro_batch * sum(counts) != global_batch:
        raise SystemExit(f"plan does not add up: {micro_batch} x {sum(counts)} != {global_batch}")
    grad_w = grad_b = loss = 0.0
    offset = step * global_batch
    for rank_count in counts:  # each DP rank: its micro-batches with gradient accumulation
        for _ in range(rank_count):
            for index in range(offset, offset + micro_batch):
                x, y = sample(index)
                err = w * x + b - y
                grad_w += err * x
                grad_b += err
                loss += 0.5 * err * err
            offset += micro_batch
    # all-reduce(SUM) then divide by the global batch: exact for any split
    return w - lr * grad_w / global_batch, b - lr * grad_b / global_batch, loss / global_batch


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)  # atomic: a crash never leaves half a checkpoint


def load_checkpoint(path: Path) -> dict[str, Any]:
    if path.exists():
        return dict(json.loads(path.read_text()))
    return {"step": 0, "w": 0.0, "b": 0.0, "generation": 0}


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="train until this many optimiser steps")
    parser.add_argument("--checkpoint", default=os.environ.get("TESSERA_CHECKPOINT", "checkpoint.json"))
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--step-seconds", type=float, default=0.0, help="sleep per step (to watch a reshard)")
    parser.add_argument("--checkpoint-every", type=int, default=1, help="write the checkpoint every N steps")
    parser.add_argument("--reshard-from", choices=("memory", "checkpoint"), default="memory",
                        help="on a plan change keep the in-memory state (DP replicas hold all of it) or reload "
                             "the checkpoint (state sharded across DP)")
    args = parser.parse_args(argv)

    plan_dir = os.environ.get("TESSERA_PLAN_DIR")
    replica = int(os.environ.get("TESSERA_REPLICA_INDEX", "0"))
    checkpoint = Path(args.checkpoint)
    plan = load_plan(plan_dir)
    generation = read_generation(plan_dir, plan)
    state = load_checkpoint(checkpoint)
    if replica not in plan["replicas"]:
        emit("leave", replica=replica, generation=generation)
        return 0
    emit("start", step=state["step"], generation=generation, dp=plan["dp"], micro_batch=plan["micro_batch"],
         rank_micro_batches=plan["rank_micro_batches"])

    while state["step"] < args.steps:
        current = read_generation(plan_dir, plan)
        if current != generation:
            plan = load_plan(plan_dir)
            if args.reshard_from == "checkpoint":
                state = load_checkpoint(checkpoint)  # roll back to the last checkpoint
            # else: a survivor keeps its in-memory state (the last completed step); a real
            # script rebuilds its process group here and broadcasts the state to new replicas
            emit("reshard", step=state["step"], generation_from=generation, generation_to=current,
                 dp=plan["dp"], rank_micro_batches=plan["rank_micro_batches"], state_from=args.reshard_from)
            generation = current
            if replica not in plan["replicas"]:
                emit("leave", replica=replica, generation=generation)
                return 0
        w, b, loss = train_step(state["step"], state["w"], state["b"], plan, args.lr)
        state = {"step": state["step"] + 1, "w": w, "b": b, "generation": generation}
        # only the first replica of the plan writes the shared checkpoint, as in DDP
        last = state["step"] >= args.steps
        if plan["replicas"][0] == replica and (state["step"] % max(1, args.checkpoint_every) == 0 or last):
            save_checkpoint(checkpoint, state)
        emit("step", step=state["step"], loss=loss, generation=generation)
        if args.step_seconds:
            time.sleep(args.step_seconds)
    emit("done", step=state["step"], w=state["w"], b=state["b"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
