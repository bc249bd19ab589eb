"""The out-of-tree example plugin: it installs, is listed with its source, conforms and schedules.

The plugin is installed for real with pip (offline: no index, no build isolation) into a
temporary target folder that is put on the path, so the project's venv is left untouched.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.core import ClusterSnapshot
from tessera.engine import Engine
from tessera.policy import load_policy, registered_policy
from tessera.testing import check_policy, gang, node

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "policies" / "examples" / "tessera-example-policy"


class FixedClock:
    def now(self) -> float:
        return 0.0


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install the example plugin into a fresh folder; return that folder."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        check=True, capture_output=True, text=True,
    )
    return target


@pytest.fixture
def installed(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(plugin_site))
    importlib.invalidate_caches()
    yield plugin_site
    sys.modules.pop("tessera_example_policy", None)


def _cli(*args: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "tessera.cli", *args], capture_output=True, text=True, env=env)


def test_listed_with_its_source(plugin_site: Path) -> None:
    done = _cli("policies", "list", path=plugin_site)
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("spread-first"))
    assert "tessera-example-policy 0.1.0" in line and "placement" in line
    assert any(ln.startswith("best-fit") for ln in done.stdout.splitlines())


def test_passes_the_conformance_suite(installed: Path) -> None:
    assert registered_policy("spread-first").source == "tessera-example-policy 0.1.0"
    report = check_policy(lambda: load_policy("spread-first"))
    assert report.ok, report.summary()


def test_schedules_through_the_engine(installed: Path) -> None:
    """Worst fit: two 2-GPU jobs go to two different empty nodes (best fit would stack them)."""
    snap = ClusterSnapshot([node("a", "A100", 8), node("b", "A100", 8), node("c", "A100", 8)])
    engine = Engine(load_policy("spread-first"), FixedClock())
    result = engine.decide(snap, [gang("ns/one", 1, 2, submitted=0), gang("ns/two", 1, 2, submitted=1)])
    assert result.policy == "spread-first" and not result.rejected and not result.error
    nodes = [p.replicas[0].node for p in result.plan.placements]
    assert len(nodes) == 2 and len(set(nodes)) == 2


def test_the_plugin_own_tests_pass(plugin_site: Path) -> None:
    """What a plugin author runs: pytest on the plugin's tests, which subclass PolicyConformance."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(PLUGIN / "tests"),
         str(PLUGIN / "tests")],
        capture_output=True, text=True, env=env, cwd=PLUGIN,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout


@pytest.mark.slow
def test_schedules_in_the_simulator(plugin_site: Path) -> None:
    """`tessera sim run --policy spread-first`: the installed plugin runs a whole scenario."""
    scenario = ROOT / "sim" / "scenarios" / "hetero-small.yaml"
    done = _cli("sim", "run", "--scenario", str(scenario), "--policy", "spread-first,best-fit", "--no-progress",
                path=plugin_site)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(ln.split() for ln in lines if ln.startswith("POLICY"))
    rows = {ln.split()[0]: dict(zip(header, ln.split(), strict=False)) for ln in lines
            if ln.startswith(("spread-first", "best-fit"))}
    assert rows["spread-first"]["DONE"] == rows["best-fit"]["DONE"] == "150"  # every training job finished under both
