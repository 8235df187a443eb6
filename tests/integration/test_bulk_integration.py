"""enqueue_many against a real redis-server, and its messages run by a real worker."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celeryredis import DuplicateTaskError, UniqueTask, make_app
from celeryredis.bulk import BulkPublishError, enqueue_many
from celeryredis.keys import SENT_AT_HEADER
from celeryredis.stats import read_counts
from tests._util import import_host_module, wait_for

pytestmark = pytest.mark.integration

SEP = "\x06\x16"


def _app(url: str, **settings: Any) -> Celery:
    app = make_app("bulkeq", broker_url=url, preset="testing", **settings)

    @app.task(name="bulk.add", shared=False)
    def add(x: int, y: int = 0) -> int:
        return x + y

    @app.task(name="bulk.routed", shared=False)
    def routed(x: int) -> int:
        return x

    return app


def _messages(client: redis.Redis) -> dict[str, list[dict[str, Any]]]:
    """Every list key's messages, oldest first, decoded."""
    found: dict[str, list[dict[str, Any]]] = {}
    for key in client.scan_iter(count=1000):
        if client.type(key) != b"list":
            continue
        found[key.decode()] = [json.loads(raw) for raw in reversed(client.lrange(key, 0, -1))]
    return found


def _only_message(client: redis.Redis) -> tuple[str, dict[str, Any]]:
    found = _messages(client)
    assert len(found) == 1, found.keys()
    ((key, messages),) = found.items()
    assert len(messages) == 1
    client.delete(key)
    return key, messages[0]


def _comparable(key: str, message: dict[str, Any]) -> dict[str, Any]:
    """A message with the fields that differ per publish removed, its body decoded."""
    message = json.loads(json.dumps(message))
    headers = message["headers"]
    for name in ("id", "root_id", "origin"):
        headers.pop(name)
    # The send time our before_task_publish receiver stamps: present on both paths.
    assert isinstance(headers.pop(SENT_AT_HEADER), float)
    props = message["properties"]
    for name in ("correlation_id", "delivery_tag"):
        props.pop(name)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return {"key": key, **message}


CASES = {
    "defaults": {},
    "queue priority headers eta expires limits": {
        "queue": "bulk-special",
        "priority": 7,
        "headers": {"tenant": "acme"},
        "eta": datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "expires": datetime(2031, 1, 3, tzinfo=timezone.utc),
        "time_limit": 30,
        "soft_time_limit": 20,
        "ignore_result": True,
    },
    "task_routes": {"priority": 3},
}


@pytest.mark.parametrize("global_keyprefix", ["", "tenant1:"])
@pytest.mark.parametrize("case", list(CASES))
def test_messages_match_apply_async_field_by_field(
    redis_url: str, case: str, global_keyprefix: str
) -> None:
    settings: dict[str, Any] = {
        "task_routes": {"bulk.routed": {"queue": "routed-q"}},
        "broker_transport_options": {"global_keyprefix": global_keyprefix},
    }
    app = _app(redis_url, **settings)
    task = app.tasks["bulk.routed" if case == "task_routes" else "bulk.add"]
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    options = CASES[case]
    args: tuple[Any, ...] = (2,) if case == "task_routes" else (2, 3)
    kwargs: dict[str, Any] = {} if case == "task_routes" else {"y": 5}

    task.apply_async(args[:1], kwargs or None, **options)
    key_a, via_apply_async = _only_message(client)
    [result] = enqueue_many(task, [(args[:1], kwargs)], **options)
    key_b, via_bulk = _only_message(client)

    a, b = _comparable(key_a, via_apply_async), _comparable(key_b, via_bulk)
    # A TTL in ms computed from "now" at each publish: equal up to the time between them.
    ttl_a, ttl_b = (int(m["properties"].pop("expiration", 0)) for m in (a, b))
    assert abs(ttl_a - ttl_b) < 5000
    assert a == b
    assert via_bulk["headers"]["id"] == result.id
    assert key_b.startswith(global_keyprefix)
    if case == "task_routes":
        assert key_b == f"{global_keyprefix}routed-q{SEP}3"
    elif options:
        assert key_b == f"{global_keyprefix}bulk-special{SEP}6"  # steps 0, 3, 6, 9: 7 -> 6
        assert via_bulk["headers"]["tenant"] == "acme"
    else:
        assert key_b == f"{global_keyprefix}celery"


