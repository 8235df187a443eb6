"""Point the project's Celery app at a throwaway redis-server for every test.

celeryredis's pytest plugin starts the server (``redis_server``); pytest-django's
``settings`` fixture sets ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND``, which the
app reads through ``config_from_object("django.conf:settings", namespace="CELERY")``.
"""

from __future__ import annotations

from typing import Any

import pytest
from celeryredis.testing import RedisServer

from proj.celery import app

#: The database the tests and the worker share on the session's redis-server.
DB = 1


@pytest.fixture(scope="session")
def celery_redis_url(redis_server: RedisServer) -> str:
    """The throwaway server's URL for the broker and the result backend."""
    return redis_server.url_for(DB)


@pytest.fixture(autouse=True)
def celery_on_test_redis(settings: Any, celery_redis_url: str) -> str:
    """Every test talks to the throwaway server, never to a Redis it did not start."""
    settings.CELERY_BROKER_URL = celery_redis_url
    settings.CELERY_RESULT_BACKEND = celery_redis_url
    for name in ("broker_url", "result_backend"):
        if app.conf[name] != celery_redis_url:
            pytest.fail(
                f"app.conf.{name} is {app.conf[name]!r} after settings.CELERY_{name.upper()} "
                f"= {celery_redis_url!r}: the Celery app does not follow the Django settings, "
                "so this test would talk to another Redis"
            )
    return celery_redis_url
