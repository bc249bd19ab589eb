"""What the operator checks when it admits a workload, before placing it (issue #15).

The API server already refuses what the CRD schema can express (names, numeric bounds,
the typed parts of the pod template).  :func:`workload_problems` repeats the name rule (an
object stored before the rule existed keeps its name) and adds what a schema that
preserves unknown fields cannot see (typos in the pod template).  Pure: no API server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tessera.api.names import name_problems
from tessera.api.template import check_pod_template


def workload_problems(raw: Mapping[str, Any]) -> list[str]:
    """Problems of an ElasticJob or InferenceService object (as ``kubectl get -o json``
    shows it), each naming its field; empty when the operator can use it."""
    metadata = raw.get("metadata") or {}
    problems = name_problems(str(metadata.get("name", "")))
    spec = raw.get("spec")
    if not isinstance(spec, Mapping) or "template" not in spec:
        return [*problems, "spec.template is required"]
    return problems + check_pod_template(spec["template"], "spec.template")
