"""The plugin's workers use the fixture's Redis, never the one a host app hard-codes."""

from __future__ import annotations

import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celeryredis import make_app
from celeryredis.testing import RedisServer, WorkerProcess, WorkerProcessError, find_redis_server
from celeryredis.testing._guard import check_urls
from celeryredis.testing._server import _free_port, started_here
from tests._util import wait_for

pytestmark = pytest.mark.integration

HOSTAPP = """
from celeryredis import make_app

app = make_app("guardapp", broker_url={url!r}, preset="testing")


@app.task(name="guard.where", shared=False)
def where():
    from celeryredis.connection import get_redis

    client = get_redis(app)
    client.incr("guard:ran")
    return client.connection_pool.connection_kwargs["port"]
"""


def _write_app(directory: Path, url: str) -> None:
    (directory / "guardapp.py").write_text(textwrap.dedent(HOSTAPP.format(url=url)))


@pytest.fixture
def foreign_server(tmp_path: Path) -> Iterator[int]:
    """A redis-server this test starts by hand: not one the fixtures started."""
    port = _free_port()
    directory = tmp_path / "foreign"
    directory.mkdir()
    process = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_timeout=2)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(up, 10, "the hand-started redis-server")
        yield port
    finally:
        client.close()
        process.terminate()
        process.wait(10)


def test_worker_consumes_from_the_fixture_server_not_the_hard_coded_one(
    tmp_path: Path,
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_process: Callable[..., WorkerProcess],
) -> None:
    server_a = redis_server_factory()
    server_b = redis_server_factory()
    _write_app(tmp_path, server_a.url)  # the host app hard-codes A (the developer's Redis)
    on_a = make_app("guard-a", broker_url=server_a.url, preset="testing")
    on_b = make_app("guard-b", broker_url=server_b.url, preset="testing")
    waiting_on_a = on_a.send_task("guard.where")
    a, b = server_a.client(), server_b.client()
    connections_to_a = a.info("stats")["total_connections_received"]

    worker = celery_worker_process("guardapp", cwd=tmp_path, redis_url=server_b.url)
    worker.wait_ready()

    assert on_b.send_task("guard.where").get(timeout=20) == server_b.port
    # One connection to A: the fixture's own run_id check of the servers it started
    # (started_here()); none from the worker.
    assert a.info("stats")["total_connections_received"] == connections_to_a + 1
    assert b.get("guard:ran") == b"1"
    assert a.get("guard:ran") is None
    assert a.llen("celery") == 1  # A's message is still waiting: nothing consumed from A
    assert waiting_on_a.state == "PENDING"
    assert f"verified: broker redis://127.0.0.1:{server_b.port}/0" in worker.log_text()
    assert f":{server_a.port}" not in worker.log_text()


def test_env_redis_url_wins_over_the_hard_coded_url(
    tmp_path: Path,
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_process: Callable[..., WorkerProcess],
) -> None:
    server_a = redis_server_factory()
    server_b = redis_server_factory()
    _write_app(tmp_path, server_a.url)
    worker = celery_worker_process("guardapp", cwd=tmp_path, env={"REDIS_URL": server_b.url})
    worker.wait_ready()
    on_b = make_app("guard-env", broker_url=server_b.url, preset="testing")
    assert on_b.send_task("guard.where").get(timeout=20) == server_b.port
    assert server_a.client().get("guard:ran") is None


def test_worker_is_refused_against_a_server_the_session_did_not_start(
    tmp_path: Path,
    foreign_server: int,
    celery_worker_process: Callable[..., WorkerProcess],
) -> None:
    url = f"redis://127.0.0.1:{foreign_server}/0"
    _write_app(tmp_path, url)
    watcher = redis.Redis(port=foreign_server, socket_timeout=2)
    before = watcher.info("stats")["total_connections_received"]
    started = time.monotonic()
    with pytest.raises(WorkerProcessError, match="is not a redis-server this test session"):
        celery_worker_process("guardapp", cwd=tmp_path)
    assert time.monotonic() - started < 60
    # The worker never connected: only this test's own client ever did.
    assert watcher.info("stats")["total_connections_received"] == before
    assert watcher.dbsize() == 0
    watcher.close()


def test_a_hard_coded_redis_the_session_did_not_start_is_refused(
    tmp_path: Path, celery_worker_process: Callable[..., WorkerProcess]
) -> None:
    # Stands for a developer's own Redis (a port this session never started; nothing
    # listens there, and nothing connects: the check compares ports with its servers).
    port = _free_port()
    _write_app(tmp_path, f"redis://localhost:{port}/0")
    with pytest.raises(WorkerProcessError, match=rf"localhost:{port} is not a redis-server"):
        celery_worker_process("guardapp", cwd=tmp_path)


def test_a_different_server_on_a_recorded_port_is_refused(
    redis_server_factory: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis_server_factory()
    spec: dict[str, Any] = started_here()
    assert spec["servers"][str(server.port)] == server.run_id
    assert check_urls({"broker_url": server.url}, spec) == []
    # As if another server now answered on the port: its run_id is not the recorded one.
    monkeypatch.setattr(server, "_run_id", "0" * 40)
    spec = started_here()
    assert str(server.port) not in spec["servers"]
    (problem,) = check_urls({"broker_url": server.url}, spec)
    assert "is not the one the fixture started there" in problem
