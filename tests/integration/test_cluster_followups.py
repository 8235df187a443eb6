"""The tools on a partitioned cluster broker: queue depths, poison items, a worker's poll age.

A real 3+3 cluster (the session ``redis_cluster``), a real solo worker and real kombu
connections. The app configures ``depthq`` and ``fq`` with 3 partitions and keeps its
keys under ``follow:`` (so other modules' workers and heartbeats do not mix in).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from celeryredis.cli import main as cli_main
from celeryredis.deadletter import DeadLetterQueue
from celeryredis.heartbeat import stall_after
from celeryredis.queues import PartitionDepth, inspect_queues
from celeryredis.testing import LocalRedisCluster, WorkerProcess
from celeryredis.transport import cluster_broker_url
from celeryredis.transport._cluster import queue_keys
from tests._cluster_host import cluster_host, ready_worker
from tests._util import wait_for

pytestmark = pytest.mark.integration

PREFIX = "follow:"
INTERVAL = 0.5  # the worker's heartbeat interval

APP = """
import os

from celeryredis import make_app

URL = os.environ["CLUSTER_URL"]
app = make_app(
    "followapp",
    broker_url=URL,
    result_backend=URL,
    preset="testing",
    celeryredis_cluster_partitions={"depthq": 3, "fq": 3},
    celeryredis_heartbeat_interval=0.5,
    celeryredis_dead_letter=True,
    # An item pushed around the push script rings no wake-up: fetch idle partitions often.
    broker_transport_options={"global_keyprefix": "follow:", "idle_fetch_interval": 0.5},
)


@app.task(shared=False)
def work(n):
    return n * 2
"""


@pytest.fixture(scope="module")
def host(
    redis_cluster: LocalRedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The host module and ``start_worker()`` (one solo worker on ``fq`` and ``plainq``)."""
    directory = tmp_path_factory.mktemp("clusterfollow")
    with cluster_host(redis_cluster, directory, "followapp", APP) as module:
        module.WORKER = None

        def start_worker() -> WorkerProcess:
            if module.WORKER is None:
                module.WORKER = ready_worker(module, "follow", queues=["fq", "plainq"])
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
            client.close()


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli_main, ["--app", "followapp", *args])


def _publish(url: str, queue: str, partitions: int, count: int) -> None:
    """``count`` messages through one kombu channel (round robin over ``partitions``)."""
    from kombu import Connection, Exchange, Producer, Queue

    bound = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)
    options = {"global_keyprefix": PREFIX, "partitions": {queue: partitions}}
    with Connection(url, transport_options=options) as conn:
        channel = conn.default_channel
        bound(channel).declare()
        producer = Producer(channel)
        for i in range(count):
            producer.publish({"i": i}, exchange=bound.exchange, routing_key=queue)