_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SENT_AT = re.compile(rb'"' + SENT_AT_HEADER.encode() + rb'": [0-9.e+-]+')
_EXPIRATION = re.compile(rb'"expiration": "[0-9]+"')
_TIMES = re.compile(rb'"(expires|eta)": "[0-9T:.+-]+"')

#: Calls whose messages enqueue_many builds with its shortcuts (a plan shared by the
#: batch, argsrepr without saferepr) and without them (nested arguments, own options).
BYTE_CASES: dict[str, tuple[list[Any], dict[str, Any]]] = {
    "ints": ([((1, 2), {}), ((3,), {"y": 4})], {}),
    "strings floats none bools": (
        [
            (("it's", 'a "q"'), {}),
            (("back\\slash\nnl",), {"y": "é"}),
            ((1.5, None), {}),
            ((True,), {"y": False}),
        ],
        {},
    ),
    "nested and bytes-like": ([(([1, [2, (3,)]], {"k": {"a": [1]}}), {})], {}),
    "options": (
        [((7,), {})],
        {"queue": "bulk-special", "priority": 5, "headers": {"tenant": "acme"}, "countdown": 60},
    ),
    "expires": ([((7,), {}), ((8,), {})], {"expires": 3600}),
    "router function": ([((9,), {}), ((10,), {})], {}),
    "signature with own options": ([], {}),
}


def _normalised(raw: bytes) -> bytes:
    raw = _UUID.sub(b"<id>", raw)
    raw = _SENT_AT.sub(b"<sent-at>", raw)
    raw = _EXPIRATION.sub(b"<expiration>", raw)
    return _TIMES.sub(rb'"\1": "<time>"', raw)


def _route_by_first_argument(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any], **kw: Any
) -> dict[str, Any] | None:
    if name == "bulk.add" and args and args[0] == 10:
        return {"queue": "tens"}
    return None


@pytest.mark.parametrize("case", list(BYTE_CASES))
def test_message_bytes_match_apply_async(redis_url: str, case: str) -> None:
    """Each message's bytes are apply_async's, up to its ids and times.

    Covers both ways enqueue_many builds a message: from the plan a batch shares
    (argsrepr written directly), and per call (nested arguments, per-call routing,
    expiry, a signature's own options).
    """
    settings: dict[str, Any] = {}
    if case == "router function":
        settings["task_routes"] = (_route_by_first_argument,)
    app = _app(redis_url, **settings)
    task = app.tasks["bulk.add"]
    client = redis.Redis.from_url(redis_url)
    calls, options = BYTE_CASES[case]
    if case == "signature with own options":
        calls = [task.s(1, y=2).set(priority=2), task.s(3).set(queue="bulk-special")]
    expected: list[bytes] = []
    for call in calls:
        client.flushdb()
        if isinstance(call, tuple):
            task.apply_async(call[0], call[1] or None, **options)
        else:
            call.apply_async(**options)
        ((key, raw),) = [
            (k, client.lrange(k, 0, -1)) for k in client.scan_iter() if client.type(k) == b"list"
        ]
        expected.append(key + b" " + _normalised(raw[0]))
    client.flushdb()
    enqueue_many(task, calls, **options)
    got = [
        k + b" " + _normalised(m)
        for k in sorted(client.scan_iter())
        if client.type(k) == b"list"
        for m in reversed(client.lrange(k, 0, -1))
    ]
    assert sorted(got) == sorted(expected)
    client.flushdb()


