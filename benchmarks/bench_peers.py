"""Peers on the same Redis, same N: RQ, Dramatiq and Huey next to Celery with celeryredis.

Every job, in every library, does one ``INCR bench:done`` so completion is visible; a
drain rate runs from the first completion seen to the last (start-up excluded). Celery
rows use the ``production`` preset and ``celeryredis.Task`` (the task class a user of
``make_app()`` gets) with results off, measured in the same repetition, so each ratio is
to the Celery row of the same kind measured alongside it.

RQ's default worker forks for every job (about 70 jobs/s here), so the drain uses
``rq.worker.SimpleWorker`` (no fork), its fastest worker. Dramatiq runs one process
with its default 8 threads. Huey (``RedisHuey``, results off) runs its consumer with 2
worker processes (``-w 2 -k process``), next to Celery's ``-P prefork -c 2``. Each drain
also reads the consumer's CPU time per task (its processes, children included, over the
same span): on 2 cores what a consumer costs per task bounds how fast it can drain.

Usage: python benchmarks/bench_peers.py [--n 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from celeryredis import enqueue_many
from celeryredis.testing import RedisServer

sys.path.insert(0, str(Path(__file__).parent))
from _harness import BenchApp, Section, drain_rate, median, ratio, ratio_spread, ratios, spread

PEERS = """
import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from huey import RedisHuey

URL = os.environ["BENCH_URL"]
client = redis.Redis.from_url(URL)
dramatiq.set_broker(RedisBroker(url=URL))


def rq_noop(i):
    client.incr("bench:done")


@dramatiq.actor(max_retries=0)
def dram_noop(i):
    client.incr("bench:done")


huey = RedisHuey("bench", url=URL, results=False)


@huey.task()
def huey_noop(i):
    client.incr("bench:done")
