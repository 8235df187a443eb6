"""Event counters kept in Redis for metrics: retries, rate-limit deferrals, duplicate refusals.

The task bases count these events where they happen (in whichever process that is: a
publisher refusing a duplicate, a pool process retrying), so one exporter reading
Redis sees the whole fleet. Counting is best effort: a failed ``HINCRBY`` is logged
at debug level and never fails the task or the publish.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, Literal

from celery import Celery

from celeryredis.connection import REDIS_ERRORS, Client, get_redis
from celeryredis.keys import stats_key

__all__ = ["EVENTS", "Event", "count", "read_counts"]

logger = logging.getLogger(__name__)

Event = Literal["retries", "rate_limit_deferrals", "duplicate_refusals"]

#: The events counted.
EVENTS: Final[tuple[Event, ...]] = ("retries", "rate_limit_deferrals", "duplicate_refusals")


def count(app: Celery, event: Event, task_name: str | None) -> None:
    """Add one ``event`` for ``task_name`` (best effort)."""
    try:
        get_redis(app).hincrby(stats_key(app.conf), f"{event}:{task_name or '?'}", 1)
    except (*REDIS_ERRORS, ValueError) as exc:
        logger.debug("celeryredis: %s not counted: %s", event, exc)


def read_counts(client: Client, conf: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """Every counter: ``{(event, task_name): count}``."""
    counts: dict[tuple[str, str], int] = {}
    for field, value in client.hgetall(stats_key(conf)).items():
        name = field.decode() if isinstance(field, bytes) else str(field)
        event, _, task = name.partition(":")
        counts[(event, task)] = int(value)
    return counts
