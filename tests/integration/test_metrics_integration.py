"""The Prometheus exporter and the worker's metrics step against real servers and a worker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celeryredis.deadletter import DeadLetterQueue
from celeryredis.health import check_worker
from tests._util import import_host_module, wait_for

pytestmark = pytest.mark.integration

HOSTAPP = """
import os

import redis

from celeryredis import RateLimitedTask, RetryTask, UniqueTask, make_app
from celeryredis.metrics import install

app = make_app("metricsapp", broker_url=os.environ["METRICS_URL"], preset="testing")
store = redis.Redis.from_url(os.environ["METRICS_URL"])
if os.environ.get("METRICS_PORT"):
    install(app, port=int(os.environ["METRICS_PORT"]))


@app.task(base=RetryTask, shared=False, max_retries=3, retry_backoff=0.1, retry_jitter=False)
def flaky():
    if store.incr("flaky-attempts") == 1:
        raise ConnectionError("blip")
    return "ok"


@app.task(base=UniqueTask, shared=False, on_duplicate="ignore", unique_mode="until_executing")
def once(n):
    return n


@app.task(base=RateLimitedTask, shared=False, distributed_rate_limit="2/s")
def limited(n):
    return n


@app.task(shared=False)
def idle():
    return None
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_exporter_and_worker_step_serve_queue_dlq_heartbeat_and_event_metrics(
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    celery_worker_process: Any,
) -> None:
    (tmp_path / "metricsapp.py").write_text(textwrap.dedent(HOSTAPP))
    module = import_host_module(monkeypatch, tmp_path, "metricsapp", {"METRICS_URL": redis_url})
    worker_port = _free_port()
    worker = celery_worker_process(
        "metricsapp",
        cwd=tmp_path,
        env={"METRICS_URL": redis_url, "METRICS_PORT": str(worker_port)},
        hostname="metrics@%h",
        concurrency=2,
    )
    worker.wait_ready(timeout=30)
    wait_for(lambda: check_worker(module.app, "metrics").status == "ok", 20, "a heartbeat")

    assert module.flaky.delay().get(timeout=20) == "ok"  # one retry
    first = module.once.apply_async((1,), countdown=5)
    assert module.once.delay(1) is None  # one duplicate refused
    assert [r.get(timeout=30) for r in [module.limited.delay(i) for i in range(4)]] == [
        0,
        1,
        2,
        3,
    ]
    for priority in (0, 0, 5, 9):
        module.idle.apply_async(queue="idle", priority=priority)
    DeadLetterQueue(module.app).add(reason="failed", task_name="x", task_id="t1")

    env = {**os.environ, "METRICS_URL": redis_url, "PYTHONPATH": str(tmp_path)}
    argv = [sys.executable, "-m", "celeryredis.cli", "--app", "metricsapp", "exporter"]
    with subprocess.Popen(
        [*argv, "--port", "0", "--json"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as exporter:
        try:
            assert exporter.stdout is not None
            lines = [exporter.stdout.readline() for _ in range(3)]
            url = json.loads("".join(lines))["url"]
            metrics = _scrape(url)
        finally:
            exporter.terminate()
            exporter.wait(10)

    assert metrics[("celeryredis_up", ())] == 1
    depth = {
        dict(labels)["priority"]: value
        for (name, labels), value in metrics.items()
        if name == "celeryredis_queue_depth" and dict(labels)["queue"] == "idle"
    }
    assert depth == {"0": 2, "3": 1, "6": 0, "9": 1}
    assert metrics[("celeryredis_dead_letters", ())] == 1
    assert metrics[("celeryredis_retries_total", (("task", "metricsapp.flaky"),))] == 1
    assert metrics[("celeryredis_duplicate_refusals_total", (("task", "metricsapp.once"),))] == 1
    assert (
        metrics[("celeryredis_rate_limit_deferrals_total", (("task", "metricsapp.limited"),))] >= 1
    )
    worker_name = check_worker(module.app, "metrics").details["hostname"]
    assert (
        0 <= metrics[("celeryredis_worker_heartbeat_age_seconds", (("worker", worker_name),))] < 3
    )
    assert metrics[("celeryredis_workers", (("state", "consuming"),))] == 1
    assert first.get(timeout=20) == 1

    # The same collector, served by the worker's own bootstep.
    from_worker = _scrape(f"http://127.0.0.1:{worker_port}/metrics")
    assert from_worker[("celeryredis_up", ())] == 1
    assert from_worker[("celeryredis_dead_letters", ())] == 1
