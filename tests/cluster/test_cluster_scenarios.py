"""The Redis Cluster scenarios of issue 17 (``make cluster``; not part of ``make test``).

Each scenario starts its own 3-master + 3-replica cluster on loopback, real worker
processes (solo and prefork) and counts every task run in a separate redis-server
(``HINCRBY``), so "ran once", "lost" and "duplicate" are read from Redis. Each prints
its figures (run with ``-s`` or ``-rA`` to see them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celeryredis.testing import LocalRedisCluster, RedisServer
from celeryredis.transport._cluster import queue_keys
from tests._util import wait_for
from tests.cluster._rig import (
    commandstats,
    host_module,
    migrate_slot,
    queues_per_master,
    reshard,
    runs,
    workers,
)

pytestmark = [pytest.mark.cluster_scenarios, pytest.mark.integration, pytest.mark.timeout(420)]

SECRET = "s3cr3t-Pa55"  # one of tests/conftest.py's SECRETS


@pytest.fixture
def counter() -> Iterator[tuple[str, redis.Redis]]:
    """A single redis-server for the run counts: ``(url, client)``."""
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        try:
            yield server.url, client
        finally:
            client.close()


@pytest.fixture
def cluster(redis_cluster_factory: Callable[..., LocalRedisCluster]) -> LocalRedisCluster:
    started = redis_cluster_factory(node_timeout_ms=1000, password=SECRET)
    started.wait_replicas_synced(timeout=30)
    return started


def _host(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    name: str,
    cluster: LocalRedisCluster,
    count_url: str,
    **env: str,
) -> Any:
    return host_module(
        monkeypatch,
        tmp_path,
        name,
        {"CLUSTER_URL": cluster.url, "COUNT_URL": count_url, **env},
    )


def _queue_depths(cluster: LocalRedisCluster, queues: list[str]) -> list[int]:
    client = cluster.client()
    try:
        return [int(client.llen(queue_keys("", q)["lists"][0])) for q in queues]
    finally:
        client.close()


# --- 1. 5,000 tasks, canvas, bulk --------------------------------------------------------


def test_5000_tasks_a_chord_a_chain_and_a_group_on_3_masters(
    cluster: LocalRedisCluster,
    counter: tuple[str, redis.Redis],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery import chain, chord, group
    from celery.result import ResultSet

    queues = queues_per_master(cluster, 1, "cq")
    masters = {cluster.master_for(queue_keys("", q)["lists"][0]) for q in queues}
    assert len(masters) == 3
    url, count = counter
    host = _host(monkeypatch, tmp_path, "scen_bulk", cluster, url, DEFAULT_QUEUE=queues[0])
    specs = (("solo", "solo", 1), ("prefork", "prefork", 2))
    with workers(host, *specs, queues=queues) as (solo, prefork):
        started = time.monotonic()
        results = [host.work.apply_async(("5k", n), queue=queues[n % 3]) for n in range(5000)]
        published = time.monotonic() - started
        assert ResultSet(results).get(timeout=180) == [2 * n for n in range(5000)]
        drained = time.monotonic() - started
        ran = runs(count, "5k")
        assert len(ran) == 5000
        assert set(ran.values()) == {1}, "a task ran more than once"

        # A chord of 100 whose header spreads over the three queues, a chain, a group.
        header = [host.work.s("chord", n).set(queue=queues[n % 3]) for n in range(100)]
        assert chord(header)(host.total.s()).get(timeout=60) == sum(2 * n for n in range(100))
        assert set(runs(count, "chord").values()) == {1}
        assert len(runs(count, "chord")) == 100
        flow = chain(host.add.s(1, 2), host.add.s(3).set(queue=queues[1]), host.add.s(4))
        assert flow.apply_async().get(timeout=60) == 10
        together = group(host.add.s(i, i).set(queue=queues[i % 3]) for i in range(30))
        assert together.apply_async().get(timeout=60) == [2 * i for i in range(30)]

        assert _queue_depths(cluster, queues) == [0, 0, 0]
        assert "Task scen_bulk.work" in solo.log_text()
        assert "Task scen_bulk.work" in prefork.log_text()
        assert "Traceback" not in solo.log_text() + prefork.log_text()
        print(
            f"5,000 tasks over 3 masters (solo + prefork -c 2): published in {published:.1f} s,"
            f" all results back {drained:.1f} s after the first publish; each ran once"
        )


def test_enqueue_many_of_10000_over_3_masters_lands_exactly(
    cluster: LocalRedisCluster,
    counter: tuple[str, redis.Redis],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celeryredis.bulk import enqueue_many

    queues = queues_per_master(cluster, 1, "bq")
    url, count = counter
    host = _host(monkeypatch, tmp_path, "scen_enqueue", cluster, url, IGNORE_RESULT="1")
    calls = (host.work.s("10k", n).set(queue=queues[n % 3]) for n in range(10_000))
    started = time.monotonic()
    published = enqueue_many(host.work, calls)  # each chunk: one transaction per slot
    took = time.monotonic() - started
    assert len(published) == 10_000
    assert _queue_depths(cluster, queues) == [3334, 3333, 3333]  # on each queue's own key
    # solo: a prefork worker on the cluster transport takes at most its prefetch window
    # per polling interval when the window is full (2 per 0.1 s with -c 2; docs/cluster.md).
    with workers(host, ("drain", "solo", 1), queues=queues):
        wait_for(lambda: count.hlen("runs:10k") == 10_000, 180, "10,000 tasks to run")
    ran = runs(count, "10k")
    assert set(ran) == set(range(10_000))
    assert set(ran.values()) == {1}
    print(
        f"enqueue_many: 10,000 tasks over {queues} on 3 masters of the cluster broker "
        f"in {took:.2f} s; each ran once"
    )


# --- 2. a master SIGKILLed mid-drain, publishers running ---------------------------------


def test_a_master_killed_mid_drain_with_publishers_running_loses_no_acknowledged_task(
    cluster: LocalRedisCluster,
    counter: tuple[str, redis.Redis],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queues = queues_per_master(cluster, 1, "fq")
    victim = cluster.master_for(queue_keys("", queues[0])["lists"][0])
    url, count = counter
    host = _host(monkeypatch, tmp_path, "scen_failover", cluster, url, IGNORE_RESULT="1")
    per_publisher, publishers = 2000, 2
    acknowledged: list[list[int]] = [[] for _ in range(publishers)]
    refused: list[str] = []

    def publish(index: int) -> None:
        for i in range(per_publisher):
            n = index * per_publisher + i
            try:
                host.work.apply_async(("fo", n), queue=queues[n % 3])
            except Exception as exc:  # a publish the caller was told failed
                refused.append(repr(exc))
            else:
                acknowledged[index].append(n)
            time.sleep(0.002)  # a steady stream over the whole failover

    specs = (("solo", "solo", 1), ("prefork", "prefork", 2))
    with workers(host, *specs, queues=queues) as started:
        threads = [
            threading.Thread(target=publish, args=(i,), daemon=True) for i in range(publishers)
        ]
        for thread in threads:
            thread.start()
        wait_for(lambda: count.hlen("runs:fo") >= 1000, 120, "1,000 tasks to run")
        killed_at = time.monotonic()
        ran_before = int(count.hlen("runs:fo"))
        published_before = sum(len(a) for a in acknowledged)
        cluster.kill(victim)
        wait_for(
            lambda: victim not in cluster.masters and len(cluster.masters) == 3, 30, "a new master"
        )
        promoted_after = time.monotonic() - killed_at
        for thread in threads:
            thread.join(timeout=180)
        assert not any(thread.is_alive() for thread in threads)
        done = {n for a in acknowledged for n in a}

        wait_for(lambda: done <= set(runs(count, "fo")), 180, "every acknowledged task to run")
        all_ran_after = time.monotonic() - killed_at
        # A duplicate comes from a lease that expired (3 s) and was swept: give it time.
        time.sleep(5.0)
        ran = runs(count, "fo")
        lost = sorted(done - set(ran))
        duplicates = sum(v - 1 for v in ran.values())
        twice = sum(1 for v in ran.values() if v > 1)
        print(
            f"master {victim} SIGKILLed after {ran_before} runs / {published_before} publishes; "
            f"replica promoted (seen) {promoted_after:.2f} s later; {len(done)} publishes "
            f"acknowledged, {len(refused)} refused, {len(lost)} lost, {duplicates} duplicate "
            f"runs ({twice} tasks ran more than once); every acknowledged task ran "
            f"{all_ran_after:.2f} s after the kill"
        )
        assert ran_before < len(done) / 2  # the kill came early in the drain
        assert lost == []
        assert refused == []  # kombu's publish retries rode out the failover
        assert all(worker.returncode is None for worker in started)  # no restart
        # Bound: only what the workers held (prefetch 1 x 3 process slots), or had acked
        # into the dead master's last unreplicated moment, can run twice: 4x that.
        assert duplicates <= 12, duplicates
        for worker in started:
            log = worker.log_text()
            assert SECRET not in log
        assert any("refreshing the slot map" in w.log_text() for w in started)


# --- 3. a live reshard of the busy queue's slot ------------------------------------------


def test_a_live_reshard_of_a_busy_queues_slot_loses_nothing_and_duplicates_nothing(
    cluster: LocalRedisCluster,
    counter: tuple[str, redis.Redis],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A queue in the first third of the slots (the first master's, 0-5460): on either
    # other master it is then the lowest slot, the one `redis-cli --cluster reshard`
    # moves first.
    client = cluster.client()
    try:
        queue = next(f"rq{i}" for i in range(1000) if client.keyslot(f"{{rq{i}}}") < 5461)
        keys = queue_keys("", queue)
        slot = int(client.keyslot(keys["lists"][0]))
    finally:
        client.close()
    first = cluster.master_for(keys["lists"][0])
    url, count = counter
    host = _host(monkeypatch, tmp_path, "scen_reshard", cluster, url, IGNORE_RESULT="1")
    total = 3000
    acknowledged: list[int] = []
    refused: list[str] = []

    def publish() -> None:
        for n in range(total):
            try:
                host.work.apply_async(("rs", n), queue=queue)
            except Exception as exc:
                refused.append(repr(exc))
            else:
                acknowledged.append(n)
            time.sleep(0.003)

    moves: list[str] = []
    with workers(host, ("drain", "solo", 1), queues=[queue]) as (worker,):
        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        # Move the slot around the three masters while it is busy, twice around.
        for _ in range(2):
            for target in list(cluster.masters):
                source = cluster.master_for(keys["lists"][0])
                if target == source:
                    continue
                wait_for(lambda: int(count.hlen("runs:rs")) > 0, 60, "the drain to run")
                began = time.monotonic()
                moved = migrate_slot(cluster, slot, source, target, pause=0.2)
                moves.append(
                    f"{source}->{target}: {moved} keys in {time.monotonic() - began:.2f} s"
                )
                assert cluster.master_for(keys["lists"][0]) == target
                time.sleep(0.5)
        # Then redis-cli's own reshard of one slot, from a master where it is the lowest.
        source = cluster.master_for(keys["lists"][0])
        if source == first:
            source = next(p for p in cluster.masters if p != first)
            migrate_slot(cluster, slot, first, source, pause=0.2)
            moves.append(f"{first}->{source}")
        target = next(p for p in cluster.masters if p not in (source, first))
        began = time.monotonic()
        reshard(cluster, source, target, 1)
        moves.append(
            f"redis-cli --cluster reshard --cluster-slots 1 {source}->{target} in "
            f"{time.monotonic() - began:.2f} s"
        )
        assert cluster.master_for(keys["lists"][0]) == target
        thread.join(timeout=120)
        assert not thread.is_alive()
        wait_for(lambda: count.hlen("runs:rs") >= len(acknowledged), 120, "the drain to finish")
        time.sleep(1.0)  # a duplicate, if any, would run within a lease of the last one
        ran = runs(count, "rs")
        lost = sorted(set(acknowledged) - set(ran))
        duplicates = sum(v - 1 for v in ran.values())
        log = worker.log_text()
        print(
            f"slot {slot} of queue {queue!r} moved {len(moves)} times ({'; '.join(moves)}) "
            f"while {len(acknowledged)} tasks were published and drained: {len(refused)} "
            f"refused, {len(lost)} lost, {duplicates} duplicates; worker warnings: "
            f"{log.count('refreshing the slot map')}"
        )
        assert refused == []
        assert lost == []
        assert duplicates == 0
        assert worker.returncode is None
        assert _queue_depths(cluster, [queue]) == [0]


# --- 4. load spread over the masters -----------------------------------------------------


def test_six_queues_two_per_master_spread_the_commands_evenly(
    cluster: LocalRedisCluster,
    counter: tuple[str, redis.Redis],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queues = queues_per_master(cluster, 2, "lq")
    masters = cluster.masters
    url, count = counter
    host = _host(monkeypatch, tmp_path, "scen_spread", cluster, url, IGNORE_RESULT="1")
    per_queue = 500
    # solo: a prefork worker drains at most 2 tasks per 0.1 s poll here (docs/cluster.md).
    with workers(host, ("spread", "solo", 1), queues=queues):
        before = {port: commandstats(port, SECRET) for port in masters}
        for n in range(per_queue * len(queues)):
            host.work.apply_async(("spread", n), queue=queues[n % len(queues)])
        wait_for(lambda: count.hlen("runs:spread") == per_queue * len(queues), 120, "the drain")
        after = {port: commandstats(port, SECRET) for port in masters}
    calls = {
        port: sum(after[port].values()) - sum(before[port].get(c, 0) for c in after[port])
        for port in masters
    }
    mean = sum(calls.values()) / len(calls)
    spread = {port: round(100 * (n - mean) / mean, 1) for port, n in calls.items()}
    by_command = {
        port: {
            c: after[port][c] - before[port].get(c, 0)
            for c in after[port]
            if after[port][c] - before[port].get(c, 0) > 0
        }
        for port in masters
    }
    print(
        f"{per_queue * len(queues)} tasks over 6 queues (2 per master): commands per master "
        f"{calls}, off the mean by % {spread}; per command {by_command}"
    )
    assert all(abs(p) <= 20 for p in spread.values()), spread
