"""Fixtures of the FastAPI example.

``reports.celery`` reads ``$REDIS_URL`` when it is imported, so the session imports the
project only after pointing ``$REDIS_URL`` at a throwaway redis-server (celeryredis's
``redis_server`` fixture): the tests never talk to a Redis they did not start.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

import pytest
from celeryredis.testing import RedisServer
from fastapi.testclient import TestClient


@pytest.fixture(scope="session")
def reports_redis_url(redis_server: RedisServer) -> str:
    return redis_server.url_for(1)


@pytest.fixture(scope="session")
def reports(reports_redis_url: str) -> Iterator[ModuleType]:
    """``reports.main``, imported with ``$REDIS_URL`` on the throwaway server."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REDIS_URL", reports_redis_url)
        env.delenv("CELERY_BROKER_URL", raising=False)
        env.delenv("CELERY_RESULT_BACKEND", raising=False)
        main = importlib.import_module("reports.main")
        assert main.celery_app.conf.broker_url == reports_redis_url, (
            "reports was imported before the REDIS_URL fixture; import it through `reports`"
        )
        yield main


@pytest.fixture
def client(reports: ModuleType) -> Iterator[TestClient]:
    with TestClient(reports.api) as client:
        yield client


@pytest.fixture
def eager(reports: ModuleType) -> Iterator[None]:
    """Run tasks in the test process for one test."""
    conf = reports.celery_app.conf
    conf.task_always_eager, conf.task_store_eager_result = True, True
    try:
        yield
    finally:
        conf.task_always_eager, conf.task_store_eager_result = False, False
