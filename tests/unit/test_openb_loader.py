"""The openb (Alibaba GPU v2023) node and pod list loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.core import WorkloadKind
from tessera.sim.loaders.errors import TraceFormatError
from tessera.sim.loaders.openb import load_openb_nodes, load_openb_pods

NODES = """sn,cpu_milli,memory_mib,gpu,model
openb-node-0000,32000,262144,0,
openb-node-0001,96000,786432,8,V100M32
openb-node-0002,64000,262144,2,P100
"""

PODS = """name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time
openb-pod-0000,12000,16384,1,1000,,LS,Running,0,12537496,0
openb-pod-0001,6000,12288,1,460,,LS,Running,427061,12902960,427061
openb-pod-0002,88000,327680,8,1000,V100M16|V100M32,Burstable,Succeeded,9437497,10769854,9437497
openb-pod-0003,4000,8192,0,0,,BE,Running,5,,
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_nodes_are_read_with_types_and_counts(tmp_path: Path) -> None:
    loaded = load_openb_nodes(write(tmp_path, "nodes.csv", NODES))
    assert [n.name for n in loaded.nodes] == ["openb-node-0000", "openb-node-0001", "openb-node-0002"]
    cpu_node, v100, p100 = loaded.nodes
    assert cpu_node.gpu_model is None and cpu_node.gpu_count == 0
    assert (v100.gpu_model, v100.gpu_count, v100.cpu_milli, v100.memory_mib) == ("V100M32", 8, 96000, 786432)
    node = p100.to_node()
    assert (node.accelerator_type, node.accelerator_count) == ("P100", 2)
    assert cpu_node.to_node().accelerator_type is None
    assert loaded.report.rows_read == 3 and loaded.report.rows_kept == 3 and loaded.report.rows_skipped == 0


def test_pods_are_read_with_gpu_share_spec_and_times(tmp_path: Path) -> None:
    pods = load_openb_pods(write(tmp_path, "pods.csv", PODS)).pods
    whole, share, eight, cpu = pods
    assert whole.total_gpu_milli == 1000 and not whole.shares_gpu
    assert share.shares_gpu and share.total_gpu_milli == 460
    assert eight.gpu_spec == ("V100M16", "V100M32") and eight.total_gpu_milli == 8000
    assert cpu.num_gpu == 0 and cpu.deletion_time_seconds is None and cpu.creation_time_seconds == 5
    workload = share.to_workload()
    assert workload.kind is WorkloadKind.POD
    assert workload.demand.shared_milli == 460 and workload.demand.accelerators == 0
    assert eight.to_workload().allowed_types == ("V100M16", "V100M32")
    assert eight.to_workload().demand.accelerators == 8


def test_pod_lists_without_optional_columns_load(tmp_path: Path) -> None:
    # the multigpu lists carry only the five resource columns
    text = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nopenb-pod-0000,12000,16384,2,1000\n"
    (pod,) = load_openb_pods(write(tmp_path, "pods.csv", text)).pods
    assert pod.num_gpu == 2 and pod.gpu_spec == () and pod.qos == ""


def test_nan_spec_and_float_integers_are_accepted(tmp_path: Path) -> None:
    text = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\np,4000.0,100,1,500,nan\n"
    (pod,) = load_openb_pods(write(tmp_path, "pods.csv", text)).pods
    assert pod.cpu_milli == 4000 and pod.gpu_spec == ()


