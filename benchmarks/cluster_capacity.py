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
   counted; see ``idle`` for their rate). The drain's time runs from the worker's
   ``ready.`` line to the last task.

Per case it prints commands per task per master and in all, node CPU (all masters)
per 1,000 tasks, and how long the drain took. The commands this script sends while it
waits (``INFO``, ``LLEN``, ``HLEN``, ``EXISTS``, from one long-lived client) are not
counted. Cases: a solo worker with
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


#: What this script itself sends while it waits for the drain (one long-lived client):
#: not counted.
_OWN: frozenset[str] = frozenset({"info", "llen", "hlen", "exists"})
#: Per command name, calls summed over the masters, at the last snapshot.
_BY_COMMAND: dict[str, int] = {}


def _snapshot(masters: list[int]) -> dict[int, tuple[int, float]]:
    """``{port: (commands served, CPU seconds)}``; the INFO calls themselves excluded."""
    out = {}
    _BY_COMMAND.clear()
    for port in masters:
        client = _node(port)
        try:
            stats: dict[str, Any] = client.info("commandstats")
            cpu: dict[str, Any] = client.info("cpu")
        finally:
            client.close()
        calls = sum(
            int(row["calls"])
            for name, row in stats.items()
            if name.removeprefix("cmdstat_") not in _OWN
        )
        for name, row in stats.items():
            command = name.removeprefix("cmdstat_")
            _BY_COMMAND[command] = _BY_COMMAND.get(command, 0) + int(row["calls"])
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


def _drained(client: Any, queues: list[str]) -> bool:
    for queue in queues:
        keys = queue_keys("", queue)
        if any(client.llen(key) for key in keys["lists"]) or client.hlen(keys["unacked"]):
            return False
    return True


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
    client = cluster.client()  # one client: its connections are made before counting
    _drained(client, queues)
    try:
        before = _snapshot(masters)
        commands_before = dict(_BY_COMMAND)
        worker.wait_ready(60)
        start = time.monotonic()
        deadline = time.monotonic() + 600
        while not _drained(client, queues):
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: not drained in 600 s")
            time.sleep(0.05)
        if results:
            keys = [host.app.backend.get_key_for_task(r.id) for r in sent]
            chunks = [keys[i : i + 500] for i in range(0, len(keys), 500)]
            while sum(client.exists(*chunk) for chunk in chunks) < len(keys):
                time.sleep(0.05)
        seconds = time.monotonic() - start
        delta = _delta(before, _snapshot(masters))
    finally:
        worker.stop()
        client.close()
    _report("consume", tasks, delta, seconds)
    per_task = {
        name: round((calls - commands_before.get(name, 0)) / tasks, 2)
        for name, calls in _BY_COMMAND.items()
        if name not in _OWN and (calls - commands_before.get(name, 0)) / tasks >= 0.05
    }
    print(f"           per task, by command (calls inside scripts included): {per_task}")


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
