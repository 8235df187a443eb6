"""Redis Cluster broker: a queue split into partitions, and the blocking wait when idle.

A real 3+3 cluster (the session ``redis_cluster``) and real workers. The partitioned
queue ``parted`` has 3 partitions (``{parted}``, ``{parted#1}``, ``{parted#2}``), which
land on 2 of the fixture's 3 masters. Every task run is counted in a Redis hash
(``HINCRBY``), so "ran exactly once" is read from Redis.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celeryredis.testing import LocalRedisCluster, WorkerProcess
from celeryredis.transport._cluster import queue_keys
from tests._cluster_host import RUNS_CLIENT, cluster_host, ready_worker
from tests._util import wait_for

pytestmark = pytest.mark.integration

PARTED = "parted"

APP = (
    """
import os

import redis.cluster
from celeryredis import make_app

URL = os.environ["CLUSTER_URL"]
app = make_app(
    "partapp",
    broker_url=URL,
    result_backend=URL,
    preset="testing",
    celeryredis_cluster_partitions={"parted": 3},
    # Long leases and sweeps and no idle re-fetch: an idle worker has no reason to
    # send a script call, so the test can tell a fetch from the silence.
    celeryredis_lease_seconds=120.0,
    celeryredis_lease_sweep_interval=100.0,
    broker_transport_options={"idle_fetch_interval": 600.0},
)
"""
    + RUNS_CLIENT
    + """

@app.task(shared=False)
def work(key, n):
    runs().hincrby("{runs}:" + key, str(n), 1)
    return n * 2
"""
)


@pytest.fixture(scope="module")
def host(
    redis_cluster: LocalRedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The host module (``app``, ``work``, ``DIR``, ``ENV``)."""
    with cluster_host(redis_cluster, tmp_path_factory.mktemp("clusterpart"), "partapp", APP) as m:
        yield m


def _worker(host: Any, name: str, queues: list[str]) -> WorkerProcess:
    return ready_worker(host, name, queues=queues)


def _lengths(cluster: LocalRedisCluster, queue: str, partitions: int) -> list[int]:
    client = cluster.client()
    try:
        return [
            sum(int(client.llen(key)) for key in part["lists"])
            for part in queue_keys("", queue, partitions=partitions)["partitions"]
        ]
    finally:
        client.close()


def _script_calls(cluster: LocalRedisCluster) -> dict[int, int]:
    """``EVALSHA`` + ``EVAL`` calls so far on each master (every fetch is one)."""
    import redis

    out = {}
    for port in cluster.masters:
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        out[port] = sum(
            int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
        )
    return out


def test_three_partitions_have_their_own_slots_on_two_masters(
    redis_cluster: LocalRedisCluster,
) -> None:
    keys = queue_keys("", PARTED, partitions=3)
    heads = [part["lists"][0] for part in keys["partitions"]]
    assert heads == ["{parted}", "{parted#1}", "{parted#2}"]
    assert keys["lists"][0] == "{parted}"  # partition 0 is the unpartitioned layout
    assert keys["record"] == "{parted}:partitions"
    masters = [redis_cluster.master_for(head) for head in heads]
    assert len(set(masters)) >= 2, masters


