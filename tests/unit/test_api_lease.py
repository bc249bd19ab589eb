"""Leader election rules (tessera.operator.lease) with an in-memory Lease store.

The store mimics the API server's optimistic concurrency: a replace with a stale
resourceVersion fails, as a 409 Conflict would."""

from __future__ import annotations

import copy
from typing import Any

from tessera.operator.lease import LeaderElector


class LeaseStore:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.lease)

    def create_lease(self, namespace: str, body: dict[str, Any]) -> bool:
        if self.lease is not None:
            return False
        self.version += 1
        self.lease = {**copy.deepcopy(body), "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        return True

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> bool:
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            return False
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def electors(store: LeaseStore, clock: Clock) -> tuple[LeaderElector, LeaderElector]:
    a = LeaderElector(store, "ns", "lease", "a", duration_seconds=10, clock=clock)  # type: ignore[arg-type]
    b = LeaderElector(store, "ns", "lease", "b", duration_seconds=10, clock=clock)  # type: ignore[arg-type]
    return a, b


def test_only_one_holder_until_the_lease_expires():
    store, clock = LeaseStore(), Clock()
    a, b = electors(store, clock)
    assert a.acquire_or_renew() and not b.acquire_or_renew()
    clock.now += 9
    assert a.acquire_or_renew() and not b.acquire_or_renew()  # renewed in time
    clock.now += 11  # a stopped renewing (crashed)
    assert b.acquire_or_renew()
    assert not a.acquire_or_renew() and not a.is_leader
    assert store.lease["spec"]["leaseTransitions"] == 1


def test_a_stale_write_loses_the_race():
    store, clock = LeaseStore(), Clock()
    a, b = electors(store, clock)
    assert a.acquire_or_renew()
    clock.now += 11
    stale = store.read_lease("ns", "lease")
    assert b.acquire_or_renew()
    # a candidate that read before b's write cannot overwrite it
    assert not store.replace_lease("ns", "lease", stale)


def test_ensure_leader_renews_long_cycles_and_release_hands_over():
    store, clock = LeaseStore(), Clock()
    a, b = electors(store, clock)
    assert a.acquire_or_renew()
    version = store.version
    clock.now += 2
    assert a.ensure_leader() and store.version == version  # fresh enough: no API call
    clock.now += 5
    assert a.ensure_leader() and store.version == version + 1  # renewed mid-cycle
    a.release()
    assert not a.is_leader and b.acquire_or_renew()  # no need to wait for expiry
