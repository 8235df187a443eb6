"""Pins the Celery internals that :mod:`celeryredis.tasks._backend_retry` relies on.

``BaseBackend.always_retry`` is set from ``result_backend_always_retry`` and read by
``BaseBackend._ensure_retryable`` at every call. No server is needed: the backend is
only built (a redis-py pool connects lazily) and the retried operation is a local
function that fails the way a dead Redis does.
"""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from celeryredis.tasks._backend_retry import backend_retries_held

URL = "redis://127.0.0.1:1/0"


def _backend(**conf: object) -> object:
    app = Celery("pin", broker=URL, backend=URL, set_as_current=False)
    settings: dict[str, object] = {
        "result_backend_always_retry": True,
        "result_backend_max_retries": 2,
        "result_backend_base_sleep_between_retries_ms": 1,
    }
    app.conf.update(settings, **conf)
    return app.backend


def _calls(backend: object) -> int:
    calls = []

    def operation() -> None:
        calls.append(1)
        raise redis.ConnectionError("Connection refused.")

    with pytest.raises(redis.ConnectionError):
        backend._ensure_retryable(operation)  # type: ignore[attr-defined]
    return len(calls)


def test_backend_reads_always_retry_from_the_setting_at_every_call() -> None:
    backend = _backend()
    assert backend.always_retry is True  # type: ignore[attr-defined]
    assert _calls(backend) == 3  # the first try and two retries
    backend.always_retry = False  # type: ignore[attr-defined]
    assert _calls(backend) == 1


def test_held_retries_come_back_after_the_block_and_nesting_is_safe() -> None:
    backend = _backend()
    with backend_retries_held([backend, backend]):
        assert _calls(backend) == 1
        with backend_retries_held([backend]):
            assert _calls(backend) == 1
        assert backend.always_retry is False  # type: ignore[attr-defined]
    assert backend.always_retry is True  # type: ignore[attr-defined]
    assert _calls(backend) == 3


def test_a_backend_without_retries_is_left_alone() -> None:
    backend = _backend(result_backend_always_retry=False)
    with backend_retries_held([backend]):
        assert backend.always_retry is False  # type: ignore[attr-defined]
    assert backend.always_retry is False  # type: ignore[attr-defined]
