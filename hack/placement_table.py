"""Print where each replica of Tessera's workloads landed (used by `make demo`).

Usage: placement_table.py WORKLOADS.json PODS.json NODES.json (kubectl -o json lists).
"""

from __future__ import annotations

import json
import sys

from tessera.api.discovery import discover


def load(path: str) -> list[dict]:
    with open(path) as f:
        return json.load(f)["items"]


def main(workloads_path: str, pods_path: str, nodes_path: str) -> int:
    nodes = {}
    for n in load(nodes_path):
        found = discover(n["metadata"].get("labels") or {}, n["status"].get("allocatable") or {},
                         n["status"].get("capacity") or {})
        nodes[n["metadata"]["name"]] = found.accelerator_type or "-"
    pods = {}
    for p in load(pods_path):
        labels = p["metadata"].get("labels") or {}
        pods.setdefault((p["metadata"]["namespace"], labels.get("tessera.dev/workload", "")), []).append(p)
    rows = [("KIND", "WORKLOAD", "REPLICA", "POD", "NODE", "ACCELERATOR", "POD PHASE")]
    waiting = []
    for w in load(workloads_path):
        meta, status = w["metadata"], w.get("status") or {}
        key = (meta.get("namespace", "default"), meta["name"])
        mine = sorted(pods.get(key, []), key=lambda p: int(p["metadata"]["labels"].get("tessera.dev/replica", 0)))
        for p in mine:
            node = p["spec"].get("nodeName") or "(unbound)"
            rows.append((w["kind"], f"{key[0]}/{key[1]}", p["metadata"]["labels"].get("tessera.dev/replica", "?"),
                         p["metadata"]["name"], node,
                         # the type Tessera placed it on (a DRA node advertises no extended resource)
                         (p["metadata"].get("annotations") or {}).get("tessera.dev/accelerator-type")
                         or nodes.get(node, "-"), p.get("status", {}).get("phase", "")))
        if not mine:
            cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Scheduled"), {})
            waiting.append(f"{w['kind']} {key[0]}/{key[1]}: {status.get('phase', 'Pending')} - "
                           f"{cond.get('reason', '')}: {cond.get('message', '')}")
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    if waiting:
        print("\nWaiting:")
        for line in waiting:
            print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:4]))
