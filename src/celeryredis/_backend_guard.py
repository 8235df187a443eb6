"""Shims on a Celery result backend instance: permanent errors, and stored arguments.

**Permanent errors.** Make Celery's Redis result backend stop retrying on one.

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

**Stored arguments.** With ``result_extended`` on (every preset turns it on), Celery's
``BaseBackend._get_result_meta`` copies the request's real ``args`` and ``kwargs`` into
every stored state (``STARTED``, ``SUCCESS``, ``FAILURE``, ...), where ``AsyncResult.args``
and anyone reading the result key see them for ``result_expires``.
:func:`redact_stored_arguments` replaces ``_get_result_meta`` on the backend *instance*
with a wrapper that hands Celery a view of the request whose sensitive arguments are
``***`` (:func:`celeryredis.redaction.redact_call`, with the task's sensitive words and
signature); the task still runs with, and retries republish, the real ones. The private
Celery method is replaced through :func:`celeryredis._celery_compat.wrap_result_meta`
(its ``PRIVATE_API``; the parameters and what it reads are pinned by
``tests/unit/test_backend_guard.py``).
"""

from __future__ import annotations

from typing import Any

from celeryredis import _celery_compat
from celeryredis._errors import refusal
from celeryredis.redaction import redact_call, sensitive_words

__all__ = ["guard_backend", "redact_stored_arguments"]

_MARK = "_celeryredis_guarded"
_REDACTING = "_celeryredis_redacting"


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


class _StoredRequest:
    """A task request as the result backend sees it: redacted ``args`` and ``kwargs``."""

    def __init__(self, request: Any, args: Any, kwargs: Any) -> None:
        self._request = request
        self.args = args
        self.kwargs = kwargs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def _stored_view(app: Any, request: Any) -> Any:
    """``request``, or a view of it with its sensitive arguments as ``***``."""
    args = getattr(request, "args", None)
    kwargs = getattr(request, "kwargs", None)
    if not args and not kwargs:
        return request
    task = app.tasks.get(getattr(request, "task", None) or "")
    try:
        own_words = getattr(task, "_sensitive_words", None)
        if own_words is not None:
            words = own_words(request)
        else:
            words = sensitive_words(app.conf, getattr(task, "sensitive_names", None) or ())
        call = redact_call(args, kwargs, words=words, func=getattr(task, "run", None))
    except Exception as exc:  # odd argument shapes: store none of them rather than all
        shown = f"<arguments not shown: {type(exc).__name__}>"
        return _StoredRequest(request, [shown], {})
    if not call.changed:
        return request
    return _StoredRequest(request, list(call.args), call.kwargs)


def redact_stored_arguments(backend: Any) -> None:
    """Store sensitive task arguments as ``***`` in ``backend``'s extended results.

    Idempotent; a no-op for an object without Celery's meta builder. Costs nothing per
    stored state unless ``result_extended`` is on and the request has arguments.
    """
    if getattr(backend, _REDACTING, False):
        return
    app = getattr(backend, "app", None)
    if app is None:
        return

    def wrap(original: Any) -> Any:
        def result_meta(
            result: Any, state: Any, traceback: Any, request: Any, *more: Any, **rest: Any
        ) -> Any:
            if request is not None and app.conf.find_value_for_key("extended", "result"):
                request = _stored_view(app, request)
            return original(result, state, traceback, request, *more, **rest)

        return result_meta

    if _celery_compat.wrap_result_meta(backend, wrap):
        setattr(backend, _REDACTING, True)
