"""Capacity figures of the Redis Cluster broker and result backend (docs/cluster.md).

Starts a throwaway 3-master + 3-replica cluster (``LocalRedisCluster``), picks three
queues whose hash tags sit on three different masters, and for each case:

1. publishes N no-op tasks over the three queues with no worker running, reading every
   master's ``INFO commandstats`` and ``INFO cpu`` (``used_cpu_sys`` + ``used_cpu_user``)
   before and after: the publish side;
2. starts one worker consuming the three queues and waits until every task ran (the
   queues and their unacked hashes are empty, and with results every result is
   stored), reading the same counters before the worker starts and after the drain:
   the consume side (the worker's start-up and its idle polls until the end are
   included; see ``idle`` below for their rate).

Per case it prints commands per task per master and in all, node CPU (all masters)
per 1,000 tasks, and how long the drain took. Cases: a solo worker with
``task_ignore_result`` (broker only), a solo worker storing results on the same cluster,
and a prefork worker (``-c 2``) storing results (its rate shows the poll loop's cap).

Not part of ``make bench`` (it needs ``redis-cli`` for the cluster). Figures are printed,
never asserted. Usage: ``python benchmarks/cluster_capacity.py [N]`` (N defaults to 3000;
the prefork case uses N/5).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from celeryredis.testing import LocalRedisCluster, WorkerProcess
from celeryredis.transport._cluster import queue_keys

APP = """
import os

from celeryredis import make_app

URL = os.environ["CLUSTER_URL"]
app = make_app(
    "capapp",
    broker_url=URL,
    result_backend=URL,
    preset="testing",
    task_ignore_result=os.environ.get("IGNORE_RESULT") == "1",
)


@app.task(shared=False)
def noop(n):
    return n
"""


def _node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def _snapshot(masters: list[int]) -> dict[int, tuple[int, float]]:
    """``{port: (commands served, CPU seconds)}``; the INFO calls themselves excluded."""
    out = {}
    for port in masters:
        client = _node(port)
        try:
            stats: dict[str, Any] = client.info("commandstats")
            cpu: dict[str, Any] = client.info("cpu")
        finally:
            client.close()
        calls = sum(int(row["calls"]) for name, row in stats.items() if name != "cmdstat_info")
        out[port] = (calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]))
    return out


def _delta(
    before: dict[int, tuple[int, float]], after: dict[int, tuple[int, float]]
) -> dict[int, tuple[int, float]]:
    return {p: (after[p][0] - before[p][0], after[p][1] - before[p][1]) for p in after}


def _report(label: str, tasks: int, delta: dict[int, tuple[int, float]], seconds: float) -> None:
    per_master = {p: round(c / tasks, 2) for p, (c, _) in sorted(delta.items())}
    commands = sum(c for c, _ in delta.values())
    cpu = sum(s for _, s in delta.values())
    print(
        f"  {label:<8} {tasks} tasks in {seconds:.2f} s ({tasks / seconds:,.0f}/s): "
        f"{commands / tasks:.2f} commands per task in all, per master {per_master}; "
        f"node CPU (3 masters) {1000 * cpu / tasks:.3f} s per 1,000 tasks"
    )


def _drained(cluster: LocalRedisCluster, queues: list[str]) -> bool:
    client = cluster.client()
    try:
        for queue in queues:
            keys = queue_keys("", queue)
            if any(client.llen(key) for key in keys["lists"]) or client.hlen(keys["unacked"]):
                return False
        return True
    finally:
        client.close()


def _case(
    cluster: LocalRedisCluster,
    directory: Path,
    queues: list[str],
    *,
    label: str,
    pool: str,
    tasks: int,
    results: bool,
) -> None:
    env = {"CLUSTER_URL": cluster.url, "IGNORE_RESULT": "0" if results else "1"}
    os.environ.update(env)
    sys.modules.pop("capapp", None)
    host = importlib.import_module("capapp")
    masters = cluster.masters
    print(f"{label}:")
    before, start = _snapshot(masters), time.monotonic()
    sent = [host.noop.apply_async((n,), queue=queues[n % 3]) for n in range(tasks)]
    _report("publish", tasks, _delta(before, _snapshot(masters)), time.monotonic() - start)
    worker = WorkerProcess(
        "capapp",
        cwd=directory,
        env=env,
        pool=pool,
        concurrency=2 if pool == "prefork" else 1,
        queues=queues,
        hostname=f"{label}@%h",
        log_path=directory / f"{label}.log",
    )
    try:
        before, start = _snapshot(masters), time.monotonic()
        worker.wait_ready(60)
        deadline = time.monotonic() + 600
        while not _drained(cluster, queues):
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: not drained in 600 s")
            time.sleep(0.05)
        if results:
            client = cluster.client()
            try:
                keys = [host.app.backend.get_key_for_task(r.id) for r in sent]
                chunks = [keys[i : i + 500] for i in range(0, len(keys), 500)]
                while sum(client.exists(*chunk) for chunk in chunks) < len(keys):
                    time.sleep(0.05)
            finally:
                client.close()
        seconds = time.monotonic() - start
        delta = _delta(before, _snapshot(masters))
    finally:
        worker.stop()
    _report("consume", tasks, delta, seconds)


def _idle(cluster: LocalRedisCluster, directory: Path, queues: list[str]) -> None:
    worker = WorkerProcess(
        "capapp",
        cwd=directory,
        env={"CLUSTER_URL": cluster.url, "IGNORE_RESULT": "1"},
        pool="solo",
        queues=queues,
        hostname="idle@%h",
        log_path=directory / "idle.log",
    )
    try:
        worker.wait_ready(60)
        time.sleep(2.0)
        before, start = _snapshot(cluster.masters), time.monotonic()
        time.sleep(10.0)
        delta = _delta(before, _snapshot(cluster.masters))
        seconds = time.monotonic() - start
    finally:
        worker.stop()
    commands = sum(c for c, _ in delta.values())
    print(f"idle: one solo worker on 3 queues: {commands / seconds:.1f} commands/s in all")


def main() -> None:
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    directory = Path(tempfile.mkdtemp(prefix="cluster-capacity-"))
    (directory / "capapp.py").write_text(APP)
    sys.path.insert(0, str(directory))
    with LocalRedisCluster() as cluster:
        cluster.wait_replicas_synced(30)
        chosen: dict[int, str] = {}
        for i in range(200):
            name = f"cap{i}"
            chosen.setdefault(cluster.master_for(queue_keys("", name)["lists"][0]), name)
        queues = list(chosen.values())[:3]
        print(f"cluster 3 masters + 3 replicas, queues {queues} on masters {cluster.masters}")
        _idle(cluster, directory, queues)
        _case(cluster, directory, queues, label="solo-noresult", pool="solo", tasks=tasks,
              results=False)  # fmt: skip
        _case(cluster, directory, queues, label="solo-results", pool="solo", tasks=tasks,
              results=True)  # fmt: skip
        _case(cluster, directory, queues, label="prefork-results", pool="prefork",
              tasks=max(tasks // 5, 100), results=True)  # fmt: skip


if __name__ == "__main__":
    main()
