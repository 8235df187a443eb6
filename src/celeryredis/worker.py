"""Worker bootsteps, installed per app by :func:`install` (never at import).

:class:`ValidationStep` re-runs :mod:`celeryredis.validation` against the
worker's effective configuration when the worker starts, so settings changed
after :func:`celeryredis.make_app` (a later ``conf.update``, a config module,
command-line options) are checked too. Celery's signal receivers cannot refuse
anything (``Signal.send`` swallows their exceptions), so this is a bootstep: its
failure stops the worker before it consumes a single message.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps
from celery.worker.consumer import Consumer as _CeleryConsumer

from celeryredis.deadletter import dead_letter_message
from celeryredis.exceptions import ConfigurationError
from celeryredis.validation import enforce, run_checks

__all__ = ["Consumer", "ValidationStep", "install"]

logger = logging.getLogger(__name__)


class ValidationStep(bootsteps.StartStopStep):
    """Validate the app's configuration when a worker starts.

    Raises :class:`~celeryredis.exceptions.ConfigurationError` from the step's
    constructor, which stops ``celery worker`` with the findings' message and a
    non-zero exit code.
    """

    label = "celeryredis validation"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        app: Celery = parent.app
        conf = app.conf
        findings = run_checks(conf)
        for task in app.tasks.values():
            task_findings = getattr(task, "celeryredis_findings", None)
            if task_findings is not None:
                findings.extend(task_findings(conf))
        try:
            enforce(
                findings,
                conf.get("celeryredis_validate", "error"),
                conf.get("celeryredis_validate_checks"),
                context=f"worker {getattr(parent, 'hostname', '?')}",
            )
        except ConfigurationError as exc:
            logger.critical("refusing to start: %s", exc)
            raise


class Consumer(_CeleryConsumer):
    """Celery's consumer, but a message whose body cannot be decoded is dead-lettered.

    Celery only logs and acks such a message (``Consumer.on_decode_error``) and fires
    no signal; the presets select this class with ``worker_consumer``.
    """

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """Dead-letter the message, then let Celery log and ack it."""
        dead_letter_message(self.app, message, "decode_error", exc)
        super().on_decode_error(message, exc)


def install(app: Celery) -> None:
    """Add celeryredis's worker bootsteps to ``app`` (idempotent)."""
    if ValidationStep not in app.steps["worker"]:
        app.steps["worker"].add(ValidationStep)
