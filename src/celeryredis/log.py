"""Task context for every log record, and a one-call logging set-up for workers.

While a task body runs, every log record created in that thread or coroutine —
from the task's own logger and from third-party loggers alike — carries
``task_id`` and ``task_name`` attributes. The context lives in a
:class:`contextvars.ContextVar` (so it is per thread and per process, and works
under the prefork, solo and threads pools) and reaches records through a log
record factory that :func:`install_record_factory` installs once per process,
the first time a task runs (never at import).

The library never adds handlers itself; :func:`configure_logging` is the opt-in
helper for workers.

Redaction: the same first task also puts a :class:`RedactingFilter` on every handler
of the root logger (and :func:`configure_logging` on its own handler), so no record a
worker writes — Celery's own ``raised unexpected`` lines included — shows the
password of a URL in its message, its extra fields or its traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import PurePath
from typing import IO, Any

from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]

from celeryredis.exceptions import ConfigurationError
from celeryredis.redaction import redact_text, same_kind

__all__ = [
    "TEXT_FORMAT",
    "RedactingFilter",
    "bind_task_secrets",
    "configure_logging",
    "current_task_context",
    "enter_task_context",
    "exit_task_context",
    "failure_record_written",
    "fields_record",
    "flush_success_record",
    "install_record_factory",
    "install_redaction",
    "redact_exc_info",
    "task_context",
    "write_success_record",
]

#: The text format :func:`configure_logging` uses when ``json=False``.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(task_name)s %(task_id)s] %(message)s"

_CONTEXT: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "celeryredis_task", default=None
)
_install_lock = threading.Lock()
_installed_factory: Any = None
# The secret argument values of the task this thread runs or ran last: Celery logs a
# task's failure after the body (and our hooks) returned, in the same thread.
_THREAD_SECRETS = threading.local()


def current_task_context() -> tuple[str, str] | None:
    """``(task_id, task_name)`` of the task running in this context, or None."""
    return _CONTEXT.get()


@contextlib.contextmanager
def task_context(task_id: str, task_name: str) -> Iterator[None]:
    """Bind ``task_id`` and ``task_name`` to every log record created inside the block."""
    token = enter_task_context(task_id, task_name)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def enter_task_context(task_id: str, task_name: str) -> contextvars.Token[Any]:
    """:func:`task_context` without the context manager (a hot path): reset the token.

    The caller must pass the returned token to ``_CONTEXT.reset`` (through
    :func:`exit_task_context`) in a ``finally`` block.
    """
    if logging.getLogRecordFactory() is not _installed_factory:
        install_record_factory()
    return _CONTEXT.set((task_id, task_name))


def exit_task_context(token: contextvars.Token[Any]) -> None:
    """End the context :func:`enter_task_context` entered."""
    _CONTEXT.reset(token)


def bind_task_secrets(secrets: Iterable[str] | Callable[[], Iterable[str]]) -> None:
    """Hide ``secrets`` (a task's sensitive argument values) in this thread's records.

    :class:`celeryredis.Task` calls it when an attempt starts; the values stay bound
    until the next attempt in the thread, so Celery's own failure and retry records,
    written after the body returned, are covered too.

    ``secrets`` may be a callable returning them: it is called (once) only when a record
    of this thread is redacted, so an attempt that logs nothing does not compute them.
    """
    if callable(secrets):
        _THREAD_SECRETS.values = None
        _THREAD_SECRETS.pending = secrets
    else:
        _THREAD_SECRETS.values = tuple(secrets)
        _THREAD_SECRETS.pending = None


def _bound_secrets() -> tuple[str, ...]:
    values: tuple[str, ...] | None = getattr(_THREAD_SECRETS, "values", ())
    if values is None:
        pending = _THREAD_SECRETS.pending
        _THREAD_SECRETS.pending = None
        try:
            values = tuple(pending()) if pending is not None else ()
        except Exception:  # a broken argument must not break logging: URL passwords only
            values = ()
        _THREAD_SECRETS.values = values
    return values


# The lifecycle record this thread writes in place of Celery's coming success line:
# (task id, logger, message, arguments, fields, pathname), or None.
_PENDING_SUCCESS = threading.local()
# The logger Celery's tracer writes its ``Task ...[id] succeeded in ...`` line to.
_CELERY_TRACE_LOGGER = "celery.app.trace"


class _CelerySuccessLine(logging.Filter):
    """Make Celery's success line of a task whose ``succeeded`` record is pending that record.

    Celery's tracer logs the line right after ``on_success`` returns, in the same thread,
    with its values as the record's ``data`` attribute (``extra={"data": ...}``). The
    record of that task id becomes the pending record — its logger, message and fields,
    Celery's ``data`` removed — goes to that logger's handlers, and is dropped from
    Celery's: one record made, not two.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        pending = getattr(_PENDING_SUCCESS, "value", None)
        if pending is None:
            return True
        data = getattr(record, "data", None)
        if not (isinstance(data, dict) and data.get("id") == pending[0] and "return_value" in data):
            return True
        _PENDING_SUCCESS.value = None
        _, logger, message, args, fields, pathname = pending
        attributes = record.__dict__
        del attributes["data"]
        attributes.update(fields)
        record.name, record.msg, record.args = logger.name, message, args
        record.pathname, record.filename, record.module = pathname, *_file_and_module(pathname)
        attributes.update(lineno=0, funcName=None)  # as emit()'s records: no caller
        logger.handle(record)
        return False


_success_filter = _CelerySuccessLine()
_celery_trace_logger = logging.getLogger(_CELERY_TRACE_LOGGER)  # getLogger takes a lock


# The task id whose ``failed`` record this thread has just written, or None.
_LOGGED_FAILURE = threading.local()


class _CeleryFailureLine(logging.Filter):
    """Drop Celery's failure line of a task whose ``failed`` record was just written.

    Celery's tracer runs ``on_failure`` (where :class:`celeryredis.Task` writes
    ``failed``: the exception, its redacted traceback and the task's fields) and then
    logs its own ``Task ...[id] raised unexpected: ...`` line with the same traceback,
    in the same thread, with its values as the record's ``data``. That line of that
    task id is dropped: one record per failure, not two ERROR records with two
    tracebacks (two events in an error tracker that reads the log).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        task_id = getattr(_LOGGED_FAILURE, "value", None)
        if task_id is None:
            return True
        data = getattr(record, "data", None)
        if isinstance(data, dict) and data.get("id") == task_id and "exc" in data:
            _LOGGED_FAILURE.value = None
            return False
        return True


_failure_filter = _CeleryFailureLine()


def failure_record_written(task_id: str) -> None:
    """Say that this thread wrote ``task_id``'s ``failed`` record; Celery's line is dropped.

    :class:`celeryredis.Task` calls it from ``on_failure`` after writing the record.
    """
    _celery_trace_logger.addFilter(_failure_filter)  # a no-op once there
    _LOGGED_FAILURE.value = task_id


@functools.lru_cache(maxsize=16)
def _file_and_module(pathname: str) -> tuple[str, str]:
    """A record's ``filename`` and ``module`` for ``pathname``, as ``LogRecord`` makes them."""
    path = PurePath(pathname)
    return path.name, path.stem


def fields_record(
    logger: logging.Logger,
    level: int,
    message: str,
    args: tuple[Any, ...],
    fields: Mapping[str, Any],
    *,
    pathname: str,
) -> logging.LogRecord:
    """A record of ``logger`` made by the record factory, with ``fields`` as attributes.

    Through the factory, so it carries the task context; then given the fields, because
    ``Logger.makeRecord(extra=...)`` would refuse ``task_id``/``task_name``, which the
    factory may already have set. No caller: line 0 of ``pathname``.
    """
    record = logging.getLogRecordFactory()(logger.name, level, pathname, 0, message, args, None)
    record.__dict__.update(fields)
    return record


def write_success_record(
    task_id: str,
    logger: logging.Logger,
    *,
    message: str,
    args: tuple[Any, ...],
    fields: Mapping[str, Any],
    pathname: str,
) -> None:
    """Write an INFO record of ``logger`` with ``fields``, as Celery's success line of ``task_id``.

    :class:`celeryredis.Task` calls it from ``on_success``: Celery's tracer logs its own
    ``Task ...[id] succeeded in ...`` line next, in this thread; that record is made this
    record (``logger``'s name, ``message % args``, the ``fields`` as attributes) instead
    of being written as Celery's, so a success is one log line and one record made.
    Call :func:`flush_success_record` after Celery's line (``after_return``): the record
    is written there if Celery's line did not come (its logger off at INFO). A record
    still pending from an earlier task of this thread is written first.
    """
    flush_success_record()
    _celery_trace_logger.addFilter(_success_filter)  # a no-op once there
    _PENDING_SUCCESS.value = (task_id, logger, message, args, fields, pathname)


def flush_success_record(task_id: str | None = None) -> None:
    """Write the pending record of :func:`write_success_record` now, if it is still pending.

    With ``task_id``, only that task's record.
    """
    pending = getattr(_PENDING_SUCCESS, "value", None)
    if pending is None or (task_id is not None and pending[0] != task_id):
        return
    _PENDING_SUCCESS.value = None
    _, logger, message, args, fields, pathname = pending
    logger.handle(fields_record(logger, logging.INFO, message, args, fields, pathname=pathname))


def redact_exc_info(exc_info: Any, secrets: Iterable[str] = ()) -> str:
    """The formatted traceback of ``exc_info``, URL passwords and ``secrets`` as ``***``.

    Accepts an ``(type, value, traceback)`` tuple or an exception.
    """
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    value = exc_info[1]
    if isinstance(value, ExceptionWithTraceback) and isinstance(value.exc, BaseException):
        # A prefork child's failure: Celery wraps the exception for the pool's pipe, and
        # the wrapper's text is the whole traceback again. Show the task's own exception.
        exc_info = (type(value.exc), value.exc, exc_info[2])
    try:
        text = "".join(traceback.format_exception(*exc_info))
    except Exception:  # a broken exception must not break logging
        text = f"{getattr(exc_info[0], '__name__', exc_info[0])}: <unprintable>"
    return redact_text(text.rstrip("\n"), secrets)


# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRIBUTES = frozenset(
    {
        "name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module",
        "exc_info", "exc_text", "stack_info", "lineno", "funcName", "created", "msecs",
        "relativeCreated", "thread", "threadName", "processName", "process", "taskName",
        "message", "asctime",
    }
)  # fmt: skip


