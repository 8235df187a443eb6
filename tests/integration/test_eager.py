"""Eager mode (task_always_eager, apply()): the task bases keep off Redis, nothing hangs.

Real Celery apps from ``make_app`` (production preset, the default), real redis-servers
(a running one for DBSIZE, a stopped one for a closed port) and a loopback listener that
counts the TCP connections made to it: no mock of Redis or Celery.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from celery import Celery, signals
from celery.exceptions import Reject

from celeryredis import (
    DeadLetterQueue,
    DuplicateTaskError,
    RateLimitedTask,
    RetryTask,
    UniqueTask,
    enqueue_many,
    make_app,
)
from celeryredis.stats import read_counts

pytestmark = pytest.mark.integration

#: The issue's bound for one eager call: a hang check, not a speed goal.
HANG_BOUND_S = 1.0


class ConnectionCounter:
    """A loopback TCP listener that counts the connections made to it and closes them."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def stop(self) -> int:
        """Stop, count what is still waiting in the backlog, and return the total."""
        if self._stop.is_set():
            return self.accepted
        self._stop.set()
        self._thread.join(5)
        self.sock.setblocking(False)
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                break
            self.accepted += 1
            conn.close()
        self.sock.close()
        return self.accepted


@pytest.fixture
def counter() -> Iterator[ConnectionCounter]:
    listener = ConnectionCounter()
    try:
        yield listener
    finally:
        listener.stop()


@pytest.fixture
def stopped_url(redis_server_factory: Callable[..., Any]) -> str:
    """The URL of a redis-server that was started and then stopped: a closed port."""
    server = redis_server_factory()
    url: str = server.url
    server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    return url


@dataclass
class Host:
    """An app with one task of every base, as a host project would declare them."""

    app: Celery
    tasks: dict[str, Any]
    exhausted: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)


def _host(url: str, **settings: Any) -> Host:
    app = make_app("eagerhost", broker_url=url, **settings)
    host = Host(app, {})

    @app.task(shared=False)
    def plain(x: int) -> int:
        return x

    @app.task(shared=False)
    def boom(x: int) -> None:
        raise ValueError(f"bad input {x}")

    @app.task(shared=False)
    def rejected(x: int) -> None:
        raise Reject("no thanks", requeue=False)

    class Charge(RetryTask):
        def on_retries_exhausted(self, exc: BaseException, task_id: str, *a: Any) -> None:
            host.exhausted.append(task_id)

    # The default backoff (1 s, doubling): eager retries do not wait for it.
    @app.task(base=Charge, bind=True, shared=False, max_retries=3, retry_for=(TimeoutError,))
    def flaky(self: Any, x: int) -> None:
        host.attempts[self.request.id] = self.request.retries + 1
        raise TimeoutError("gateway timed out")

    @app.task(base=RetryTask, bind=True, shared=False, retry_for=(TimeoutError,))
    def second_time(self: Any, x: int) -> str:
        if self.request.retries == 0:
            raise TimeoutError("once")
        return f"ok after {self.request.retries} retry"

    @app.task(base=UniqueTask, shared=False, on_duplicate="raise")
    def until_executed(x: int) -> int:
        return x

    @app.task(base=UniqueTask, shared=False, unique_mode="until_executing")
    def until_executing(x: int) -> int:
        return x

    @app.task(base=UniqueTask, shared=False, unique_mode="while_executing")
    def while_executing(x: int) -> int:
        return x

    @app.task(base=UniqueTask, shared=False)
    def unique_boom(x: int) -> None:
        raise ValueError("unique and failing")

    @app.task(base=RateLimitedTask, shared=False, distributed_rate_limit="1/m")
    def limited(x: int) -> int:
        return x

    host.tasks = {
        name: obj
        for name, obj in locals().items()
        if name
        in {
            "plain",
            "boom",
            "rejected",
            "flaky",
            "second_time",
            "until_executed",
            "until_executing",
            "while_executing",
            "unique_boom",
            "limited",
        }
    }
    return host


