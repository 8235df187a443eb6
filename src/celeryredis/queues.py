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
from celeryredis.transport import (
    cluster_queue_keys,
    configured_partitions,
    recorded_partitions,
)

__all__ = ["PartitionDepth", "QueueDepth", "inspect_queues"]

_DEFAULT_SEP: Final = _kombu_compat.DEFAULT_SEP
_DEFAULT_STEPS: Final = _kombu_compat.DEFAULT_PRIORITY_STEPS


@dataclass(frozen=True)
class PartitionDepth:
    """One partition of a queue split into partitions on a Redis Cluster broker.

    Attributes:
        index: The partition's number (0 is the queue's own hash tag ``{q}``, ``i`` is
            ``{q#i}``).
        depth: Messages waiting in it, over every priority sub-queue.
        unacked: Messages fetched from it and not yet acked.
    """

    index: int
    depth: int
    unacked: int


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
        partitions: Per partition, for a queue split into partitions on a Redis Cluster
            broker (as many as the app configures or any process recorded, whichever
            is more); ``depth`` and ``unacked`` are their totals. Empty otherwise.
    """

    name: str
    depth: int
    by_priority: Mapping[int, int]
    unacked: int
    oldest_age_s: float | None
    unknown_age: int
    scanned: int
    consumers: tuple[str, ...] = ()
    partitions: tuple[PartitionDepth, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (priority keys as strings)."""
        data = asdict(self)
        data["by_priority"] = {str(k): v for k, v in self.by_priority.items()}
        data["consumers"] = list(self.consumers)
        data["partitions"] = [asdict(part) for part in self.partitions]
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


def _layouts(
    client: Client, conf: Mapping[str, Any], names: Sequence[str], steps: Sequence[int]
) -> list[list[tuple[list[str], str | None]]]:
    """Per queue, its partitions' ``(lists, unacked hash)``: one on a single node.

    On a cluster broker a queue has ``max(configured, recorded)`` partitions (the count
    in ``broker_transport_options["partitions"]`` and the highest count any process
    recorded in the queue's ``record`` key), each with its own lists and unacked hash.
    On a single node the unacked hash is the global one (None here).
    """
    keyprefix, sep, _, _ = _transport(conf)
    if not is_cluster(client):
        return [
            [([_kombu_compat.queue_key(keyprefix, n, s, sep) for s in steps], None)] for n in names
        ]
    configured = configured_partitions(conf)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(cluster_queue_keys(keyprefix, name, steps)["record"])
    recorded = pipe.execute()
    layouts: list[list[tuple[list[str], str | None]]] = []
    for name, record in zip(names, recorded, strict=True):
        count = max(configured.get(name, 1), recorded_partitions(record))
        parts = cluster_queue_keys(keyprefix, name, steps, partitions=count)["partitions"]
        layouts.append([([str(k) for k in part["lists"]], str(part["unacked"])) for part in parts])
    return layouts


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
    layouts: Sequence[Sequence[tuple[list[str], str | None]]],
    window: tuple[int, int],
    unacked_key: str,
) -> tuple[list[Any], dict[str, int]]:
    """``LLEN`` and the oldest messages of each list (and each unacked hash's ``HLEN``).

    The replies come in the order of ``layouts``: per partition, ``LLEN``/``LRANGE`` of
    each list, then ``HLEN`` of its unacked hash when it has its own. The second value is
    the single-node unacked count per queue (read from the global unacked hash).
    """
    first, last = window
    pipe = client.pipeline(transaction=False)
    own_hashes = False
    for layout in layouts:
        for lists, unacked in layout:
            for key in lists:
                pipe.llen(key)
                pipe.lrange(key, first, last)
            if unacked is not None:
                pipe.hlen(unacked)
                own_hashes = True
    replies = pipe.execute()
    return replies, ({} if own_hashes else _unacked_by_queue(client, app, unacked_key))


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
        keyprefix, _, steps, unacked_key = _transport(conf)
        layouts = _layouts(client, conf, names, steps)
        # The consuming end is the right (BRPOP), so the oldest messages are the last.
        window = (-sample, -1) if sample > 0 else (1, 0)
        replies, global_unacked = _read_lists(client, app, layouts, window, keyprefix + unacked_key)
        now = time.time()
        result = []
        cursor = iter(replies)
        for name, layout in zip(names, layouts, strict=True):
            by_priority = dict.fromkeys(steps, 0)
            oldest: float | None = None
            unknown = scanned = 0
            partitions = []
            for index, (lists, own_unacked) in enumerate(layout):
                depth = 0
                for step, _key in zip(steps, lists, strict=True):
                    length = int(next(cursor))
                    by_priority[step] += length
                    depth += length
                    for raw in next(cursor):
                        scanned += 1
                        sent = _sent_at(raw)
                        if sent is None:
                            unknown += 1
                        elif oldest is None or sent < oldest:
                            oldest = sent
                held = int(next(cursor)) if own_unacked is not None else 0
                partitions.append(PartitionDepth(index=index, depth=depth, unacked=held))
            if layout[0][1] is None:
                unacked = global_unacked.get(name, 0)
            else:
                unacked = sum(p.unacked for p in partitions)
            result.append(
                QueueDepth(
                    name=name,
                    depth=sum(by_priority.values()),
                    by_priority=by_priority,
                    unacked=unacked,
                    oldest_age_s=None if oldest is None else round(max(0.0, now - oldest), 3),
                    unknown_age=unknown,
                    scanned=scanned,
                    consumers=tuple(w.hostname for w in workers if name in w.queues),
                    partitions=tuple(partitions) if len(partitions) > 1 else (),
                )
            )
        return sorted(result, key=lambda q: q.name)
    finally:
        if own:
            client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
