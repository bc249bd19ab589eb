"""``tessera sim``: the simulator's sub-commands.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command is used.
"""

from __future__ import annotations

import argparse
import importlib

SUBCOMMANDS = {
    "run": ("tessera.sim.run_cli", "run a scenario (cluster + workload + failures + load) under one or more policies"),
    "fgd": ("tessera.sim.fgd_cli", "the FGD (ATC'23) placement protocol on Alibaba openb node/pod lists"),
    "scale": ("tessera.sim.scale_cli", "decision latency of a policy on a synthetic cluster of N nodes and M pending gangs"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sim_command", required=True, metavar="SUBCOMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # not built yet in this checkout
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(SUBCOMMANDS[args.sim_command][0])
    return int(module.run(args) or 0)
