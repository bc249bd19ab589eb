"""Alibaba GPU cluster trace v2023 ("openb", FGD / ATC'23): node and pod lists.

Format (``cluster-trace-gpu-v2023/csv`` in alibaba/clusterdata):

* node lists ``openb_node_list_*.csv``: ``sn, cpu_milli, memory_mib, gpu, model``
  (``model`` empty for CPU-only nodes);
* pod lists ``openb_pod_list_*.csv``: ``name, cpu_milli, memory_mib, num_gpu, gpu_milli``
  and, in most files, ``gpu_spec, qos, pod_phase, creation_time, deletion_time,
  scheduled_time``.  ``gpu_milli`` is per GPU: 1-999 for a pod sharing one GPU,
  1000 for whole GPUs; ``gpu_spec`` lists allowed GPU models separated by ``|``.

Malformed input raises :class:`~tessera.sim.loaders.errors.TraceFormatError` naming the
file, line and column.  With ``on_error="skip"`` malformed rows are skipped instead and
counted per reason in the returned :class:`LoadReport`; nothing is dropped silently.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tessera.core import (
    MILLI_PER_DEVICE,
    AcceleratorOption,
    Node,
    ReplicaDemand,
    Workload,
    WorkloadKind,
)
from tessera.sim.loaders.errors import TraceFormatError

OnError = Literal["raise", "skip"]

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
POD_OPTIONAL_COLUMNS = ("gpu_spec", "qos", "pod_phase", "creation_time", "deletion_time", "scheduled_time")
#: the largest node in openb has 8 GPUs; more is accepted but flagged nowhere
GPU_SPEC_SEPARATOR = "|"


@dataclass(frozen=True, slots=True)
class OpenbNode:
    """One machine of an openb node list."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpu_count: int
    #: GPU model (G1/G2/G3 are undisclosed codes; T4, P100, V100M16, V100M32, A10), None = CPU-only
    gpu_model: str | None

    def to_node(self) -> Node:
        """The Tessera :class:`~tessera.core.Node` for this machine."""
        return Node(
            name=self.name,
            accelerator_type=self.gpu_model if self.gpu_count else None,
            accelerator_count=self.gpu_count,
            cpu_milli=self.cpu_milli,
            memory_mib=self.memory_mib,
        )


@dataclass(frozen=True, slots=True)
class OpenbPod:
    """One pod of an openb pod list (resource request and, when present, its history)."""

    name: str
    cpu_milli: int
    memory_mib: int
    #: GPUs requested: 0 (CPU-only), 1 (whole or shared), or k whole GPUs
    num_gpu: int
    #: milli-GPU per requested GPU: 0 for CPU-only, 1-999 shares one GPU, 1000 whole GPUs
    gpu_milli: int
    #: allowed GPU models; empty = any
    gpu_spec: tuple[str, ...] = ()
    qos: str = ""
    pod_phase: str = ""
    creation_time_seconds: int | None = None
    deletion_time_seconds: int | None = None
    scheduled_time_seconds: int | None = None

    @property
    def total_gpu_milli(self) -> int:
        """GPU milli-units this pod occupies in total (what the FGD protocol counts as demand)."""
        return self.num_gpu * self.gpu_milli

    @property
    def shares_gpu(self) -> bool:
        return self.num_gpu == 1 and 0 < self.gpu_milli < MILLI_PER_DEVICE

    def demand(self) -> ReplicaDemand:
        if self.shares_gpu:
            return ReplicaDemand(accelerators=0, shared_milli=self.gpu_milli,
                                 cpu_milli=self.cpu_milli, memory_mib=self.memory_mib)
        return ReplicaDemand(accelerators=self.num_gpu, cpu_milli=self.cpu_milli, memory_mib=self.memory_mib)

    def to_workload(self, submitted_at_seconds: float = 0.0) -> Workload:
        """The Tessera :class:`~tessera.core.Workload` (one replica, kind POD) for this pod."""
        return Workload(
            key=self.name,
            kind=WorkloadKind.POD,
            demand=self.demand(),
            options=tuple(AcceleratorOption(t) for t in self.gpu_spec),
            submitted_at_seconds=submitted_at_seconds,
        )


@dataclass(slots=True)
class LoadReport:
    """What a loader read, and what it skipped on purpose (with ``on_error="skip"``)."""

    file: str
    rows_read: int = 0
    rows_kept: int = 0
    #: reason -> number of rows skipped for it
    skipped: Counter[str] = field(default_factory=Counter)
    #: the first few skip messages (file:line column: expected ..., got ...)
    examples: list[str] = field(default_factory=list)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = f"{self.file}: {self.rows_kept} of {self.rows_read} rows kept"
        if self.skipped:
            text += "; skipped " + ", ".join(f"{n} ({reason})" for reason, n in self.skipped.most_common())
        return text


@dataclass(frozen=True, slots=True)
class OpenbPodList:
    pods: tuple[OpenbPod, ...]
    report: LoadReport


@dataclass(frozen=True, slots=True)
class OpenbNodeList:
    nodes: tuple[OpenbNode, ...]
    report: LoadReport


def _rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; the header is line 1.  Checks the header first."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as err:
        raise TraceFormatError(path, None, None, "a readable CSV file", str(err)) from err
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise TraceFormatError(path, 1, None, f"a header row with columns {', '.join(required)}", "an empty file") from None
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceFormatError(path, 1, missing[0], f"a header with columns {', '.join(required)}", ",".join(header))
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue  # blank lines carry nothing
            if len(row) != len(header):
                raise TraceFormatError(path, line, None, f"{len(header)} comma-separated fields", f"{len(row)} fields")
            yield line, dict(zip(header, (c.strip() for c in row), strict=True))


