"""Idle and busy fetch cost of the Redis Cluster broker transport (docs/cluster.md).

Starts a throwaway 3-master + 3-replica cluster (``LocalRedisCluster``) and a single
``redis-server`` for a run counter, picks a queue name whose first 3 partitions sit on
the 3 masters, then:

1. **idle**: one solo worker consumes the queue split into 3 partitions, once with the
   poll loop (``wake_up=False``) and once with the blocking wait (the default). After
   3 s it idles for 20 s; every master's ``INFO commandstats`` before and after gives
   the commands the idle worker sends per second (``cmdstat_evalsha``: fetch and
   sweep script calls), ``/proc`` its CPU time. Then 20 tasks one at a time, 0.37 s
   apart: each round trip.
2. **busy**: for N = 1, 2, 3 partitions, a fresh solo worker; 2,000 tasks (results
   ignored; each task ``INCR``s the counter on the single server) are published in one
   go; tasks/s from the first publish to the last run, and the commands the masters
   served per task (publish + fetch + ack + sweep), by command.
3. **placement**: for 1,000 names ``q0``..``q999``, on how many of the fixture's 3
   masters (contiguous thirds of the slots) their N partitions land (no cluster needed).

Not part of ``make bench`` (it needs ``redis-cli`` for the cluster). Figures are printed,
never asserted. Usage: ``python benchmarks/cluster_broker_idle.py`` (about 2 minutes).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from celeryredis.testing import LocalRedisCluster, RedisServer, WorkerProcess
from celeryredis.transport._cluster import queue_keys

APP = """
import importlib
import os

import redis
from celeryredis import make_app

URL = os.environ["CLUSTER_URL"]
app = make_app(
    "benchapp",
    broker_url=URL,
    result_backend=URL,
    preset="testing",
    celeryredis_cluster_partitions={os.environ["QUEUE"]: int(os.environ["PARTITIONS"])},
    broker_transport_options={"wake_up": os.environ["WAKE_UP"] == "1"},
)
counter = redis.Redis.from_url(os.environ["COUNT_URL"])


@app.task(shared=False)
def noop(n):
    return n


@app.task(shared=False, ignore_result=True)
def count(n):
    counter.incr("runs")