#: (task, expected state); the unique and rate-limited ones run twice with the same
#: arguments: no lock refuses the second, no limit defers it.
CALLS = [
    ("plain", "SUCCESS"),
    ("boom", "FAILURE"),
    ("rejected", "REJECTED"),
    ("flaky", "FAILURE"),
    ("second_time", "SUCCESS"),
    ("until_executed", "SUCCESS"),
    ("until_executed", "SUCCESS"),
    ("until_executing", "SUCCESS"),
    ("while_executing", "SUCCESS"),
    ("unique_boom", "FAILURE"),
    ("limited", "SUCCESS"),
    ("limited", "SUCCESS"),
    ("limited", "SUCCESS"),
]


def _run_all(host: Host, how: str) -> dict[str, float]:
    """Call every task eagerly; return the slowest call per task, in seconds."""
    slowest: dict[str, float] = {}
    for name, state in CALLS:
        task = host.tasks[name]
        started = time.monotonic()
        result = task.delay(7) if how == "always_eager" else task.apply((7,))
        elapsed = time.monotonic() - started
        assert result.state == state, (name, result.state, result.result)
        slowest[name] = max(elapsed, slowest.get(name, 0.0))
    return slowest


def _eager(host: Host, how: str) -> None:
    host.app.conf.task_always_eager = how == "always_eager"


@pytest.mark.parametrize("how", ["always_eager", "apply"])
def test_no_base_connects_to_redis_when_running_eagerly(
    counter: ConnectionCounter, how: str
) -> None:
    host = _host(f"redis://127.0.0.1:{counter.port}/0")
    _eager(host, how)
    slowest = _run_all(host, how)
    if how == "always_eager":  # enqueue_many runs each call through apply_async
        results = enqueue_many(host.tasks["until_executed"], [(1,), (1,), (2,)])
        assert [r.get() for r in results] == [1, 1, 2]
    assert counter.stop() == 0
    assert max(slowest.values()) < HANG_BOUND_S, slowest


@pytest.mark.parametrize("how", ["always_eager", "apply"])
def test_no_eager_call_waits_on_a_stopped_redis_even_when_postrun_reads_the_backend(
    stopped_url: str, how: str
) -> None:
    """The production preset's result_backend_always_retry, a host receiver reading state."""
    host = _host(stopped_url)
    assert host.app.conf.result_backend_always_retry is True
    assert host.app.conf.result_backend_max_retries == 10
    _eager(host, how)
    reads: list[tuple[str, float]] = []

    def read_state(task_id: str | None = None, task: Any = None, **_: Any) -> None:
        started = time.monotonic()
        try:
            with warnings.catch_warnings():  # Celery warns: eager results are not stored
                warnings.simplefilter("ignore", RuntimeWarning)
                outcome = str(task.AsyncResult(task_id).state)
        except Exception as exc:  # whatever the backend raises
            outcome = type(exc).__name__
        reads.append((outcome, time.monotonic() - started))

    signals.task_postrun.connect(read_state, weak=False)
    try:
        slowest = _run_all(host, how)
    finally:
        signals.task_postrun.disconnect(read_state)
    assert max(slowest.values()) < HANG_BOUND_S, slowest
    assert reads, "task_postrun never ran"
    # The read failed at once: no retry loop (10 retries sleep ~10 s on average).
    assert {outcome for outcome, _ in reads} == {"ConnectionError"}, reads
    # The guarantee is back for everything that is not an eager run. An app that publishes
    # eagerly (task_always_eager) has no worker to protect: its preset's backend retries
    # are off altogether (derived by the settings layer, shown by explain()).
    expected = how != "always_eager"
    assert host.app.backend.always_retry is expected
    assert host.app.conf.result_backend_always_retry is expected


