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
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

from celeryredis.exceptions import ConfigurationError

__all__ = [
    "TEXT_FORMAT",
    "configure_logging",
    "current_task_context",
    "install_record_factory",
    "task_context",
]

#: The text format :func:`configure_logging` uses when ``json=False``.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(task_name)s %(task_id)s] %(message)s"

_CONTEXT: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "celeryredis_task", default=None
)
_install_lock = threading.Lock()
_installed_factory: Any = None


def current_task_context() -> tuple[str, str] | None:
    """``(task_id, task_name)`` of the task running in this context, or None."""
    return _CONTEXT.get()


@contextlib.contextmanager
def task_context(task_id: str, task_name: str) -> Iterator[None]:
    """Bind ``task_id`` and ``task_name`` to every log record created inside the block."""
    install_record_factory()
    token = _CONTEXT.set((task_id, task_name))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def install_record_factory() -> None:
    """Wrap the current log record factory so records carry the task context (idempotent)."""
    global _installed_factory  # noqa: PLW0603 - one factory per process
    if logging.getLogRecordFactory() is _installed_factory:
        return
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
