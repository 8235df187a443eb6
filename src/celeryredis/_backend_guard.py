"""Shim: make Celery's Redis result backend stop retrying on a permanent error.

Celery's ``RedisBackend.ensure`` retries with ``kombu.utils.functional.retry_over_time``
and passes ``partial(self.on_connection_error, max_retries)`` as its ``errback``; the
result consumer's re-subscribe goes through it, so a wrong password waits out the
whole ``result_backend_transport_options["retry_policy"]`` before a publish fails.
There is no public hook for that errback: :func:`guard_backend` replaces
``on_connection_error`` on the backend *instance* with a wrapper that raises
:class:`~celeryredis.exceptions.RedisRefusedError` for a permanent error (see
:mod:`celeryredis._errors`) and calls Celery's own method otherwise.

Private use of Celery (pinned by ``tests/unit/test_errors.py``): the name and the
``(max_retries, exc, intervals, retries)`` signature of
``celery.backends.redis.RedisBackend.on_connection_error``, and that ``ensure`` looks it
up on the instance at call time.
"""

from __future__ import annotations

from typing import Any

from celeryredis._errors import refusal

__all__ = ["guard_backend"]

_MARK = "_celeryredis_guarded"


def guard_backend(backend: Any) -> None:
    """Install the wrapper on ``backend`` (idempotent; a no-op for other backends)."""
    original = getattr(backend, "on_connection_error", None)
    if original is None or getattr(backend, _MARK, False):
        return

    def on_connection_error(max_retries: Any, exc: BaseException, *rest: Any) -> Any:
        refused = refusal(exc, where="result backend", setting="result_backend")
        if refused is not None:
            raise refused from exc
        return original(max_retries, exc, *rest)

    backend.on_connection_error = on_connection_error
    setattr(backend, _MARK, True)
