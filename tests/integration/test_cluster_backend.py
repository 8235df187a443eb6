"""The Redis Cluster result backend against a real 3+3 cluster, a real broker and a real worker.

The broker is a single-node redis-server (a cluster broker: test_cluster_broker.py);
the result backend is ``rediscluster://`` on a cluster started by the test fixtures.
"""

from __future__ import annotations

import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import chain, chord, group

from celeryredis.testing import LocalRedisCluster, RedisServer, WorkerProcess
from tests._util import import_host_module, wait_for

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Pa55"  # one of tests/conftest.py's SECRETS

APP = """
import os

from celeryredis import make_app

app = make_app(
    "clusterapp",
    broker_url=os.environ["CLUSTER_BROKER"],
    result_backend=os.environ["CLUSTER_BACKEND"],
    preset="testing",
    # Ride out a failover (about 2-3 s on loopback) when storing or reading a result:
    # the testing preset gives up after 2 retries.
    result_backend_always_retry=True,
    result_backend_max_retries=20,
    result_backend_transport_options={
        "retry_policy": {
            "max_retries": 40, "interval_start": 0, "interval_step": 0.25, "interval_max": 0.25,
        },
    },
)


@app.task(shared=False)
def add(x, y):
    return x + y


@app.task(shared=False)
def total(values):
    return sum(values)
"""


def _start(
    directory: Path, monkeypatch: pytest.MonkeyPatch, broker: str, backend: str, module: str
) -> tuple[Any, WorkerProcess]:
    (directory / f"{module}.py").write_text(textwrap.dedent(APP))
    env = {"CLUSTER_BROKER": broker, "CLUSTER_BACKEND": backend}
    host = import_host_module(monkeypatch, directory, module, env)
    worker = WorkerProcess(
        module, cwd=directory, env=env, concurrency=2, log_path=directory / "worker.log"
    )
    try:
        worker.wait_ready(timeout=60)
    except BaseException:
        worker.stop()
        raise
    return host, worker