def test_queues_counts_every_partition_ever_used_and_shows_each(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    from kombu import Connection

    url = cluster_broker_url(redis_cluster.url)
    _publish(url, "depthq", 3, 9)  # 3 in each of partitions 0-2
    _publish(url, "depthq", 4, 4)  # another producer's count, 4: recorded; 1 in each
    client = redis_cluster.client()
    assert client.get(queue_keys(PREFIX, "depthq")["record"]) == b"4"
    client.close()
    # The app configures 3; the record says 4: all four are read.
    with Connection(url, transport_options={"global_keyprefix": PREFIX}) as conn:
        channel = conn.default_channel
        held = channel.basic_get("depthq", no_ack=False)  # partition 0's, unacked now
        assert held is not None
        (depth,) = inspect_queues(host.app, ["depthq"])
        assert depth.depth == 12
        assert depth.unacked == 1
        assert depth.partitions == (
            PartitionDepth(index=0, depth=3, unacked=1),
            PartitionDepth(index=1, depth=4, unacked=0),
            PartitionDepth(index=2, depth=4, unacked=0),
            PartitionDepth(index=3, depth=1, unacked=0),
        )
        listed = _cli("queues", "--json", "--queue", "depthq")
        assert listed.exit_code == 0, listed.output
        (row,) = json.loads(listed.output)
        assert (row["depth"], row["unacked"]) == (12, 1)
        assert row["partitions"] == [
            {"index": 0, "depth": 3, "unacked": 1},
            {"index": 1, "depth": 4, "unacked": 0},
            {"index": 2, "depth": 4, "unacked": 0},
            {"index": 3, "depth": 1, "unacked": 0},
        ]
        text = _cli("queues", "--queue", "depthq", "--queue", "plainq")
        assert text.exit_code == 0, text.output
        lines = text.output.splitlines()
        assert lines[1].split()[:2] == ["depthq", "12"]
        assert [line.split()[:4] for line in lines[2:6]] == [
            ["partition", "0", "3", "-"],
            ["partition", "1", "4", "-"],
            ["partition", "2", "4", "-"],
            ["partition", "3", "1", "-"],
        ]
        assert lines[6].split()[0] == "plainq"  # not partitioned: no partition lines
        assert len(lines) == 7
    # Closing the connection put the held message back.
    (depth,) = inspect_queues(host.app, ["depthq"])
    assert (depth.depth, depth.unacked) == (13, 0)


def test_poison_on_cluster_queues_reaches_the_dead_letter_queue(
    host: Any, redis_cluster: LocalRedisCluster
) -> None:
    host.start_worker()
    client = redis_cluster.client()
    garbage = {
        "fq": b"not a kombu message \xff (fq#1)",
        "plainq": b'{"no": "delivery tag"}',
    }
    # Pushed around the transport (no wake-up): the idle re-fetch finds them.
    client.lpush(queue_keys(PREFIX, "fq", partitions=3)["partitions"][1]["lists"][0], garbage["fq"])
    client.lpush(queue_keys(PREFIX, "plainq")["lists"][0], garbage["plainq"])
    dlq = DeadLetterQueue(host.app)

    def poisoned() -> dict[str, Any]:
        return {e.queue: e for e in dlq.list() if e.exception_type == "PoisonMessage"}

    wait_for(lambda: len(poisoned()) == 2, 30, "both poison items in the dead-letter queue")
    entries = poisoned()
    assert {q: e.raw_body for q, e in entries.items()} == garbage
    assert {e.reason for e in entries.values()} == {"decode_error"}
    assert all(e.worker and e.worker.startswith("follow@") for e in entries.values())
    for part in queue_keys(PREFIX, "fq", partitions=3)["partitions"]:
        assert client.llen(part["poison"]) == 0
    assert client.llen(queue_keys(PREFIX, "plainq")["poison"]) == 0
    client.close()
    listed = _cli("dlq", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = [r for r in json.loads(listed.output)["entries"] if r["reason"] == "decode_error"]
    assert sorted(r["queue"] for r in rows) == ["fq", "plainq"]
    assert all(r["raw"] for r in rows)
    # The worker still runs tasks on the partitioned queue.
    assert host.work.apply_async((21,), queue="fq").get(timeout=20) == 42


def test_check_reports_the_poll_age_of_a_cluster_worker(host: Any) -> None:
    host.start_worker()
    wait_for(
        lambda: _cli("check", "--worker", "follow").exit_code == 0, 20, "the worker's heartbeat"
    )

    def follow() -> dict[str, Any]:
        result = _cli("check", "--json")
        report = json.loads(result.output)
        (worker,) = [w for w in report["workers"] if w["hostname"].startswith("follow@")]
        return dict(worker)

    # The first beat is written as the consumer starts, before its first poll (None);
    # the next ones carry the age (before, every beat had None on a cluster).
    wait_for(lambda: follow()["poll_age_s"] is not None, 10, "a beat with a poll age")
    # An idle worker blocks in waits of at most 1 s and records each: its poll age stays
    # under the stall threshold beat after beat.
    seen: list[dict[str, Any]] = []
    start = time.monotonic()

    def beats() -> bool:
        seen.append(follow())
        return time.monotonic() - start > 4 * INTERVAL  # several beats read

    wait_for(beats, 20, "several heartbeats read")
    for worker in seen:
        assert worker["poll_age_s"] is not None, worker
        assert worker["poll_age_s"] < stall_after(INTERVAL), worker
        # Live and polling: "busy" while it runs a task (an earlier test's leftovers).
        assert worker["state"] in {"consuming", "busy"}, worker
    text = _cli("check")
    line = next(row for row in text.output.splitlines() if row.startswith("follow@"))
    assert line.split()[1] in {"consuming", "busy"}
    assert line.split()[3] != "-"  # the "last poll" column has an age
