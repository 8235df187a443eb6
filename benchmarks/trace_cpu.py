"""CPU per task run through Celery's tracer, by task base and log level (no worker loop).

For seeing what a base and its log records cost in the process that runs the task (not
part of ``make bench``): Celery's own tracer (``celery.app.trace.build_tracer``, as the
worker builds it) runs the bench's no-op task (one ``INCR`` on a throwaway
redis-server) N times with Celery's worker logging set up at ``--level`` into a log
file, 5 repetitions; the figure is the least process CPU time per task (waiting for
Redis is not CPU time). Each base runs in a process of its own.

Usage: python benchmarks/trace_cpu.py [--n 3000] [--levels INFO,WARNING]
       [--bases "plain celery.Task,celeryredis.Task"]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from celeryredis.testing import RedisServer

sys.path.insert(0, str(Path(__file__).parent))
from _harness import BenchApp

BASES = "plain celery.Task,celeryredis.Task,celeryredis.RetryTask,celeryredis.UniqueTask"


def _one(base: str, level: str, n: int) -> None:
    from celery.app.trace import build_tracer  # noqa: PLC0415 - in the child only

    with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
        host = BenchApp(Path(tmp), server.url).load("production", base)
        log = Path(tmp) / "worker.log"
        host.app.log.setup_logging_subsystem(loglevel=level, logfile=log)
        task = host.noop
        # A published UniqueTask carries its lock key in a header, as enqueue_many sets it.
        unique = (
            {"celeryredis_unique_key": task.unique_lock_key((1,), {})}
            if hasattr(task, "unique_lock_key")
            else {}
        )
        tracer = build_tracer(task.name, task, app=host.app, eager=False, propagate=False)
        costs = []
        for _ in range(5):
            requests = [
                {
                    "id": str(uuid.uuid4()),
                    "task": task.name,
                    "delivery_info": {"routing_key": "celery", "priority": 0},
                    "hostname": "bench@host",
                    "args": (1,),
                    "kwargs": {},
                    **unique,
                }
                for _ in range(n)
            ]
            started = time.process_time()
            for request in requests:
                tracer(request["id"], (1,), {}, request)
            costs.append((time.process_time() - started) / n * 1e6)
        with log.open() as lines:
            per_task = sum(1 for _ in lines) / (5 * n)
        print(
            f"{base:28} {level:8} {min(costs):7.1f} µs/task (runs "
            f"{', '.join(f'{c:.0f}' for c in costs)}); {per_task:.0f} log lines/task",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--levels", default="INFO,WARNING")
    parser.add_argument("--bases", default=BASES)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.one:
        _one(opts.one[0], opts.one[1], opts.n)
        return 0
    for level in opts.levels.split(","):
        for base in opts.bases.split(","):
            subprocess.run(
                [sys.executable, __file__, "--n", str(opts.n), "--one", base, level], check=True
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