def test_results_can_be_read_without_a_subscription_at_publish(redis_url: str) -> None:
    app = _app(redis_url)
    client = redis.Redis.from_url(redis_url)
    before = client.pubsub_numpat(), len(client.pubsub_channels())
    results = enqueue_many(app.tasks["bulk.add"], [(i, i) for i in range(50)])
    assert (client.pubsub_numpat(), len(client.pubsub_channels())) == before
    assert len({r.id for r in results}) == 50


def test_bad_calls_raise_before_their_chunk_is_published(redis_url: str) -> None:
    app = _app(redis_url)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    calls: list[Any] = [(i,) for i in range(10)] + [7]
    with pytest.raises(BulkPublishError, match=r"call #10 is a int: give a tuple") as info:
        enqueue_many(app.tasks["bulk.add"], calls, chunk_size=4)
    assert info.value.published == 8
    assert info.value.next_index == 8
    assert client.llen("celery") == 8
    other = app.tasks["bulk.routed"].s(1)
    with pytest.raises(BulkPublishError, match=r"signature of 'bulk\.routed'"):
        enqueue_many(app.tasks["bulk.add"], [other])
    with pytest.raises(ValueError, match="chunk_size"):
        enqueue_many(app.tasks["bulk.add"], [], chunk_size=0)


def test_an_unreachable_broker_is_one_clear_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = _app(f"redis://:{'pw-Secret'}@127.0.0.1:{port}/0")
    started = time.monotonic()
    with pytest.raises(BulkPublishError, match="cannot reach the broker") as info:
        enqueue_many(app.tasks["bulk.add"], [(1,)] * 10)
    assert time.monotonic() - started < 30  # kombu's connect retries, then the error
    assert info.value.published == 0
    assert "pw-Secret" not in str(info.value)


def test_memory_is_bounded_by_the_chunk_not_the_input(redis_url: str) -> None:
    app = _app(redis_url)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    pulled = 0
    ahead: list[int] = []

    def calls() -> Iterator[tuple[int]]:
        nonlocal pulled
        for i in range(20_000):
            pulled += 1
            yield (i,)

    def progress(published: int, total: int | None) -> None:
        assert total is None  # a generator has no length
        ahead.append(pulled - published)

    results = enqueue_many(app.tasks["bulk.add"], calls(), chunk_size=500, progress=progress)
    assert len(results) == 20_000 == client.llen("celery")
    assert len(ahead) == 40
    # At every chunk boundary at most one chunk was pulled from the input ahead of what
    # was published (islice pulls exactly the chunk): the input is never materialised.
    assert max(ahead) <= 500


TASKS = """
import os
from celeryredis import make_app

app = make_app("bulkwork", broker_url=os.environ["BULK_URL"], preset="testing",
               worker_prefetch_multiplier=1,
               task_routes={"bulkwork.routed": {"queue": "routed"}})


@app.task(name="bulkwork.add", shared=False)
def add(x, y):
    return x + y


@app.task(name="bulkwork.routed", shared=False)
def routed(x):
    return x * 10


@app.task(name="bulkwork.ordered", shared=False, ignore_result=True)
def ordered(tag):
    app.backend.client.rpush("order", tag)


@app.task(name="bulkwork.fanout", shared=False)
def fanout(n):
    from celeryredis import enqueue_many

    return [r.id for r in enqueue_many(child, [(i,) for i in range(n)])]


@app.task(name="bulkwork.child", shared=False, bind=True)
def child(self, i):
    return [self.request.parent_id, self.request.root_id]
"""


