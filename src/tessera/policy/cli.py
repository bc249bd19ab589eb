"""``tessera policies``: list installed policies with where they come from.

A broken plugin is never hidden: the policies that loaded are listed, every failure is
printed to stderr with its reason, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from tessera.policy.registry import discover


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="every installed policy, built-in or plugin")
    listing.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    found = discover()
    policies = found.policies
    if args.json:
        print(json.dumps({
            "policies": [
                {"name": p.name, "version": p.version, "decides": sorted(d.value for d in p.decides),
                 "source": p.source, "entry_point": p.entry_point, "description": p.description}
                for p in policies
            ],
            "errors": [str(e) for e in found.errors],
        }, indent=2))
    else:
        rows = [("NAME", "VERSION", "DECIDES", "SOURCE", "DESCRIPTION")]
        rows += [(p.name, p.version, ",".join(sorted(d.value for d in p.decides)), p.source, p.description)
                 for p in policies]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    for err in found.errors:
        print(f"error: {err}", file=sys.stderr)
    return 1 if found.errors else 0
