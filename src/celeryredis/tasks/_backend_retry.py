"""Shim: Celery's result-backend retry loop, held off while a task runs eagerly.

Why: with ``result_backend_always_retry`` (on in every preset but ``testing``'s short
form) every backend call that fails with a connection error is retried by
``BaseBackend._ensure_retryable`` up to ``result_backend_max_retries`` times, sleeping a
full-jitter exponential backoff between tries (10 ms x 2**n, capped at
``result_backend_max_sleep_between_retries_ms``). With 10 retries the sleeps add up to
anything from 0 to 20.2 s, about 10 s on average: an eager test whose ``task_postrun``
receiver reads ``AsyncResult(task_id).state`` while Redis is down waits that long for
each task. An eager run stores no result unless ``task_store_eager_result`` is on, so
a backend read there can only answer PENDING: retrying it protects nothing.

Private Celery attribute used (pinned by ``tests/unit/test_eager.py``):
``celery.backends.base.BaseBackend.always_retry`` — set from
``result_backend_always_retry`` in ``BaseBackend.__init__`` and read by
``_ensure_retryable`` at every call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["backend_retries_held"]


@contextmanager
def backend_retries_held(backends: Iterable[Any]) -> Iterator[None]:
    """Turn off the retry loop of ``backends`` for the block, then turn it back on.

    A backend whose loop is already off (not configured, or held by an outer eager
    run, e.g. Celery's inline eager retry) is left alone, so nesting is safe. Celery
    keeps one backend per app and thread (``app.backend``), so another thread's calls
    are not affected.
    """
    held: list[tuple[Any, Any]] = []
    for backend in {id(b): b for b in backends}.values():
        value = getattr(backend, "always_retry", False)
        if value:
            backend.always_retry = False
            held.append((backend, value))
    try:
        yield
    finally:
        for backend, value in held:
            backend.always_retry = value