@pytest.mark.parametrize(
    ("row", "line", "column", "expected"),
    [
        ("p1,12x,100,1,1000,", 3, "cpu_milli", "an integer"),
        ("p1,1000,-5,1,1000,", 3, "memory_mib", "an integer in"),
        ("p1,1000,100,2,500,", 3, "gpu_milli", "1000 (whole GPUs)"),
        ("p1,1000,100,0,300,", 3, "gpu_milli", "0 for a pod with num_gpu 0"),
        ("p1,1000,100,1,0,", 3, "gpu_milli", "1-1000"),
        ("p1,1000,100,1,1200,", 3, "gpu_milli", "an integer in [0, 1000]"),
        ("p1,1000,100,0,0,T4", 3, "gpu_spec", "no GPU model constraint"),
        ("p0,1000,100,1,1000,", 3, "name", "a unique pod name"),
        ("p1,1000,100,1,1000", 3, None, "6 comma-separated fields"),
    ],
)
def test_malformed_pod_rows_name_file_line_and_column(
    tmp_path: Path, row: str, line: int, column: str | None, expected: str
) -> None:
    path = write(tmp_path, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\np0,1,1,0,0,\n" + row + "\n")
    with pytest.raises(TraceFormatError) as info:
        load_openb_pods(path)
    err = info.value
    assert (err.file, err.line, err.column) == (str(path), line, column)
    assert expected in str(err)
    assert f"{path}:{line}" in str(err)


def test_missing_header_column_is_reported_on_line_one(tmp_path: Path) -> None:
    path = write(tmp_path, "pods.csv", "name,cpu_milli,num_gpu,gpu_milli\np,1,0,0\n")
    with pytest.raises(TraceFormatError) as info:
        load_openb_pods(path)
    assert info.value.line == 1 and info.value.column == "memory_mib"


def test_empty_and_unreadable_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="an empty file"):
        load_openb_nodes(write(tmp_path, "empty.csv", ""))
    with pytest.raises(TraceFormatError, match="a readable CSV file"):
        load_openb_nodes(tmp_path / "missing.csv")


def test_malformed_node_rows(tmp_path: Path) -> None:
    bad_model = write(tmp_path, "a.csv", "sn,cpu_milli,memory_mib,gpu,model\nn1,1000,100,4,\n")
    with pytest.raises(TraceFormatError, match="a GPU model for a node with GPUs") as info:
        load_openb_nodes(bad_model)
    assert (info.value.line, info.value.column) == (2, "model")
    duplicate = write(tmp_path, "b.csv", "sn,cpu_milli,memory_mib,gpu,model\nn1,1,1,0,\nn1,1,1,0,\n")
    with pytest.raises(TraceFormatError, match="first seen on line 2"):
        load_openb_nodes(duplicate)


def test_skip_mode_counts_every_skipped_row_by_reason(tmp_path: Path) -> None:
    text = (
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
        "ok1,1000,100,1,1000\n"
        "bad1,abc,100,1,1000\n"
        "bad2,xyz,100,1,1000\n"
        "bad3,1000,100,3,200\n"
        "ok2,1000,100,0,0\n"
    )
    loaded = load_openb_pods(write(tmp_path, "pods.csv", text), on_error="skip")
    assert [p.name for p in loaded.pods] == ["ok1", "ok2"]
    report = loaded.report
    assert (report.rows_read, report.rows_kept, report.rows_skipped) == (5, 2, 3)
    assert report.skipped["column cpu_milli: expected an integer >= 0"] == 2
    assert "3 of 5" not in report.summary() and "2 of 5 rows kept" in report.summary()
    assert len(report.examples) == 3 and ":3 column 'cpu_milli'" in report.examples[0]


@pytest.mark.data
def test_the_public_openb_lists_load(shared_data: Path) -> None:
    csv_dir = shared_data / "alibaba-gpu-v2023" / "csv"
    all_nodes = load_openb_nodes(csv_dir / "openb_node_list_all_node.csv").nodes
    gpu_nodes = load_openb_nodes(csv_dir / "openb_node_list_gpu_node.csv").nodes
    assert len(all_nodes) == 1523 and len(gpu_nodes) == 1213
    assert sum(n.gpu_count for n in gpu_nodes) == sum(n.gpu_count for n in all_nodes) == 6212
    for path in sorted(csv_dir.glob("openb_pod_list_*.csv")):
        loaded = load_openb_pods(path)
        assert loaded.report.rows_skipped == 0 and len(loaded.pods) > 7000, path.name
    default = load_openb_pods(csv_dir / "openb_pod_list_default.csv").pods
    assert len(default) == 8152
    assert sum(1 for p in default if p.shares_gpu) == 3078
    assert sum(1 for p in default if p.num_gpu == 8) == 44
