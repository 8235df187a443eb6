"""Overhead of the task bases: plain ``celery.Task`` vs ``Task``, ``RetryTask``,
``UniqueTask`` and ``RateLimitedTask`` (a limit far above the load).

The same no-op task (one ``INCR``) is pre-published N times and drained by one solo
worker under the ``production`` preset; the rate runs from the first completion to the
last (start-up excluded). Variants run interleaved in every repetition; each ratio is
the median of per-run ratios to plain ``celery.Task``. Redis commands per task are
counted with ``INFO commandstats`` over the drain (the benchmark's own polling
excluded; commands run inside Lua count too); each ``EVALSHA`` or ``EVAL`` is one round trip
the worker waits for, except ``UniqueTask``'s release (sent without waiting for its reply).

Usage: python benchmarks/bench_task_overhead.py [--n 3000] [--runs 3] [--loglevels WARNING,INFO]
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

VARIANTS = (
    "plain celery.Task",
    "celeryredis.Task",
    "celeryredis.RetryTask",
    "celeryredis.UniqueTask",
    "celeryredis.RateLimitedTask",
)


def _calls(client: redis.Redis) -> tuple[int, int]:
    """All commands so far (those run inside Lua included), and EVALSHA/EVAL calls."""
    stats = client.info("commandstats")
    total = sum(int(v["calls"]) for v in stats.values())
    scripts = sum(
        int(stats.get(k, {}).get("calls", 0)) for k in ("cmdstat_evalsha", "cmdstat_eval")
    )
    return total, scripts


def run(
    url: str, workdir: Path, n: int = 3000, runs: int = 3, loglevels: str = "WARNING,INFO"
) -> Section:
    bench = BenchApp(workdir, url)
    client = redis.Redis.from_url(url)
    rates: dict[tuple[str, str], list[float]] = {}
    commands: dict[tuple[str, str], list[float]] = {}
    scripts: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    for level in loglevels.split(","):
        for rep in range(runs):
            for variant in VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS)):
                client.flushdb()
                host = bench.load("production", variant)
                enqueue_many(host.noop, ((i,) for i in range(n)))
                client.config_resetstat()

                def start(variant: str = variant, level: str = level) -> WorkerProcess:
                    return bench.worker("production", base=variant, loglevel=level)

                polled: list[int] = []
                key = (level, variant)
                rate = drain_rate(
                    client, n, start, lambda w: w.stop(), polled, cpu.setdefault(key, [])
                )
                total, lua = _calls(client)
                rates.setdefault(key, []).append(rate)
                polls = polled[0] + 2  # the benchmark's own DEL, GETs and INFO
                commands.setdefault(key, []).append((total - polls) / n)
                scripts.setdefault(key, []).append(lua / n)
                print(
                    f"overhead {level:8} run {rep + 1}: {variant:28} {rate:8,.0f} tasks/s "
                    f"{(total - polls) / n:5.2f} commands/task {lua / n:4.2f} EVALSHA/task "
                    f"{cpu[key][-1]:6,.0f} µs CPU/task",
                    flush=True,
                )
    client.flushdb()
    section = Section(
        "Task base overhead",
        f"N = {n:,} no-op tasks (one `INCR` each), one solo worker, production preset, "
        f"{runs} interleaved runs per log level; tasks/s as median (min–max); ratio = "
        "median (min–max) of per-run ratios to plain `celery.Task`; Redis commands per task over "
        "the drain (commands inside Lua included); EVALSHA/task counts EVALSHA and EVAL, each "
        "one round trip the worker waits for except UniqueTask's release (an EVAL sent without "
        "waiting for its reply); worker CPU/task: the worker process's CPU time over the "
        "drain, per task, in µs (what the base costs, less moved by a busy machine than "
        "tasks/s).",
        [
            "worker log level",
            "task base",
            "tasks/s",
            "× plain",
            "Redis commands/task",
            "EVALSHA/task",
            "worker CPU/task (µs)",
        ],
    )
    for level in loglevels.split(","):
        base = rates[(level, VARIANTS[0])]
        for variant in VARIANTS:
            key = (level, variant)
            section.rows.append(
                [
                    level,
                    variant,
                    spread(rates[key]),
                    ratio_spread(rates[key], base, "{:.3f}"),
                    spread(commands[key], "{:.2f}"),
                    spread(scripts[key], "{:.2f}"),
                    spread(cpu[key]),
                ]
            )
            section.data.append(
                {
                    "loglevel": level,
                    "base": variant,
                    "median": median(rates[key]),
                    "runs": rates[key],
                    "ratio": ratio(rates[key], base),
                    "ratios": ratios(rates[key], base),
                    "commands_per_task": median(commands[key]),
                    "evalsha_per_task": median(scripts[key]),
                    "cpu_us_per_task": cpu[key],
                }
            )
            section.ratios[f"{variant} / plain at {level}"] = ratios(rates[key], base)
    return section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loglevels", default="WARNING,INFO")
    opts = parser.parse_args()
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        print(run(server.url_for(0), Path(tmp), opts.n, opts.runs, opts.loglevels).markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
