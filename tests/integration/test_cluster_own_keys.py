"""celeryredis's own keys and tools on a Redis Cluster broker: a real 3+3 cluster, a real worker.

The app is ``make_app(broker_url="rediscluster://...")`` with a key prefix; its worker
(prefork, 3 processes) consumes three queues on three masters. Task runs are counted in
the cluster (``HINCRBY``/``RPUSH``), so "ran once" is read from Redis. Dead letters,
unique locks (their keys spread over every master), a distributed rate limit, heartbeats,
``check`` / ``queues`` / ``dlq`` / ``locks`` / ``acl`` / the exporter, and
``enqueue_many``'s transaction per slot with a real refusal on one master.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from celeryredis import BulkDuplicateError, BulkPublishError, enqueue_many, make_app
from celeryredis._kombu_compat import BINDING_KEY_HEAD
from celeryredis.cli import main as cli_main
from celeryredis.deadletter import DeadLetterQueue
from celeryredis.metrics import registry_for
from celeryredis.testing import LocalRedisCluster, WorkerProcess
from celeryredis.transport._cluster import queue_keys
from tests._cluster_host import RUNS_CLIENT, cluster_host, ready_worker
from tests._util import wait_for

pytestmark = pytest.mark.integration

PREFIX = "ownkeys:"
RATE = 10  # per second, burst 1

APP = (
    """
import os
import time

import redis.cluster
from celeryredis import RateLimitedTask, UniqueTask, make_app

URL = os.environ["CLUSTER_URL"]
app = make_app(
    "ownkeysapp",
    broker_url=URL,
    result_backend=URL,
    preset="testing",
    broker_transport_options={"global_keyprefix": "ownkeys:"},
    celeryredis_heartbeat_interval=0.5,
    celeryredis_dead_letter=True,
    celeryredis_eta_horizon=30,
    task_default_queue=os.environ["OWNKEYS_QUEUES"].split(",")[0],
)
"""
    + RUNS_CLIENT
    + """

@app.task(base=UniqueTask, bind=True, shared=False, ignore_result=True)
def once(self, key):
    runs().rpush("{ownruns}:once:" + str(key), self.request.id)


@app.task(base=UniqueTask, shared=False, ignore_result=True, on_duplicate="raise")
def strict(key):
    pass


@app.task(bind=True, shared=False)
def flaky(self, key):
    if runs().hincrby("{ownruns}:flaky", key, 1) == 1:
        raise ValueError("first run fails: " + key)
    return "second run ok"


@app.task(base=RateLimitedTask, bind=True, shared=False, ignore_result=True,
          distributed_rate_limit="10/s")
def limited(self, i):
    runs().rpush("{ownruns}:limited", str(self.request.celeryredis_rate_slot))


@app.task(shared=False, ignore_result=True)
def bulk(n):
    pass
"""
)


def _master_of(client: Any, key: str) -> int:
    return int(client.get_node_from_key(key).port)


def _queues_on_distinct_masters(cluster: LocalRedisCluster, head: str) -> list[str]:
    client = cluster.client()
    chosen: dict[int, str] = {}
    for i in range(300):
        name = f"{head}{i}"
        chosen.setdefault(_master_of(client, queue_keys(PREFIX, name)["lists"][0]), name)
        if len(chosen) == 3:
            break
    client.close()
    assert len(chosen) == 3, chosen
    return list(chosen.values())


def _bulk_queues(cluster: LocalRedisCluster) -> list[str]:
    """Three queues on three masters; no queue's kombu binding set is on the second's master.

    (The test below makes the second queue's master refuse writes: declaring the queues
    must still work, so that the refusal hits the transaction of the second slot.)
    """
    client = cluster.client()
    try:
        found: dict[int, list[tuple[str, int]]] = {}
        for i in range(200):
            name = f"bq{i}"
            home = _master_of(client, queue_keys(PREFIX, name)["lists"][0])
            found.setdefault(home, []).append((name, _master_of(client, _binding(name))))
        homes = sorted(found)
        for a, b, c in ((homes[0], homes[1], homes[2]), (homes[1], homes[2], homes[0])):
            for qa, ba in found[a]:
                for qb, bb in found[b]:
                    for qc, bc in found[c]:
                        if b not in {ba, bb, bc}:
                            return [qa, qb, qc]
    finally:
        client.close()
    raise AssertionError("no three queues fit")


def _binding(queue: str) -> str:
    return f"{PREFIX}{BINDING_KEY_HEAD}{queue}"


@pytest.fixture(scope="module")
def host(
    redis_cluster: LocalRedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The host module, its queues (consumed) and bulk queues (not consumed), and a worker."""
    directory = tmp_path_factory.mktemp("ownkeys")
    queues = _queues_on_distinct_masters(redis_cluster, "oq")
    env = {"OWNKEYS_QUEUES": ",".join(queues)}  # the first is the default queue
    with cluster_host(redis_cluster, directory, "ownkeysapp", APP, env) as module:
        module.QUEUES = queues
        module.BULK_QUEUES = _bulk_queues(redis_cluster)
        module.WORKER = None

        def start_worker() -> WorkerProcess:
            if module.WORKER is None:
                module.WORKER = ready_worker(
                    module, "ownkeys", queues=queues, pool="prefork", concurrency=3
                )
            return module.WORKER

        module.start_worker = start_worker
        try:
            yield module
        finally:
            if module.WORKER is not None:
                module.WORKER.stop(timeout=5)
            client = redis_cluster.client()
            for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
                client.delete(key)
            for key in client.scan_iter(match="{ownruns}*", count=1000):
                client.delete(key)
            client.close()


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli_main, ["--app", "ownkeysapp", *args])


