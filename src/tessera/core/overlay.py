"""A read-only mapping that is a shared base plus a small change set (copy-on-write).

``ClusterSnapshot.derive`` hands out a new snapshot per decision; copying a 10,000-entry
dict of allocations each time costs ~100 us, more than the decision.  An :class:`Overlay`
shares its base dict (never mutated) and holds only what differs: keys set (in order) and
keys removed.  Deriving copies just the change set; once it grows past about twice the
square root of the base's size, the next derivation folds it into a fresh base (so a
derivation costs O(sqrt n), amortised).  Iteration order is the base's without the removed
keys, then the keys set, which is what a dict built by deleting the removed keys and
appending the set ones would give.
Pure: stdlib only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Overlay(Mapping[K, V], Generic[K, V]):
    """``base`` without ``removed`` (values replaced in place by ``over``), then ``added``.

    Keys in ``added`` are never visible in the base; keys in ``over`` always are.
    """

    __slots__ = ("_added", "_base", "_over", "_removed")

    def __init__(self, base: Mapping[K, V], over: dict[K, V] | None = None, removed: frozenset[K] = frozenset(),
                 added: dict[K, V] | None = None) -> None:
        self._base = base
        self._over: dict[K, V] = over or {}
        self._removed = removed
        self._added: dict[K, V] = added or {}

    def __getitem__(self, key: K) -> V:
        if key in self._added:
            return self._added[key]
        if key in self._over:
            return self._over[key]
        if key in self._removed:
            raise KeyError(key)
        return self._base[key]

    def __contains__(self, key: object) -> bool:
        return key in self._added or (key not in self._removed and key in self._base)

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        try:
            return self[key]
        except KeyError:
            return default

    def __len__(self) -> int:
        return len(self._base) - len(self._removed) + len(self._added)

    def __iter__(self) -> Iterator[K]:
        removed = self._removed
        if removed:
            yield from (k for k in self._base if k not in removed)
        else:
            yield from self._base
        yield from self._added

    def __repr__(self) -> str:
        return f"Overlay({dict(self)!r})"


def changed(mapping: Mapping[K, V], *, remove: Iterable[K] = (), append: Iterable[tuple[K, V]] = (),
            update: Iterable[tuple[K, V]] = ()) -> Overlay[K, V]:
    """``mapping`` with the keys in ``remove`` deleted, then ``append`` appended in order (a key
    already present moves to the end), then ``update`` (keys present) given new values in
    place, as a new :class:`Overlay`; ``mapping`` is unchanged.  Costs the size of the change
    set, plus, amortised, a fold of the changes into a fresh base now and then.  The keys in
    ``append`` are distinct."""
    append = list(append)
    base: Mapping[K, V]
    if isinstance(mapping, Overlay):
        base, over, added = mapping._base, mapping._over.copy(), mapping._added.copy()
        removed: frozenset[K] | set[K] = mapping._removed
    else:
        base, over, added, removed = mapping, {}, {}, frozenset()
    for key in (*remove, *(k for k, _ in append)):  # drop what is removed or moves to the end
        if key in added:
            del added[key]
        elif key in base and key not in removed:
            if isinstance(removed, frozenset):
                removed = set(removed)
            removed.add(key)
            over.pop(key, None)
    for key, value in append:
        added[key] = value
    for key, value in update:
        if key in added:
            added[key] = value  # keeps its position
        elif key in base and key not in removed:
            over[key] = value
        else:
            raise KeyError(key)
    if len(over) + len(removed) + len(added) > 16 + 2 * math.isqrt(len(base)):  # fold them into a fresh base
        folded = dict(base)  # C-speed copy; overrides keep their positions, removals go
        folded.update(over)
        for key in removed:
            del folded[key]
        folded.update(added)
        return Overlay(folded)
    return Overlay(base, over, frozenset(removed), added)
