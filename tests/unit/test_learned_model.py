"""Loading learned weights: clear errors for missing, corrupt or mismatched files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tessera.core import ClusterSnapshot
from tessera.engine import Engine
from tessera.policies.learned.features import ORDERING_FEATURES, PLACEMENT_FEATURES
from tessera.policies.learned.model import (
    LearnedModel,
    LinearScorer,
    ModelLoadError,
    edd_ordering_weights,
    fgd_equivalent_weights,
    load_model,
)
from tessera.policies.learned.policy import LearnedPolicy
from tessera.policy import PolicyLoadError, load_policy
from tessera.testing import gang, node


def artifact(tmp_path: Path) -> Path:
    model = LearnedModel("unit", "3", LinearScorer.identity(PLACEMENT_FEATURES, fgd_equivalent_weights()),
                         LinearScorer.identity(ORDERING_FEATURES, edd_ordering_weights()))
    model.save(tmp_path / "unit-v3")
    return tmp_path / "unit-v3"


def test_round_trip(tmp_path: Path) -> None:
    model = load_model(artifact(tmp_path))
    assert model.artifact == "unit@3"
    assert np.array_equal(model.placement.weights, fgd_equivalent_weights())
    assert load_model(artifact(tmp_path) / "weights.json").artifact == "unit@3"


def test_missing_weights_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"not found at .*nothing.*make train"):
        load_model(tmp_path / "nothing")
    with pytest.raises(PolicyLoadError, match=r"'learned' .*failed to start: ModelLoadError: learned weights not found"):
        load_policy("learned", weights=str(tmp_path / "nothing"))


def test_corrupt_weights(tmp_path: Path) -> None:
    folder = artifact(tmp_path)
    (folder / "weights.json").write_text('{"format": "tessera-learned/1", "name": ')
    with pytest.raises(ModelLoadError, match=r"unreadable \(JSONDecodeError"):
        load_model(folder)
    (folder / "weights.json").write_text("[1, 2, 3]")
    with pytest.raises(ModelLoadError, match="not a Tessera learned-policy artifact"):
        load_model(folder)


def edit(folder: Path, change) -> None:  # type: ignore[no-untyped-def]
    data = json.loads((folder / "weights.json").read_text())
    change(data)
    (folder / "weights.json").write_text(json.dumps(data))


def test_mismatched_features_shapes_and_versions(tmp_path: Path) -> None:
    folder = artifact(tmp_path)
    edit(folder, lambda d: d["placement"]["features"].append("gpu_temperature"))
    with pytest.raises(ModelLoadError, match=r"unknown \['gpu_temperature'\].*retrain"):
        load_model(folder)
    folder = artifact(tmp_path / "b")
    edit(folder, lambda d: d["placement"].update(weights=[1.0, 2.0]))
    with pytest.raises(ModelLoadError, match=r"weights has shape \(2,\), expected \(12,\)"):
        load_model(folder)
    folder = artifact(tmp_path / "c")
    edit(folder, lambda d: d.update(feature_version="0"))
    with pytest.raises(ModelLoadError, match="feature version '0'"):
        load_model(folder)
    folder = artifact(tmp_path / "d")
    edit(folder, lambda d: d["ordering"].update(scale=[0.0] * len(ORDERING_FEATURES)))
    with pytest.raises(ModelLoadError, match="scale must be positive"):
        load_model(folder)


class Clock:
    def now(self) -> float:
        return 0.0


def test_artifact_version_reaches_cycle_stats(tmp_path: Path) -> None:
    policy = LearnedPolicy(weights=artifact(tmp_path))
    result = Engine(policy, Clock()).decide(ClusterSnapshot([node("a", "A100", 8)]), [gang("ns/j", 1, 2)])
    assert result.stats["policy_artifact"] == "unit@3"
    assert result.plan.placements[0].reason == "learned unit@3"
