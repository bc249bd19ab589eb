"""429 Too Many Requests is retried after the server's Retry-After, as client-go does."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from tessera.operator import kube as K


class Response:
    def __init__(self, status: int, retry_after: str | None = None) -> None:
        self.status = status
        self.headers = {"Retry-After": retry_after} if retry_after else {}
        self.drained = False

    def read(self) -> bytes:
        self.drained = True
        return b"{}"


def scripted(*answers: Any) -> tuple[list[Any], Any]:
    calls: list[Any] = []

    def request(*args: Any, **kwargs: Any) -> Any:
        answer = answers[len(calls)]
        calls.append(answer)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return calls, request


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(K.time, "sleep", waits.append)
    return waits


def test_a_429_response_is_retried_after_retry_after(no_sleep: list[float]) -> None:
    first = Response(429, "1")
    calls, request = scripted(first, Response(429), Response(200))
    throttled = K.Throttled(request)
    assert throttled("POST", "/api/v1/pods").status == 200
    assert len(calls) == 3 and throttled.refused == 2 and first.drained
    assert 0.5 <= no_sleep[0] <= 1.0  # Retry-After 1 s, with jitter


def test_a_raised_429_is_retried_and_other_errors_are_not() -> None:
    calls, request = scripted(ApiException(status=429), Response(201))
    assert K.Throttled(request)("POST", "/x").status == 201
    calls, request = scripted(ApiException(status=409), Response(201))
    with pytest.raises(ApiException):
        K.Throttled(request)("POST", "/x")
    assert len(calls) == 1


def test_it_gives_up_after_its_attempts_and_returns_the_last_answer(no_sleep: list[float]) -> None:
    calls, request = scripted(*[Response(429, "30")] * 4)
    throttled = K.Throttled(request, attempts=3, max_wait_seconds=2.0)
    assert throttled("PATCH", "/x").status == 429  # the caller's error handling takes over
    assert len(calls) == 4
    assert len(no_sleep) == 3 and max(no_sleep) <= 2.0  # Retry-After capped
