"""Per-task overhead of the task bases: plain celery.Task vs celeryredis Task vs RetryTask.

The same no-op task (one INCR, so completion can be observed) is pre-published N
times, then drained by one ``-P solo`` worker subprocess; the drain rate runs from
the first completion to the last (worker start-up excluded). Variants run
interleaved in every repetition; each figure is the median over repetitions, and
each ratio is the median of the per-repetition ratios to plain ``celery.Task``.

Usage: python benchmarks/bench_task_overhead.py [--n 3000] [--runs 3]
Writes benchmarks/results/task_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import redis

import celeryredis
from celeryredis.testing import RedisServer, WorkerProcess

APP = """
import os
import celery
import redis
from celeryredis import RateLimitedTask, RetryTask, Task, UniqueTask, make_app

URL = os.environ["BENCH_URL"]
app = make_app("benchapp", broker_url=URL, result_backend=None, preset="production")
client = redis.Redis.from_url(URL)
BASES = {
    "plain celery.Task": celery.Task,
    "celeryredis.Task": Task,
    "celeryredis.RetryTask": RetryTask,
    "celeryredis.UniqueTask": UniqueTask,
    "celeryredis.RateLimitedTask": RateLimitedTask,
}
BASE = BASES[os.environ["BENCH_BASE"]]
OPTIONS = {"distributed_rate_limit": "1000000/s"} if BASE is RateLimitedTask else {}


@app.task(base=BASE, name="bench.noop", ignore_result=True, **OPTIONS)
def noop(i):
    client.incr("bench:done")
"""

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
    keys = ("cmdstat_evalsha", "cmdstat_eval")
    scripts = sum(int(stats.get(k, {}).get("calls", 0)) for k in keys)
    return total, scripts


def drain(url: str, workdir: Path, base: str, n: int, loglevel: str) -> tuple[float, float, float]:
    """Drain rate (tasks/s), Redis commands and script calls per task during the drain."""
    env = {"BENCH_URL": url, "BENCH_BASE": base}
    client = redis.Redis.from_url(url)
    client.flushdb()
    sys.modules.pop("benchapp", None)
    os.environ.update(env)
    benchapp: Any = importlib.import_module("benchapp")

    for i in range(n):
        benchapp.noop.delay(i)
    client.config_resetstat()
    worker = WorkerProcess(
        "benchapp",
        cwd=workdir,
        env=env,
        pool="solo",
        loglevel=loglevel,
        extra_args=["--without-heartbeat"],
        log_path=workdir / "worker.log",
    )
    try:
        deadline = time.monotonic() + 300
        first = None
        polls = 0
        while time.monotonic() < deadline:
            done = int(client.get("bench:done") or 0)
            polls += 1
            now = time.monotonic()
            if done and first is None:
                first = (now, done)
            if done >= n:
                assert first is not None
                # Commands per task over the whole drain (the INCR poll loop excluded).
                total, scripts = _calls(client)
                return (done - first[1]) / (now - first[0]), (total - polls) / n, scripts / n
            time.sleep(0.005)
        raise RuntimeError(f"drain did not finish: {worker.log_text()[-2000:]}")
    finally:
        worker.stop()


def main() -> int:
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so the redis-server and worker we
    # started are stopped by their context managers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loglevels", default="WARNING,INFO")
    opts = parser.parse_args()
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    rates: dict[str, dict[str, list[float]]] = {}
    commands: dict[str, dict[str, list[float]]] = {}
    scripts: dict[str, dict[str, list[float]]] = {}
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "benchapp.py").write_text(textwrap.dedent(APP))
        sys.path.insert(0, str(workdir))
        for level in opts.loglevels.split(","):
            rates[level] = {v: [] for v in VARIANTS}
            commands[level] = {v: [] for v in VARIANTS}
            scripts[level] = {v: [] for v in VARIANTS}
            for run in range(opts.runs):
                order = VARIANTS if run % 2 == 0 else tuple(reversed(VARIANTS))
                for variant in order:
                    rate, per_task, lua = drain(server.url_for(1), workdir, variant, opts.n, level)
                    rates[level][variant].append(rate)
                    commands[level][variant].append(per_task)
                    scripts[level][variant].append(lua)
                    print(
                        f"{level:8} run {run + 1}: {variant:28} {rate:8.0f} tasks/s "
                        f"{per_task:5.2f} Redis commands/task, {lua:4.2f} EVALSHA/task",
                        flush=True,
                    )
    lines = [
        "# Task base overhead (drain rate, one solo worker)",
        "",
        f"N={opts.n} no-op tasks (each does one INCR), {opts.runs} interleaved runs, median; "
        "ratio = median of per-run ratios to plain celery.Task; Redis commands per task "
        "counted with INFO commandstats over the drain (the benchmark's own polling "
        "excluded; commands run inside Lua count too); each EVALSHA is one round trip. "
        f"celeryredis {celeryredis.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, `python benchmarks/bench_task_overhead.py`.",
        "",
        "| worker log level | task base | tasks/s (median) | runs | ratio to plain "
        "| Redis commands/task | EVALSHA (round trips)/task | extra round trips vs plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {"n": opts.n, "runs": opts.runs, "results": []}
    for level, by_variant in rates.items():
        plain = by_variant[VARIANTS[0]]
        for variant, values in by_variant.items():
            ratio = statistics.median(v / p for v, p in zip(values, plain, strict=True))
            med = statistics.median(values)
            cmds = statistics.median(commands[level][variant])
            lua = statistics.median(scripts[level][variant])
            plain_lua = statistics.median(scripts[level][VARIANTS[0]])
            runs = ", ".join(f"{v:.0f}" for v in values)
            lines.append(
                f"| {level} | {variant} | {med:.0f} | {runs} | {ratio:.3f} | {cmds:.2f} "
                f"| {lua:.2f} | {lua - plain_lua:+.2f} |"
            )
            summary["results"].append(
                {
                    "loglevel": level,
                    "base": variant,
                    "median": med,
                    "runs": values,
                    "ratio": ratio,
                    "commands_per_task": cmds,
                    "evalsha_per_task": lua,
                }
            )
    table = "\n".join(lines) + "\n"
    (out_dir / "task_overhead.md").write_text(table)
    (out_dir / "task_overhead.json").write_text(json.dumps(summary, indent=2))
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
