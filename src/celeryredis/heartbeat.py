"""Worker heartbeats: the store :class:`celeryredis.worker.HeartbeatStep` writes and probes read.

Heartbeats are written from the consumer's own timer with :func:`write_heartbeat`: if the
worker's event loop freezes or its broker connection is being re-established, no beat is
written and the key expires after three intervals. Each beat also carries the age of the
worker's last completed poll of Redis, so a worker whose loop runs but which no longer
receives from Redis is told apart from an idle one. Ages are computed from the key's
remaining TTL and from durations measured by the worker, never by comparing two
machines' clocks. :func:`celeryredis.check_worker` (in :mod:`celeryredis.health`) turns
a heartbeat into a probe's answer.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from celeryredis import _kombu_compat
from celeryredis.connection import Client
from celeryredis.keys import heartbeat_key, workers_key

__all__ = [
    "TTL_INTERVALS",
    "WorkerHeartbeat",
    "poll_started_at",
    "read_heartbeat",
    "read_heartbeats",
    "remove_heartbeat",
    "stall_after",
    "write_heartbeat",
]

#: A heartbeat key lives this many intervals after the last beat.
TTL_INTERVALS: Final = 3
#: Workers in the index that stopped beating are reported as lost for this long.
_LOST_WINDOW: Final = 3600.0
_INDEX_TTL: Final = 86400


def poll_started_at(channel: Any) -> float | None:
    """When the consumer's channel began its current (or last) poll of Redis, if known.

    ``time.monotonic()`` of this process. The cluster broker's channel records it itself
    (``last_poll_at``: each fetch round and each wait on its queues); kombu's Redis
    channel, which the reliable transport extends, records when it sent its current
    ``BRPOP`` (private, read through :mod:`celeryredis._kombu_compat`).
    """
    own = getattr(channel, "last_poll_at", None)
    if isinstance(own, int | float) and not isinstance(own, bool):
        return float(own)
    return _kombu_compat.poll_sent_at(channel)


def stall_after(interval: float) -> float:
    """Seconds without a completed poll of Redis after which a worker counts as stalled.

    Three heartbeat intervals plus 2 s: an idle worker's BRPOP returns every second
    (kombu's ``brpop_timeout``), so a live one is never near it.
    """
    return TTL_INTERVALS * interval + 2.0


@dataclass(frozen=True)
class WorkerHeartbeat:
    """A worker as its last heartbeat shows it.

    Attributes:
        hostname: Celery's node name (``name@host``).
        pid: The worker's main process id.
        queues: The queues it consumes.
        tasks_done: Tasks it finished since it started.
        active: Tasks running now.
        reserved: Tasks prefetched and waiting in the worker.
        saturated: Every prefetch slot is taken: it does not poll Redis until one frees
            up (busy, not stalled).
        interval: Its heartbeat interval in seconds.
        beat_age_s: Seconds since its last beat.
        poll_age_s: Seconds since its last completed poll of Redis (None: unknown).
        started_at: When the worker's consumer started (epoch seconds, its clock).
        state: ``consuming`` (polling Redis), ``busy`` (saturated) or ``stalled``
            (beating, not saturated, but no poll of Redis for
            :func:`celeryredis.heartbeat.stall_after` seconds).
    """

    hostname: str
    pid: int
    queues: tuple[str, ...]
    tasks_done: int
    active: int
    reserved: int
    saturated: bool
    interval: float
    beat_age_s: float
    poll_age_s: float | None
    started_at: float
    state: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        data = asdict(self)
        data["queues"] = list(self.queues)
        return data


def write_heartbeat(
    client: Client, conf: Mapping[str, Any], payload: Mapping[str, Any], interval: float
) -> None:
    """Write one heartbeat (one round trip): the key with its TTL, and the index entry.

    Args:
        client: A client on the broker's Redis.
        conf: The app's configuration (for the key prefix).
        payload: The beat (see :class:`celeryredis.worker.HeartbeatStep`); must have
            ``hostname``.
        interval: The heartbeat interval; the key lives three of them.
    """
    name = str(payload["hostname"])
    ttl_ms = max(1, math.ceil(TTL_INTERVALS * interval * 1000))
    now = time.time()
    body = json.dumps({**payload, "ttl_s": ttl_ms / 1000}, sort_keys=True)
    index = workers_key(conf)
    pipe = client.pipeline(transaction=False)
    pipe.set(heartbeat_key(conf, name), body, px=ttl_ms)
    pipe.zadd(index, {name: now})
    pipe.zremrangebyscore(index, "-inf", now - _LOST_WINDOW)
    pipe.expire(index, _INDEX_TTL)
    pipe.execute()


def remove_heartbeat(client: Client, conf: Mapping[str, Any], hostname: str) -> None:
    """Delete a worker's heartbeat and index entry (at a clean shutdown)."""
    pipe = client.pipeline(transaction=False)
    pipe.delete(heartbeat_key(conf, hostname))
    pipe.zrem(workers_key(conf), hostname)
    pipe.execute()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _heartbeat_from(raw: Any, pttl: int) -> WorkerHeartbeat | None:
    try:
        data = json.loads(_text(raw))
        interval = float(data["interval"])
        ttl = float(data.get("ttl_s") or TTL_INTERVALS * interval)
    except (ValueError, KeyError, TypeError):
        return None
    beat_age = max(0.0, ttl - pttl / 1000) if pttl >= 0 else 0.0
    poll_age = data.get("poll_age_s")
    poll_age = None if poll_age is None else float(poll_age) + beat_age
    saturated = bool(data.get("saturated"))
    if saturated:
        state = "busy"
    elif poll_age is not None and poll_age > stall_after(interval):
        state = "stalled"
    else:
        state = "consuming"
    return WorkerHeartbeat(
        hostname=str(data.get("hostname", "?")),
        pid=int(data.get("pid") or 0),
        queues=tuple(str(q) for q in data.get("queues") or ()),
        tasks_done=int(data.get("tasks_done") or 0),
        active=int(data.get("active") or 0),
        reserved=int(data.get("reserved") or 0),
        saturated=saturated,
        interval=interval,
        beat_age_s=round(beat_age, 3),
        poll_age_s=None if poll_age is None else round(poll_age, 3),
        started_at=float(data.get("started_at") or 0.0),
        state=state,
    )


def read_heartbeat(client: Client, conf: Mapping[str, Any], name: str) -> WorkerHeartbeat | None:
    """The heartbeat of worker ``name``, or None when its key has expired (one round trip)."""
    pipe = client.pipeline(transaction=False)
    pipe.get(heartbeat_key(conf, name))
    pipe.pttl(heartbeat_key(conf, name))
    raw, pttl = pipe.execute()
    return None if raw is None else _heartbeat_from(raw, int(pttl))


def read_heartbeats(
    client: Client, conf: Mapping[str, Any]
) -> tuple[list[WorkerHeartbeat], list[str]]:
    """Return the live workers and the names of those that stopped beating.

    Returns:
        ``(live, lost)``: live workers sorted by name, and the workers that beat within
        the last hour but whose heartbeat key has expired (killed, frozen, or cut off
        from Redis, without a clean shutdown).
    """
    names = sorted(_text(n) for n in client.zrange(workers_key(conf), 0, -1))
    if not names:
        return [], []
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(heartbeat_key(conf, name))
        pipe.pttl(heartbeat_key(conf, name))
    replies = pipe.execute()
    live: list[WorkerHeartbeat] = []
    lost: list[str] = []
    for index, name in enumerate(names):
        raw, pttl = replies[2 * index], replies[2 * index + 1]
        beat = None if raw is None else _heartbeat_from(raw, int(pttl))
        if beat is None:
            lost.append(name)
        else:
            live.append(beat)
    return live, lost
