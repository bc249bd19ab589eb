"""Run every benchmark (``python -m bench``) or the named ones (``python -m bench fgd gavel``).

Options after the names go to each named benchmark (``python -m bench torch_elastic --trials 2``).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    first_option = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    wanted, options = argv[:first_option] or names, argv[first_option:]
    unknown = set(wanted) - set(names)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; available: {', '.join(names)}")
        return 2
    status = 0
    for name in wanted:
        print(f"== bench {name}", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        status |= int(module.main(list(options)) or 0)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
