"""Test support: throwaway ``redis-server`` processes, real worker processes, pytest fixtures.

The pytest plugin lives in :mod:`celeryredis.testing.plugin` and is registered
through the ``pytest11`` entry point, so installing celeryredis makes its
fixtures available to a host project's test suite:

``redis_server``
    One throwaway ``redis-server`` per test session (a :class:`RedisServer`).
``redis_url``
    A URL on that server with a database of the test's own, flushed before the test.
``redis_server_factory``
    Call it to start a private server that the test may kill or restart.
``redis_cluster``
    One throwaway Redis Cluster (3 masters + 3 replicas, a :class:`LocalRedisCluster`)
    per session; its ``url`` is the ``rediscluster://`` form. Needs ``redis-cli``.
``redis_cluster_factory``
    Call it to start a private Redis Cluster whose nodes the test may kill.
``celeryredis_app``
    A :func:`celeryredis.make_app` app on ``redis_url`` with the ``testing`` preset.
``celery_worker_process``
    Call it to start a real ``celery worker`` subprocess (a :class:`WorkerProcess`).
``inprocess_worker``
    Call it with an app to run a ``celery.contrib.testing`` worker in a thread.
``fault_proxy_factory``
    Call it with a server port to put a :class:`FaultProxy` (pause, cut, half-open
    "zombie" connections) in front of it.

Every process a fixture starts is stopped by PID (or process group) at teardown,
even when the test fails. When no ``redis-server`` binary is installed, tests
that need one are skipped, except under ``CI=true``, where they fail.

This module does not import pytest; the demo uses :class:`RedisServer` too.
"""

from __future__ import annotations

from celeryredis.testing._proxy import FaultProxy, FaultProxyError
from celeryredis.testing._rediscluster import LocalRedisCluster, find_redis_cli
from celeryredis.testing._server import (
    RedisServer,
    RedisServerError,
    RedisServerNotFound,
    find_redis_server,
)
from celeryredis.testing._worker import WorkerProcess, WorkerProcessError

__all__ = [
    "FaultProxy",
    "FaultProxyError",
    "LocalRedisCluster",
    "RedisServer",
    "RedisServerError",
    "RedisServerNotFound",
    "WorkerProcess",
    "WorkerProcessError",
    "find_redis_cli",
    "find_redis_server",
]
