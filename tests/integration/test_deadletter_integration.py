"""The dead-letter queue against a real redis-server and a real worker subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from celeryredis import make_app
from celeryredis.deadletter import DeadLetterQueue
from tests._util import import_host_module, wait_for

pytestmark = pytest.mark.integration

SECRET = "hunter2-Secret"

TASKS = """
import os
import signal

import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded

from celeryredis import RetryTask, make_app

URL = os.environ["DLQ_URL"]
app = make_app("dlqapp", broker_url=URL, preset="testing")
client = redis.Redis.from_url(URL)


@app.task(shared=False)
def ok(n):
    client.incr("ok:done")
    return n


@app.task(base=RetryTask, shared=False, max_retries=1, retry_backoff=0.1, retry_jitter=False)
def always_down(password):
    raise ConnectionError("upstream down")


@app.task(base=RetryTask, shared=False, max_retries=3, retry_backoff=0.1, retry_jitter=False)
def flaky_once():
    if client.incr("flaky_once") == 1:
        raise ConnectionError("blip")
    return "ok"


@app.task(shared=False)
def broken(x):
    raise ValueError("bad input %s" % x)


@app.task(shared=False)
def refuse():
    raise Reject("poisoned payload", requeue=False)


@app.task(shared=False, time_limit=2, soft_time_limit=1)
def hang():
    try:
        import time
        time.sleep(10)
    except SoftTimeLimitExceeded:
        import time
        time.sleep(10)


@app.task(shared=False, max_retries=1)
def suicide():
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(shared=False)
def fixable(order_id):
    if not client.get("fixed"):
        raise RuntimeError("bug not fixed yet")
    client.incr("fixable:done")
    return order_id * 2
