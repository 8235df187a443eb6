"""A real ``celery -A make_celery worker`` on a throwaway redis-server, end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celeryredis import check_health
from celeryredis.testing import RedisServer, WorkerProcess
from flask import Flask
from flask.testing import FlaskClient

from conftest import shop_config
from shop import create_app

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def worker_url(redis_server: RedisServer) -> str:
    return redis_server.url_for(15)


@pytest.fixture(scope="module")
def worker(worker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """``celery -A make_celery worker`` with ``REDIS_URL`` from the environment."""
    process = WorkerProcess(
        "make_celery",
        cwd=PROJECT,
        env={"REDIS_URL": worker_url},
        hostname="shop@%h",
        log_path=tmp_path_factory.mktemp("worker") / "worker.log",
    )
    try:
        process.wait_ready(timeout=45)
        yield process
    finally:
        process.stop()


@pytest.fixture
def live_app(worker_url: str) -> Flask:
    return create_app(shop_config(worker_url, task_ignore_result=True))


@pytest.fixture
def live_client(live_app: Flask) -> FlaskClient:
    return live_app.test_client()


def wait_result(client: FlaskClient, result_id: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = client.get(f"/tasks/result/{result_id}").get_json()
        if result["ready"]:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"task {result_id} not ready after {timeout} s")
        time.sleep(0.1)


def celery_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "make_celery", *args],
        cwd=PROJECT,
        env={**os.environ, "REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_add_runs_on_the_worker(worker: WorkerProcess, live_client: FlaskClient) -> None:
    result_id = live_client.post("/tasks/add", data={"a": 20, "b": 22}).get_json()["result_id"]
    assert wait_result(live_client, result_id) == {"ready": True, "successful": True, "value": 42}
    worker.wait_for_log(rf"task shop\.tasks\.add\[{result_id}\] succeeded in ", timeout=10)


def test_the_worker_pushes_the_flask_app_context(
    worker: WorkerProcess, live_client: FlaskClient
) -> None:
    result_id = live_client.post("/tasks/thank", data={"name": "Grace"}).get_json()["result_id"]
    assert wait_result(live_client, result_id)["value"] == "Thanks for your order, Grace!"
    result_id = live_client.post("/tasks/ship/8", data={"carrier_timeouts": 1}).get_json()[
        "result_id"
    ]
    assert (
        wait_result(live_client, result_id)["value"] == "order 8 shipped from shop after 1 retries"
    )
    worker.wait_for_log(rf"task shop\.tasks\.ship\[{result_id}\] retrying", timeout=10)


def test_celery_redis_config_json(worker: WorkerProcess, worker_url: str) -> None:
    done = celery_cli(worker_url, "redis", "config", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["setting"]: row for row in json.loads(done.stdout)}
    assert rows["broker_url"]["value"] == worker_url
    assert rows["broker_url"]["source"] == "app config"
    assert rows["task_ignore_result"]["source"] == "app config"
    assert rows["task_acks_late"]["source"] == "preset:production"
    # The delivery guarantees in force, where an operator reads them: the reliable
    # transport (leases) from the preset, and durable publish off (no WAIT) by default.
    assert rows["celeryredis_transport"]["value"] == "reliable"
    assert rows["celeryredis_transport"]["source"] == "preset:production"
    assert rows["celeryredis_durable_publish"]["value"] == 0
    assert "durable publish off" in rows["celeryredis_durable_publish"]["reason"]


def test_celery_redis_check(worker: WorkerProcess, worker_url: str, live_app: Flask) -> None:
    celery_app = live_app.extensions["celery"]
    deadline = time.monotonic() + 30
    while check_health(celery_app).status != "ok":
        if time.monotonic() > deadline:
            pytest.fail(f"not healthy after 30 s: {check_health(celery_app).to_dict()}")
        time.sleep(0.2)
    done = celery_cli(worker_url, "redis", "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"shop@\S+\s+consuming", done.stdout), done.stdout
