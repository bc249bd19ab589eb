"""Generated artifacts flow one way: api models -> crds/ -> helm/tessera/crds/. Drift fails."""

from __future__ import annotations

import pytest
from chart_helpers import CHART, ROOT

crdgen = pytest.importorskip("tessera.api.crdgen", reason="the CRD generator (tessera.api.crdgen) is not in this tree yet")

CHART_CRDS = CHART / "crds"
TOP_CRDS = ROOT / "crds"
FIX = "run `make crds` (python -m tessera.api.crdgen --out crds --out helm/tessera/crds)"


def on_disk(folder) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.yaml"))}


def test_chart_crds_equal_the_generator_output() -> None:
    expected = crdgen.render_crds()
    assert expected, "the generator rendered no CRDs"
    actual = on_disk(CHART_CRDS)
    assert sorted(actual) == sorted(expected), f"helm/tessera/crds/ has other files than the generator: {FIX}"
    for name, text in expected.items():
        assert actual[name] == text, f"helm/tessera/crds/{name} differs from the models: {FIX}"


def test_top_level_crds_equal_the_chart_crds() -> None:
    assert on_disk(TOP_CRDS) == on_disk(CHART_CRDS), f"crds/ and helm/tessera/crds/ differ: {FIX}"
