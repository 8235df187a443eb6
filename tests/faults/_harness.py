"""The fault harness: a host app under a chosen configuration, its workers, and the counts.

Layout of every scenario (as in fault-recipes.md): the workers reach Redis through a
:class:`~celeryredis.testing.FaultProxy` (broker and result backend); the publisher
and the tasks' own book-keeping talk to Redis directly, so a fault hits only the
workers' connections. Every server requires a password (:data:`FAULT_PASSWORD`), which
the secret scan looks for in everything a scenario captured.

Configurations:

``production``
    ``make_app(preset="production")`` with the time limits shortened to test scale
    (``task_time_limit=6`` so the visibility timeout derives to 8 s) — the same
    shortening ``tests/_util.FAST_PRODUCTION`` uses.
``celery-defaults``
    ``Celery(broker=..., backend=...)`` with nothing else set (only what a scenario
    cannot run without, e.g. Sentinel's ``master_name``).
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

from celeryredis.testing import WorkerProcess
from tests._util import FAST_PRODUCTION, import_host_module

#: The password of every server the fault scenarios start (also in tests/conftest SECRETS).
FAULT_PASSWORD = "Fault-Pa55-w0rd"

CONFIGS = ("production", "celery-defaults")

#: Test-scale production settings (visibility timeout derives to 8 s). The result
#: backend's socket timeout is scaled too: production's 10 s sits far below its soft time
#: limits, and at test scale (soft limit 5 s) it must as well, or a task whose STARTED
#: write meets a half-open backend connection fails by its soft limit before the
#: backend's timeout and reconnect can save it.
PRODUCTION_SETTINGS: Mapping[str, Any] = {**FAST_PRODUCTION, "redis_socket_timeout": 2.0}

APP_MODULE = """
import json
import os
import time

import redis

CONFIG = os.environ["FAULTS_CONFIG"]
BROKER = os.environ["FAULTS_BROKER_URL"]
BACKEND = os.environ["FAULTS_BACKEND_URL"]
EXTRA = json.loads(os.environ.get("FAULTS_SETTINGS") or "{}")

if CONFIG == "production":
    from celeryredis import make_app

    SETTINGS = json.loads(os.environ["FAULTS_PRODUCTION_SETTINGS"])
    app = make_app(
        "faultapp", broker_url=BROKER, result_backend=BACKEND, preset="production",
        **{**SETTINGS, **EXTRA}
    )
else:
    from celery import Celery

    app = Celery("faultapp", broker=BROKER, backend=BACKEND)
    if EXTRA:
        app.conf.update(EXTRA)

_record = None


def record():
    global _record
    if _record is None:
        _record = redis.Redis.from_url(os.environ["FAULTS_RECORD_URL"], socket_timeout=10)
    return _record


def _write(fn):
    # The counters live on the server a scenario may restart: retry for a while.
    deadline = time.monotonic() + 60
    while True:
        try:
            return fn(record())
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _done(client, i):
    pipe = client.pipeline()
    pipe.hincrby("faults:done", str(i), 1)
    pipe.hset("faults:done_at", str(i), repr(time.time()))
    pipe.hsetnx("faults:first_done_at", str(i), repr(time.time()))
    pipe.execute()


@app.task(name="faults.work", shared=False)
def work(i, duration=0.0):
    _write(lambda client: client.hincrby("faults:started", str(i), 1))
    time.sleep(duration)
    _write(lambda client: _done(client, i))
    return i
"""


@dataclass
class Outcome:
    """One scenario's figures under one configuration (a row of docs/reliability.md)."""

    scenario: str
    config: str
    lost: int | None = None
    twice: int | None = None
    recover_s: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "config": self.config,
            "lost": self.lost,
            "twice": self.twice,
            "recover_s": None if self.recover_s is None else round(self.recover_s, 2),
            "note": self.note,
            **self.extra,
        }


