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
    """Celery's consumer with two repairs; the presets select it with ``worker_consumer``.

    - A message whose body cannot be decoded is dead-lettered. Celery only logs and
      acks such a message (``Consumer.on_decode_error``) and fires no signal.
    - A Redis restart no longer kills the worker. After a lost connection Celery
      calls ``connection.collect()`` and then ``connection.close()``; closing the
      channel tries to put its delivered-but-unacked messages back, which needs a
      new connection pool built from the collected (now ``None``) connection info,
      and the ``AttributeError`` escapes Celery's ``ignore_errors`` and stops the
      worker ("Unrecoverable error"). It happened in 2 of 3 runs of the Redis
      restart scenario (tests/faults) with ``task_acks_late``. The close is now
      made quiet: those messages stay in kombu's ``unacked`` record and are
      restored after the visibility timeout, as for a crashed worker.
    """

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """Make the lost connection's ``close()`` unable to stop the worker, then recover."""
        connection = self.connection
        if connection is not None:
            close = connection.close

            def close_quietly() -> None:
                try:
                    close()
                except AttributeError as error:  # kombu: pool rebuilt from collected conninfo
                    logger.warning(
                        "closing the lost broker connection failed (%r); its unacked "
                        "messages return after the visibility timeout",
                        error,
                    )

            connection.close = close_quietly  # type: ignore[method-assign]
        super().on_connection_error_after_connected(exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """Dead-letter the message, then let Celery log and ack it."""
        dead_letter_message(self.app, message, "decode_error", exc)
        super().on_decode_error(message, exc)


def install(app: Celery) -> None:
    """Add celeryredis's worker bootsteps to ``app`` (idempotent)."""
    if ValidationStep not in app.steps["worker"]:
        app.steps["worker"].add(ValidationStep)
