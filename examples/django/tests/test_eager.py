"""(a) Eager mode from tests/settings.py: tasks run in the test process, on the test's Redis."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Retry
from celery.signals import task_postrun
from django.test import Client

from orders.tasks import OrderNotFound, cancel, charge, rebuild_invoice, send_confirmation
from proj.celery import app


def test_the_test_settings_put_celery_in_eager_mode() -> None:
    assert app.conf.task_always_eager is True
    assert app.conf.task_eager_propagates is True


def test_a_shared_task_runs_eagerly() -> None:
    assert send_confirmation.delay(7).get(timeout=5) == "confirmation sent for order 7"


def test_a_view_queues_a_task_eagerly(client: Client) -> None:
    response = client.post("/orders/8/confirm")
    assert response.status_code == 202
    assert response.json()["task_id"]


def test_retry_task_retries_a_transient_error_eagerly(settings: Any) -> None:
    # Celery runs eager retries inline only when exceptions do not propagate.
    settings.CELERY_TASK_EAGER_PROPAGATES = False
    result = charge.delay(9, gateway_timeouts=2)
    assert result.get(timeout=5) == "order 9 charged after 2 retries"


def test_with_eager_propagates_the_first_retry_reaches_the_caller() -> None:
    # Celery's behaviour with task_eager_propagates=True, for any task (docs/testing.md).
    with pytest.raises(Retry):
        charge.delay(9, gateway_timeouts=1)


def test_a_permanent_failure_propagates_in_eager_mode() -> None:
    with pytest.raises(OrderNotFound, match="order 10 does not exist"):
        cancel.delay(10)


def test_a_unique_task_runs_eagerly() -> None:
    assert rebuild_invoice.delay(11).get(timeout=5) == "invoice of order 11 rebuilt"


def test_the_tasks_use_celeryredis_task_bases() -> None:
    from celeryredis import RetryTask, Task, UniqueTask

    assert isinstance(send_confirmation, Task), send_confirmation.__class__.__mro__
    assert isinstance(charge, RetryTask)
    assert isinstance(rebuild_invoice, UniqueTask)


@pytest.mark.django_db
def test_shared_tasks_keep_djangos_delay_on_commit(
    django_capture_on_commit_callbacks: Any,
) -> None:
    # Celery's Django task class adds delay_on_commit(); the app's task class keeps it.
    results: list[object] = []

    def record(retval: object = None, **_: object) -> None:
        results.append(retval)

    task_postrun.connect(record, weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            send_confirmation.delay_on_commit(12)
            assert results == []  # nothing runs before the transaction commits
    finally:
        task_postrun.disconnect(record)
    assert len(callbacks) == 1
    assert results == ["confirmation sent for order 12"]
