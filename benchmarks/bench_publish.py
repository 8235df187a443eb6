"""Publish: a ``.delay()`` loop vs ``enqueue_many`` vs the raw limit, side by side.

The raw limit is a redis-py pipeline of ``LPUSH`` of the very message bytes
``enqueue_many`` published, in chunks of the same size: what Redis and redis-py can take
with no Celery or kombu work at all. Variants run interleaved in every repetition;
ratios are medians of per-repetition ratios.

Usage: python benchmarks/bench_publish.py [--n 20000] [--runs 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from celeryredis import enqueue_many
from celeryredis.testing import RedisServer

sys.path.insert(0, str(Path(__file__).parent))
from _harness import BenchApp, Section, median, ratio, ratio_spread, ratios, spread

VARIANTS = (
    "`.delay()` loop (results on)",
    "`.apply_async(ignore_result=True)` loop",
    "`enqueue_many` (results on)",
    "raw limit: redis-py pipeline of LPUSH, same bytes",
)


def _timed(client: redis.Redis, publish: Any, n: int) -> float:
    client.flushdb()
    started = time.perf_counter()
    publish()
    elapsed = time.perf_counter() - started
    if client.llen("celery") != n and client.llen("raw") != n:
        raise RuntimeError("the publish did not leave n messages in the queue")
    return n / elapsed


def run(url: str, workdir: Path, n: int = 20_000, runs: int = 5, chunk: int = 1000) -> Section:
    bench = BenchApp(workdir, url)
    host = bench.load("production", results=True)
    client = redis.Redis.from_url(url)
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    messages: list[bytes] = []

    def delay_loop() -> None:
        for i in range(n):
            host.add.delay(i, i)

    def ignore_loop() -> None:
        for i in range(n):
            host.add.apply_async((i, i), ignore_result=True)

    def bulk() -> None:
        enqueue_many(host.add, ((i, i) for i in range(n)), chunk_size=chunk)

    def raw() -> None:
        for start in range(0, n, chunk):
            pipe = client.pipeline(transaction=False)
            for message in messages[start : start + chunk]:
                pipe.lpush("raw", message)
            pipe.execute()

    host.add.delay(0, 0)  # connect and declare outside the timing
    for rep in range(runs):
        order = list(enumerate(VARIANTS))
        if rep % 2:
            order = order[:3][::-1] + order[3:]  # alternate order; raw needs bulk's bytes
        for _, variant in order:
            publish = {0: delay_loop, 1: ignore_loop, 2: bulk, 3: raw}[VARIANTS.index(variant)]
            rate = _timed(client, publish, n)
            if variant == VARIANTS[2]:
                messages = list(reversed(client.lrange("celery", 0, -1)))
            rates[variant].append(rate)
            print(f"publish run {rep + 1}: {variant:52} {rate:9,.0f} tasks/s", flush=True)
    client.flushdb()
    base = rates[VARIANTS[0]]
    raw_rates = rates[VARIANTS[3]]
    section = Section(
        "Publish",
        f"N = {n:,} tasks of `add(x, y)`, production preset, results stored in Redis; "
        f"{runs} interleaved runs; tasks/s as median (min–max); ratios are medians of "
        "per-run ratios (min–max). `enqueue_many` sends one MULTI/EXEC per 1,000 messages and "
        "subscribes to no result at publish; the `.delay()` loop subscribes to each.",
        ["variant", "tasks/s", "× `.delay()` loop", "share of the raw limit"],
    )
    for variant in VARIANTS:
        values = rates[variant]
        section.rows.append(
            [
                variant,
                spread(values),
                ratio_spread(values, base),
                ratio_spread(values, raw_rates),
            ]
        )
        section.data.append(
            {
                "variant": variant,
                "median": median(values),
                "runs": values,
                "ratio_to_delay": ratio(values, base),
                "ratio_to_raw": ratio(values, raw_rates),
            }
        )
    section.ratios["enqueue_many / delay"] = ratios(rates[VARIANTS[2]], base)
    return section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        print(run(server.url_for(0), Path(tmp), opts.n, opts.runs).markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
