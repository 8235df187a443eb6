"""The end-to-end tour behind ``make demo`` (``python -m celeryredis.demo``).

It builds a host-style app with :func:`celeryredis.make_app`, starts a real
``celery worker`` subprocess, publishes tasks and prints their results, then
shows where the key settings came from. Unless ``CELERY_BROKER_URL`` or
``REDIS_URL`` is set, it starts a throwaway ``redis-server`` on a free loopback
port and stops it at the end: it never writes to a Redis it did not start
unless told to.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from celeryredis.exceptions import CeleryRedisError
from celeryredis.urls import redact_text

__all__ = ["main"]

_HOSTAPP = """
from celeryredis import make_app

# A host project's app: production preset, with limits that suit a short demo.
app = make_app(
    "demo_app",
    preset="production",
    task_time_limit=60,
    task_soft_time_limit=50,
    celeryredis_eta_horizon=30,
    celeryredis_retry_backoff_max=30,
)


@app.task
def add(x, y):
    return x + y


@app.task
def shout(word):
    return word.upper() + "!"
"""

_SHOWN = (
    "broker_url",
    "result_backend",
    "task_acks_late",
    "task_time_limit",
    "worker_prefetch_multiplier",
    "broker_transport_options.visibility_timeout",
    "broker_transport_options.socket_timeout",
    "accept_content",
)


def _say(text: str = "") -> None:
    print(text, flush=True)


@contextmanager
def _redis_url() -> Iterator[str]:
    for var in ("CELERY_BROKER_URL", "REDIS_URL"):
        url = os.environ.get(var)
        if url:
            _say(f"Using the Redis configured in ${var}: {redact_text(url)}")
            yield url
            return
    from celeryredis.testing import RedisServer  # noqa: PLC0415 - only when needed

    with RedisServer() as server:
        pid = server.pid
        _say(
            f"No Redis URL configured: started a throwaway redis-server on 127.0.0.1:"
            f"{server.port} (pid {server.pid}); it is stopped at the end."
        )
        os.environ["REDIS_URL"] = server.url
        try:
            yield server.url
        finally:
            os.environ.pop("REDIS_URL", None)
    _say(f"Stopped the throwaway redis-server (pid {pid}).")


def _tour(url: str, workdir: Path) -> None:
    from celeryredis import explain  # noqa: PLC0415
    from celeryredis.testing import WorkerProcess  # noqa: PLC0415

    (workdir / "demo_app.py").write_text(textwrap.dedent(_HOSTAPP))
    sys.path.insert(0, str(workdir))
    hostapp: Any = importlib.import_module("demo_app")

    _say("\n1. The app: make_app('demo_app', preset='production', ...) — where settings came from:")
    rows = {r.setting: r for r in explain(hostapp.app)}
    for name in _SHOWN:
        row = rows[name]
        _say(f"   {name:<46} {row.value!r:<34} {row.source}")

    _say("\n2. A real worker: celery -A demo_app worker -P prefork -c 2")
    started = time.monotonic()
    with ExitStack() as stack:
        worker = WorkerProcess(
            "demo_app",
            cwd=workdir,
            env={"REDIS_URL": url},
            pool="prefork",
            concurrency=2,
            hostname="demo@%h",
            loglevel="WARNING",
            log_path=workdir / "worker.log",
            extra_args=["--without-heartbeat"],
        )
        stack.callback(worker.stop)
        _wait_until_consuming(hostapp.app, worker)
        _say(f"   worker pid {worker.pid} is consuming ({time.monotonic() - started:.1f} s)")

        _say("\n3. Tasks published and their results:")
        _say(f"   add.delay(2, 3).get()            -> {hostapp.add.delay(2, 3).get(timeout=30)}")
        results = [hostapp.add.delay(i, i) for i in range(5)]
        _say(f"   5 x add.delay(i, i)              -> {[r.get(timeout=30) for r in results]}")
        delayed = hostapp.shout.apply_async(("celery",), countdown=1)
        _say(f"   shout.apply_async(countdown=1)   -> {delayed.get(timeout=30)!r}")
    _say("\n4. Worker stopped by process group; nothing is left running.")


def _wait_until_consuming(app: Any, worker: Any, timeout: float = 60.0) -> None:
    """Poll the worker with Celery's own ping until it answers (or fail with its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.returncode is not None:
            raise CeleryRedisError(f"the worker exited early; its log:\n{worker.log_text()}")
        if app.control.ping(timeout=0.5):
            return
    raise CeleryRedisError(f"the worker did not answer within {timeout} s:\n{worker.log_text()}")


def main(*, as_json: bool = False) -> int:
    """Run the tour; return the process exit code."""
    # SIGTERM unwinds like Ctrl-C, so the redis-server and worker we started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with tempfile.TemporaryDirectory(prefix="celeryredis-demo-") as tmp, _redis_url() as url:
            _tour(url, Path(tmp))
    except KeyboardInterrupt:
        _say("\nInterrupted; everything the demo started has been stopped.")
        return 130
    except Exception as exc:  # the demo reports any failure plainly, with secrets redacted
        print(f"\ndemo failed: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    _say("\nDone.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
