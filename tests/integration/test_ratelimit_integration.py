"""Distributed rate limits across two worker processes."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from celeryredis import ConfigurationError, rate_limiter
from celeryredis.ratelimit import parse_rate
from tests._util import import_host_module, wait_for

pytestmark = pytest.mark.integration

TASKS = """
import json
import os
import time

import redis

from celeryredis import RateLimitedTask, make_app

URL = os.environ["RL_URL"]
app = make_app("rlapp", broker_url=URL, preset="testing", celeryredis_eta_horizon=30)
client = redis.Redis.from_url(URL)


@app.task(base=RateLimitedTask, bind=True, shared=False, ignore_result=True,
          distributed_rate_limit="20/s")
def limited(self, i):
    client.rpush(
        "ran:limited",
        json.dumps([self.request.celeryredis_rate_slot, self.request.retries, time.time()]),
    )
"""

# Celery's own per-worker rate limit, with Celery's defaults, for the side-by-side test.
PLAIN = """
import json
import os
import time

import redis
from celery import Celery

URL = os.environ["RL_URL"]
app = Celery("plainrl", broker=URL)
client = redis.Redis.from_url(URL)


@app.task(bind=True, shared=False, ignore_result=True, rate_limit="20/s")
def celery_limited(self, i):
    client.rpush("ran:celery", json.dumps([time.time(), self.request.retries]))
"""

LIMIT, BURST = 20, 1


def _runs(client: redis.Redis, name: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(json.loads(r)) for r in client.lrange(f"ran:{name}", 0, -1))


def _max_per_second(times: list[float]) -> int:
    best, j = 0, 0
    for i, start in enumerate(times):  # every half-open window [t, t + 1 s)
        while j < len(times) and times[j] < start + 1.0:
            j += 1
        best = max(best, j - i)
    return best


def _start_two_workers(
    name: str,
    source: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: Any,
    start: Any,
) -> Any:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    module = import_host_module(monkeypatch, tmp_path, name, {"RL_URL": redis_url})
    for n in (1, 2):
        worker = start(
            name,
            cwd=tmp_path,
            env={"RL_URL": redis_url},
            pool="threads",
            concurrency=4,
            hostname=f"{name}{n}@%h",
        )
        worker.wait_ready()
    return module


@pytest.fixture
def rl_workers(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, celery_worker_process: Any
) -> Any:
    return _start_two_workers(
        "rlapp", TASKS, redis_url, tmp_path, monkeypatch, celery_worker_process
    )


def test_distributed_limit_holds_across_two_workers(rl_workers: Any, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for i in range(400):
        rl_workers.limited.delay(i)
    wait_for(lambda: client.llen("ran:limited") >= 400, 60, "400 rate-limited runs")
    runs = _runs(client, "limited")
    assert len(runs) == 400  # each ran once
    # The limiter's grants (the time each run was allowed, or the slot it reserved):
    granted = [run[0] for run in runs]
    assert _max_per_second(granted) <= LIMIT + BURST
    # The runs themselves, from the first start to the last:
    started = sorted(run[2] for run in runs)
    ideal = (400 - BURST) / LIMIT
    assert started[-1] - started[0] <= 1.25 * ideal
    assert {run[1] for run in runs} == {0}  # no retry budget consumed


@pytest.fixture
def plain_workers(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, celery_worker_process: Any
) -> Any:
    return _start_two_workers(
        "plainrl", PLAIN, redis_url, tmp_path, monkeypatch, celery_worker_process
    )


def test_celerys_own_rate_limit_is_per_worker(plain_workers: Any, redis_url: str) -> None:
    # Each worker has its own "20/s" bucket, so together they start at about 2 x 20/s.
    # (Measured here: once a bucket is empty, Celery on Redis then runs about one task
    # per second per worker — its timer waits on the 1 s BRPOP — so we look at the start.)
    client = redis.Redis.from_url(redis_url)
    for i in range(200):
        plain_workers.celery_limited.delay(i)
    wait_for(lambda: client.llen("ran:celery") >= 35, 30, "the first 35 runs")
    observed = _max_per_second([run[0] for run in _runs(client, "celery")])
    assert observed > LIMIT + BURST


def test_rate_limiter_for_plain_code(celeryredis_app: Any) -> None:
    limiter = rate_limiter(celeryredis_app, "partner-api", "5/s", burst=2)
    decisions = [limiter() for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert 0 < decisions[2].wait <= 0.2 + 0.05
    with limiter as decision:
        assert not decision.allowed
    wait_for(lambda: limiter().allowed, 2, "the next slot")
    reserved = limiter.acquire(reserve=True)
    assert reserved.reserved or reserved.allowed


def test_bad_rates_are_refused() -> None:
    assert parse_rate("100/m") == pytest.approx(100 / 60)
    assert parse_rate("5") == 5.0
    for bad in ("fast", "0/s", "-1/s", "10/d", ""):
        with pytest.raises(ConfigurationError):
            parse_rate(bad)


@pytest.mark.parametrize("rate", ["1000000/s", "3/s", "7/m"])
def test_any_rate_gives_decisions_not_script_errors(celeryredis_app: Any, rate: str) -> None:
    limiter = rate_limiter(celeryredis_app, f"any-{rate}", rate)
    decisions = [limiter.acquire(reserve=True, max_wait=3600) for _ in range(5)]
    assert decisions[0].allowed
    assert all(d.allowed or d.reserved for d in decisions)


def test_a_high_rate_is_not_capped_by_a_millisecond_clock(celeryredis_app: Any) -> None:
    # 100,000/s is a 10 µs interval; one call costs a round trip (~100 µs), so every
    # call is within the limit. A whole-millisecond clock refused all but one per ms.
    limiter = rate_limiter(celeryredis_app, "high-rate", "100000/s")
    decisions = [limiter() for _ in range(300)]
    assert sum(not d.allowed for d in decisions) == 0
    # And the limit still binds: a burst-1 limiter at 1,000/s lets ~1 per ms through.
    slow = rate_limiter(celeryredis_app, "thousand", "1000/s")
    started = time.monotonic()
    allowed = sum(slow().allowed for _ in range(300))
    elapsed_ms = (time.monotonic() - started) * 1000
    assert allowed <= elapsed_ms + 2
