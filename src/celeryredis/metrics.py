"""Prometheus metrics (the optional extra ``celeryredis[prometheus]``).

:class:`RedisCollector` reads, at every scrape, what the broker's Redis knows about the
app: queue depth per priority step, unacked messages and the oldest waiting message's
age per queue, the dead-letter depth, each worker's heartbeat and poll age, and the
counters the task bases keep (retries, rate-limit deferrals, duplicate refusals). Serve
it with the standalone exporter (``celeryredis --app proj exporter --port 9808``), or
from a worker with :func:`install`, which adds a worker bootstep (:class:`MetricsStep`)
that serves it from the worker's main process.

Every scrape costs a few pipelined round trips to Redis; a scrape that cannot reach
Redis reports ``celeryredis_up 0`` and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
from celery import Celery, bootsteps
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celeryredis.connection import new_redis
from celeryredis.heartbeat import read_heartbeats
from celeryredis.keys import dead_letter_key
from celeryredis.queues import inspect_queues
from celeryredis.stats import read_counts

__all__ = ["MetricsStep", "RedisCollector", "install", "registry_for", "serve"]

logger = logging.getLogger(__name__)

_COUNTERS = {
    "retries": "Task retries (RetryTask and retry()).",
    "rate_limit_deferrals": "RateLimitedTask attempts deferred to a later slot.",
    "duplicate_refusals": "UniqueTask publishes refused and runs dropped as duplicates.",
}


class RedisCollector(Collector):
    """A Prometheus collector that reads the app's state from Redis at each scrape.

    Args:
        app: The app.
        timeout: Socket timeout of each Redis call, in seconds.
        sample: Oldest messages read per priority sub-queue for the age gauge.
    """

    def __init__(self, app: Celery, *, timeout: float = 5.0, sample: int = 100) -> None:
        self.app = app
        self.timeout = timeout
        self.sample = sample

    def collect(self) -> Iterator[Metric]:
        """Yield the metrics (called by the registry at each scrape)."""
        up = GaugeMetricFamily("celeryredis_up", "1 if the broker's Redis answered the scrape.")
        try:
            metrics = self._read()
        except redis.RedisError as exc:
            logger.warning("celeryredis metrics: broker Redis unreachable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _read(self) -> list[Metric]:
        conf = self.app.conf
        client = new_redis(self.app, timeout=self.timeout)
        try:
            live, lost = read_heartbeats(client, conf)
            queues = inspect_queues(self.app, client=client, sample=self.sample, workers=live)
            dead = int(client.xlen(dead_letter_key(conf)))
            counts = read_counts(client, conf)
        finally:
            client.close()
        depth = GaugeMetricFamily(
            "celeryredis_queue_depth",
            "Messages waiting, per queue and priority step.",
            labels=["queue", "priority"],
        )
        unacked = GaugeMetricFamily(
            "celeryredis_queue_unacked", "Messages delivered and not acked.", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "celeryredis_queue_oldest_age_seconds",
            "Age of the oldest waiting message that carries a send time.",
            labels=["queue"],
        )
        for queue in queues:
            for step, n in sorted(queue.by_priority.items()):
                depth.add_metric([queue.name, str(step)], n)
            unacked.add_metric([queue.name], queue.unacked)
            age.add_metric([queue.name], queue.oldest_age_s or 0.0)
        dlq = GaugeMetricFamily("celeryredis_dead_letters", "Entries in the dead-letter queue.")
        dlq.add_metric([], dead)
        beat = GaugeMetricFamily(
            "celeryredis_worker_heartbeat_age_seconds",
            "Seconds since each live worker's last heartbeat.",
            labels=["worker"],
        )
        poll = GaugeMetricFamily(
            "celeryredis_worker_poll_age_seconds",
            "Seconds since each live worker's last completed poll of Redis.",
            labels=["worker"],
        )
        for worker in live:
            beat.add_metric([worker.hostname], worker.beat_age_s)
            if worker.poll_age_s is not None:
                poll.add_metric([worker.hostname], worker.poll_age_s)
        states = GaugeMetricFamily(
            "celeryredis_workers", "Workers by heartbeat state.", labels=["state"]
        )
        for state in ("consuming", "busy", "stalled"):
            states.add_metric([state], sum(1 for w in live if w.state == state))
        states.add_metric(["lost"], len(lost))
        metrics: list[Metric] = [depth, unacked, age, dlq, beat, poll, states]
        for event, help_text in _COUNTERS.items():
            counter = CounterMetricFamily(f"celeryredis_{event}", help_text, labels=["task"])
            for (name, task), value in sorted(counts.items()):
                if name == event:
                    counter.add_metric([task], value)
            metrics.append(counter)
        return metrics


def registry_for(app: Celery, **options: Any) -> CollectorRegistry:
    """A new registry holding a :class:`RedisCollector` for ``app``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(app, **options))
    return registry


def serve(app: Celery, *, port: int, address: str = "127.0.0.1", **options: Any) -> Any:
    """Serve ``/metrics`` for ``app`` on ``address:port`` from a daemon thread.

    Returns:
        The HTTP server (call ``shutdown()`` to stop it).
    """
    server, _thread = start_http_server(port, addr=address, registry=registry_for(app, **options))
    return server


class MetricsStep(bootsteps.StartStopStep):
    """Serve the app's metrics from the worker's main process (see :func:`install`).

    Attributes:
        port: The port to listen on (set by :func:`install` on a subclass).
        address: The address to bind.
    """

    label = "celeryredis metrics"
    port: int = 9808
    address: str = "127.0.0.1"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self._server: Any = None
        super().__init__(parent, **kwargs)

    def start(self, parent: Any) -> None:
        """Start the HTTP server."""
        self._server = serve(parent.app, port=self.port, address=self.address)

    def stop(self, parent: Any) -> None:
        """Stop the HTTP server."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def install(app: Celery, *, port: int, address: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` from every worker of ``app`` on ``address:port``.

    Call it in the module that builds the app. One worker per host can bind the port;
    for a fleet, prefer the standalone exporter (one per app).
    """
    steps = app.steps["worker"]
    for step in [s for s in steps if isinstance(s, type) and issubclass(s, MetricsStep)]:
        steps.discard(step)
    steps.add(type("MetricsStep", (MetricsStep,), {"port": port, "address": address}))
