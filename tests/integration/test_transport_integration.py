"""The reliable transport against a real redis-server and real worker subprocesses.

Wire compatibility with stock kombu (mixed producers and consumers, priorities, key
prefix), consumption order, remote control, leases (long tasks and ETAs longer than the
lease run once), redelivery after SIGKILL, and the behaviours that must match stock:
retry, requeue, revoke, warm shutdown, ``worker_disable_prefetch``, ``SCRIPT FLUSH`` and a
Redis restart.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from celeryredis import make_app
from celeryredis.testing import FaultProxy
from celeryredis.transport import reliable_url
from tests._util import wait_for

pytestmark = pytest.mark.integration

HOST = """
import json
import os
import time

import redis
from celery import current_task
from celery.exceptions import Reject

from celeryredis import make_app

URL = os.environ["REL_URL"]
options = {}
if os.environ.get("REL_PREFIX"):
    options["global_keyprefix"] = os.environ["REL_PREFIX"]
if os.environ.get("REL_VT"):
    options["visibility_timeout"] = float(os.environ["REL_VT"])
app = make_app(
    "relapp",
    broker_url=URL,
    result_backend=None,
    preset="testing",
    celeryredis_transport=os.environ.get("REL_TRANSPORT", "reliable"),
    celeryredis_lease_seconds=float(os.environ.get("REL_LEASE", "30")),
    worker_prefetch_multiplier=int(os.environ.get("REL_PREFETCH", "1")),
    worker_disable_prefetch=os.environ.get("REL_NO_PREFETCH") == "1",
    task_acks_late=os.environ.get("REL_ACKS_EARLY") != "1",
    task_ignore_result=True,
    broker_transport_options=options,
    worker_enable_remote_control=os.environ.get("REL_NO_CONTROL") != "1",
)
client = redis.Redis.from_url(os.environ.get("REL_DIRECT_URL") or URL)


@app.task(shared=False)
def record(i, pause=0.0):
    pipe = client.pipeline()
    pipe.hincrby("t:runs", str(i), 1)
    pipe.rpush("t:order", str(i))
    pipe.hincrby("t:by", current_task.request.hostname, 1)
    pipe.execute()
    if pause:
        time.sleep(pause)


@app.task(shared=False)
def sleeper(name, seconds):
    client.rpush("t:start:" + name, "%f %s" % (time.time(), current_task.request.hostname))
    time.sleep(seconds)
    client.incr("t:done:" + name)


@app.task(shared=False, bind=True, max_retries=5)
def flaky(self, name):
    if client.incr("t:try:" + name) < 3:
        raise self.retry(countdown=0.2)
    client.incr("t:done:" + name)


@app.task(shared=False)
def requeue_once(name):
    if client.incr("t:try:" + name) == 1:
        raise Reject("try again", requeue=True)
    client.incr("t:done:" + name)
