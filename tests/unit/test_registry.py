"""The registry fails loudly: every broken plugin is reported with its distribution and cause."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tessera.policy import PolicyLoadError, available_policies, discover, load_policy

GOOD = '''
class Fine:
    """A fine policy."""
    name = "{name}"
    version = "1.0"
    decides = frozenset({{"placement"}})
    def __init__(self, **params):
        if params.get("explode"):
            raise FileNotFoundError("weights.json is missing")
    def decide(self, snapshot, pending, ctx):
        from tessera.core import Plan
        return Plan()
'''


def make_distribution(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Write an installed distribution by hand: a dist-info folder with entry points, plus modules."""
    info = site / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[tessera.policies]\n{lines}")
    for module, text in modules.items():
        (site / f"{module}.py").write_text(text)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return tmp_path


def test_builtins_load() -> None:
    names = {p.name for p in available_policies()}
    assert "best-fit" in names
    assert load_policy("best-fit").name == "best-fit"


def test_import_failure_names_distribution_entry_point_and_cause(site: Path) -> None:
    make_distribution(site, "broken-plugin", {"broken": "broken_mod:Policy"},
                      {"broken_mod": "import does_not_exist_anywhere\n"})
    with pytest.raises(PolicyLoadError) as err:
        available_policies()
    text = str(err.value)
    assert "'broken'" in text and "broken-plugin 0.3" in text and "does_not_exist_anywhere" in text
    found = discover()  # the healthy ones still load, the broken one is reported
    assert "best-fit" in {p.name for p in found.policies} and len(found.errors) == 1


def test_every_kind_of_bad_plugin_is_reported_at_once(site: Path) -> None:
    make_distribution(site, "bad-plugins", {
        "nometa": "bad_mod:NoMeta",
        "wrongname": "bad_mod:Wrong",
        "baddecides": "bad_mod:BadDecides",
        "best-fit": "bad_mod:Clash",
    }, {"bad_mod": (
        "class NoMeta:\n    def decide(self, s, p, c): pass\n"
        "class Wrong:\n    name='other'; version='1'; decides=frozenset({'placement'})\n    def decide(self, s, p, c): pass\n"
        "class BadDecides:\n    name='baddecides'; version='1'; decides=frozenset({'teleport'})\n    def decide(self, s, p, c): pass\n"
        "class Clash:\n    name='best-fit'; version='9'; decides=frozenset({'placement'})\n    def decide(self, s, p, c): pass\n"
    )})
    errors = "\n".join(str(e) for e in discover().errors)
    assert "lacks name, version, decides" in errors
    assert "calls itself 'other'" in errors
    assert "decides=" in errors and "teleport" in errors
    assert "registered twice" in errors
    with pytest.raises(PolicyLoadError, match="4 policies failed to load"):
        available_policies()
    with pytest.raises(PolicyLoadError, match="registered twice"):
        load_policy("best-fit")


def test_constructor_failures_and_bad_params_are_load_errors(site: Path) -> None:
    make_distribution(site, "fine-plugin", {"fine": "fine_mod:Fine"}, {"fine_mod": GOOD.format(name="fine")})
    assert load_policy("fine").name == "fine"
    with pytest.raises(PolicyLoadError, match=r"failed to start: FileNotFoundError: weights\.json is missing"):
        load_policy("fine", explode=True)
    with pytest.raises(PolicyLoadError, match=r"no policy named 'nope'; installed: .*best-fit"):
        load_policy("nope")


def test_cli_lists_good_policies_and_exits_nonzero_with_the_reason(tmp_path: Path) -> None:
    make_distribution(tmp_path, "broken-plugin", {"broken": "broken_mod:Policy"},
                      {"broken_mod": "raise RuntimeError('plugin needs CUDA 13')\n"})
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "tessera.cli", "policies", "list"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert "best-fit" in done.stdout
    assert "RuntimeError: plugin needs CUDA 13" in done.stderr and "broken-plugin 0.3" in done.stderr
    done = subprocess.run([sys.executable, "-m", "tessera.cli", "policies", "list", "--json"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 1 and '"errors"' in done.stdout and "CUDA 13" in done.stdout


def test_policies_list_names_every_built_in_policy(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import distribution

    from tessera.cli import main as tessera_main

    declared = {ep.name for ep in distribution("tessera").entry_points if ep.group == "tessera.policies"}
    assert {"best-fit", "cpsat", "fgd", "fifo", "gavel", "learned", "elastic", "rebalance-cost-aware"} <= declared
    assert tessera_main(["policies", "list"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}
    assert declared <= listed
