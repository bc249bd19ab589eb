"""Real PyTorch DDP training resharded by the operator: shrink on a node failure, grow back.

A 4-replica ElasticJob runs ``examples/torch/train.py`` (gloo, CPU) as local processes
(``pod_runner.py`` plays the kubelet of the kwok nodes).  The node of replica 1 is made
NotReady mid-run; the operator (``--policy elastic --failure-grace-seconds 0``) shrinks the
job to 3, and grows it back to 4 once the node is Ready and the hysteresis has passed.  The
loss at every step is compared with an uninterrupted 4-replica run on the same data order:

* in place (the script re-forms its process group on each plan, state kept in memory):
  every step exactly once, each within 1e-5 relative of the uninterrupted run;
* torchrun (restart on membership change, state from the last checkpoint): steps since the
  last checkpoint are redone, and every logged step, redone ones too, matches the
  uninterrupted run from the restored step on.

Needs PyTorch (the ``[torch]`` extra, which ``make test`` installs); skipped with that
reason when it is missing, except under ``make test`` (TESSERA_REQUIRE_CLUSTER=1).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess, clean_up
from torch_elastic_scenario import (
    FAIL_AFTER_STEP,
    HYSTERESIS_SECONDS,
    STEP_DELAY_SECONDS,
    Run,
    baseline,
    max_rel_diff,
    run_job,
    steps_of,
)
from torch_elastic_scenario import STEPS as PATH_STEPS

pytestmark = pytest.mark.cluster

STEPS = PATH_STEPS["in_memory"]
TORCHRUN_STEPS = PATH_STEPS["torchrun"]

if importlib.util.find_spec("torch") is None:
    reason = "PyTorch is not installed (pip install -e '.[torch]', or make torch)"
    if os.environ.get("TESSERA_REQUIRE_CLUSTER") == "1":
        raise RuntimeError(reason)  # under make test the extra is installed: a missing torch is a failure
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """The uninterrupted 4-replica run (local processes, one fixed plan), long enough for both tests."""
    return baseline(tmp_path_factory.mktemp("baseline"), max(STEPS, TORCHRUN_STEPS))


@pytest.fixture
def operator(crds: Any, namespace: str, tmp_path: Path) -> Iterator[Callable[[], OperatorProcess]]:
    """Start the elastic operator; clean up at the end."""
    started: list[OperatorProcess] = []

    def start() -> OperatorProcess:
        proc = OperatorProcess(crds.kubeconfig, tmp_path / "operator.log", "--policy", "elastic",
                               "--failure-grace-seconds=0", "--policy-param",
                               f"elastic_hysteresis_seconds={HYSTERESIS_SECONDS}",
                               env={"KUBECONFIG": str(crds.kubeconfig)}).start()
        started.append(proc)
        return proc

    yield start
    clean_up(crds, namespace, "elasticjobs", started)


def world_sizes(run: Run) -> list[int]:
    """World sizes in the order the steps ran, repeats collapsed: [4, 3, 4] for shrink + grow."""
    out: list[int] = []
    for record in steps_of(run.records):
        if not out or out[-1] != record["world_size"]:
            out.append(record["world_size"])
    return out


def test_in_place_reshard_keeps_the_loss_curve(crds, namespace, operator, reference, tmp_path):
    operator()
    run = run_job(crds.kubeconfig, namespace, "in_memory", tmp_path / "job", steps=STEPS,
                  step_delay=STEP_DELAY_SECONDS["in_memory"], fail_after_step=FAIL_AFTER_STEP)
    steps = [r["step"] for r in steps_of(run.records)]
    assert steps == list(range(STEPS)), "in place: every step exactly once, in order (none lost, none redone)"
    assert world_sizes(run) == [4, 3, 4]
    assert run.grow_generation > run.shrink_generation > 1
    diff = max_rel_diff(run, reference)
    print(f"in_memory: recovery {run.recovery_seconds:.2f} s, regrow {run.regrow_seconds:.2f} s, "
          f"loss max rel diff {diff:.3g}")
    assert diff <= 1e-5


def test_torchrun_restart_resumes_from_the_checkpoint(crds, namespace, operator, reference, tmp_path):
    operator()
    run = run_job(crds.kubeconfig, namespace, "torchrun", tmp_path / "job", steps=TORCHRUN_STEPS,
                  step_delay=STEP_DELAY_SECONDS["torchrun"], fail_after_step=FAIL_AFTER_STEP)
    records = steps_of(run.records)
    assert {r["step"] for r in records} == set(range(TORCHRUN_STEPS))
    assert world_sizes(run) == [4, 3, 4], "torchrun re-formed on the survivors, then on all 4 once the node came back"
    assert run.grow_generation > run.shrink_generation > 1
    # each restart went back to a checkpoint (a multiple of 5 steps), never further than needed
    restarts = [(a["step"], b["step"]) for a, b in itertools.pairwise(records) if b["step"] <= a["step"]]
    assert restarts, "torchrun restarted the workers: some steps are redone"
    assert all(to % 5 == 0 and to <= frm for frm, to in restarts)
    diff = max_rel_diff(run, reference)
    print(f"torchrun: recovery {run.recovery_seconds:.2f} s ({run.restart_split()}), regrow {run.regrow_seconds:.2f} s, "
          f"restarts {restarts}, loss max rel diff {diff:.3g}")
    # same data order, same state from the checkpoint: only the all-reduce's summation order differs
    assert diff <= 1e-9
