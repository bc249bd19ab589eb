"""What the operator checks when it admits a workload, before placing it (issue #15).

The API server already refuses what the CRD schema can express (names, numeric bounds,
the typed parts of the pod template).  :func:`workload_problems` repeats the name rule (an
object stored before the rule existed keeps its name), adds what a schema that
preserves unknown fields cannot see (typos in the pod template) and bounds the spec's
size, which no schema can.  Pure: no API server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tessera.api.names import name_problems
from tessera.api.template import check_pod_template

#: largest spec (serialised as compact JSON) the operator takes on: kopf keeps the last
#: handled spec in an annotation, and all annotations together are limited to 256 KiB
#: (docs/crds.md, "Size")
MAX_SPEC_BYTES = 131_072


def workload_problems(raw: Mapping[str, Any]) -> list[str]:
    """Problems of an ElasticJob or InferenceService object (as ``kubectl get -o json``
    shows it), each naming its field; empty when the operator can use it."""
    metadata = raw.get("metadata") or {}
    problems = name_problems(str(metadata.get("name", "")))
    spec = raw.get("spec")
    if not isinstance(spec, Mapping) or "template" not in spec:
        return [*problems, "spec.template is required"]
    size = len(json.dumps(spec, separators=(",", ":")).encode())
    if size > MAX_SPEC_BYTES:
        problems.append(f"spec is {size} bytes as JSON, more than {MAX_SPEC_BYTES}: move large configuration "
                        "into a ConfigMap (docs/crds.md, Size)")
    return problems + check_pod_template(spec["template"], "spec.template")
