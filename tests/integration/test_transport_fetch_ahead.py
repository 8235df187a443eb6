"""The reliable transport fetches for a freed prefetch slot at once (fetch ahead).

A kombu consumer on a real redis-server, driven by hand (``drain_events``), so the
moments at which an ack frees a slot are chosen by the test: while a fetch is
outstanding (the prefork path: the pool's result arrives between fetches) and inside a
delivery (the solo path: the task acks while its message is handed over). Redis itself
shows what was sent: the queue shrinks and the acked entry leaves ``unacked`` before
this consumer reads anything more. The prefetch window is never exceeded and every
message is delivered once.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from celeryredis.transport import reliable_url
from tests._util import wait_for

pytestmark = pytest.mark.integration

N = 6
WINDOW = 2


def test_freed_slot_fetches_without_waiting_for_the_event_loop(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    queue = Queue("fa", Exchange("fa", type="direct"), routing_key="fa")
    with Connection(redis_url) as publisher:
        producer = Producer(publisher.default_channel)
        for i in range(N):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key="fa", declare=[queue])

    def left() -> int:
        return int(client.llen("fa"))

    def held() -> int:
        return int(client.hlen("unacked"))

    got: list[Any] = []
    ack_inside: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(message)
        assert held() <= WINDOW  # recorded entries never exceed the window
        while ack_inside:
            ack_inside.pop().ack()

    client.config_resetstat()
    # One restore sweep, before writes are paused (it would wait for them).
    options = {"lease_sweep_interval": 3600.0}
    with Connection(reliable_url(redis_url), transport_options=options) as conn:
        channel = conn.channel()
        consumer = Consumer(channel, [queue], callbacks=[on_message])
        consumer.qos(prefetch_count=WINDOW)
        consumer.consume()

        conn.drain_events(timeout=5)  # one fetch fills the window
        assert [m.payload["i"] for m in got] == [0, 1]
        assert (left(), held()) == (N - 2, 2)

        # Prefork path: a fetch is outstanding (Redis holds it: writes are paused) when
        # an ack frees a slot; a second fetch goes out behind it, carrying the ack.
        channel.qos.restore_visible()  # the sweep, now
        client.client_pause(5_000, all=False)  # WRITE mode: the fetch script waits
        try:
            got[0].ack()  # between fetches: queued for the next fetch
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.3)  # sends that fetch; no reply yet
            got[1].ack()  # the fetch ahead
        finally:
            client.client_unpause()
        wait_for(lambda: left() == N - 4, 5, "both fetches to run, no read in between")
        wait_for(lambda: held() == 2, 5, "both acks applied")  # messages 2 and 3
        while len(got) < 4:
            conn.drain_events(timeout=5)
        assert [m.payload["i"] for m in got] == [0, 1, 2, 3]

        # Solo path: inside a delivery the task acks; the next fetch goes out at once,
        # with that ack, before the delivery returns to the event loop.
        got[2].ack()
        ack_inside.append(got[3])
        conn.drain_events(timeout=5)
        wait_for(lambda: left() == 0, 5, "the fetch sent from inside the delivery")
        wait_for(lambda: held() == 2, 5, "its ack applied")  # messages 4 and 5
        while len(got) < N:
            conn.drain_events(timeout=5)
        assert [m.payload["i"] for m in got] == list(range(N))
        for message in got[4:]:
            message.ack()
        stats = client.info("commandstats")
        consumer.cancel()
        channel.close()
    wait_for(lambda: (left(), held(), int(client.zcard("unacked_index"))) == (0, 0, 0), 5, "acks")
    # Five fetches for six messages (acks ride on them), one sweep; no BRPOP, no idle wait.
    assert "cmdstat_brpop" not in stats
    assert "cmdstat_blmove" not in stats
    assert int(stats["cmdstat_evalsha"]["calls"]) == 5 + 1
    client.close()


def test_a_fetch_sent_inside_a_batch_never_overfills_the_window(redis_url: str) -> None:
    """Acks inside the delivery of a batch (acks early on solo): the fetch sent ahead asks
    only for slots that neither the batch's undelivered messages nor an outstanding fetch
    will take, so Redis never holds more than the window for this consumer."""
    client = redis.Redis.from_url(redis_url)
    queue = Queue("fb", Exchange("fb", type="direct"), routing_key="fb")
    n, window = 40, 4
    with Connection(redis_url) as publisher:
        producer = Producer(publisher.default_channel)
        for i in range(n):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key="fb", declare=[queue])
    got: list[int] = []
    peak = 0

    def on_message(body: Any, message: Any) -> None:
        nonlocal peak
        got.append(body["i"])
        message.ack()
        peak = max(peak, int(client.hlen("unacked")))

    with Connection(reliable_url(redis_url)) as conn:
        channel = conn.channel()
        consumer = Consumer(channel, [queue], callbacks=[on_message])
        consumer.qos(prefetch_count=window)
        consumer.consume()
        for _ in range(4 * n):
            if len(got) == n:
                break
            conn.drain_events(timeout=5)
        consumer.cancel()
        channel.close()
    assert got == list(range(n))
    assert 0 < peak <= window
    wait_for(lambda: int(client.hlen("unacked")) == 0, 5, "the acks")
    client.close()
