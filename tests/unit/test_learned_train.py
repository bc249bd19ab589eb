"""`make train` end to end on a tiny budget: it writes a loadable, documented artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.policies.learned.model import load_model
from tessera.policies.learned.policy import LearnedPolicy
from tessera.policies.learned.train import main
from tessera.testing import check_policy


@pytest.mark.data
@pytest.mark.slow
def test_tiny_training_run_writes_a_working_artifact(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny-v9"
    args = ["--data", str(shared_data / "alibaba-gpu-v2023" / "csv"), "--out", str(out), "--version", "9",
            "--generations", "1", "--popsize", "4", "--keep-every", "48", "--train-seeds", "0",
            "--test-seeds", "100", "--ordering-generations", "1"]
    assert main(args) == 0
    model = load_model(out)
    assert model.artifact == "tiny@9"
    card = (out / "MODEL_CARD.md").read_text()
    for needle in ("Objective", "Train", "Test", "never", "CMA-ES", "seed", "Queue ordering (deadlines)", "gpuspec25"):
        assert needle in card
    assert check_policy(lambda: LearnedPolicy(weights=out), seeds=range(2)).ok
