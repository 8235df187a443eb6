"""Transport: celeryredis's reliable transport against stock kombu, side by side.

Drain: N pre-published no-op tasks (one ``INCR`` each, ``ignore_result``), one worker,
the ``production`` preset (acks late, prefetch 1) and the ``throughput`` preset (acks
early, prefetch 16) with only ``celeryredis_transport`` changed, solo and prefork -c 2;
the rate runs from the first completion seen to the last. Latency: publish-to-start of one
task at a time on a warm, idle solo worker. Configurations run interleaved in every
repetition; ratios are medians of per-run ratios.

Usage: python benchmarks/bench_transport.py [--n 5000] [--runs 3] [--samples 300]
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
from _harness import BenchApp, Section, drain_rate, median, ratio, ratio_spread, ratios, spread

TRANSPORTS = ("stock", "reliable")
POOLS = (("solo", 1), ("prefork", 2))
PLAIN = "plain celery.Task"
#: (preset, task base): ``production`` with plain ``celery.Task`` and with
#: ``celeryredis.Task`` (the task class ``make_app()`` gives by default); ``throughput``
#: with plain ``celery.Task``.
CONFIGS = (("production", PLAIN), ("production", "celeryredis.Task"), ("throughput", PLAIN))


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def _drain(bench: BenchApp, client: redis.Redis, n: int, runs: int) -> dict[tuple, list[float]]:
    rates: dict[tuple[str, str, str, str], list[float]] = {}
    for rep in range(runs):
        order = TRANSPORTS if rep % 2 == 0 else tuple(reversed(TRANSPORTS))
        for pool, concurrency in POOLS:
            for config, base in CONFIGS:
                for transport in order:
                    client.flushdb()
                    host = bench.load(config, base)
                    enqueue_many(host.noop, ((i,) for i in range(n)))
                    extra = {"BENCH_TRANSPORT": transport}

                    def start(
                        pool: str = pool,
                        concurrency: int = concurrency,
                        extra: dict = extra,
                        config: str = config,
                        base: str = base,
                    ) -> WorkerProcess:
                        return bench.worker(
                            config, pool=pool, concurrency=concurrency, base=base, extra_env=extra
                        )

                    rate = drain_rate(client, n, start, lambda w: w.stop())
                    rates.setdefault((pool, config, base, transport), []).append(rate)
                    print(
                        f"transport drain run {rep + 1}: {pool:8} {config:10} {base:18} "
                        f"{transport:9} {rate:8,.0f} tasks/s",
                        flush=True,
                    )
    return rates


def _latency(
    bench: BenchApp, client: redis.Redis, samples: int, runs: int, warmup: int = 20
) -> dict[str, dict[str, list[float]]]:
    found: dict[str, dict[str, list[float]]] = {t: {"p50": [], "p99": []} for t in TRANSPORTS}
    for rep in range(runs):
        for transport in TRANSPORTS if rep % 2 == 0 else tuple(reversed(TRANSPORTS)):
            client.flushdb()
            host = bench.load("production")
            worker = bench.worker(
                "production", pool="solo", extra_env={"BENCH_TRANSPORT": transport}
            )
            try:
                latencies = []
                for i in range(warmup + samples):
                    host.stamp.delay(time.time())
                    reply = client.blpop(["bench:latency"], timeout=60)
                    if reply is None:
                        raise RuntimeError(f"no task started in 60 s: {worker.log_text()[-2000:]}")
                    if i >= warmup:
                        latencies.append(float(reply[1]) * 1000)
            finally:
                worker.stop()
            p50, p99 = _quantile(latencies, 0.50), _quantile(latencies, 0.99)
            found[transport]["p50"].append(p50)
            found[transport]["p99"].append(p99)
            print(f"transport latency run {rep + 1}: {transport:9} p50 {p50:6.2f} ms", flush=True)
    return found


def run(url: str, workdir: Path, n: int = 5000, runs: int = 3, samples: int = 300) -> Section:
    bench = BenchApp(workdir, url)
    client = redis.Redis.from_url(url)
    rates = _drain(bench, client, n, runs)
    latency = _latency(bench, client, samples, runs)
    client.flushdb()
    section = Section(
        "Transport",
        f'celeryredis\'s reliable transport (`celeryredis_transport="reliable"`) against '
        f"stock kombu, everything else as the preset sets it. Drain: N = {n:,} "
        "pre-published no-op tasks, one worker (`--without-heartbeat`), under `production` "
        "(acks late, prefetch 1; with plain `celery.Task` and with `celeryredis.Task`, "
        "the default task class) and `throughput` (acks early, prefetch 16). Latency "
        "(`production`): publish-to-"
        f"start on a warm, idle solo worker, {samples} samples per run. {runs} interleaved "
        "runs; median (min–max); the ratio is the median (min–max) of reliable / stock "
        "in the same repetition.",
        ["measure", "pool", "preset", "task class", "stock", "reliable", "reliable / stock"],
    )
    for pool, concurrency in POOLS:
        label = f"{pool} -c {concurrency}" if pool == "prefork" else pool
        for config, base in CONFIGS:
            stock = rates[(pool, config, base, "stock")]
            reliable = rates[(pool, config, base, "reliable")]
            section.rows.append(
                [
                    "drain (tasks/s)",
                    label,
                    config,
                    base,
                    spread(stock),
                    spread(reliable),
                    ratio_spread(reliable, stock),
                ]
            )
            section.data.append(
                {
                    "measure": "drain",
                    "pool": label,
                    "preset": config,
                    "base": base,
                    "stock": stock,
                    "reliable": reliable,
                    "stock_median": median(stock),
                    "reliable_median": median(reliable),
                    "ratio": ratio(reliable, stock),
                    "ratios": ratios(reliable, stock),
                }
            )
            section.ratios[f"reliable / stock, {label}, {config}, {base}"] = ratios(reliable, stock)
    for q in ("p50", "p99"):
        stock, reliable = latency["stock"][q], latency["reliable"][q]
        section.rows.append(
            [
                f"latency {q} (ms)",
                "solo",
                "production",
                PLAIN,
                spread(stock, "{:.2f}"),
                spread(reliable, "{:.2f}"),
                ratio_spread(reliable, stock),
            ]
        )
        section.data.append({"measure": f"latency {q}", "stock_ms": stock, "reliable_ms": reliable})
    return section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=300)
    opts = parser.parse_args()
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        print(run(server.url_for(0), Path(tmp), opts.n, opts.runs, opts.samples).markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
