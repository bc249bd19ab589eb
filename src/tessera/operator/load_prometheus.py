"""A :class:`~tessera.engine.ports.LoadSource` reading load from the Prometheus HTTP API.

One instant query (``GET /api/v1/query``), configurable, whose result vector carries one
sample per workload; the labels named in ``key_labels`` form the workload key, joined
with "/" (so ``namespace`` + ``service`` gives the operator's ``namespace/name`` keys).
The default query sums the per-pod request rate of each InferenceService over one minute::

    sum by (namespace, service) (rate(tessera_inference_requests_total[1m]))

Only the standard library is used for HTTP (urllib): one GET per scheduling period does
not justify a client dependency.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

DEFAULT_QUERY = "sum by (namespace, service) (rate(tessera_inference_requests_total[1m]))"


class LoadSourceError(RuntimeError):
    """Prometheus could not be queried, or answered something unusable."""


#: urlopen-like callable (url, timeout) -> bytes; injectable for tests of error paths
Fetch = Callable[[str, float], bytes]


def _urlopen(url: str, timeout_seconds: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as err:
        # Prometheus explains bad queries in the JSON body of a 400/422
        body = err.read()
        if body:
            return body
        raise LoadSourceError(f"GET {url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise LoadSourceError(f"GET {url}: {err}") from err


class PrometheusLoadSource:
    """Workload key -> requests/s from one PromQL instant query."""

    def __init__(
        self,
        base_url: str,
        query: str = DEFAULT_QUERY,
        *,
        key_labels: Sequence[str] = ("namespace", "service"),
        timeout_seconds: float = 5.0,
        fetch: Fetch = _urlopen,
    ) -> None:
        if not key_labels:
            raise ValueError("key_labels must name at least one label")
        self.base_url = base_url.rstrip("/")
        self.query = query
        self.key_labels = tuple(key_labels)
        self.timeout_seconds = timeout_seconds
        self._fetch = fetch

    def url(self) -> str:
        return f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": self.query})

    def load(self) -> Mapping[str, float]:
        """Query Prometheus now. Raises :class:`LoadSourceError` with Prometheus's own message."""
        url = self.url()
        raw = self._fetch(url, self.timeout_seconds)
        try:
            answer: Any = json.loads(raw)
        except ValueError as err:
            raise LoadSourceError(f"GET {url}: not JSON: {raw[:200]!r}") from err
        if not isinstance(answer, dict) or answer.get("status") != "success":
            detail = answer.get("error", answer) if isinstance(answer, dict) else answer
            raise LoadSourceError(f"Prometheus rejected query {self.query!r}: {detail}")
        data = answer.get("data", {})
        if data.get("resultType") != "vector":
            raise LoadSourceError(
                f"query {self.query!r} returned a {data.get('resultType')}, expected an instant vector"
            )
        out: dict[str, float] = {}
        for sample in data.get("result", []):
            labels = sample.get("metric", {})
            if any(label not in labels for label in self.key_labels):
                continue  # a series without the key labels cannot be attributed
            value = float(sample["value"][1])
            if math.isnan(value) or math.isinf(value):
                continue
            key = "/".join(labels[label] for label in self.key_labels)
            out[key] = out.get(key, 0.0) + value
        return out