"""

QUEUES = ("q1", "q2", "q3")


class Env:
    """Start workers of the host app and publish to it, stock or reliable."""

    def __init__(self, url: str, tmp_path: Path, start: Callable[..., Any]) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self._start = start
        self.client = redis.Redis.from_url(url)
        self.prefix = ""
        self.producers: dict[str, Celery] = {}

    def env(self, transport: str, **extra: str) -> dict[str, str]:
        return {"REL_URL": self.url, "REL_TRANSPORT": transport, "REL_PREFIX": self.prefix, **extra}

    def worker(
        self, transport: str, name: str, pool: str = "solo", concurrency: int = 1, **kw: Any
    ) -> Any:
        extra = kw.pop("env", {})
        return self._start(
            "relapp",
            cwd=self.tmp_path,
            env=self.env(transport, **extra),
            pool=pool,
            concurrency=concurrency,
            hostname=f"{name}@%h",
            **kw,
        )

    def producer(self, transport: str) -> Celery:
        if transport not in self.producers:
            options = {"global_keyprefix": self.prefix} if self.prefix else {}
            self.producers[transport] = make_app(
                f"producer-{transport}",
                broker_url=self.url,
                result_backend=None,
                preset="testing",
                celeryredis_transport=transport,
                broker_transport_options=options,
            )
        return self.producers[transport]

    def send(self, transport: str, name: str, *args: Any, **options: Any) -> Any:
        """Publish ``relapp.<name>``; 'reliable' publishes through the reliable transport."""
        app = self.producer(transport)
        if transport == "reliable":
            with Connection(
                reliable_url(self.url),
                transport_options=dict(app.conf.broker_transport_options),
            ) as conn:
                return app.send_task(f"relapp.{name}", args, connection=conn, **options)
        return app.send_task(f"relapp.{name}", args, **options)

    def unacked(self) -> tuple[int, int]:
        return (
            int(self.client.hlen(f"{self.prefix}unacked")),
            int(self.client.zcard(f"{self.prefix}unacked_index")),
        )

    def runs(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall("t:runs").items()}

    def starts(self, name: str) -> list[tuple[float, str]]:
        out = []
        for raw in self.client.lrange(f"t:start:{name}", 0, -1):
            stamp, host = raw.decode().split(" ", 1)
            out.append((float(stamp), host))
        return out

    def done(self, name: str) -> int:
        return int(self.client.get(f"t:done:{name}") or 0)


@pytest.fixture
def env(redis_url: str, tmp_path: Path, celery_worker_process: Any) -> Iterator[Env]:
    (tmp_path / "relapp.py").write_text(textwrap.dedent(HOST))
    environment = Env(redis_url, tmp_path, celery_worker_process)
    yield environment
    for app in environment.producers.values():
        app.close()
    environment.client.close()


def _all_ran_once(env: Env, expected: set[str], timeout: float) -> None:
    wait_for(lambda: set(env.runs()) >= expected, timeout, f"{len(expected)} tasks to run")
    wait_for(lambda: env.unacked() == (0, 0), 20, "unacked to empty")
    runs = env.runs()
    assert set(runs) == expected
    assert [k for k, v in runs.items() if v != 1] == []


@pytest.mark.parametrize("prefix", ["", "app1:"], ids=["no-prefix", "prefix"])
def test_mixed_fleet_every_task_once(env: Env, prefix: str) -> None:
    """Stock and reliable producers and consumers share three queues and priorities 0-9."""
    env.prefix = prefix
    queues = ["-Q", ",".join(QUEUES)]
    workers = [
        env.worker("stock", "stock", pool="prefork", concurrency=2, extra_args=queues),
        env.worker("reliable", "relp", pool="prefork", concurrency=2, extra_args=queues),
        env.worker("reliable", "rels", pool="solo", extra_args=queues),
    ]
    for worker in workers:
        worker.wait_ready()
    n = 300
    for i in range(n):
        producer = "stock" if i % 2 else "reliable"
        env.send(producer, "record", i, 0.005, queue=QUEUES[i % 3], priority=i % 10)
    _all_ran_once(env, {str(i) for i in range(n)}, timeout=90)
    by_worker = {k.decode().split("@")[0]: int(v) for k, v in env.client.hgetall("t:by").items()}
    assert set(by_worker) == {"stock", "relp", "rels"}, by_worker
    if prefix:
        assert env.client.exists(f"{prefix}unacked_index") == 0
        assert not env.client.keys("unacked*")
    time.sleep(1.5)  # a late redelivery would show up as a second run
    assert [k for k, v in env.runs().items() if v != 1] == []


def _backlog_order(env: Env, transport: str, name: str) -> list[str]:
    env.client.delete("t:order", "t:runs", "t:by")
    for i in range(60):
        env.send("stock", "record", i, queue=QUEUES[i % 2], priority=(i * 7) % 10)
    worker = env.worker(
        transport,
        name,
        extra_args=["-Q", ",".join(QUEUES[:2])],
        env={"REL_PREFETCH": "4"},
    )
    wait_for(lambda: env.client.llen("t:order") == 60, 60, f"{transport} backlog to drain")
    worker.stop()
    return [x.decode() for x in env.client.lrange("t:order", 0, -1)]


def test_consumption_order_matches_stock(env: Env) -> None:
    stock = _backlog_order(env, "stock", "orderstock")
    reliable = _backlog_order(env, "reliable", "orderrel")
    assert reliable == stock


def test_remote_control_and_events_through_the_reliable_transport(env: Env) -> None:
    worker = env.worker("reliable", "ctl", extra_args=["-E"])
    worker.wait_ready()
    app = env.producer("reliable")
    url = reliable_url(env.url)
    with Connection(url) as conn:
        replies = app.control.inspect(connection=conn, timeout=5, limit=1).ping()
        assert replies
        assert any(name.startswith("ctl@") for name in replies)
        stats = app.control.inspect(connection=conn, timeout=5, limit=1).active_queues()
        assert stats
        assert any(name.startswith("ctl@") for name in stats)
        answers = app.control.broadcast("ping", reply=True, connection=conn, timeout=5, limit=1)
        assert any(any(k.startswith("ctl@") for k in a) for a in answers)
    seen: list[str] = []
    with Connection(url) as conn:
        receiver = app.events.Receiver(
            conn, handlers={"task-succeeded": lambda event: seen.append(event["uuid"])}
        )
        thread = threading.Thread(
            target=receiver.capture, kwargs={"limit": None, "timeout": None, "wakeup": False}
        )
        thread.start()
        try:
            time.sleep(0.5)  # the receiver subscribes
            sent = env.send("stock", "record", "evt")
            wait_for(lambda: sent.id in seen, 20, "the task-succeeded event")
        finally:
            receiver.should_stop = True
            thread.join(10)
    wait_for(lambda: env.unacked() == (0, 0), 10, "acks")


@pytest.mark.parametrize(("pool", "concurrency"), [("solo", 1), ("prefork", 2)])
def test_task_and_eta_longer_than_the_lease_run_once(env: Env, pool: str, concurrency: int) -> None:
    """Lease 2 s and even a 3 s visibility timeout: a 5 s task and a 4.5 s ETA run once."""
    worker = env.worker(
        "reliable",
        "lease",
        pool=pool,
        concurrency=concurrency,
        env={"REL_LEASE": "2", "REL_VT": "3"},
    )
    worker.wait_ready()
    env.send("stock", "sleeper", "long", 5)
    env.send("stock", "sleeper", "eta", 0.1, countdown=4.5)
    wait_for(lambda: env.done("long") == 1 and env.done("eta") == 1, 40, "both tasks")
    wait_for(lambda: env.unacked() == (0, 0), 10, "unacked to empty")
    time.sleep(2.5)  # longer than the lease: an expired lease would have run them again
    assert len(env.starts("long")) == 1
    assert len(env.starts("eta")) == 1


def test_sigkill_redelivers_within_lease_plus_sweep(env: Env) -> None:
    lease, sweep = 3.0, 1.0
    extra = {"REL_LEASE": str(lease)}
    first = env.worker("reliable", "victim", pool="prefork", env=extra)
    first.wait_ready()
    env.send("stock", "sleeper", "killed", 30)
    wait_for(lambda: len(env.starts("killed")) == 1, 20, "the task to start")
    other = env.worker("reliable", "heir", env=extra)
    other.wait_ready()
    killed_at = time.time()
    first.kill(signal.SIGKILL)
    wait_for(lambda: len(env.starts("killed")) == 2, 30, "redelivery")
    started, host = env.starts("killed")[1]
    assert host.startswith("heir@")
    other.kill(signal.SIGKILL)  # it runs the 30 s task now; no need to wait for it
    assert started - killed_at <= lease + sweep + 2.0, started - killed_at


def test_an_early_ack_reaches_redis_while_the_task_runs(env: Env) -> None:
    """Acks early (the throughput preset) keep their meaning on the reliable transport.

    The ack is queued, not written at once, but it reaches Redis while the task still
    runs (with the next fetch, or the lease thread): a worker killed mid-task leaves no
    unacked entry behind, so the task is not run again, as with stock kombu.
    """
    extra = {"REL_ACKS_EARLY": "1", "REL_LEASE": "3"}
    worker = env.worker("reliable", "early", pool="prefork", env=extra)
    worker.wait_ready()
    env.send("stock", "sleeper", "early", 30)
    wait_for(lambda: len(env.starts("early")) == 1, 20, "the task to start")
    wait_for(lambda: env.unacked() == (0, 0), 5, "the early ack to reach Redis")
    assert len(env.starts("early")) == 1  # still running: the ack went out mid-task
    assert env.done("early") == 0
    worker.kill(signal.SIGKILL)


def test_retry_requeue_and_revoke_behave_as_stock(env: Env) -> None:
    worker = env.worker("reliable", "beh", pool="prefork", concurrency=2, env={"REL_LEASE": "3"})
    worker.wait_ready()
    env.send("reliable", "flaky", "f")
    env.send("stock", "requeue_once", "r")
    revoked = env.send("stock", "sleeper", "revoked", 0, countdown=3)
    app = env.producer("reliable")
    with Connection(reliable_url(env.url)) as conn:
        app.control.revoke(revoked.id, connection=conn)
    wait_for(lambda: env.done("f") == 1 and env.done("r") == 1, 30, "retry and requeue")
    assert int(env.client.get("t:try:f") or 0) == 3
    assert int(env.client.get("t:try:r") or 0) == 2
    time.sleep(4)  # past the revoked task's countdown
    assert env.starts("revoked") == []
    wait_for(lambda: env.unacked() == (0, 0), 10, "unacked to empty")


def test_warm_shutdown_requeues_prefetched_messages(env: Env) -> None:
    first = env.worker("reliable", "warm", pool="prefork", env={"REL_PREFETCH": "4"})
    first.wait_ready()
    env.send("stock", "sleeper", "running", 3)
    wait_for(lambda: len(env.starts("running")) == 1, 20, "the long task to start")
    for i in range(3):
        env.send("stock", "record", i)
    wait_for(lambda: env.unacked()[0] >= 2, 10, "prefetched messages held")
    os.kill(first.pid, signal.SIGTERM)  # warm shutdown: the main process only
    first.wait_exit(30)
    assert env.done("running") == 1  # warm shutdown let it finish
    second = env.worker("stock", "after")
    second.wait_ready()
    _all_ran_once(env, {"0", "1", "2"}, timeout=30)


def test_disable_prefetch_holds_one_message_per_process(env: Env) -> None:
    worker = env.worker("reliable", "nopf", pool="prefork", env={"REL_NO_PREFETCH": "1"})
    worker.wait_ready()
    for i in range(4):
        env.send("stock", "record", i, 0.4)
    peak = 0
    deadline = time.monotonic() + 30
    while len(env.runs()) < 4 and time.monotonic() < deadline:
        peak = max(peak, env.unacked()[0])
        time.sleep(0.02)
    _all_ran_once(env, {"0", "1", "2", "3"}, timeout=10)
    assert peak <= 1


def test_script_flush_and_redis_restart(
    redis_server_factory: Any, tmp_path: Path, celery_worker_process: Any
) -> None:
    server = redis_server_factory()
    (tmp_path / "relapp.py").write_text(textwrap.dedent(HOST))
    env = Env(server.url_for(0), tmp_path, celery_worker_process)
    worker = env.worker("reliable", "restart")
    worker.wait_ready()
    env.send("stock", "record", "before")
    wait_for(lambda: "before" in env.runs(), 20, "a task before SCRIPT FLUSH")
    env.client.script_flush()
    env.send("stock", "record", "flushed")
    wait_for(lambda: "flushed" in env.runs(), 20, "a task after SCRIPT FLUSH")
    server.restart()
    deadline = time.monotonic() + 60

    def ran_after_restart() -> bool:
        if time.monotonic() > deadline:
            return False
        if "restarted" not in env.runs():
            try:
                if not env.client.llen("celery"):
                    env.send("stock", "record", "restarted")
            except redis.ConnectionError:
                pass
            return False
        return True

    wait_for(ran_after_restart, 60, "a task after a Redis restart")
    wait_for(lambda: env.unacked() == (0, 0), 20, "unacked to empty")
    assert worker.returncode is None
    env.client.close()


def test_scripting_refused_falls_back_to_stock_with_a_warning(
    redis_server_factory: Any, tmp_path: Path, celery_worker_process: Any
) -> None:
    server = redis_server_factory()
    admin = server.client()
    admin.execute_command(
        "ACL", "SETUSER", "noscripts", "on", ">s3cr3t-Pa55", "~*", "&*", "+@all", "-@scripting"
    )
    (tmp_path / "relapp.py").write_text(textwrap.dedent(HOST))
    url = f"redis://noscripts:s3cr3t-Pa55@127.0.0.1:{server.port}/0"
    env = Env(url, tmp_path, celery_worker_process)
    env.client = admin
    # Stock kombu itself needs scripting for remote control (its pidbox queue bindings
    # are refreshed by a Lua script), so this worker runs without it.
    worker = env.worker("reliable", "fallback", env={"REL_NO_CONTROL": "1"})
    worker.wait_ready()
    for i in range(5):
        env.send("stock", "record", i)
    _all_ran_once(env, {str(i) for i in range(5)}, timeout=30)
    log = worker.log_text()
    assert "Redis refused SCRIPT LOAD" in log
    assert "stock kombu behaviour" in log
    assert "s3cr3t-Pa55" not in log
    admin.close()


@pytest.fixture
def proxy(redis_server: Any) -> Iterator[FaultProxy]:
    """The fault suite's loopback proxy in front of the session's redis-server."""
    with FaultProxy(redis_server.port) as fault_proxy:
        yield fault_proxy


@pytest.mark.parametrize("load", ["idle", "busy"])
def test_half_open_connections_lose_nothing(
    env: Env, proxy: FaultProxy, load: str, redis_url: str
) -> None:
    """The worker's broker connections go half-open; the producer and tasks use Redis directly."""
    db = redis_url.rsplit("/", 1)[1]
    proxied = f"redis://127.0.0.1:{proxy.port}/{db}"
    worker = env._start(
        "relapp",
        cwd=env.tmp_path,
        env={"REL_URL": proxied, "REL_DIRECT_URL": env.url, "REL_TRANSPORT": "reliable"},
        pool="prefork",
        hostname="halfopen@%h",
    )
    worker.wait_ready()
    n = 1 if load == "idle" else 50
    if load == "idle":
        time.sleep(1.5)  # idle: the poll connection waits in its BLMOVE wake-up
        assert proxy.zombie() >= 1
        env.send("stock", "record", 0)
    else:
        for i in range(n):
            env.send("stock", "record", i, 0.05)
        wait_for(lambda: len(env.runs()) >= 10, 30, "the first tasks to run")
        assert proxy.zombie() >= 1
    _all_ran_once(env, {str(i) for i in range(n)}, timeout=120)
    assert worker.returncode is None


