"""What each task base costs in Redis commands per task, counted on a real worker.

One solo worker (production preset) drains N tasks of each base; ``INFO commandstats``
of the test's own redis-server counts the commands (those run inside Lua scripts
included). The transport's own commands depend on timing (how many messages one fetch
pops), so the assertions are on the commands only the task bases send: a base that
starts sending something per task — a counter, a lookup, one more lock call — fails
here. Nothing here measures time.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis

from celeryredis import enqueue_many
from tests._util import import_host_module, wait_for

pytestmark = pytest.mark.integration

N = 64  # a multiple of the lease below

TASKS = """
import os

import celery
import redis

from celeryredis import RateLimitedTask, RetryTask, Task, UniqueTask, make_app

URL = os.environ["COST_URL"]
# No heartbeat: its SET every few seconds is not a task's cost.
app = make_app("costapp", broker_url=URL, preset="production",
               celeryredis_heartbeat_interval=0)
client = redis.Redis.from_url(URL)


def _done():
    # MSET, not INCR/SET: a command no base uses, to count completions apart.
    client.mset({"done:" + celery.current_task.request.id: 1})


@app.task(base=celery.Task, name="cost.plain", shared=False, ignore_result=True)
def plain(i):
    _done()


@app.task(base=Task, name="cost.task", shared=False, ignore_result=True)
def task(i):
    _done()


@app.task(base=RetryTask, name="cost.retry", shared=False, ignore_result=True)
def retry(i):
    _done()


@app.task(base=UniqueTask, name="cost.unique", shared=False, ignore_result=True)
def unique(i):
    _done()


# A long lease window: no leased permit expires while the worker is slow (a loaded
# machine), so the count of decisions is exact.
@app.task(base=RateLimitedTask, name="cost.limited", shared=False, ignore_result=True,
          distributed_rate_limit="1000000/s", rate_limit_lease=16, rate_limit_lease_window=60.0)
def limited(i):
    _done()


@app.task(base=RateLimitedTask, name="cost.limited_unleased", shared=False, ignore_result=True,
          distributed_rate_limit="1000000/s", rate_limit_lease=1)
def limited_unleased(i):
    _done()
"""

# Commands the bases' scripts run (lock_acquire, lock_release, gcra) or that a per-task
# counter or lookup would add; none is sent by the transport while it drains. (Not
# PUBLISH: Celery's worker heartbeat event goes out every 2 s, whatever the task.)
WATCHED = (
    "get", "set", "del", "pexpire", "pttl", "expire", "exists", "hget", "hincrby", "incr",
    "incrby", "setex",
)  # fmt: skip


def _stats(client: redis.Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in client.info("commandstats").items()
    }


@pytest.fixture
def costs(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, celery_worker_process: Any
) -> Any:
    env = {"COST_URL": redis_url}
    (tmp_path / "costapp.py").write_text(textwrap.dedent(TASKS))
    module = import_host_module(monkeypatch, tmp_path, "costapp", env)
    client = redis.Redis.from_url(redis_url)
    worker = celery_worker_process(
        "costapp", redis_url=redis_url, cwd=tmp_path, env=env, pool="solo"
    )
    worker.wait_ready()

    def drain(task: Any) -> dict[str, int]:
        """Commands sent while the worker runs N tasks of ``task`` (published before)."""
        client.delete(*client.keys("done:*") or ["done:none"])
        worker_idle = client.llen("celery") == 0
        assert worker_idle
        # Published (and UniqueTask's locks taken) in a queue no worker reads, then
        # handed to the worker in one command, once the counts start.
        enqueue_many(task, ((i,) for i in range(N)), queue="staging")
        assert client.llen("staging") == N
        client.config_resetstat()
        client.rename("staging", "celery")
        wait_for(lambda: len(client.keys("done:*")) == N, 60, f"{N} runs of {task.name}")
        stats = _stats(client)
        # The test's own commands: CONFIG RESETSTAT, RENAME, the KEYS polls, this INFO.
        for own in ("config|resetstat", "rename", "keys", "info"):
            stats.pop(own, None)
        return stats

    return module, drain


def _watched(stats: dict[str, int]) -> dict[str, int]:
    return {name: stats.get(name, 0) for name in WATCHED if stats.get(name, 0)}


def test_task_and_retry_task_send_nothing_per_task(costs: tuple[Any, Any]) -> None:
    module, drain = costs
    plain = drain(module.plain)
    assert _watched(plain) == {}  # the transport sends none of these while draining
    assert plain["mset"] == N
    for base in (module.task, module.retry):
        stats = drain(base)
        assert stats["mset"] == N
        assert _watched(stats) == {}, base.name


def test_unique_task_costs_one_script_per_task(costs: tuple[Any, Any]) -> None:
    module, drain = costs
    stats = drain(module.unique)
    assert stats["mset"] == N
    # Per task: lock_release on success (GET + DEL). Nothing else: the switch to the
    # running TTL (lock_acquire: GET + PEXPIRE) comes a second after the start, and
    # these tasks end sooner.
    assert _watched(stats) == {"get": N, "del": N}


def test_rate_limited_task_asks_redis_once_per_lease(costs: tuple[Any, Any]) -> None:
    module, drain = costs
    stats = drain(module.limited)
    assert stats["mset"] == N
    # One gcra call (GET + SET) per 16 tasks: the lease.
    assert _watched(stats) == {"get": N // 16, "set": N // 16}
    unleased = drain(module.limited_unleased)
    assert _watched(unleased) == {"get": N, "set": N}  # one decision per task
