"""Health checks: is this app healthy, is this one worker consuming?

- :func:`celeryredis.check_health` answers "is this app healthy?" for probes and operators: the
  broker's and the result backend's Redis reachable (with round-trip latency), the
  Redis version, ``maxmemory-policy`` and memory use, the workers seen by heartbeat
  (:mod:`celeryredis.heartbeat`), queue depths (:mod:`celeryredis.queues`) and the
  dead-letter depth. Each part has a status (``ok``, ``warn``, ``fail``) and a reason;
  the report is JSON-serialisable.
- :func:`celeryredis.check_worker` answers "is this one worker consuming?" from its heartbeat key,
  for a Kubernetes exec liveness probe.

The heartbeat store and queue inspection live in their own modules; their names are
re-exported here for the callers of earlier versions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import redis
from celery import Celery
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from celeryredis._errors import classify, describe
from celeryredis.cluster import cluster_client
from celeryredis.connection import Client, new_redis
from celeryredis.heartbeat import (
    TTL_INTERVALS,
    WorkerHeartbeat,
    read_heartbeat,
    read_heartbeats,
    remove_heartbeat,
    stall_after,
    write_heartbeat,
)
from celeryredis.keys import SENT_AT_HEADER, dead_letter_key, workers_key
from celeryredis.queues import QueueDepth, inspect_queues
from celeryredis.urls import RedisURL, parse_redis_url, redact_text, redis_url_of_broker

__all__ = [
    "SENT_AT_HEADER",
    "TTL_INTERVALS",
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


_RANK: Final[Mapping[str, int]] = {"ok": 0, "warn": 1, "fail": 2}


def _worst(statuses: Iterable[Status]) -> Status:
    worst: Status = "ok"
    for status in statuses:
        if _RANK[status] > _RANK[worst]:
            worst = status
    return worst


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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        :func:`celeryredis.heartbeat.stall_after` seconds, or a short ``name`` matches
        more than one recent worker.
    """
    conf = app.conf
    try:
        client = new_redis(app, timeout=timeout)
        try:
            started = time.monotonic()
            found = _match(name, (_text(n) for n in client.zrange(workers_key(conf), 0, -1)))
            beat = read_heartbeat(client, conf, found[0]) if len(found) == 1 else None
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


# -- check_health ----------------------------------------------------------------------------


def _error(exc: BaseException) -> str:
    return redact_text(f"{type(exc).__name__}: {exc}")


def _failure(exc: BaseException, setting: str) -> str:
    """``refused the app: <cause>; <fix>`` or ``unreachable: <cause>`` (see ``_errors``)."""
    diagnosis = classify(exc)
    verb = "refused the app" if diagnosis.permanent else "unreachable"
    return f"{verb}: {describe(diagnosis, setting)}"


def _ping(client: Client) -> float:
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
    if parsed.geturl() == parse_redis_url(redis_url_of_broker(app.conf.broker_url)).geturl():
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


def _server_parts(client: Client) -> list[HealthPart]:
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


def _master_part(node: Any) -> HealthPart:
    """One master of a cluster broker: PING, role, version, memory, ``maxmemory-policy``."""
    name = f"master {node.host}:{node.port}"
    try:
        latency = _ping(node.redis_connection)
        info: Mapping[str, Any] = (
            node.redis_connection.info("server")
            | node.redis_connection.info("memory")
            | node.redis_connection.info("replication")
        )
    except redis.ResponseError as exc:  # INFO is in ACL category @dangerous
        return HealthPart(name, "warn", f"PING ok, INFO refused ({_error(exc)})")
    except redis.RedisError as exc:
        return HealthPart(name, "fail", f"unreachable: {_failure(exc, 'broker_url')}")
    version = str(info.get("redis_version", "?"))
    role = str(info.get("role", "?"))
    policy = info.get("maxmemory_policy")
    used = int(info.get("used_memory") or 0)
    limit = int(info.get("maxmemory") or 0)
    details = {
        "host": node.host,
        "port": node.port,
        "role": role,
        "redis_version": version,
        "maxmemory_policy": policy,
        "used_memory": used,
        "maxmemory": limit,
        "connected_slaves": int(info.get("connected_slaves") or 0),
    }
    share = f" ({used / limit:.0%} of maxmemory)" if limit else ""
    reason = (
        f"PING {latency * 1000:.1f} ms; role {role}; Redis {version}; {used} bytes used{share}; "
        f"maxmemory-policy {policy}"
    )
    problems = []
    if role != "master":
        problems.append("not a master (the slot map is changing?)")
    if policy is not None and policy != "noeviction":
        problems.append("set maxmemory-policy to 'noeviction' (Redis may evict queued tasks)")
    if limit and used >= 0.9 * limit:
        problems.append("90% or more of maxmemory used")
    status: Status = "warn" if problems else "ok"
    return HealthPart(name, status, "; ".join([reason, *problems]), latency, details)


def _cluster_parts(client: RedisCluster) -> list[HealthPart]:
    """One part per master of a cluster broker (each asked on its own connection)."""
    try:
        masters = sorted(client.get_primaries(), key=lambda n: (n.host, n.port))  # type: ignore[no-untyped-call]
    except (redis.RedisError, RedisClusterException) as exc:
        return [HealthPart("masters", "fail", f"cluster slot map unknown: {_error(exc)}")]
    parts = [_master_part(node) for node in masters]
    ok = sum(1 for part in parts if part.status != "fail")
    summary = HealthPart(
        "masters",
        "ok" if ok == len(parts) and parts else "fail",
        f"{ok} of {len(parts)} master(s) answer",
        None,
        {"masters": [f"{n.host}:{n.port}" for n in masters]},
    )
    return [summary, *parts]


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
            if isinstance(client, RedisCluster):
                parts.extend(_cluster_parts(client))
            else:
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
        except (redis.RedisError, RedisClusterException) as exc:
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
