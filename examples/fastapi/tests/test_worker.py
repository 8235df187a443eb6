"""A real ``celery -A reports worker`` on the throwaway redis-server, end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celeryredis import check_health
from celeryredis.testing import WorkerProcess
from fastapi.testclient import TestClient

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def worker(
    reports: ModuleType, reports_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(
        "reports",
        cwd=PROJECT,
        env={"REDIS_URL": reports_redis_url},
        hostname="reports@%h",
        log_path=tmp_path_factory.mktemp("worker") / "worker.log",
    )
    try:
        process.wait_ready(timeout=45)
        yield process
    finally:
        process.stop()


def wait_status(client: TestClient, task_id: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/reports/{task_id}").json()
        if status["state"] in {"SUCCESS", "FAILURE"}:
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"task {task_id} still {status['state']} after {timeout} s")
        time.sleep(0.1)


def celery_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "reports", *args],
        cwd=PROJECT,
        env={**os.environ, "REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_report_is_built_by_the_worker(worker: WorkerProcess, client: TestClient) -> None:
    task_id = client.post("/reports/12").json()["task_id"]
    status = wait_status(client, task_id)
    assert status == {"state": "SUCCESS", "report": {"customer_id": 12, "lines": 120}}
    worker.wait_for_log(
        rf"task reports\.tasks\.build_report\[{task_id}\] succeeded in ", timeout=10
    )


def test_a_refresh_runs_once_and_then_can_be_queued_again(
    worker: WorkerProcess, client: TestClient
) -> None:
    first = client.post("/dashboards/13/refresh").json()["task_id"]
    assert wait_status(client, first)["report"] == "dashboard of customer 13 refreshed"
    again = client.post("/dashboards/13/refresh").json()["task_id"]
    assert again != first
    assert wait_status(client, again)["state"] == "SUCCESS"


def test_celery_redis_config_json(worker: WorkerProcess, reports_redis_url: str) -> None:
    done = celery_cli(reports_redis_url, "redis", "config", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["setting"]: row for row in json.loads(done.stdout)}
    assert rows["broker_url"]["value"] == reports_redis_url
    assert rows["broker_url"]["source"] == "env:REDIS_URL"
    assert rows["task_time_limit"] == {
        "setting": "task_time_limit",
        "value": 60,
        "source": "argument",
        "reason": "",
    }


def test_celery_redis_check(
    worker: WorkerProcess, reports: ModuleType, reports_redis_url: str
) -> None:
    deadline = time.monotonic() + 30
    while check_health(reports.celery_app).status != "ok":
        if time.monotonic() > deadline:
            pytest.fail(f"not healthy after 30 s: {check_health(reports.celery_app).to_dict()}")
        time.sleep(0.2)
    done = celery_cli(reports_redis_url, "redis", "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"reports@\S+\s+consuming", done.stdout), done.stdout