"""

PUBLISH = (
    "Celery `.delay()` loop",
    "celeryredis `enqueue_many`",
    "RQ `enqueue` loop",
    "RQ `enqueue_many`",
    "Dramatiq `send` loop",
    "Huey enqueue loop",
)
DRAIN = (
    "Celery + celeryredis production, `-P solo`",
    "Celery + celeryredis production, `-P prefork -c 2`",
    "RQ `SimpleWorker`",
    "Dramatiq `-p 1 -t 8`",
    "Huey `-w 2 -k process`",
)
BASE = "celeryredis.Task"


class _Process:
    """A consumer subprocess in its own session, stopped with its group."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.log = (cwd / "peer.log").open("wb")
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **env, "PYTHONPATH": str(cwd)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass
        finally:
            self.log.close()


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def run(url: str, workdir: Path, n: int = 5000, runs: int = 3) -> Section:
    from rq import Queue  # noqa: PLC0415 - the bench group's dependencies

    bench = BenchApp(workdir, url)
    (workdir / "peerjobs.py").write_text(textwrap.dedent(PEERS))
    os.environ["BENCH_URL"] = url
    sys.modules.pop("peerjobs", None)
    peers: Any = importlib.import_module("peerjobs")
    client = redis.Redis.from_url(url)
    queue = Queue("bench", connection=client)
    env = {"BENCH_URL": url}
    publish: dict[str, list[float]] = {v: [] for v in PUBLISH}
    drain: dict[str, list[float]] = {v: [] for v in DRAIN}
    drain_cpu: dict[str, list[float]] = {v: [] for v in DRAIN}

    def timed(fn: Callable[[], None]) -> float:
        client.flushdb()
        started = time.perf_counter()
        fn()
        return n / (time.perf_counter() - started)

    for rep in range(runs):
        host = bench.load("production", BASE)
        host.noop.delay(0)
        steps: dict[str, Callable[[], None]] = {
            PUBLISH[0]: lambda host=host: [host.noop.delay(i) for i in range(n)] and None,
            PUBLISH[1]: lambda host=host: (
                enqueue_many(host.noop, ((i,) for i in range(n))) and None
            ),
            PUBLISH[2]: lambda: [queue.enqueue(peers.rq_noop, i) for i in range(n)] and None,
            PUBLISH[3]: lambda: (
                queue.enqueue_many([Queue.prepare_data(peers.rq_noop, (i,)) for i in range(n)])
                and None
            ),
            PUBLISH[4]: lambda: [peers.dram_noop.send(i) for i in range(n)] and None,
            PUBLISH[5]: lambda: [peers.huey_noop(i) for i in range(n)] and None,
        }
        for variant in PUBLISH if rep % 2 == 0 else tuple(reversed(PUBLISH)):
            rate = timed(steps[variant])
            publish[variant].append(rate)
            print(f"peers run {rep + 1}: publish {variant:32} {rate:9,.0f}/s", flush=True)

        # Drains: pre-publish with each library's fastest publisher, then start a consumer.
        def celery_fill(host: Any = host) -> None:
            enqueue_many(host.noop, ((i,) for i in range(n)))

        def rq_fill() -> None:
            queue.enqueue_many([Queue.prepare_data(peers.rq_noop, (i,)) for i in range(n)])

        def dram_fill() -> None:
            for i in range(n):
                peers.dram_noop.send(i)

        def huey_fill() -> None:
            for i in range(n):
                peers.huey_noop(i)

        consumers: dict[str, tuple[Callable[[], None], Callable[[], Any]]] = {
            DRAIN[0]: (celery_fill, lambda: bench.worker("production", pool="solo", base=BASE)),
            DRAIN[1]: (
                celery_fill,
                lambda: bench.worker("production", pool="prefork", concurrency=2, base=BASE),
            ),
            DRAIN[2]: (
                rq_fill,
                lambda: _Process(
                    [
                        _bin("rq"),
                        "worker",
                        "--burst",
                        "-w",
                        "rq.worker.SimpleWorker",
                        "-u",
                        url,
                        "bench",
                    ],
                    workdir,
                    env,
                ),
            ),
            DRAIN[3]: (
                dram_fill,
                lambda: _Process(
                    [_bin("dramatiq"), "peerjobs", "-p", "1", "-t", "8"], workdir, env
                ),
            ),
            DRAIN[4]: (
                huey_fill,
                lambda: _Process(
                    [_bin("huey_consumer"), "peerjobs.huey", "-w", "2", "-k", "process", "-q"],
                    workdir,
                    env,
                ),
            ),
        }
        for variant in DRAIN if rep % 2 == 0 else tuple(reversed(DRAIN)):
            client.flushdb()
            fill, start = consumers[variant]
            fill()
            rate = drain_rate(
                client, n, start, lambda handle: handle.stop(), cpu=drain_cpu[variant]
            )
            drain[variant].append(rate)
            print(
                f"peers run {rep + 1}: drain {variant:42} {rate:9,.0f}/s "
                f"{drain_cpu[variant][-1]:7,.0f} µs CPU/task",
                flush=True,
            )
    client.flushdb()
    section = Section(
        "Peers",
        f"N = {n:,} jobs per publish and per drain, {runs} interleaved runs on the same "
        "throwaway Redis; tasks/s as median (min–max); ratios are the median (min–max) "
        "of per-run ratios to the first row of each half (Celery with `celeryredis.Task`, "
        "measured alongside). RQ drains with `SimpleWorker` (its default worker forks per "
        "job); Dramatiq with one process of 8 threads (its default thread count); Huey "
        "with 2 worker processes (`huey_consumer -w 2 -k process -q`). Consumer CPU/task: "
        "the CPU time of the consumer's processes (children included) over the drain, per "
        "task, in µs; on 2 cores, a consumer that keeps both busy cannot drain faster than "
        "2 s / its CPU per task.",
        ["what", "library / variant", "tasks/s", "× the Celery row", "consumer CPU/task (µs)"],
    )
    for kind, results in (("publish", publish), ("drain", drain)):
        names = list(results)
        base = results[names[0]]
        for name in names:
            values = results[name]
            cpu = spread(drain_cpu[name]) if kind == "drain" else ""
            section.rows.append([kind, name, spread(values), ratio_spread(values, base), cpu])
            section.data.append(
                {
                    "kind": kind,
                    "variant": name,
                    "median": median(values),
                    "runs": values,
                    "ratio": ratio(values, base),
                    "ratios": ratios(values, base),
                    **({"cpu_us_per_task": drain_cpu[name]} if kind == "drain" else {}),
                }
            )
    section.ratios["enqueue_many / RQ enqueue_many"] = ratios(
        publish[PUBLISH[1]], publish[PUBLISH[3]]
    )
    for celery_row, peer in ((DRAIN[0], DRAIN[3]), (DRAIN[0], DRAIN[4]), (DRAIN[1], DRAIN[4])):
        section.ratios[f"{celery_row} / {peer}"] = ratios(drain[celery_row], drain[peer])
    return section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        print(run(server.url_for(0), Path(tmp), opts.n, opts.runs).markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
