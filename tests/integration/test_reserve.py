"""The reserve: one message fetched ahead of the prefetch window, held by the transport.

With ``worker_prefetch_multiplier = 1`` a slot freed by an ack used to wait for a fetch
round trip (the ack, then the next message) before it had work again. The reliable
transport now takes one message more than the window in each fetch and keeps it out of
Celery's sight; a freed slot gets it on the event loop's next pass, with no round trip.
One that no slot takes within ``celeryredis_reserve_seconds`` goes back to the head of
its queue unchanged (``docs/transport.md``, "The reserve").

Only a prefork pool's main process reserves: its event loop keeps turning while the
children run tasks, so it can hand a reserve back on time (a solo worker runs each task
inside its loop). The kombu-level tests consume through kombu and its real event loop
against a real redis-server, as that main process (``prefork_main``); the last ones run
real workers.
"""

from __future__ import annotations

import contextlib
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.asynchronous import Hub

from celeryredis import _prefork
from celeryredis.testing import RedisServer, WorkerProcess
from celeryredis.transport import reliable_url
from tests._util import import_host_module, wait_for

pytestmark = pytest.mark.integration

QUEUE = Queue("rsv", Exchange("rsv", type="direct"), routing_key="rsv")


class Consuming:
    """A prefetch-1 consumer on the reliable transport, driven pass by pass on a kombu hub."""

    def __init__(self, url: str, reserve_seconds: float, *, ack: bool) -> None:
        self.hub = Hub()
        self.got: list[Any] = []
        self.messages: list[Any] = []
        self.conn = Connection(
            reliable_url(url), transport_options={"reserve_seconds": reserve_seconds}
        )
        channel = self.conn.default_channel
        QUEUE(channel).declare()
        self.consumer = Consumer(channel, [QUEUE], callbacks=[self._on_message], accept=["json"])
        self.consumer.qos(prefetch_count=1)
        self._ack = ack

    def _on_message(self, body: Any, message: Any) -> None:
        self.got.append(body)
        self.messages.append(message)
        if self._ack:
            message.ack()

    def start(self) -> None:
        self.consumer.consume()
        self.conn.transport.register_with_event_loop(self.conn.connection, self.hub)

    def start_holding_reserve(self, client: redis.Redis) -> None:
        """Start; return once the first message is delivered and the next one reserved
        (both leased in ``unacked``)."""
        self.start()
        self.run_until(lambda: len(self.got) == 1, 10, "the first message")
        wait_for(lambda: client.hlen("unacked") == 2, 5, "the reserve to be fetched")

    def run_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.hub.run_once()

    def close(self) -> None:
        self.consumer.cancel()
        self.conn.close()
        self.hub.close()


@pytest.fixture
def prefork_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consume as a prefork worker's main process does (where the reserve is on)."""
    monkeypatch.setitem(_prefork._PREFORK_MAIN, "now", True)


@pytest.fixture
def server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_server_factory()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    client = server.client()
    yield client
    client.close()


def _publish(url: str, n: int) -> list[bytes]:
    """Publish bodies 0..n-1; return the raw queue items, head (next consumed) first."""
    with Connection(url) as conn:
        producer = Producer(conn.default_channel)
        for i in range(n):
            producer.publish(i, exchange=QUEUE.exchange, routing_key="rsv", declare=[QUEUE])
    client = redis.Redis.from_url(url)
    try:
        return list(reversed(client.lrange("rsv", 0, -1)))
    finally:
        client.close()


@contextlib.contextmanager
def _holding_reserve(
    server: RedisServer, client: redis.Redis, n: int, reserve_seconds: float
) -> Iterator[tuple[Consuming, list[bytes]]]:
    """Publish ``n`` messages, start a consumer that acks nothing, and yield it once it
    holds the first message and the reserve, with the raw queue items; close it after."""
    raw = _publish(server.url, n)
    consuming = Consuming(server.url, reserve_seconds, ack=False)
    try:
        consuming.start_holding_reserve(client)
        yield consuming, raw
    finally:
        consuming.close()


