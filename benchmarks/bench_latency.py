"""Latency: publish-to-start of a single task on a warm, idle worker, defaults vs production.

The publisher stamps ``time.time()`` into the call; the task pushes the difference to
its start into a list the publisher waits on with ``BLPOP`` (no polling). One task at a
time, after warm-up calls; a solo worker on the same machine, so both clocks are one.

Usage: python benchmarks/bench_latency.py [--samples 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

from celeryredis.testing import RedisServer

sys.path.insert(0, str(Path(__file__).parent))
from _harness import BenchApp, Section, spread

CONFIGS = ("celery-defaults", "production")


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def run(url: str, workdir: Path, samples: int = 300, runs: int = 3, warmup: int = 20) -> Section:
    bench = BenchApp(workdir, url)
    client = redis.Redis.from_url(url)
    found: dict[str, dict[str, list[float]]] = {c: {"p50": [], "p99": []} for c in CONFIGS}
    for rep in range(runs):
        for config in CONFIGS if rep % 2 == 0 else tuple(reversed(CONFIGS)):
            client.flushdb()
            host = bench.load(config)
            worker = bench.worker(config, pool="solo")
            try:
                latencies = []
                for i in range(warmup + samples):
                    host.stamp.delay(time.time())
                    # The first call also waits for the worker to start (its "ready" line
                    # is not logged at WARNING).
                    reply = client.blpop(["bench:latency"], timeout=60)
                    if reply is None:
                        raise RuntimeError(
                            f"no task started within 60 s: {worker.log_text()[-2000:]}"
                        )
                    if i >= warmup:
                        latencies.append(float(reply[1]) * 1000)
            finally:
                worker.stop()
            p50, p99 = _quantile(latencies, 0.50), _quantile(latencies, 0.99)
            found[config]["p50"].append(p50)
            found[config]["p99"].append(p99)
            print(
                f"latency run {rep + 1}: {config:16} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms",
                flush=True,
            )
    client.flushdb()
    section = Section(
        "Latency",
        f"Publish-to-start of one task at a time on a warm, idle solo worker: {samples} "
        f"samples after {warmup} warm-up calls, {runs} interleaved runs; each figure is the "
        "median over runs of that run's percentile (min–max).",
        ["configuration", "p50 (ms)", "p99 (ms)"],
    )
    for config in CONFIGS:
        p50s, p99s = found[config]["p50"], found[config]["p99"]
        section.rows.append(
            [
                config,
                spread(p50s, "{:.2f}"),
                spread(p99s, "{:.2f}"),
            ]
        )
        section.data.append({"config": config, "p50_ms": p50s, "p99_ms": p99s})
    return section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        print(run(server.url_for(0), Path(tmp), opts.samples, opts.runs).markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
