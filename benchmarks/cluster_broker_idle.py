"""Idle cost and latency of the Redis Cluster broker transport (docs/cluster.md).

Starts a throwaway 3-master + 3-replica cluster (``LocalRedisCluster``) and one solo
worker consuming three queues whose hash tags sit on three different masters, then:

1. idles for 20 s and reads every master's ``INFO commandstats`` before and after (the
   commands the idle worker sends, per second) and the worker's CPU time;
2. sends 20 tasks one at a time, 0.37 s apart, and times each round trip;
3. publishes 1,000 tasks over the three queues and times the last result.

Not part of ``make bench`` (it needs ``redis-cli`` for the cluster). Figures are printed,
never asserted. Usage: ``python benchmarks/cluster_broker_idle.py``
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import redis

from celeryredis.testing import LocalRedisCluster, WorkerProcess
from celeryredis.transport._cluster import queue_keys

APP = """
import os

from celeryredis import make_app

URL = os.environ["CLUSTER_URL"]
app = make_app("idleapp", broker_url=URL, result_backend=URL, preset="testing")


@app.task(shared=False)
def noop(n):
    return n
"""
IDLE_SECONDS = 20.0


def _calls(cluster: LocalRedisCluster) -> dict[int, dict[str, int]]:
    out = {}
    for port in cluster.masters:
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        out[port] = {name: int(value["calls"]) for name, value in stats.items()}
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="cluster-idle-"))
    (directory / "idleapp.py").write_text(APP)
    with LocalRedisCluster() as cluster:
        chosen: dict[int, str] = {}
        for i in range(200):
            name = f"cq{i}"
            chosen.setdefault(cluster.master_for(queue_keys("", name)["lists"][0]), name)
        queues = list(chosen.values())[:3]
        env = {"CLUSTER_URL": cluster.url}
        worker = WorkerProcess(
            "idleapp",
            cwd=directory,
            env=env,
            pool="solo",
            queues=queues,
            hostname="idle@%h",
            log_path=directory / "worker.log",
        )
        try:
            worker.wait_ready(60)
            time.sleep(3.0)
            before, cpu0, t0 = _calls(cluster), _cpu_seconds(worker.pid), time.monotonic()
            time.sleep(IDLE_SECONDS)
            after, cpu1, t1 = _calls(cluster), _cpu_seconds(worker.pid), time.monotonic()
            elapsed = t1 - t0
            total = 0
            for port, calls in after.items():
                delta = {k: v - before[port].get(k, 0) for k, v in calls.items()}
                delta = {k: v for k, v in delta.items() if v and k != "cmdstat_info"}
                total += sum(delta.values())
                print(port, {k: round(v / elapsed, 1) for k, v in sorted(delta.items())})
            print(
                f"idle: {total / elapsed:.1f} commands/s over all masters (calls inside "
                f"scripts included), worker CPU {100 * (cpu1 - cpu0) / elapsed:.1f}% of a "
                f"core over {elapsed:.1f} s"
            )
            os.environ.update(env)
            sys.path.insert(0, str(directory))
            host = importlib.import_module("idleapp")
            latencies = []
            for n in range(20):
                start = time.monotonic()
                host.noop.apply_async((n,), queue=queues[n % 3]).get(timeout=30)
                latencies.append(time.monotonic() - start)
                time.sleep(0.37)
            latencies.sort()
            print(
                f"round trip of one task when idle: median {latencies[10] * 1000:.0f} ms, "
                f"max {latencies[-1] * 1000:.0f} ms (20 tasks)"
            )
            start = time.monotonic()
            results = [host.noop.apply_async((n,), queue=queues[n % 3]) for n in range(1000)]
            published = time.monotonic() - start
            for result in results:
                result.get(timeout=120)
            print(
                f"1000 tasks: published in {published:.2f} s, every result in "
                f"{time.monotonic() - start:.2f} s (one solo worker)"
            )
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
