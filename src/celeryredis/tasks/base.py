"""``celeryredis.Task``: every task leaves a trace you can search.

One log record per lifecycle event on the ``celeryredis.task`` logger, with the
fields as ``extra`` attributes:

========== ======== ==========================================================
event      level    when
========== ======== ==========================================================
started    INFO     the worker starts an attempt (``before_start``)
succeeded  INFO     the attempt returned (``on_success``)
retrying   WARNING  the attempt raised ``Retry`` (``on_retry``); with ``delay_s``
failed     ERROR    the attempt failed for good (``on_failure``; for a hard time
                    limit Celery runs it in the worker's main process)
rejected   WARNING  the body raised ``Reject`` (Celery has no hook: caught here)
revoked    WARNING  the task was revoked (``task_revoked``, see
                    :mod:`celeryredis.signals`)
========== ======== ==========================================================

Fields: ``event``, ``task_id``, ``task_name``, ``queue``, ``retries``,
``duration_s`` (monotonic clock; for a hard time limit, the limit), ``worker``,
``parent_id``, ``root_id``; ``args_summary`` (redacted and size-capped) on
``started``; ``exc_type`` and ``exc_message`` (plus the traceback as
``exc_info``) on ``failed``, ``retrying`` and ``rejected``.

While the body runs, every log record carries ``task_id`` and ``task_name``
(see :mod:`celeryredis.log`). Keyword arguments whose names look sensitive are
replaced by ``***`` in our records and in the ``argsrepr``/``kwargsrepr`` set at
publish, which Celery shows in its own log lines and events.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar

import celery
import redis
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from celeryredis.exceptions import PublishError
from celeryredis.log import task_context
from celeryredis.redaction import DEFAULT_SENSITIVE_NAMES, redact_call, summarize_call
from celeryredis.stats import count
from celeryredis.tasks._options import (
    OptionCheck,
    as_names,
    as_optional_bool,
    as_positive_int,
    check_task_class,
)
from celeryredis.urls import redact_text
from celeryredis.validation import Finding, enforce

__all__ = ["AppRetryBudget", "Task", "emit", "lifecycle_logger", "remember_routing"]

#: The logger every lifecycle record goes to.
lifecycle_logger = logging.getLogger("celeryredis.task")

# Routing data of requests seen by this (main) process, by task id: a hard time limit
# runs on_failure in the main process with an empty self.request (see signals.py).
_ROUTING: OrderedDict[str, dict[str, Any]] = OrderedDict()
_ROUTING_MAX = 10_000
# (task_id, retries, event) already logged by this process: at most once per attempt.
_LOGGED: OrderedDict[tuple[Any, ...], None] = OrderedDict()
_LOGGED_MAX = 10_000


def remember_routing(task_id: str, routing: dict[str, Any]) -> None:
    """Keep a request's routing data for hooks that run without ``self.request``."""
    _ROUTING[task_id] = routing
    _ROUTING.move_to_end(task_id)
    while len(_ROUTING) > _ROUTING_MAX:
        _ROUTING.popitem(last=False)


def _first_time(*key: Any) -> bool:
    """True the first time this process sees ``key``.

    Only hooks that run in the worker's main process (a hard time limit, a lost worker)
    are deduplicated, by the receipt id that :mod:`celeryredis.signals` gives every
    received message: Celery may fire ``task_failure`` twice for one receipt, while a
    redelivery or a replay of the same task id is a new receipt. Hooks in the pool
    process run once per attempt and are not deduplicated (their key has no receipt).
    """
    if key[1] is None:
        return True
    if key in _LOGGED:
        return False
    _LOGGED[key] = None
    while len(_LOGGED) > _LOGGED_MAX:
        _LOGGED.popitem(last=False)
    return True


#: The retry budget when the app sets none (Celery's own retry_backoff_max default).
DEFAULT_BACKOFF_CAP = 600.0


class AppRetryBudget:
    """A class-attribute default that follows the app's ``celeryredis_retry_backoff_max``.

    A descriptor rather than None, because Celery reads these attributes as numbers
    (``retry_backoff_max`` with ``int()`` in celery/app/autoretry.py,
    ``default_retry_delay`` as the countdown of ``retry()`` and of
    ``task_retry_on_worker_lost``).

    Args:
        ceiling: Never more than this many seconds.
    """

    def __init__(self, ceiling: float | None = None) -> None:
        self.ceiling = ceiling

    def __get__(self, obj: Any, owner: type | None = None) -> float:
        holder = obj if obj is not None else owner
        try:
            budget = holder.app.conf.get("celeryredis_retry_backoff_max")  # type: ignore[union-attr]
        except AttributeError:
            budget = None
        value = float(budget or DEFAULT_BACKOFF_CAP)
        return value if self.ceiling is None else min(self.ceiling, value)


