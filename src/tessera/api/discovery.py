"""Accelerator discovery: which accelerator type a node has, and how many.

Pure functions over a node's labels and resources, so the operator, the simulator's
node fixtures and the tests share one rule set.  The rules, in order:

1. ``tessera.dev/accelerator`` label: the type, verbatim (an operator-chosen name wins
   over anything a vendor plugin says).  Count: ``tessera.dev/accelerator-count`` if
   set, else the type's extended resource (``nvidia.com/gpu`` for H100, ...), else any
   known vendor resource on the node.
2. NVIDIA: ``nvidia.com/gpu`` resource; type from ``nvidia.com/gpu.product`` (GPU feature
   discovery, e.g. ``NVIDIA-H100-80GB-HBM3`` -> ``H100``) or GKE's
   ``cloud.google.com/gke-accelerator`` (``nvidia-tesla-a100`` -> ``A100``).
3. AMD: ``amd.com/gpu`` resource; type from ``amd.com/gpu.product-name``
   (``AMD_Instinct_MI300X`` -> ``MI300X``).
4. Huawei: ``huawei.com/Ascend910`` / ``huawei.com/Ascend310P`` resource; the chip from
   ``node.kubernetes.io/npu.chip.name``, ``accelerator`` or ``accelerator-type`` labels
   (``910B3`` / ``huawei-Ascend910B`` -> ``Ascend910B``).
5. Intel Gaudi: ``habana.ai/gaudi`` resource -> ``Gaudi2``.

Count comes from ``allocatable`` (unhealthy devices excluded), else ``capacity``.
Unknown product strings are kept verbatim as the type (Tessera can schedule a model it
has never heard of) with a warning; conflicting signals are resolved in rule order,
also with a warning.  Nothing here raises on bad input: every problem is a warning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tessera.api.quantity import to_int
from tessera.core import accelerator_info, known_accelerator_types

ACCELERATOR_LABEL = "tessera.dev/accelerator"
COUNT_LABEL = "tessera.dev/accelerator-count"

NVIDIA_RESOURCE = "nvidia.com/gpu"
NVIDIA_PRODUCT_LABEL = "nvidia.com/gpu.product"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
AMD_RESOURCE = "amd.com/gpu"
AMD_PRODUCT_LABEL = "amd.com/gpu.product-name"
ASCEND_RESOURCES = ("huawei.com/Ascend910", "huawei.com/Ascend310P")
ASCEND_CHIP_LABELS = ("node.kubernetes.io/npu.chip.name", "accelerator", "accelerator-type")
GAUDI_RESOURCE = "habana.ai/gaudi"

#: every extended resource discovery knows, in rule order
VENDOR_RESOURCES = (NVIDIA_RESOURCE, AMD_RESOURCE, *ASCEND_RESOURCES, GAUDI_RESOURCE)


@dataclass(frozen=True, slots=True)
class Discovery:
    """What a node offers. ``accelerator_type`` is None for a node without accelerators."""

    accelerator_type: str | None
    count: int
    #: the extended resource pods must request (None: the node advertises none)
    resource_name: str | None
    #: which rule decided, e.g. "label tessera.dev/accelerator" or "nvidia.com/gpu.product"
    source: str
    warnings: tuple[str, ...] = ()


def normalize_product(product: str) -> str | None:
    """Map a vendor product string to a known type (``NVIDIA-A100-SXM4-80GB`` -> ``A100``).

    Tokens are split on ``-``, ``_`` and spaces and compared case-insensitively with
    the known type names; the longest match wins (so ``A100`` beats ``A10``).
    """
    known = {t.upper(): t for t in known_accelerator_types()}
    tokens = [t for t in re.split(r"[-_\s]+", product.strip().upper()) if t]
    matches = [known[t] for t in tokens if t in known]
    if not matches:
        # "H100SXM5" or "MI300X-OAM": a known name as a prefix of one token
        for token in tokens:
            for upper, name in known.items():
                if token.startswith(upper) and len(token) > len(upper) and not token[len(upper)].isdigit():
                    matches.append(name)
    return max(matches, key=len) if matches else None


def _ascend_chip(labels: Mapping[str, str], resource: str) -> tuple[str, str, list[str]]:
    """(type, source, warnings) for an Ascend node."""
    base = resource.split("/", 1)[1]  # Ascend910 or Ascend310P
    for key in ASCEND_CHIP_LABELS:
        value = labels.get(key, "")
        if not value:
            continue
        upper = value.upper()
        if "910B" in upper:
            return "Ascend910B", key, []
        if "910" in upper:
            return "Ascend910", key, []
        if "310P" in upper:
            return "Ascend310P", key, []
    if base == "Ascend910":
        return base, resource, [
            f"{resource} without a chip label ({', '.join(ASCEND_CHIP_LABELS)}): cannot tell Ascend910 "
            f"from Ascend910B, assuming Ascend910; set {ACCELERATOR_LABEL} to be explicit"
        ]
    return base, resource, []


def _count(resources: Mapping[str, object], name: str, warnings: list[str]) -> int:
    raw = resources.get(name)
    if raw is None:
        return 0
    try:
        count = to_int(str(raw))
    except ValueError:
        warnings.append(f"{name} has an invalid quantity {raw!r}; counting 0 devices")
        return 0
    if count < 0:
        warnings.append(f"{name} is negative ({raw}); counting 0 devices")
        return 0
    return count


def discover(
    labels: Mapping[str, str],
    allocatable: Mapping[str, object] | None = None,
    capacity: Mapping[str, object] | None = None,
) -> Discovery:
    """Apply the rules above to one node's labels and resources."""
    labels = labels or {}
    resources: dict[str, object] = dict(capacity or {})
    resources.update(allocatable or {})  # allocatable wins where both are given
    warnings: list[str] = []
    present = [r for r in VENDOR_RESOURCES if _count(resources, r, []) > 0]
    vendor = _vendor_rule(labels, resources, present, warnings)

    explicit = labels.get(ACCELERATOR_LABEL, "").strip()
    if explicit:
        info = accelerator_info(explicit)
        resource = info.resource_name if info else (present[0] if present else None)
        if info and resource not in present and present:
            warnings.append(
                f"{ACCELERATOR_LABEL}={explicit} expects {info.resource_name}, but the node advertises "
                f"{', '.join(present)}"
            )
        if vendor is not None and vendor.accelerator_type and vendor.accelerator_type != explicit:
            warnings.append(
                f"{ACCELERATOR_LABEL}={explicit} conflicts with {vendor.source} "
                f"({vendor.accelerator_type}); using {explicit}"
            )
        if info is None:
            warnings.append(f"{ACCELERATOR_LABEL}={explicit} is not a type Tessera knows; using it verbatim")
        if COUNT_LABEL in labels:
            count = _count(labels, COUNT_LABEL, warnings)
        elif resource is not None and resource in resources:
            count = _count(resources, resource, warnings)
        else:
            count = 0
        if resource is not None and resource not in resources:
            resource = None
        if count == 0:
            warnings.append(
                f"{ACCELERATOR_LABEL}={explicit} but no device count: set {COUNT_LABEL} or let a device "
                "plugin advertise the extended resource"
            )
            return Discovery(None, 0, None, f"label {ACCELERATOR_LABEL}", tuple(warnings))
        return Discovery(explicit, count, resource, f"label {ACCELERATOR_LABEL}", tuple(warnings))

    if vendor is None:
        return Discovery(None, 0, None, "no accelerator labels or resources", tuple(warnings))
    return Discovery(vendor.accelerator_type, vendor.count, vendor.resource_name, vendor.source,
                     tuple(warnings) + vendor.warnings)


