"""Helpers shared by the integration tests."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

#: Production-preset settings small enough for a test that waits out the visibility
#: timeout, and still accepted by validation: VT derived = 0 + 1 + 1 x 6 = 7, + 1 s = 8 s;
#: and a 3 s lease for the reliable transport that production uses.
FAST_PRODUCTION = {
    "task_time_limit": 6,
    "task_soft_time_limit": 5,
    "celeryredis_eta_horizon": 0,
    "celeryredis_retry_backoff_max": 1,
    "celeryredis_lease_seconds": 3.0,
}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 50 ms until it is true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def import_host_module(
    monkeypatch: pytest.MonkeyPatch, directory: Path, name: str, env: dict[str, str]
) -> ModuleType:
    """Import a freshly written host module from ``directory``, as a publisher would."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(directory))
    sys.modules.pop(name, None)
    return importlib.import_module(name)
