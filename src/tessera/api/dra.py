"""Dynamic Resource Allocation (``resource.k8s.io/v1``): accelerators published as ResourceSlices.

From Kubernetes 1.34 a node's GPUs may be published by a DRA driver as ``ResourceSlice``s
(driver, pool, devices with attributes such as ``productName`` and ``type``) instead of an
extended resource in the node's ``allocatable``.  Pure functions over the API objects (plain
JSON dicts), so the operator, the what-if snapshot and the tests share one reading:

* :func:`pools_by_node` -- which devices each node offers (a node-local pool, the newest
  generation of its slices), their accelerator type (the devices' ``productName``, the same
  normalisation as the extended-resource rules), and the DeviceClass that selects the
  driver (the class a ResourceClaim must name).
* :func:`allocated` -- the devices a ResourceClaim's ``status.allocation`` holds.
* :func:`claim_body` and :func:`allocation_status` -- the claim Tessera creates for one
  pod and the allocation it writes into it before the pod's Binding (as KAI's binder does:
  ``status.allocation`` with the chosen devices and the node, ``reservedFor`` the pod).

Only node-local slices (``spec.nodeName``) are read; network-attached pools (``allNodes``,
``nodeSelector``) are not accelerators Tessera places.  Nothing here raises on bad input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tessera.api.discovery import ACCELERATOR_LABEL, Discovery, normalize_product

GROUP = "resource.k8s.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
#: the one device request in every claim Tessera creates (the pod's container names it)
REQUEST = "accelerators"
#: the pod-level name of that claim (``spec.resourceClaims[].name``)
POD_CLAIM = "accelerators"
CLAIM_SUFFIX = "-accelerators"

#: device attributes read for the accelerator type, in order (NVIDIA's and AMD's drivers
#: publish productName; a bare driver may only say its type)
PRODUCT_ATTRIBUTES = ("productName", "product", "model")


@dataclass
class DraObjects:
    """The DRA objects a cycle reads (empty lists on an API server without DRA)."""

    slices: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)
    classes: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DraPool:
    """The devices one node offers through one driver's node-local pool."""

    node: str
    driver: str
    pool: str
    devices: tuple[str, ...]
    #: the products the devices name (``NVIDIA L40S``); one for a homogeneous node
    products: tuple[str, ...]
    #: the DeviceClass whose selector names this driver ("" when none does)
    device_class: str
    warnings: tuple[str, ...] = ()


def _attribute(device: Mapping[str, Any], driver: str, name: str) -> str:
    """A device attribute's value as text; attributes are keyed bare or ``<driver>/<name>``."""
    attributes = device.get("attributes") or {}
    value = attributes.get(name, attributes.get(f"{driver}/{name}"))
    if not isinstance(value, Mapping):
        return ""
    for kind in ("string", "version", "int", "bool"):
        if kind in value:
            return str(value[kind])
    return ""


def device_class_for(driver: str, classes: Iterable[Mapping[str, Any]]) -> str:
    """The DeviceClass whose CEL selector requires ``device.driver == '<driver>'`` (the
    shortest-named one when several do; "" when none)."""
    pattern = re.compile(r"device\.driver\s*==\s*['\"]" + re.escape(driver) + r"['\"]")
    names = [(c.get("metadata") or {}).get("name", "") for c in classes
             if any(pattern.search(str(((s or {}).get("cel") or {}).get("expression", "")))
                    for s in ((c.get("spec") or {}).get("selectors") or []))]
    names = [n for n in names if n]
    return min(names, key=lambda n: (len(n), n)) if names else ""


