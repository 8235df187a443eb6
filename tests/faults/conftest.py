"""Fixtures of the fault suite.

- ``config``: every scenario runs under ``production``; with
  ``CELERYREDIS_FAULTS_DEFAULTS=1`` (``make faults``) also under ``celery-defaults``.
- ``fault_report``: collects each scenario's :class:`Outcome`; with
  ``CELERYREDIS_FAULTS_REPORT=<path>`` the session writes them there as JSON, which
  ``scripts/faults_report.py`` turns into ``docs/reliability.md``.
- ``secret_scan``: after each test, every worker log and every text the test handed
  to it is scanned for the scenario's passwords; the test fails if one appears.
- ``make_rig``: a password-protected redis-server, a fault proxy in front of it and a
  :class:`Rig` wired to both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeryredis.testing import FaultProxy, RedisServer, WorkerProcess
from tests.conftest import SECRETS
from tests.faults._harness import FAULT_PASSWORD, Outcome, Rig, scan_for_secrets


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "config" in metafunc.fixturenames:
        configs = ["production"]
        if os.environ.get("CELERYREDIS_FAULTS_DEFAULTS") == "1":
            configs.append("celery-defaults")
        metafunc.parametrize("config", configs)


class Report:
    """The outcomes of this session's scenarios."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def add(self, outcome: Outcome) -> Outcome:
        self.outcomes.append(outcome)
        print(f"FAULTS {json.dumps(outcome.as_dict())}")  # shown with -rA / on failure
        return outcome


@pytest.fixture(scope="session")
def fault_report() -> Iterator[Report]:
    report = Report()
    yield report
    path = os.environ.get("CELERYREDIS_FAULTS_REPORT")
    if path and report.outcomes:
        target = Path(path)
        existing = json.loads(target.read_text()) if target.exists() else []
        existing.extend(o.as_dict() for o in report.outcomes)
        target.write_text(json.dumps(existing, indent=2))


class SecretScan:
    """Texts to scan (exceptions, CLI output) besides the worker logs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.texts: dict[str, str] = {}
        self.secrets: tuple[str, ...] = (FAULT_PASSWORD, *SECRETS)

    def add(self, where: str, text: object) -> None:
        self.texts[f"{where}#{len(self.texts)}"] = str(text)

    def add_secret(self, secret: str) -> None:
        self.secrets = (*self.secrets, secret)

    def run(self) -> None:
        texts = dict(self.texts)
        for path in sorted(self.directory.rglob("*.log")):
            texts[str(path.relative_to(self.directory))] = path.read_text(errors="replace")
        scan_for_secrets(texts, self.secrets)


@pytest.fixture
def secret_scan(tmp_path: Path) -> Iterator[SecretScan]:
    scan = SecretScan(tmp_path)
    yield scan
    scan.run()


@pytest.fixture
def make_rig(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    celery_worker_process: Callable[..., WorkerProcess],
    fault_proxy_factory: Callable[..., FaultProxy],
    redis_server_factory: Callable[..., RedisServer],
    secret_scan: SecretScan,
) -> Callable[..., tuple[Rig, RedisServer, FaultProxy]]:
    """``make_rig(config, **server_kwargs)`` -> (rig, server, proxy)."""

    def make(config: str, settings: dict[str, Any] | None = None, **server_kwargs: Any) -> Any:
        server = redis_server_factory(password=FAULT_PASSWORD, **server_kwargs)
        proxy = fault_proxy_factory(server.port)
        direct = f"redis://:{FAULT_PASSWORD}@127.0.0.1:{server.port}"
        via = f"redis://:{FAULT_PASSWORD}@127.0.0.1:{proxy.port}"
        rig = Rig(
            config,
            tmp_path,
            monkeypatch,
            celery_worker_process,
            worker_broker=f"{via}/0",
            worker_backend=f"{via}/1",
            publish_broker=f"{direct}/0",
            publish_backend=f"{direct}/1",
            record_url=f"{direct}/2",
            settings=settings,
        )
        return rig, server, proxy

    return make