def test_a_freed_slot_gets_the_reserve_while_redis_answers_nothing(
    server: RedisServer, client: redis.Redis, prefork_main: None
) -> None:
    """After an ack, the next message comes without a round trip: Redis is paused then."""
    # One delivered, one more fetched with it and held: both leased, two left queued.
    with _holding_reserve(server, client, 4, reserve_seconds=30) as (consuming, _):
        assert client.llen("rsv") == 2
        assert consuming.got == [0]
        # Writes (and so every fetch) wait 3 s from here: only the reserve can arrive now.
        client.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        paused_at = time.monotonic()
        consuming.messages[0].ack()
        consuming.run_until(lambda: len(consuming.got) == 2, 2, "the reserve")
        assert time.monotonic() - paused_at < 2.5
        assert consuming.got == [0, 1]
        client.execute_command("CLIENT", "UNPAUSE")
        # The ack of 0 rode on the fetch that took 2 as the new reserve.
        wait_for(lambda: client.llen("rsv") == 1, 5, "the next reserve")
        assert client.hlen("unacked") == 2
        consuming.messages[1].ack()
        consuming.run_until(lambda: len(consuming.got) == 3, 5, "the third message")
        consuming.messages[2].ack()
        consuming.run_until(lambda: len(consuming.got) == 4, 5, "the last message")
        consuming.messages[3].ack()
        assert consuming.got == [0, 1, 2, 3]
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0
    assert client.llen("rsv") == 0


def test_a_reserve_no_slot_takes_goes_back_unchanged_to_the_head_of_its_queue(
    server: RedisServer, client: redis.Redis, prefork_main: None
) -> None:
    with _holding_reserve(server, client, 3, reserve_seconds=0.3) as (consuming, raw):
        fetched_at = time.monotonic()
        # The first message is never acked (a long task): the reserve waits, then goes back.
        consuming.run_until(lambda: client.llen("rsv") == 2, 5, "the reserve to go back")
        assert time.monotonic() - fetched_at >= 0.2
        assert client.lrange("rsv", 0, -1)[::-1] == raw[1:]  # byte for byte, first in line
        assert client.hlen("unacked") == 1  # only the delivered one is still leased
        assert consuming.got == [0]
        # Nothing is fetched again while the window stays full.
        deadline = time.monotonic() + 1
        consuming.run_until(lambda: time.monotonic() > deadline, 5, "a second")
        assert client.llen("rsv") == 2
        assert consuming.conn.default_channel._reserve == []
    # At close the delivered message is requeued too (kombu's restore, marked redelivered).
    assert client.hlen("unacked") == 0
    assert client.llen("rsv") == 3


def test_a_reply_that_finds_the_window_full_is_read_into_the_reserve_and_put_back_on_time(
    server: RedisServer, client: redis.Redis, prefork_main: None
) -> None:
    """kombu leaves a fetch reply unread while the window is full (its messages' leases
    then run out unrenewed); the reliable channel reads it into the reserve, renews it
    with the held messages and puts it back after ``reserve_seconds``."""
    with _holding_reserve(server, client, 3, reserve_seconds=1.0) as (consuming, raw):
        channel = consuming.conn.default_channel
        consuming.messages[0].ack()
        # 1 goes from the reserve; the fetch sent with it brings 2 while 1 fills the window.
        consuming.run_until(lambda: len(consuming.got) == 2, 5, "the reserve's message")
        consuming.run_until(lambda: bool(channel._reserve), 5, "2 read into the reserve")
        assert [entry[1] for entry in channel._reserve] == [raw[2]]
        tag = channel._reserve[0][2]["properties"]["delivery_tag"]
        assert tag in channel._held  # renewed by the lease thread like a held message
        assert client.llen("rsv") == 0
        consuming.run_until(lambda: client.llen("rsv") == 1, 5, "2 to go back")
        assert client.lrange("rsv", 0, -1) == [raw[2]]
        assert tag not in channel._held
        assert consuming.got == [0, 1]
        consuming.messages[1].ack()
        # A slot freed: the next fetch takes 2 again.
        consuming.run_until(lambda: len(consuming.got) == 3, 5, "the last message")
        consuming.messages[2].ack()
    assert client.hlen("unacked") == 0
    assert client.llen("rsv") == 0


def test_closing_puts_the_reserve_back_and_a_consumer_elsewhere_gets_every_message_once(
    server: RedisServer, client: redis.Redis, prefork_main: None
) -> None:
    # Closed on leaving the block, long before the reserve's 30 s are up.
    with _holding_reserve(server, client, 3, reserve_seconds=30) as (consuming, raw):
        assert consuming.conn.default_channel._reserve  # held, not delivered
    assert client.hlen("unacked") == 0
    queued = client.lrange("rsv", 0, -1)
    assert raw[1] in queued  # the reserve, byte for byte; the delivered one is marked
    assert raw[0] not in queued  # redelivered by kombu's restore
    with Connection(server.url) as conn:
        got: list[Any] = []
        with Consumer(
            conn, [QUEUE], callbacks=[lambda body, m: (got.append(body), m.ack())], accept=["json"]
        ):
            deadline = time.monotonic() + 10
            while len(got) < 3 and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=1)
    assert consuming.got == [0]
    assert sorted(got) == [0, 1, 2]


