"""Scenario 1: both workers SIGKILLed (whole process groups) with 50 tasks in flight."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests._util import wait_for
from tests.faults._harness import Outcome

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(240)]

TASKS = 50
DURATION = 0.5  # well under the 8 s visibility timeout: no redelivery while a worker lives
# Production: 8 s visibility timeout + one 10 s unacked sweep + start-up and margin.
REDELIVERY_BOUND = 60.0
# Celery's defaults put reserved messages back only after visibility_timeout = 3600 s.
DEFAULTS_WINDOW = 30.0


def test_sigkill_of_every_worker_loses_no_task(
    config: str, make_rig: Callable[..., Any], fault_report: Any
) -> None:
    rig, _server, _proxy = make_rig(config)
    first = [rig.worker("a", concurrency=2), rig.worker("b", concurrency=2)]
    for worker in first:
        worker.wait_ready()
    for i in range(TASKS):
        rig.publish(i, DURATION)
    wait_for(lambda: len(rig.done()) >= 8, 60, "the first tasks to finish")
    for worker in first:
        worker.kill(signal.SIGKILL)
    killed_at = time.time()
    in_flight = TASKS - len(rig.done())
    # A supervisor restarts them at once.
    for worker in (rig.worker("a2", concurrency=2), rig.worker("b2", concurrency=2)):
        worker.wait_ready()

    bound = REDELIVERY_BOUND if config == "production" else DEFAULTS_WINDOW
    all_done = rig.wait_done(range(TASKS), bound)
    if not all_done and config != "production":
        # Let the survivors drain whatever is still queued before counting.
        rig.wait_done(range(TASKS), 10)
    lost, twice = rig.counts(range(TASKS))
    done_at = rig.done_at()
    recover = max(done_at.values()) - killed_at if all_done else None
    fault_report.add(
        Outcome(
            "1. worker SIGKILL, 50 tasks in flight",
            config,
            lost=lost,
            twice=twice,
            recover_s=recover,
            note=f"{in_flight} not finished at the kill; recover = kill to last task done",
        )
    )
    if config == "production":
        assert all_done, f"{lost} task(s) not run {bound} s after the kill"
        assert lost == 0
