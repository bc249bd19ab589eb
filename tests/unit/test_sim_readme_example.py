"""The scenario format shown in sim/README.md is a valid scenario (the docs stay true)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tessera.sim.scenario import scenario_from_dict

ROOT = Path(__file__).resolve().parents[2]


def test_the_documented_scenario_format_loads() -> None:
    text = (ROOT / "sim" / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None, "sim/README.md lost its scenario example"
    scenario = scenario_from_dict(yaml.safe_load(block.group(1)), ROOT / "sim" / "scenarios" / "example.yaml")
    assert scenario.spec.name == "my-scenario"
    assert scenario.spec.failures is not None and scenario.spec.failures.mode == "restart"
