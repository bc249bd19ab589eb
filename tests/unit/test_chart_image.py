"""The operator image, checked statically (no Docker engine on these machines).

These guard the invariants docs/helm.md promises: a non-root numeric user, exact pins
installed without resolution, nothing to build or install software with in the final stage.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from chart_helpers import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKERFILE = ROOT / "operator" / "Dockerfile"
REQUIREMENTS = ROOT / "operator" / "requirements.txt"


def stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[list[str]] = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_two_stages_on_the_same_slim_python_base() -> None:
    build, final = stages()
    assert build[0].startswith("FROM ${PYTHON_IMAGE} AS build")
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text())
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1)), "pin a slim Python 3.11 patch tag"


def test_final_stage_runs_as_a_numeric_non_root_user_without_build_tools() -> None:
    final = stages()[-1]
    user = [i for i in final if i.startswith("USER ")]
    assert user == ["USER 65532:65532"]
    text = " ".join(final)
    for tool in ("apt-get", "apk ", "pip install", "gcc", "build-essential", "make "):
        assert tool not in text, f"final stage must not install or build ({tool!r})"
    assert "COPY --from=build /opt/tessera /opt/tessera" in final
    assert any(i.startswith("ENTRYPOINT") and "tessera" in i for i in final)


def test_build_stage_installs_exact_pins_only_and_drops_pip() -> None:
    build = " ".join(stages()[0])
    assert "pip install --no-deps --only-binary=:all: -r /tmp/requirements.txt -r /tmp/requirements-build.txt" in build
    assert "pip install --no-deps --no-build-isolation --no-compile /src" in build
    assert "pip uninstall --yes setuptools wheel pip" in build
    for line in (ROOT / "operator" / "requirements-build.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", line), f"not an exact pin: {line}"
    # the pinned build backend satisfies what pyproject.toml asks of it
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = dict(ln.split("==") for ln in (ROOT / "operator" / "requirements-build.txt").read_text().splitlines()
                if ln and not ln.startswith("#"))
    for spec in backend:
        req = Requirement(spec)
        assert req.name in pins and req.specifier.contains(pins[req.name]), spec


def test_requirements_pin_every_runtime_dependency_exactly() -> None:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        assert canonicalize_name(req.name) in pins, f"{req.name} (a runtime dependency) is not pinned"
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), f"{req.name} pin violates {spec}"
    # and the transitive closure: each pinned package's own runtime requirements are pinned
    for name in list(pins):
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            assert canonicalize_name(req.name) in pins, f"{req.name} (needed by {name}) is not pinned"


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    lines = [ln for ln in (ROOT / "operator" / "Dockerfile.dockerignore").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M))
    sources = {src for group in copied for src in group.split()}
    assert sources <= allowed, f"COPY sources not sent to the builder: {sources - allowed}"
