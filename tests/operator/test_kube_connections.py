"""The operator's API client reuses its connections: every response is read and handed back to
the pool, so a burst of writes does not open a TLS connection per request (it did: responses
the operator did not need were left unread, and each kept its connection)."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.operator.kube import Kube

pytestmark = pytest.mark.cluster


def connections_opened(kube: Kube) -> int:
    pools = kube.api.rest_client.pool_manager.pools
    return sum(pools[key].num_connections for key in list(pools.keys()))


def test_writes_whose_answers_are_not_needed_reuse_the_connection(crds: Any, namespace: str) -> None:
    kube = Kube.connect(str(crds.kubeconfig), connections=8)
    raw = {"metadata": {"name": "probe", "namespace": namespace, "uid": "probe-uid"}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": namespace},
           "spec": {"containers": [{"name": "c", "image": "c:1"}]}}
    for i in range(20):
        kube.post_event("ElasticJob", raw, "Normal", "Probe", f"event {i}")  # one write, answer unused
        kube.dry_run_pod(pod)
        kube.delete_pod(namespace, f"absent-{i}")  # 404: nothing to delete
    # 60 requests, one after another: one connection (two at most, should the server close one)
    assert connections_opened(kube) <= 2