class Rig:
    """A host app under one configuration, with workers and a publisher.

    Args:
        config: ``production`` or ``celery-defaults``.
        directory: Where the host module and worker logs go.
        monkeypatch: For the publisher's environment.
        start_worker: The ``celery_worker_process`` fixture.
        worker_broker: Broker URL the workers use (usually through the proxy).
        worker_backend: Backend URL the workers use.
        publish_broker: Broker URL the publisher uses (usually direct).
        publish_backend: Backend URL the publisher uses.
        record_url: URL of the database where tasks count their runs (direct).
        settings: Extra settings for both configurations.
    """

    def __init__(
        self,
        config: str,
        directory: Path,
        monkeypatch: pytest.MonkeyPatch,
        start_worker: Callable[..., WorkerProcess],
        *,
        worker_broker: str,
        worker_backend: str,
        publish_broker: str,
        publish_backend: str,
        record_url: str,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.directory = directory
        self.monkeypatch = monkeypatch
        self._start_worker = start_worker
        self.record_url = record_url
        (directory / "faultapp.py").write_text(textwrap.dedent(APP_MODULE))
        common = {
            "FAULTS_CONFIG": config,
            "FAULTS_RECORD_URL": record_url,
            "FAULTS_SETTINGS": json.dumps(dict(settings or {})),
            "FAULTS_PRODUCTION_SETTINGS": json.dumps(dict(PRODUCTION_SETTINGS)),
        }
        self.worker_env = {
            **common,
            "FAULTS_BROKER_URL": worker_broker,
            "FAULTS_BACKEND_URL": worker_backend,
        }
        self.publish_env = {
            **common,
            "FAULTS_BROKER_URL": publish_broker,
            "FAULTS_BACKEND_URL": publish_backend,
        }
        self.workers: list[WorkerProcess] = []
        self._module: ModuleType | None = None
        self.record = redis.Redis.from_url(record_url, socket_timeout=10)

    def worker(self, name: str, concurrency: int = 1, **kwargs: Any) -> WorkerProcess:
        """Start a worker ``name@127.0.0.1`` (not yet waited for)."""
        worker = self._start_worker(
            "faultapp",
            cwd=self.directory,
            env=self.worker_env,
            concurrency=concurrency,
            hostname=f"{name}@127.0.0.1",
            log_path=self.directory / f"worker-{name}.log",
            **kwargs,
        )
        self.workers.append(worker)
        return worker

    @property
    def module(self) -> ModuleType:
        """The host module as the publisher imports it (direct URLs)."""
        if self._module is None:
            self._module = import_host_module(
                self.monkeypatch, self.directory, "faultapp", self.publish_env
            )
        return self._module

    def publish(self, i: int, duration: float = 0.0) -> Any:
        """``work.delay(i, duration)`` from the publisher."""
        return self.module.work.delay(i, duration)

    def done(self) -> dict[int, int]:
        """Task number -> how many times it ran to its end."""
        raw: dict[bytes, bytes] = self.record.hgetall("faults:done")  # type: ignore[assignment]
        return {int(k): int(v) for k, v in raw.items()}

    def done_at(self) -> dict[int, float]:
        """Task number -> when (epoch seconds) it last finished."""
        raw: dict[bytes, bytes] = self.record.hgetall("faults:done_at")  # type: ignore[assignment]
        return {int(k): float(v) for k, v in raw.items()}

    def first_done_at(self) -> dict[int, float]:
        """Task number -> when (epoch seconds) it first finished."""
        raw: dict[bytes, bytes] = self.record.hgetall("faults:first_done_at")  # type: ignore[assignment]
        return {int(k): float(v) for k, v in raw.items()}

    def counts(self, expected: range | list[int]) -> tuple[int, int]:
        """(lost, ran twice or more) among ``expected``."""
        done = self.done()
        lost = sum(1 for i in expected if done.get(i, 0) == 0)
        twice = sum(1 for i in expected if done.get(i, 0) > 1)
        return lost, twice

    def wait_done(self, expected: range | list[int], timeout: float) -> bool:
        """Poll until every task in ``expected`` ran; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.done()
            if all(done.get(i, 0) for i in expected):
                return True
            time.sleep(0.1)
        return False

    def logs(self) -> str:
        """Every worker log so far."""
        return "\n".join(w.log_text() for w in self.workers)


PUBLISHER = """
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())
import faultapp  # noqa: E402

out = Path(sys.argv[1])
stop = Path(sys.argv[2])
i = 0
with out.open("a") as log:
    while not stop.exists():
        try:
            faultapp.work.delay(i, 0.05)
        except Exception as exc:
            row = {"i": i, "error": f"{type(exc).__name__}: {exc}", "at": time.time()}
        else:
            row = {"i": i, "at": time.time()}
        log.write(json.dumps(row) + "\\n")
        log.flush()
        i += 1
        time.sleep(0.1)
# Skip interpreter teardown: Celery's AsyncResult.__del__ would reconnect to a Redis
# the scenario may already have stopped, with retries.
os._exit(0)
"""


class Publisher:
    """A publishing loop in a subprocess: ``work.delay(i)`` every 0.1 s until stopped.

    It runs in its own process so that Celery's result-consumer clean-up (which
    reconnects, with retries, from ``AsyncResult.__del__``) can never block the test.
    """

    def __init__(self, rig: Rig) -> None:
        import os
        import subprocess
        import sys

        self.out = rig.directory / "publisher.jsonl"
        self.stop_file = rig.directory / "publisher.stop"
        script = rig.directory / "publisher.py"
        script.write_text(PUBLISHER)
        env = {**os.environ, **rig.publish_env}
        with (rig.directory / "publisher.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(script), str(self.out), str(self.stop_file)],
                cwd=rig.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def rows(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def accepted(self) -> dict[int, float]:
        """Task number -> when its publish returned."""
        return {r["i"]: r["at"] for r in self.rows() if "error" not in r}

    def failed(self) -> list[str]:
        return [r["error"] for r in self.rows() if "error" in r]

    def stop(self, timeout: float = 60.0) -> None:
        import subprocess

        self.stop_file.touch()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def scan_for_secrets(texts: Mapping[str, str], secrets: tuple[str, ...]) -> None:
    """Fail the test if any of ``secrets`` appears in any captured text."""
    leaked = [(where, s) for where, text in texts.items() for s in secrets if s in text]
    if leaked:
        pytest.fail(f"a secret appeared in captured output: {[w for w, _ in leaked]}")
