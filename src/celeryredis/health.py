"""Health checks, worker heartbeats and queue inspection.

- :func:`celeryredis.check_health` answers "is this app healthy?" for probes and operators: the
  broker's and the result backend's Redis reachable (with round-trip latency), the
  Redis version, ``maxmemory-policy`` and memory use, the workers seen by heartbeat,
  queue depths and the dead-letter depth. Each part has a status (``ok``, ``warn``,
  ``fail``) and a reason; the report is JSON-serialisable.
- :func:`celeryredis.check_worker` answers "is this one worker consuming?" from its heartbeat key,
  for a Kubernetes exec liveness probe.
- :func:`celeryredis.inspect_queues` gives the depth of each queue including kombu's priority
  sub-queues, the messages reserved by workers but not acked, and the age of the oldest
  waiting message.

Heartbeats are written by a worker bootstep (:class:`celeryredis.worker.HeartbeatStep`)
from the consumer's own timer with :func:`write_heartbeat`: if the worker's event loop
freezes or its broker connection is being re-established, no beat is written and the
key expires after three intervals. Each beat also carries the age of the worker's
last completed poll of Redis (BRPOP), so a worker whose loop runs but which no longer
receives from Redis is told apart from an idle one.

Ages are computed from the heartbeat key's remaining TTL and from durations measured by
the worker, never by comparing two machines' clocks.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import redis
from celery import Celery
from redis.exceptions import RedisClusterException

from celeryredis import _kombu_compat
from celeryredis._errors import classify, describe
from celeryredis.cluster import cluster_client
from celeryredis.connection import new_redis
from celeryredis.keys import dead_letter_key, heartbeat_key, workers_key
from celeryredis.urls import RedisURL, parse_redis_url, redact_text

__all__ = [
    "SENT_AT_HEADER",
    "HealthPart",
    "HealthReport",
    "QueueDepth",
    "Status",
    "WorkerHeartbeat",
    "check_health",
    "check_worker",
    "inspect_queues",
    "read_heartbeats",
    "remove_heartbeat",
    "stall_after",
    "write_heartbeat",
]

Status = Literal["ok", "warn", "fail"]

#: The message header celeryredis stamps at publish, holding the send time in epoch seconds.
SENT_AT_HEADER: Final = "celeryredis_sent_at"

_RANK: Final[Mapping[str, int]] = {"ok": 0, "warn": 1, "fail": 2}
#: A heartbeat key lives this many intervals after the last beat.
TTL_INTERVALS: Final = 3
#: Workers in the index that stopped beating are reported as lost for this long.
_LOST_WINDOW: Final = 3600.0
_INDEX_TTL: Final = 86400
_DEFAULT_SEP: Final = _kombu_compat.DEFAULT_SEP
_DEFAULT_STEPS: Final = _kombu_compat.DEFAULT_PRIORITY_STEPS


def _worst(statuses: Iterable[Status]) -> Status:
    worst: Status = "ok"
    for status in statuses:
        if _RANK[status] > _RANK[worst]:
            worst = status
    return worst


def stall_after(interval: float) -> float:
    """Seconds without a completed poll of Redis after which a worker counts as stalled.

    Three heartbeat intervals plus 2 s: an idle worker's BRPOP returns every second
    (kombu's ``brpop_timeout``), so a live one is never near it.
    """
    return TTL_INTERVALS * interval + 2.0


@dataclass(frozen=True)
class HealthPart:
    """One part of a health report.

    Attributes:
        name: ``broker``, ``backend``, ``redis``, ``memory``, ``workers``, ``queues``,
            ``dead_letters`` or ``worker:<name>``.
        status: ``ok``, ``warn`` or ``fail``.
        reason: One line saying why (secrets redacted).
        latency_s: Round-trip time of the part's Redis call, where there is one.
        details: JSON-serialisable facts behind the status.
    """

    name: str
    status: Status
    reason: str
    latency_s: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "latency_s": self.latency_s,
            "details": dict(self.details),
        }


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
            :func:`celeryredis.health.stall_after` seconds).
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


@dataclass(frozen=True)
class HealthReport:
    """The result of :func:`check_health`.

    Attributes:
        status: The worst status of the parts.
        parts: Each checked part with its status and reason.
        workers: Live workers by heartbeat.
        queues: Queue depths.
        checked_at: When the check ran (epoch seconds).
        duration_s: How long it took.
    """

    status: Status
    parts: tuple[HealthPart, ...]
    workers: tuple[WorkerHeartbeat, ...] = ()
    queues: tuple[QueueDepth, ...] = ()
    checked_at: float = 0.0
    duration_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 for ok, 1 for warn, 2 for fail (what ``celeryredis check`` exits with)."""
        return _RANK[self.status]

    def part(self, name: str) -> HealthPart:
        """The part called ``name``.

        Raises:
            KeyError: No such part.
        """
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "checked_at": self.checked_at,
            "duration_s": self.duration_s,
            "parts": [p.to_dict() for p in self.parts],
            "workers": [w.to_dict() for w in self.workers],
            "queues": [q.to_dict() for q in self.queues],
        }

    def to_json(self) -> str:
        """The report as JSON text (secrets redacted)."""
        return redact_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))


