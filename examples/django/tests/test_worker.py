"""(c), (d), (e): a real ``celery -A proj worker`` on a throwaway redis-server.

The worker runs with the project's own settings (``proj.settings``), its broker and
result backend given by the environment as in production; the tests publish through
the same app, pointed at the same server by ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celeryredis import DeadLetterQueue, check_health
from celeryredis.testing import WorkerProcess

from orders.tasks import cancel, charge, rebuild_invoice, send_confirmation
from proj.celery import app

PROJECT = Path(__file__).resolve().parent.parent


def project_env(url: str) -> dict[str, str]:
    """The environment of a production process of the project: its settings, its Redis."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "proj.settings",
        "CELERY_BROKER_URL": url,
        "CELERY_RESULT_BACKEND": url,
    }


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def worker(celery_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``celery -A proj worker``, started once for this module, stopped at its end."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = WorkerProcess(
        "proj",
        cwd=PROJECT,
        env=project_env(celery_redis_url),
        hostname="orders@%h",
        log_path=log,
    )
    try:
        process.wait_ready(timeout=45)
        yield process
    finally:
        process.stop()


@pytest.fixture(autouse=True)
def not_eager(settings: Any) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False


def celery_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "proj", *args],
        cwd=PROJECT,
        env=project_env(url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_shared_task_runs_on_the_worker(worker: WorkerProcess) -> None:
    result = send_confirmation.delay(21)
    assert result.get(timeout=20) == "confirmation sent for order 21"


def test_retry_task_retries_on_the_worker(worker: WorkerProcess) -> None:
    result = charge.delay(22, gateway_timeouts=1)
    assert result.get(timeout=30) == "order 22 charged after 1 retries"
    worker.wait_for_log(rf"task orders\.tasks\.charge\[{result.id}\] retrying", timeout=10)


def test_unique_task_refuses_a_duplicate_while_the_first_is_queued(worker: WorkerProcess) -> None:
    first = rebuild_invoice.apply_async((23,), countdown=1)
    second = rebuild_invoice.delay(23)
    assert second.id == first.id
    assert first.get(timeout=20) == "invoice of order 23 rebuilt"
    # Released once it ran (the release is sent before the result is stored): the same
    # call publishes a new task again.
    again: list[Any] = []
    wait_for(
        lambda: again.append(rebuild_invoice.delay(23)) or again[-1].id != first.id,
        10,
        "the lock's release after the first run",
    )
    assert again[-1].get(timeout=20) == "invoice of order 23 rebuilt"


def test_shared_tasks_emit_the_lifecycle_records(worker: WorkerProcess) -> None:
    result = send_confirmation.delay(24)
    result.get(timeout=20)
    # One line per success at INFO: the `succeeded` record, in place of Celery's own.
    worker.wait_for_log(
        rf"task orders\.tasks\.send_confirmation\[{result.id}\] succeeded in ", timeout=10
    )


def test_a_failing_shared_task_reaches_the_dead_letter_queue(worker: WorkerProcess) -> None:
    dlq = DeadLetterQueue(app)
    try:
        result = cancel.delay(25)
        with pytest.raises(Exception, match="order 25 does not exist"):
            result.get(timeout=20)
        worker.wait_for_log(
            rf"task orders\.tasks\.cancel\[{result.id}\] failed: OrderNotFound: "
            r"order 25 does not exist",
            timeout=10,
        )
        wait_for(
            lambda: any(e.task_id == result.id for e in dlq.list(task="orders.tasks.cancel")),
            10,
            "the failed task in the dead-letter queue",
        )
        [entry] = [e for e in dlq.list(task="orders.tasks.cancel") if e.task_id == result.id]
        assert entry.reason == "failed"
        assert list(entry.args) == [25]
        assert entry.exception_type == "OrderNotFound"
    finally:
        dlq.purge(task="orders.tasks.cancel")


def test_celery_redis_config_json(worker: WorkerProcess, celery_redis_url: str) -> None:
    done = celery_cli(celery_redis_url, "redis", "config", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["setting"]: row for row in json.loads(done.stdout)}
    assert rows["broker_url"]["value"] == celery_redis_url
    assert rows["broker_url"]["source"] == "app config"
    assert rows["task_time_limit"]["value"] == 120
    assert rows["task_time_limit"]["source"] == "app config"
    assert rows["task_acks_late"]["source"] == "preset:production"
    # The delivery guarantees in force, where an operator reads them: the reliable
    # transport (leases) from the preset, and durable publish off (no WAIT) by default.
    assert rows["celeryredis_transport"]["value"] == "reliable"
    assert rows["celeryredis_transport"]["source"] == "preset:production"
    assert rows["celeryredis_durable_publish"]["value"] == 0
    assert "durable publish off" in rows["celeryredis_durable_publish"]["reason"]


def test_celery_redis_check(worker: WorkerProcess, celery_redis_url: str) -> None:
    wait_for(lambda: check_health(app).status == "ok", 30, "a healthy report with the worker")
    done = celery_cli(celery_redis_url, "redis", "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"orders@\S+\s+consuming", done.stdout), done.stdout