# Extra values with nothing to redact (checked first: most lifecycle fields are these).
_PLAIN_TYPES = (int, float, type(None))


def _redact_extra(value: Any, secrets: tuple[str, ...], depth: int = 0) -> Any:
    if depth > 4:
        return value
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}", secrets)
    if isinstance(value, Mapping):
        return {k: _redact_extra(v, secrets, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return same_kind(value, (_redact_extra(v, secrets, depth + 1) for v in value))
    return value


class RedactingFilter(logging.Filter):
    """Show URL passwords as ``***`` in a record's message, extra fields and traceback.

    The sensitive argument values of the task the thread runs (or ran last, see
    :func:`bind_task_secrets`) are hidden too.

    A record's exception is formatted once into ``exc_text`` (redacted) and its
    ``exc_info`` cleared, because formatters (python-json-logger's among them) would
    otherwise format the exception's own text again.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drops it."""
        try:
            message = record.getMessage()
        except Exception:  # let the handler report a broken record as it always does
            return True
        secrets = _bound_secrets()
        redacted = redact_text(message, secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact_exc_info(record.exc_info, secrets)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text, secrets)
        fields = record.__dict__
        for key in fields.keys() - _RECORD_ATTRIBUTES:  # the extra fields, found in C
            value = fields[key]
            if isinstance(value, str):
                if "@" in value or secrets:
                    fields[key] = redact_text(value, secrets)
            elif not isinstance(value, _PLAIN_TYPES):
                fields[key] = _redact_extra(value, secrets)
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` (default: root).

    Idempotent; handlers added later are not covered (call it again after them).
    """
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def install_record_factory() -> None:
    """Wrap the current log record factory so records carry the task context (idempotent).

    The first call in a process also runs :func:`install_redaction` on the root logger.
    """
    global _installed_factory  # noqa: PLW0603 - one factory per process
    if logging.getLogRecordFactory() is _installed_factory:
        return
    install_redaction()
    with _install_lock:
        previous = logging.getLogRecordFactory()
        if previous is _installed_factory:
            return

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            context = _CONTEXT.get()
            if context is not None:
                record.task_id, record.task_name = context
            return record

        logging.setLogRecordFactory(factory)
        _installed_factory = factory


class _ContextDefaults(logging.Filter):
    """Give records outside a task empty ``task_id``/``task_name`` for format strings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "task_id"):
            record.task_id = ""
        if not hasattr(record, "task_name"):
            record.task_name = ""
        return True


def configure_logging(
    *,
    json: bool = False,
    level: int | str = "INFO",
    stream: IO[str] | None = None,
    logger: str | None = None,
) -> logging.Handler:
    """Send log records to ``stream`` as text lines or JSON lines, with task context.

    Call it in a worker, e.g. from Celery's ``setup_logging`` signal (which stops
    Celery from configuring logging itself)::

        from celery.signals import setup_logging
        from celeryredis.log import configure_logging

        @setup_logging.connect
        def _logging(**kwargs):
            configure_logging(json=True)

    JSON lines need the ``json`` extra (``pip install celeryredis[json]``, which
    brings python-json-logger); every record's ``extra`` fields — ``event``,
    ``task_id``, ``duration_s`` and the rest — become JSON keys.

    Args:
        json: JSON lines instead of text.
        level: Level for the configured logger.
        stream: Where to write (default ``sys.stderr``).
        logger: Logger name to configure (default: the root logger).

    Returns:
        The handler that was added.

    Raises:
        ConfigurationError: ``json=True`` without python-json-logger installed.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_ContextDefaults())
    handler.addFilter(RedactingFilter())
    if json:
        try:
            from pythonjsonlogger.json import JsonFormatter  # noqa: PLC0415 - optional extra
        except ImportError:
            raise ConfigurationError(
                "configure_logging(json=True) needs python-json-logger: "
                "pip install 'celeryredis[json]'"
            ) from None
        handler.setFormatter(
            JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", timestamp=False)
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    target = logging.getLogger(logger)
    target.addHandler(handler)
    target.setLevel(level)
    install_record_factory()
    return handler
