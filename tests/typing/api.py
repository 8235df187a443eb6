"""Type-checked usage of the public API (mypy --strict runs over this file; never executed)."""

from __future__ import annotations

from celery import Celery

import celeryredis
from celeryredis import ConfigurationError, ExplainRow, RedisURL, configure, explain, make_app
from celeryredis.presets import PRODUCTION, Preset

app: Celery = make_app(
    "billing",
    broker_url="redis://localhost:6379/0",
    preset=["production", {"worker_prefetch_multiplier": 2}],
    include=["billing.tasks"],
    validate={"*": "error", "restore-sweep-slow": "warn"},
    task_time_limit=300,
)
rows: list[ExplainRow] = explain(app)
first_source: str = rows[0].source
fast: Preset = PRODUCTION.with_("fast", worker_prefetch_multiplier=4)
other: Celery = configure(Celery("django_proj"), preset=fast)
url: RedisURL = celeryredis.parse_redis_url("redis://localhost:6379/0")
hosts: tuple[tuple[str, int], ...] = url.hosts
try:
    make_app("bad", preset="nope")
except ConfigurationError as exc:
    setting: str | None = exc.setting
