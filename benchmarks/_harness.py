"""Shared pieces of the benchmarks: the bench app, workers, medians, tables.

Every benchmark runs against a throwaway redis-server started by ``run_all.py`` (or by
the benchmark itself when run alone), never against a system Redis.
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from celeryredis.testing import WorkerProcess

#: The host module every Celery benchmark imports, configured by environment variables:
#: BENCH_URL, BENCH_CONFIG ("celery-defaults" or a preset name), BENCH_BASE (task base).
APP = """
import os

import celery
import redis

from celeryredis import RateLimitedTask, RetryTask, Task, UniqueTask, make_app

URL = os.environ["BENCH_URL"]
CONFIG = os.environ.get("BENCH_CONFIG", "production")
RESULTS = os.environ.get("BENCH_RESULTS") == "1"  # results stored in the broker's Redis
if CONFIG == "celery-defaults":
    app = celery.Celery("benchapp", broker=URL, backend=URL if RESULTS else None)
else:
    # BENCH_TRANSPORT / BENCH_PREFETCH (bench_transport.py, ab_transport.py) and
    # BENCH_RESERVE (ab_transport.py) override the preset's values.
    extra = {}
    if os.environ.get("BENCH_TRANSPORT"):
        extra["celeryredis_transport"] = os.environ["BENCH_TRANSPORT"]
    if os.environ.get("BENCH_PREFETCH"):
        extra["worker_prefetch_multiplier"] = int(os.environ["BENCH_PREFETCH"])
    if os.environ.get("BENCH_RESERVE"):  # ab_transport.py's "+r<seconds>" variants
        extra["celeryredis_reserve_seconds"] = float(os.environ["BENCH_RESERVE"])
    app = make_app("benchapp", broker_url=URL, result_backend=URL if RESULTS else None,
                   preset=CONFIG, **extra)
client = redis.Redis.from_url(URL)
BASES = {
    "plain celery.Task": celery.Task,
    "celeryredis.Task": Task,
    "celeryredis.RetryTask": RetryTask,
    "celeryredis.UniqueTask": UniqueTask,
    "celeryredis.RateLimitedTask": RateLimitedTask,
}
BASE = BASES[os.environ.get("BENCH_BASE", "plain celery.Task")]
OPTIONS = {"distributed_rate_limit": "1000000/s"} if BASE is RateLimitedTask else {}


@app.task(base=BASE, name="bench.noop", ignore_result=True, **OPTIONS)
def noop(i):
    client.incr("bench:done")


@app.task(name="bench.stamp", ignore_result=True)
def stamp(published_at):
    import time

    client.rpush("bench:latency", repr(time.time() - published_at))


@app.task(name="bench.add")
def add(x, y):
    return x + y
"""


#: A row whose runs spread wider than this (max / min) is flagged as bimodal.
BIMODAL = 1.5
MARK = "⚠ bimodal"
FOOTNOTE = (
    f"{MARK}: the runs of this row spread wider than max/min > {BIMODAL}, so its median "
    "hides two regimes: read the min–max, not the median."
)


@dataclass
class Section:
    """One benchmark's results: a Markdown table and its data.

    ``ratios`` holds per-run ratios (pairs measured in the same repetition) under stable
    keys, for the goal table of ``run_all.py``.
    """

    title: str
    description: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    ratios: dict[str, list[float]] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.description, ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if any(MARK in cell for row in self.rows for cell in row):
            lines.extend(["", FOOTNOTE])
        return "\n".join(lines) + "\n"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import celery  # noqa: PLC0415
    import kombu  # noqa: PLC0415

    import celeryredis  # noqa: PLC0415

    server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    version = next((w.split("=")[1] for w in server if w.startswith("v=")), "?")
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": f"{os.cpu_count()} cores, {cpu}",
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis-py": redis.__version__,
        "redis-server": version,
        "celeryredis": celeryredis.__version__,
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def bimodal(values: Sequence[float]) -> bool:
    """Whether the runs spread wider than ``BIMODAL`` (max / min)."""
    return len(values) > 1 and min(values) > 0 and max(values) / min(values) > BIMODAL


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """``median (min–max)``, flagged when bimodal; the one figure of a single run."""
    if len(values) == 1:
        return fmt.format(values[0])
    text = f"{fmt.format(median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"
    return f"{text} {MARK}" if bimodal(values) else text


def ratios(values: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per-run ratios: pairs measured in the same repetition."""
    return [v / b for v, b in zip(values, baseline, strict=True)]