def test_poison_items_go_to_the_dead_letter_queue(env: Env) -> None:
    """Items that are not kombu messages never crash the worker nor block the queue; the
    worker moves them from the poison list to the dead-letter queue, bytes intact."""
    env.client.lpush("celery", b"not json at all", b'{"no": "properties"}')
    env.send("stock", "record", "after-poison")
    worker = env.worker("reliable", "poison")
    worker.wait_ready()
    _all_ran_once(env, {"after-poison"}, timeout=30)
    wait_for(lambda: env.client.xlen("celeryredis:dlq") == 2, 30, "poison in the dead letters")
    entries = env.client.xrange("celeryredis:dlq")
    assert {fields[b"reason"] for _, fields in entries} == {b"decode_error"}
    assert sorted(base64.b64decode(fields[b"raw_body"]) for _, fields in entries) == sorted(
        [b"not json at all", b'{"no": "properties"}']
    )
    assert env.client.llen("celeryredis:poison") == 0
    assert env.client.llen("celery") == 0
    assert worker.returncode is None


def test_stock_and_reliable_sweepers_agree_on_leases(env: Env) -> None:
    """A reliable sweeper leaves a stock worker's message alone until the visibility
    timeout; a stock sweeper restores a dead reliable worker's message once its lease ends."""
    lease = 3.0
    extra = {"REL_LEASE": str(lease)}
    stock = env.worker("stock", "stocksweeper", pool="prefork", extra_args=["-Q", "qs"])
    sweeper = env.worker("reliable", "relsweeper", env=extra, extra_args=["-Q", "celery"])
    victim = env.worker("reliable", "victim", pool="prefork", env=extra, extra_args=["-Q", "qv"])
    for worker in (stock, sweeper, victim):
        worker.wait_ready()
    # A stock worker holds a task longer than the reliable workers' lease.
    env.send("stock", "sleeper", "stockheld", 2 * lease + 1, queue="qs")
    wait_for(lambda: env.done("stockheld") == 1, 30, "the stock worker's task")
    assert len(env.starts("stockheld")) == 1
    # A reliable worker dies holding a task; only the stock worker sweeps now.
    sweeper.stop()
    env.send("stock", "sleeper", "orphan", 30, queue="qv")
    wait_for(lambda: len(env.starts("orphan")) == 1, 20, "the orphan to start")
    killed_at = time.time()
    victim.kill(signal.SIGKILL)
    wait_for(lambda: env.client.llen("qv") == 1, 30, "the stock sweeper to restore it")
    took = time.time() - killed_at
    assert took <= lease + 1.0 + 2.0 + 1.0, took  # lease + sweep + 2 s, + 1 s of polling
    assert env.unacked() == (0, 0)
    restored = json.loads(env.client.lindex("qv", 0))
    assert restored["headers"]["task"] == "relapp.sleeper"
    assert restored["properties"]["delivery_info"]["redelivered"] is True


