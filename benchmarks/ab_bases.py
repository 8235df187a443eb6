"""A task base against plain ``celery.Task``, drained one after the other in pairs.

For measuring one base's overhead closely (not part of ``make bench``): each pair drains
N pre-published no-op tasks (one ``INCR`` each) with plain ``celery.Task``, then with
``--base`` (the order alternates pair by pair), on one throwaway redis-server under the
``production`` preset; the ratio of each pair is taken, so a slow spell of the machine
lands on both sides of one ratio rather than between them. ``--src`` runs the workers
on another copy of the package (``git archive`` a commit's ``src`` there) to compare two
versions of the code in the same way. Each drain also reports the worker's CPU time per
task (less moved than tasks/s by a busy machine, though not immune to it).

Usage: python benchmarks/ab_bases.py --base celeryredis.UniqueTask [--level WARNING]
       [--pairs 5] [--n 3000] [--pool solo] [--src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import redis

from celeryredis import enqueue_many
from celeryredis.testing import RedisServer, WorkerProcess

sys.path.insert(0, str(Path(__file__).parent))
from _harness import BenchApp, drain_rate

PLAIN = "plain celery.Task"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--level", default="WARNING")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--pool", default="solo")
    parser.add_argument("--src", default="")
    opts = parser.parse_args()
    extra = {"PYTHONPATH": opts.src} if opts.src else {}
    ratios: list[float] = []
    cpu: dict[str, list[float]] = {PLAIN: [], opts.base: []}
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
        bench = BenchApp(Path(tmp), server.url)
        client = redis.Redis.from_url(server.url)
        for pair in range(opts.pairs):
            rates: dict[str, float] = {}
            for base in (PLAIN, opts.base) if pair % 2 == 0 else (opts.base, PLAIN):
                client.flushdb()
                host = bench.load("production", base)
                enqueue_many(host.noop, ((i,) for i in range(opts.n)))

                def start(base: str = base) -> WorkerProcess:
                    return bench.worker(
                        "production",
                        pool=opts.pool,
                        concurrency=2 if opts.pool == "prefork" else 1,
                        base=base,
                        loglevel=opts.level,
                        extra_env=extra,
                    )

                rates[base] = drain_rate(client, opts.n, start, lambda w: w.stop(), cpu=cpu[base])
            ratios.append(rates[opts.base] / rates[PLAIN])
            print(
                f"pair {pair + 1}: plain {rates[PLAIN]:8,.0f}/s {cpu[PLAIN][-1]:5,.0f} µs CPU/task"
                f"  {opts.base} {rates[opts.base]:8,.0f}/s {cpu[opts.base][-1]:5,.0f} µs CPU/task"
                f"  ratio {ratios[-1]:.3f}",
                flush=True,
            )
    print(
        f"{opts.base} / plain at {opts.level}, {opts.pool}, {opts.pairs} pairs of "
        f"{opts.n:,} tasks{' (src ' + opts.src + ')' if opts.src else ''}: "
        f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}); worker CPU "
        f"per task {statistics.median(cpu[PLAIN]):,.0f} against "
        f"{statistics.median(cpu[opts.base]):,.0f} µs (medians)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