def test_a_partitioned_queue_spreads_tasks_counts_purges_and_runs_each_once(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    # No worker yet: the messages stay where the producer put them.
    results = [host.work.apply_async(("spread", n), queue=PARTED) for n in range(300)]
    lengths = _lengths(redis_cluster, PARTED, 3)
    assert sum(lengths) == 300
    assert all(n > 0 for n in lengths), lengths  # round robin: every partition has some
    with host.app.connection_for_write() as conn:
        channel = conn.default_channel
        assert channel.queue_declare(PARTED, passive=True).message_count == 300  # all three

    worker = _worker(host, "parted", [PARTED])
    try:
        assert [r.get(timeout=60) for r in results] == [2 * n for n in range(300)]
        client = redis_cluster.client()
        try:
            counts = client.hgetall("{runs}:spread")

            def acked() -> bool:
                parts = queue_keys("", PARTED, partitions=3)["partitions"]
                return all(client.hlen(part["unacked"]) == 0 for part in parts)

            wait_for(acked, 10, "no unacked entry left in any partition")
        finally:
            client.close()
        assert len(counts) == 300
        assert set(counts.values()) == {b"1"}, "a task ran more than once"
        assert _lengths(redis_cluster, PARTED, 3) == [0, 0, 0]
        assert "Traceback" not in worker.log_text()
    finally:
        worker.stop()

    # Purge covers every partition.
    for n in range(30):
        host.work.apply_async(("purged", n), queue=PARTED)
    assert all(n > 0 for n in _lengths(redis_cluster, PARTED, 3))
    with host.app.connection_for_write() as conn:
        assert conn.default_channel.queue_purge(PARTED) == 30
    assert _lengths(redis_cluster, PARTED, 3) == [0, 0, 0]


def test_an_idle_worker_sends_no_fetch_and_still_gets_the_next_message_at_once(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    worker = _worker(host, "idle", [PARTED, "plain"])
    try:
        # Settled: no script call for a full second (its start-up fetches and sweep done).
        def settled() -> bool:
            before = _script_calls(redis_cluster)
            time.sleep(1.0)
            return _script_calls(redis_cluster) == before

        wait_for(settled, 30, "the idle worker to stop sending script calls")
        before = _script_calls(redis_cluster)
        time.sleep(2.0)  # an observation window, not a wait for a condition
        assert _script_calls(redis_cluster) == before, "the idle worker fetched"
        # idle_fetch_interval is 600 s and the sweep every 100 s: only a wake-up can
        # make it fetch now, so the results prove the wake-up reached it.
        assert host.work.apply_async(("woken", 1), queue="plain").get(timeout=20) == 2
        assert host.work.apply_async(("woken", 2), queue=PARTED).get(timeout=20) == 4
        assert host.work.apply_async(("woken", 3), queue=PARTED).get(timeout=20) == 6
        assert host.work.apply_async(("woken", 4), queue=PARTED).get(timeout=20) == 8
        # enqueue_many's per-slot transactions ring the wake-up channels too.
        from celeryredis import enqueue_many

        wait_for(settled, 30, "the idle worker to settle again")
        results = enqueue_many(host.work, [(("bulk-woken", i), {}) for i in range(6)], queue=PARTED)
        assert [r.get(timeout=20) for r in results] == [0, 2, 4, 6, 8, 10]
        assert "Traceback" not in worker.log_text()
    finally:
        worker.stop()


# --- through kombu alone ----------------------------------------------------------------


@pytest.fixture
def kombu_url(redis_cluster: LocalRedisCluster) -> str:
    from celeryredis.transport import cluster_broker_url

    return cluster_broker_url(redis_cluster.url)


def test_a_consumer_with_fewer_partitions_drains_every_partition_ever_used(
    kombu_url: str, redis_cluster: LocalRedisCluster
) -> None:
    from kombu import Connection, Consumer, Exchange, Producer, Queue

    name = "shrunk"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(kombu_url, transport_options={"partitions": {name: 3}}) as old:
        bound = queue(old.default_channel)
        bound.declare()
        bound.purge()
        producer = Producer(old.default_channel)
        for i in range(9):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key=name)
    assert _lengths(redis_cluster, name, 3) == [3, 3, 3]

    got: list[int] = []
    # The count went down to 1 (no option): the record still says 3.
    with Connection(kombu_url, transport_options={"lease_seconds": 5.0}) as new:
        channel = new.default_channel
        assert channel.queue_declare(name, passive=True).message_count == 9

        def on_message(body: Any, message: Any) -> None:
            got.append(body["i"])
            message.ack()

        with Consumer(channel, [queue], callbacks=[on_message]):
            deadline = time.monotonic() + 20
            while len(got) < 9 and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    new.drain_events(timeout=1.0)
        channel.renew()  # the last acks
        channel.queue_delete(name)
    assert sorted(got) == list(range(9))
    assert _lengths(redis_cluster, name, 3) == [0, 0, 0]
    client = redis_cluster.client()
    try:
        assert client.get(queue_keys("", name)["record"]) is None  # deleted with the queue
    finally:
        client.close()


def _wake_options(name: str, partitions: int) -> dict[str, Any]:
    """Transport options: ``name`` in ``partitions`` partitions, no idle re-fetch."""
    return {"partitions": {name: partitions}, "idle_fetch_interval": 600.0}


@contextlib.contextmanager
def _idle_consumer(
    kombu_url: str, name: str, partitions: int
) -> Iterator[tuple[Any, Any, list[Any]]]:
    """A kombu consumer of ``name`` (``partitions`` partitions, no idle re-fetch) whose
    every partition is idle: subscribed to its wake-up and found empty.

    Yields the connection, the queue and the bodies received (each acked).
    """
    from kombu import Connection, Consumer, Exchange, Queue

    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    got: list[Any] = []
    with Connection(kombu_url, transport_options=_wake_options(name, partitions)) as conn:
        channel = conn.default_channel
        queue(channel).declare()
        queue(channel).purge()

        def on_message(body: Any, message: Any) -> None:
            got.append(body)
            message.ack()

        with Consumer(channel, [queue], callbacks=[on_message]):

            def idle() -> bool:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.05)
                return all(p in channel._idle for p in channel._parts(name))

            wait_for(idle, 10, "every partition to be idle")
            yield conn, queue, got
        channel.renew()


def test_a_blocked_kombu_consumer_is_woken_by_a_publish(kombu_url: str) -> None:
    import threading

    from kombu import Connection, Producer

    name = "wakeq"
    with _idle_consumer(kombu_url, name, 2) as (conn, queue, got):
        channel = conn.default_channel
        # The publisher goes once the consumer has named what it blocks on (every
        # partition idle: only its wake-up connections), not after a guessed delay.
        blocking = threading.Event()
        sources = channel.wait_sources

        def wait_sources(interval: float) -> tuple[list[Any], float | None]:
            found = sources(interval)
            if all(p in channel._idle for p in channel._parts(name)):
                blocking.set()
            return found

        channel.wait_sources = wait_sources
        with Connection(kombu_url, transport_options=_wake_options(name, 2)) as other:

            def publish() -> None:
                if not blocking.wait(10):
                    return  # never blocked: no message, and the drain below times out
                Producer(other.default_channel).publish(
                    {"hello": 1}, exchange=queue.exchange, routing_key=name
                )

            thread = threading.Thread(target=publish)
            thread.start()
            conn.drain_events(timeout=15)  # one message, or TimeoutError
            thread.join()
        assert blocking.is_set()  # the message came while the consumer blocked
    assert got == [{"hello": 1}]


