"""Host projects of the Redis Cluster integration tests: the module, its worker, its counter.

Each test module writes its own host app (its settings and tasks differ); what they
share is here: writing and importing the module with the cluster's address in its
environment, starting a worker of it, and the ``runs()`` client its tasks count their
runs with (a Redis hash per test, read back to tell "ran exactly once").
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest

from celeryredis.testing import LocalRedisCluster, WorkerProcess
from tests._util import import_host_module

#: Host-module source of ``runs()``: a cluster client of the test's own (the tasks count
#: their runs with it). Needs ``import os`` and ``import redis.cluster`` in the module.
RUNS_CLIENT = """
_client = None


def runs():
    global _client
    if _client is None:
        nodes = [
            redis.cluster.ClusterNode("127.0.0.1", int(port))
            for port in os.environ["CLUSTER_PORTS"].split(",")
        ]
        _client = redis.cluster.RedisCluster(startup_nodes=nodes)
    return _client
"""


@contextlib.contextmanager
def cluster_host(
    cluster: LocalRedisCluster,
    directory: Path,
    name: str,
    source: str,
    env: dict[str, str] | None = None,
) -> Iterator[ModuleType]:
    """Write ``source`` as module ``name`` in ``directory`` and import it, as a publisher would.

    Its environment has ``CLUSTER_URL`` (the app's URL) and ``CLUSTER_PORTS`` (the nodes'
    plain ports, for ``runs()``), plus ``env``; the module gets ``DIR`` and ``ENV``.
    """
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    full = {
        "CLUSTER_URL": cluster.url,
        "CLUSTER_PORTS": ",".join(str(port) for port in cluster.ports),
        **(env or {}),
    }
    with pytest.MonkeyPatch.context() as monkeypatch:
        module = import_host_module(monkeypatch, directory, name, full)
        module.DIR = directory
        module.ENV = full
        yield module


def ready_worker(
    host: ModuleType,
    name: str,
    *,
    queues: Sequence[str] | None = None,
    pool: str = "solo",
    concurrency: int = 1,
) -> WorkerProcess:
    """A worker of ``host`` (a :func:`cluster_host` module), ready; stopped if it is not."""
    worker = WorkerProcess(
        host.__name__,
        cwd=host.DIR,
        env=host.ENV,
        pool=pool,
        concurrency=concurrency,
        hostname=f"{name}@%h",
        queues=queues,
        log_path=Path(host.DIR) / f"{name}.log",
    )
    try:
        worker.wait_ready(timeout=60)
    except BaseException:
        worker.stop()
        raise
    return worker
