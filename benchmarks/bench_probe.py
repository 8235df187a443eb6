"""How fast `check --worker` notices a frozen or killed worker, and what a probe costs.

For each repetition a fresh ``-P prefork -c 1`` worker with heartbeat interval
``--interval`` is started; once its probe answers ok, the worker's process group is
sent SIGSTOP (frozen), and the time until ``check_worker`` first reports ``fail`` is
measured (polled every 10 ms); then SIGCONT and the time until ``ok`` again; then
SIGKILL and the time until ``fail``. Also the wall time of one ``check_worker`` call
and of one ``check_health`` call in-process, and of a whole
``celeryredis --app ... check --worker`` CLI run (Python start-up included).

Usage: python benchmarks/bench_probe.py [--runs 3] [--interval 1.0]
Writes benchmarks/results/probe.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celeryredis.health import check_health, check_worker
from celeryredis.testing import RedisServer, WorkerProcess

APP = """
import os
from celeryredis import make_app

app = make_app(
    "probeapp",
    broker_url=os.environ["PROBE_URL"],
    preset="testing",
    celeryredis_heartbeat_interval=float(os.environ["PROBE_INTERVAL"]),
)
"""


def _until(condition: Callable[[], bool], timeout: float = 60.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not met")
        time.sleep(0.01)
    return time.monotonic() - started


def _timed(fn: Callable[[], Any], n: int) -> float:
    started = time.monotonic()
    for _ in range(n):
        fn()
    return (time.monotonic() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0)
    options = parser.parse_args()
    rows: dict[str, list[float]] = {
        "sigstop_to_fail_s": [],
        "sigcont_to_ok_s": [],
        "sigkill_to_fail_s": [],
        "check_worker_call_ms": [],
        "check_health_call_ms": [],
        "cli_probe_run_ms": [],
    }
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
        workdir = Path(tmp)
        (workdir / "probeapp.py").write_text(textwrap.dedent(APP))
        env = {"PROBE_URL": server.url, "PROBE_INTERVAL": str(options.interval)}
        os.environ.update(env)
        sys.path.insert(0, tmp)
        app = importlib.import_module("probeapp").app

        def status() -> str:
            return check_worker(app, "probe", timeout=2.0).status

        for _ in range(options.runs):
            worker = WorkerProcess(
                "probeapp", cwd=workdir, env=env, hostname="probe@%h", loglevel="WARNING"
            )
            try:
                _until(lambda: status() == "ok")
                rows["check_worker_call_ms"].append(1000 * _timed(status, 50))
                rows["check_health_call_ms"].append(1000 * _timed(lambda: check_health(app), 20))
                started = time.monotonic()
                subprocess.run(
                    [sys.executable, "-m", "celeryredis.cli", "--app", "probeapp", "check",
                     "--worker", "probe"],
                    cwd=workdir, env={**os.environ, "PYTHONPATH": tmp}, check=True,
                    capture_output=True,
                )  # fmt: skip
                rows["cli_probe_run_ms"].append(1000 * (time.monotonic() - started))
                worker.kill(signal.SIGSTOP)
                rows["sigstop_to_fail_s"].append(_until(lambda: status() == "fail"))
                worker.kill(signal.SIGCONT)
                rows["sigcont_to_ok_s"].append(_until(lambda: status() == "ok"))
                worker.kill(signal.SIGKILL)
                rows["sigkill_to_fail_s"].append(_until(lambda: status() == "fail"))
            finally:
                worker.stop()
    medians = {name: round(statistics.median(values), 3) for name, values in rows.items()}
    result = {
        "interval_s": options.interval,
        "runs": options.runs,
        "median": medians,
        "all": {k: [round(v, 3) for v in vs] for k, vs in rows.items()},
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu",
    }
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Probe: heartbeat interval {options.interval} s, {options.runs} runs (median)",
        "",
        "| measure | median | all runs |",
        "|---|---|---|",
        *(f"| {k} | {medians[k]} | {result['all'][k]} |" for k in rows),
        "",
        f"Python {result['python']}, {result['machine']}. "
        "Command: python benchmarks/bench_probe.py "
        f"--runs {options.runs} --interval {options.interval}",
    ]
    (out / "probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
