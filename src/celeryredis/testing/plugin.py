"""The celeryredis pytest plugin (entry point ``pytest11: celeryredis``).

See :mod:`celeryredis.testing` for the fixtures it provides.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celeryredis.testing._proxy import FaultProxy
from celeryredis.testing._rediscluster import LocalRedisCluster
from celeryredis.testing._server import RedisServer, RedisServerNotFound, started_here
from celeryredis.testing._worker import WorkerProcess

__all__ = [
    "celery_worker_process",
    "celeryredis_app",
    "fault_proxy_factory",
    "inprocess_worker",
    "redis_cluster",
    "redis_cluster_factory",
    "redis_server",
    "redis_server_factory",
    "redis_url",
]

_DBS = itertools.cycle(range(1, 16))


def _need_redis(exc: RedisServerNotFound) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and no redis-server: {exc}", pytrace=False)
    pytest.skip(f"no redis-server binary: {exc}")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``integration`` marker used by tests that need a real Redis."""
    config.addinivalue_line(
        "markers", "integration: talks to a real redis-server and/or runs real Celery workers"
    )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throwaway redis-server (16 databases) for the whole test session."""
    server = RedisServer()
    try:
        server.start()
    except RedisServerNotFound as exc:
        server.cleanup()
        _need_redis(exc)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A URL on the session's server, on a database of its own, flushed before the test."""
    db = next(_DBS)
    client = redis_server.client(db)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url_for(db)


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-servers that a test may kill or restart; all stopped at teardown."""
    servers: list[RedisServer] = []

    def start(**kwargs: Any) -> RedisServer:
        kwargs.setdefault("directory", tmp_path / f"redis-{len(servers)}")
        Path(kwargs["directory"]).mkdir(parents=True, exist_ok=True)
        server = RedisServer(**kwargs)
        servers.append(server)
        try:
            return server.start()
        except RedisServerNotFound as exc:
            _need_redis(exc)
            raise

    try:
        yield start
    finally:
        for server in servers:
            server.cleanup()


def _start_cluster(cluster: LocalRedisCluster) -> LocalRedisCluster:
    try:
        return cluster.start()
    except RedisServerNotFound as exc:
        cluster.cleanup()
        _need_redis(exc)
        raise
    except BaseException:
        cluster.cleanup()
        raise


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """One throwaway Redis Cluster (3 masters, 3 replicas) for the session; do not kill its nodes.

    Its ``url`` is the ``rediscluster://`` form listing every node.
    """
    cluster = LocalRedisCluster(directory=tmp_path_factory.mktemp("redis-cluster"))
    _start_cluster(cluster)
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def redis_cluster_factory(tmp_path: Path) -> Iterator[Callable[..., LocalRedisCluster]]:
    """Start private Redis Clusters a test may kill nodes of; all stopped at teardown.

    Call it with :class:`~celeryredis.testing.LocalRedisCluster`'s arguments
    (``masters``, ``replicas``, ``node_timeout_ms``, ``password``, ``user``, ``tls``).
    """
    clusters: list[LocalRedisCluster] = []

    def start(**kwargs: Any) -> LocalRedisCluster:
        kwargs.setdefault("directory", tmp_path / f"cluster-{len(clusters)}")
        cluster = LocalRedisCluster(**kwargs)
        clusters.append(cluster)
        return _start_cluster(cluster)

    try:
        yield start
    finally:
        for cluster in clusters:
            cluster.cleanup()


@pytest.fixture
def celeryredis_app(redis_url: str) -> Celery:
    """A ``make_app()`` app on ``redis_url`` with the ``testing`` preset."""
    from celeryredis import make_app  # noqa: PLC0415 - keep plugin import light

    return make_app("celeryredis-test", broker_url=redis_url, preset="testing")


@pytest.fixture
def celery_worker_process(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``celery worker`` subprocesses; each is stopped by process group at teardown.

    Call it as ``celery_worker_process("proj", redis_url=redis_url, **options)`` (the
    options of :class:`WorkerProcess`). The worker uses the fixture's Redis, never the
    one the host app hard-codes:

    - ``redis_url`` (or ``REDIS_URL`` / ``CELERY_BROKER_URL`` in ``env``) becomes the
      worker's broker, and its result backend too when the app stores results in
      Redis (``result_backend=`` to give another), whatever ``broker_url`` the app
      module sets;
    - every Redis URL the worker would use must be a loopback server (or fault
      proxy) that this test session started, checked by port and by the server's
      ``run_id``; otherwise the call raises :class:`WorkerProcessError` before the
      worker connects to anything. ``trust_ports`` adds loopback ports of servers the
      test started by other means (e.g. Sentinel processes).
    """
    workers: list[WorkerProcess] = []
    counter = itertools.count(1)

    def start(
        app: str,
        *,
        redis_url: str | None = None,
        result_backend: str | None = None,
        trust_ports: Iterable[int] = (),
        **kwargs: Any,
    ) -> WorkerProcess:
        kwargs.setdefault("cwd", tmp_path)
        kwargs.setdefault("log_path", tmp_path / f"worker-{next(counter)}.log")
        env = dict(kwargs.get("env") or {})
        broker = redis_url or env.get("CELERY_BROKER_URL") or env.get("REDIS_URL")
        guard: dict[str, Any] = {
            **started_here(),
            "trust": [int(p) for p in trust_ports],
            "broker_url": broker,
            "result_backend": result_backend or env.get("CELERY_RESULT_BACKEND"),
        }
        worker = WorkerProcess(app, guard=guard, **kwargs)
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.stop()


@pytest.fixture
def inprocess_worker() -> Iterator[Callable[..., Any]]:
    """Start ``celery.contrib.testing`` workers in threads of this process; stopped at teardown.

    Call it as ``inprocess_worker(app, pool="solo", concurrency=1)``; it returns
    the started worker.
    """
    from celery.contrib.testing.worker import start_worker  # noqa: PLC0415

    with ExitStack() as stack:

        def start(app: Celery, **kwargs: Any) -> Any:
            kwargs.setdefault("pool", "solo")
            kwargs.setdefault("perform_ping_check", False)
            kwargs.setdefault("shutdown_timeout", 10.0)
            return stack.enter_context(start_worker(app, **kwargs))

        yield start


@pytest.fixture
def fault_proxy_factory() -> Iterator[Callable[..., FaultProxy]]:
    """Start :class:`FaultProxy` instances (``factory(upstream_port)``); stopped at teardown."""
    proxies: list[FaultProxy] = []

    def start(upstream_port: int, **kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(upstream_port, **kwargs)
        proxies.append(proxy)
        return proxy.start()

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.stop()
