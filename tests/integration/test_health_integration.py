"""Heartbeats, `check`, `check --worker` and queue inspection against real servers and workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from celeryredis import make_app
from celeryredis.cli import main as cli_main
from celeryredis.deadletter import DeadLetterQueue
from celeryredis.health import check_health, check_worker, inspect_queues
from celeryredis.keys import heartbeat_key
from tests._util import import_host_module, wait_for

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Pa55"
INTERVAL = 1.0
PROBE_TIMEOUT = 2.0

HOSTAPP = """
import os
import time

from celeryredis import make_app

app = make_app(
    "opsapp",
    broker_url=os.environ["OPS_URL"],
    preset="testing",
    celeryredis_heartbeat_interval=float(os.environ.get("OPS_HEARTBEAT", "1")),
    worker_prefetch_multiplier=int(os.environ.get("OPS_PREFETCH", "1")),
)


@app.task(shared=False)
def hold(seconds):
    time.sleep(seconds)


@app.task(shared=False)
def noop():
    return None
"""


@pytest.fixture
def opsapp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    def load(url: str) -> Any:
        (tmp_path / "opsapp.py").write_text(textwrap.dedent(HOSTAPP))
        return import_host_module(monkeypatch, tmp_path, "opsapp", {"OPS_URL": url})

    return load


def _cli(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPS_URL": url, "PYTHONPATH": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "celeryredis.cli", "--app", "opsapp", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _probe_fails_within(app: Any, name: str, deadline: float) -> float:
    """Seconds until `check_worker` fails (polled every 50 ms); fail the test after deadline."""
    started = time.monotonic()
    wait_for(
        lambda: check_worker(app, name, timeout=PROBE_TIMEOUT).status == "fail",
        deadline + 10,
        f"the probe of {name} to fail",
    )
    return time.monotonic() - started


def _polled_lately(part: Any) -> bool:
    age = part.details.get("poll_age_s")
    return bool(part.status == "ok" and age is not None and age < 2 * INTERVAL)


def test_worker_probe_follows_sigstop_sigcont_and_kill(
    redis_server_factory: Any, opsapp: Any, tmp_path: Path, celery_worker_process: Any
) -> None:
    server = redis_server_factory(password=SECRET)
    module = opsapp(server.url)
    worker = celery_worker_process(
        "opsapp", cwd=tmp_path, env={"OPS_URL": server.url}, hostname="probe@%h"
    )
    worker.wait_ready(timeout=30)
    app = module.app
    wait_for(lambda: check_worker(app, "probe").status == "ok", 20, "the first heartbeat")
    full_name = check_worker(app, "probe").details["hostname"]

    ok = _cli(tmp_path, server.url, "check", "--worker", "probe", "--timeout", str(PROBE_TIMEOUT))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "consuming" in ok.stdout

    # Alive but frozen: the process exists, its event loop does not run.
    worker.kill(signal.SIGSTOP)
    took = _probe_fails_within(app, "probe", 3 * INTERVAL + PROBE_TIMEOUT)
    assert took <= 3 * INTERVAL + PROBE_TIMEOUT
    frozen = _cli(tmp_path, server.url, "check", "--worker", "probe", "--json")
    assert frozen.returncode == 2
    assert json.loads(frozen.stdout)["status"] == "fail"
    assert "no heartbeat" in json.loads(frozen.stdout)["reason"]

    worker.kill(signal.SIGCONT)
    assert module.noop.delay().get(timeout=20) is None  # it consumes again
    # A beat written before the loop's first poll after SIGCONT still counts the frozen
    # seconds (and may say "stalled"): wait for one written after a completed poll.
    wait_for(lambda: _polled_lately(check_worker(app, "probe")), 20, "a beat after a fresh poll")
    resumed = _cli(tmp_path, server.url, "check", "--worker", "probe")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    worker.kill(signal.SIGKILL)
    took = _probe_fails_within(app, "probe", 3 * INTERVAL + PROBE_TIMEOUT)
    assert took <= 3 * INTERVAL + PROBE_TIMEOUT
    killed = _cli(tmp_path, server.url, "check", "--worker", "probe")
    assert killed.returncode == 2
    # Once its key expires, the cluster view reports it as lost, not as live.
    wait_for(lambda: check_health(app).workers == (), 3 * INTERVAL + 5, "the key to expire")
    report = check_health(app)
    assert report.part("workers").status == "warn"
    assert report.part("workers").details["lost"] == [full_name]


def test_probe_and_check_fail_when_the_brokers_redis_is_shut_down(
    redis_server_factory: Any, opsapp: Any, tmp_path: Path, celery_worker_process: Any
) -> None:
    server = redis_server_factory(password=SECRET)
    module = opsapp(server.url)
    worker = celery_worker_process(
        "opsapp", cwd=tmp_path, env={"OPS_URL": server.url}, hostname="down@%h"
    )
    worker.wait_ready(timeout=30)
    wait_for(lambda: check_worker(module.app, "down").status == "ok", 20, "the first heartbeat")
    assert _cli(tmp_path, server.url, "check").returncode == 0

    server.stop()
    probe = _cli(tmp_path, server.url, "check", "--worker", "down", "--timeout", "1")
    assert probe.returncode == 2
    assert "unreachable" in probe.stdout
    full = _cli(tmp_path, server.url, "check", "--json", "--timeout", "1")
    assert full.returncode == 2
    report = json.loads(full.stdout)
    assert report["status"] == "fail"
    assert [p["status"] for p in report["parts"] if p["name"] == "broker"] == ["fail"]
    for output in (probe.stdout + probe.stderr, full.stdout + full.stderr):
        assert SECRET not in output
    worker.kill()


def test_queue_depths_are_exact_across_priorities(opsapp: Any, redis_url: str) -> None:
    app = make_app(
        "opsapp-prefixed",
        broker_url=redis_url,
        preset="testing",
        broker_transport_options={"global_keyprefix": "ops:"},
    )

    @app.task(shared=False)
    def noop() -> None:
        return None

    before = time.time()
    noop.apply_async(queue="depthq", priority=0)
    after_first = time.time()
    counts = {0: 4, 4: 3, 7: 2, 9: 1}  # priorities 0-2 -> step 0, 3-5 -> 3, 6-8 -> 6, 9 -> 9
    for priority, count in counts.items():
        for _ in range(count - (1 if priority == 0 else 0)):
            noop.apply_async(queue="depthq", priority=priority)
    client = redis.Redis.from_url(redis_url)
    # A message published by something other than celeryredis: no send-time header.
    client.lpush("ops:depthq", json.dumps({"body": "", "headers": {}, "properties": {}}))

    (queue,) = inspect_queues(app, ["depthq"])
    now = time.time()
    assert queue.name == "depthq"
    assert dict(queue.by_priority) == {0: 5, 3: 3, 6: 2, 9: 1}
    assert queue.depth == 11
    assert queue.unacked == 0
    assert queue.unknown_age == 1
    assert queue.scanned == 11
    assert queue.oldest_age_s is not None
    assert now - after_first - 0.01 <= queue.oldest_age_s <= now - before + 0.01
    # The un-prefixed queue of the same name is another queue.
    assert client.llen("depthq") == 0


def test_unacked_counts_match_a_worker_holding_prefetched_messages(
    opsapp: Any, redis_url: str, tmp_path: Path, celery_worker_process: Any
) -> None:
    module = opsapp(redis_url)
    worker = celery_worker_process(
        "opsapp",
        cwd=tmp_path,
        env={"OPS_URL": redis_url, "OPS_PREFETCH": "4"},
        hostname="holder@%h",
        concurrency=1,
    )
    worker.wait_ready(timeout=30)
    for _ in range(6):
        module.hold.delay(25)

    def held() -> bool:
        (queue,) = inspect_queues(module.app, ["celery"])
        return queue.unacked == 4 and queue.depth == 2

    wait_for(held, 30, "the worker to hold 4 messages (1 running + 3 prefetched)")
    (queue,) = inspect_queues(module.app, ["celery"])
    assert queue.consumers == (check_worker(module.app, "holder").details["hostname"],)

    def busy() -> bool:
        report = check_health(module.app)
        return bool(report.workers) and report.workers[0].state == "busy"

    wait_for(busy, 15, "the heartbeat to show the worker busy")
    beat = check_health(module.app).workers[0]
    assert (beat.active, beat.reserved, beat.saturated) == (1, 3, True)
    assert check_worker(module.app, "holder").status == "ok"  # busy is alive

    result = CliRunner().invoke(cli_main, ["--app", "opsapp", "queues", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert (rows["celery"]["depth"], rows["celery"]["unacked"]) == (2, 4)
    worker.kill()


def test_every_cli_command_prints_parseable_json_and_no_password(
    redis_server_factory: Any, opsapp: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis_server_factory(password=SECRET)
    module = opsapp(server.url)
    entry = DeadLetterQueue(module.app).add(
        reason="failed",
        task_name="opsapp.noop",
        task_id="t-1",
        args=(),
        kwargs={"password": "hunter2-Secret"},
        exception=ValueError(f"cannot reach {server.url}"),
    )
    module.noop.apply_async(queue="celery", priority=3)
    client = server.client()
    client.set(f"celeryredis:lock:opsapp.noop:{'0' * 8}", "t-9", px=60_000)

    runner = CliRunner()
    commands = [
        ["config", "--json"],
        ["check", "--json"],
        ["check", "--worker", "nobody", "--json"],
        ["queues", "--json"],
        ["dlq", "list", "--json"],
        ["dlq", "show", entry, "--json"],
        ["dlq", "replay", "--all", "--dry-run", "--json"],
        ["locks", "list", "--json"],
        ["locks", "clear", "--yes", "--json"],
        ["dlq", "purge", "--yes", "--json"],
    ]
    for args in commands:
        result = runner.invoke(cli_main, ["--app", "opsapp", *args])
        assert result.exit_code in {0, 1, 2}, (args, result.output)
        json.loads(result.stdout)
        assert SECRET not in result.output, args
        assert "hunter2-Secret" not in result.output, args
        if "--yes" not in args:  # the same command as a readable table
            table = runner.invoke(cli_main, ["--app", "opsapp", *args[:-1]])
            assert table.exit_code in {0, 1, 2}, (args, table.output)
            assert SECRET not in table.output, args
            assert "hunter2-Secret" not in table.output, args

    # Celery's own command line finds the same group through the entry point.
    env = {**os.environ, "OPS_URL": server.url, "PYTHONPATH": str(tmp_path)}
    celery = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "opsapp", "redis", "queues", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert celery.returncode == 0, celery.stderr
    assert {row["name"] for row in json.loads(celery.stdout)} == {"celery"}
    assert SECRET not in celery.stdout + celery.stderr


def test_heartbeat_key_lives_three_intervals(
    opsapp: Any, redis_url: str, tmp_path: Path, celery_worker_process: Any
) -> None:
    module = opsapp(redis_url)
    worker = celery_worker_process(
        "opsapp", cwd=tmp_path, env={"OPS_URL": redis_url}, hostname="ttl@%h"
    )
    worker.wait_ready(timeout=30)
    wait_for(lambda: check_worker(module.app, "ttl").status == "ok", 20, "the first heartbeat")
    name = check_worker(module.app, "ttl").details["hostname"]
    client = redis.Redis.from_url(redis_url)
    key = heartbeat_key(module.app.conf, name)
    assert 0 < client.pttl(key) <= 3 * INTERVAL * 1000
    beat = json.loads(client.get(key))
    assert beat["hostname"] == name
    assert beat["pid"] == worker.pid
    assert beat["queues"] == ["celery"]
    module.noop.delay().get(timeout=20)
    wait_for(lambda: json.loads(client.get(key) or "{}").get("tasks_done") == 1, 10, "tasks_done 1")
    worker.stop()  # a clean shutdown deletes the heartbeat and the index entry
    assert not client.exists(key)
    assert check_health(module.app).part("workers").details["lost"] == []


def _demo_json(tmp_path: Path, redis_url: str | None = None) -> tuple[dict[str, Any], str]:
    """``celeryredis demo --json`` on ``redis_url`` (a throwaway server if None): (JSON, tour)."""
    env = {k: v for k, v in os.environ.items() if k not in {"CELERY_BROKER_URL", "REDIS_URL"}}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    proc = subprocess.run(
        [sys.executable, "-m", "celeryredis.cli", "demo", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_demo_json_prints_its_summary_and_check_report_on_stdout(tmp_path: Path) -> None:
    result, tour = _demo_json(tmp_path)
    assert len(result["summary"]) == 7
    assert result["check_exit_code"] == 0
    assert result["check"]["status"] == "ok"
    assert "throwaway redis-server" in tour  # the tour itself went to stderr


def test_demo_on_a_redis_of_your_own_leaves_only_your_keys(
    redis_server_factory: Any, tmp_path: Path
) -> None:
    server = redis_server_factory()
    url = f"{server.url.rsplit('/', 1)[0]}/3"
    client = redis.Redis.from_url(url)
    client.set("yours:key", "kept")
    client.lpush("celeryredis:dlq", "yours")  # an unprefixed dead-letter queue of your own
    result, tour = _demo_json(tmp_path, url)
    assert "Using the Redis configured in $REDIS_URL" in tour
    # Its dead-letter step saw its own queue only, and every key it wrote is gone.
    assert result["check"]["status"] == "ok"
    assert sorted(client.keys("*")) == [b"celeryredis:dlq", b"yours:key"]
    assert client.lrange("celeryredis:dlq", 0, -1) == [b"yours"]
    client.close()


def test_check_tolerates_an_acl_user_without_info_or_config(
    redis_server_factory: Any, opsapp: Any
) -> None:
    server = redis_server_factory(password=SECRET)
    server.client().acl_setuser(
        "app", enabled=True, passwords=[f"+{SECRET}"], keys=["*"], channels=["*"],
        commands=["+@all", "-@dangerous"],
    )  # fmt: skip
    url = f"redis://app:{SECRET}@127.0.0.1:{server.port}/0"
    module = opsapp(url)
    report = check_health(module.app, timeout=2)
    assert report.part("broker").status == "ok"
    assert report.part("redis").status == "warn"
    assert "INFO refused" in report.part("redis").reason
    assert report.part("dead_letters").status == "ok"
    assert report.exit_code == 1  # a warning, not a failure
    assert SECRET not in report.to_json()
