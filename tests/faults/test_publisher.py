"""Scenario 8: ``.delay()`` while Redis is down raises one clear error in bounded time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from celeryredis import PublishError
from tests.faults._harness import Outcome

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]

# The production preset's documented bound with Redis refusing connections: the result
# backend's subscribe retries (8 retries, 0 + 0.5 + 1 + 1.5 + 2 x 4 s = 11 s) — the
# publish is never attempted after that. Up to as long again for the broker's publish
# retries if the backend answers but the broker does not (docs/reliability.md).
PUBLISH_BOUND = 11.0
MARGIN = 10.0


@pytest.mark.parametrize("down", ["from the start", "after a publish"])
def test_delay_with_redis_down_raises_publish_error_in_bounded_time(
    config: str, down: str, make_rig: Callable[..., Any], fault_report: Any, secret_scan: Any
) -> None:
    rig, server, _proxy = make_rig(config)
    work = rig.module.work
    if down == "after a publish":
        assert work.delay(0) is not None  # the publisher works while Redis is up
    server.stop()

    started = time.monotonic()
    with pytest.raises(Exception) as excinfo:
        work.delay(1)
    elapsed = time.monotonic() - started
    error = excinfo.value
    secret_scan.add("exception", repr(error))
    secret_scan.add("exception", str(error))
    secret_scan.add("traceback", excinfo.getrepr(style="long"))
    fault_report.add(
        Outcome(
            f"8. publisher with Redis down ({down})",
            config,
            recover_s=elapsed,
            note=f"`.delay()` raised {type(error).__module__}.{type(error).__name__} "
            f"after {elapsed:.1f} s (time column = time to the error)",
        )
    )
    if config == "production":
        assert isinstance(error, PublishError), repr(error)
        assert error.task_name == "faults.work"
        assert "was not sent" in str(error)
        assert elapsed <= PUBLISH_BOUND + MARGIN