def test_a_real_worker_runs_bulk_messages_with_results_routing_and_priority(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    celery_worker_process: Any,
) -> None:
    (tmp_path / "bulkwork.py").write_text(textwrap.dedent(TASKS))
    env = {"BULK_URL": redis_url}
    host = import_host_module(monkeypatch, tmp_path, "bulkwork", env)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()

    sums = enqueue_many(host.add, ((i, i) for i in range(300)), chunk_size=64)
    tens = enqueue_many(host.routed, [(i,) for i in range(20)])
    assert client.llen("routed") == 20  # task_routes honoured at publish
    # A backlog published before the worker starts: priority 0 first (Redis: lower first).
    enqueue_many(host.ordered, [("low",)] * 10, priority=9)
    enqueue_many(host.ordered, [("high",)] * 10, priority=0)
    worker = celery_worker_process("bulkwork", env=env, pool="solo", queues=["celery", "routed"])
    try:
        assert [r.get(timeout=60) for r in sums] == [2 * i for i in range(300)]
        assert [r.get(timeout=60) for r in tens] == [10 * i for i in range(20)]
        wait_for(lambda: client.llen("order") == 20, 60, "the prioritised backlog to run")
        order = [tag.decode() for tag in client.lrange("order", 0, -1)]
        assert order[:10].count("high") >= 9, order  # at most one prefetched low one first
        # Called inside a task, the children carry its id as parent and root, as
        # apply_async would set them.
        parent = host.fanout.delay(3)
        children = parent.get(timeout=60)
        assert len(children) == 3
        for child_id in children:
            assert host.app.AsyncResult(child_id).get(timeout=60) == [parent.id, parent.id]
    finally:
        worker.stop()


UNIQUE_TASKS = """
import os
from celeryredis import UniqueTask, make_app

app = make_app("bulkuniq", broker_url=os.environ["BULK_URL"], preset="testing")


@app.task(base=UniqueTask, name="bulkuniq.report", shared=False, ignore_result=True)
def report(n):
    return n


@app.task(base=UniqueTask, name="bulkuniq.strict", shared=False, on_duplicate="raise",
          ignore_result=True)
def strict(n):
    return n
"""


def test_unique_tasks_lock_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    (tmp_path / "bulkuniq.py").write_text(textwrap.dedent(UNIQUE_TASKS))
    host = import_host_module(monkeypatch, tmp_path, "bulkuniq", {"BULK_URL": redis_url})
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    assert isinstance(host.report, UniqueTask)

    held = host.report.delay(3)
    results = enqueue_many(host.report, [(1,), (2,), (3,), (1,)])
    assert results[0] is not None
    assert results[2] is not None
    assert results[3] is not None
    assert results[2].id == held.id  # the holder's result
    assert results[3].id == results[0].id  # the same call twice
    assert client.llen("celery") == 1 + 2  # held + 1 + 2
    # One claim path with apply_async: the refusal is counted as apply_async counts it.
    counts = read_counts(client, host.report.app.conf)
    assert counts[("duplicate_refusals", host.report.name)] == 1
    host.report.delay(3)  # refused by apply_async: the same counter
    counts = read_counts(client, host.report.app.conf)
    assert counts[("duplicate_refusals", host.report.name)] == 2

    client.flushdb()
    host.strict.delay(5)
    with pytest.raises(DuplicateTaskError) as info:
        enqueue_many(host.strict, [(4,), (5,), (6,)])
    assert isinstance(info.value, BulkPublishError)
    assert info.value.published == 0
    assert len(info.value.unpublished_ids) == 3
    assert client.llen("celery") == 1  # nothing of the batch was published
    # All or nothing: the free keys of the refused chunk were not locked either.
    assert len(list(client.scan_iter("celeryredis:lock:bulkuniq.strict:*"))) == 1
    with pytest.raises(DuplicateTaskError):
        enqueue_many(host.strict, [(7,), (7,)])

    # A chunk that cannot be built gives back the locks it took: none is left behind.
    client.flushdb()
    with pytest.raises(BulkPublishError, match="building call #1 failed"):
        enqueue_many(host.report, [(8,), (9, "too", "many")])
    assert client.llen("celery") == 0
    assert list(client.scan_iter("celeryredis:lock:*")) == []


def _queued_ids(client: redis.Redis, key: str = "celery") -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(key, 0, -1)]