def _int(path: Path, line: int, row: dict[str, str], column: str, *, low: int = 0, high: int | None = None) -> int:
    raw = row[column]
    try:
        value = int(raw)
    except ValueError:
        try:  # some exports write integers as "8.0"
            as_float = float(raw)
        except ValueError:
            as_float = float("nan")
        if as_float != as_float or not as_float.is_integer():
            bound = f" in [{low}, {high}]" if high is not None else f" >= {low}"
            raise TraceFormatError(path, line, column, f"an integer{bound}", raw) from None
        value = int(as_float)
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise TraceFormatError(path, line, column, f"an integer in {bound}", raw)
    return value


def _optional_int(path: Path, line: int, row: dict[str, str], column: str) -> int | None:
    if column not in row or row[column] in ("", "nan", "NaN"):
        return None
    return _int(path, line, row, column)


def _collect(report: LoadReport, err: TraceFormatError, on_error: OnError) -> None:
    if on_error == "raise":
        raise err
    reason = f"column {err.column}: expected {err.expected}" if err.column else f"expected {err.expected}"
    report.skipped[reason] += 1
    if len(report.examples) < 5:
        report.examples.append(str(err))


def load_openb_nodes(path: str | Path, on_error: OnError = "raise") -> OpenbNodeList:
    """Read an openb node list (``openb_node_list_*.csv``)."""
    path = Path(path)
    report = LoadReport(str(path))
    nodes: list[OpenbNode] = []
    seen: dict[str, int] = {}
    for line, row in _rows(path, NODE_COLUMNS):
        report.rows_read += 1
        try:
            name = row["sn"]
            if not name:
                raise TraceFormatError(path, line, "sn", "a non-empty node name", name)
            if name in seen:
                raise TraceFormatError(path, line, "sn", f"a unique node name (first seen on line {seen[name]})", name)
            gpu_count = _int(path, line, row, "gpu")
            model = row["model"]
            if model.lower() == "nan":
                model = ""
            if gpu_count and not model:
                raise TraceFormatError(path, line, "model", "a GPU model for a node with GPUs", model)
            node = OpenbNode(
                name=name,
                cpu_milli=_int(path, line, row, "cpu_milli"),
                memory_mib=_int(path, line, row, "memory_mib"),
                gpu_count=gpu_count,
                gpu_model=model or None,
            )
        except TraceFormatError as err:
            _collect(report, err, on_error)
            continue
        seen[name] = line
        nodes.append(node)
    report.rows_kept = len(nodes)
    return OpenbNodeList(tuple(nodes), report)


def load_openb_pods(path: str | Path, on_error: OnError = "raise") -> OpenbPodList:
    """Read an openb pod list (``openb_pod_list_*.csv``), in file order."""
    path = Path(path)
    report = LoadReport(str(path))
    pods: list[OpenbPod] = []
    seen: dict[str, int] = {}
    for line, row in _rows(path, POD_COLUMNS):
        report.rows_read += 1
        try:
            pod = _parse_pod(path, line, row)
            if pod.name in seen:
                raise TraceFormatError(path, line, "name", f"a unique pod name (first seen on line {seen[pod.name]})", pod.name)
        except TraceFormatError as err:
            _collect(report, err, on_error)
            continue
        seen[pod.name] = line
        pods.append(pod)
    report.rows_kept = len(pods)
    return OpenbPodList(tuple(pods), report)


def _parse_pod(path: Path, line: int, row: dict[str, str]) -> OpenbPod:
    name = row["name"]
    if not name:
        raise TraceFormatError(path, line, "name", "a non-empty pod name", name)
    num_gpu = _int(path, line, row, "num_gpu")
    gpu_milli = _int(path, line, row, "gpu_milli", high=MILLI_PER_DEVICE)
    if num_gpu == 0 and gpu_milli != 0:
        raise TraceFormatError(path, line, "gpu_milli", "0 for a pod with num_gpu 0", row["gpu_milli"])
    if num_gpu == 1 and gpu_milli == 0:
        raise TraceFormatError(path, line, "gpu_milli", "1-1000 for a pod with num_gpu 1", row["gpu_milli"])
    if num_gpu > 1 and gpu_milli != MILLI_PER_DEVICE:
        raise TraceFormatError(path, line, "gpu_milli", f"1000 (whole GPUs) for a pod with num_gpu {num_gpu}", row["gpu_milli"])
    spec_raw = row.get("gpu_spec", "")
    if spec_raw.lower() == "nan":
        spec_raw = ""
    # the public lists sometimes name a model twice ("V100M16|V100M32|V100M32"): same constraint
    spec = tuple(dict.fromkeys(t for t in (s.strip() for s in spec_raw.split(GPU_SPEC_SEPARATOR)) if t))
    if spec and num_gpu == 0:
        raise TraceFormatError(path, line, "gpu_spec", "no GPU model constraint on a CPU-only pod", spec_raw)
    return OpenbPod(
        name=name,
        cpu_milli=_int(path, line, row, "cpu_milli"),
        memory_mib=_int(path, line, row, "memory_mib"),
        num_gpu=num_gpu,
        gpu_milli=gpu_milli,
        gpu_spec=spec,
        qos=row.get("qos", ""),
        pod_phase=row.get("pod_phase", ""),
        creation_time_seconds=_optional_int(path, line, row, "creation_time"),
        deletion_time_seconds=_optional_int(path, line, row, "deletion_time"),
        scheduled_time_seconds=_optional_int(path, line, row, "scheduled_time"),
    )
