"""A/B drain of one configuration, stock against reliable, with CPU time per task.

For A/B runs while working on the transport (not part of ``make bench``): N
pre-published no-op tasks (one ``INCR`` each) drained by one worker under one preset and
pool, for each variant in turn, the order rotating every repetition. A variant is
``stock`` or ``reliable``, optionally with ``+p<N>`` (``worker_prefetch_multiplier``) or
``+r<seconds>`` (``celeryredis_reserve_seconds``; ``+r0``: no reserve) and
``@/path/to/src`` to run the worker on another copy of the package (``git archive`` a
commit's ``src`` there to compare two versions of the code side by side). Besides the
drain rate (first completion to last) it reads the CPU time the worker (main process and
pool children, reaped ones included), its main process alone and redis-server used over
the same span, per task: on a machine other jobs load, CPU per task moves less than
rates do.

Usage: python benchmarks/ab_transport.py [--n 1500] [--runs 5] [--pool prefork]
       [--config production] [--base celeryredis.Task] [--variants stock,reliable]
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
from celeryredis.testing import RedisServer

sys.path.insert(0, str(Path(__file__).parent))
from _harness import BenchApp, cpu_seconds


def _cpu(worker_pid: int, server_pid: int) -> tuple[float, float, float]:
    """CPU seconds of the worker (with its pool children), its main process, redis-server."""
    return cpu_seconds(worker_pid), cpu_seconds(worker_pid, children=False), cpu_seconds(server_pid)


def _drain(
    bench: BenchApp,
    client: redis.Redis,
    server_pid: int,
    opts: argparse.Namespace,
    *,
    extra: dict[str, str],
    variant: str,
) -> tuple[tuple[float, int, float, float, float], tuple[float, int, float, float, float]]:
    """(time, tasks done, worker, main process and redis CPU s) at first and last completion."""
    worker = bench.worker(
        opts.config,
        pool=opts.pool,
        concurrency=2 if opts.pool == "prefork" else 1,
        base=opts.base,
        extra_env=extra,
    )
    try:
        first: tuple[float, int, float, float, float] | None = None
        deadline = time.monotonic() + 600
        while True:
            done = int(client.get("bench:done") or 0)
            now = time.monotonic()
            if done and first is None:
                first = (now, done, *_cpu(worker.pid, server_pid))
            if done >= opts.n or now > deadline:
                break
            time.sleep(0.005)
        last = (now, done, *_cpu(worker.pid, server_pid))
    finally:
        worker.stop()
    if first is None or done < opts.n or last[1] == first[1]:
        raise RuntimeError(f"{variant}: the drain did not finish")
    return first, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--config", default="production")
    parser.add_argument("--base", default="celeryredis.Task")
    parser.add_argument("--variants", default="stock,reliable")
    opts = parser.parse_args()
    variants = opts.variants.split(",")
    rates: dict[str, list[float]] = {v: [] for v in variants}
    worker_cpu: dict[str, list[float]] = {v: [] for v in variants}
    main_cpu: dict[str, list[float]] = {v: [] for v in variants}
    redis_cpu: dict[str, list[float]] = {v: [] for v in variants}
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        url = server.url_for(0)
        bench = BenchApp(Path(tmp), url)
        client = redis.Redis.from_url(url)
        for rep in range(opts.runs):
            shift = rep % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                spec, _, src = variant.partition("@")
                transport, *options = spec.split("+")
                client.flushdb()
                host = bench.load(opts.config, opts.base)
                enqueue_many(host.noop, ((i,) for i in range(opts.n)))
                extra = {"BENCH_TRANSPORT": transport}
                for option in options:  # "p2": prefetch multiplier 2; "r0": no reserve
                    name = {"p": "BENCH_PREFETCH", "r": "BENCH_RESERVE"}[option[0]]
                    extra[name] = option[1:]
                if src:
                    extra["PYTHONPATH"] = src
                first, last = _drain(bench, client, server.pid, opts, extra=extra, variant=variant)
                tasks = last[1] - first[1]
                rates[variant].append(tasks / (last[0] - first[0]))
                worker_cpu[variant].append((last[2] - first[2]) / tasks * 1e6)
                main_cpu[variant].append((last[3] - first[3]) / tasks * 1e6)
                redis_cpu[variant].append((last[4] - first[4]) / tasks * 1e6)
                print(
                    f"run {rep + 1} {variant:24} {rates[variant][-1]:7,.0f} tasks/s  "
                    f"worker CPU {worker_cpu[variant][-1]:6,.0f} µs/task "
                    f"(main process {main_cpu[variant][-1]:6,.0f})  "
                    f"redis CPU {redis_cpu[variant][-1]:5,.0f} µs/task",
                    flush=True,
                )
        client.close()
    print(f"pool={opts.pool} preset={opts.config} base={opts.base} n={opts.n} runs={opts.runs}")
    baseline = rates[variants[0]]
    for variant in variants:
        rate = rates[variant]
        per_run = [a / b for a, b in zip(rate, baseline, strict=True)]
        print(
            f"{variant:24} {statistics.median(rate):7,.0f} ({min(rate):,.0f}–{max(rate):,.0f}) "
            f"tasks/s; / {variants[0]} per run: median {statistics.median(per_run):.2f} "
            f"({min(per_run):.2f}–{max(per_run):.2f}) [{' '.join(f'{r:.2f}' for r in per_run)}]; "
            f"worker CPU {statistics.median(worker_cpu[variant]):,.0f} µs/task "
            f"(main process {statistics.median(main_cpu[variant]):,.0f}), "
            f"redis CPU {statistics.median(redis_cpu[variant]):,.0f} µs/task (medians)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
