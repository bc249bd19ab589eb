"""Careless mistakes in a workload's pod template, found before any pod is created.

The CRDs keep the pod template's ``spec`` mostly unvalidated (``x-kubernetes-preserve-unknown-fields``:
embedding the whole core/v1 PodSpec schema would freeze it at one Kubernetes version and
make the CRD huge), so a template can hold mistakes that surface only when the operator
creates the first pod, long after ``kubectl apply`` said "created":

* ``env: [{name: N, value: 5}]``: an EnvVar value must be a string;
* ``args: [--epochs, 3]``: args and command are lists of strings;
* ``resource:`` for ``resources:`` (or any other unknown field): the API server drops it
  silently (field validation ``Warn``) and the pod runs without limits;
* ``cpu: 0.5`` or ``memory: 2 GB``: a quantity is a quoted string such as ``"500m"`` or
  ``"2Gi"`` (a plain integer, ``cpu: 2``, is accepted, as the API server does).

Two layers catch them:

1. the CRD schema (:data:`POD_SPEC_SCHEMA`) types the cheap parts of ``template.spec``:
   container names, ``command``/``args`` as strings, ``env[].value`` as a string,
   resource quantities as an int or a quantity string, with length limits; everything
   else stays preserved and is checked by the API server when the pod is created;
2. :func:`check_pod_template`, a pure function the operator calls at admission, which
   also knows the field names of core/v1 PodSpec and Container (Kubernetes
   :data:`KUBERNETES_VERSION`) and so reports typos, each problem naming its field path.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: the field names below are those of this Kubernetes release and of the kubernetes client
#: the operator pins (operator/requirements.txt; a unit test keeps them a superset of the
#: client's models), so a field a newer cluster knows is not reported as a typo
KUBERNETES_VERSION = "1.34"

#: core/v1 PodSpec fields
POD_SPEC_FIELDS = frozenset({
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers", "dnsConfig",
    "dnsPolicy", "enableServiceLinks", "ephemeralContainers", "hostAliases", "hostIPC", "hostNetwork",
    "hostPID", "hostUsers", "hostname", "hostnameOverride", "imagePullSecrets", "initContainers",
    "nodeName", "nodeSelector", "os", "overhead", "preemptionPolicy", "priority", "priorityClassName",
    "readinessGates", "resourceClaims", "resources", "restartPolicy", "runtimeClassName", "schedulerName",
    "schedulingGates", "schedulingGroup", "evictionResponders", "securityContext", "serviceAccount", "serviceAccountName", "setHostnameAsFQDN",
    "shareProcessNamespace", "subdomain", "terminationGracePeriodSeconds", "tolerations",
    "topologySpreadConstraints", "volumes",
})
#: core/v1 Container fields
CONTAINER_FIELDS = frozenset({
    "args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe", "name",
    "ports", "readinessProbe", "resizePolicy", "resources", "restartPolicy", "restartPolicyRules",
    "securityContext", "startupProbe", "stdin", "stdinOnce", "terminationMessagePath",
    "terminationMessagePolicy", "tty", "volumeDevices", "volumeMounts", "workingDir",
})
ENV_VAR_FIELDS = frozenset({"name", "value", "valueFrom"})
RESOURCE_REQUIREMENTS_FIELDS = frozenset({"claims", "limits", "requests"})

#: a Kubernetes quantity (the pattern the API server publishes for resource.Quantity)
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

#: longest single string in command/args/env values (a script inlined in args is the
#: usual way a workload grows past what Kubernetes can store in an annotation)
MAX_STRING_LENGTH = 32_768
#: most containers (and, separately, init containers) in one template
MAX_CONTAINERS = 32
#: most items in one container's command, args or env
MAX_LIST_ITEMS = 1_024
#: most characters in all command/args/env values of a template together (docs/crds.md,
#: "Size": kopf keeps the last handled spec in a 256 KiB annotation)
MAX_INLINE_TEXT = 131_072

# CEL: characters of command, args and env values of each container list
_TEXT_OF = (
    "(has(c.command) ? c.command.map(a, a.size()).sum() : 0)"
    " + (has(c.args) ? c.args.map(a, a.size()).sum() : 0)"
    " + (has(c.env) ? c.env.map(e, has(e.value) ? e.value.size() : 0).sum() : 0)"
)
# Create only (optionalOldSelf): on an update of an object stored before this rule, a
# number where the schema now says string makes the rule's evaluation fail, and a failing
# rule would refuse even the removal of the object's finalizer (it could never be deleted).
# Type and length checks of unchanged fields are ratcheted by the API server; updates are
# covered by the operator's admission check (tessera.api.admission).
_INLINE_TEXT_RULE = {
    "optionalOldSelf": True,
    "rule": "oldSelf.hasValue() || "
    f"self.containers.map(c, {_TEXT_OF}).sum()"
    f" + (has(self.initContainers) ? self.initContainers.map(c, {_TEXT_OF}).sum() : 0) <= {MAX_INLINE_TEXT}",
    "message": f"spec.template.spec: command, args and env values of all containers together must be at most "
    f"{MAX_INLINE_TEXT} characters; mount a ConfigMap for more (a larger workload cannot be handled, "
    "see docs/crds.md, Size)",
}

# --- the CRD side ----------------------------------------------------------------------

_QUANTITY_SCHEMA: dict[str, Any] = {"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}
_STRINGS: dict[str, Any] = {
    "type": "array", "maxItems": MAX_LIST_ITEMS, "items": {"type": "string", "maxLength": MAX_STRING_LENGTH},
}
_RESOURCES: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,  # claims
    "properties": {
        "limits": {"type": "object", "additionalProperties": _QUANTITY_SCHEMA},
        "requests": {"type": "object", "additionalProperties": _QUANTITY_SCHEMA},
    },
}
_CONTAINER: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 63},
        "image": {"type": "string", "maxLength": 4_096},
        "command": _STRINGS,
        "args": _STRINGS,
        "env": {
            "type": "array",
            "maxItems": MAX_LIST_ITEMS,
            "items": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,  # valueFrom
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "maxLength": 4_096},
                    "value": {"type": "string", "maxLength": MAX_STRING_LENGTH},
                },
            },
        },
        "resources": _RESOURCES,
    },
}
#: the partial core/v1 PodSpec schema of ``template.spec`` in the CRDs: the cheap checks
#: (types, quantities, lengths); every field it does not list is preserved as written
POD_SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
    "x-kubernetes-validations": [_INLINE_TEXT_RULE],
    "required": ["containers"],
    "properties": {
        "containers": {"type": "array", "minItems": 1, "maxItems": MAX_CONTAINERS, "items": _CONTAINER},
        "initContainers": {"type": "array", "maxItems": MAX_CONTAINERS, "items": _CONTAINER},
        "resources": _RESOURCES,
        "overhead": {"type": "object", "additionalProperties": _QUANTITY_SCHEMA},
    },
}


# --- the operator side -----------------------------------------------------------------


def check_pod_template(template: Mapping[str, Any], path: str = "spec.template") -> list[str]:
    """Problems in a workload's pod template (``{"metadata": ..., "spec": PodSpec}``), each
    naming its field path under ``path``; empty when none is found.

    Pure and cheap (no API server): types of the fields the operator's pod depends on,
    quantities, label syntax, and unknown PodSpec / Container / EnvVar / resources fields
    with a suggestion.  What it does not look at (volumes' contents, probes, affinity) the
    API server checks when the pod is created (or in a server-side dry run).
    """
    problems: list[str] = []
    if not isinstance(template, Mapping):
        return [f"{path} must be an object with metadata and spec (got {_kind(template)})"]
    metadata = template.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        problems.append(f"{path}.metadata must be an object (got {_kind(metadata)})")
    else:
        problems += _check_labels(metadata.get("labels") or {}, f"{path}.metadata.labels")
        problems += _check_string_map(metadata.get("annotations") or {}, f"{path}.metadata.annotations")
    spec = template.get("spec")
    if not isinstance(spec, Mapping):
        return [*problems, f"{path}.spec must be a PodSpec object (got {_kind(spec)})"]
    return problems + check_pod_spec(spec, f"{path}.spec")


def check_pod_spec(spec: Mapping[str, Any], path: str = "spec.template.spec") -> list[str]:
    """Problems in a core/v1 PodSpec (see :func:`check_pod_template`)."""
    problems = _unknown_fields(spec, POD_SPEC_FIELDS, path, "PodSpec")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        problems.append(f"{path}.containers must list at least one container")
        containers = []
    names: set[str] = set()
    for field in ("containers", "initContainers"):
        items = containers if field == "containers" else spec.get(field)
        if items is None:
            continue
        if not isinstance(items, list):
            problems.append(f"{path}.{field} must be a list (got {_kind(items)})")
            continue
        for i, container in enumerate(items):
            problems += _check_container(container, f"{path}.{field}[{i}]", names)
    if spec.get("ephemeralContainers"):
        problems.append(f"{path}.ephemeralContainers cannot be set when a pod is created")
    for field in ("resources",):
        if field in spec:
            problems += _check_resources(spec[field], f"{path}.{field}")
    if "overhead" in spec:
        problems += _check_quantities(spec["overhead"], f"{path}.overhead")
    if "nodeSelector" in spec:
        problems += _check_string_map(spec["nodeSelector"], f"{path}.nodeSelector")
    inline = 0
    for field in ("containers", "initContainers"):
        items = spec.get(field)
        if isinstance(items, list):
            inline += sum(_inline_text(c) for c in items)
    if inline > MAX_INLINE_TEXT:
        problems.append(f"{path}: command, args and env values of all containers together are {inline} characters, "
                        f"more than {MAX_INLINE_TEXT}; mount a ConfigMap instead")
    volumes = spec.get("volumes")
    if volumes is not None:
        if not isinstance(volumes, list):
            problems.append(f"{path}.volumes must be a list (got {_kind(volumes)})")
        else:
            for i, volume in enumerate(volumes):
                if not isinstance(volume, Mapping) or not isinstance(volume.get("name"), str):
                    problems.append(f"{path}.volumes[{i}].name is required (a string)")
    return problems


def _inline_text(container: Any) -> int:
    """Characters of a container's command, args and env values (what the CEL rule counts)."""
    if not isinstance(container, Mapping):
        return 0
    total = 0
    for field in ("command", "args"):
        items = container.get(field)
        if isinstance(items, list):
            total += sum(len(item) for item in items if isinstance(item, str))
    env = container.get("env")
    if isinstance(env, list):
        total += sum(len(var["value"]) for var in env if isinstance(var, Mapping) and isinstance(var.get("value"), str))
    return total


def _check_container(container: Any, path: str, names: set[str]) -> list[str]:
    if not isinstance(container, Mapping):
        return [f"{path} must be a Container object (got {_kind(container)})"]
    problems = _unknown_fields(container, CONTAINER_FIELDS, path, "Container")
    name = container.get("name")
    if not isinstance(name, str) or not _DNS1123_LABEL.match(name) or len(name) > 63:
        problems.append(f"{path}.name must be a DNS-1123 label of at most 63 characters (got {name!r})")
    elif name in names:
        problems.append(f"{path}.name {name!r} is used by another container")
    else:
        names.add(name)
    if "image" in container and not isinstance(container["image"], str):
        problems.append(f"{path}.image must be a string (got {_kind(container['image'])})")
    for field in ("command", "args"):
        if field in container:
            problems += _check_strings(container[field], f"{path}.{field}")
    if "env" in container:
        env = container["env"]
        if not isinstance(env, list):
            problems.append(f"{path}.env must be a list of {{name, value}} (got {_kind(env)})")
        else:
            for i, var in enumerate(env):
                problems += _check_env_var(var, f"{path}.env[{i}]")
    if "resources" in container:
        problems += _check_resources(container["resources"], f"{path}.resources")
    return problems


def _check_env_var(var: Any, path: str) -> list[str]:
    if not isinstance(var, Mapping):
        return [f"{path} must be an object with name and value (got {_kind(var)})"]
    problems = _unknown_fields(var, ENV_VAR_FIELDS, path, "EnvVar")
    if not isinstance(var.get("name"), str) or not var.get("name"):
        problems.append(f"{path}.name is required (a string)")
    if "value" in var and not isinstance(var["value"], str):
        problems.append(f"{path}.value must be a string; quote it: value: \"{_yaml_scalar(var['value'])}\" "
                        f"(got {_kind(var['value'])})")
    elif isinstance(var.get("value"), str) and len(var["value"]) > MAX_STRING_LENGTH:
        problems.append(f"{path}.value is longer than {MAX_STRING_LENGTH} characters; mount a ConfigMap instead")
    return problems


def _check_strings(items: Any, path: str) -> list[str]:
    if not isinstance(items, list):
        return [f"{path} must be a list of strings (got {_kind(items)})"]
    problems = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            problems.append(f"{path}[{i}] must be a string; quote it: \"{_yaml_scalar(item)}\" (got {_kind(item)})")
        elif len(item) > MAX_STRING_LENGTH:
            problems.append(f"{path}[{i}] is longer than {MAX_STRING_LENGTH} characters; mount a ConfigMap instead")
    return problems


def _check_resources(resources: Any, path: str) -> list[str]:
    if not isinstance(resources, Mapping):
        return [f"{path} must be an object with limits and requests (got {_kind(resources)})"]
    problems = _unknown_fields(resources, RESOURCE_REQUIREMENTS_FIELDS, path, "ResourceRequirements")
    for field in ("limits", "requests"):
        if field in resources:
            problems += _check_quantities(resources[field], f"{path}.{field}")
    return problems


def _check_quantities(quantities: Any, path: str) -> list[str]:
    if not isinstance(quantities, Mapping):
        return [f"{path} must map resource names to quantities (got {_kind(quantities)})"]
    problems = []
    for name, value in quantities.items():
        if isinstance(value, bool) or not isinstance(value, int | str):
            problems.append(f"{path}.{name} must be a quantity string such as \"500m\" or \"2Gi\"; quote it: "
                            f"\"{_yaml_scalar(value)}\" (got {_kind(value)})")
        elif isinstance(value, str) and not _QUANTITY.match(value):
            problems.append(f"{path}.{name} is not a quantity (got {value!r}; e.g. \"500m\", \"2\", \"64Gi\")")
        elif isinstance(value, int) and value < 0:
            problems.append(f"{path}.{name} must not be negative (got {value})")
    return problems


def _check_labels(labels: Any, path: str) -> list[str]:
    if not isinstance(labels, Mapping):
        return [f"{path} must map strings to strings (got {_kind(labels)})"]
    problems = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if (not _QUALIFIED_NAME.match(name) or len(name) > 63
                or (prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)))):
            problems.append(f"{path}: {key!r} is not a valid label key")
        if not isinstance(value, str):
            problems.append(f"{path}.{key} must be a string (got {_kind(value)})")
        elif len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(f"{path}.{key}: {value!r} is not a valid label value (at most 63 characters: "
                            "letters, digits, '-', '_', '.', starting and ending with a letter or digit)")
    return problems


def _check_string_map(values: Any, path: str) -> list[str]:
    if not isinstance(values, Mapping):
        return [f"{path} must map strings to strings (got {_kind(values)})"]
    return [f"{path}.{key} must be a string; quote it: \"{_yaml_scalar(value)}\" (got {_kind(value)})"
            for key, value in values.items() if not isinstance(value, str)]


def _unknown_fields(obj: Mapping[str, Any], known: frozenset[str], path: str, kind: str) -> list[str]:
    problems = []
    for key in obj:
        if key not in known:
            guess = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.75)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            problems.append(f"{path}.{key}: unknown {kind} field{hint}")
    return problems


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, Sequence):
        return "a list"
    return type(value).__name__


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
