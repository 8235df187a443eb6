"""Scenario 9: a task that runs, and a task that waits on its countdown, longer than
the visibility timeout (stock) or the lease (production's reliable transport)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults._harness import Outcome

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(240)]

LONG = 12.0  # seconds a long task runs
COUNTDOWN = 10.0  # seconds a countdown task waits before it runs
#: Celery's defaults, except a 4 s visibility timeout swept every second (instead of an
#: hour swept about every 100 s: test scale for what a 1 h+ task or ETA does) and acks
#: late (so that a running task is held).
DEFAULTS = {
    "task_acks_late": True,
    "broker_transport_options": {"visibility_timeout": 4, "unacked_restore_interval": 1},
}
#: Production at test scale (a 3 s lease, FAST_PRODUCTION), with time limits that let a
#: 12 s task finish.
PRODUCTION = {"task_time_limit": 30, "task_soft_time_limit": 25}


def test_tasks_longer_than_the_lease_run_once(
    config: str, make_rig: Callable[..., Any], fault_report: Any
) -> None:
    rig, _server, _proxy = make_rig(config, PRODUCTION if config == "production" else DEFAULTS)
    workers = [rig.worker("l1", concurrency=2), rig.worker("l2", concurrency=2)]
    for worker in workers:
        worker.wait_ready()
    started = time.time()
    rig.publish(0, LONG)
    rig.module.work.apply_async((1, 0.0), countdown=COUNTDOWN)
    rig.wait_done([0, 1], LONG + 30)
    # A copy redelivered while the first ran would finish up to one run after it was
    # redelivered: after a lapsed 3 s lease (+1 s sweep) under production, after the 4 s
    # timeout and later sweeps under the defaults. Watch that long for a second run.
    deadline = started + (LONG + 10 if config == "production" else 2 * LONG + 10)
    while time.time() < deadline and max(rig.done().values(), default=0) < 2:
        time.sleep(0.2)
    if config != "production":
        time.sleep(max(0.0, deadline - time.time()))  # count every copy (measured, not asserted)
    lost, twice = rig.counts([0, 1])
    runs = rig.done()
    fault_report.add(
        Outcome(
            "9. a 12 s task and a 10 s countdown (acks late)",
            config,
            lost=lost,
            twice=twice,
            recover_s=None,
            note=(
                f"runs: long task {runs.get(0, 0)}, countdown task {runs.get(1, 0)}; "
                + (
                    "3 s lease, renewed while held"
                    if config == "production"
                    else "visibility_timeout=4 swept every 1 s, acks late"
                )
            ),
        )
    )
    assert time.time() - started < 120
    if config == "production":
        assert lost == 0
        assert twice == 0, f"ran more than once: {runs}"
