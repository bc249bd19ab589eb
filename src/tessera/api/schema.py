"""Turn a pydantic JSON Schema into a Kubernetes *structural* OpenAPI v3 schema.

Kubernetes accepts only a subset of JSON Schema in a CRD: every node has a ``type``, no
``$ref``, no ``anyOf``/``oneOf`` that introduce types, no ``additionalProperties: false``,
``exclusiveMinimum`` is a boolean next to ``minimum``, and no ``title``/``$defs``.
This module rewrites pydantic's output into that shape; ``x-kubernetes-*`` keys
written through ``json_schema_extra`` pass through untouched.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_DROP = {"title", "$defs", "additionalProperties", "exclusiveMaximum"}


def structural_schema(model: type[BaseModel], *, defaults: bool = True) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model`` (camelCase field aliases).

    ``defaults=False`` drops every ``default`` (for status, which only the operator writes:
    server-side defaults there would only hide a missing field).
    """
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _convert(raw, defs, defaults)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref`` and merge the referencing node's own keys (description, default, x-*)."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = dict(defs[name])
        merged.update({k: v for k, v in node.items() if k != "$ref"})
        return _resolve(merged, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = _resolve(dict(node["allOf"][0]), defs)
        merged.update({k: v for k, v in node.items() if k != "allOf"})
        return merged
    options = node.get("anyOf")
    if options is not None:
        # Optional[X] -> X: absence is how Kubernetes says "unset"
        non_null = [o for o in options if o.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"structural schemas cannot express a union: {options}")
        merged = _resolve(dict(non_null[0]), defs)
        merged.update({k: v for k, v in node.items() if k != "anyOf"})
        if merged.get("default", 0) is None:
            del merged["default"]
        return merged
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any], defaults: bool) -> dict[str, Any]:
    node = _resolve(dict(node), defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and not defaults):
            continue
        if key == "description":
            # docstrings use reStructuredText ``literals``; kubectl explain shows plain text
            out[key] = " ".join(str(value).replace("``", "`").split())
            continue
        if key == "properties":
            out["properties"] = {name: _convert(sub, defs, defaults) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs, defaults)
        elif key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    additional = node.get("additionalProperties")
    if isinstance(additional, dict) and "properties" not in node:
        # map[string]T is structural; only `false` and properties+additionalProperties are not
        out["additionalProperties"] = _convert(additional, defs, defaults)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields") and not out.get(
        "x-kubernetes-int-or-string"
    ):
        raise ValueError(f"schema node without a type: {node}")
    return out
