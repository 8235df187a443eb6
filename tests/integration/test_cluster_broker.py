"""Redis Cluster as the broker: a real 3+3 cluster, real workers, results on the cluster.

The app is ``make_app(broker_url="rediscluster://...", result_backend="rediscluster://...")``;
its workers consume three queues whose hash tags live on three different masters. Every
task run is counted in a Redis hash on the cluster (``HINCRBY``), so "ran exactly once"
is read from Redis, not inferred from results.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeryredis.testing import LocalRedisCluster, WorkerProcess
from celeryredis.transport._cluster import queue_keys
from tests._cluster_host import RUNS_CLIENT, cluster_host, ready_worker
from tests._util import wait_for

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Pa55"  # one of tests/conftest.py's SECRETS

APP = (
    """
import os
import time

import redis.cluster
from celeryredis import make_app

URL = os.environ["CLUSTER_URL"]
app = make_app(
    "clusterbrokerapp",
    broker_url=URL,
    result_backend=URL,
    preset="testing",
    celeryredis_lease_seconds=3.0,
)
"""
    + RUNS_CLIENT
    + """

@app.task(shared=False)
def work(key, n):
    runs().hincrby("{runs}:" + key, str(n), 1)
    return n * 2


@app.task(shared=False)
def slow(key, seconds):
    runs().hincrby("{runs}:" + key, "slow", 1)
    time.sleep(seconds)
    return "done"
"""
)


def _queues_on_distinct_masters(cluster: LocalRedisCluster) -> list[str]:
    chosen: dict[int, str] = {}
    for i in range(200):
        name = f"cq{i}"
        chosen.setdefault(cluster.master_for(queue_keys("", name)["lists"][0]), name)
        if len(chosen) == 3:
            break
    assert len(chosen) == 3, chosen
    return list(chosen.values())


@pytest.fixture(scope="module")
def host(
    redis_cluster: LocalRedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The host module (``app``, ``work``, ``slow``, ``QUEUES``, ``DIR``, ``ENV``)."""
    directory = tmp_path_factory.mktemp("clusterbroker")
    with cluster_host(redis_cluster, directory, "clusterbrokerapp", APP) as module:
        module.QUEUES = _queues_on_distinct_masters(redis_cluster)
        yield module


def _worker(host: Any, name: str, pool: str, concurrency: int = 1) -> WorkerProcess:
    return ready_worker(host, name, queues=host.QUEUES, pool=pool, concurrency=concurrency)


def test_the_broker_url_selects_the_cluster_transport(host: Any) -> None:
    conf = host.app.conf
    assert conf.broker_url.startswith("celeryrediscluster://127.0.0.1:")
    assert conf.broker_read_url == conf.broker_url
    with host.app.connection_for_write() as conn:
        assert type(conn.transport).__module__ == "celeryredis.transport._cluster"


