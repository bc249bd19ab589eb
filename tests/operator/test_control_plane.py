"""The local control plane itself: nodes from the fixture are Ready, bound pods run."""

from __future__ import annotations


def test_fixture_nodes_are_ready_with_accelerators(cluster):
    nodes = {n["metadata"]["name"]: n for n in cluster.get_json("nodes")["items"]}
    assert {"h100-0", "a100-0", "npu-0", "cpu-0"} <= set(nodes)
    for node in nodes.values():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]
    assert nodes["h100-0"]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert nodes["npu-0"]["status"]["allocatable"]["huawei.com/Ascend910"] == "8"


def test_a_bound_pod_reaches_running(cluster, namespace):
    cluster.apply(
        f"""
apiVersion: v1
kind: Pod
metadata: {{name: probe, namespace: {namespace}}}
spec:
  schedulerName: tessera
  containers: [{{name: c, image: busybox, resources: {{limits: {{nvidia.com/gpu: 1}}}}}}]
"""
    )
    pod = cluster.get_json("pod", "probe", "-n", namespace)
    assert not pod["spec"].get("nodeName")  # nobody else schedules tessera's pods
    cluster.kubectl(
        "create", "-f", "-",
        input=f"""
apiVersion: v1
kind: Binding
metadata: {{name: probe, namespace: {namespace}}}
target: {{apiVersion: v1, kind: Node, name: a100-1}}
""",
    )
    cluster.wait_for(
        lambda: cluster.get_json("pod", "probe", "-n", namespace)["status"].get("phase") == "Running",
        what="pod probe Running",
    )
