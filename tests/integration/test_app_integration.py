"""make_app() end to end: a host-style module, a real redis-server, real worker processes."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from celeryredis.presets import PRESETS
from tests._util import FAST_PRODUCTION, import_host_module, wait_for

pytestmark = pytest.mark.integration

SECRET = "Hunter2-integration-pw"

HOSTAPP = """
import os
import time

import redis
from celery import Celery

from celeryredis import make_app

URL = os.environ["HOSTAPP_URL"]
MODE = os.environ["HOSTAPP_MODE"]
SETTINGS = __import__("json").loads(os.environ.get("HOSTAPP_SETTINGS", "{}"))

if MODE == "celery-defaults":
    app = Celery("hostapp", broker=URL, backend=URL)
else:
    app = make_app("hostapp", broker_url=URL, preset=MODE, **SETTINGS)
if os.environ.get("HOSTAPP_BREAK_AFTER_MAKE_APP"):
    # Changed after make_app(): validated when Celery loads the configuration (the
    # worker's CLI does, before the worker starts) and again by the worker's bootstep.
    app.conf.task_soft_time_limit = 10_000


@app.task(ignore_result=False, shared=False)
def add(x, y):
    return x + y


@app.task(ignore_result=False, shared=False)
def slow(marker, seconds):
    client = redis.Redis.from_url(URL)
    client.incr(marker + ":started")
    time.sleep(seconds)
    client.incr(marker + ":done")
    return "done"
"""


@pytest.fixture
def hostapp_dir(tmp_path: Path) -> Path:
    (tmp_path / "hostapp.py").write_text(textwrap.dedent(HOSTAPP))
    return tmp_path


def _load_hostapp(monkeypatch: pytest.MonkeyPatch, directory: Path, env: dict[str, str]) -> Any:
    return import_host_module(monkeypatch, directory, "hostapp", env)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_runs_a_task_in_a_worker_process(
    preset: str,
    redis_url: str,
    hostapp_dir: Path,
    celery_worker_process: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"HOSTAPP_URL": redis_url, "HOSTAPP_MODE": preset}
    hostapp = _load_hostapp(monkeypatch, hostapp_dir, env)
    worker = celery_worker_process("hostapp", cwd=hostapp_dir, env=env)
    worker.wait_ready(timeout=30)
    assert hostapp.add.delay(2, 3).get(timeout=20) == 5


def test_worker_start_up_validation_refuses_settings_changed_after_make_app(
    redis_url: str, hostapp_dir: Path, celery_worker_process: Any
) -> None:
    env = {
        "HOSTAPP_URL": redis_url,
        "HOSTAPP_MODE": "production",
        "HOSTAPP_BREAK_AFTER_MAKE_APP": "1",
    }
    worker = celery_worker_process("hostapp", cwd=hostapp_dir, env=env)
    deadline = time.monotonic() + 30
    while worker.returncode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.returncode not in (None, 0)
    log = worker.log_text()
    assert "soft-limit-not-below-hard" in log
    assert "task_soft_time_limit=10000 from app.conf.update" in log  # where it came from
    assert "ready." not in log


def _kill_mid_task(
    mode: str,
    settings: dict[str, Any],
    redis_url: str,
    hostapp_dir: Path,
    celery_worker_process: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Any, Any, redis.Redis, str]:
    env = {
        "HOSTAPP_URL": redis_url,
        "HOSTAPP_MODE": mode,
        "HOSTAPP_SETTINGS": json.dumps(settings),
    }
    hostapp = _load_hostapp(monkeypatch, hostapp_dir, env)
    client = redis.Redis.from_url(redis_url)
    marker = f"kill-{mode}"
    w1 = celery_worker_process(
        "hostapp", cwd=hostapp_dir, env=env, pool="prefork", hostname="w1@%h"
    )
    w1.wait_ready(timeout=30)
    result = hostapp.slow.delay(marker, 3)
    wait_for(lambda: client.get(marker + ":started") == b"1", 20, "the task to start")
    w1.kill(signal.SIGKILL)  # the whole process group: main process and pool child
    wait_for(lambda: w1.returncode is not None, 10, "worker 1 to die")
    assert client.get(marker + ":done") is None
    return hostapp, result, client, marker


def test_production_loses_no_task_when_its_worker_is_killed(
    redis_url: str,
    hostapp_dir: Path,
    celery_worker_process: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # production uses the reliable transport: the held message has a lease (3 s here).
    settings = FAST_PRODUCTION
    hostapp, result, client, marker = _kill_mid_task(
        "production", settings, redis_url, hostapp_dir, celery_worker_process, monkeypatch
    )
    vt = hostapp.app.conf.broker_transport_options["visibility_timeout"]
    assert vt == 8
    # The message survived the crash: held in kombu's unacked hash, not in the queue.
    assert client.hlen("unacked") == 1
    assert client.llen("celery") == 0
    # Its score is its lease's end minus the visibility timeout (kombu's restore rule
    # "older than now - visibility_timeout" then means "the lease expired").
    ((_tag, score),) = client.zrange("unacked_index", 0, -1, withscores=True)
    # Start the second worker once the lease has expired (a time condition, polled):
    # it restores the message at start-up and runs it.
    wait_for(lambda: time.time() > score + vt, 3 + 5, "the lease to expire")
    w2 = celery_worker_process(
        "hostapp",
        cwd=hostapp_dir,
        env={
            "HOSTAPP_URL": redis_url,
            "HOSTAPP_MODE": "production",
            "HOSTAPP_SETTINGS": json.dumps(settings),
        },
        pool="prefork",
        hostname="w2@%h",
    )
    w2.wait_ready(timeout=30)
    assert result.get(timeout=30) == "done"
    assert client.get(marker + ":done") == b"1"
    wait_for(lambda: client.hlen("unacked") == 0, 10, "the ack")


def test_celery_defaults_lose_the_task_when_its_worker_is_killed(
    redis_url: str,
    hostapp_dir: Path,
    celery_worker_process: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _hostapp, result, client, _marker = _kill_mid_task(
        "celery-defaults", {}, redis_url, hostapp_dir, celery_worker_process, monkeypatch
    )
    # Acked on receipt: nothing in the queue, nothing unacked, no result — gone for good.
    assert client.llen("celery") == 0
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0
    assert result.state == "PENDING"


def test_no_password_leaks_from_a_worker(
    redis_server: Any,
    hostapp_dir: Path,
    celery_worker_process: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = redis_server.client()
    user = f"leaktest{os.getpid()}"
    admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{SECRET}", "~*", "&*", "+@all")
    try:
        url = f"redis://{user}:{SECRET}@127.0.0.1:{redis_server.port}/14"
        env = {"HOSTAPP_URL": url, "HOSTAPP_MODE": "production"}
        hostapp = _load_hostapp(monkeypatch, hostapp_dir, env)
        worker = celery_worker_process("hostapp", cwd=hostapp_dir, env=env)
        worker.wait_ready(timeout=30)
        assert hostapp.add.delay(1, 1).get(timeout=20) == 2
        import celeryredis
        from celeryredis.app import format_explain

        shown = format_explain(celeryredis.explain(hostapp.app)) + repr(
            celeryredis.explain(hostapp.app)
        )
        captured = capsys.readouterr()
        assert SECRET not in worker.log_text()
        assert SECRET not in shown
        assert SECRET not in captured.out + captured.err
    finally:
        admin.execute_command("ACL", "DELUSER", user)