@pytest.mark.parametrize("when", ["between chunks", "at any moment"])
def test_redis_killed_mid_batch_reports_exactly_what_was_published(
    redis_server_factory: Any, when: str
) -> None:
    server = redis_server_factory(appendonly=True, extra_args=["--appendfsync", "always"])
    url = server.url_for(0)
    app = _app(url, result_backend=None)
    calls = [((i,), {}) for i in range(30_000)]
    ids = [f"task-{i:05d}" for i in range(30_000)]
    signatures = [
        app.tasks["bulk.add"].signature(args, kwargs, task_id=task_id)
        for (args, kwargs), task_id in zip(calls, ids, strict=True)
    ]
    killer: threading.Thread | None = None

    def progress(published: int, total: int | None) -> None:
        if when == "between chunks" and published == 5000:
            server.kill()

    if when == "at any moment":
        watcher = server.client()

        def kill_when_busy() -> None:
            while watcher.llen("celery") < 3000:
                time.sleep(0.002)  # polls the queue (a condition), not a synchronising sleep
            server.kill()

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
    with pytest.raises(BulkPublishError) as info:
        enqueue_many(app.tasks["bulk.add"], signatures, chunk_size=500, progress=progress)
    if killer is not None:
        killer.join(10)
    err = info.value
    assert "password" not in str(err)
    if when == "between chunks":
        assert err.published == 5000
        assert err.next_index == 5000
        # The pooled connection broke on send: the chunk is in doubt (or, had the
        # reconnect been refused, plainly unpublished) until Redis can be asked.
        assert err.in_doubt_ids + err.unpublished_ids == ids[5000:5500]
    server.restart()
    if err.in_doubt_ids:
        assert err.resolve(app) is not None
        if when == "between chunks":
            assert err.unpublished_ids == ids[5000:5500]  # Redis had died before it
    assert not err.in_doubt_ids
    queued = _queued_ids(server.client())
    # Exactly the reported calls are in Redis, the reported resume point is right, and
    # enqueueing the rest from there gives every call once.
    assert sorted(queued) == sorted(i for i in err.published_ids if i is not None)
    assert err.published_ids == ids[: err.next_index]
    enqueue_many(app.tasks["bulk.add"], itertools.islice(signatures, err.next_index, None))
    assert sorted(_queued_ids(server.client())) == ids


CLI_APP = """
import os
from celeryredis import make_app

app = make_app("bulkcli", broker_url=os.environ["BULK_URL"], preset="testing")


@app.task(name="bulkcli.add", shared=False)
def add(x, y=0):
    return x + y
"""


def test_cli_enqueue_publishes_json_lines_with_a_progress_bar(
    tmp_path: Path, redis_server_factory: Any
) -> None:
    password = "bulk-Secret-pw"
    server = redis_server_factory()
    server.client().config_set("requirepass", password)
    url = f"redis://:{password}@127.0.0.1:{server.port}/0"
    (tmp_path / "bulkcli.py").write_text(textwrap.dedent(CLI_APP))
    lines = [json.dumps([i]) for i in range(2000)] + [json.dumps({"args": [1], "kwargs": {"y": 2}})]
    (tmp_path / "calls.jsonl").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "BULK_URL": url}
    base = [sys.executable, "-m", "celeryredis.cli", "--app", "bulkcli", "enqueue", "bulkcli.add"]

    done = subprocess.run(
        [*base, "--file", "calls.jsonl", "--chunk-size", "300", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["published"] == 2001
    assert len(set(report["ids"])) == 2001
    assert "2001/2001" in done.stderr  # the progress bar's final position
    client = redis.Redis(port=server.port, password=password)
    assert client.llen("celery") == 2001
    last = json.loads(client.lindex("celery", 0) or b"{}")
    assert json.loads(base64.b64decode(last["body"]))[:2] == [[1], {"y": 2}]

    (tmp_path / "bad.jsonl").write_text('[1]\n[2]\n{"oops": 1}\n[4]\n')
    bad = subprocess.run(
        [*base, "--file", "bad.jsonl", "--chunk-size", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 65  # bad input data: the input is checked before publishing
    assert "line 3: expected [args...]" in bad.stderr
    assert "nothing was published" in bad.stderr
    assert client.llen("celery") == 2001
    for output in (done.stdout, done.stderr, bad.stdout, bad.stderr):
        assert password not in output
