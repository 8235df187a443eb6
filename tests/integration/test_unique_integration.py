"""UniqueTask and token locks against a real redis-server and real worker processes."""

from __future__ import annotations

import gc
import json
import logging
import signal
import sys
import textwrap
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import TaskRevokedError

from celeryredis import DuplicateTaskError
from celeryredis.locks import DeferredRelease, LockRenewer, TokenLock
from tests._util import FAST_PRODUCTION, import_host_module, wait_for

pytestmark = pytest.mark.integration

TASKS = """
import json
import os
import time

import redis

from celeryredis import UniqueTask, make_app

URL = os.environ["UNIQ_URL"]
PRESET = os.environ.get("UNIQ_PRESET", "testing")
SETTINGS = json.loads(os.environ.get("UNIQ_SETTINGS", "{}"))
app = make_app("uniqapp", broker_url=URL, preset=PRESET, **SETTINGS)
client = redis.Redis.from_url(URL)
RUNNING_TTL = float(os.environ.get("UNIQ_RUNNING_TTL", "60"))

MAX = "local n = redis.call('INCR', KEYS[1]) " \\
      "if n > tonumber(redis.call('GET', KEYS[2]) or 0) then redis.call('SET', KEYS[2], n) end " \\
      "return n"


def _run(name, seconds, task_id):
    client.eval(MAX, 2, "running:" + name, "max:" + name)
    try:
        time.sleep(seconds)
    finally:
        client.decr("running:" + name)
    client.rpush("runs:" + name, task_id)


@app.task(base=UniqueTask, bind=True, shared=False, unique_running_ttl=RUNNING_TTL,
          ignore_result=True)
def build(self, report_id, seconds=0.2):
    _run("build", seconds, self.request.id)


@app.task(base=UniqueTask, bind=True, shared=False, unique_running_ttl=RUNNING_TTL,
          ignore_result=True)
def settle(self, n):
    client.rpush("runs:settle", self.request.retries)
    if self.request.retries == 0:
        time.sleep(1.0)  # past the switch to the running TTL (a third of it, here)
        raise self.retry(countdown=4)


@app.task(base=UniqueTask, bind=True, shared=False, unique_mode="until_executing",
          ignore_result=True)
def refresh(self, feed, seconds):
    _run("refresh", seconds, self.request.id)


@app.task(base=UniqueTask, bind=True, shared=False, on_duplicate="raise", unique_on=("user",))
def notify(self, user, text):
    _run("notify", 0.5, self.request.id)


@app.task(base=UniqueTask, bind=True, shared=False, unique_mode="while_executing",
          ignore_result=True)
def exclusive(self, n):
    _run("exclusive", 0.3, self.request.id)


@app.task(base=UniqueTask, bind=True, shared=False, unique_mode="while_executing")
def exclusive_kept(self, n):
    _run("exclusive_kept", 2.0, self.request.id)
    return n


@app.task(base=UniqueTask, bind=True, shared=False, unique_mode="while_executing",
          unique_while_executing="defer", unique_defer_delay=0.2)
def exclusive_deferred(self, n):
    _run("exclusive_deferred", 2.0, self.request.id)
    return n


BEFORE_RETURN = []


@app.task(base=UniqueTask, bind=True, shared=False, ignore_result=True)
def hooked(self, n):
    for hook in BEFORE_RETURN:
        hook()
    return n
"""


def _env(url: str, **extra: str) -> dict[str, str]:
    return {"UNIQ_URL": url, **extra}


def _started(start: Any, directory: Path, url: str, concurrency: int) -> tuple[redis.Redis, Any]:
    """A client of the test's Redis and a ready prefork worker of ``uniqapp``."""
    worker = start("uniqapp", cwd=directory, env=_env(url), concurrency=concurrency)
    worker.wait_ready()
    return redis.Redis.from_url(url), worker


