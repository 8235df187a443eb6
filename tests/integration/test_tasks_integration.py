"""Task and RetryTask in a real worker subprocess, read back from its JSON log lines."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import TimeLimitExceeded

from tests._util import import_host_module, wait_for

pytestmark = pytest.mark.integration

SECRET = "hunter2-Secret"

TASKS = '''
import logging
import os
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import setup_logging

from celeryredis import RetryTask, configure_logging, make_app

URL = os.environ["TASKS_URL"]
app = make_app("tasksapp", broker_url=URL, preset="testing")
client = redis.Redis.from_url(URL)


@setup_logging.connect
def _logging(**kwargs):
    configure_logging(json=True, level="INFO")


class AuditMixin:
    """A host mixin overriding the same hooks; cooperative super() keeps ours."""

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        client.incr("mixin:on_retry")
        super().on_retry(exc, task_id, args, kwargs, einfo)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        client.incr("mixin:on_failure")
        super().on_failure(exc, task_id, args, kwargs, einfo)


class Recording(AuditMixin, RetryTask):  # mixins first, as with any cooperative hierarchy
    def on_retries_exhausted(self, exc, task_id, args, kwargs):
        client.incr("exhausted:" + self.name)


@app.task(base=Recording, shared=False, retry_backoff=0.3, retry_jitter=False,
          retry_backoff_max=2.0, max_retries=5)
def flaky(key):
    n = client.incr(key)
    if n <= 2:
        raise ConnectionError("transient failure %d" % n)
    return n


@app.task(base=Recording, shared=False)
def broken():
    raise ValueError("not transient")


@app.task(base=Recording, shared=False, max_retries=2, retry_backoff=0.1, retry_jitter=False)
def always_down():
    raise TimeoutError("upstream down")


@app.task(shared=False)
def chatty(user, password):
    logging.getLogger("thirdparty.sdk").info("calling the sdk for %s", user)
    return user


@app.task(shared=False)
def refuse():
    from celery.exceptions import Reject
    raise Reject("bad payload", requeue=False)


@app.task(shared=False)
def sleepy(seconds):
    client.incr("sleepy:started")
    time.sleep(seconds)


@app.task(shared=False, time_limit=2, soft_time_limit=1)
def hang():
    try:
        time.sleep(10)
    except SoftTimeLimitExceeded:
        time.sleep(10)
'''


@pytest.fixture
def tasks_env(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, celery_worker_process: Any
) -> tuple[Any, Any, redis.Redis]:
    (tmp_path / "tasksapp.py").write_text(textwrap.dedent(TASKS))
    module = import_host_module(monkeypatch, tmp_path, "tasksapp", {"TASKS_URL": redis_url})
    worker = celery_worker_process(
        "tasksapp", cwd=tmp_path, env={"TASKS_URL": redis_url}, concurrency=2
    )
    worker.wait_for_log(r"ready\.", timeout=30)
    return module, worker, redis.Redis.from_url(redis_url)


def _records(worker: Any) -> list[dict[str, Any]]:
    out = []
    for line in worker.log_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _lifecycle(worker: Any, task_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in _records(worker)
        if r.get("name") == "celeryredis.task" and r.get("task_id") == task_id
    ]


def _events(records: list[dict[str, Any]]) -> list[str]:
    return [r["event"] for r in records]


def test_transient_error_twice_then_success(tasks_env: tuple[Any, Any, redis.Redis]) -> None:
    module, worker, client = tasks_env
    result = module.flaky.delay("flaky-counter")
    assert result.get(timeout=30) == 3
    wait_for(lambda: "succeeded" in _events(_lifecycle(worker, result.id)), 10, "succeeded")
    records = _lifecycle(worker, result.id)
    assert "started" not in _events(records)  # a DEBUG record; the worker logs at INFO
    assert _events(records).count("succeeded") == 1
    assert "failed" not in _events(records)
    retrying = [r for r in records if r["event"] == "retrying"]
    assert len(retrying) == 2
    assert [r["retries"] for r in retrying] == [0, 1]
    delays = [r["delay_s"] for r in retrying]
    assert delays[0] < delays[1]
    assert all(0.1 <= d <= 2.0 for d in delays)
    assert delays == pytest.approx([0.3, 0.6], abs=0.05)
    for r in retrying:
        assert r["exc_type"] == "ConnectionError"
        assert r["exc_message"].startswith("transient failure")
        assert r["args_summary"] == "('flaky-counter')"
    success = next(r for r in records if r["event"] == "succeeded")
    assert success["task_name"] == "tasksapp.flaky"
    assert success["queue"] == "celery"
    assert success["retries"] == 2
    assert success["duration_s"] >= 0
    assert success["worker"].startswith("celery@") or "@" in success["worker"]
    assert success["root_id"] == result.id
    assert client.get("exhausted:tasksapp.flaky") is None
    assert int(client.get("mixin:on_retry")) == 2  # the host mixin's hook ran as well


def test_non_retryable_error_fails_once_with_traceback(
    tasks_env: tuple[Any, Any, redis.Redis],
) -> None:
    module, worker, client = tasks_env
    result = module.broken.delay()
    with pytest.raises(ValueError, match="not transient"):
        result.get(timeout=30)
    wait_for(lambda: "failed" in _events(_lifecycle(worker, result.id)), 10, "failed")
    records = _lifecycle(worker, result.id)
    assert _events(records) == ["failed"]
    failed = records[0]
    assert failed["args_summary"] == "()"
    assert failed["exc_type"] == "ValueError"
    assert failed["exc_message"] == "not transient"
    assert "Traceback" in failed["exc_info"]
    assert client.get("exhausted:tasksapp.broken") is None
    assert int(client.get("mixin:on_failure")) == 1
    # One record per failure: Celery's own "raised unexpected" line, with the same
    # traceback, is not written beside ours.
    assert not [
        r
        for r in _records(worker)
        if r.get("name") == "celery.app.trace" and result.id in r["message"]
    ]


def test_exhausted_retries_call_the_hook_once(tasks_env: tuple[Any, Any, redis.Redis]) -> None:
    module, worker, client = tasks_env
    result = module.always_down.delay()
    with pytest.raises(TimeoutError):
        result.get(timeout=30)
    wait_for(lambda: "failed" in _events(_lifecycle(worker, result.id)), 10, "failed")
    records = _lifecycle(worker, result.id)
    assert _events(records).count("retrying") == 2
    assert _events(records).count("failed") == 1
    assert int(client.get("exhausted:tasksapp.always_down")) == 1


def test_publish_redacts_sensitive_arguments_in_reprs(
    tasks_env: tuple[Any, Any, redis.Redis],
) -> None:
    module, worker, client = tasks_env
    # Published without a worker first, to read what goes over the wire.
    worker.stop()
    module.chatty.delay("ann", password=SECRET)
    (raw,) = client.lrange("celery", 0, -1)
    headers = json.loads(raw)["headers"]
    assert "***" in headers["kwargsrepr"]
    assert SECRET not in headers["kwargsrepr"] + headers["argsrepr"]


def test_context_reaches_third_party_records_and_a_success_is_one_line(
    tasks_env: tuple[Any, Any, redis.Redis],
) -> None:
    module, worker, _client = tasks_env
    result = module.chatty.delay("ann", password=SECRET)
    assert result.get(timeout=30) == "ann"
    wait_for(lambda: "succeeded" in _events(_lifecycle(worker, result.id)), 10, "succeeded")
    records = _records(worker)
    sdk = [r for r in records if r.get("name") == "thirdparty.sdk"]
    assert len(sdk) == 1
    assert sdk[0]["task_id"] == result.id
    assert sdk[0]["task_name"] == "tasksapp.chatty"
    # Our `succeeded` record says what Celery's own "succeeded in" line would: Celery's
    # line for this task is dropped, so a success is one line.
    (success,) = [r for r in _lifecycle(worker, result.id) if r["event"] == "succeeded"]
    assert success["message"].startswith(f"task tasksapp.chatty[{result.id}] succeeded in ")
    assert success["message"].endswith("s: 'ann'")
    assert success["return_value"] == "'ann'"
    assert not [
        r for r in records if r.get("name") == "celery.app.trace" and result.id in r["message"]
    ]
    # The task's Celery line "received" (main process) is still there.
    assert any(result.id in r["message"] and "received" in r["message"] for r in records)
    assert SECRET not in worker.log_text()


def test_hard_time_limit_logs_exactly_one_failure(tasks_env: tuple[Any, Any, redis.Redis]) -> None:
    module, worker, _client = tasks_env
    result = module.hang.delay()
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=30)
    wait_for(lambda: "failed" in _events(_lifecycle(worker, result.id)), 10, "failed")
    # Let the main process finish with the killed job: Celery fires task_failure a second
    # time on that path. A later task completing means those events are behind us.
    assert module.chatty.delay("later", password="x").get(timeout=30) == "later"
    records = _lifecycle(worker, result.id)
    assert _events(records).count("failed") == 1
    failed = next(r for r in records if r["event"] == "failed")
    assert failed["exc_type"] == "TimeLimitExceeded"
    assert failed["queue"] == "celery"
    assert failed["duration_s"] == pytest.approx(2.0)


def test_reject_and_revoke_are_logged_once(tasks_env: tuple[Any, Any, redis.Redis]) -> None:
    module, worker, client = tasks_env
    rejected = module.refuse.delay()
    wait_for(lambda: "rejected" in _events(_lifecycle(worker, rejected.id)), 15, "rejected")
    record = next(r for r in _lifecycle(worker, rejected.id) if r["event"] == "rejected")
    assert record["exc_type"] == "Reject"
    assert record["requeue"] is False

    running = module.sleepy.delay(20)
    wait_for(lambda: client.get("sleepy:started") == b"1", 15, "sleepy to start")
    running.revoke(terminate=True)
    wait_for(lambda: "revoked" in _events(_lifecycle(worker, running.id)), 15, "revoked")
    events = _events(_lifecycle(worker, running.id))
    assert events.count("revoked") == 1
    revoked = next(r for r in _lifecycle(worker, running.id) if r["event"] == "revoked")
    assert revoked["terminated"] is True
    assert revoked["task_name"] == "tasksapp.sleepy"


def test_worker_start_refuses_a_backoff_cap_above_the_budget(
    celeryredis_app: Any, inprocess_worker: Any
) -> None:
    from celeryredis import ConfigurationError, RetryTask

    @celeryredis_app.task(base=RetryTask, shared=False, retry_backoff_max=4.0)
    def job() -> None: ...

    celeryredis_app.finalize(auto=True)  # accepted: the testing budget is 5 s
    celeryredis_app.conf.celeryredis_retry_backoff_max = 2.0  # changed after definition
    with pytest.raises(ConfigurationError, match="task-retry-backoff"):
        inprocess_worker(celeryredis_app)


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_context_under_solo_and_threads_pools(
    celeryredis_app: Any, inprocess_worker: Any, pool: str
) -> None:
    import logging

    seen: list[tuple[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), getattr(record, "task_id", None)))

    sdk = logging.getLogger("thirdparty.pooltest")
    handler = Keep()
    sdk.addHandler(handler)
    sdk.setLevel(logging.INFO)
    try:

        @celeryredis_app.task(shared=False)
        def talk(n: int) -> int:
            sdk.info("inside %s", n)
            return n

        inprocess_worker(celeryredis_app, pool=pool, concurrency=2)
        results = [talk.delay(n) for n in range(4)]
        assert [r.get(timeout=20) for r in results] == [0, 1, 2, 3]
        sdk.info("after")
    finally:
        sdk.removeHandler(handler)
    inside = {message: task_id for message, task_id in seen if message.startswith("inside")}
    assert inside == {f"inside {n}": results[n].id for n in range(4)}  # no leak between tasks
    assert dict(seen)["after"] in (None, "")