@pytest.fixture(scope="module")
def cluster_app(
    redis_cluster: LocalRedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The host module (``app``, ``add``, ``total``) with one prefork worker for the module."""
    directory = tmp_path_factory.mktemp("clusterapp")
    with RedisServer() as broker, pytest.MonkeyPatch.context() as monkeypatch:
        host, worker = _start(directory, monkeypatch, broker.url, redis_cluster.url, "clusterapp")
        try:
            yield host
        finally:
            worker.stop()


def _task_keys_per_master(cluster: LocalRedisCluster) -> dict[int, int]:
    counts = {}
    for port in cluster.masters:
        client = redis.Redis(host="127.0.0.1", port=port, password=cluster.password)
        try:
            counts[port] = sum(1 for _ in client.scan_iter(match="celery-task-meta-*", count=500))
        finally:
            client.close()
    return counts


def _subscribers(cluster: LocalRedisCluster, channel: bytes) -> int:
    """Subscribers to ``channel`` over every node (each node counts its own clients)."""
    count = 0
    for port in cluster.ports:
        node = redis.Redis(host="127.0.0.1", port=port, password=cluster.password)
        try:
            count += dict(node.pubsub_numsub(channel))[channel]
        finally:
            node.close()
    return count


def test_300_results_come_back_and_spread_over_every_master(
    cluster_app: Any, redis_cluster: LocalRedisCluster
) -> None:
    results = [cluster_app.add.delay(i, i) for i in range(300)]
    assert [r.get(timeout=60) for r in results] == [2 * i for i in range(300)]
    client = redis_cluster.client()
    try:
        for r in results[:5]:
            assert client.exists(f"celery-task-meta-{{{r.id}}}") == 1
    finally:
        client.close()
    per_master = _task_keys_per_master(redis_cluster)
    assert len(per_master) == 3
    assert all(count > 0 for count in per_master.values()), per_master


def test_get_waits_on_the_pubsub_consumer(
    cluster_app: Any, redis_cluster: LocalRedisCluster
) -> None:
    backend = cluster_app.app.backend
    result = cluster_app.add.apply_async((20, 22), countdown=1)
    channel = backend.get_key_for_task(result.id)
    assert channel == f"celery-task-meta-{{{result.id}}}".encode()
    assert channel in backend.result_consumer.subscribed_to
    # Classic pub/sub: exactly one subscriber (ours) on the task's channel, cluster-wide.
    assert _subscribers(redis_cluster, channel) == 1
    assert result.get(timeout=30) == 42
    assert result.state == "SUCCESS"


def test_a_chain_of_100(cluster_app: Any) -> None:
    add = cluster_app.add
    flow = chain(add.s(0, 1), *(add.s(1) for _ in range(99)))
    assert flow.apply_async().get(timeout=60) == 100


def test_a_group_of_100_joins_natively(cluster_app: Any) -> None:
    add = cluster_app.add
    result = group(add.s(i, i) for i in range(100)).apply_async()
    assert result.get(timeout=60) == [2 * i for i in range(100)]
    result.save()
    restored = cluster_app.app.GroupResult.restore(result.id)
    assert restored is not None
    assert [child.id for child in restored.results] == [child.id for child in result.results]
    # get_many reads the results with one MGET per slot (mget_nonatomic).
    backend = cluster_app.app.backend
    got = dict(backend.get_many([child.id for child in result.results], timeout=10))
    assert sorted(meta["result"] for meta in got.values()) == [2 * i for i in range(100)]


def test_a_chord_of_100_counts_in_one_slot(
    cluster_app: Any, redis_cluster: LocalRedisCluster
) -> None:
    add, total = cluster_app.add, cluster_app.total
    result = chord(add.s(i, i) for i in range(100))(total.s())
    assert result.get(timeout=60) == sum(2 * i for i in range(100))
    group_id = result.parent.id
    client = redis_cluster.client()
    try:
        # The chord's state is cleaned up; its done marker sits in the group's slot.
        assert client.exists(f"celery-taskset-meta-{{{group_id}}}.j") == 0
        assert client.get(f"celery-taskset-meta-{{{group_id}}}.c") == b"done"
    finally:
        client.close()


def test_a_master_killed_during_a_run(
    redis_cluster_factory: Callable[..., LocalRedisCluster],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    cluster = redis_cluster_factory(password=SECRET, node_timeout_ms=1000)
    cluster.wait_replicas_synced(timeout=30)
    with RedisServer() as broker:
        host, worker = _start(tmp_path, monkeypatch, broker.url, cluster.url, "failoverapp")
        try:
            before = [host.add.delay(i, 1) for i in range(60)]
            assert [r.get(timeout=60) for r in before] == [i + 1 for i in range(60)]
            consumer = host.app.backend.result_consumer
            node = consumer._pubsub.get_pubsub_node()
            # The consumer subscribed on the master of its first task's slot: kill that one,
            # so its pub/sub connection has to move.
            assert node.port in cluster.masters
            victim = node.port
            client = cluster.client()
            on_victim = [
                r
                for r in before
                if client.get_node_from_key(f"celery-task-meta-{{{r.id}}}").port == victim
            ]
            client.close()

            killed_at = time.monotonic()
            cluster.kill(victim)
            during = [host.add.delay(i, 2) for i in range(60)]
            wait_for(
                lambda: len(cluster.masters) == 3 and victim not in cluster.masters,
                timeout=20,
                what="a replica to take over the killed master's slots",
            )
            promoted_after = time.monotonic() - killed_at
            after = [host.add.delay(i, 3) for i in range(60)]

            try:
                assert [r.get(timeout=60) for r in after] == [i + 3 for i in range(60)]
                assert [r.get(timeout=60) for r in during] == [i + 2 for i in range(60)]
            except BaseException:
                _report_failover_state(cluster, consumer, [*during, *after], worker)
                raise
            # Results written before the kill: those on the other masters are all there;
            # those on the killed master survive if the replica had them (async replication).
            client = cluster.client()
            try:
                victim_ids = {r.id for r in on_victim}
                lost = [r.id for r in before if not client.exists(f"celery-task-meta-{{{r.id}}}")]
            finally:
                client.close()
            assert not [task_id for task_id in lost if task_id not in victim_ids]
            assert consumer._pubsub.get_pubsub_node().port != victim
            log = worker.log_text()
            assert "rediscluster://:***@127.0.0.1:" in log  # the worker's banner
            assert SECRET not in log
            record_property("promoted_after_s", round(promoted_after, 2))
            record_property("before_on_killed_master", len(on_victim))
            record_property("before_lost", len(lost))
            print(
                f"failover: promoted after {promoted_after:.2f} s; {len(on_victim)} of 60 "
                f"earlier results were on the killed master, {len(lost)} lost"
            )
        finally:
            worker.stop()


def _report_failover_state(
    cluster: LocalRedisCluster, consumer: Any, results: list[Any], worker: WorkerProcess
) -> None:
    """Print what a failed failover run needs for its diagnosis (pytest shows it on failure).

    Which results are stored and which are still missing, where the result consumer
    listens, the cluster's view of itself, and the worker's log tail.
    """
    client = cluster.client()
    try:
        stored = [r.id for r in results if client.exists(f"celery-task-meta-{{{r.id}}}")]
        print(f"stored results: {len(stored)} of {len(results)}")
        print("cluster nodes:\n" + str(client.cluster_nodes()))
    except Exception as exc:  # a diagnosis must not hide the failure
        print(f"cluster unreadable: {exc!r}")
    finally:
        client.close()
    pubsub = consumer._pubsub
    node = pubsub.get_pubsub_node() if pubsub is not None else None
    print(f"consumer: pubsub on {node and node.name}, subscribed to {len(consumer.subscribed_to)}")
    print("worker log tail:\n" + "\n".join(worker.log_text().splitlines()[-120:]))


def test_health_pings_the_cluster_backend(
    cluster_app: Any, redis_cluster: LocalRedisCluster
) -> None:
    from celeryredis.health import check_health

    report = check_health(cluster_app.app, timeout=2.0)
    backend = next(part for part in report.parts if part.name == "backend")
    assert backend.status == "ok", backend
    assert "cluster reachable" in backend.reason


def test_a_result_stored_while_the_consumer_resubscribes_reaches_get(
    cluster_app: Any, redis_cluster: LocalRedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its pub/sub connection drops, the consumer subscribes again before it reads.

    A result stored and published between the two would otherwise reach nobody: read too
    early to be found, published before anyone listened, and ``get()`` would wait for
    ever. The result is stored exactly in that gap, right after the consumer's read; the
    subscription must already exist then.
    """
    app = cluster_app.app
    backend = app.backend
    consumer = backend.result_consumer
    task_id = str(uuid.uuid4())
    result = app.AsyncResult(task_id)
    consumer.consume_from(task_id)
    key = backend.get_key_for_task(task_id)
    assert _subscribers(redis_cluster, key) == 1
    read = backend.mget
    subscribers_at_read: list[int] = []

    def read_then_store(keys: list[Any]) -> list[Any]:
        metas = read(keys)
        if key in keys and not subscribers_at_read:
            subscribers_at_read.append(_subscribers(redis_cluster, key))
            backend.store_result(task_id, 42, "SUCCESS")  # SET, then PUBLISH
        return metas

    monkeypatch.setattr(backend, "mget", read_then_store)
    killed = 0
    for port in redis_cluster.ports:
        node = redis.Redis(host="127.0.0.1", port=port, password=redis_cluster.password)
        try:
            killed += node.client_kill_filter(_type="pubsub")
        finally:
            node.close()
    assert killed >= 1  # our consumer's pub/sub connection
    assert _subscribers(redis_cluster, key) == 0
    assert result.get(timeout=10) == 42
    # Subscribed again before the read. (Had it not been, the result could still arrive
    # by luck: the cluster bus relays a PUBLISH to the other nodes a moment later.)
    assert subscribers_at_read == [1]
