"""Paired-in-time A/B of two worker variants: both drain at once, each on its own Redis.

For comparing two versions of the code on a machine other jobs load (not part of
``make bench``): each repetition pre-publishes N no-op tasks (one ``INCR`` each) on two
throwaway redis-servers and starts both workers together, so both see the same load;
the rate of each runs from its first completion to its last. The two workers also
compete with each other, so the absolute rates are lower than a drain alone. A variant
is ``stock`` or ``reliable``, optionally ``@/path/to/src`` to run the worker on another
copy of the package (``git archive`` a commit's ``src`` there).

Usage: python benchmarks/ab_paired.py --a reliable@/tmp/old/src --b reliable
       [--n 1500] [--runs 6] [--pool prefork] [--config production] [--base celeryredis.Task]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

from celeryredis import enqueue_many
from celeryredis.testing import RedisServer, WorkerProcess

sys.path.insert(0, str(Path(__file__).parent))
from _harness import BenchApp


def _start(bench: BenchApp, opts: argparse.Namespace, variant: str) -> WorkerProcess:
    transport, _, src = variant.partition("@")
    extra = {"BENCH_TRANSPORT": transport}
    if src:
        extra["PYTHONPATH"] = src
    return bench.worker(
        opts.config,
        pool=opts.pool,
        concurrency=2 if opts.pool == "prefork" else 1,
        base=opts.base,
        extra_env=extra,
    )


def _rates(clients: list[redis.Redis], n: int) -> list[float]:
    first: list[tuple[float, int] | None] = [None] * len(clients)
    last: list[tuple[float, int] | None] = [None] * len(clients)
    deadline = time.monotonic() + 600
    while not all(last):
        if time.monotonic() > deadline:
            raise RuntimeError("a drain did not finish within 600 s")
        for i, client in enumerate(clients):
            if last[i] is not None:
                continue
            done = int(client.get("bench:done") or 0)
            now = time.monotonic()
            if done and first[i] is None:
                first[i] = (now, done)
            if done >= n:
                last[i] = (now, done)
        time.sleep(0.005)
    out = []
    for start, end in zip(first, last, strict=True):
        assert start is not None
        assert end is not None
        if end[0] == start[0]:
            raise RuntimeError("all tasks finished before the first poll")
        out.append((end[1] - start[1]) / (end[0] - start[0]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--a", required=True)
    parser.add_argument("--b", required=True)
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--config", default="production")
    parser.add_argument("--base", default="celeryredis.Task")
    opts = parser.parse_args()
    ratios: list[float] = []
    with (
        RedisServer() as server_a,
        RedisServer() as server_b,
        tempfile.TemporaryDirectory() as tmp_a,
        tempfile.TemporaryDirectory() as tmp_b,
    ):
        benches = [
            BenchApp(Path(tmp_a), server_a.url_for(0)),
            BenchApp(Path(tmp_b), server_b.url_for(0)),
        ]
        clients = [redis.Redis.from_url(bench.url) for bench in benches]
        for rep in range(opts.runs):
            for bench, client in zip(benches, clients, strict=True):
                client.flushdb()
                host = bench.load(opts.config, opts.base)
                enqueue_many(host.noop, ((i,) for i in range(opts.n)))
            workers = [
                _start(bench, opts, v) for bench, v in zip(benches, (opts.a, opts.b), strict=True)
            ]
            try:
                rate_a, rate_b = _rates(clients, opts.n)
            finally:
                for worker in workers:
                    worker.stop()
            ratios.append(rate_b / rate_a)
            print(
                f"run {rep + 1}: a {rate_a:7,.0f} tasks/s  b {rate_b:7,.0f} tasks/s  "
                f"b / a {ratios[-1]:.2f}",
                flush=True,
            )
        for client in clients:
            client.close()
    print(
        f"a={opts.a} b={opts.b} pool={opts.pool} preset={opts.config} base={opts.base} "
        f"n={opts.n}: b / a median {statistics.median(ratios):.2f} "
        f"({min(ratios):.2f}–{max(ratios):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
