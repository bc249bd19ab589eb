"""The ``tessera`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# sub-command -> module providing add_arguments(parser) and run(args) -> int.
# Imported only when used, so `tessera sim` never loads the Kubernetes client.
_COMMANDS = {
    "policies": ("tessera.policy.cli", "list and inspect installed scheduling policies"),
    "operator": ("tessera.operator.main", "run the operator against the current KUBECONFIG"),
    "sim": ("tessera.sim.cli", "run the trace-driven simulator"),
    "whatif": ("tessera.operator.whatif",
               "what each policy would do on the live cluster (or a saved snapshot) now; writes nothing"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="tessera", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in _COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module = importlib.import_module(_COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(prog=f"tessera {name}", description=_COMMANDS[name][1])
    module.add_arguments(command_parser)
    args = command_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