"""


@pytest.fixture
def dlq_env(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, celery_worker_process: Any
) -> tuple[Any, Any, redis.Redis, DeadLetterQueue]:
    (tmp_path / "dlqapp.py").write_text(textwrap.dedent(TASKS))
    module = import_host_module(monkeypatch, tmp_path, "dlqapp", {"DLQ_URL": redis_url})
    worker = celery_worker_process("dlqapp", cwd=tmp_path, env={"DLQ_URL": redis_url})
    worker.wait_ready(timeout=30)
    return module, worker, redis.Redis.from_url(redis_url), DeadLetterQueue(module.app)


def _by_task_id(dlq: DeadLetterQueue, task_id: str) -> list[Any]:
    return [e for e in dlq.list(1000) if e.task_id == task_id]


def _one_entry(dlq: DeadLetterQueue, task_id: str, timeout: float = 20) -> Any:
    wait_for(lambda: len(_by_task_id(dlq, task_id)) >= 1, timeout, f"a dead letter for {task_id}")
    entries = _by_task_id(dlq, task_id)
    assert len(entries) == 1, entries
    return entries[0]


def test_each_task_failure_path_puts_exactly_one_entry(
    dlq_env: tuple[Any, Any, redis.Redis, DeadLetterQueue],
) -> None:
    module, _worker, _client, dlq = dlq_env
    exhausted = module.always_down.delay(password=SECRET)
    broken = module.broken.delay(7)
    refused = module.refuse.delay()
    hung = module.hang.delay()
    lost = module.suicide.delay()
    recovered = module.flaky_once.delay()
    assert recovered.get(timeout=30) == "ok"

    entry = _one_entry(dlq, exhausted.id)
    assert (entry.reason, entry.attempts, entry.exception_type) == (
        "retries_exhausted",
        2,
        "ConnectionError",
    )
    assert entry.task_name == "dlqapp.always_down"
    assert entry.queue == "celery"
    assert entry.kwargs == {"password": "***"}  # redacted view
    assert entry.original_kwargs == {"password": SECRET}  # replay uses the original
    assert SECRET not in repr(entry) + json.dumps(entry.to_dict())
    assert "Traceback" in entry.traceback
    assert entry.worker

    entry = _one_entry(dlq, broken.id)
    assert (entry.reason, entry.exception_type, entry.exception_message) == (
        "failed",
        "ValueError",
        "bad input 7",
    )
    assert entry.original_args == (7,)

    assert _one_entry(dlq, refused.id).reason == "rejected"
    entry = _one_entry(dlq, hung.id, timeout=30)
    assert (entry.reason, entry.exception_type) == ("time_limit", "TimeLimitExceeded")
    assert entry.queue == "celery"
    entry = _one_entry(dlq, lost.id, timeout=40)
    assert (entry.reason, entry.exception_type) == ("worker_lost", "WorkerLostError")
    assert _by_task_id(dlq, recovered.id) == []  # succeeded on retry: no entry


def test_poison_messages_are_kept_and_the_worker_keeps_consuming(
    dlq_env: tuple[Any, Any, redis.Redis, DeadLetterQueue],
) -> None:
    module, worker, client, dlq = dlq_env
    app = module.app
    poison_ids = []
    with Connection(app.conf.broker_url) as conn, conn.Producer() as producer:
        for i in range(100):
            task_id = str(uuid.uuid4())
            poison_ids.append(task_id)
            headers = {"lang": "py", "task": "dlqapp.ok", "id": task_id, "argsrepr": "()"}
            kind = i % 4
            if kind == 0:  # a task name no worker knows
                app.send_task("dlqapp.nope", args=[i], task_id=task_id)
            elif kind == 1:  # a content type the worker refuses
                app.send_task("dlqapp.ok", args=[i], task_id=task_id, serializer="pickle")
            elif kind == 2:  # a body that cannot be decoded
                producer.publish(
                    b"{not json",
                    routing_key="celery",
                    content_type="application/json",
                    content_encoding="utf-8",
                    headers=headers,
                )
            else:  # arguments that do not match the signature
                app.send_task("dlqapp.ok", args=[i, "extra"], task_id=task_id)
            module.ok.delay(i)
    wait_for(lambda: int(client.get("ok:done") or 0) == 100, 60, "the 100 good tasks")
    wait_for(lambda: len(dlq) == 100, 30, "100 dead letters")
    reasons: dict[str, int] = {}
    for entry in dlq.list(1000):
        reasons[entry.reason] = reasons.get(entry.reason, 0) + 1
    assert reasons == {
        "unknown_task": 25,
        "content_rejected": 25,
        "decode_error": 25,
        "bad_arguments": 25,
    }
    assert {e.task_id for e in dlq.list(1000)} == set(poison_ids)
    assert module.ok.delay(1000).get(timeout=20) == 1000  # still consuming
    assert worker.returncode is None


def test_replay_after_the_fix_runs_to_success_exactly_once(
    dlq_env: tuple[Any, Any, redis.Redis, DeadLetterQueue],
) -> None:
    module, _worker, client, dlq = dlq_env
    failed = module.fixable.delay(21)
    with pytest.raises(RuntimeError):
        failed.get(timeout=20)
    entry = _one_entry(dlq, failed.id)
    assert dlq.replay([entry.id], dry_run=True)[0].id == failed.id
    assert len(dlq) == 1  # a dry run changes nothing
    # Replayed before the fix, it fails again and is dead-lettered again (same task id).
    dlq.replay([entry.id])
    wait_for(lambda: len(dlq) == 1 and dlq.get(entry.id) is None, 20, "the second entry")
    entry = _one_entry(dlq, failed.id)
    client.set("fixed", 1)
    results: list[Any] = []
    barrier = threading.Barrier(2)

    def replay() -> None:
        barrier.wait()
        results.extend(DeadLetterQueue(module.app).replay([entry.id]))

    threads = [threading.Thread(target=replay) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 1  # two concurrent replays: one publish
    assert results[0].id == failed.id  # under the original id
    # A caller asking again for the original id gets the replay's result.
    assert module.app.AsyncResult(failed.id).get(timeout=20) == 42
    assert dlq.get(entry.id) is None
    wait_for(lambda: int(client.get("fixable:done") or 0) >= 1, 10, "the replayed run")
    assert int(client.get("fixable:done")) == 1


def test_the_bound_keeps_the_newest_entries(redis_url: str) -> None:
    app = make_app(
        "bound", broker_url=redis_url, preset="testing", celeryredis_dead_letter_max_len=5
    )
    dlq = DeadLetterQueue(app)
    for i in range(8):
        dlq.add(reason="failed", task_name="t", task_id=f"id-{i}", exception=ValueError(i))
    assert len(dlq) == 5
    assert [e.task_id for e in dlq.list(10)] == [f"id-{i}" for i in range(7, 2, -1)]
    assert dlq.purge(task="t") == 5
    assert len(dlq) == 0


def test_cli_lists_shows_replays_and_purges_without_leaking(
    dlq_env: tuple[Any, Any, redis.Redis, DeadLetterQueue], tmp_path: Path
) -> None:
    module, _worker, _client, dlq = dlq_env
    failed = module.always_down.delay(password=SECRET)
    entry = _one_entry(dlq, failed.id)
    env = {"DLQ_URL": module.URL, "PYTHONPATH": str(tmp_path)}

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", "dlqapp", "redis", *args],
            env={**os.environ, **env},
            cwd=tmp_path,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    listed = run("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["total"] == 1
    assert data["entries"][0]["kwargs"] == {"password": "***"}
    shown = run("dlq", "show", entry.id)
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" in shown.stdout
    refused = run("dlq", "purge", stdin="n\n")
    assert refused.returncode != 0
    assert len(dlq) == 1
    replayed = run("dlq", "replay", entry.id, "--json")
    assert json.loads(replayed.stdout)["task_ids"] == [failed.id]
    purged = run("dlq", "purge", "--yes", "--json")
    assert json.loads(purged.stdout)["removed"] in (0, 1)
    for proc in (listed, shown, refused, replayed, purged):
        assert SECRET not in proc.stdout + proc.stderr
