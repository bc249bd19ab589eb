"""Which workload names the operator can use, and the limits it derives them from.

The API server accepts any DNS subdomain (253 characters, dots, a leading digit) as the
name of an ElasticJob or InferenceService, but the operator derives other names from it:

* pods ``<name>-<replica>``, whose ``hostname`` is the same string (a DNS-1123 label);
* the headless Service ``<name>-headless`` (a DNS-1035 label: <= 63, starts with a letter);
* the plan ConfigMap ``<name>-tessera-plan``;
* the pod label ``tessera.dev/workload=<name>`` (a label value: <= 63).

So a workload name must be a DNS-1035 label short enough that every child name is one
too.  One rule for every child (even the ConfigMap, whose own limit is 253) keeps the
rule easy to state and keeps each child name usable as a label value or hostname.  The
CRDs enforce it with a CEL rule on ``metadata.name`` (:func:`name_rules`), and
:func:`name_problems` is the same check for code paths that see names first.

Queue names (cluster-scoped, :mod:`tessera.api.queue`) follow their own, simpler rule: see
:func:`queue_name_problems` and :func:`queue_name_rules` at the end.
"""

from __future__ import annotations

import re
from typing import Any

#: a DNS-1035 label (Service names): lower case alphanumerics and '-', starting with a letter
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: longest DNS label (RFC 1123 / RFC 1035)
DNS_LABEL_MAX_LENGTH = 63
#: replica indices (pod ``<name>-<replica>``) reserve this many digits; the longest
#: suffix below leaves room for more than that
REPLICA_INDEX_DIGITS = 6
#: every suffix the operator appends to a workload's name (see the module doc)
CHILD_NAME_SUFFIXES: tuple[str, ...] = ("-headless", "-tessera-plan", "-" + "9" * REPLICA_INDEX_DIGITS)
#: the longest workload name whose child names all stay DNS labels (50)
MAX_WORKLOAD_NAME_LENGTH = DNS_LABEL_MAX_LENGTH - max(len(s) for s in CHILD_NAME_SUFFIXES)

_LABEL = re.compile(DNS1035_LABEL)


def name_problems(name: str) -> list[str]:
    """Why ``name`` cannot name a Tessera workload (empty when it can), naming the field."""
    problems = []
    if len(name) > MAX_WORKLOAD_NAME_LENGTH:
        problems.append(
            f"metadata.name must be at most {MAX_WORKLOAD_NAME_LENGTH} characters (got {len(name)}): "
            f"the operator creates <name>-tessera-plan, <name>-headless and pods <name>-<replica>, "
            f"which must stay {DNS_LABEL_MAX_LENGTH}-character DNS labels"
        )
    if not _LABEL.match(name):
        problems.append(
            f"metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a "
            f"letter, ending with a letter or digit; no dots) (got {name!r}): the headless Service "
            f"<name>-headless must be one"
        )
    return problems


def name_rules() -> list[dict[str, Any]]:
    """The CEL rules (``x-kubernetes-validations`` at the schema root) enforcing :func:`name_problems`.

    A CRD schema may not constrain ``metadata`` itself beyond ``name``/``generateName``,
    but a rule at the root sees ``self.metadata.name`` (already generated from
    ``generateName`` when the rule runs).

    The rules run on create only (``optionalOldSelf``: on an update ``oldSelf`` has a
    value and they pass).  A name cannot change, and a rule on the root would otherwise
    run on every update of an object stored before the rule existed, refusing even the
    removal of its finalizer: such a workload could never be deleted.
    """
    return [
        {
            "rule": f"oldSelf.hasValue() || self.metadata.name.size() <= {MAX_WORKLOAD_NAME_LENGTH}",
            "message": f"metadata.name must be at most {MAX_WORKLOAD_NAME_LENGTH} characters: the operator "
            f"creates <name>-tessera-plan, <name>-headless and pods <name>-<replica>, which must stay "
            f"{DNS_LABEL_MAX_LENGTH}-character DNS labels",
            "fieldPath": ".metadata.name",
            "reason": "FieldValueInvalid",
            "optionalOldSelf": True,
        },
        {
            "rule": f"oldSelf.hasValue() || self.metadata.name.matches('{DNS1035_LABEL}')",
            "message": "metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting "
            "with a letter; no dots): the headless Service <name>-headless must be one",
            "fieldPath": ".metadata.name",
            "reason": "FieldValueInvalid",
            "optionalOldSelf": True,
        },
    ]


# --- queues ------------------------------------------------------------------------------
#
# A Queue (cluster-scoped, tessera.api.queue) has no children named after it, but its name
# is written where a label value or a DNS label must fit: a workload's spec.queueName, a
# queue's spec.parent, metric labels.  So it is a DNS-1123 label (<= 63, may start with a
# digit), stricter than the DNS subdomain the API server accepts for any custom resource.

#: a DNS-1123 label: lower case alphanumerics and '-', starting and ending with one of the former
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: a queue's name, or empty (``spec.queueName`` / ``spec.parent`` unset)
QUEUE_REFERENCE = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"
#: longest queue name
MAX_QUEUE_NAME_LENGTH = DNS_LABEL_MAX_LENGTH

_QUEUE_LABEL = re.compile(DNS1123_LABEL)
_QUEUE_NAME_WHY = ("lower-case letters, digits and '-', starting and ending with a letter or digit, "
                   f"at most {MAX_QUEUE_NAME_LENGTH} characters; no dots")


def queue_name_problems(name: str) -> list[str]:
    """Why ``name`` cannot name a Queue (empty when it can), naming the field."""
    if len(name) <= MAX_QUEUE_NAME_LENGTH and _QUEUE_LABEL.match(name):
        return []
    return [f"metadata.name of a Queue must be a DNS-1123 label ({_QUEUE_NAME_WHY}) (got {name!r})"]


def queue_name_rules() -> list[dict[str, Any]]:
    """The CEL rules at the root of the Queue CRD enforcing :func:`queue_name_problems`.

    Create-only like :func:`name_rules`, for the same reason (an object stored before a
    rule existed must stay updatable and deletable).
    """
    return [
        {
            "rule": f"oldSelf.hasValue() || (self.metadata.name.size() <= {MAX_QUEUE_NAME_LENGTH}"
            f" && self.metadata.name.matches('{DNS1123_LABEL}'))",
            "message": f"metadata.name of a Queue must be a DNS-1123 label ({_QUEUE_NAME_WHY})",
            "fieldPath": ".metadata.name",
            "reason": "FieldValueInvalid",
            "optionalOldSelf": True,
        },
    ]
