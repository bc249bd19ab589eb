"""``tessera policies``: list installed policies with where they come from."""

from __future__ import annotations

import argparse
import json

from tessera.policy.registry import PolicyLoadError, available_policies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="every installed policy, built-in or plugin")
    listing.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    try:
        policies = available_policies()
    except PolicyLoadError as err:
        print(f"error: {err}")
        return 1
    if args.json:
        print(json.dumps([
            {"name": p.name, "version": p.version, "decides": sorted(d.value for d in p.decides),
             "source": p.source, "entry_point": p.entry_point, "description": p.description}
            for p in policies
        ], indent=2))
        return 0
    rows = [("NAME", "VERSION", "DECIDES", "SOURCE", "DESCRIPTION")]
    rows += [(p.name, p.version, ",".join(sorted(d.value for d in p.decides)), p.source, p.description)
             for p in policies]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0
