"""Fetch ahead: a task that succeeded inside its own delivery has the next fetch sent at once.

In the solo pool Celery runs a task inside the delivery of its message, then acks it on
the event loop's next pass, and the next fetch used to leave after that. The reliable
transport sends that fetch (carrying this task's ack) from ``task_postrun`` instead, so
its round trip overlaps the rest of Celery's work for the task (``docs/transport.md``,
"Fetch ahead"). These tests drive the reliable channel through kombu against a real
redis-server and fire Celery's real ``task_postrun`` signal where the solo pool fires it;
the last one drains through a real solo worker.
"""

from __future__ import annotations

import contextlib
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.signals import task_postrun
from kombu import Connection, Consumer, Exchange, Producer, Queue

from celeryredis import make_app
from celeryredis.testing import RedisServer
from celeryredis.transport import reliable_url
from tests._util import wait_for

pytestmark = pytest.mark.integration


def _fetches(client: redis.Redis) -> int:
    """Fetches the server ran so far: the fetch script reads ``TIME`` once per call that
    asks for messages (and a worker's restore sweep once a sweep)."""
    return int(client.info("commandstats").get("cmdstat_time", {}).get("calls", 0))


@pytest.fixture
def server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_server_factory()


def _drain(
    server: RedisServer, on_task: Callable[[Any, Any, redis.Redis], None], n: int = 3
) -> list[int]:
    """Publish ``n`` messages (task ids ``t0``...) and consume them at prefetch 1."""
    client = server.client()
    got: list[int] = []
    queue = Queue("fa", Exchange("fa", type="direct"), routing_key="fa")
    with Connection(reliable_url(server.url)) as conn:
        queue(conn.default_channel).declare()
        producer = Producer(conn.default_channel)
        for i in range(n):
            producer.publish(
                {"i": i}, exchange=queue.exchange, routing_key="fa", headers={"id": f"t{i}"}
            )

        def on_message(body: Any, message: Any) -> None:
            got.append(body["i"])
            on_task(conn.default_channel, message, client)
            if not message.acknowledged:
                message.ack()

        consumer = Consumer(conn.default_channel, [queue], callbacks=[on_message])
        consumer.qos(prefetch_count=1)
        with consumer:
            deadline = time.monotonic() + 20
            while len(got) < n and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=1)
        conn.default_channel.renew()  # the last ack, if still queued, rides on this call
        assert client.hlen("unacked") == 0
    client.close()
    return got


@pytest.mark.parametrize("acks_late", [True, False], ids=["acks-late", "acked-at-receipt"])
def test_a_success_inside_the_delivery_sends_the_next_fetch_with_its_ack(
    server: RedisServer, acks_late: bool
) -> None:
    seen: list[tuple[bool, bool]] = []

    def on_task(channel: Any, message: Any, client: redis.Redis) -> None:
        before = _fetches(client)
        if not acks_late:
            message.ack()  # what Celery does before running a task without acks_late
        task_postrun.send(sender=None, task_id=message.headers["id"], state="SUCCESS")
        # The fetch left inside the signal: Redis runs it while the "task" is still here.
        wait_for(lambda: _fetches(client) == before + 1, 5, "the fetch sent at task_postrun")
        acked = not client.hexists("unacked", message.delivery_tag)  # its ack rode on it
        seen.append((acked, channel._in_flight is not None))

    assert _drain(server, on_task) == [0, 1, 2]
    assert seen == [(True, True)] * 3


@pytest.mark.parametrize(
    "postrun",
    [
        pytest.param(lambda m: {"task_id": m.headers["id"], "state": "FAILURE"}, id="failed"),
        pytest.param(lambda m: {"task_id": "an-eager-call", "state": "SUCCESS"}, id="other-id"),
        pytest.param(lambda m: {"task_id": m.headers["id"], "state": "RETRY"}, id="retry"),
    ],
)
def test_anything_but_its_own_success_leaves_the_fetch_to_the_loop(
    server: RedisServer, postrun: Callable[[Any], dict[str, Any]]
) -> None:
    """Celery decides between ack, reject and requeue for a task that did not succeed;
    an eager call inside the task fires ``task_postrun`` with its own id."""
    sent: list[bool] = []

    def on_task(channel: Any, message: Any, client: redis.Redis) -> None:
        task_postrun.send(sender=None, **postrun(message))
        sent.append(channel._in_flight is not None)
        assert client.hexists("unacked", message.delivery_tag)  # not acked ahead

    assert _drain(server, on_task) == [0, 1, 2]
    assert sent == [False] * 3


def test_a_success_in_another_thread_leaves_the_fetch_to_the_loop(server: RedisServer) -> None:
    """The thread pool runs tasks outside the delivery: nothing is sent from its threads."""
    sent: list[bool] = []

    def on_task(channel: Any, message: Any, client: redis.Redis) -> None:
        thread = threading.Thread(
            target=task_postrun.send,
            kwargs={"sender": None, "task_id": message.headers["id"], "state": "SUCCESS"},
        )
        thread.start()
        thread.join()
        sent.append(channel._in_flight is not None)

    assert _drain(server, on_task) == [0, 1, 2]
    assert sent == [False] * 3


HOST = """
import os

import redis

from celeryredis import make_app

app = make_app(
    "faapp",
    broker_url=os.environ["FA_URL"],
    result_backend=None,
    preset="production",
    task_ignore_result=True,
)
client = redis.Redis.from_url(os.environ["FA_URL"])


@app.task(shared=False)
def record(i):
    client.hincrby("fa:runs", str(i), 1)


@app.task(shared=False)
def nested(i):
    record.apply((f"inner-{i}",))  # an eager call inside: its own task_postrun
    client.hincrby("fa:runs", str(i), 1)


@app.task(shared=False)
def fails(i):
    client.hincrby("fa:runs", str(i), 1)
    raise ValueError(i)
"""


def test_a_solo_worker_runs_each_task_once_and_fetches_once_per_task(
    server: RedisServer, tmp_path: Path, celery_worker_process: Any
) -> None:
    (tmp_path / "faapp.py").write_text(textwrap.dedent(HOST))
    client = server.client()
    producer = make_app("fa-producer", broker_url=server.url, result_backend=None)
    try:
        names = ["faapp.record", "faapp.nested", "faapp.fails"]
        for i in range(300):
            producer.send_task(names[i % 3], (i,))
        before = _fetches(client)
        worker = celery_worker_process(
            "faapp", cwd=tmp_path, env={"FA_URL": server.url}, pool="solo"
        )
        worker.wait_ready()
        wait_for(lambda: client.hlen("fa:runs") >= 400, 60, "300 tasks and 100 inner calls")
        wait_for(lambda: client.hlen("unacked") == 0, 20, "no unacked entry left")
        runs = {k.decode(): int(v) for k, v in client.hgetall("fa:runs").items()}
        assert set(runs.values()) == {1}, "a task ran more than once"
        assert len(runs) == 400
        assert client.llen("celery") == 0
        fetches = _fetches(client) - before
        # About one fetch per task (the restore sweep's claim script reads TIME too,
        # about once a second).
        assert 300 <= fetches <= 330, fetches
        assert worker.returncode is None
    finally:
        producer.close()
        client.close()
