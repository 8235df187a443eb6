"""Fixtures of the Flask example: the app factory on a throwaway redis-server.

celeryredis's pytest plugin gives ``redis_server`` / ``redis_url``; every app the
tests build talks to that server, never to a Redis they did not start.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shop import create_app


def shop_config(broker_url: str, **celery: Any) -> dict[str, Any]:
    return {"TESTING": True, "CELERY": {"broker_url": broker_url, **celery}}


@pytest.fixture
def app(redis_url: str) -> Flask:
    """Eager mode: tasks run in the test process; results are stored on the test Redis."""
    return create_app(shop_config(redis_url, task_always_eager=True, task_store_eager_result=True))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