def test_a_consumer_whose_wake_up_connections_were_killed_still_gets_the_next_message(
    kombu_url: str, redis_cluster: LocalRedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    import redis
    from kombu import Connection, Producer

    name = "killedwake"
    with _idle_consumer(kombu_url, name, 3) as (conn, queue, got):
        killed = 0
        for port in redis_cluster.masters:
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                killed += int(client.client_kill_filter(_type="pubsub"))
            finally:
                client.close()
        assert killed >= 2  # the wake-up connections (and no other test's)
        for _ in range(3):  # rounds in which the consumer notices and recovers
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.3)
        with Connection(kombu_url, transport_options=_wake_options(name, 3)) as other:
            producer = Producer(other.default_channel)
            for i in range(3):  # one per partition (round robin)
                producer.publish({"i": i}, exchange=queue.exchange, routing_key=name)
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=1.0)
    assert sorted(body["i"] for body in got) == [0, 1, 2]
    # It noticed the lost connections (not the 600 s safety net) and subscribed again.
    assert "refreshing the slot map" in caplog.text


def test_a_partition_rung_while_another_is_busy_is_served_before_the_busy_one_drains(
    kombu_url: str,
) -> None:
    from kombu import Connection, Consumer, Exchange, Producer, Queue

    name = "ringbusy"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    options = {"partitions": {name: 2}, "idle_fetch_interval": 600.0}
    order: list[str] = []
    with (
        Connection(kombu_url, transport_options=options) as conn,
        Connection(kombu_url, transport_options=options) as other,
    ):
        channel, producing = conn.default_channel, other.default_channel
        queue(channel).declare()
        queue(channel).purge()
        producer = Producer(producing)

        def publish(partition: int, body: str) -> None:
            producing._next_part[name] = partition  # steer the round robin
            producer.publish(body, exchange=queue.exchange, routing_key=name)

        def on_message(body: Any, message: Any) -> None:
            order.append(body)
            message.ack()
            if body == "busy-0":  # partition 0 is busy now; ring the idle partition 1
                publish(1, "rung")

        channel.basic_qos(0, 1, False)  # one message per fetch
        with Consumer(channel, [queue], callbacks=[on_message]):

            def idle() -> bool:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.05)
                return all(p in channel._idle for p in channel._parts(name))

            wait_for(idle, 10, "both partitions to be idle")
            for i in range(6):
                publish(0, f"busy-{i}")
            deadline = time.monotonic() + 10
            while len(order) < 7 and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=1.0)
        channel.renew()
    assert sorted(order) == sorted([*(f"busy-{i}" for i in range(6)), "rung"]), order
    # Read at the next round, not when partition 0 runs dry.
    assert order.index("rung") < order.index("busy-5"), order


def test_an_ack_from_another_thread_ends_the_wait_of_a_full_window(kombu_url: str) -> None:
    """With its prefetch window full, a consumer waits for an ack, not for a timer.

    A prefork pool acks from its result thread while the consumer waits; when only a
    timer ended that wait, a worker took one window per ``polling_interval`` (16-19
    tasks/s with ``-c 2``). The channel's ``slot_freed`` pipe is among what the
    transport selects on while the window is full, and an ack makes it readable.
    """
    import select
    import threading

    from kombu import Connection, Consumer, Exchange, Producer, Queue

    name = "fullwindow"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    held: list[Any] = []
    with Connection(kombu_url, transport_options={"polling_interval": 30.0}) as conn:
        channel = conn.default_channel
        queue(channel).declare()
        queue(channel).purge()
        producer = Producer(channel)
        for i in range(2):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key=name)

        def delivered(count: int) -> bool:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.5)
            return len(held) >= count

        with Consumer(channel, [queue], callbacks=[lambda body, m: held.append(m)]):
            channel.basic_qos(0, 1, False)
            wait_for(lambda: delivered(1), 20, "the first message")
            assert len(held) == 1
            assert not channel.qos.can_consume()
            sockets, limit = channel.wait_sources(30.0)
            assert channel.slot_freed in sockets
            assert limit == 30.0
            assert select.select([channel.slot_freed], [], [], 0)[0] == []
            acker = threading.Thread(target=held[0].ack)
            acker.start()
            acker.join(10)
            readable = select.select([channel.slot_freed], [], [], 10)[0]
            assert readable == [channel.slot_freed], "the ack did not end the wait"
            wait_for(lambda: delivered(2), 20, "the second message after the ack")
            held[1].ack()
        channel.queue_delete(name)
