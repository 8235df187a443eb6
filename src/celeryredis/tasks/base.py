"""``celeryredis.Task``: every task leaves a trace you can search.

One log record per lifecycle event on the ``celeryredis.task`` logger, with the
fields as ``extra`` attributes:

=================== ======== ==============================================================
event               level    when
=================== ======== ==============================================================
started             DEBUG    the worker starts an attempt (``before_start``)
succeeded           INFO     the attempt returned (``on_success``); in place of Celery's
                             own ``succeeded in`` line, with the same runtime and value
retrying            WARNING  the attempt raised ``Retry`` (``on_retry``); with ``delay_s``
failed              ERROR    the attempt failed for good (``on_failure``; for a hard time
                             limit Celery runs it in the worker's main process)
rejected            WARNING  the body raised ``Reject`` (Celery has no hook: caught here)
dead_letter_skipped WARNING  an eager run failed for good: logged, not dead-lettered
                             (see "Eager mode" below); with ``reason``
revoked             WARNING  the task was revoked (``task_revoked``, see
                             :mod:`celeryredis.signals`)
=================== ======== ==============================================================

Fields: ``event``, ``task_id``, ``task_name``, ``queue``, ``retries``,
``duration_s`` (monotonic clock; for a hard time limit, the limit), ``worker``,
``parent_id``, ``root_id``; ``args_summary`` (redacted and size-capped) on
``started``, ``retrying``, ``failed`` and ``rejected``; ``return_value`` on
``succeeded``; ``exc_type`` and ``exc_message`` (plus the traceback as the record's
``exc_text``) on ``failed``, ``retrying`` and ``rejected``.

While the body runs, every log record carries ``task_id`` and ``task_name``
(see :mod:`celeryredis.log`). Arguments whose names look sensitive (see
:mod:`celeryredis.redaction`) are replaced by ``***`` in our records and in the
``argsrepr``/``kwargsrepr`` set at publish, which Celery shows in its own log lines and
events; URL passwords and the values of sensitive arguments are replaced by ``***`` in
``exc_message`` and the traceback.

Eager mode (``task_always_eager``, ``apply()``): the task bases keep off Redis unless
the app sets ``celeryredis_eager_redis=True`` — no dead-letter entry (a
``dead_letter_skipped`` record instead), no counters, no unique lock, no rate limit —
and Celery's result-backend retry loop is held off while the task runs (see
:mod:`celeryredis.tasks._backend_retry`). Lifecycle records are emitted as usual.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar

import celery
from celery.exceptions import Reject
from celery.result import AsyncResult
from celery.utils.saferepr import saferepr

from celeryredis._backend_guard import guard_backend, redact_stored_arguments
from celeryredis._errors import (
    classify,
    describe,
    fails_fast,
    is_redis_failure,
    permanent_errback,
    refused_by,
)
from celeryredis.connection import Client, get_redis
from celeryredis.exceptions import PublishError, ResultNotStoredError
from celeryredis.log import (
    bind_task_secrets,
    current_task_context,
    enter_task_context,
    exit_task_context,
    failure_record_written,
    fields_record,
    flush_success_record,
    redact_exc_info,
    write_success_record,
)
from celeryredis.redaction import (
    SCALAR_TYPES,
    call_secrets,
    redact_call,
    redact_text,
    sensitive_words,
    summarize_redacted,
)
from celeryredis.registry import setting
from celeryredis.stats import Event, count
from celeryredis.tasks._backend_retry import backend_retries_held
from celeryredis.tasks._options import (
    OptionCheck,
    as_names,
    as_optional_bool,
    as_positive_int,
    check_task_class,
)
from celeryredis.urls import redact_url, redis_url_of_broker
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

    # -- eager mode ------------------------------------------------------------------------

    def _redis_allowed(self, *, publishing: bool = False) -> bool:
        """Whether the task bases may use Redis for this call.

        Always on a worker. In eager mode — the current run is eager
        (``self.request.is_eager``: ``task_always_eager`` or ``apply()``), or, when
        ``publishing``, the app sets ``task_always_eager`` — only if the app sets
        ``celeryredis_eager_redis=True``.
        """
        conf = self.app.conf
        if publishing:
            eager = bool(conf.task_always_eager)
        else:
            eager = bool(getattr(self.request, "is_eager", False))
        return not eager or bool(setting(conf, "celeryredis_eager_redis"))

    def _worker_cache(self, request: Any = None) -> dict[str, Any] | None:
        """Values a worker run needs every time (client, keys, limiters), kept per process.

        None in an eager run (``apply()``, ``task_always_eager``) and outside a task: those
        read the app's configuration afresh. A worker's configuration does not change
        while it runs, and reading ``app.conf`` through the settings layer on every task
        costs more than the rest of a task base's own work. ``request``: the current
        ``self.request``, when the caller has it already.
        """
        if request is None:
            request = self.request
        if request.id is None or getattr(request, "is_eager", False):
            return None
        pid = os.getpid()
        cached: tuple[int, dict[str, Any]] | None = self.__dict__.get("_celeryredis_cache")
        if cached is None or cached[0] != pid:  # a forked pool process starts afresh
            cached = (pid, {})
            self.__dict__["_celeryredis_cache"] = cached
        return cached[1]

    def _redis(self) -> Client:
        """The app's Redis client (:func:`celeryredis.connection.get_redis`), cached per worker."""
        cache = self._worker_cache()
        if cache is None:
            return get_redis(self.app)
        client: Client | None = cache.get("redis")
        if client is None:
            client = cache["redis"] = get_redis(self.app)
        return client

    def _count(self, event: Event) -> None:
        """Count ``event`` for this task (:mod:`celeryredis.stats`), unless this run is eager."""
        if self._redis_allowed():
            count(self.app, event, self.name)

    def apply(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *rest: Any,
        **options: Any,
    ) -> Any:
        """Run the task here and now, as Celery does, without backend retries.

        Unless ``task_store_eager_result`` is on (then the result is stored and the
        retries protect that), the result backend's retry loop
        (``result_backend_always_retry``) is held off while the task runs, so a
        receiver that reads ``AsyncResult(task_id).state`` with Redis down fails at
        once instead of sleeping through up to ``result_backend_max_retries`` backoffs.
        """
        if self.app.conf.task_store_eager_result:
            return super().apply(args, kwargs, *rest, **options)
        with backend_retries_held((self.backend, self.app.backend)):
            return super().apply(args, kwargs, *rest, **options)

    # -- publishing ------------------------------------------------------------------------

    def _sensitive_words(self, request: Any = None) -> tuple[str, ...]:
        cache = self._worker_cache(request)
        if cache is None:
            return sensitive_words(self.app.conf, self.sensitive_names)
        words: tuple[str, ...] | None = cache.get("sensitive_words")
        if words is None:
            words = cache["sensitive_words"] = sensitive_words(self.app.conf, self.sensitive_names)
        return words

    def _secrets(self, args: Any, kwargs: Any, request: Any = None) -> tuple[str, ...]:
        """The values of this call's sensitive arguments, to hide in exception texts."""
        try:
            words = self._sensitive_words(request)
            return call_secrets(args, kwargs, words=words, func=self.run)
        except Exception:  # odd argument shapes: only URL passwords are hidden then
            return ()

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
            call = redact_call(args, kwargs, words=self._sensitive_words(), func=self.run)
            if call.changed:
                options["argsrepr"] = repr(call.args)
                options["kwargsrepr"] = repr(call.kwargs)
        if getattr(self, "__header__", None) is None:
            self.check_arguments(args, kwargs)  # a task class: Celery checks only functions
        conf = self.app.conf
        if fails_fast(conf.broker_url):
            options["retry_policy"] = _with_permanent_errback(options.get("retry_policy"))
        if fails_fast(conf.result_backend):
            guard_backend(self.backend)
        started = time.monotonic()
        try:
            return super().apply_async(args, kwargs, *rest, **options)
        except Exception as exc:
            if not is_redis_failure(exc):
                raise
            raise publish_error(self.app, self.name, exc, time.monotonic() - started) from exc

    def check_arguments(self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> None:
        """Raise ``TypeError`` if the call does not fit the task's signature.

        Celery does this itself in ``apply_async`` (``typing``); the bases whose
        ``apply_async`` uses the arguments first (``UniqueTask``'s key) call it earlier,
        so a wrong call is a ``TypeError`` at publish for every base.
        """
        if not self.typing:
            return
        header = getattr(self, "__header__", None)
        if header is not None:  # a decorated function: Celery's own check
            header(*(args or ()), **(kwargs or {}))
            return
        signature = _signature(self.run)  # a task class: its run() method
        if signature is None:  # no signature to check
            return
        try:
            signature.bind(*(args or ()), **(kwargs or {}))
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None

    def AsyncResult(self, task_id: str, **kwargs: Any) -> Any:  # noqa: N802 - Celery's name
        """Celery's ``AsyncResult``, whose ``.get()`` fails at once if results are not stored.

        Raises:
            ResultNotStoredError: From ``.get()``, when the task was published with
                ``ignore_result`` (the task's option or the app's
                ``task_ignore_result``, e.g. the ``throughput`` preset) and so no
                result will ever arrive.
        """
        kwargs.setdefault("backend", self.backend)
        kwargs.setdefault("task_name", self.name)
        result = _StoredResult(task_id, app=self.app, **kwargs)
        result.ignored = bool(self.ignore_result)
        return result

    # -- running ---------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body with the task context bound; log ``rejected`` on ``Reject``."""
        request = self.request
        task_id = request.id
        if task_id is None:  # called directly as a function: no lifecycle, no context
            return super().__call__(*args, **kwargs)
        if current_task_context() == (task_id, self.name):
            # The body called its own task directly: Celery pushes a request for that call.
            return super().__call__(*args, **kwargs)
        token = enter_task_context(task_id, self.name)  # not a with-block: a per-task cost
        try:
            # Celery's tracer pushed this task and its request before calling us: run the
            # body as it does for a task without a custom __call__ (Celery's own __call__
            # would push a second request, a copy of the first, on every attempt).
            return self.run(*args, **kwargs)
        except Reject as exc:
            requeue = bool(getattr(exc, "requeue", False))
            summary, secrets = self._summary_and_secrets(args, kwargs)
            self._log(
                "rejected",
                logging.WARNING,
                exc=exc,
                secrets=secrets,
                requeue=requeue,
                args_summary=summary,
            )
            if not requeue:  # Celery calls no failure hook for Reject
                self._dead_letter("rejected", exc, task_id, args, kwargs)
            raise
        except TypeError:
            if not self._arguments_fit(args, kwargs):
                request.celeryredis_reason = "bad_arguments"  # type: ignore[attr-defined]
            raise
        finally:
            exit_task_context(token)

    def _arguments_fit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        try:
            inspect.signature(self.run).bind(*args, **kwargs)
        except TypeError:
            return False
        except ValueError:  # no signature to check
            return True
        return True

    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Log ``started`` (at DEBUG), start the attempt's clock, redact stored arguments.

        The result backend of this thread stores sensitive arguments as ``***`` from
        the ``STARTED`` state on (``result_extended``; :mod:`celeryredis._backend_guard`).
        """
        request = self.request
        request.celeryredis_started = time.monotonic()  # type: ignore[attr-defined]
        redact_stored_arguments(self.backend)
        if not lifecycle_logger.isEnabledFor(logging.DEBUG):
            # Computed only if a record of this thread is redacted: most attempts log
            # nothing that needs them. No argument summary either (_log() would drop it).
            bind_task_secrets(functools.partial(self._secrets, args, kwargs, request))
            return
        summary, secrets = self._summary_and_secrets(args, kwargs)
        bind_task_secrets(secrets)
        self._log("started", logging.DEBUG, args_summary=summary)

    def _summary_and_secrets(self, args: Any, kwargs: Any) -> tuple[str, tuple[str, ...]]:
        """The redacted ``args_summary`` of a call and its secret values, in one redaction."""
        try:
            call = redact_call(args, kwargs, words=self._sensitive_words(), func=self.run)
        except Exception as exc:  # odd argument shapes: only URL passwords are hidden then
            return f"<arguments not shown: {type(exc).__name__}>", ()
        return summarize_redacted(call, self.args_summary_max), call.secrets

    def on_success(
        self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Log ``succeeded``, in place of Celery's own ``succeeded in`` line."""
        if lifecycle_logger.isEnabledFor(logging.INFO):
            # As Celery's line shows it (saferepr, capped); a scalar's repr is the same.
            if type(retval) in SCALAR_TYPES:
                shown = repr(retval)
            else:
                shown = saferepr(retval, self.resultrepr_maxsize)
            fields = self._fields("succeeded", return_value=shown)
            if fields is not None:
                message, values = _message(fields)
                write_success_record(
                    task_id,
                    lifecycle_logger,
                    message=message,
                    args=values,
                    fields=fields,
                    pathname=__file__,
                )
        super().on_success(retval, task_id, args, kwargs)

    def after_return(  # noqa: PLR0917 - Celery's hook
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Write ``succeeded`` now if Celery's success line, which carries it, did not come."""
        flush_success_record(task_id)
        super().after_return(status, retval, task_id, args, kwargs, einfo)

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
        summary, secrets = self._summary_and_secrets(args, kwargs)
        self._log(
            "retrying",
            logging.WARNING,
            exc=exc,
            secrets=secrets,
            delay_s=delay,
            args_summary=summary,
        )
        self._count("retries")
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
        summary, secrets = self._summary_and_secrets(args, kwargs)
        if self._log(
            "failed",
            logging.ERROR,
            exc=exc,
            task_id=task_id,
            einfo=einfo,
            secrets=secrets,
            args_summary=summary,
        ):
            failure_record_written(task_id)  # Celery's own failure line is not written
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
        return bool(setting(self.app.conf, "celeryredis_dead_letter"))

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
        if not self._redis_allowed():
            fields.update(
                event="dead_letter_skipped",
                reason=reason,
                exc_type=type(exc).__name__,
                exc_message=str(exc),
                note="eager run: not stored; celeryredis_eager_redis=True stores it",
            )
            emit(logging.WARNING, fields)
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
                func=self.run,
                sensitive_names=self.sensitive_names,
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
        secrets: Sequence[str] = (),
        **more: Any,
    ) -> bool:
        """Emit the record of ``event``; whether it was emitted (level, once per attempt)."""
        if not lifecycle_logger.isEnabledFor(level):
            return False
        fields = self._fields(event, exc=exc, task_id=task_id, secrets=secrets, **more)
        if fields is None:
            return False
        exc_info = None
        if einfo is not None and getattr(einfo, "exc_info", None):
            exc_info = einfo.exc_info
        elif exc is not None and event == "failed":
            exc_info = (type(exc), exc, exc.__traceback__)
        emit(level, fields, exc_info, secrets=secrets)
        return True

    def _fields(
        self,
        event: str,
        *,
        exc: BaseException | None = None,
        task_id: str | None = None,
        secrets: Sequence[str] = (),
        **more: Any,
    ) -> dict[str, Any] | None:
        """The fields of ``event``'s record; None when it was written already (once per attempt)."""
        fields = self.lifecycle_fields(task_id)
        receipt = fields.pop("receipt", None)
        if fields.get("task_id") is None or not _first_time(
            fields["task_id"], receipt, fields.get("retries") or 0, event
        ):
            return None
        if event == "failed" and fields.get("duration_s") is None:
            # SoftTimeLimitExceeded() raised outside the body has no args at all.
            limit = (getattr(exc, "args", ()) or (None,))[0] if exc is not None else None
            if type(exc).__name__ == "TimeLimitExceeded" and isinstance(limit, int | float):
                fields["duration_s"] = float(limit)
        fields["event"] = event
        if exc is not None:
            fields["exc_type"] = type(exc).__name__
            fields["exc_message"] = redact_text(str(exc), secrets)
        fields.update(more)
        return fields


@functools.lru_cache(maxsize=1024)
def _signature(run: Any) -> inspect.Signature | None:
    """``run``'s signature, computed once per task (inspect is slow; this is per publish)."""
    try:
        return inspect.signature(run)
    except (TypeError, ValueError):
        return None


def _with_permanent_errback(policy: Mapping[str, Any] | None) -> dict[str, Any]:
    """The publish ``retry_policy`` plus an errback that ends kombu's retries on a permanent error.

    Celery merges it over ``task_publish_retry_policy``; a caller's own errback still runs.
    """
    merged = dict(policy or {})
    errback = merged.get("errback")
    if not getattr(errback, "celeryredis_errback", False):
        merged["errback"] = permanent_errback(errback)
    return merged


def publish_error(app: Any, name: str, exc: BaseException, elapsed: float) -> PublishError:
    """The :class:`PublishError` for ``exc``: a permanent refusal's cause and fix, or the wait."""
    diagnosis = classify(exc)
    # Celery's result backend gives up on its subscribe with a bare RuntimeError.
    where = refused_by(exc) or ("result backend" if isinstance(exc, RuntimeError) else "broker")
    setting = "result_backend" if where == "result backend" else "broker_url"
    # A cluster broker is shown as its rediscluster:// URL, not kombu's one-per-node form.
    url = redact_url(redis_url_of_broker(str(app.conf.get(setting) or ""))) or "unset"
    if diagnosis.permanent:
        message = (
            f"could not publish task {name!r}: the {where}'s Redis ({setting} {url}) refused "
            f"the app: {describe(diagnosis, setting)}. The task was not sent."
        )
    else:
        message = (
            f"could not publish task {name!r}: the {where}'s Redis ({setting} {url}): "
            f"{diagnosis.cause} for {elapsed:.1f} s "
            f"({diagnosis.detail}); the task was not sent. Retry later, or lengthen "
            "task_publish_retry_policy and result_backend_transport_options['retry_policy'] "
            "to wait longer"
        )
    return PublishError(
        message,
        task_name=name,
        elapsed=elapsed,
        permanent=diagnosis.permanent,
        kind=diagnosis.kind,
    )


class _StoredResult(AsyncResult):  # type: ignore[type-arg]
    """``AsyncResult`` whose ``get()`` refuses to wait for a result that is never stored."""

    def __init__(self, task_id: str, *, task_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(task_id, **kwargs)
        self.task_name = task_name

    def get(self, *args: Any, **kwargs: Any) -> Any:
        if self.ignored:
            raise ResultNotStoredError(
                f"task {self.task_name or '?'}[{self.id}] does not store its result "
                "(ignore_result: the task's option or the app's task_ignore_result, which "
                "the 'throughput' preset sets), so .get() would wait for nothing. Pass "
                "ignore_result=False to @app.task or apply_async() for results you need, "
                "or use a preset that stores results",
                task_id=self.id,
                task_name=self.task_name,
            )
        return super().get(*args, **kwargs)

    wait = get


def _message(fields: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """A lifecycle record's message and its arguments."""
    message = "task %s[%s] %s"
    values: tuple[Any, ...] = (fields["task_name"], fields["task_id"], fields["event"])
    if "exc_type" in fields:
        message += ": %s: %s"
        values += (fields["exc_type"], fields["exc_message"])
    if "return_value" in fields:  # succeeded: what Celery's own success line shows
        message += " in %ss: %s"
        values += (fields.get("duration_s"), fields["return_value"])
    if fields.get("note"):
        message += " (%s)"
        values += (fields["note"],)
    return message, values


def emit(
    level: int, fields: dict[str, Any], exc_info: Any = None, *, secrets: Sequence[str] = ()
) -> None:
    """Send one lifecycle record with ``fields`` as record attributes.

    The traceback of ``exc_info`` is attached as the record's ``exc_text``, with URL
    passwords and ``secrets`` (the values of sensitive arguments) shown as ``***``,
    instead of as ``exc_info``: a formatter would print the exception's own text.
    """
    if not lifecycle_logger.isEnabledFor(level):
        return
    message, values = _message(fields)
    record = fields_record(lifecycle_logger, level, message, values, fields, pathname=__file__)
    if exc_info:
        record.exc_text = redact_exc_info(exc_info, secrets)
    lifecycle_logger.handle(record)
