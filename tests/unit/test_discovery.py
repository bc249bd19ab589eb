"""The accelerator discovery rules (documented in docs/operator.md)."""

from __future__ import annotations

import pytest

from tessera.api.discovery import discover, normalize_product
from tessera.api.quantity import parse_quantity, to_mib, to_milli


@pytest.mark.parametrize(
    ("product", "expected"),
    [
        ("NVIDIA-H100-80GB-HBM3", "H100"),
        ("NVIDIA-A100-SXM4-80GB", "A100"),
        ("NVIDIA-A10", "A10"),
        ("Tesla-V100-SXM2-16GB", "V100"),
        ("nvidia-tesla-a100", "A100"),
        ("NVIDIA-L40S", "L40S"),
        ("AMD_Instinct_MI300X", "MI300X"),
        ("NVIDIA-GeForce-RTX-4090", None),
    ],
)
def test_normalize_product(product, expected):
    assert normalize_product(product) == expected


def test_explicit_label_wins_and_counts_from_the_vendor_resource():
    d = discover({"tessera.dev/accelerator": "H100", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                 {"nvidia.com/gpu": "8"})
    assert (d.accelerator_type, d.count, d.resource_name) == ("H100", 8, "nvidia.com/gpu")
    assert d.source == "label tessera.dev/accelerator" and d.warnings == ()


def test_explicit_label_with_count_label_and_no_device_plugin():
    d = discover({"tessera.dev/accelerator": "H100", "tessera.dev/accelerator-count": "4"}, {"cpu": "64"})
    assert (d.accelerator_type, d.count, d.resource_name) == ("H100", 4, None)


def test_conflicting_explicit_and_vendor_labels_warn_and_use_explicit():
    d = discover({"tessera.dev/accelerator": "H100", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                 {"nvidia.com/gpu": 8})
    assert d.accelerator_type == "H100"
    assert any("conflicts" in w and "A100" in w for w in d.warnings)


def test_explicit_label_without_any_count_is_no_accelerator_with_warning():
    d = discover({"tessera.dev/accelerator": "H100"}, {})
    assert d.accelerator_type is None and d.count == 0
    assert any("no device count" in w for w in d.warnings)


def test_nvidia_product_label():
    d = discover({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, {"nvidia.com/gpu": "8"})
    assert (d.accelerator_type, d.count, d.resource_name, d.source) == (
        "A100", 8, "nvidia.com/gpu", "nvidia.com/gpu.product")


def test_allocatable_wins_over_capacity():
    d = discover({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                 allocatable={"nvidia.com/gpu": "7"}, capacity={"nvidia.com/gpu": "8"})
    assert d.count == 7


def test_gke_accelerator_label():
    d = discover({"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}, {"nvidia.com/gpu": 4})
    assert (d.accelerator_type, d.count) == ("A100", 4)


def test_unknown_product_is_kept_verbatim_with_warning():
    d = discover({"nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-4090"}, {"nvidia.com/gpu": 2})
    assert d.accelerator_type == "NVIDIA-GeForce-RTX-4090" and d.count == 2
    assert any("not a model Tessera knows" in w for w in d.warnings)


def test_gpu_without_product_label_warns():
    d = discover({}, {"nvidia.com/gpu": 8})
    assert d.accelerator_type == "nvidia-gpu" and d.count == 8
    assert any("nvidia.com/gpu.product" in w for w in d.warnings)


def test_amd():
    d = discover({"amd.com/gpu.product-name": "AMD_Instinct_MI300X"}, {"amd.com/gpu": "8"})
    assert (d.accelerator_type, d.count, d.resource_name) == ("MI300X", 8, "amd.com/gpu")


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"node.kubernetes.io/npu.chip.name": "910B3"}, "Ascend910B"),
        ({"accelerator": "huawei-Ascend910B"}, "Ascend910B"),
        ({"accelerator-type": "module-910b-8"}, "Ascend910B"),
        ({"accelerator": "huawei-Ascend910"}, "Ascend910"),
    ],
)
def test_ascend_chip_labels(labels, expected):
    d = discover(labels, {"huawei.com/Ascend910": "8"})
    assert (d.accelerator_type, d.count, d.resource_name) == (expected, 8, "huawei.com/Ascend910")
    assert d.warnings == ()


def test_ascend_without_chip_label_warns():
    d = discover({}, {"huawei.com/Ascend910": "8"})
    assert d.accelerator_type == "Ascend910"
    assert any("cannot tell Ascend910 from Ascend910B" in w for w in d.warnings)


def test_two_vendor_resources_warn_and_use_rule_order():
    d = discover({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                 {"nvidia.com/gpu": "8", "huawei.com/Ascend910": "8"})
    assert d.accelerator_type == "H100"
    assert any("several accelerator resources" in w for w in d.warnings)


def test_cpu_node_and_bad_input_do_not_raise():
    assert discover({}, {"cpu": "64"}).accelerator_type is None
    d = discover({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {"nvidia.com/gpu": "lots"})
    assert d.accelerator_type is None and d.count == 0
    assert any("no allocatable devices" in w for w in d.warnings)
    d = discover({"tessera.dev/accelerator": "H100", "tessera.dev/accelerator-count": "x"}, {})
    assert d.accelerator_type is None and any("invalid quantity" in w for w in d.warnings)


def test_zero_devices_is_no_accelerator():
    assert discover({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {"nvidia.com/gpu": "0"}).count == 0


def test_quantities():
    assert to_milli("250m") == 250 and to_milli("2") == 2000 and to_milli(1.5) == 1500
    assert to_mib("1Gi") == 1024 and to_mib("1G") == 953 and to_mib("512Mi") == 512
    assert parse_quantity("1e3") == 1000
    with pytest.raises(ValueError):
        parse_quantity("abc")
