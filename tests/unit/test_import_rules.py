"""The layering rules of ARCHITECTURE.md, checked on the source (no import side effects)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "tessera"
KUBE = {"kopf", "kubernetes", "prometheus_client", "kubernetes_asyncio"}


def imports_of(package: str) -> dict[Path, set[str]]:
    out = {}
    for path in (SRC / package).rglob("*.py") if package else SRC.glob("*.py"):
        names = set()
        for stmt in ast.walk(ast.parse(path.read_text())):
            if isinstance(stmt, ast.Import):
                names |= {a.name for a in stmt.names}
            elif isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                names.add(stmt.module)
        out[path] = names
    return out


def offenders(package: str, forbidden) -> list[str]:
    return [f"{p.relative_to(SRC)} imports {n}" for p, names in imports_of(package).items()
            for n in names if forbidden(n)]


def top(name: str) -> str:
    return name.split(".")[0]


def test_core_is_stdlib_only_and_imports_no_tessera():
    import sys
    allowed = set(sys.stdlib_module_names) | {"tessera"}
    bad = offenders("core", lambda n: top(n) not in allowed or (n.startswith("tessera.") and not n.startswith("tessera.core")))
    assert not bad, bad


def test_only_operator_imports_kubernetes_clients():
    for package in ("core", "policy", "solver", "policies", "engine", "api", "sim", "testing", ""):
        bad = offenders(package, lambda n: top(n) in KUBE)
        assert not bad, bad


def test_operator_and_sim_do_not_import_each_other():
    assert not offenders("operator", lambda n: n.startswith("tessera.sim"))
    assert not offenders("sim", lambda n: n.startswith("tessera.operator"))


def test_policies_see_only_core_policy_solver():
    ok = ("tessera.core", "tessera.policy", "tessera.solver", "tessera.policies")
    bad = offenders("policies", lambda n: n.startswith("tessera") and not n.startswith(ok))
    assert not bad, bad
