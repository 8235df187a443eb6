"""Real ``celery worker`` subprocesses that a test can kill by process group."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from celeryredis.exceptions import CeleryRedisError
from celeryredis.testing._guard import GUARD_ENV

__all__ = ["WorkerProcess", "WorkerProcessError"]

_READY = re.compile(r"\bready\.")
_VERDICT = re.compile(r"celeryredis\.testing: (refusing|verified)[^\n]*")


class WorkerProcessError(CeleryRedisError):
    """A worker subprocess did not become ready, or could not be stopped."""


class WorkerProcess:
    """A ``python -m celery -A <app> worker`` subprocess in its own process group.

    Args:
        app: The ``-A`` argument (``"hostapp"`` or ``"pkg.module:app"``).
        cwd: Working directory; it is put on ``PYTHONPATH``.
        env: Extra environment variables.
        pool: ``prefork``, ``solo`` or ``threads``.
        concurrency: Pool size.
        hostname: ``-n`` node name (default ``w<pid-ish>@%h``).
        queues: ``-Q`` queues to consume.
        loglevel: ``-l`` level.
        extra_args: More worker arguments.
        log_path: Where stdout and stderr go (a new temporary file by default).
        guard: Run through :mod:`celeryredis.testing._guard` with this spec: the
            worker is pointed at ``guard["broker_url"]`` (if given) and refuses to
            start against any Redis the test process did not start. The constructor
            then waits for the guard's verdict and raises :class:`WorkerProcessError`
            if the worker was refused.
    """

    def __init__(
        self,
        app: str,
        *,
        cwd: str | Path,
        env: Mapping[str, str] | None = None,
        pool: str = "prefork",
        concurrency: int = 1,
        hostname: str | None = None,
        queues: Sequence[str] | None = None,
        loglevel: str = "INFO",
        extra_args: Sequence[str] = (),
        log_path: str | Path | None = None,
        guard: Mapping[str, Any] | None = None,
    ) -> None:
        self.cwd = Path(cwd)
        self.log_path = Path(
            log_path or tempfile.mkstemp(prefix="celeryredis-worker-", suffix=".log")[1]
        )
        module = "celery" if guard is None else "celeryredis.testing._guard"
        argv = [
            sys.executable, "-m", module, "-A", app, "worker",
            "-P", pool, "-c", str(concurrency),
            "-l", loglevel, "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        if hostname:
            argv += ["-n", hostname]
        if queues:
            argv += ["-Q", ",".join(queues)]
        argv += list(extra_args)
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.cwd), child_env.get("PYTHONPATH", "")) if p
        )
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        if guard is not None:
            if guard.get("broker_url"):
                # Set by the guard only after the app is imported: make_app() refuses a
                # $CELERY_BROKER_URL that disagrees with the URL the host app gives.
                for var in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
                    child_env.pop(var, None)
            child_env[GUARD_ENV] = json.dumps(dict(guard))
        self.argv = argv
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: S603 - argv from our own arguments
                argv,
                cwd=self.cwd,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self._process.pid
        self.pgid = os.getpgid(self.pid)
        if guard is not None:
            self._await_verdict()

    def _await_verdict(self, timeout: float = 60.0) -> None:
        """Wait for the guard's line; raise if it refused the worker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _VERDICT.search(self.log_text())
            if match is not None:
                if match.group(1) == "refusing":
                    self.stop()
                    raise WorkerProcessError(match.group(0))
                return
            if self.returncode is not None:
                return  # exited before the check (e.g. the app failed to import): see the log
            time.sleep(0.05)
        raise WorkerProcessError(
            f"the worker's Redis check did not finish within {timeout} s; log tail:\n{self._tail()}"
        )

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while it runs."""
        return self._process.poll()

    def log_text(self) -> str:
        """Everything the worker printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 30.0) -> str:
        """Wait until the log matches ``pattern``; return the matching text.

        Raises:
            WorkerProcessError: The process exited, or the deadline passed first.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text())
            if match:
                return match.group(0)
            if self.returncode is not None:
                raise WorkerProcessError(
                    f"worker exited with {self.returncode} before {regex.pattern!r} "
                    f"appeared; log tail:\n{self._tail()}"
                )
            if time.monotonic() > deadline:
                raise WorkerProcessError(
                    f"{regex.pattern!r} did not appear within {timeout} s; log tail:\n"
                    f"{self._tail()}"
                )
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        """Wait for Celery's ``ready.`` line."""
        self.wait_for_log(_READY, timeout)
        return self

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit; return its exit code.

        Raises:
            WorkerProcessError: It is still running after ``timeout`` seconds.
        """
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WorkerProcessError(
                f"worker still running after {timeout} s; log tail:\n{self._tail()}"
            ) from None

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the worker's whole process group (main process and pool)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown (SIGTERM to the group), then SIGKILL to the group after ``timeout``.

        Pool children left behind are killed with the group, even if the main
        process already exited.
        """
        if self.returncode is None:
            self.kill(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout)
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout)

    def __repr__(self) -> str:
        return f"<WorkerProcess pid={self.pid} rc={self.returncode} log={self.log_path}>"
