"""Finding policies: built-ins and plugins share the ``tessera.policies`` entry-point group.

Nothing is silently skipped: a plugin that fails to import or does not satisfy the
:class:`~tessera.policy.Policy` protocol raises :class:`PolicyLoadError` naming the
distribution, the entry point and the cause.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from tessera.policy.base import Decision, Policy

GROUP = "tessera.policies"


class PolicyLoadError(RuntimeError):
    """A policy could not be found or loaded."""


@dataclass(frozen=True, slots=True)
class RegisteredPolicy:
    name: str
    version: str
    decides: frozenset[Decision]
    #: distribution that provides it, e.g. "tessera 0.1.0" or "my-plugin 1.2"
    source: str
    entry_point: str
    description: str
    factory: type


def _entry_points() -> list[EntryPoint]:
    return sorted(entry_points(group=GROUP), key=lambda ep: ep.name)


def _source(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"


def _load(ep: EntryPoint) -> RegisteredPolicy:
    where = f"entry point {ep.name!r} ({ep.value}) from {_source(ep)}"
    try:
        factory = ep.load()
    except Exception as err:  # any import failure of a plugin must surface with context
        raise PolicyLoadError(f"cannot import policy {where}: {type(err).__name__}: {err}") from err
    missing = [attr for attr in ("name", "version", "decides", "decide") if not hasattr(factory, attr)]
    if missing:
        raise PolicyLoadError(f"policy {where} lacks {', '.join(missing)}")
    if factory.name != ep.name:
        raise PolicyLoadError(f"policy {where} calls itself {factory.name!r}; the names must match")
    decides = frozenset(Decision(d) for d in factory.decides)
    doc = inspect.getdoc(factory) or ""
    return RegisteredPolicy(
        name=ep.name,
        version=str(factory.version),
        decides=decides,
        source=_source(ep),
        entry_point=ep.value,
        description=doc.splitlines()[0] if doc else "",
        factory=factory,
    )


def available_policies() -> list[RegisteredPolicy]:
    """Every installed policy. Raises :class:`PolicyLoadError` if any plugin is broken."""
    seen: dict[str, RegisteredPolicy] = {}
    for ep in _entry_points():
        policy = _load(ep)
        if policy.name in seen and seen[policy.name].entry_point != policy.entry_point:
            raise PolicyLoadError(
                f"policy name {policy.name!r} is registered twice: by {seen[policy.name].source} "
                f"and by {policy.source}"
            )
        seen[policy.name] = policy
    return list(seen.values())


def load_policy(name: str, **params: Any) -> Policy:
    """Instantiate the policy called ``name`` with ``params``."""
    matches = [ep for ep in _entry_points() if ep.name == name]
    if not matches:
        known = ", ".join(sorted({ep.name for ep in _entry_points()})) or "none installed"
        raise PolicyLoadError(f"no policy named {name!r}; installed: {known}")
    registered = _load(matches[0])
    try:
        policy = registered.factory(**params)
    except TypeError as err:
        raise PolicyLoadError(f"policy {name!r} rejected its parameters {params}: {err}") from err
    if not isinstance(policy, Policy):
        raise PolicyLoadError(f"policy {name!r} does not implement decide(snapshot, pending, ctx)")
    return policy