# -- heartbeats ------------------------------------------------------------------------------


def write_heartbeat(
    client: redis.Redis, conf: Mapping[str, Any], payload: Mapping[str, Any], interval: float
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


def remove_heartbeat(client: redis.Redis, conf: Mapping[str, Any], hostname: str) -> None:
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


def _read_one(client: redis.Redis, conf: Mapping[str, Any], name: str) -> WorkerHeartbeat | None:
    pipe = client.pipeline(transaction=False)
    pipe.get(heartbeat_key(conf, name))
    pipe.pttl(heartbeat_key(conf, name))
    raw, pttl = pipe.execute()
    return None if raw is None else _heartbeat_from(raw, int(pttl))


def read_heartbeats(
    client: redis.Redis, conf: Mapping[str, Any]
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


def _match(name: str, candidates: Iterable[str]) -> list[str]:
    if "@" in name:
        return [name]
    return sorted(c for c in candidates if c.split("@", 1)[0] == name)


def check_worker(app: Celery, name: str, *, timeout: float = 5.0) -> HealthPart:
    """Liveness of one worker from its heartbeat (for a Kubernetes exec probe).

    Args:
        app: The app.
        name: The worker's node name (``celery@host``), or the part before ``@``.
        timeout: Socket timeout of each Redis call, in seconds.

    Returns:
        A part named ``worker:<name>``: ``ok`` while the worker beats and polls Redis
        (or is busy with every prefetch slot taken); ``fail`` when Redis cannot be
        reached, the heartbeat key has expired (the worker is dead, frozen or
        reconnecting), the worker has not completed a poll of Redis for
        :func:`celeryredis.health.stall_after` seconds, or a short ``name`` matches
        more than one recent worker.
    """
    conf = app.conf
    try:
        client = new_redis(app, timeout=timeout)
        try:
            started = time.monotonic()
            found = _match(name, (_text(n) for n in client.zrange(workers_key(conf), 0, -1)))
            beat = _read_one(client, conf, found[0]) if len(found) == 1 else None
            latency = time.monotonic() - started
        finally:
            client.close()
    except redis.RedisError as exc:
        return HealthPart(
            f"worker:{name}", "fail", f"broker Redis {_failure(exc, 'broker_url')}", None, {}
        )
    if len(found) > 1:
        return HealthPart(
            f"worker:{name}",
            "fail",
            f"{name!r} matches {', '.join(found)}: give the full name@host",
            latency,
            {"matches": found},
        )
    if beat is None:
        return HealthPart(
            f"worker:{name}",
            "fail",
            "no heartbeat: the worker is not running, frozen, or not connected to Redis "
            f"(its key expires {TTL_INTERVALS} heartbeat intervals after the last beat)",
            latency,
            {},
        )
    details = beat.to_dict()
    if beat.state == "stalled":
        return HealthPart(
            f"worker:{beat.hostname}",
            "fail",
            f"alive but not consuming: no completed poll of Redis for {beat.poll_age_s:.1f} s",
            latency,
            details,
        )
    what = "busy (every prefetch slot taken)" if beat.state == "busy" else "consuming"
    return HealthPart(
        f"worker:{beat.hostname}",
        "ok",
        f"{what}; last beat {beat.beat_age_s:.1f} s ago, {beat.tasks_done} task(s) done",
        latency,
        details,
    )


# -- queues ----------------------------------------------------------------------------------


def _transport(conf: Mapping[str, Any]) -> tuple[str, str, tuple[int, ...], str]:
    options = conf.get("broker_transport_options") or {}
    steps = tuple(int(s) for s in options.get("priority_steps") or _DEFAULT_STEPS)
    return (
        str(options.get("global_keyprefix") or ""),
        str(options.get("sep") or _DEFAULT_SEP),
        steps,
        str(options.get("unacked_key") or "unacked"),
    )


def _bound_queues(client: redis.Redis, conf: Mapping[str, Any]) -> set[str]:
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


def _queue_names(app: Celery, workers: Sequence[WorkerHeartbeat], client: redis.Redis) -> list[str]:
    names = {str(app.conf.task_default_queue or "celery")}
    names.update(_bound_queues(client, app.conf))
    with contextlib.suppress(Exception):  # a host's odd task_queues must not break a probe
        names.update(str(name) for name in app.amqp.queues)
    for worker in workers:
        names.update(worker.queues)
    return sorted(names)


def _sent_at(raw: Any) -> float | None:
    try:
        message = json.loads(_text(raw))
        value = (message.get("headers") or {}).get(SENT_AT_HEADER)
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _unacked_by_queue(client: redis.Redis, app: Celery, key: str) -> dict[str, int]:
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


def inspect_queues(
    app: Celery,
    queues: Sequence[str] | None = None,
    *,
    client: redis.Redis | None = None,
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
        One :class:`celeryredis.health.QueueDepth` per queue, sorted by name.
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
        pipe = client.pipeline(transaction=False)
        for name in names:
            for step in steps:
                key = _kombu_compat.queue_key(keyprefix, name, step, sep)
                pipe.llen(key)
                pipe.lrange(key, first, last)
        replies = pipe.execute()
        unacked = _unacked_by_queue(client, app, keyprefix + unacked_key)
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


# -- check_health ----------------------------------------------------------------------------


def _error(exc: BaseException) -> str:
    return redact_text(f"{type(exc).__name__}: {exc}")


def _failure(exc: BaseException, setting: str) -> str:
    """``refused the app: <cause>; <fix>`` or ``unreachable: <cause>`` (see ``_errors``)."""
    diagnosis = classify(exc)
    verb = "refused the app" if diagnosis.permanent else "unreachable"
    return f"{verb}: {describe(diagnosis, setting)}"


def _ping(client: redis.Redis) -> float:
    started = time.monotonic()
    client.ping()
    return time.monotonic() - started


def _backend_part(app: Celery, timeout: float) -> HealthPart:
    url = app.conf.result_backend
    if not url:
        return HealthPart("backend", "ok", "no result backend configured")
    try:
        parsed = parse_redis_url(str(url))
    except ValueError:
        return HealthPart("backend", "ok", "not a Redis result backend; not checked")
    if parsed.geturl() == parse_redis_url(app.conf.broker_url).geturl():
        return HealthPart("backend", "ok", "the broker's Redis (see broker)")
    if parsed.is_cluster:
        return _cluster_backend_part(parsed, timeout)
    try:
        client = new_redis(app, url=parsed.geturl(), timeout=timeout)
        try:
            latency = _ping(client)
        finally:
            client.close()
    except redis.RedisError as exc:
        return HealthPart("backend", "fail", f"result backend {_failure(exc, 'result_backend')}")
    return HealthPart("backend", "ok", f"reachable in {latency * 1000:.1f} ms", latency)


def _cluster_backend_part(url: RedisURL, timeout: float) -> HealthPart:
    """PING every node of a Redis Cluster result backend (``RedisCluster.ping``)."""
    started = time.monotonic()
    try:
        client = cluster_client(url, {"socket_timeout": timeout, "socket_connect_timeout": timeout})
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, RedisClusterException) as exc:
        return HealthPart("backend", "fail", f"result backend cluster unreachable: {_error(exc)}")
    latency = time.monotonic() - started
    return HealthPart("backend", "ok", f"cluster reachable in {latency * 1000:.1f} ms", latency)


def _server_parts(client: redis.Redis) -> list[HealthPart]:
    try:
        info: Mapping[str, Any] = client.info("server") | client.info("memory")
    except redis.ResponseError as exc:  # INFO is in ACL category @dangerous
        reason = f"INFO refused ({_error(exc)}): version, maxmemory-policy and memory unknown"
        return [HealthPart("redis", "warn", reason)]
    version = str(info.get("redis_version", "?"))
    policy = info.get("maxmemory_policy")
    if policy is None:
        try:
            policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
        except redis.ResponseError:  # managed Redis often refuses CONFIG
            policy = None
    details = {"redis_version": version, "maxmemory_policy": policy}
    if policy is None:
        server = HealthPart(
            "redis",
            "warn",
            f"Redis {version}; maxmemory-policy unknown (CONFIG refused)",
            None,
            details,
        )
    elif policy != "noeviction":
        server = HealthPart(
            "redis",
            "warn",
            f"Redis {version}; maxmemory-policy is {policy!r}: Redis may evict queued tasks "
            "and kombu's bindings under memory pressure; set it to 'noeviction'",
            None,
            details,
        )
    else:
        server = HealthPart(
            "redis", "ok", f"Redis {version}; maxmemory-policy noeviction", None, details
        )
    used = int(info.get("used_memory") or 0)
    limit = int(info.get("maxmemory") or 0)
    memory_details = {"used_memory": used, "maxmemory": limit}
    if limit and used >= 0.9 * limit:
        memory = HealthPart(
            "memory",
            "warn",
            f"{used / limit:.0%} of maxmemory used ({used} bytes)",
            None,
            memory_details,
        )
    else:
        share = f", {used / limit:.0%} of maxmemory" if limit else ", no maxmemory set"
        memory = HealthPart("memory", "ok", f"{used} bytes used{share}", None, memory_details)
    return [server, memory]


def _workers_part(live: Sequence[WorkerHeartbeat], lost: Sequence[str]) -> HealthPart:
    stalled = [w.hostname for w in live if w.state == "stalled"]
    details = {"live": [w.hostname for w in live], "stalled": stalled, "lost": list(lost)}
    if not live:
        return HealthPart("workers", "warn", "no worker has a live heartbeat", None, details)
    problems = []
    if stalled:
        problems.append(f"alive but not consuming: {', '.join(stalled)}")
    if lost:
        problems.append(f"stopped beating: {', '.join(lost)}")
    if problems:
        return HealthPart("workers", "warn", "; ".join(problems), None, details)
    return HealthPart("workers", "ok", f"{len(live)} worker(s) consuming", None, details)


def _queues_part(queues: Sequence[QueueDepth]) -> HealthPart:
    orphans = [q.name for q in queues if q.depth and not q.consumers]
    waiting = sum(q.depth for q in queues)
    details = {q.name: q.depth for q in queues}
    if orphans:
        return HealthPart(
            "queues",
            "warn",
            f"messages wait with no live consumer: {', '.join(orphans)}",
            None,
            details,
        )
    return HealthPart("queues", "ok", f"{waiting} message(s) waiting", None, details)


def check_health(
    app: Celery, *, timeout: float = 5.0, queues: Sequence[str] | None = None
) -> HealthReport:
    """Check the broker, the result backend, Redis itself, workers, queues and dead letters.

    Args:
        app: The app.
        timeout: Socket and connect timeout of each Redis call, in seconds.
        queues: Queues to report; by default the app's plus those live workers consume.

    Returns:
        A :class:`HealthReport`; its ``exit_code`` is 0, 1 or 2 for ok, warn, fail.
        Nothing raises for an unreachable Redis: that is a ``fail`` part.
    """
    started = time.monotonic()
    checked_at = time.time()
    conf = app.conf
    parts: list[HealthPart] = []
    live: list[WorkerHeartbeat] = []
    depths: list[QueueDepth] = []
    try:
        client = new_redis(app, timeout=timeout)
    except ValueError as exc:
        client = None
        parts.append(HealthPart("broker", "fail", _error(exc)))
    if client is not None:
        try:
            latency = _ping(client)
            parts.append(
                HealthPart("broker", "ok", f"reachable in {latency * 1000:.1f} ms", latency)
            )
            parts.extend(_server_parts(client))
            live, lost = read_heartbeats(client, conf)
            parts.append(_workers_part(live, lost))
            depths = inspect_queues(app, queues, client=client, workers=live)
            parts.append(_queues_part(depths))
            dead = int(client.xlen(dead_letter_key(conf)))
            parts.append(
                HealthPart(
                    "dead_letters",
                    "warn" if dead else "ok",
                    f"{dead} task(s) in the dead-letter queue"
                    + (" (see `celeryredis dlq list`)" if dead else ""),
                    None,
                    {"depth": dead},
                )
            )
        except redis.RedisError as exc:
            if not parts:
                parts.append(HealthPart("broker", "fail", _failure(exc, "broker_url")))
            else:
                parts.append(
                    HealthPart("broker", "fail", f"failed mid-check: {_failure(exc, 'broker_url')}")
                )
        finally:
            client.close()
    parts.insert(1, _backend_part(app, timeout))
    return HealthReport(
        status=_worst(p.status for p in parts),
        parts=tuple(parts),
        workers=tuple(live),
        queues=tuple(depths),
        checked_at=checked_at,
        duration_s=round(time.monotonic() - started, 4),
    )