@pytest.mark.parametrize("how", ["always_eager", "apply"])
def test_eager_runs_leave_no_key_in_redis(redis_url: str, how: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    host = _host(redis_url)
    _eager(host, how)
    _run_all(host, how)
    assert client.dbsize() == 0, sorted(client.keys())
    client.close()


def test_eager_semantics_of_each_base(
    counter: ConnectionCounter, caplog: pytest.LogCaptureFixture
) -> None:
    host = _host(f"redis://127.0.0.1:{counter.port}/0", task_always_eager=True)
    caplog.set_level(logging.DEBUG, logger="celeryredis")  # `started` is a DEBUG record

    # RetryTask: retries run inline (Celery ignores an eager retry's countdown), the
    # exhausted hook runs once, the lifecycle records are there.
    result = host.tasks["flaky"].delay(1)
    assert result.state == "FAILURE"
    assert isinstance(result.result, TimeoutError)
    assert host.exhausted == [result.id]
    assert host.attempts[result.id] == 4
    events = [getattr(r, "event", None) for r in caplog.records if r.name == "celeryredis.task"]
    assert events.count("retrying") == 3
    assert events.count("started") == 4
    assert "failed" in events
    assert host.tasks["second_time"].delay(1).get() == "ok after 1 retry"

    # Dead letters: a record instead of an entry.
    caplog.clear()
    failed = host.tasks["boom"].delay(3)
    skipped = [r for r in caplog.records if getattr(r, "event", None) == "dead_letter_skipped"]
    assert len(skipped) == 1
    assert skipped[0].levelno == logging.WARNING
    assert skipped[0].task_id == failed.id
    assert skipped[0].reason == "failed"
    assert "celeryredis_eager_redis=True" in skipped[0].getMessage()

    # UniqueTask: no lock, so on_duplicate="raise" never fires; RateLimitedTask: no limit.
    assert [host.tasks["until_executed"].delay(5).get() for _ in range(3)] == [5, 5, 5]
    assert [host.tasks["limited"].delay(5).get() for _ in range(3)] == [5, 5, 5]
    assert counter.stop() == 0


def test_eager_redis_setting_lets_the_bases_use_redis(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``celeryredis_eager_redis=True``: the old behaviour, for hosts that want it."""
    host = _host(redis_url, celeryredis_eager_redis=True, task_always_eager=True)
    client = redis.Redis.from_url(redis_url)
    failed = host.tasks["boom"].delay(1)
    entries = DeadLetterQueue(host.app).list()
    assert [e.task_id for e in entries] == [failed.id]
    host.tasks["flaky"].delay(1)
    counts = read_counts(client, host.app.conf)
    assert counts[("retries", host.tasks["flaky"].name)] == 3
    # Over the limit, a re-publish would run at once and ask again: it runs now, counted.
    assert [host.tasks["limited"].delay(1).get() for _ in range(2)] == [1, 1]
    assert client.keys("*celeryredis:rl:*")
    counts = read_counts(client, host.app.conf)
    assert counts[("rate_limit_deferrals", host.tasks["limited"].name)] == 1

    # A unique task whose body publishes itself again: the lock is held, so it is refused.
    app = host.app

    @app.task(base=UniqueTask, bind=True, shared=False, on_duplicate="raise")
    def reentrant(self: Any, x: int) -> str:
        try:
            self.delay(x)
        except DuplicateTaskError as exc:
            return f"refused, held by {exc.task_id}"
        return "published"

    result = reentrant.delay(1)
    assert result.get() == f"refused, held by {result.id}"
    assert not client.keys("*celeryredis:lock:*")  # released when the outer run finished

    # while_executing + defer: a deferred copy would run here, at once: it is dropped.
    runs: list[int] = []

    @app.task(
        base=UniqueTask,
        bind=True,
        shared=False,
        unique_on=(),
        unique_mode="while_executing",
        unique_while_executing="defer",
    )
    def exclusive_any(self: Any, depth: int) -> str:
        runs.append(depth)
        return str(self.delay(depth + 1).state)

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="celeryredis")  # `started` is a DEBUG record
    assert exclusive_any.delay(0).get() == "IGNORED"
    assert runs == [0]
    started = [r for r in caplog.records if getattr(r, "event", None) == "started"]
    assert len(started) == 2  # the outer run and the one copy, dropped
    assert not client.keys("*celeryredis:lock:*")
    client.close()


def test_backend_retries_stay_on_when_eager_results_are_stored(redis_url: str) -> None:
    """With task_store_eager_result the result is written: the retry loop protects it."""
    host = _host(redis_url, task_always_eager=True, task_store_eager_result=True)
    seen: list[bool] = []

    @host.app.task(bind=True, shared=False)
    def look(self: Any) -> str:
        seen.append(self.backend.always_retry)
        return "stored"

    result = look.delay()
    assert seen == [True]
    client = redis.Redis.from_url(redis_url)
    assert client.exists(f"celery-task-meta-{result.id}") == 1
    client.close()