def pools_by_node(slices: Iterable[Mapping[str, Any]], classes: Iterable[Mapping[str, Any]]) -> dict[str, DraPool]:
    """Node name -> its DRA accelerator pool (the first driver in name order when a node has
    several; the others are reported as warnings)."""
    classes = list(classes)
    # (driver, pool) -> generation -> slices; only the newest generation counts (a driver
    # replacing its slices writes a new generation before it deletes the old one)
    grouped: dict[tuple[str, str], dict[int, list[Mapping[str, Any]]]] = {}
    for item in slices:
        spec = item.get("spec") or {}
        pool = spec.get("pool") or {}
        if not spec.get("nodeName") or not spec.get("driver") or not pool.get("name"):
            continue
        try:
            generation = int(pool.get("generation") or 0)
        except (TypeError, ValueError):
            generation = 0
        grouped.setdefault((spec["driver"], pool["name"]), {}).setdefault(generation, []).append(item)
    found: dict[str, list[DraPool]] = {}
    for (driver, pool_name), generations in grouped.items():
        newest = generations[max(generations)]
        warnings: list[str] = []
        expected = (newest[0].get("spec") or {}).get("pool", {}).get("resourceSliceCount")
        if isinstance(expected, int) and expected > len(newest):
            warnings.append(f"pool {driver}/{pool_name}: {len(newest)} of its {expected} ResourceSlices published; "
                            "counting the devices seen so far")
        nodes = {(s.get("spec") or {}).get("nodeName") for s in newest}
        if len(nodes) != 1:
            continue  # a node-local pool lives on one node
        node = str(nodes.pop())
        devices: list[str] = []
        products: list[str] = []
        for item in newest:
            for device in (item.get("spec") or {}).get("devices") or []:
                name = str(device.get("name") or "")
                if not name or name in devices:
                    continue
                devices.append(name)
                product = next((p for p in (_attribute(device, driver, a) for a in PRODUCT_ATTRIBUTES) if p), "")
                if product and product not in products:
                    products.append(product)
        device_class = device_class_for(driver, classes)
        if not device_class:
            warnings.append(f"no DeviceClass selects driver {driver} (a selector with device.driver == '{driver}'); "
                            "its devices cannot be claimed and are not counted")
        found.setdefault(node, []).append(DraPool(node, driver, pool_name, tuple(sorted(devices, key=_natural)),
                                                  tuple(products), device_class, tuple(warnings)))
    out: dict[str, DraPool] = {}
    for node, pools in found.items():
        pools.sort(key=lambda p: (not p.device_class, p.driver, p.pool))
        first = pools[0]
        if len(pools) > 1:
            others = ", ".join(f"{p.driver}/{p.pool}" for p in pools[1:])
            first = DraPool(first.node, first.driver, first.pool, first.devices, first.products, first.device_class,
                            (*first.warnings, f"more than one DRA pool on the node; using {first.driver}/{first.pool}, "
                             f"not {others}"))
        out[node] = first
    return out


def _natural(name: str) -> tuple[Any, ...]:
    """gpu-2 before gpu-10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def allocated(claim: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(driver, pool, device) of every device a claim's allocation holds."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    results = (allocation.get("devices") or {}).get("results") or []
    return [(str(r.get("driver", "")), str(r.get("pool", "")), str(r.get("device", ""))) for r in results
            if isinstance(r, Mapping)]


def reserved_for(claim: Mapping[str, Any]) -> list[str]:
    """Uids of the consumers (pods) a claim is reserved for."""
    return [str(c.get("uid", "")) for c in (claim.get("status") or {}).get("reservedFor") or []
            if isinstance(c, Mapping) and c.get("uid")]


def claim_name(pod_name: str) -> str:
    return f"{pod_name}{CLAIM_SUFFIX}"


def claim_body(pod: Mapping[str, Any], device_class: str, count: int, labels: Mapping[str, str]) -> dict[str, Any]:
    """The ResourceClaim of one pod: ``count`` devices of ``device_class``, owned by the pod
    (the garbage collector deletes it with the pod)."""
    meta = pod["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaim",
        "metadata": {
            "name": claim_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": dict(labels),
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}],
        },
        "spec": {"devices": {"requests": [{"name": REQUEST, "exactly": {
            "deviceClassName": device_class, "allocationMode": "ExactCount", "count": count}}]}},
    }


def allocation_status(pool: DraPool, devices: Iterable[str], pod: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` of a claim allocated to ``devices`` of ``pool`` and reserved for ``pod``."""
    meta = pod["metadata"]
    return {
        "allocation": {
            "devices": {"results": [{"request": REQUEST, "driver": pool.driver, "pool": pool.pool, "device": d}
                                    for d in devices]},
            "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [pool.node]}]}]},
        },
        "reservedFor": [{"resource": "pods", "name": meta["name"], "uid": meta["uid"]}],
    }


def discover_dra(labels: Mapping[str, str], pool: DraPool) -> Discovery:
    """What a node offers through its DRA pool, as :func:`tessera.api.discovery.discover`
    reports extended resources: the type from ``tessera.dev/accelerator`` when set, else from
    the devices' ``productName``; the count is the pool's devices (none when no DeviceClass
    selects the driver: they could not be claimed)."""
    warnings = list(pool.warnings)
    source = f"ResourceSlice {pool.driver}/{pool.pool}"
    explicit = (labels or {}).get(ACCELERATOR_LABEL, "").strip()
    kind: str | None = explicit or None
    if not explicit and pool.products:
        kind = normalize_product(pool.products[0])
        if kind is None:
            kind = pool.products[0]
            warnings.append(f"{source}: product {pool.products[0]!r} is not a type Tessera knows; using it verbatim")
    if len(pool.products) > 1:
        warnings.append(f"{source} mixes products ({', '.join(pool.products)}); counting all as {kind}")
    if kind is None:
        warnings.append(f"{source}: its devices name no product ({', '.join(PRODUCT_ATTRIBUTES)}); set "
                        f"{ACCELERATOR_LABEL} on the node to schedule them")
    count = len(pool.devices) if pool.device_class and kind else 0
    return Discovery(kind if count else None, count, None, source, tuple(warnings))
