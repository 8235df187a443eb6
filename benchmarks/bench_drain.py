"""Drain: one worker consuming N pre-published no-op tasks, Celery defaults vs each preset.

Each task does one ``INCR`` so completion is visible; the rate runs from the first
completion seen to the last (worker start-up excluded). Tasks are published with
``enqueue_many`` before the worker starts. Configurations run interleaved in every
repetition; ratios to Celery's defaults are medians of per-run ratios.

Usage: python benchmarks/bench_drain.py [--n 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import redis

from celeryredis import enqueue_many
from celeryredis.testing import RedisServer, WorkerProcess

sys.path.insert(0, str(Path(__file__).parent))
from _harness import BenchApp, Section, drain_rate, median, ratio, ratio_spread, ratios, spread

PLAIN = "plain celery.Task"
#: (configuration, task base): the presets with plain ``celery.Task``, and ``production``
#: with ``celeryredis.Task`` too, the task class a user of ``make_app()`` gets by default.
CONFIGS = (
    ("celery-defaults", PLAIN),
    ("production", PLAIN),
    ("production", "celeryredis.Task"),
    ("development", PLAIN),
    ("throughput", PLAIN),
    ("testing", PLAIN),
)
POOLS = (("solo", 1), ("prefork", 2))


def run(url: str, workdir: Path, n: int = 5000, runs: int = 3) -> Section:
    bench = BenchApp(workdir, url)
    client = redis.Redis.from_url(url)
    rates: dict[tuple[str, str, str], list[float]] = {}
    for rep in range(runs):
        order = CONFIGS if rep % 2 == 0 else tuple(reversed(CONFIGS))
        for pool, concurrency in POOLS:
            for config, base in order:
                client.flushdb()
                host = bench.load(config, base)
                enqueue_many(host.noop, ((i,) for i in range(n)))

                def start(
                    config: str = config,
                    pool: str = pool,
                    concurrency: int = concurrency,
                    base: str = base,
                ) -> WorkerProcess:
                    return bench.worker(config, pool=pool, concurrency=concurrency, base=base)

                rate = drain_rate(client, n, start, lambda w: w.stop())
                rates.setdefault((pool, config, base), []).append(rate)
                print(
                    f"drain run {rep + 1}: {pool:8} {config:16} {base:18} {rate:8,.0f} tasks/s",
                    flush=True,
                )
    client.flushdb()
    section = Section(
        "Drain",
        f"N = {n:,} pre-published no-op tasks (`ignore_result=True`, one `INCR` each), one "
        "worker (`--without-heartbeat`, log level WARNING); Celery defaults = "
        f"`Celery(broker=url)` with nothing else set. {runs} interleaved runs; tasks/s as "
        "median (min–max); the ratio is the median (min–max) of per-run ratios to "
        "Celery's defaults on the same pool.",
        ["pool", "configuration", "task class", "tasks/s", "× Celery defaults"],
    )
    for pool, concurrency in POOLS:
        defaults = rates[(pool, *CONFIGS[0])]
        label = f"{pool} -c {concurrency}" if pool == "prefork" else pool
        for config, base in CONFIGS:
            values = rates[(pool, config, base)]
            section.rows.append(
                [label, config, base, spread(values), ratio_spread(values, defaults)]
            )
            section.data.append(
                {
                    "pool": label,
                    "config": config,
                    "base": base,
                    "median": median(values),
                    "runs": values,
                    "ratio_to_defaults": ratio(values, defaults),
                    "ratios_to_defaults": ratios(values, defaults),
                }
            )
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
