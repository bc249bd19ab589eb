"""Accelerator types and vendors.

Types are plain strings (``"H100"``, ``"A100"``, ``"Ascend910B"``) so that a cluster can
carry models Tessera has never heard of; this module only knows the common ones well
enough to attach a vendor and a device-memory figure, which policies may use as hints.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Vendor(StrEnum):
    NVIDIA = "nvidia"
    AMD = "amd"
    HUAWEI = "huawei"
    INTEL = "intel"
    GOOGLE = "google"
    UNKNOWN = "unknown"


class DeviceKind(StrEnum):
    GPU = "gpu"
    NPU = "npu"
    TPU = "tpu"


@dataclass(frozen=True, slots=True)
class AcceleratorInfo:
    """What Tessera knows about one accelerator model."""

    name: str
    vendor: Vendor
    kind: DeviceKind
    memory_gib: int
    #: Extended resource a device plugin advertises for this model.
    resource_name: str


_KNOWN: dict[str, AcceleratorInfo] = {
    info.name: info
    for info in (
        AcceleratorInfo("H200", Vendor.NVIDIA, DeviceKind.GPU, 141, "nvidia.com/gpu"),
        AcceleratorInfo("H100", Vendor.NVIDIA, DeviceKind.GPU, 80, "nvidia.com/gpu"),
        AcceleratorInfo("H800", Vendor.NVIDIA, DeviceKind.GPU, 80, "nvidia.com/gpu"),
        AcceleratorInfo("A100", Vendor.NVIDIA, DeviceKind.GPU, 80, "nvidia.com/gpu"),
        AcceleratorInfo("A800", Vendor.NVIDIA, DeviceKind.GPU, 80, "nvidia.com/gpu"),
        AcceleratorInfo("L40S", Vendor.NVIDIA, DeviceKind.GPU, 48, "nvidia.com/gpu"),
        AcceleratorInfo("A10", Vendor.NVIDIA, DeviceKind.GPU, 24, "nvidia.com/gpu"),
        AcceleratorInfo("L4", Vendor.NVIDIA, DeviceKind.GPU, 24, "nvidia.com/gpu"),
        AcceleratorInfo("V100", Vendor.NVIDIA, DeviceKind.GPU, 32, "nvidia.com/gpu"),
        AcceleratorInfo("P100", Vendor.NVIDIA, DeviceKind.GPU, 16, "nvidia.com/gpu"),
        AcceleratorInfo("T4", Vendor.NVIDIA, DeviceKind.GPU, 16, "nvidia.com/gpu"),
        AcceleratorInfo("K80", Vendor.NVIDIA, DeviceKind.GPU, 12, "nvidia.com/gpu"),
        AcceleratorInfo("MI300X", Vendor.AMD, DeviceKind.GPU, 192, "amd.com/gpu"),
        AcceleratorInfo("MI250X", Vendor.AMD, DeviceKind.GPU, 128, "amd.com/gpu"),
        AcceleratorInfo("Ascend910B", Vendor.HUAWEI, DeviceKind.NPU, 64, "huawei.com/Ascend910"),
        AcceleratorInfo("Ascend910", Vendor.HUAWEI, DeviceKind.NPU, 32, "huawei.com/Ascend910"),
        AcceleratorInfo("Ascend310P", Vendor.HUAWEI, DeviceKind.NPU, 24, "huawei.com/Ascend310P"),
        AcceleratorInfo("Gaudi2", Vendor.INTEL, DeviceKind.GPU, 96, "habana.ai/gaudi"),
    )
}


def accelerator_info(accelerator_type: str) -> AcceleratorInfo | None:
    """Known facts about ``accelerator_type``, or ``None`` for a model Tessera does not know."""
    return _KNOWN.get(accelerator_type)


def known_accelerator_types() -> tuple[str, ...]:
    return tuple(_KNOWN)