@pytest.mark.parametrize(
    ("queues", "no_ack", "count", "acks"),
    [
        (["celery"], set(), 1, []),
        (["celery"], set(), 16, ["tag-1", "tag-2"]),
        (["a", "b", "c"], {"b"}, 4, ["ü-tag"]),
        (["a", "b"], {"a", "b"}, 0, [str(i) for i in range(40)]),
    ],
)
def test_the_packed_fetch_is_what_redis_py_would_send(
    redis_url: str, queues: list[str], no_ack: set[str], count: int, acks: list[str]
) -> None:
    """The fetch's fixed parts are packed once: the bytes equal redis-py's packing."""
    options = {"global_keyprefix": "pfx:", "priority_steps": [0, 3, 6, 9]}
    with Connection(reliable_url(redis_url), transport_options=options) as conn:
        channel = conn.default_channel
        channel._no_ack_queues = no_ack
        for _ in range(2):  # packed once, then from the cache
            packed = channel._packed_fetch(queues, count, acks)
            command = channel._fetch_command(queues, count, acks)
            expected = b"".join(
                channel.client.connection_pool.make_connection().pack_command(*command)
            )
            assert packed == expected


def test_the_poll_socket_joins_the_event_loop_once(redis_url: str) -> None:
    """Each loop pass no longer re-adds the poll socket (kombu: 2 failing epoll_ctl each).

    Consumed through a real kombu event loop: the socket is added once over every pass of
    a drain, and again after something took it out of the loop.
    """
    from kombu import Consumer, Producer, Queue
    from kombu.asynchronous import Hub

    hub = Hub()
    added: list[int] = []
    passes = [0]
    real_add = hub.add

    def add(fd: Any, *args: Any, **kwargs: Any) -> Any:
        added.append(fd)
        return real_add(fd, *args, **kwargs)

    hub.add = add  # type: ignore[method-assign]
    hub.on_tick.add(lambda: passes.__setitem__(0, passes[0] + 1))
    got: list[int] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        message.ack()

    def run_until(count: int) -> None:
        deadline = time.monotonic() + 10
        while len(got) < count and time.monotonic() < deadline:
            hub.run_once()
        assert len(got) == count

    queue = Queue("poll-once")
    with (
        Connection(reliable_url(redis_url)) as conn,
        Connection(redis_url) as publisher,
        Consumer(conn, [queue], callbacks=[on_message], accept=["json"], prefetch_count=1),
    ):
        conn.transport.register_with_event_loop(conn.connection, hub)
        producer = Producer(publisher)
        for i in range(20):
            producer.publish(i, routing_key="poll-once", declare=[queue], serializer="json")
        run_until(20)
        (fd,) = conn.transport.cycle.fds
        assert passes[0] >= 20
        assert added.count(fd) == 1, (added, passes[0])
        hub.remove(fd)  # taken out of the loop (as a disconnect or a paused poll does)
        producer.publish(20, routing_key="poll-once", serializer="json")
        run_until(21)
        assert added.count(fd) == 2
    hub.close()
    assert got == list(range(21))