def ratio(values: Sequence[float], baseline: Sequence[float]) -> float:
    """The median of per-run ratios (pairs measured in the same repetition)."""
    return statistics.median(ratios(values, baseline))


def ratio_spread(values: Sequence[float], baseline: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``median (min–max)`` of the per-run ratios, flagged when bimodal."""
    return spread(ratios(values, baseline), fmt)


class BenchApp:
    """The bench host module written into a directory and imported in this process."""

    def __init__(self, workdir: Path, url: str) -> None:
        self.workdir = workdir
        self.url = url
        (workdir / "benchapp.py").write_text(textwrap.dedent(APP))
        if str(workdir) not in sys.path:
            sys.path.insert(0, str(workdir))

    def load(
        self, config: str = "production", base: str = "plain celery.Task", *, results: bool = False
    ) -> Any:
        """A fresh import of the module under ``config`` and ``base``."""
        os.environ.update(self.env(config, base))
        os.environ["BENCH_RESULTS"] = "1" if results else "0"
        sys.modules.pop("benchapp", None)
        return importlib.import_module("benchapp")

    def env(self, config: str = "production", base: str = "plain celery.Task") -> dict[str, str]:
        return {
            "BENCH_URL": self.url,
            "BENCH_CONFIG": config,
            "BENCH_BASE": base,
            "BENCH_TRANSPORT": "",
            "BENCH_PREFETCH": "",
        }

    def worker(
        self,
        config: str,
        *,
        pool: str = "solo",
        concurrency: int = 1,
        base: str = "plain celery.Task",
        loglevel: str = "WARNING",
        extra_env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        return WorkerProcess(
            "benchapp",
            cwd=self.workdir,
            env={**self.env(config, base), **(extra_env or {})},
            pool=pool,
            concurrency=concurrency,
            loglevel=loglevel,
            extra_args=["--without-heartbeat"],
            log_path=self.workdir / "worker.log",
        )


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = True) -> float:
    """CPU seconds of ``pid`` (with its reaped and live children when ``children``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    total = ticks / TICK
    if children:
        total += (int(fields[13]) + int(fields[14])) / TICK
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        total += sum(cpu_seconds(int(kid)) for kid in kids)
    return total


def drain_rate(  # noqa: PLR0917 - each list is an optional extra reading
    client: redis.Redis,
    n: int,
    start: Callable[[], Any],
    stop: Callable[[Any], None],
    polls: list[int] | None = None,
    cpu: list[float] | None = None,
) -> float:
    """Tasks/s from the first completion seen to the last (start-up excluded).

    ``start()`` starts a consumer of ``n`` pre-published tasks, each of which does one
    ``INCR bench:done``; ``stop(handle)`` stops it. The number of ``GET`` polls this
    made is appended to ``polls``; the consumer's CPU time per task in µs over the same
    span (``handle.pid`` and its children, reaped ones included) to ``cpu``.
    """
    client.delete("bench:done")
    handle = start()
    count = 0
    try:
        deadline = time.monotonic() + 600
        first: tuple[float, int, float] | None = None
        while time.monotonic() < deadline:
            done = int(client.get("bench:done") or 0)
            count += 1
            now = time.monotonic()
            if done and first is None:
                first = (now, done, cpu_seconds(handle.pid) if cpu is not None else 0.0)
            if done >= n:
                assert first is not None
                if now == first[0]:
                    raise RuntimeError("all tasks finished before the first poll")
                if cpu is not None:
                    cpu.append((cpu_seconds(handle.pid) - first[2]) / (done - first[1]) * 1e6)
                return (done - first[1]) / (now - first[0])
            time.sleep(0.005)
        raise RuntimeError(f"drain of {n} tasks did not finish within 600 s")
    finally:
        stop(handle)
        if polls is not None:
            polls.append(count)