@pytest.fixture
def uniq(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    (tmp_path / "uniqapp.py").write_text(textwrap.dedent(TASKS))
    return import_host_module(monkeypatch, tmp_path, "uniqapp", _env(redis_url))


def test_until_executed_concurrent_publishers_never_overlap(
    uniq: Any, redis_url: str, tmp_path: Path, celery_worker_process: Any
) -> None:
    client, _worker = _started(celery_worker_process, tmp_path, redis_url, 4)
    returned: list[str] = []
    lock = threading.Lock()

    def publish() -> None:
        ids = [uniq.build.delay(42).id for _ in range(500)]
        with lock:
            returned.extend(ids)

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(returned) == 4000
    key = uniq.build.unique_lock_key((42,), {})
    wait_for(lambda: not client.exists(key) and client.llen("celery") == 0, 60, "the last run")
    runs = [r.decode() for r in client.lrange("runs:build", 0, -1)]
    assert int(client.get("max:build")) == 1  # no two executions of one key overlapped
    assert len(runs) == len(set(runs)) >= 1
    assert set(returned) == set(runs)  # every publish returned a task that really ran
    assert len(runs) < 4000


def test_duplicate_raise_carries_the_existing_id_and_time_left(uniq: Any) -> None:
    first = uniq.notify.delay("ann", "hello")
    with pytest.raises(DuplicateTaskError) as excinfo:
        uniq.notify.delay("ann", "a different text")  # unique_on=("user",)
    assert excinfo.value.task_id == first.id
    assert excinfo.value.ttl is not None
    assert excinfo.value.ttl > 0
    assert uniq.notify.delay("bob", "hello").id != first.id
    # The holder itself (a retry, a replay under the same id) is re-entrant.
    assert uniq.notify.apply_async(("ann", "hello"), task_id=first.id).id == first.id


def test_while_executing_drop_keeps_concurrency_at_one(
    uniq: Any, redis_url: str, tmp_path: Path, celery_worker_process: Any
) -> None:
    client, worker = _started(celery_worker_process, tmp_path, redis_url, 4)
    for _ in range(20):
        uniq.exclusive.delay(1)

    def dropped() -> int:
        return worker.log_text().count("] dropped: ")

    wait_for(
        lambda: client.llen("runs:exclusive") + dropped() == 20, 60, "every copy to run or drop"
    )
    assert int(client.get("max:exclusive")) == 1
    assert dropped() >= 1  # copies that arrived while one ran were dropped


def test_a_dropped_copy_ends_revoked_and_a_deferred_one_keeps_its_id(
    uniq: Any, redis_url: str, tmp_path: Path, celery_worker_process: Any
) -> None:
    client, worker = _started(celery_worker_process, tmp_path, redis_url, 2)
    # Two copies start together on the two processes: one runs, the other is dropped,
    # and its caller gets a final state, not STARTED for ever (a new-user trial).
    kept = [uniq.exclusive_kept.delay(1) for _ in range(2)]
    wait_for(lambda: all(r.ready() for r in kept), 30, "both copies to end")
    states = sorted(r.state for r in kept)
    assert states == ["REVOKED", "SUCCESS"], states
    dropped = next(r for r in kept if r.state == "REVOKED")
    with pytest.raises(TaskRevokedError, match=r"dropped: .* runs"):
        dropped.get(timeout=5)
    assert client.llen("runs:exclusive_kept") == 1
    # Deferred copies are published again under their own ids: both callers get results.
    deferred = [uniq.exclusive_deferred.delay(1) for _ in range(2)]
    assert [r.get(timeout=30) for r in deferred] == [1, 1]
    ran = sorted(r.decode() for r in client.lrange("runs:exclusive_deferred", 0, -1))
    assert ran == sorted(r.id for r in deferred)
    assert int(client.get("max:exclusive_deferred")) == 1
    assert "] deferred: " in worker.log_text()


def test_lock_of_a_killed_worker_expires_and_the_task_completes(
    redis_url: str, tmp_path: Path, celery_worker_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = FAST_PRODUCTION
    env = _env(
        redis_url,
        UNIQ_PRESET="production",
        UNIQ_SETTINGS=json.dumps(settings),
        UNIQ_RUNNING_TTL="2",
    )
    (tmp_path / "uniqapp.py").write_text(textwrap.dedent(TASKS))
    uniq = import_host_module(monkeypatch, tmp_path, "uniqapp", env)
    client = redis.Redis.from_url(redis_url)
    w1 = celery_worker_process("uniqapp", cwd=tmp_path, env=env, hostname="w1@%h")
    w1.wait_ready()
    result = uniq.build.delay(7, 3)
    key = uniq.build.unique_lock_key((7, 3), {})
    wait_for(lambda: client.get("running:build") == b"1", 20, "the task to start")
    assert client.get(key) == result.id.encode()
    # The renewer switches the lock to the running TTL within a third of it.
    wait_for(lambda: 0 < client.pttl(key) <= 2000, 5, "the switch to the running TTL")
    killed_at = time.monotonic()
    w1.kill(signal.SIGKILL)
    wait_for(lambda: not client.exists(key), 2 + 3, "the dead worker's lock to expire")
    assert time.monotonic() - killed_at <= 2 + 3
    w2 = celery_worker_process("uniqapp", cwd=tmp_path, env=env, hostname="w2@%h")
    w2.wait_ready()
    # Redelivered after the visibility timeout, it re-takes its own lock and completes.
    wait_for(lambda: client.llen("runs:build") == 1, 40, "the redelivered run")
    assert [r.decode() for r in client.lrange("runs:build", 0, -1)] == [result.id]
    wait_for(lambda: not client.exists(key), 10, "the lock's release")


def test_the_lock_is_held_across_a_retry_with_its_queue_ttl(
    redis_url: str, tmp_path: Path, celery_worker_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """until_executed: switched to the running TTL (2 s) while it runs, back to the queue
    TTL when it retries (countdown 4 s, past the running TTL), released at the end."""
    env = _env(redis_url, UNIQ_RUNNING_TTL="2")
    (tmp_path / "uniqapp.py").write_text(textwrap.dedent(TASKS))
    uniq = import_host_module(monkeypatch, tmp_path, "uniqapp", env)
    client = redis.Redis.from_url(redis_url)
    worker = celery_worker_process("uniqapp", cwd=tmp_path, env=env)
    worker.wait_ready()
    result = uniq.settle.delay(1)
    key = uniq.settle.unique_lock_key((1,), {})
    wait_for(lambda: 0 < client.pttl(key) <= 2000, 10, "the switch to the running TTL")
    wait_for(lambda: client.pttl(key) > 2000, 10, "the retry's claim with the queue TTL")
    deadline = time.monotonic() + 20
    while client.llen("runs:settle") < 2:  # the 4 s countdown: the lock must stay held
        assert client.get(key) == result.id.encode(), "the lock expired during the retry"
        assert time.monotonic() < deadline, "the retry did not run"
        time.sleep(0.05)
    wait_for(lambda: not client.exists(key), 10, "the release after the retry ran")
    assert [int(r) for r in client.lrange("runs:settle", 0, -1)] == [0, 1]
    assert client.exists(key) == 0


def test_release_by_a_non_owner_is_refused_and_renewal_outlives_the_ttl(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    mine = TokenLock(client, "t:lock", "owner-a", ttl=1.0)
    theirs = TokenLock(client, "t:lock", "owner-b", ttl=1.0)
    assert mine.acquire().acquired
    state = theirs.acquire()
    assert (state.acquired, state.holder) == (False, "owner-a")
    assert theirs.release() is False
    assert theirs.extend() is False
    assert mine.holder() == "owner-a"
    renewer = LockRenewer()
    renewer.add(mine)
    started = time.monotonic()
    while time.monotonic() - started < 2.5:  # 2.5 x its TTL
        assert mine.holder() == "owner-a", "the renewed lock expired"
        time.sleep(0.05)
    renewer.discard(mine)
    assert mine.release() is True
    assert mine.holder() is None


def test_a_take_switches_the_ttl_and_a_discard_waits_for_one_in_flight(redis_url: str) -> None:
    """``add(take=True)`` re-takes the lock with its own TTL (shortening a queue TTL) a
    moment later; ``discard`` waits for a take in flight, so the release that follows is
    not overtaken by a take that would lock the key again."""
    client = redis.Redis.from_url(redis_url)
    client.set("t:take", "owner", px=3_600_000)  # the queue-time lock (an hour)
    renewer = LockRenewer()
    switched = TokenLock(client, "t:take", "owner", ttl=0.6)  # taken again 0.2 s in
    renewer.add(switched, take=True)
    wait_for(lambda: 0 < client.pttl("t:take") <= 600, 5, "the switch to the running TTL")
    renewer.discard(switched)

    started, proceed = threading.Event(), threading.Event()

    class HeldTake(TokenLock):
        def acquire(self, ttl: float | None = None) -> Any:
            started.set()
            proceed.wait(5)
            return super().acquire(ttl)

    client.set("t:take", "owner", px=3_600_000)
    held = HeldTake(client, "t:take", "owner", ttl=0.6)
    renewer.add(held, take=True)
    assert started.wait(5), "the take never started"
    discarded = threading.Event()
    threading.Thread(target=lambda: (renewer.discard(held), discarded.set())).start()
    assert not discarded.wait(0.3), "discard returned with a take in flight"
    proceed.set()
    assert discarded.wait(5)
    assert held.release() is True
    assert client.exists("t:take") == 0  # nothing took it again after the release


def test_a_deferred_release_returns_without_waiting_for_its_reply(
    redis_server_factory: Any,
) -> None:
    """The release a run ends with is sent, not waited for: it returns while Redis holds
    writes back, and the lock is gone once Redis runs it."""
    client = redis.Redis.from_url(redis_server_factory().url)
    lock = TokenLock(client, "t:deferred", "owner", ttl=60)
    assert lock.acquire().acquired
    releases = DeferredRelease()
    releases.release(lock)  # opens the releasing connection before the pause
    wait_for(lambda: client.exists("t:deferred") == 0, 5, "the first release")
    assert lock.acquire().acquired
    client.client_pause(3000, all=False)  # writes (and scripts) wait 3 s; reads go on
    thread = threading.Thread(target=releases.release, args=(lock,))
    thread.start()
    thread.join(2)
    assert not thread.is_alive(), "release() waited for its reply (Redis held writes for 3 s)"
    assert client.exists("t:deferred") == 1  # sent, not run yet
    # Its thread has ended; its connection must stay open, or Redis (paused) drops the
    # command. collect_all() reads the reply: the release has run when it returns.
    gc.collect()
    releases.collect_all()
    assert client.exists("t:deferred") == 0


def test_a_deferred_release_lost_with_its_connection_is_redone(
    redis_server_factory: Any,
) -> None:
    """A release whose connection died before its reply was read is done again
    (owner-only), so the lock does not wait for its TTL."""
    client = redis.Redis.from_url(redis_server_factory().url)
    first = TokenLock(client, "t:first", "owner", ttl=60)
    second = TokenLock(client, "t:second", "owner", ttl=60)
    assert first.acquire().acquired
    assert second.acquire().acquired
    releases = DeferredRelease()
    releases.release(first)
    wait_for(lambda: client.exists("t:first") == 0, 5, "the first release")
    ids = [c["id"] for c in client.client_list() if c["cmd"] == "eval"]
    assert len(ids) == 1, client.client_list()
    client.client_kill_filter(_id=ids[0])
    releases.release(second)  # reads the first reply, then sends on the dead connection
    releases.collect_all()  # reads the second's reply: the connection failed, a redo
    assert client.exists("t:second") == 0
    assert [c["id"] for c in client.client_list() if c["cmd"] == "eval"] != ids


def test_a_deferred_release_waits_where_threads_are_greenlets(
    redis_server_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under gevent (or eventlet) each task runs in a new greenlet: no connection of its
    own per greenlet, the release waits for its reply as before."""
    patched = types.SimpleNamespace(is_module_patched=lambda name: name == "threading")
    monkeypatch.setitem(sys.modules, "gevent.monkey", patched)
    client = redis.Redis.from_url(redis_server_factory().url)
    lock = TokenLock(client, "t:green", "owner", ttl=60)
    assert lock.acquire().acquired
    DeferredRelease().release(lock)
    assert client.exists("t:green") == 0  # done when release() returned
    assert not [c for c in client.client_list() if c["cmd"] == "eval"]


def test_a_task_whose_lock_cannot_be_released_still_succeeded(
    redis_server_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis gone as the body returns: the release fails, the run is not turned into a
    failure (no ``failed`` record, no retry, no dead letter of a task that ran)."""
    from celery.app.trace import build_tracer

    server = redis_server_factory()
    (tmp_path / "uniqapp.py").write_text(textwrap.dedent(TASKS))
    uniq = import_host_module(monkeypatch, tmp_path, "uniqapp", _env(server.url))
    result = uniq.hooked.delay(7)  # the queue-time lock, taken at publish
    key = uniq.hooked.unique_lock_key((7,), {})
    uniq.BEFORE_RETURN.append(server.stop)
    tracer = build_tracer(uniq.hooked.name, uniq.hooked, app=uniq.app, eager=False)
    request = {
        "id": result.id,
        "task": uniq.hooked.name,
        "delivery_info": {"routing_key": "celery"},
        "hostname": "test@host",
        "args": (7,),
        "kwargs": {},
        "celeryredis_unique_key": key,
    }
    with caplog.at_level(logging.INFO):
        traced = tracer(result.id, (7,), {}, request)
    assert traced.retval == 7
    events = [getattr(r, "event", None) for r in caplog.records if r.name == "celeryredis.task"]
    assert events == ["succeeded"]
    assert any("succeeded but its lock was not released" in r.getMessage() for r in caplog.records)


def test_cli_lists_and_clears_locks(uniq: Any, redis_url: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    first = uniq.notify.delay("carol", "hi")
    env = {**os.environ, **_env(redis_url), "PYTHONPATH": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "celeryredis.cli", "--app", "uniqapp", "locks", *args],
            env=env,
            cwd=tmp_path,
            input="n\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    listed = run("list", "--task", "uniqapp.notify", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["task"], r["held_by"]) for r in rows] == [("uniqapp.notify", first.id)]
    assert run("clear").returncode != 0  # declined at the prompt
    cleared = run("clear", "--task", "uniqapp.notify", "--yes", "--json")
    assert json.loads(cleared.stdout) == {"removed": 1}
    assert json.loads(run("list", "--json").stdout) == []


def test_revoke_releases_the_lock(
    uniq: Any, redis_url: str, tmp_path: Path, celery_worker_process: Any
) -> None:
    client, _worker = _started(celery_worker_process, tmp_path, redis_url, 2)
    result = uniq.build.delay(99, 20)
    key = uniq.build.unique_lock_key((99, 20), {})
    wait_for(lambda: client.get("running:build") == b"1", 20, "the task to start")
    assert client.get(key) == result.id.encode()
    result.revoke(terminate=True)
    wait_for(lambda: not client.exists(key), 15, "the lock's release on revoke")
    assert uniq.build.delay(99, 20).id != result.id  # a new copy is accepted at once


def test_until_executing_unlocks_when_the_task_starts(
    uniq: Any, redis_url: str, tmp_path: Path, celery_worker_process: Any
) -> None:
    client = redis.Redis.from_url(redis_url)
    first = uniq.refresh.delay("news", 2)
    assert uniq.refresh.delay("news", 2).id == first.id  # queued: a duplicate
    worker = celery_worker_process("uniqapp", cwd=tmp_path, env=_env(redis_url), concurrency=2)
    worker.wait_ready()
    wait_for(lambda: client.get("running:refresh") == b"1", 20, "the task to start")
    second = uniq.refresh.delay("news", 2)  # running, no longer queued: accepted
    assert second.id != first.id
    wait_for(lambda: client.llen("runs:refresh") == 2, 30, "both runs")
