"""Distributed rate limits across two worker processes."""

from __future__ import annotations

import itertools
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from celeryredis import ConfigurationError, rate_limiter, ratelimit
from celeryredis.ratelimit import parse_rate
from tests._util import import_host_module, wait_for

pytestmark = pytest.mark.integration

TASKS = """
import itertools
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
import itertools
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


def _evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_lease_takes_many_permits_in_one_round_trip(celeryredis_app: Any, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    limiter = rate_limiter(celeryredis_app, "leased", "1000000/s")
    assert limiter.acquire().allowed  # loads the script
    client.config_resetstat()
    decisions = [limiter.acquire(lease=16, lease_window=60.0) for _ in range(32)]
    assert all(d.allowed for d in decisions)
    assert _evalsha_calls(client) == 2  # 16 permits per round trip
    slots = [d.slot for d in decisions]
    assert all(s is not None for s in slots)
    # Each permit is its own slot of the schedule, in order (a permit asked for, not
    # leased, reports its slot in whole milliseconds).
    assert all(b >= a - 0.001 for a, b in itertools.pairwise(slots))


def test_leased_permits_are_dropped_after_their_window(
    celeryredis_app: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis.Redis.from_url(redis_url)
    limiter = rate_limiter(celeryredis_app, "leased-late", "1000000/s")
    assert limiter.acquire().allowed  # loads the script
    client.config_resetstat()
    assert limiter.acquire(lease=16, lease_window=0.5).allowed  # 15 permits kept
    assert _evalsha_calls(client) == 1
    # One second later (the limiter's clock): every kept permit is past its window.
    clock = ratelimit.time.monotonic
    later = type("Clock", (), {"monotonic": staticmethod(lambda: clock() + 1.0)})
    later.sleep = staticmethod(time.sleep)  # type: ignore[attr-defined]
    monkeypatch.setattr(ratelimit, "time", later)
    assert limiter.acquire(lease=16, lease_window=0.5).allowed
    assert _evalsha_calls(client) == 2  # asked Redis again: no permit was used late


def test_leases_of_two_processes_stay_within_the_schedule(celeryredis_app: Any) -> None:
    # Two limiters on one key stand for two worker processes; every permit one of them
    # hands out is a slot of the shared schedule, used within the lease window.
    rate, window = 2000.0, 0.01
    first = rate_limiter(celeryredis_app, "shared-lease", "2000/s")
    second = rate_limiter(celeryredis_app, "shared-lease", "2000/s")
    allowed = 0
    started = time.monotonic()
    while time.monotonic() - started < 0.3:
        for limiter in (first, second):
            allowed += limiter.acquire(lease=16, lease_window=window).allowed
    elapsed = time.monotonic() - started
    assert allowed <= 1 + rate * (elapsed + window) + 1
