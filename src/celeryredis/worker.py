"""Worker bootsteps, installed per app by :func:`install` (never at import).

:class:`ValidationStep` re-runs :mod:`celeryredis.validation` against the
worker's effective configuration when the worker starts, so settings changed
after :func:`celeryredis.make_app` (a later ``conf.update``, a config module,
command-line options) are checked too. Celery's signal receivers cannot refuse
anything (``Signal.send`` swallows their exceptions), so this is a bootstep: its
failure stops the worker before it consumes a single message.

:class:`HeartbeatStep` (a consumer bootstep) writes the worker's heartbeat key every
``celeryredis_heartbeat_interval`` seconds from the consumer's own timer, which the
worker's event loop runs: a frozen loop or a consumer that is reconnecting to Redis
writes none, and the key expires (see :mod:`celeryredis.health`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer as _CeleryConsumer
from redis.exceptions import RedisClusterException

from celeryredis import _kombu_compat
from celeryredis._errors import fails_fast, permanent_errback
from celeryredis._prefork import PreforkReapStep
from celeryredis.connection import Client, new_redis
from celeryredis.deadletter import DeadLetterError, DeadLetterQueue, dead_letter_message
from celeryredis.exceptions import ConfigurationError
from celeryredis.heartbeat import poll_started_at, remove_heartbeat, write_heartbeat
from celeryredis.keys import poison_key
from celeryredis.presets import known_settings
from celeryredis.redaction import redact_text
from celeryredis.registry import setting, uses_reliable_transport
from celeryredis.tasks import Task
from celeryredis.transport import (
    cluster_queue_keys,
    configured_partitions,
    is_cluster_broker,
    recorded_partitions,
)
from celeryredis.validation import (
    Finding,
    enforce,
    run_checks,
    settings_view,
    unknown_namespaced_settings,
)

__all__ = ["Consumer", "HeartbeatStep", "PoisonStep", "ValidationStep", "install"]

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
        view = settings_view(conf, known_settings())
        findings = run_checks(view) + app_findings(app)
        for task in app.tasks.values():
            task_findings = getattr(task, "celeryredis_findings", None)
            if task_findings is not None:
                findings.extend(task_findings(view))
        for mapping in getattr(conf, "maps", ()):
            describe = getattr(mapping, "describe_findings", None)
            if getattr(mapping, "celeryredis_layer", False) and describe is not None:
                findings = describe(findings)  # names where each value came from
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


def app_findings(app: Celery) -> list[Finding]:
    """Checks of the app itself, not of its settings' values.

    The keys of its host configuration under a namespace, and its default task class.
    """
    return unknown_namespaced_settings(app.conf, known_settings()) + _task_class_findings(app)


def _task_class_findings(app: Celery) -> list[Finding]:
    from kombu.utils.imports import symbol_by_name  # noqa: PLC0415

    try:
        cls = symbol_by_name(app.task_cls or "celery.app.task:Task")
    except (ImportError, AttributeError) as exc:
        return [
            Finding(
                "task-class",
                "error",
                f"the app's task class {app.task_cls!r} cannot be imported: {exc}",
                ("task_cls",),
            )
        ]
    if isinstance(cls, type) and issubclass(cls, Task):
        return []
    name = getattr(cls, "__name__", repr(cls))
    where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', name)}"
    return [
        Finding(
            "task-class",
            "warning",
            f"the app's default task class {where} does not derive from celeryredis.Task, so "
            "its tasks (@shared_task ones too) get no lifecycle records and never reach the "
            f"dead-letter queue. Combine them: class AppTask(celeryredis.Task, {name}): ... "
            "and pass it as Celery(task_cls=AppTask) (or set celeryredis_validate_checks="
            "{'task-class': 'ignore'} to keep yours as it is).",
            ("task_cls",),
        )
    ]


class Consumer(_CeleryConsumer):
    """Celery's consumer with two repairs; the presets select it with ``worker_consumer``.

    - A message whose body cannot be decoded is dead-lettered. Celery only logs and
      acks such a message (``Consumer.on_decode_error``) and fires no signal.
    - A broker that refuses the worker for good (a wrong or missing password, an ACL
      that forbids what the worker needs, a TLS certificate that fails verification:
      what :mod:`celeryredis._errors` calls permanent) stops it at once with the cause
      and the fix, instead of Celery's "Trying again in 2.00 seconds... (1/None)"
      without end. Only for a broker URL with one host: with several (Sentinel,
      failover alternates) kombu tries the next one, which may accept.
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

    def ensure_connected(self, conn: Any) -> Any:
        """Celery's connection retries, ended at once by an error retrying cannot fix."""
        if fails_fast(self.app.conf.broker_url):
            ensure = conn.ensure_connection

            def ensure_connection(errback: Any = None, *args: Any, **kwargs: Any) -> Any:
                # Celery passes its own errback (the "Trying again" log line); ours
                # raises RedisRefusedError for a permanent error, else calls it.
                return ensure(permanent_errback(errback), *args, **kwargs)

            conn.ensure_connection = ensure_connection
        return super().ensure_connected(conn)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """Make the lost connection's ``close()`` unable to stop the worker, then recover."""
        connection = self.connection
        if connection is not None:
            # kombu: the pool is rebuilt from the collected conninfo -> AttributeError.
            _kombu_compat.quiet_close(connection, _report_failed_close)
        super().on_connection_error_after_connected(exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """Dead-letter the message, then let Celery log and ack it."""
        dead_letter_message(self.app, message, "decode_error", exc)
        super().on_decode_error(message, exc)


def _report_failed_close(error: AttributeError) -> None:
    logger.warning(
        "closing the lost broker connection failed (%r); its unacked "
        "messages return after the visibility timeout",
        error,
    )


class HeartbeatStep(bootsteps.StartStopStep):
    """Write the worker's heartbeat key from the consumer's timer.

    Each beat (one pipelined round trip to the broker's Redis) holds the node name,
    pid, queues consumed, tasks done, tasks active and reserved, whether every
    prefetch slot is taken, and the age of the consumer's last completed poll of
    Redis. The key lives three intervals. The step stops beating while the consumer
    reconnects (Celery stops consumer steps on a lost connection) and deletes the key
    at a clean shutdown.

    Off when ``celeryredis_heartbeat_interval`` is 0. A failed write is logged and
    retried at the next beat; it never stops the worker.
    """

    label = "celeryredis heartbeat"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self.interval = float(setting(parent.app.conf, "celeryredis_heartbeat_interval"))
        self.enabled = self.interval > 0
        self._tref: Any = None
        self._client: Client | None = None
        self._started_at = time.time()
        self._failing = False
        super().__init__(parent, **kwargs)

    def start(self, parent: Any) -> None:
        """Beat once now, then every interval."""
        if self._client is None:
            # Short timeouts: a beat runs on the event loop and must not block it long.
            self._client = new_redis(parent.app, timeout=min(max(self.interval, 0.5), 5.0))
        self.beat(parent)
        self._tref = parent.timer.call_repeatedly(self.interval, self.beat, (parent,), priority=10)

    def stop(self, parent: Any) -> None:
        """Stop beating (the consumer is reconnecting or shutting down)."""
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None

    def shutdown(self, parent: Any) -> None:
        """Stop beating and delete the heartbeat (a clean shutdown is not a lost worker)."""
        self.stop(parent)
        if self._client is not None:
            with contextlib.suppress(redis.RedisError, RedisClusterException):
                remove_heartbeat(self._client, parent.app.conf, parent.hostname)
            self._client.close()
            self._client = None

    def payload(self, parent: Any) -> dict[str, Any]:
        """The beat: what a probe and ``celeryredis check`` read."""
        consumer = getattr(parent, "task_consumer", None)
        channel = getattr(consumer, "channel", None)
        # kombu's Redis channel records when it sent its current BRPOP (the previous one
        # completed just before; private, read through the shim, see the operations
        # docs); the cluster broker's channel records each fetch round and wait itself.
        sent = poll_started_at(channel)
        qos = getattr(channel, "qos", None)
        can_consume = getattr(qos, "can_consume", None)
        active = len(worker_state.active_requests)
        return {
            "hostname": parent.hostname,
            "pid": os.getpid(),
            "queues": sorted(q.name for q in getattr(consumer, "queues", None) or ()),
            "tasks_done": max(0, sum(worker_state.total_count.values()) - active),
            "active": active,
            "reserved": max(0, len(worker_state.reserved_requests) - active),
            "saturated": bool(callable(can_consume) and not can_consume()),
            "poll_age_s": None if sent is None else round(max(0.0, time.monotonic() - sent), 3),
            "interval": self.interval,
            "beat_at": time.time(),
            "started_at": self._started_at,
        }

    def beat(self, parent: Any) -> None:
        """Write one heartbeat; log (once per outage) and carry on if Redis refuses."""
        if self._client is None:
            return
        try:
            write_heartbeat(self._client, parent.app.conf, self.payload(parent), self.interval)
        except (redis.RedisError, RedisClusterException) as exc:  # a cluster in flux too
            if not self._failing:
                logger.warning("celeryredis heartbeat not written: %s", redact_text(str(exc)))
            self._failing = True
        else:
            self._failing = False


class PoisonStep(bootsteps.StartStopStep):
    """Move what the transport set aside as poison into the dead-letter queue.

    The transport's fetch script cannot know the app: an item it pops that is not a kombu
    message (no delivery tag) goes to a poison list: ``{p}celeryredis:poison`` for the
    reliable transport; on a Redis Cluster broker each consumed queue's own
    ``{p}{q}:poison`` (one per partition of a partitioned queue: as many as the app
    configures or any process recorded). This consumer step moves such items, every few
    seconds from the consumer's timer, into the dead-letter queue with reason
    ``decode_error`` and the raw bytes, so nothing is lost and
    ``celery -A proj redis dlq list`` shows them. On when the app uses the reliable
    transport or a cluster broker, and keeps dead letters.
    """

    label = "celeryredis poison"
    requires = ("celery.worker.consumer.tasks:Tasks",)
    #: Most items moved per run (the rest wait for the next).
    batch = 100
    #: Seconds between runs: poison items are rare, and nothing waits on them (they are
    #: safe in their list meanwhile). Its own cadence, not the heartbeat's.
    interval = 5.0

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        conf = parent.app.conf
        self.cluster = is_cluster_broker(conf)
        self.enabled = (uses_reliable_transport(conf) or self.cluster) and bool(
            setting(conf, "celeryredis_dead_letter")
        )
        self._tref: Any = None
        super().__init__(parent, **kwargs)

    def start(self, parent: Any) -> None:
        """Drain once now, then every interval."""
        self.drain(parent)
        self._tref = parent.timer.call_repeatedly(self.interval, self.drain, (parent,), priority=9)

    def stop(self, parent: Any) -> None:
        """Stop draining (the consumer is reconnecting or shutting down)."""
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None

    def drain(self, parent: Any) -> int:
        """Move up to :attr:`batch` poison items; return how many moved."""
        app = parent.app
        queue = DeadLetterQueue(app)
        moved = 0
        try:
            client = queue.client
            sources: list[tuple[str, str | None]] = [(poison_key(app.conf), None)]
            if self.cluster:
                sources += self._cluster_lists(client, parent)
            for key, name in sources:
                moved += self._move(
                    queue, client, key, name, worker=parent.hostname, most=self.batch - moved
                )
                if moved >= self.batch:
                    break
        except (redis.RedisError, RedisClusterException, DeadLetterError) as exc:
            logger.warning("celeryredis: poison items not moved yet: %s", redact_text(str(exc)))
        if moved:
            logger.error("celeryredis: %d poison item(s) moved to the dead-letter queue", moved)
        return moved

    @staticmethod
    def _cluster_lists(client: Client, parent: Any) -> list[tuple[str, str | None]]:
        """The poison list of every partition of each queue the consumer consumes."""
        conf = parent.app.conf
        consumer = getattr(parent, "task_consumer", None)
        names = sorted({str(q.name) for q in getattr(consumer, "queues", None) or ()})
        if not names:
            return []
        options = conf.get("broker_transport_options") or {}
        prefix = str(options.get("global_keyprefix") or "")
        configured = configured_partitions(conf)
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.get(cluster_queue_keys(prefix, name)["record"])
        out: list[tuple[str, str | None]] = []
        for name, record in zip(names, pipe.execute(), strict=True):
            count = max(configured.get(name, 1), recorded_partitions(record))
            parts = cluster_queue_keys(prefix, name, partitions=count)["partitions"]
            out += [(str(part["poison"]), name) for part in parts]
        return out

    @staticmethod
    def _move(
        dlq: DeadLetterQueue,
        client: Client,
        key: str,
        name: str | None,
        *,
        worker: str,
        most: int,
    ) -> int:
        moved = 0
        who = "reliable transport" if name is None else f"cluster transport (queue {name!r})"
        while moved < most:
            popped: Any = client.rpop(key)
            if popped is None:
                break
            raw: bytes = popped if isinstance(popped, bytes) else str(popped).encode()
            try:
                dlq.add(
                    reason="decode_error",
                    task_name=None,
                    task_id=None,
                    queue=name,
                    exception_type="PoisonMessage",
                    exception_message=(
                        f"the {who} popped an item that is not a kombu message (no "
                        "delivery tag); its raw bytes are kept"
                    ),
                    worker=worker,
                    raw_body=raw,
                )
            except DeadLetterError:
                client.rpush(key, raw)  # keep it for the next run
                raise
            moved += 1
        return moved


def install(app: Celery) -> None:
    """Add celeryredis's worker and consumer bootsteps to ``app`` (idempotent)."""
    if ValidationStep not in app.steps["worker"]:
        app.steps["worker"].add(ValidationStep)
    if PreforkReapStep not in app.steps["worker"]:
        app.steps["worker"].add(PreforkReapStep)
    if HeartbeatStep not in app.steps["consumer"]:
        app.steps["consumer"].add(HeartbeatStep)
    if PoisonStep not in app.steps["consumer"]:
        app.steps["consumer"].add(PoisonStep)
