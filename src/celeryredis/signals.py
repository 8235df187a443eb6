"""Signal receivers, connected per app by :func:`install` (never at import).

- ``task_received`` (worker main process): keep each request's routing data, so the
  ``failed`` record of a hard time limit — whose ``on_failure`` Celery runs in the
  main process with an empty ``self.request`` — still has queue, worker and ids. Not
  under the solo and threads pools, whose tasks run (and fail) in the main process with
  their request: nothing would read it.
- ``task_revoked``: log the ``revoked`` lifecycle event.
- ``task_failure`` with ``WorkerLostError`` (a pool process died and the task is not
  retried): log ``failed`` and dead-letter it; Celery calls no ``on_failure`` there.
- ``task_unknown`` / ``task_rejected`` (poison messages): dead-letter them.
- ``before_task_publish`` (the publishing process): stamp the send time into the message
  headers (``celeryredis_sent_at``), so ``celeryredis queues`` can tell the age of the
  oldest waiting message. Every publish of this process is stamped: ``apply_async``,
  retries, ``send_task`` and dead-letter replays (each with its own send time).
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Celery, signals
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadPool

from celeryredis.deadletter import dead_letter_message
from celeryredis.keys import SENT_AT_HEADER
from celeryredis.log import install_redaction
from celeryredis.tasks.base import Task, emit, remember_routing
from celeryredis.tasks.unique import UNIQUE_HEADER, UniqueTask

__all__ = ["install"]


def _routing(request: Any, task: Any = None) -> dict[str, Any]:
    """Routing fields from a worker ``Request`` or a task ``Context`` (task_revoked's)."""
    delivery = getattr(request, "delivery_info", None) or {}
    extra = getattr(request, "request_dict", None) or {}

    def field(name: str) -> Any:
        value = getattr(request, name, None)
        return value if value is not None else extra.get(name)

    name = getattr(task, "name", None) or getattr(request, "name", None) or field("task")
    return {
        "task_id": request.id,
        "task_name": name,
        "queue": delivery.get("routing_key"),
        "priority": delivery.get("priority"),
        "retries": field("retries") or 0,
        "duration_s": None,
        "worker": getattr(request, "hostname", None),
        "parent_id": field("parent_id"),
        "root_id": field("root_id"),
        "unique_key": field(UNIQUE_HEADER),
    }


# One per received message, for dedupe in this process (a counter: no uuid4 per task).
_RECEIPTS = itertools.count(1)
# Pools whose tasks run in the worker's main process, where their hooks have the request.
_IN_PROCESS_POOLS = (SoloPool, ThreadPool)


def _on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    # Celery sends the consumer as sender; its pool says where the task will run.
    if isinstance(getattr(sender, "pool", None), _IN_PROCESS_POOLS):
        return
    if request is not None and isinstance(getattr(request, "task", None), Task):
        routing = _routing(request)
        routing["receipt"] = next(_RECEIPTS)
        remember_routing(request.id, routing)


def _on_revoked(
    sender: Any = None, request: Any = None, terminated: bool = False, **kwargs: Any
) -> None:
    # Celery sends the task as sender and the request's Context as request.
    if request is None or not isinstance(sender, Task):
        return
    fields = _routing(request, sender)
    if isinstance(sender, UniqueTask):
        sender.unique_release(request.id, fields.get("unique_key"))
    fields.update(event="revoked", terminated=terminated, expired=bool(kwargs.get("expired")))
    emit(logging.WARNING, fields)


def _on_failure(sender: Any = None, exception: Any = None, **kwargs: Any) -> None:
    task_id = kwargs.get("task_id")
    if isinstance(exception, WorkerLostError) and isinstance(sender, Task) and task_id:
        args, task_kwargs = kwargs.get("args") or (), kwargs.get("kwargs") or {}
        sender.on_failure(exception, task_id, tuple(args), dict(task_kwargs), kwargs.get("einfo"))


def _on_unknown(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is not None and message is not None:
        dead_letter_message(app, message, "unknown_task", exc)


def _on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is not None and message is not None:
        dead_letter_message(app, message, "content_rejected", exc)


def _on_before_publish(headers: Any = None, **_: Any) -> None:
    if isinstance(headers, dict):
        headers[SENT_AT_HEADER] = time.time()


def install(app: Celery) -> None:
    """Connect celeryredis's receivers (once per process; they serve every app).

    ``app`` is taken for symmetry with :func:`celeryredis.worker.install` and is not
    kept: Celery's signals are process-wide, the receivers act only on tasks whose class
    derives from :class:`celeryredis.Task`, and each finds its app through the task.
    """
    signals.task_received.connect(
        _on_received, weak=False, dispatch_uid="celeryredis.signals.received"
    )
    signals.task_revoked.connect(
        _on_revoked, weak=False, dispatch_uid="celeryredis.signals.revoked"
    )
    signals.task_failure.connect(
        _on_failure, weak=False, dispatch_uid="celeryredis.signals.failure"
    )
    signals.task_unknown.connect(
        _on_unknown, weak=False, dispatch_uid="celeryredis.signals.unknown"
    )
    signals.task_rejected.connect(
        _on_rejected, weak=False, dispatch_uid="celeryredis.signals.rejected"
    )
    signals.before_task_publish.connect(
        _on_before_publish, weak=False, dispatch_uid="celeryredis.signals.sent_at"
    )
    # A prefork worker's main process never runs a task (the first task a process runs
    # installs the redacting filter): cover its own records (hard time limits, worker
    # lost) once Celery has set its logging up.
    signals.after_setup_logger.connect(
        _on_logging_ready, weak=False, dispatch_uid="celeryredis.signals.redaction"
    )
    signals.after_setup_task_logger.connect(
        _on_logging_ready, weak=False, dispatch_uid="celeryredis.signals.task_redaction"
    )


def _on_logging_ready(logger: logging.Logger | None = None, **kwargs: Any) -> None:
    install_redaction()
    if logger is not None:
        install_redaction(logger)
