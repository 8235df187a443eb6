"""Queue inspection: real depths of kombu's Redis queues.

:func:`celeryredis.inspect_queues` gives the depth of each queue including kombu's priority
sub-queues, the messages reserved by workers but not acked, and the age of the oldest
waiting message (from the ``celeryredis_sent_at`` header stamped at publish).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from celery import Celery

from celeryredis import _kombu_compat
from celeryredis.connection import Client, is_cluster, new_redis
from celeryredis.heartbeat import WorkerHeartbeat, read_heartbeats
from celeryredis.keys import SENT_AT_HEADER
from celeryredis.transport import cluster_queue_keys

__all__ = ["QueueDepth", "inspect_queues"]

_DEFAULT_SEP: Final = _kombu_compat.DEFAULT_SEP
_DEFAULT_STEPS: Final = _kombu_compat.DEFAULT_PRIORITY_STEPS


@dataclass(frozen=True)
class QueueDepth:
    """The messages of one queue.

    Attributes:
        name: The queue name.
        depth: Messages waiting, over every priority sub-queue.
        by_priority: Waiting messages per priority step (0 is the highest on Redis).
        unacked: Messages delivered to workers and not yet acked (prefetched or running).
        oldest_age_s: Age of the oldest waiting message that carries celeryredis's
            send-time header (None: no such message among those scanned).
        unknown_age: Scanned messages without the header (published by something else).
        scanned: How many of the oldest waiting messages were scanned for their age.
        consumers: Live workers (by heartbeat) that consume this queue.
    """

    name: str
    depth: int
    by_priority: Mapping[int, int]
    unacked: int
    oldest_age_s: float | None
    unknown_age: int
    scanned: int
    consumers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (priority keys as strings)."""
        data = asdict(self)
        data["by_priority"] = {str(k): v for k, v in self.by_priority.items()}
        data["consumers"] = list(self.consumers)
        return data


def _transport(conf: Mapping[str, Any]) -> tuple[str, str, tuple[int, ...], str]:
    options = conf.get("broker_transport_options") or {}
    steps = tuple(int(s) for s in options.get("priority_steps") or _DEFAULT_STEPS)
    return (
        str(options.get("global_keyprefix") or ""),
        str(options.get("sep") or _DEFAULT_SEP),
        steps,
        str(options.get("unacked_key") or "unacked"),
    )


def _bound_queues(client: Client, conf: Mapping[str, Any]) -> set[str]:
    """Queues kombu has bound in Redis (declared by a publisher or a worker)."""
    keyprefix, sep, _, _ = _transport(conf)
    head = f"{keyprefix}{_kombu_compat.BINDING_KEY_HEAD}"
    names: set[str] = set()
    for key in client.scan_iter(match=f"{head}*", count=1000):
        exchange = _text(key)[len(head) :]
        if "pidbox" in exchange or exchange.startswith("celeryev"):
            continue  # control and event fanouts, not task queues
        for member in client.smembers(key):
            queue = _text(member).split(sep)[-1]
            if queue:
                names.add(queue)
    return names


def _queue_names(app: Celery, workers: Sequence[WorkerHeartbeat], client: Client) -> list[str]:
    names = {str(app.conf.task_default_queue or "celery")}
    names.update(_bound_queues(client, app.conf))
    with contextlib.suppress(Exception):  # a host's odd task_queues must not break a probe
        names.update(str(name) for name in app.amqp.queues)
    for worker in workers:
        names.update(worker.queues)
    return sorted(names)


def _list_keys(
    cluster: bool, keyprefix: str, name: str, steps: Sequence[int], sep: str
) -> list[str]:
    """The lists of queue ``name``, one per priority step (the cluster transport's on a cluster)."""
    if cluster:
        return list(cluster_queue_keys(keyprefix, name, steps)["lists"])
    return [_kombu_compat.queue_key(keyprefix, name, step, sep) for step in steps]