class Task(celery.Task[Any, Any]):
    """Celery task base with structured lifecycle logging and task context.

    :func:`celeryredis.make_app` makes it the app's default task class. Options
    are class attributes that ``@app.task(...)`` keywords override; an unknown
    option or an ill-typed value raises
    :class:`~celeryredis.exceptions.ConfigurationError` when the class is created.

    Attributes:
        sensitive_names: Extra words that make an argument name sensitive, added
            to ``password``, ``token``, ``secret``, ``api_key``, ``authorization``
            and the app setting ``celeryredis_sensitive_names``.
        args_summary_max: Most characters of the argument summary in ``started``.
        default_retry_delay: Celery's countdown for ``retry()`` without one and for
            ``task_retry_on_worker_lost``: 180 s, or the app's
            ``celeryredis_retry_backoff_max`` if that is smaller.
        dead_letter: Keep tasks that fail for good in the dead-letter queue
            (:class:`celeryredis.DeadLetterQueue`). None (the default) follows the app
            setting ``celeryredis_dead_letter`` (on in every preset).
    """

    sensitive_names: ClassVar[Sequence[str]] = ()
    args_summary_max: ClassVar[int] = 500
    dead_letter: ClassVar[bool | None] = None
    # Celery's default is 180 s, also the countdown of task_retry_on_worker_lost: keep it
    # within the app's retry budget, which the visibility timeout covers.
    default_retry_delay = AppRetryBudget(ceiling=180.0)  # type: ignore[assignment]

    #: Option name -> checker, merged over the class hierarchy.
    celeryredis_options: ClassVar[Mapping[str, OptionCheck]] = {
        "sensitive_names": as_names,
        "args_summary_max": as_positive_int,
        "dead_letter": as_optional_bool,
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        merged: dict[str, OptionCheck] = {}
        for base in reversed(cls.__mro__):
            merged.update(base.__dict__.get("celeryredis_options", {}))
        cls.celeryredis_options = merged
        check_task_class(cls, merged)
        app = cls.__dict__.get("app")
        if app is not None:  # created by @app.task: check it against the app's settings
            conf = app.conf
            enforce(
                cls.celeryredis_findings(conf),
                conf.get("celeryredis_validate", "error"),
                conf.get("celeryredis_validate_checks"),
                context=f"task {cls.__dict__.get('name')!r}",
            )

    @classmethod
    def celeryredis_findings(cls, conf: Mapping[str, Any]) -> list[Finding]:
        """Validation findings for this task class under ``conf`` (none for ``Task``).

        Run when the class is created by ``@app.task`` and again when a worker
        starts (:class:`celeryredis.worker.ValidationStep`).
        """
        return []

    # -- publishing ------------------------------------------------------------------------

    def _sensitive_words(self) -> tuple[str, ...]:
        extra = self.app.conf.get("celeryredis_sensitive_names") or ()
        return (*DEFAULT_SENSITIVE_NAMES, *extra, *self.sensitive_names)

    def apply_async(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *rest: Any,
        **options: Any,
    ) -> Any:
        """Publish as Celery does, with sensitive arguments redacted in ``argsrepr``/``kwargsrepr``.

        Celery logs and sends in events the reprs instead of the values; the message
        still carries the real arguments for the task body.
        """
        if "argsrepr" not in options and "kwargsrepr" not in options:
            red_args, red_kwargs, changed = redact_call(
                args, kwargs, words=self._sensitive_words(), func=self.run
            )
            if changed:
                options["argsrepr"] = repr(red_args)
                options["kwargsrepr"] = repr(red_kwargs)
        started = time.monotonic()
        try:
            return super().apply_async(args, kwargs, *rest, **options)
        except Exception as exc:
            if not _is_connection_failure(exc):
                raise
            elapsed = time.monotonic() - started
            root: BaseException = exc
            while root.__cause__ is not None:
                root = root.__cause__
            raise PublishError(
                f"could not publish task {self.name!r}: Redis did not answer for {elapsed:.1f} s "
                f"({type(root).__name__}: {redact_text(str(root))}); the task was not sent. "
                "Retry later, or lengthen task_publish_retry_policy and "
                "result_backend_transport_options['retry_policy'] to wait longer",
                task_name=self.name,
                elapsed=elapsed,
            ) from exc

    # -- running ---------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body with the task context bound; log ``rejected`` on ``Reject``."""
        task_id = self.request.id
        if task_id is None:  # called directly as a function: no lifecycle, no context
            return super().__call__(*args, **kwargs)
        request = self.request
        with task_context(task_id, self.name):
            try:
                return super().__call__(*args, **kwargs)
            except Reject as exc:
                requeue = bool(getattr(exc, "requeue", False))
                self._log("rejected", logging.WARNING, exc=exc, requeue=requeue)
                if not requeue:  # Celery calls no failure hook for Reject
                    self._dead_letter("rejected", exc, task_id, args, kwargs)
                raise
            except TypeError:
                if not self._arguments_fit(args, kwargs):
                    request.celeryredis_reason = "bad_arguments"  # type: ignore[attr-defined]
                raise

    def _arguments_fit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        try:
            inspect.signature(self.run).bind(*args, **kwargs)
        except TypeError:
            return False
        except ValueError:  # no signature to check
            return True
        return True

    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Log ``started`` and start the attempt's clock."""
        self.request.celeryredis_started = time.monotonic()  # type: ignore[attr-defined]
        if not lifecycle_logger.isEnabledFor(logging.INFO):
            return  # _log() would drop it: skip the argument summary (a per-task cost)
        summary = summarize_call(
            args,
            kwargs,
            words=self._sensitive_words(),
            func=self.run,
            max_chars=self.args_summary_max,
        )
        self._log("started", logging.INFO, args_summary=summary)

    def on_success(
        self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Log ``succeeded``."""
        self._log("succeeded", logging.INFO)
        super().on_success(retval, task_id, args, kwargs)

    def on_retry(
        self,
        exc: Exception,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Log ``retrying`` with the exception and the delay before the next attempt."""
        retry = getattr(einfo, "exception", None)  # billiard wraps it in ExceptionWithTraceback
        when = getattr(getattr(retry, "exc", retry), "when", None)
        delay: float | None = None
        if isinstance(when, int | float):
            delay = float(when)
        elif isinstance(when, datetime):
            aware = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
            delay = max(0.0, (aware - datetime.now(timezone.utc)).total_seconds())
        self._log("retrying", logging.WARNING, exc=exc, delay_s=delay)
        count(self.app, "retries", self.name)
        super().on_retry(exc, task_id, args, kwargs, einfo)

    def on_failure(
        self,
        exc: Exception,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Log ``failed`` (once per attempt) and dead-letter the task."""
        self._log("failed", logging.ERROR, exc=exc, task_id=task_id, einfo=einfo)
        reason = getattr(self.request, "celeryredis_reason", None) or self._failure_reason(exc)
        if reason is not None:
            self._dead_letter(reason, exc, task_id, args, kwargs, einfo=einfo)
        super().on_failure(exc, task_id, args, kwargs, einfo)

    def _failure_reason(self, exc: BaseException) -> str | None:
        name = type(exc).__name__
        if name == "TimeLimitExceeded":
            # Requeued rather than acked when acks_on_timeout is off: not final.
            if self.acks_late and getattr(self, "acks_on_timeout", True) is False:
                return None
            return "time_limit"
        if name == "WorkerLostError":
            return "worker_lost"
        return "failed"

    # -- dead letters ----------------------------------------------------------------------

    def dead_letter_enabled(self) -> bool:
        """Whether failures of this task go to the dead-letter queue."""
        if self.dead_letter is not None:
            return bool(self.dead_letter)
        return bool(self.app.conf.get("celeryredis_dead_letter", False))

    def _dead_letter(
        self,
        reason: str,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        *,
        einfo: Any = None,
    ) -> None:
        if not self.dead_letter_enabled():
            return
        fields = self.lifecycle_fields(task_id)
        if not _first_time(task_id, fields.pop("receipt", None), "dead_letter"):
            return
        from celeryredis.deadletter import DeadLetterError, DeadLetterQueue  # noqa: PLC0415

        request = self.request
        headers = getattr(request, "headers", None) if request.id else None
        try:
            DeadLetterQueue(self.app).add(
                reason=reason,
                task_name=self.name,
                task_id=task_id,
                args=args,
                kwargs=kwargs,
                queue=fields.get("queue"),
                priority=fields.get("priority"),
                headers=headers or {},
                exception=exc,
                traceback=str(getattr(einfo, "traceback", "") or ""),
                attempts=int(fields.get("retries") or 0) + 1,
                worker=fields.get("worker"),
            )
        except DeadLetterError:
            lifecycle_logger.exception(
                "task %s[%s] failed for good (%s) and could NOT be dead-lettered",
                self.name,
                task_id,
                reason,
            )

    # -- records ---------------------------------------------------------------------------

    def lifecycle_fields(self, task_id: str | None = None) -> dict[str, Any]:
        """The fields of a lifecycle record for the current attempt.

        Outside the attempt's own process (a hard time limit runs ``on_failure`` in
        the worker's main process with an empty request) they come from the
        routing data :mod:`celeryredis.signals` kept when the task was received.
        """
        request = self.request
        task_id = task_id or request.id
        if request.id is None and task_id is not None and task_id in _ROUTING:
            return dict(_ROUTING[task_id])
        started = getattr(request, "celeryredis_started", None)
        delivery = request.delivery_info or {}
        return {
            "task_id": task_id,
            "task_name": self.name,
            "queue": delivery.get("routing_key"),
            "priority": delivery.get("priority"),
            "retries": request.retries or 0,
            "duration_s": None if started is None else time.monotonic() - started,
            "worker": request.hostname,
            "parent_id": request.parent_id,
            "root_id": request.root_id,
        }

    def _log(
        self,
        event: str,
        level: int,
        *,
        exc: BaseException | None = None,
        task_id: str | None = None,
        einfo: Any = None,
        **more: Any,
    ) -> None:
        if not lifecycle_logger.isEnabledFor(level):
            return
        fields = self.lifecycle_fields(task_id)
        receipt = fields.pop("receipt", None)
        if fields.get("task_id") is None or not _first_time(
            fields["task_id"], receipt, fields.get("retries") or 0, event
        ):
            return
        if event == "failed" and fields.get("duration_s") is None:
            # SoftTimeLimitExceeded() raised outside the body has no args at all.
            limit = (getattr(exc, "args", ()) or (None,))[0] if exc is not None else None
            if type(exc).__name__ == "TimeLimitExceeded" and isinstance(limit, int | float):
                fields["duration_s"] = float(limit)
        fields["event"] = event
        if exc is not None:
            fields["exc_type"] = type(exc).__name__
            fields["exc_message"] = str(exc)
        fields.update(more)
        exc_info = None
        if einfo is not None and getattr(einfo, "exc_info", None):
            exc_info = einfo.exc_info
        elif exc is not None and event == "failed":
            exc_info = (type(exc), exc, exc.__traceback__)
        emit(level, fields, exc_info)


def _is_connection_failure(exc: BaseException) -> bool:
    """A publish failed because Redis was unreachable (not because of bad input).

    kombu raises ``OperationalError`` when the publish retries are used up; Celery's
    Redis result backend raises a bare ``RuntimeError`` (with the connection error as
    its cause) when re-subscribing to the result channel runs out of retries.
    """
    if isinstance(exc, OperationalError | redis.ConnectionError | redis.TimeoutError):
        return True
    cause = exc.__cause__
    return isinstance(exc, RuntimeError) and isinstance(
        cause, redis.ConnectionError | redis.TimeoutError | OperationalError
    )


def emit(level: int, fields: dict[str, Any], exc_info: Any = None) -> None:
    """Send one lifecycle record with ``fields`` as record attributes."""
    if not lifecycle_logger.isEnabledFor(level):
        return
    message = "task %s[%s] %s"
    values: tuple[Any, ...] = (fields["task_name"], fields["task_id"], fields["event"])
    if "exc_type" in fields:
        message += ": %s: %s"
        values += (fields["exc_type"], fields["exc_message"])
    # Built through the record factory (so records carry the task context) and then
    # given the fields; Logger.makeRecord(extra=...) would refuse task_id/task_name,
    # which the factory may already have set.
    record = logging.getLogRecordFactory()(
        lifecycle_logger.name, level, __file__, 0, message, values, exc_info
    )
    record.__dict__.update(fields)
    lifecycle_logger.handle(record)
