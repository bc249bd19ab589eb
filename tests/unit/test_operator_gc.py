"""The scheduling cycle reads the cluster with the cyclic GC paused (docs/operator.md, "Scale")."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tessera.operator.timing import gc_paused


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_the_collector_is_off_inside_and_back_on_after() -> None:
    gc.enable()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_collector_comes_back_when_reading_the_cluster_fails() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("LIST pods: 503")
    assert gc.isenabled()


def test_a_collector_turned_off_by_the_embedding_process_stays_off() -> None:
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()
