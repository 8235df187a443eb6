"""Scenario 2: Redis (AOF on) restarted mid-run under workers and a publisher."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests._util import wait_for
from tests.faults._harness import Outcome, Publisher

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(240)]

DOWN_S = 3.0
PUBLISH_S = 9.0
# Celery reconnects on a fixed backoff (2 s, 4 s, ...): after 3 s down, within ~6 s.
RECOVERY_BOUND = 20.0


def test_redis_restart_loses_no_accepted_publish(
    config: str, make_rig: Callable[..., Any], fault_report: Any, secret_scan: Any
) -> None:
    rig, server, _proxy = make_rig(config, appendonly=True, extra_args=["--appendfsync", "always"])
    worker = rig.worker("r", concurrency=2)
    worker.wait_ready()
    publisher = Publisher(rig)
    try:
        wait_for(lambda: len(rig.done()) >= 5, 30, "tasks before the restart")
        server.stop()  # SIGTERM: Redis fsyncs the AOF and exits
        time.sleep(DOWN_S)  # holding the fault
        server.start()
        restarted = time.time()
        time.sleep(PUBLISH_S - DOWN_S)
        publisher.stop()
    finally:
        publisher.kill()
    accepted = sorted(publisher.accepted())
    failed = publisher.failed()
    for text in failed:
        secret_scan.add("publish error", text)

    all_done = rig.wait_done(accepted, RECOVERY_BOUND + 40)
    lost, twice = rig.counts(accepted)
    after = [t for t in rig.done_at().values() if t >= restarted]
    recover = min(after) - restarted if after else None
    fault_report.add(
        Outcome(
            "2. Redis restart (AOF), publisher running",
            config,
            lost=lost,
            twice=twice,
            recover_s=recover,
            note=f"down {DOWN_S:.0f} s; {len(accepted)} publishes returned, {len(failed)} raised; "
            "recover = restart to first task run",
        )
    )
    if config == "production":
        assert all_done, f"{lost} accepted publish(es) never ran"
        assert lost == 0
        assert recover is not None
        assert recover <= RECOVERY_BOUND
        assert not failed, failed[:3]  # the publish retry policy outlasts a 3 s restart
