"""core.overlay: a derived mapping equals the dict the same edits give, in order, and the
mapping it was derived from never changes (copy-on-write)."""

from __future__ import annotations

import random

import pytest

from tessera.core.overlay import Overlay, changed


@pytest.mark.parametrize("seed", range(10))
def test_changes_match_a_dict_and_leave_the_parent_alone(seed: int) -> None:
    rng = random.Random(seed)
    reference = {f"k{i}": i for i in range(rng.randrange(0, 60))}
    mapping: Overlay[str, int] | dict[str, int] = dict(reference)
    history = [(mapping, dict(reference))]
    counter = 1000
    for _ in range(200):
        keys = list(reference)
        remove = rng.sample(keys, min(len(keys), rng.randrange(3)))
        append = []
        for _ in range(rng.randrange(3)):
            counter += 1
            key = rng.choice(keys) if keys and rng.random() < 0.3 else f"k{counter}"
            if key not in {k for k, _ in append}:  # the keys appended at once are distinct
                append.append((key, counter))
        kept = [k for k in reference if k not in remove]
        for key in remove:
            del reference[key]
        for key, value in append:
            reference.pop(key, None)
            reference[key] = value
        update = [(k, -counter) for k in rng.sample(kept, min(len(kept), rng.randrange(3))) if k in reference]
        for key, value in update:
            reference[key] = value
        mapping = changed(mapping, remove=remove, append=append, update=update)
        assert list(mapping.items()) == list(reference.items())
        assert len(mapping) == len(reference)
        missing = f"k{counter + 1}"
        assert missing not in mapping and mapping.get(missing) is None
        for key in remove:
            if key not in reference:
                assert key not in mapping
                with pytest.raises(KeyError):
                    mapping[key]
        history.append((mapping, dict(reference)))
    for old, expected in history:  # every earlier version still reads as it did
        assert list(old.items()) == list(expected.items())


def test_updating_a_missing_key_is_an_error() -> None:
    with pytest.raises(KeyError):
        changed({"a": 1}, remove=["a"], update=[("a", 2)])