def _sent_at(raw: Any) -> float | None:
    try:
        message = json.loads(_text(raw))
        value = (message.get("headers") or {}).get(SENT_AT_HEADER)
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _unacked_by_queue(client: Client, app: Celery, key: str) -> dict[str, int]:
    routes: dict[str, str] = {}
    with contextlib.suppress(Exception):
        for name, queue in app.amqp.queues.items():
            routes.setdefault(str(queue.routing_key or name), str(name))
    counts: dict[str, int] = {}
    for _tag, raw in client.hscan_iter(key, count=500):
        try:
            routing_key = str(json.loads(_text(raw))[2])
        except (ValueError, IndexError, TypeError):
            routing_key = "?"
        target = routes.get(routing_key, routing_key)
        counts[target] = counts.get(target, 0) + 1
    return counts


def _read_lists(
    client: Client,
    app: Celery,
    names: Sequence[str],
    window: tuple[int, int],
    transport: tuple[str, str, tuple[int, ...], str],
) -> tuple[list[Any], dict[str, int]]:
    """``LLEN`` and the oldest messages of each priority list, and the unacked counts."""
    keyprefix, sep, steps, unacked_key = transport
    first, last = window
    cluster = is_cluster(client)
    pipe = client.pipeline(transaction=False)
    for name in names:
        lists = _list_keys(cluster, keyprefix, name, steps, sep)
        for key in lists:
            pipe.llen(key)
            pipe.lrange(key, first, last)
        if cluster:  # each queue has its own unacked hash on a cluster broker
            pipe.hlen(cluster_queue_keys(keyprefix, name, steps)["unacked"])
    replies = pipe.execute()
    if cluster:
        width = 2 * len(steps) + 1
        unacked = {name: int(replies[i * width + width - 1]) for i, name in enumerate(names)}
        replies = [r for i, r in enumerate(replies) if i % width != width - 1]
    else:
        unacked = _unacked_by_queue(client, app, keyprefix + unacked_key)
    return replies, unacked


def inspect_queues(
    app: Celery,
    queues: Sequence[str] | None = None,
    *,
    client: Client | None = None,
    sample: int = 1000,
    workers: Sequence[WorkerHeartbeat] | None = None,
) -> list[QueueDepth]:
    """Depth, unacked count and oldest-message age of each queue.

    Args:
        app: The app.
        queues: Queue names; by default the app's configured queues, every queue kombu
            has bound in Redis (published to or consumed) and every queue a live
            worker consumes.
        client: A client on the broker's Redis (a new one by default).
        sample: How many of the oldest messages of each priority sub-queue to read
            for their age.
        workers: Live workers, if already read (for ``consumers``).

    Returns:
        One :class:`celeryredis.queues.QueueDepth` per queue, sorted by name.
    """
    own = client is None
    client = client or new_redis(app)
    try:
        conf = app.conf
        if workers is None:
            workers = read_heartbeats(client, conf)[0]
        names = list(queues) if queues else _queue_names(app, workers, client)
        keyprefix, sep, steps, unacked_key = _transport(conf)
        # The consuming end is the right (BRPOP), so the oldest messages are the last.
        first, last = (-sample, -1) if sample > 0 else (1, 0)
        replies, unacked = _read_lists(
            client, app, names, (first, last), (keyprefix, sep, steps, unacked_key)
        )
        now = time.time()
        result = []
        for index, name in enumerate(names):
            by_priority: dict[int, int] = {}
            oldest: float | None = None
            unknown = scanned = 0
            for offset, step in enumerate(steps):
                base = 2 * (index * len(steps) + offset)
                by_priority[step] = int(replies[base])
                for raw in replies[base + 1]:
                    scanned += 1
                    sent = _sent_at(raw)
                    if sent is None:
                        unknown += 1
                    elif oldest is None or sent < oldest:
                        oldest = sent
            result.append(
                QueueDepth(
                    name=name,
                    depth=sum(by_priority.values()),
                    by_priority=by_priority,
                    unacked=unacked.get(name, 0),
                    oldest_age_s=None if oldest is None else round(max(0.0, now - oldest), 3),
                    unknown_age=unknown,
                    scanned=scanned,
                    consumers=tuple(w.hostname for w in workers if name in w.queues),
                )
            )
        return sorted(result, key=lambda q: q.name)
    finally:
        if own:
            client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