def _vendor_rule(
    labels: Mapping[str, str], resources: Mapping[str, object], present: list[str], warnings: list[str]
) -> Discovery | None:
    """Rules 2-5: the first vendor resource the node advertises with a positive count."""
    if len(present) > 1:
        warnings.append(f"node advertises several accelerator resources ({', '.join(present)}); using {present[0]}")
    if not present:
        for label in (NVIDIA_PRODUCT_LABEL, AMD_PRODUCT_LABEL):
            if labels.get(label):
                warnings.append(f"label {label}={labels[label]} but no allocatable devices; ignoring it")
        return None
    resource = present[0]
    local: list[str] = []
    count = _count(resources, resource, local)
    if resource == NVIDIA_RESOURCE:
        for label in (NVIDIA_PRODUCT_LABEL, GKE_ACCELERATOR_LABEL):
            product = labels.get(label, "")
            if product:
                return _from_product(product, label, count, resource, local)
        local.append(f"{resource} without {NVIDIA_PRODUCT_LABEL}: unknown GPU model; set {ACCELERATOR_LABEL}")
        return Discovery("nvidia-gpu", count, resource, resource, tuple(local))
    if resource == AMD_RESOURCE:
        product = labels.get(AMD_PRODUCT_LABEL, "")
        if product:
            return _from_product(product, AMD_PRODUCT_LABEL, count, resource, local)
        local.append(f"{resource} without {AMD_PRODUCT_LABEL}: unknown GPU model; set {ACCELERATOR_LABEL}")
        return Discovery("amd-gpu", count, resource, resource, tuple(local))
    if resource in ASCEND_RESOURCES:
        chip, source, chip_warnings = _ascend_chip(labels, resource)
        return Discovery(chip, count, resource, source, tuple(local + chip_warnings))
    return Discovery("Gaudi2", count, resource, resource, tuple(local))


def _from_product(product: str, label: str, count: int, resource: str, warnings: list[str]) -> Discovery:
    name = normalize_product(product)
    if name is None:
        warnings.append(f"{label}={product} is not a model Tessera knows; using it verbatim as the type")
        name = product
    return Discovery(name, count, resource, label, tuple(warnings))