"""
IDLE_SECONDS = 20.0
BUSY_TASKS = 2000
_NOT_OURS = frozenset({"info", "hello", "replconf"})


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


def _delta(
    before: dict[int, dict[str, int]], after: dict[int, dict[str, int]]
) -> dict[int, dict[str, int]]:
    out = {}
    for port, calls in after.items():
        delta = {k.removeprefix("cmdstat_"): v - before[port].get(k, 0) for k, v in calls.items()}
        # Not the worker's: the benchmark's own INFO and connections, replication acks.
        out[port] = {k: v for k, v in delta.items() if v and k not in _NOT_OURS}
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _queue_on_three_masters(cluster: LocalRedisCluster) -> str:
    for i in range(1000):
        name = f"hot{i}"
        parts = queue_keys("", name, partitions=3)["partitions"]
        if len({cluster.master_for(p["lists"][0]) for p in parts}) == 3:
            return name
    raise RuntimeError("no name found")


def _host(directory: Path, env: dict[str, str]) -> Any:
    os.environ.update(env)
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    sys.modules.pop("benchapp", None)

    return importlib.import_module("benchapp")


def _worker(directory: Path, env: dict[str, str], queue: str, name: str) -> WorkerProcess:
    worker = WorkerProcess(
        "benchapp",
        cwd=directory,
        env=env,
        pool="solo",
        queues=[queue],
        hostname=f"{name}@%h",
        log_path=directory / f"{name}.log",
    )
    worker.wait_ready(60)
    return worker


def idle(cluster: LocalRedisCluster, directory: Path, env: dict[str, str], queue: str) -> None:
    for wake in ("0", "1"):
        mode = "blocking wait" if wake == "1" else "poll loop"
        run_env = {**env, "PARTITIONS": "3", "WAKE_UP": wake}
        worker = _worker(directory, run_env, queue, f"idle{wake}")
        try:
            time.sleep(3.0)
            before, cpu0, t0 = _calls(cluster), _cpu_seconds(worker.pid), time.monotonic()
            time.sleep(IDLE_SECONDS)
            after, cpu1, t1 = _calls(cluster), _cpu_seconds(worker.pid), time.monotonic()
            elapsed = t1 - t0
            total = evalsha = 0
            print(f"idle, {mode}, 1 solo worker, 1 queue in 3 partitions on 3 masters:")
            for port, delta in _delta(before, after).items():
                total += sum(delta.values())
                evalsha += delta.get("evalsha", 0)
                rates = {k: round(v / elapsed, 2) for k, v in sorted(delta.items())}
                print(f"  master {port} (per second): {rates}")
            print(
                f"  {total / elapsed:.1f} commands/s over all masters (calls inside scripts "
                f"included), {evalsha / elapsed / 3:.2f} script calls/s per partition, worker "
                f"CPU {100 * (cpu1 - cpu0) / elapsed:.1f}% of a core over {elapsed:.1f} s"
            )
            host = _host(directory, run_env)
            latencies = []
            for n in range(20):
                start = time.monotonic()
                host.noop.apply_async((n,), queue=queue).get(timeout=30)
                latencies.append(time.monotonic() - start)
                time.sleep(0.37)
            latencies.sort()
            print(
                f"  round trip of one task when idle: median {latencies[10] * 1000:.0f} ms, "
                f"max {latencies[-1] * 1000:.0f} ms (20 tasks)"
            )
        finally:
            worker.stop()


def busy(
    cluster: LocalRedisCluster, directory: Path, env: dict[str, str], queue: str, counter: Any
) -> None:
    for partitions in (1, 2, 3):
        run_env = {**env, "PARTITIONS": str(partitions), "WAKE_UP": "1"}
        worker = _worker(directory, run_env, queue, f"busy{partitions}")
        try:
            host = _host(directory, run_env)
            counter.delete("runs")
            time.sleep(2.0)
            before = _calls(cluster)
            start = time.monotonic()
            for n in range(BUSY_TASKS):
                host.count.apply_async((n,), queue=queue)
            published = time.monotonic() - start
            deadline = start + 300
            while int(counter.get("runs") or 0) < BUSY_TASKS and time.monotonic() < deadline:
                time.sleep(0.01)
            took = time.monotonic() - start
            time.sleep(1.0)  # the last acks ride on the next fetch or sweep
            delta = _delta(before, _calls(cluster))
            merged: Counter[str] = Counter()
            for calls in delta.values():
                merged.update(calls)
            per_task = {k: round(v / BUSY_TASKS, 3) for k, v in sorted(merged.items())}
            fetches = merged["evalsha"] - BUSY_TASKS  # one push script call per task
            print(
                f"busy, {partitions} partition(s): {BUSY_TASKS} tasks, published in "
                f"{published:.2f} s, all ran {took:.2f} s after the first publish "
                f"({BUSY_TASKS / took:.0f} tasks/s); {sum(merged.values()) / BUSY_TASKS:.2f} "
                f"commands per task on the masters; {fetches} fetch/sweep/renew script calls "
                f"({BUSY_TASKS / max(fetches, 1):.1f} tasks per call)"
            )
            print(f"  per task: {per_task}")
        finally:
            worker.stop()


def placement() -> None:
    def master(slot: int) -> int:
        return 0 if slot <= 5460 else 1 if slot <= 10922 else 2

    for partitions in (2, 3, 6):
        spread: Counter[int] = Counter()
        for i in range(1000):
            parts = queue_keys("", f"q{i}", partitions=partitions)["partitions"]
            spread[len({master(key_slot(p["lists"][0].encode())) for p in parts})] += 1
        print(
            f"placement, {partitions} partitions of 1000 names on 3 masters: "
            + ", ".join(f"{n} master(s): {spread[n]}" for n in sorted(spread))
        )


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    (directory / "benchapp.py").write_text(APP)
    placement()
    with LocalRedisCluster() as cluster, RedisServer() as single:
        queue = _queue_on_three_masters(cluster)
        env = {"CLUSTER_URL": cluster.url, "COUNT_URL": single.url, "QUEUE": queue}
        counter = redis.Redis.from_url(single.url)
        idle(cluster, directory, env, queue)
        busy(cluster, directory, env, queue, counter)


if __name__ == "__main__":
    main()
