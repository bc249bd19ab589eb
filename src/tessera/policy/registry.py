"""Finding policies: built-ins and plugins share the ``tessera.policies`` entry-point group.

Nothing is silently skipped: a plugin that fails to import, does not satisfy the
:class:`~tessera.policy.Policy` protocol, declares unknown decisions, or clashes with another
policy's name raises :class:`PolicyLoadError` naming the distribution, the entry point and the
cause.  :func:`discover` collects every problem at once so a user sees all broken plugins in one
go; :func:`available_policies` and :func:`load_policy` raise on them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from tessera.policy.base import Decision, Policy
from tessera.policy.capabilities import ReshardsOnFailure, capability_problems

GROUP = "tessera.policies"


class PolicyLoadError(RuntimeError):
    """A policy could not be found or loaded. The message says which plugin and why."""


@dataclass(frozen=True, slots=True)
class RegisteredPolicy:
    """An installed policy, as its entry point declares it."""

    name: str
    version: str
    decides: frozenset[Decision]
    #: distribution that provides it, e.g. "tessera 0.1.0" or "my-plugin 1.2"
    source: str
    entry_point: str
    description: str
    #: zero-or-more-keyword-argument callable returning the policy (usually the class)
    factory: Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Discovery:
    """Every installed policy that loaded, and every one that did not (with the reason)."""

    policies: list[RegisteredPolicy]
    errors: list[PolicyLoadError] = field(default_factory=list)


def _entry_points() -> list[EntryPoint]:
    return sorted(entry_points(group=GROUP), key=lambda ep: (ep.name, ep.value))


def _source(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"


def _load(ep: EntryPoint) -> RegisteredPolicy:
    where = f"entry point {ep.name!r} ({ep.value}) from {_source(ep)}"
    try:
        factory = ep.load()
    except Exception as err:  # any import failure of a plugin must surface with context
        raise PolicyLoadError(f"cannot import policy {where}: {type(err).__name__}: {err}") from err
    if not callable(factory):
        raise PolicyLoadError(f"policy {where} is a {type(factory).__name__}, not a class or factory")
    missing = [attr for attr in ("name", "version", "decides", "decide") if not hasattr(factory, attr)]
    if missing:
        raise PolicyLoadError(
            f"policy {where} lacks {', '.join(missing)} (a policy class declares name, version, decides "
            "and defines decide(snapshot, pending, ctx))"
        )
    if factory.name != ep.name:
        raise PolicyLoadError(f"policy {where} calls itself {factory.name!r}; the names must match")
    if not isinstance(factory.version, str) or not factory.version:
        raise PolicyLoadError(f"policy {where} has no version string (got {factory.version!r})")
    try:
        decides = frozenset(Decision(d) for d in factory.decides)
    except (TypeError, ValueError) as err:
        raise PolicyLoadError(
            f"policy {where} declares decides={factory.decides!r}; allowed: "
            f"{', '.join(d.value for d in Decision)} ({err})"
        ) from err
    if not decides:
        raise PolicyLoadError(f"policy {where} decides nothing (declare placement, ordering, ...)")
    doc = inspect.getdoc(factory) or ""
    return RegisteredPolicy(
        name=ep.name,
        version=factory.version,
        decides=decides,
        source=_source(ep),
        entry_point=ep.value,
        description=doc.splitlines()[0] if doc else "",
        factory=factory,
    )


def discover() -> Discovery:
    """Load every entry point of the group; collect the ones that fail instead of stopping at the first."""
    seen: dict[str, RegisteredPolicy] = {}
    errors: list[PolicyLoadError] = []
    for ep in _entry_points():
        try:
            policy = _load(ep)
        except PolicyLoadError as err:
            errors.append(err)
            continue
        other = seen.get(policy.name)
        if other is not None and other.entry_point != policy.entry_point:
            errors.append(PolicyLoadError(
                f"policy name {policy.name!r} is registered twice: {other.entry_point} by {other.source} "
                f"and {policy.entry_point} by {policy.source}; uninstall one"
            ))
            continue
        seen[policy.name] = policy
    return Discovery(sorted(seen.values(), key=lambda p: p.name), errors)


def available_policies() -> list[RegisteredPolicy]:
    """Every installed policy. Raises :class:`PolicyLoadError` naming every broken plugin."""
    found = discover()
    if found.errors:
        if len(found.errors) == 1:
            raise found.errors[0]
        raise PolicyLoadError(
            f"{len(found.errors)} policies failed to load:\n" + "\n".join(f"  - {e}" for e in found.errors)
        )
    return found.policies


def registered_policy(name: str) -> RegisteredPolicy:
    """The installed policy called ``name`` (its metadata and factory), without instantiating it."""
    matches = [ep for ep in _entry_points() if ep.name == name]
    if not matches:
        known = ", ".join(sorted({ep.name for ep in _entry_points()})) or "none installed"
        raise PolicyLoadError(f"no policy named {name!r}; installed: {known}")
    if len({ep.value for ep in matches}) > 1:
        raise PolicyLoadError(
            f"policy name {name!r} is registered twice: "
            + " and ".join(f"{ep.value} by {_source(ep)}" for ep in matches) + "; uninstall one"
        )
    return _load(matches[0])


def load_policy(name: str, **params: Any) -> Policy:
    """Instantiate the policy called ``name`` with ``params``.

    Any failure (unknown name, broken plugin, bad parameters, a constructor that raises, e.g.
    a missing weights file) becomes a :class:`PolicyLoadError` saying which policy and why.
    """
    registered = registered_policy(name)
    try:
        policy = registered.factory(**params)
    except TypeError as err:
        raise PolicyLoadError(f"policy {name!r} rejected its parameters {params}: {err}") from err
    except Exception as err:
        raise PolicyLoadError(
            f"policy {name!r} from {registered.source} failed to start: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(policy, Policy):
        raise PolicyLoadError(f"policy {name!r} does not implement decide(snapshot, pending, ctx)")
    problems = capability_problems(policy)
    if problems:
        raise PolicyLoadError(f"policy {name!r} from {registered.source} claims capabilities it does not honour: "
                              + "; ".join(problems))
    return policy


def with_failure_handling(policy: Policy) -> Policy:
    """``policy`` plus elastic failure handling (:class:`~tessera.policy.capabilities.ReshardsOnFailure`).

    Lost replicas of a running training job are resharded away (shrink within min..max
    keeping the global batch), a job below its minimum is released and requeued, and a
    job below its target grows back after the hysteresis; placement, preemption and
    rounds stay ``policy``'s, which keeps its name.  A policy that already reshards is
    returned as it is.
    """
    if isinstance(policy, ReshardsOnFailure):
        return policy
    from tessera.policies.elastic import with_failure_handling as wrap

    return wrap(policy)
