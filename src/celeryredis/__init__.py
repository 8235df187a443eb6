"""celeryredis: Celery on Redis, production-grade by default.

Build an ordinary :class:`celery.Celery` app wired for Redis with
:func:`make_app`, or apply the same presets and checks to an app you already
build with :func:`configure`; see what was set, and why, with :func:`explain`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# First: refuse a Celery, kombu or redis-py outside the supported range, by name.
from celeryredis import _celery_compat, _kombu_compat  # noqa: F401
from celeryredis.app import ExplainRow, configure, explain, make_app
from celeryredis.bulk import BulkDuplicateError, BulkPublishError, enqueue_many
from celeryredis.deadletter import DeadLetter, DeadLetterError, DeadLetterQueue
from celeryredis.exceptions import (
    CeleryRedisError,
    ConfigurationError,
    DuplicateTaskError,
    NotDurableError,
    PublishError,
    RedisRefusedError,
    ResultNotStoredError,
)
from celeryredis.health import HealthReport, check_health, check_worker
from celeryredis.log import configure_logging
from celeryredis.presets import Preset, Setting
from celeryredis.queues import inspect_queues
from celeryredis.ratelimit import RateLimiter, rate_limiter
from celeryredis.tasks import RateLimitedTask, RetryTask, Task, UniqueTask
from celeryredis.urls import RedisURL, parse_redis_url

try:
    __version__ = version("celeryredis")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "BulkDuplicateError",
    "BulkPublishError",
    "CeleryRedisError",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterQueue",
    "DuplicateTaskError",
    "ExplainRow",
    "HealthReport",
    "NotDurableError",
    "Preset",
    "PublishError",
    "RateLimitedTask",
    "RateLimiter",
    "RedisRefusedError",
    "RedisURL",
    "ResultNotStoredError",
    "RetryTask",
    "Setting",
    "Task",
    "UniqueTask",
    "__version__",
    "check_health",
    "check_worker",
    "configure",
    "configure_logging",
    "enqueue_many",
    "explain",
    "inspect_queues",
    "make_app",
    "parse_redis_url",
    "rate_limiter",
]
