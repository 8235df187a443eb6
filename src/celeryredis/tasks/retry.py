"""``celeryredis.RetryTask``: retry what is transient, never what is not."""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Mapping
from typing import Any, ClassVar

import kombu.exceptions
import redis.exceptions
from celery.exceptions import TaskPredicate

from celeryredis.exceptions import ConfigurationError
from celeryredis.log import task_context
from celeryredis.redaction import redact_text
from celeryredis.tasks._options import (
    OptionCheck,
    as_bool,
    as_exception_types,
    as_non_negative_int,
    as_seconds,
)
from celeryredis.tasks.base import AppRetryBudget, Task
from celeryredis.validation import Finding

__all__ = ["TRANSIENT_ERRORS", "RetryTask"]

logger = logging.getLogger(__name__)

#: What :class:`RetryTask` retries by default: network and timeout errors.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # builtin: refused, reset, aborted, broken pipe
    TimeoutError,  # builtin; socket.timeout is an alias since Python 3.10
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)


class RetryTask(Task):
    """Retries transient failures with exponential backoff and full jitter.

    A failed attempt is retried when its exception is an instance of
    ``retry_for`` and not of ``dont_retry_for`` (which wins), and
    :meth:`should_retry` agrees. The delay before retry ``n`` (0-based) is
    ``min(retry_backoff_max, retry_backoff * 2**n)``, drawn uniformly from
    ``[0, that]`` when ``retry_jitter`` is on, and never below
    ``retry_backoff_min``. After ``max_retries`` retries the next failure calls
    :meth:`on_retries_exhausted` once and the task fails.

    In eager mode retries are Celery's eager retries: without
    ``task_eager_propagates`` each one runs at once, inline (the delay is not
    waited), and :meth:`on_retries_exhausted` runs after the last; with it, the
    first retry raises :class:`celery.exceptions.Retry` to the caller.

    Retries come from these options, not from Celery's ``autoretry_for``:
    setting ``autoretry_for`` on a ``RetryTask`` is a
    :class:`~celeryredis.exceptions.ConfigurationError`.

    Attributes:
        retry_for: Exception types that are retried (default
            :data:`celeryredis.tasks.TRANSIENT_ERRORS`).
        dont_retry_for: Exception types never retried, even if in ``retry_for``.
        max_retries: Retries after the first attempt (default 5).
        retry_backoff: The base delay in seconds (default 1.0).
        retry_backoff_max: The cap in seconds. Unless set, the app's
            ``celeryredis_retry_backoff_max`` (600 s when the app has none), the retry
            budget the visibility timeout is derived from; a larger cap is refused.
        retry_jitter: Full jitter (default True).
        retry_backoff_min: The floor in seconds, so a retry never fires at once
            (default 0.1).

    Example:
        >>> @app.task(base=RetryTask, retry_for=(TimeoutError,), max_retries=8)  # doctest: +SKIP
        ... def charge(invoice_id): ...
    """

    retry_for: ClassVar[tuple[type[BaseException], ...]] = TRANSIENT_ERRORS
    dont_retry_for: ClassVar[tuple[type[BaseException], ...]] = ()
    max_retries = 5
    retry_backoff: ClassVar[float] = 1.0
    retry_backoff_max: ClassVar[float] = AppRetryBudget()  # type: ignore[assignment]
    retry_jitter: ClassVar[bool] = True
    retry_backoff_min: ClassVar[float] = 0.1

    celeryredis_options: ClassVar[Mapping[str, OptionCheck]] = {
        "retry_for": as_exception_types,
        "dont_retry_for": as_exception_types,
        "max_retries": as_non_negative_int,
        "retry_backoff": as_seconds,
        "retry_backoff_max": as_seconds,
        "retry_jitter": as_bool,
        "retry_backoff_min": as_seconds,
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        if "autoretry_for" in cls.__dict__:
            raise ConfigurationError(
                f"task {cls.__dict__.get('name', cls.__name__)!r}: RetryTask retries through "
                "its own options; use retry_for=(...) instead of autoretry_for (Celery's "
                "autoretry would retry a second time, with its own backoff)",
                setting="autoretry_for",
            )
        super().__init_subclass__(**kwargs)

    @classmethod
    def celeryredis_findings(cls, conf: Mapping[str, Any]) -> list[Finding]:
        """Check this task's backoff cap against the app's visibility-timeout budget."""
        findings = super().celeryredis_findings(conf)
        if isinstance(inspect.getattr_static(cls, "retry_backoff_max"), AppRetryBudget):
            return findings  # follows the app's budget
        cap = float(cls.retry_backoff_max)
        budget = conf.get("celeryredis_retry_backoff_max")
        name = getattr(cls, "name", None) or cls.__name__
        if budget is not None:
            if cap > float(budget):
                findings.append(
                    Finding(
                        "task-retry-backoff",
                        "error",
                        f"task {name!r}: retry_backoff_max={cap:g} s is above "
                        f"celeryredis_retry_backoff_max={budget} s, the retry budget the "
                        "visibility timeout is derived from: a retry waiting that long would "
                        "be redelivered and run twice. Lower the task's retry_backoff_max, or "
                        "raise celeryredis_retry_backoff_max (the derived timeout follows).",
                        ("retry_backoff_max", "celeryredis_retry_backoff_max"),
                    )
                )
            return findings
        options = conf.get("broker_transport_options") or {}
        vt = float(options.get("visibility_timeout", 3600))
        if cap >= vt:
            findings.append(
                Finding(
                    "task-retry-backoff",
                    "error",
                    f"task {name!r}: retry_backoff_max={cap:g} s reaches the visibility "
                    f"timeout ({vt:g} s): a retry waiting that long would be redelivered and "
                    "run twice. Lower retry_backoff_max or raise "
                    "broker_transport_options['visibility_timeout'].",
                    ("retry_backoff_max", "broker_transport_options"),
                )
            )
        return findings

    # -- policy hooks ----------------------------------------------------------------------

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Last word on retrying ``exc``, raised by attempt number ``attempt`` (1-based).

        Called only for exceptions that ``retry_for``/``dont_retry_for`` allow;
        override it for finer cases. The default says yes.
        """
        return True

    def backoff_cap(self) -> float:
        """The effective cap: ``retry_backoff_max``, by default the app's retry budget."""
        return float(self.retry_backoff_max)

    def retry_delay(self, retries: int) -> float:
        """Seconds to wait before the next attempt, after ``retries`` earlier retries."""
        ceiling = min(self.backoff_cap(), float(self.retry_backoff) * 2.0**retries)
        delay = random.uniform(0.0, ceiling) if self.retry_jitter else ceiling  # noqa: S311
        return max(float(self.retry_backoff_min), delay)

    def on_retries_exhausted(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """Called exactly once, when the last allowed attempt failed with a retryable error."""

    # -- the retry decision ----------------------------------------------------------------

    def _retryable(self, exc: BaseException, attempt: int) -> bool:
        if isinstance(exc, TaskPredicate) or not isinstance(exc, Exception):
            return False
        if self.dont_retry_for and isinstance(exc, tuple(self.dont_retry_for)):
            return False
        if not isinstance(exc, tuple(self.retry_for)):
            return False
        return self.should_retry(exc, attempt)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the attempt; turn a retryable failure into a retry or exhaustion."""
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            # Read only on failure (a request lookup per success is not free); the body's
            # own calls have popped what they pushed, so this is the attempt's request.
            request = self.request
            if request.id is None or request.called_directly:
                raise
            retries = request.retries or 0
            if not self._retryable(exc, retries + 1):
                raise
            # Logged after the body's task context ended: bind it again for the records.
            with task_context(request.id, self.name):
                text = redact_text(str(exc), self._secrets(args, kwargs))
                if retries >= self.max_retries:
                    logger.warning(
                        "task %s[%s]: retries exhausted after %d attempts: %s: %s",
                        self.name,
                        request.id,
                        retries + 1,
                        type(exc).__name__,
                        text,
                    )
                    request.celeryredis_reason = "retries_exhausted"  # type: ignore[attr-defined]
                    self.on_retries_exhausted(exc, request.id, args, kwargs)
                    raise
                delay = self.retry_delay(retries)
                logger.info(
                    "task %s[%s]: attempt %d failed (%s: %s); retry %d of %d in %.3f s",
                    self.name,
                    request.id,
                    retries + 1,
                    type(exc).__name__,
                    text,
                    retries + 1,
                    self.max_retries,
                    delay,
                )
                raise self.retry(exc=exc, countdown=delay, max_retries=self.max_retries) from exc
