"""The learned dispatcher's parametric scorers and their versioned on-disk artifact.

An artifact is a folder ``policies/learned/<name>-v<k>/`` holding ``weights.json`` and
``MODEL_CARD.md``. ``weights.json`` names the feature module version and the feature names
the weights were trained on; loading refuses anything that does not match, with a message
saying what to do (retrain with ``make train`` or point at another artifact).

Scoring is a linear form over standardised features, ``score = ((x - mean) / scale) @ w``:
small enough to run in numpy in microseconds per decision, and what CMA-ES searches.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.policies.learned.features import FEATURE_VERSION, ORDERING_FEATURES, PLACEMENT_FEATURES

FORMAT = "tessera-learned/1"
WEIGHTS_FILE = "weights.json"
CARD_FILE = "MODEL_CARD.md"

#: the repository's artifact folder (present in a source checkout / editable install)
ARTIFACTS = Path(__file__).resolve().parents[4] / "policies" / "learned"
DEFAULT_ARTIFACT = "openb-dispatch-v1"


class ModelLoadError(RuntimeError):
    """A weights file is missing, unreadable or does not match this feature module."""


@dataclass(frozen=True, slots=True)
class LinearScorer:
    """``score(x) = ((x - mean) / scale) @ weights``; lower is better."""

    feature_names: tuple[str, ...]
    weights: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        n = len(self.feature_names)
        for label, arr in (("weights", self.weights), ("mean", self.mean), ("scale", self.scale)):
            if arr.shape != (n,):
                raise ModelLoadError(f"{label} has shape {arr.shape}, expected ({n},) for {n} features")
            if not np.all(np.isfinite(arr)):
                raise ModelLoadError(f"{label} holds non-finite values")
        if np.any(self.scale <= 0):
            raise ModelLoadError("scale must be positive")

    @classmethod
    def identity(cls, feature_names: Sequence[str], weights: Sequence[float]) -> LinearScorer:
        n = len(feature_names)
        return cls(tuple(feature_names), np.asarray(weights, dtype=np.float64), np.zeros(n), np.ones(n))

    def score(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.asarray(((features - self.mean) / self.scale) @ self.weights, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(self.feature_names),
            "weights": [float(v) for v in self.weights],
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], expected: Sequence[str], where: str) -> LinearScorer:
        try:
            names = tuple(data["features"])
            arrays = [np.asarray(data[k], dtype=np.float64) for k in ("weights", "mean", "scale")]
        except (KeyError, TypeError, ValueError) as err:
            raise ModelLoadError(f"{where}: malformed scorer ({type(err).__name__}: {err})") from err
        if names != tuple(expected):
            missing = sorted(set(expected) - set(names))
            extra = sorted(set(names) - set(expected))
            raise ModelLoadError(
                f"{where}: trained on features {list(names)}, this version computes {list(expected)}"
                f" (missing {missing}, unknown {extra}); retrain with `make train`"
            )
        try:
            return cls(names, *arrays)
        except ModelLoadError as err:
            raise ModelLoadError(f"{where}: {err}") from err


@dataclass(frozen=True, slots=True)
class LearnedModel:
    """A placement scorer and an ordering scorer, with the artifact's identity."""

    name: str
    version: str
    placement: LinearScorer
    ordering: LinearScorer
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def artifact(self) -> str:
        """``name@version``, shown in status and metrics."""
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "feature_version": FEATURE_VERSION,
            "placement": self.placement.to_json(),
            "ordering": self.ordering.to_json(),
            "metadata": dict(self.metadata),
        }

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / WEIGHTS_FILE
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")
        return path


def resolve_artifact(location: str | Path | None, default: str = DEFAULT_ARTIFACT) -> Path:
    """The weights file for ``location``: a weights file, an artifact folder, or an artifact name."""
    if location is None:
        location = default
    path = Path(location)
    if path.suffix == ".json":
        return path
    if path.is_dir() or len(path.parts) > 1:
        return path / WEIGHTS_FILE
    return ARTIFACTS / path / WEIGHTS_FILE


def read_artifact(
    path: Path, *, fmt: str, feature_version: str, keys: Sequence[str], weights: str = "learned weights",
    artifact: str = "a Tessera learned-policy artifact", features: str = "feature version",
    train: str = "make train",
) -> dict[str, Any]:
    """The checked JSON of a weights file: present, readable, of format ``fmt``, computed on
    ``feature_version`` and holding ``keys``; else a :class:`ModelLoadError` naming the file
    and the fix (the wording names the artifact kind and its ``train`` command)."""
    if not path.is_file():
        raise ModelLoadError(
            f"{weights} not found at {path}; run `{train}` to produce them, or pass "
            f"weights=<artifact folder or weights.json> (artifacts live in {ARTIFACTS})"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{weights} at {path} are unreadable ({type(err).__name__}: {err}); "
                             f"restore the file from git or run `{train}`") from err
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ModelLoadError(f"{path} is not {artifact} (format {found!r}, expected {fmt!r})")
    if str(data.get("feature_version")) != feature_version:
        raise ModelLoadError(
            f"{path} was trained on {features} {data.get('feature_version')!r}; this Tessera computes "
            f"version {feature_version!r}; retrain with `{train}`"
        )
    for key in keys:
        if key not in data:
            raise ModelLoadError(f"{path} lacks {key!r}")
    return data


def load_model(location: str | Path | None = None) -> LearnedModel:
    """Load and check an artifact; every failure is a :class:`ModelLoadError` naming the file and the fix."""
    path = resolve_artifact(location)
    data = read_artifact(path, fmt=FORMAT, feature_version=FEATURE_VERSION,
                         keys=("name", "version", "placement", "ordering"))
    return LearnedModel(
        name=str(data["name"]),
        version=str(data["version"]),
        placement=LinearScorer.from_json(data["placement"], PLACEMENT_FEATURES, f"{path} placement"),
        ordering=LinearScorer.from_json(data["ordering"], ORDERING_FEATURES, f"{path} ordering"),
        metadata=data.get("metadata", {}),
    )


def fgd_equivalent_weights() -> npt.NDArray[np.float64]:
    """Weights under which the placement scorer ranks nodes exactly as FGD does (frag delta only).

    CMA-ES starts here, so the search begins at the published heuristic and improves on it.
    """
    w = np.zeros(len(PLACEMENT_FEATURES))
    w[PLACEMENT_FEATURES.index("frag_delta_gpus")] = 1.0
    return w


def edd_ordering_weights() -> npt.NDArray[np.float64]:
    """Ordering weights that sort by slack (least slack first)."""
    w = np.zeros(len(ORDERING_FEATURES))
    w[ORDERING_FEATURES.index("slack_hours")] = 1.0
    return w


def mdd_ordering_weights() -> npt.NDArray[np.float64]:
    """Ordering weights that rank exactly like MDD (modified due date), where CMA-ES starts."""
    w = np.zeros(len(ORDERING_FEATURES))
    w[ORDERING_FEATURES.index("modified_due_hours")] = 1.0
    return w