def test_outside_a_prefork_main_process_nothing_is_fetched_ahead(
    server: RedisServer, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Elsewhere (a solo worker, a script's consumer) a prefetch-1 consumer on an event
    loop holds one message, as stock does."""
    monkeypatch.setitem(_prefork._PREFORK_MAIN, "now", False)
    _publish(server.url, 3)
    consuming = Consuming(server.url, reserve_seconds=30, ack=False)
    try:
        consuming.start()
        consuming.run_until(lambda: len(consuming.got) == 1, 10, "the first message")
        deadline = time.monotonic() + 0.5
        consuming.run_until(lambda: time.monotonic() > deadline, 5, "half a second")
        assert client.hlen("unacked") == 1
        assert client.llen("rsv") == 2
    finally:
        consuming.close()


def test_without_an_event_loop_nothing_is_fetched_ahead(
    server: RedisServer, client: redis.Redis, prefork_main: None
) -> None:
    """Even in a prefork main process: with no loop to hand a reserve back on time, a
    consumer drained by hand holds one message."""
    _publish(server.url, 3)
    got: list[Any] = []
    with Connection(reliable_url(server.url)) as conn:
        consumer = Consumer(conn.default_channel, [QUEUE], callbacks=[lambda b, m: got.append(b)])
        consumer.qos(prefetch_count=1)
        with consumer:
            conn.drain_events(timeout=5)
            assert got == [0]
            assert client.hlen("unacked") == 1
            assert client.llen("rsv") == 2


APP = """
import os

import redis

from celeryredis import make_app

app = make_app(
    "reserveapp",
    broker_url=os.environ["RESERVE_BROKER"],
    result_backend=os.environ["RESERVE_BROKER"],
    celeryredis_transport="reliable",
    celeryredis_reserve_seconds=3,
)
_client = redis.Redis.from_url(os.environ["RESERVE_BROKER"])


@app.task(shared=False)
def hold(name):
    # Runs until the test lets it go: BLPOP on a key only the test pushes to.
    _client.rpush("started", name)
    for _ in range(60):
        if _client.blpop([f"go:{name}"], timeout=1):
            return name
    raise RuntimeError("never let go")


@app.task(shared=False, bind=True)
def where(self, name):
    _client.rpush("ran", f"{name}@{self.request.hostname}")
    return name
"""


def test_a_busy_worker_lets_an_idle_one_run_the_message_it_reserved(
    server: RedisServer, client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fairness holds: a worker whose one slot is taken by a long task keeps its reserve
    only ``celeryredis_reserve_seconds`` (3 s here); then an idle worker runs it, long
    before the long task ends."""
    (tmp_path / "reserveapp.py").write_text(textwrap.dedent(APP))
    env = {"RESERVE_BROKER": server.url}
    host = import_host_module(monkeypatch, tmp_path, "reserveapp", env)
    long_task = host.hold.delay("long")
    short = host.where.delay("short")
    busy = WorkerProcess(
        "reserveapp", cwd=tmp_path, env=env, pool="prefork", hostname="busy@%h",
        log_path=tmp_path / "busy.log",
    )  # fmt: skip
    idle: WorkerProcess | None = None
    try:
        busy.wait_ready(timeout=60)
        wait_for(lambda: client.lrange("started", 0, -1) == [b"long"], 20, "the long task")
        # Its first fetch took the long task and, one ahead, the short one, held for 3 s.
        assert client.hlen("unacked") == 2
        assert client.llen("celery") == 0
        idle = WorkerProcess(
            "reserveapp", cwd=tmp_path, env=env, pool="prefork", hostname="idle@%h",
            log_path=tmp_path / "idle.log",
        )  # fmt: skip
        idle.wait_ready(timeout=60)
        assert short.get(timeout=20) == "short"
        assert [entry.decode().split("@")[:2] for entry in client.lrange("ran", 0, -1)] == [
            ["short", "idle"]
        ]
        assert not long_task.ready(), (long_task.state, long_task.result)
        client.rpush("go:long", 1)
        assert long_task.get(timeout=20) == "long"
    finally:
        client.rpush("go:long", 1)
        busy.stop()
        if idle is not None:
            idle.stop()
    assert client.hlen("unacked") == 0