def test_unique_locks_spread_over_every_master_and_no_key_runs_twice(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    keys = list(range(30))
    firsts = {k: host.once.apply_async((k,), queue=host.QUEUES[k % 3]).id for k in keys}
    for _ in range(3):  # the same work again, while the first is queued: refused
        for k in keys:
            assert host.once.apply_async((k,), queue=host.QUEUES[k % 3]).id == firsts[k]
    lock_keys = [host.once.unique_lock_key((k,), {}) for k in keys]
    client = redis_cluster.client()
    assert {_master_of(client, key) for key in lock_keys} == set(redis_cluster.masters)
    # enqueue_many claims the locks of a chunk once per slot: all are held already.
    results = enqueue_many(host.once, [(k,) for k in keys], chunk_size=1000)
    assert [r.id for r in results if r is not None] == [firsts[k] for k in keys]

    listed = _cli("locks", "list", "--json")
    assert listed.exit_code == 0, listed.output
    held = {row["key"]: row["held_by"] for row in json.loads(listed.output)}
    assert {key: held[key] for key in lock_keys} == {
        key: firsts[k] for k, key in zip(keys, lock_keys, strict=True)
    }

    host.start_worker()
    wait_for(
        lambda: all(client.llen("{ownruns}:once:" + str(k)) for k in keys), 60, "30 unique runs"
    )
    wait_for(lambda: not any(client.exists(key) for key in lock_keys), 20, "locks released")
    ran = {k: [x.decode() for x in client.lrange("{ownruns}:once:" + str(k), 0, -1)] for k in keys}
    assert ran == {k: [firsts[k]] for k in keys}  # each key once, by its first publish
    client.close()


def test_all_or_nothing_locks_across_slots_leave_no_lock_behind(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    blocker = host.strict.unique_lock_key(("held",), {})
    client = redis_cluster.client()
    client.set(blocker, "someone-else", px=30_000)
    calls = [(f"k{i}",) for i in range(20)] + [("held",)]
    others = [host.strict.unique_lock_key(c, {}) for c in calls[:-1]]
    assert len({_master_of(client, key) for key in [*others, blocker]}) == 3
    with pytest.raises(BulkDuplicateError) as excinfo:
        enqueue_many(host.strict, calls, queue=host.BULK_QUEUES[0])
    assert excinfo.value.task_id == "someone-else"
    assert excinfo.value.published_ids == []
    assert not any(client.exists(key) for key in others)  # none stayed taken
    assert client.llen(queue_keys(PREFIX, host.BULK_QUEUES[0])["lists"][0]) == 0
    client.delete(blocker)
    client.close()


def test_a_dead_letter_on_the_cluster_is_listed_and_replayed_by_the_cli(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    host.start_worker()
    failed = host.flaky.delay("dl1")
    with pytest.raises(ValueError, match="first run fails"):
        failed.get(timeout=30)
    dlq = DeadLetterQueue(host.app)
    wait_for(lambda: any(e.task_id == failed.id for e in dlq.list()), 20, "the dead letter")
    listed = _cli("dlq", "list", "--json")
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.output)
    assert data["total"] >= 1
    entry = next(row for row in data["entries"] if row["task_id"] == failed.id)
    assert entry["task_name"] == "ownkeysapp.flaky"
    replayed = _cli("dlq", "replay", entry["id"], "--json")
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.output)["task_ids"] == [failed.id]
    client = redis_cluster.client()
    wait_for(lambda: int(client.hget("{ownruns}:flaky", "dl1") or 0) == 2, 30, "the replay's run")
    wait_for(lambda: dlq.get(entry["id"]) is None, 10, "the replayed entry to leave the queue")
    client.close()


def test_a_distributed_rate_limit_holds_on_the_cluster(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    host.start_worker()
    total = 30
    for i in range(total):
        host.limited.apply_async((i,), queue=host.QUEUES[i % 3])
    client = redis_cluster.client()
    wait_for(lambda: client.llen("{ownruns}:limited") >= total, 60, f"{total} limited runs")
    granted = sorted(float(x) for x in client.lrange("{ownruns}:limited", 0, -1))
    assert len(granted) == total
    best, j = 0, 0
    for i, start in enumerate(granted):  # every half-open window [t, t + 1 s)
        while j < len(granted) and granted[j] < start + 1.0:
            j += 1
        best = max(best, j - i)
    assert best <= RATE + 1
    limiter_keys = list(client.scan_iter(match=f"{PREFIX}celeryredis:rl:*", count=1000))
    assert limiter_keys  # the limiter's one key lives on the cluster
    client.close()


def test_check_reports_each_master_and_the_workers_heartbeat(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    host.start_worker()
    wait_for(
        lambda: _cli("check", "--worker", "ownkeys").exit_code == 0, 20, "the worker's heartbeat"
    )
    result = _cli("check", "--json")
    report = json.loads(result.output)
    parts = {part["name"]: part for part in report["parts"]}
    masters = {f"master 127.0.0.1:{port}" for port in redis_cluster.masters}
    assert masters <= set(parts), parts
    for name in masters:
        assert parts[name]["status"] in {"ok", "warn"}, parts[name]
        assert parts[name]["details"]["role"] == "master"
        assert parts[name]["details"]["redis_version"]
        assert parts[name]["latency_s"] is not None
    assert parts["masters"]["status"] == "ok"
    assert parts["broker"]["status"] == "ok"
    assert any(w["hostname"].startswith("ownkeys@") for w in report["workers"])
    text = _cli("check")
    for name in masters:
        assert name in text.output

    queues = _cli("queues", "--json", *[arg for q in host.QUEUES for arg in ("--queue", q)])
    assert queues.exit_code == 0, queues.output
    rows = {row["name"]: row for row in json.loads(queues.output)}
    assert set(rows) == set(host.QUEUES)
    assert all(row["consumers"] for row in rows.values())

    acl = _cli("acl", "--json")
    assert acl.exit_code == 0, acl.output
    assert f"~{PREFIX}*" in json.loads(acl.output)["rules"]

    scraped = {m.name: m for m in registry_for(host.app).collect()}
    beats = scraped["celeryredis_worker_heartbeat_age_seconds"].samples
    assert any(s.labels["worker"].startswith("ownkeys@") for s in beats)


def test_enqueue_many_lands_exactly_over_three_masters_and_reports_a_refused_slot(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    queues = host.BULK_QUEUES
    client = redis_cluster.client()
    lists = [queue_keys(PREFIX, q)["lists"][0] for q in queues]
    before = [client.llen(key) for key in lists]
    calls = [host.bulk.s(n).set(queue=queues[n % 3]) for n in range(3000)]
    results = enqueue_many(host.bulk, calls, chunk_size=1000)
    assert len({r.id for r in results if r is not None}) == 3000
    assert [client.llen(key) - b for key, b in zip(lists, before, strict=True)] == [1000] * 3
    depth = _cli("queues", "--json", *[arg for q in queues for arg in ("--queue", q)])
    assert sum(row["depth"] for row in json.loads(depth.output)) == sum(before) + 3000

    # After the first chunk (which declares the queues), the master of the second queue
    # refuses writes (out of memory; Redis then refuses every command inside MULTI): in
    # the second chunk, the first slot lands, the second is refused, the third not sent.
    refusing = redis_cluster.master_for(lists[1])
    admin = redis_cluster.client().get_node("127.0.0.1", refusing).redis_connection
    assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"

    def refuse_after_first_chunk(published: int, _total: int | None) -> None:
        admin.config_set("maxmemory", 1)

    try:
        calls = [host.bulk.s(n).set(queue=queues[n % 3]) for n in range(600)]
        with pytest.raises(BulkPublishError) as excinfo:
            enqueue_many(host.bulk, calls, chunk_size=300, progress=refuse_after_first_chunk)
    finally:
        admin.config_set("maxmemory", 0)
    error = excinfo.value
    assert [s.state for s in error.slots] == ["published", "refused", "not_sent"], str(error)
    assert [s.messages for s in error.slots] == [100, 100, 100]
    assert [s.keys for s in error.slots] == [(key,) for key in lists]
    assert "OutOfMemoryError" in str(error.slots[1].error)
    assert "maxmemory" in str(error.slots[1].error)
    assert len(error.published_ids) == 300 + 100
    assert set(error.published_ids[300:]) == set(error.slots[0].task_ids)
    assert set(error.unpublished_ids) == {*error.slots[1].task_ids, *error.slots[2].task_ids}
    assert error.in_doubt_ids == []
    assert error.next_index == 301  # the second chunk's call #301 (second queue) did not land
    grown = [client.llen(key) - b for key, b in zip(lists, before, strict=True)]
    assert grown == [1000 + 200, 1000 + 100, 1000 + 100]
    assert client.exists(error.slots[0].marker_key) == 1
    assert client.exists(error.slots[1].marker_key) == 0
    assert f"slot {error.slots[1].slot}" in str(error)
    assert "was refused" in str(error)
    client.close()


def test_a_slot_whose_reply_is_lost_is_in_doubt_and_resolve_tells_the_truth(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    queues = host.BULK_QUEUES
    app = make_app(
        "ownkeysapp",
        broker_url=redis_cluster.url,
        preset="testing",
        broker_transport_options={"global_keyprefix": PREFIX, "socket_timeout": 0.5},
    )

    @app.task(name="ownkeysapp.bulk", shared=False, ignore_result=True)
    def bulk(n: int) -> None:
        pass

    client = redis_cluster.client()
    lists = [queue_keys(PREFIX, q)["lists"][0] for q in queues]
    before = [client.llen(key) for key in lists]
    # The second queue's master holds every write for 2 s (CLIENT PAUSE WRITE): the reply
    # to its EXEC does not come within the 0.5 s socket timeout, so the slot is in doubt
    # until resolve() reads its marker.
    admin = client.get_node("127.0.0.1", redis_cluster.master_for(lists[1])).redis_connection

    def pause_after_first_chunk(published: int, _total: int | None) -> None:
        admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")

    calls = [bulk.s(n).set(queue=queues[n % 3]) for n in range(60)]
    with pytest.raises(BulkPublishError) as excinfo:
        enqueue_many(bulk, calls, chunk_size=30, progress=pause_after_first_chunk)
    error = excinfo.value
    assert [s.state for s in error.slots] == ["published", "in_doubt", "not_sent"], str(error)
    assert "TimeoutError" in str(error.slots[1].error)
    assert set(error.in_doubt_ids) == set(error.slots[1].task_ids)
    assert error.marker_key == error.slots[1].marker_key
    assert len(error.published_ids) == 30 + 10
    probe = f"{PREFIX}{{{queues[1]}}}:pause-probe"  # in the paused master's slot
    admin.set(probe, 1, px=1000)  # a write: it returns once the pause is over
    applied = error.resolve(app)  # the marker says whether the slot's EXEC ran
    assert applied is not None
    second = "published" if applied else "refused"
    assert [s.state for s in error.slots] == ["published", second, "not_sent"]
    assert len(error.published_ids) == 30 + (20 if applied else 10)
    grown = [client.llen(key) - b for key, b in zip(lists, before, strict=True)]
    assert grown == [20, 20 if applied else 10, 10]  # as resolve() says; never twice
    client.close()
