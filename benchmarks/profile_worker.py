"""Where a draining worker's time goes: a py-spy profile split by package.

For explaining a benchmark figure (not part of ``make bench``): N no-op tasks (one
``INCR`` each) are pre-published on a throwaway redis-server under the ``production``
preset; once a worker has run the first 2,000, ``py-spy record`` samples it (and its pool
children on prefork) for ``--seconds``. Each sample is sorted by its innermost frame:

- **waiting**, split into the task body waiting for its ``INCR`` reply and the rest (the
  event loop waiting for a fetch's reply or for a child's result);
- **running**, by the package of the running frame: Celery (with billiard), kombu (with
  vine), redis-py, celeryredis, json, logging.

Samples are wall-clock (``--nonblocking``, idle ones included), so shares are of the
time a task takes, not of CPU. Needs ``py-spy`` (the ``bench`` dependency group) and
permission to ptrace the worker (root, or ``kernel.yama.ptrace_scope=0``).

Usage: python benchmarks/profile_worker.py [--base celeryredis.Task] [--level WARNING]
       [--pool solo] [--seconds 8] [--n 40000] [--raw out.txt]
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from celeryredis import enqueue_many
from celeryredis.testing import RedisServer

sys.path.insert(0, str(Path(__file__).parent))
from _harness import BenchApp

FRAME = re.compile(r"^(.*?) \(([^)]*?):\d+\)$")
PACKAGES = (
    ("celeryredis/", "celeryredis"),
    ("celery/", "celery"),
    ("billiard/", "celery"),
    ("kombu/", "kombu"),
    ("vine/", "kombu"),
    ("redis/", "redis-py"),
    ("json/", "json"),
    ("logging/", "logging"),
)


def _package(path: str) -> str:
    path = path.rsplit("site-packages/", maxsplit=1)[-1].rsplit("src/", maxsplit=1)[-1]
    for prefix, name in PACKAGES:
        if path.startswith(prefix):
            return name
    return "other"


def _waiting(function: str) -> bool:
    return function.endswith((".poll", ".select", "_read_from_socket", ".recv", ".wait"))


def split(raw: Path) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """(samples, waiting by who waits, running by package) from py-spy's raw output."""
    total = 0
    waiting: collections.Counter[str] = collections.Counter()
    running: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [m.groups() for m in map(FRAME.match, stack.split(";")) if m]
        if not frames:
            continue
        total += int(count)
        function, path = frames[-1]
        if _waiting(function):
            body = any("benchapp" in p for _, p in frames)
            waiting["the task body's INCR" if body else "the loop (fetch replies, results)"] += int(
                count
            )
        else:
            running[_package(path)] += int(count)
    return total, waiting, running


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="celeryredis.Task")
    parser.add_argument("--level", default="WARNING")
    parser.add_argument("--pool", default="solo")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--n", type=int, default=40000)
    parser.add_argument("--raw", default="")
    opts = parser.parse_args()
    spy = str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
        raw = Path(opts.raw or Path(tmp) / "raw.txt")
        bench = BenchApp(Path(tmp), server.url)
        client = redis.Redis.from_url(server.url)
        host = bench.load("production", opts.base)
        enqueue_many(host.noop, ((i,) for i in range(opts.n)))
        worker = bench.worker(
            "production",
            pool=opts.pool,
            concurrency=2 if opts.pool == "prefork" else 1,
            base=opts.base,
            loglevel=opts.level,
        )
        try:
            deadline = time.monotonic() + 120
            while int(client.get("bench:done") or 0) < 2000:
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker did not run 2,000 tasks within 120 s")
                time.sleep(0.05)
            before = int(client.get("bench:done") or 0)
            argv = [spy, "record", "-r", "250", "--nonblocking", "-d", str(opts.seconds)]
            argv += ["-f", "raw", "-o", str(raw), "-p", str(worker.pid)]
            if opts.pool == "prefork":
                argv.append("--subprocesses")
            subprocess.run(argv, check=True, capture_output=True)
            tasks = int(client.get("bench:done") or 0) - before
        finally:
            worker.stop()
        total, waiting, running = split(raw)
    busy = sum(running.values())
    print(
        f"{opts.base}, {opts.pool}, worker at {opts.level}: {tasks:,} tasks in "
        f"{opts.seconds} s under py-spy, {total:,} samples"
    )
    print(f"waiting {100 * (total - busy) / total:.0f} % of samples:")
    for who, count in waiting.most_common():
        print(f"  {who:36} {100 * count / total:5.1f} %")
    print(f"running {100 * busy / total:.0f} % of samples, by package (share of running):")
    for name, count in running.most_common():
        print(f"  {name:36} {100 * count / busy:5.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
