"""What the cluster scenarios share: the host app, workers, queue choice, counters.

Every task run is counted with ``HINCRBY`` in a separate single ``redis-server`` (the
*counter*), so the count survives a master being killed or a slot moving, and it puts
no load on the cluster whose commands a scenario measures.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from celeryredis.testing import LocalRedisCluster, WorkerProcess, find_redis_cli
from celeryredis.transport._cluster import queue_keys
from tests._cluster_host import ready_worker
from tests._util import import_host_module

APP = """
import os

import redis
from celeryredis import make_app

app = make_app(
    "{name}",
    broker_url=os.environ["CLUSTER_URL"],
    result_backend=os.environ["CLUSTER_URL"],
    preset="testing",
    celeryredis_lease_seconds=float(os.environ.get("LEASE_SECONDS", "3")),
    task_default_queue=os.environ.get("DEFAULT_QUEUE", "celery"),
    task_ignore_result=os.environ.get("IGNORE_RESULT") == "1",
    result_backend_max_retries=20,
    task_publish_retry_policy={{
        "max_retries": 100, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.2,
    }},
)
counts = redis.Redis.from_url(os.environ["COUNT_URL"])


@app.task(shared=False)
def work(key, n):
    counts.hincrby("runs:" + key, str(n), 1)
    return n * 2


@app.task(shared=False)
def add(x, y):
    return x + y


@app.task(shared=False)
def total(values):
    return sum(values)
"""


def host_module(
    monkeypatch: pytest.MonkeyPatch, directory: Path, name: str, env: dict[str, str]
) -> Any:
    """Write the host app as ``<directory>/<name>.py`` and import it with ``env`` set."""
    (directory / f"{name}.py").write_text(textwrap.dedent(APP.format(name=name)))
    module = import_host_module(monkeypatch, directory, name, env)
    module.DIR = directory
    module.ENV = env
    module.NAME = name
    return module


def queues_per_master(cluster: LocalRedisCluster, per_master: int, prefix: str) -> list[str]:
    """``per_master`` queue names on each master (their hash tags pick the master).

    Masters are read from the slot map (who owns each name's slot), not from the node
    flags, which can list a node as a master for a moment while the cluster forms.
    """
    chosen: dict[int, list[str]] = {}
    client = cluster.client()
    try:
        for i in range(10_000):
            name = f"{prefix}{i}"
            node = client.get_node_from_key(queue_keys("", name)["lists"][0])
            owner = chosen.setdefault(int(node.port), [])
            if len(owner) < per_master:
                owner.append(name)
            full = [names for names in chosen.values() if len(names) == per_master]
            if len(full) == cluster.master_count:
                break
    finally:
        client.close()
    assert len(chosen) == cluster.master_count, chosen
    assert all(len(names) == per_master for names in chosen.values()), chosen
    # Interleaved: queue i lives on master i % masters.
    return [names[i] for i in range(per_master) for names in chosen.values()]


@contextmanager
def workers(host: Any, *specs: tuple[str, str, int], queues: Sequence[str]) -> Iterator[list[Any]]:
    """Start one worker per ``(name, pool, concurrency)``; stop them all at the end."""
    started: list[WorkerProcess] = []
    try:
        for name, pool, concurrency in specs:
            started.append(
                ready_worker(host, name, queues=queues, pool=pool, concurrency=concurrency)
            )
        yield started
    finally:
        for worker in started:
            worker.stop()


def runs(counter: redis.Redis, key: str) -> dict[int, int]:
    """``{n: times task n ran}`` for the counter hash ``runs:<key>``."""
    raw: dict[bytes, bytes] = counter.hgetall(f"runs:{key}")  # type: ignore[assignment]
    return {int(k): int(v) for k, v in raw.items()}


def commandstats(port: int, password: str | None = None) -> dict[str, int]:
    """``{command: calls}`` of one node (INFO commandstats)."""
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5)
    try:
        info: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in info.items()}


def node_ids(cluster: LocalRedisCluster) -> dict[int, str]:
    """``{port: node id}`` of every node, as the first running node sees it."""
    port = cluster.masters[0]
    client = redis.Redis(host="127.0.0.1", port=port, password=cluster.password)
    try:
        table: dict[str, Any] = client.cluster("NODES")
    finally:
        client.close()
    return {
        int(address.split("@", 1)[0].rsplit(":", 1)[1]): str(row["node_id"])
        for address, row in table.items()
    }


def migrate_slot(
    cluster: LocalRedisCluster, slot: int, source: int, target: int, pause: float
) -> int:
    """Move ``slot`` from master ``source`` to master ``target`` live, key by key.

    The steps of ``redis-cli --cluster reshard`` for one slot (``CLUSTER SETSLOT``
    IMPORTING / MIGRATING, ``MIGRATE`` each key, ``SETSLOT NODE`` everywhere), with
    ``pause`` seconds between keys so clients meet the split slot (ASK, TRYAGAIN).
    Returns how many keys moved.
    """
    ids = node_ids(cluster)

    def node(port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=cluster.password)

    src, dst = node(source), node(target)
    moved = 0
    try:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        while True:
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1)
            if not keys:
                break
            auth = ["AUTH", cluster.password] if cluster.password else []
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, *auth, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause)
        # The new owner first, then the old one, then the other masters (replicas refuse
        # SETSLOT; they learn the new owner from their masters).
        for port in [target, source, *(p for p in cluster.masters if p not in (source, target))]:
            client = node(port)
            try:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
            finally:
                client.close()
    finally:
        src.close()
        dst.close()
    return moved


def reshard(cluster: LocalRedisCluster, source: int, target: int, slots: int) -> str:
    """``redis-cli --cluster reshard``: move ``slots`` slots from ``source`` to ``target``."""
    ids = node_ids(cluster)
    env = dict(os.environ)
    if cluster.password:
        env["REDISCLI_AUTH"] = cluster.password  # not on the command line
    proc = subprocess.run(
        [
            find_redis_cli(), "--cluster", "reshard", f"127.0.0.1:{source}",
            "--cluster-from", ids[source], "--cluster-to", ids[target],
            "--cluster-slots", str(slots), "--cluster-yes",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout
