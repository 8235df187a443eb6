"""Every Redis key name celeryredis writes (the only place they are built).

All keys live in the broker's Redis under one prefix: the broker's
``global_keyprefix`` transport option (if any) followed by ``celeryredis:``, so one
ACL key pattern (``~<global_keyprefix>celeryredis:*``) covers them. Every key has a
TTL or a bound:

- ``{p}celeryredis:dlq`` — stream of dead-lettered tasks, bounded by ``MAXLEN``
  (``celeryredis_dead_letter_max_len``) and ``MINID`` (``celeryredis_dead_letter_max_age``).
- ``{p}celeryredis:lock:{task}:{digest}`` — a unique task's lock (value: the owner's
  task id), with a TTL (``unique_ttl`` while queued, ``unique_running_ttl`` while it
  runs, renewed).
- ``{p}celeryredis:rl:{name}`` — a rate limiter's next slot (GCRA), with a TTL of about
  one burst window.
- ``{p}celeryredis:poison`` — items the reliable transport popped that are not kombu
  messages (capped at 1000); workers move them to the dead-letter queue.
- ``{p}celeryredis:bulk:{batch}:{chunk}`` — written in the same transaction as one chunk
  of a bulk enqueue, so a chunk whose reply was lost can be checked later; a TTL of a day.
  On a Redis Cluster broker a chunk is one transaction per hash slot, and each has its
  marker in that slot: ``{p}celeryredis:bulk:{batch}:{chunk}:{<queue>}`` (the queue's
  hash tag, see ``bulk_marker_key``).
- ``{p}celeryredis:hb:{worker}`` — a worker's heartbeat (JSON: hostname, pid, queues,
  tasks done, age of its last completed poll of Redis), with a TTL of three heartbeat
  intervals (``celeryredis_heartbeat_interval``).
- ``{p}celeryredis:workers`` — sorted set of worker names by their last heartbeat (epoch
  seconds); entries older than an hour are pruned at every beat, and the key expires a
  day after the last beat.
- ``{p}celeryredis:stats`` — hash of event counters for metrics (``retries:{task}``,
  ``rate_limit_deferrals:{task}``, ``duplicate_refusals:{task}``), bounded by the number
  of task names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "NAMESPACE",
    "POISON_NAME",
    "SENT_AT_HEADER",
    "bulk_marker_key",
    "dead_letter_key",
    "hash_tag",
    "heartbeat_key",
    "lock_key",
    "lock_pattern",
    "lock_task_name",
    "poison_key",
    "prefix",
    "rate_limit_key",
    "stats_key",
    "workers_key",
]

#: Our namespace inside the broker's key prefix.
NAMESPACE = "celeryredis:"

#: The message header celeryredis stamps at publish, holding the send time in epoch seconds
#: (read by queue inspection for the oldest message's age).
SENT_AT_HEADER = "celeryredis_sent_at"

#: The poison list's name before kombu's client adds ``global_keyprefix`` (the reliable
#: transport's Redis client adds the prefix itself); :func:`poison_key` has the full key.
POISON_NAME = f"{NAMESPACE}poison"


def prefix(conf: Mapping[str, Any]) -> str:
    """``<global_keyprefix>celeryredis:`` for an app's configuration."""
    options = conf.get("broker_transport_options") or {}
    return f"{options.get('global_keyprefix', '') or ''}{NAMESPACE}"


def dead_letter_key(conf: Mapping[str, Any]) -> str:
    """The dead-letter stream."""
    return f"{prefix(conf)}dlq"


def lock_key(conf: Mapping[str, Any], task_name: str, digest: str) -> str:
    """A unique task's lock."""
    return f"{prefix(conf)}lock:{task_name}:{digest}"


def lock_pattern(conf: Mapping[str, Any], task_name: str | None = None) -> str:
    """A ``SCAN MATCH`` pattern for the locks of one task (or of all tasks)."""
    return f"{prefix(conf)}lock:{task_name + ':' if task_name else ''}*"


def lock_task_name(conf: Mapping[str, Any], key: str) -> str | None:
    """The task name inside lock key ``key`` (see :func:`lock_key`), None for another key."""
    head = f"{prefix(conf)}lock:"
    if not key.startswith(head):
        return None
    task, sep, _digest = key[len(head) :].rpartition(":")
    return task if sep else None


def rate_limit_key(conf: Mapping[str, Any], name: str) -> str:
    """A rate limiter's state."""
    return f"{prefix(conf)}rl:{name}"


def bulk_marker_key(
    conf: Mapping[str, Any], batch_id: str, chunk: int, slot_key: str | None = None
) -> str:
    """The marker of one published chunk of a bulk enqueue.

    With ``slot_key`` (a Redis Cluster broker: one transaction per slot), the marker of
    the part of the chunk in ``slot_key``'s hash slot: it carries that key's hash tag
    (or the whole key, if it has none), so it lands in the same slot.

    Example:
        >>> bulk_marker_key({}, "b1", 0, slot_key="p:{celery}:unacked")
        'celeryredis:bulk:b1:0:{celery}'
    """
    head = f"{prefix(conf)}bulk:{batch_id}:{chunk}"
    if slot_key is None:
        return head
    return f"{head}:{{{hash_tag(slot_key)}}}"


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: its ``{tag}``'s content, else the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def heartbeat_key(conf: Mapping[str, Any], worker: str) -> str:
    """A worker's heartbeat (``worker`` is Celery's node name, ``name@host``)."""
    return f"{prefix(conf)}hb:{worker}"


def workers_key(conf: Mapping[str, Any]) -> str:
    """The index of workers seen by heartbeat (a sorted set scored by last beat)."""
    return f"{prefix(conf)}workers"


def stats_key(conf: Mapping[str, Any]) -> str:
    """The event counters read by the metrics exporter."""
    return f"{prefix(conf)}stats"


def poison_key(conf: Mapping[str, Any]) -> str:
    """The reliable transport's list of popped items that are not kombu messages."""
    return f"{prefix(conf)}poison"