def test_1000_tasks_over_3_masters_run_once_each_on_a_solo_and_a_prefork_worker(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    queues = host.QUEUES
    masters = {redis_cluster.master_for(queue_keys("", q)["lists"][0]) for q in queues}
    assert len(masters) == 3  # three different masters own the three queues
    solo = _worker(host, "solo", "solo")
    prefork = _worker(host, "prefork", "prefork", concurrency=2)
    try:
        results = [host.work.apply_async(("bulk", n), queue=queues[n % 3]) for n in range(1000)]
        assert [r.get(timeout=80) for r in results] == [2 * n for n in range(1000)]
        client = redis_cluster.client()
        try:
            counts = client.hgetall("{runs}:bulk")
            per_queue = [client.llen(queue_keys("", q)["lists"][0]) for q in queues]
            unacked = [client.hlen(queue_keys("", q)["unacked"]) for q in queues]
        finally:
            client.close()
        assert len(counts) == 1000
        assert set(counts.values()) == {b"1"}, "a task ran more than once"
        assert per_queue == [0, 0, 0]
        logs = solo.log_text() + prefork.log_text()
        assert "Task clusterbrokerapp.work" in solo.log_text()
        assert "Task clusterbrokerapp.work" in prefork.log_text()
        assert "Traceback" not in logs

        # Remote control (broadcast over PUBLISH/SUBSCRIBE) reaches both workers.
        replies = host.app.control.ping(timeout=3.0)
        names = {name.split("@", 1)[0] for reply in replies for name in reply}
        assert names == {"solo", "prefork"}, replies
        command = [sys.executable, "-m", "celery", "-A", "clusterbrokerapp"]
        command += ["inspect", "ping", "--timeout", "5"]
        cli = subprocess.run(
            command,
            cwd=host.DIR,
            env={**os.environ, **host.ENV, "PYTHONPATH": str(host.DIR)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "2 nodes online" in cli.stdout, cli.stdout
        assert "solo@" in cli.stdout
        assert "prefork@" in cli.stdout

        # The acks of the last tasks reach Redis (piggybacked, or by the lease thread).
        def acked() -> bool:
            c = redis_cluster.client()
            try:
                return all(c.hlen(queue_keys("", q)["unacked"]) == 0 for q in queues)
            finally:
                c.close()

        wait_for(acked, 10, f"no unacked entries left (had {unacked})")
    finally:
        solo.stop()
        prefork.stop()


def test_a_worker_killed_mid_task_its_task_runs_again_after_the_lease(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    queue = host.QUEUES[1]
    first = _worker(host, "victim", "solo")
    client = redis_cluster.client()
    try:
        result = host.slow.apply_async(("killed", 2.0), queue=queue)
        wait_for(lambda: client.hget("{runs}:killed", "slow") == b"1", 30, "the task to start")
        first.kill()
        assert client.hlen(queue_keys("", queue)["unacked"]) == 1
        second = _worker(host, "rescuer", "solo")
        try:
            assert result.get(timeout=30) == "done"
            assert client.hget("{runs}:killed", "slow") == b"2"
            assert "requeued 1 message(s) whose lease expired" in second.log_text()
        finally:
            second.stop()
    finally:
        first.stop()
        client.close()


def test_the_worker_fixture_points_a_worker_at_the_test_cluster_and_checks_every_node(
    host: Any, redis_cluster: LocalRedisCluster, celery_worker_process: Any
) -> None:
    from celeryredis.testing._guard import check_urls
    from celeryredis.testing._server import _free_port, started_here

    worker = celery_worker_process(
        "clusterbrokerapp",
        redis_url=redis_cluster.url,
        cwd=host.DIR,
        env=host.ENV,
        pool="solo",
        queues=host.QUEUES,
    )
    worker.wait_ready(timeout=60)
    assert "celeryredis.testing: verified: broker celeryrediscluster://" in worker.log_text()
    assert host.work.apply_async(("guarded", 21), queue=host.QUEUES[0]).get(timeout=30) == 42
    # A node the session did not start is refused, in either cluster URL form.
    ours, other = redis_cluster.ports[0], _free_port()  # `other`: a port nobody started
    for url in (
        f"rediscluster://127.0.0.1:{ours},127.0.0.1:{other}/0",
        f"celeryrediscluster://127.0.0.1:{ours}/0;celeryrediscluster://127.0.0.1:{other}/0",
    ):
        (problem,) = check_urls({"broker_url": url}, started_here())
        assert f"127.0.0.1:{other} is not a redis-server this test session started" in problem


# --- the transport through kombu alone (no worker) ----------------------------------------


@pytest.fixture
def kombu_conn(redis_cluster: LocalRedisCluster) -> Iterator[Any]:
    from kombu import Connection

    from celeryredis.transport import cluster_broker_url

    url = cluster_broker_url(redis_cluster.url)
    with Connection(url, transport_options={"lease_seconds": 2.0}) as conn:
        yield conn


def _unacked(cluster: LocalRedisCluster, queue: str) -> int:
    client = cluster.client()
    try:
        return int(client.hlen(queue_keys("", queue)["unacked"]))
    finally:
        client.close()


def test_get_ack_reject_size_and_purge_through_kombu(
    kombu_conn: Any, redis_cluster: LocalRedisCluster, request: pytest.FixtureRequest
) -> None:
    from kombu import Exchange, Queue

    name = f"kq-{request.node.name[-20:]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    bound = queue(kombu_conn.default_channel)
    bound.declare()
    producer = kombu_conn.Producer()
    for i in range(3):
        producer.publish({"i": i}, exchange=queue.exchange, routing_key=name)
    assert bound.queue_declare(passive=True).message_count == 3

    first = bound.get(no_ack=True)
    assert first is not None
    assert first.payload == {"i": 0}
    assert _unacked(redis_cluster, name) == 0  # no-ack: never recorded

    second = bound.get()
    assert second.payload == {"i": 1}
    assert _unacked(redis_cluster, name) == 1  # recorded with a lease
    second.reject(requeue=True)  # back to the front at once, entry removed
    assert _unacked(redis_cluster, name) == 0
    again = bound.get()
    assert again.payload == {"i": 1}
    assert again.delivery_tag == second.delivery_tag  # the same message, requeued
    again.ack()
    kombu_conn.default_channel.renew()  # the ack rides on this call
    assert _unacked(redis_cluster, name) == 0
    assert bound.purge() == 1
    assert bound.get() is None


def test_priorities_come_out_in_kombus_order(kombu_conn: Any) -> None:
    from kombu import Exchange, Queue

    queue = Queue("kprio", Exchange("kprio", type="direct"), routing_key="kprio")
    bound = queue(kombu_conn.default_channel)
    bound.declare()
    bound.purge()
    producer = kombu_conn.Producer()
    for priority in (9, 0, 5):
        producer.publish(
            {"p": priority}, exchange=queue.exchange, routing_key="kprio", priority=priority
        )
    got = []
    for _ in range(3):
        message = bound.get(no_ack=True)
        got.append(message.payload["p"])
    # kombu's Redis rule, kept: lower step first (0, then 3-5 -> step 3, then 9).
    assert got == [0, 5, 9]


def test_a_broadcast_subscription_no_node_takes_is_taken_again_later(
    redis_cluster_factory: Any,
) -> None:
    """A consumer whose broadcast node died, and that no node would take, lives on.

    Every master is SIGKILLed, so no replica can take over (they need the masters'
    votes) and every try to subscribe again is refused. The transport's wait must go on
    without the subscription: it raised ``AttributeError``, which stopped a worker in a
    failover run, and afterwards it never subscribed again, so remote control
    (``revoke``, ``ping``) was deaf for good. Once the masters are back, a broadcast
    reaches the consumer again, also when another fanout queue was consumed first.
    """
    from kombu import Connection, Consumer, Exchange, Producer, Queue

    from celeryredis.transport import cluster_broker_url

    cluster = redis_cluster_factory(node_timeout_ms=1000)
    url = cluster_broker_url(cluster.url)
    exchange, second = Exchange("bcast", type="fanout"), Exchange("bcast2", type="fanout")
    got: list[Any] = []

    def broadcast_arrives(consuming: Any, n: int, to: Any = exchange) -> bool:
        with Connection(url) as producing:
            Producer(producing.default_channel, exchange=to).publish({"n": n})
        deadline = time.monotonic() + 1.0
        while {"n": n} not in got and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                consuming.drain_events(timeout=0.2)
        return {"n": n} in got

    def consume(channel: Any, name: str, source: Any) -> None:
        Consumer(
            channel,
            [Queue(name, source, auto_delete=True)],
            callbacks=[lambda body, message: got.append(body)],
            no_ack=True,
        ).consume()

    with Connection(url) as consuming:
        channel = consuming.default_channel
        consume(channel, "bcast-q", exchange)
        assert broadcast_arrives(consuming, 1)

        masters = list(cluster.masters)
        for port in masters:
            cluster.kill(port)
        channel.wait_sources(0.1)  # what the transport's wait calls: finds the loss
        deadline = time.monotonic() + 1.5  # several tries to subscribe again, all refused
        while time.monotonic() < deadline:
            with pytest.raises(TimeoutError):
                consuming.drain_events(timeout=0.2)

        for port in masters:
            cluster.node(port).restart()
        cluster.wait_ok(timeout=30)
        # A fanout queue consumed now subscribes all of them again, not only its own.
        consume(channel, "bcast-q2", second)
        n = 2
        deadline = time.monotonic() + 30
        while not broadcast_arrives(consuming, n):
            assert time.monotonic() < deadline, "no broadcast arrived after the masters came back"
            n += 1
        assert broadcast_arrives(consuming, n + 1, to=second)


# --- a master SIGKILLed mid-drain ----------------------------------------------------------

FAILOVER_APP = """
import os
import time

import redis
from celeryredis import make_app

app = make_app(
    "failoverbroker",
    broker_url=os.environ["CLUSTER_URL"],
    result_backend=os.environ["COUNT_URL"],
    preset="testing",
    celeryredis_lease_seconds=3.0,
    task_ignore_result=True,
    task_publish_retry_policy={
        "max_retries": 60, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.2,
    },
)
counts = redis.Redis.from_url(os.environ["COUNT_URL"])


@app.task(shared=False)
def tick(n):
    counts.hincrby("runs", str(n), 1)
    time.sleep(0.005)
"""


def _tick_arg(raw: bytes) -> int | None:
    """The ``n`` of a stored ``tick(n)`` message (a list entry or an unacked entry)."""
    import base64
    import json

    try:
        message = json.loads(raw)
        if isinstance(message, list):  # an unacked entry: [message, exchange, routing key]
            message = message[0]
        args = json.loads(base64.b64decode(message["body"]))[0]
        return int(args[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _where_are_they(
    cluster: LocalRedisCluster, queue: str, acknowledged: list[int], counts: Any, worker: Any
) -> str:
    """What a failed wait reports: the publishes that did not run and where they are."""
    ran = {int(k) for k in counts.hkeys("runs")}
    missing = sorted(set(acknowledged) - ran)
    keys = queue_keys("", queue)
    found: dict[str, list[int]] = {}
    client = cluster.client()
    try:
        entries: dict[str, list[bytes]] = {k: client.lrange(k, 0, -1) for k in keys["lists"]}
        entries["unacked"] = list(client.hvals(keys["unacked"]))
        entries["poison"] = client.lrange(keys["poison"], 0, -1)
        index = client.zcard(keys["index"])
    finally:
        client.close()
    for where, raws in entries.items():
        for raw in raws:
            n = _tick_arg(raw)
            if n in missing:
                found.setdefault(where, []).append(n)
    return (
        f"{len(missing)} of {len(acknowledged)} acknowledged publishes did not run within "
        f"60 s: {missing[:40]}; found in {found} (index entries: {index}, unacked: "
        f"{len(entries['unacked'])}); worker alive: {worker.returncode is None}; "
        f"worker log tail:\n{worker.log_text()[-4000:]}"
    )


def test_a_master_killed_mid_drain_loses_no_acknowledged_publish(
    redis_cluster_factory: Any,
    tmp_path: Path,
    record_property: Any,
) -> None:
    import threading

    import redis

    from celeryredis.testing import RedisServer

    cluster = redis_cluster_factory(node_timeout_ms=1000, password=SECRET)
    cluster.wait_replicas_synced(timeout=30)
    queue = "failq"
    victim = cluster.master_for(queue_keys("", queue)["lists"][0])
    with (
        RedisServer() as counter,
        cluster_host(
            cluster, tmp_path, "failoverbroker", FAILOVER_APP, {"COUNT_URL": counter.url}
        ) as host,
    ):
        worker = WorkerProcess(
            "failoverbroker",
            cwd=tmp_path,
            env=host.ENV,
            pool="solo",
            queues=[queue],
            log_path=tmp_path / "worker.log",
        )
        counts = redis.Redis.from_url(counter.url)
        acknowledged: list[int] = []
        refused: list[str] = []

        killed = threading.Event()

        def publish() -> None:
            for n in range(800):
                if n == 400:
                    killed.wait(60)  # the second half goes out while the master is down
                try:
                    host.tick.apply_async((n,), queue=queue)
                except Exception as exc:  # a publish the caller was told failed
                    refused.append(repr(exc))
                else:
                    acknowledged.append(n)

        try:
            worker.wait_ready(timeout=60)
            publisher = threading.Thread(target=publish, daemon=True)
            publisher.start()
            wait_for(lambda: counts.hlen("runs") >= 200, 60, "200 tasks to run")
            killed_at = time.monotonic()
            cluster.kill(victim)
            ran_before, published_before = counts.hlen("runs"), len(acknowledged)
            killed.set()
            publisher.join(timeout=90)
            assert not publisher.is_alive()

            def all_ran() -> bool:
                ran = {int(k) for k in counts.hkeys("runs")}
                return set(acknowledged) <= ran

            try:
                wait_for(all_ran, 60, "every acknowledged publish to run")
            except pytest.fail.Exception:
                pytest.fail(_where_are_they(cluster, queue, acknowledged, counts, worker))
            recovered_after = time.monotonic() - killed_at
            runs = {int(k): int(v) for k, v in counts.hgetall("runs").items()}
            lost = sorted(set(acknowledged) - set(runs))
            duplicates = sum(v - 1 for v in runs.values())
            record_property("acknowledged", len(acknowledged))
            record_property("refused_publishes", len(refused))
            record_property("duplicates", duplicates)
            record_property("all_ran_after_kill_s", round(recovered_after, 2))
            record_property("ran_before_kill", ran_before)
            record_property("published_before_kill", published_before)
            print(
                f"master killed mid-drain ({ran_before} run, {published_before} published): "
                f"{len(acknowledged)} publishes acknowledged, "
                f"{len(refused)} refused, {len(lost)} lost, {duplicates} duplicate runs; "
                f"all acknowledged ran {recovered_after:.2f} s after the kill; refused: {refused}"
            )
            assert ran_before < 400  # the kill came mid-drain
            assert published_before == 400  # and half the publishes came after it
            assert lost == []
            assert refused == []  # every publish rode out the failover (kombu's retries)
            assert worker.returncode is None  # the worker rode it out
            log = worker.log_text()
            assert "refreshing the slot map" in log
            assert "celeryrediscluster://:***@127.0.0.1:" in log  # the worker's banner
            assert SECRET not in log
        finally:
            worker.stop()
            counts.close()
